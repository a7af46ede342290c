//! The file backend in the registry: checks and starts the sink (it has no
//! downlink).

use std::sync::Arc;

use crate::bridge::contract::BoxFuture;
use crate::bridge::registry::{Backend, Kind, SettingError, SinkStart};
use crate::bridge::{BridgeError, RunningSink};
use crate::config::{BackendConfig, FileBackend};

pub const KIND: Kind = Kind {
    kind: "file",
    parse,
};

fn parse(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>> {
    let BackendConfig::File(f) = cfg else {
        return Err(vec![SettingError::new("kind", "not a file backend")]);
    };
    let mut errors = Vec::new();
    if f.max_file_bytes == 0 {
        errors.push(SettingError::new("max_file_bytes", "must be > 0"));
    }
    if f.max_files == 0 {
        errors.push(SettingError::new("max_files", "must be > 0"));
    }
    if errors.is_empty() {
        Ok(Arc::new(File(f.clone())))
    } else {
        Err(errors)
    }
}

#[derive(Debug)]
struct File(FileBackend);

impl Backend for File {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn start_sink(&self, start: SinkStart) -> BoxFuture<'_, Result<RunningSink, BridgeError>> {
        Box::pin(async move { super::start(&self.0, start.counters, start.capacity, &start.tasks) })
    }
}

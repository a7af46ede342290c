//! Reading the configuration: built-in defaults, an optional file, then the
//! environment, merged into a raw [`Config`] that [`Config::validate`] checks.
//!
//! Problems are set aside here rather than failing the load, so that
//! [`Config::validate`] reports them together with every other problem:
//! keys that mqbridge does not know, and values of the wrong type (text for
//! a number). Sections are read one by one, so each section's first wrong
//! value is reported (serde stops at the first within one); a section that
//! cannot be read keeps its defaults meanwhile, so that the others are still
//! checked. Only an unreadable file or source fails the load itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use config::Source as _;
use serde::de::DeserializeOwned;
use serde::Deserialize as _;

use super::{Config, ConfigError, DEFAULT_TOML, ENV_PREFIX, ENV_SEPARATOR};

/// Something [`load`] set aside for [`Config::validate`] to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LoadProblem {
    Key(RejectedKey),
    Value(WrongValue),
}

impl LoadProblem {
    pub(super) fn error(&self) -> ConfigError {
        match self {
            LoadProblem::Key(k) => k.error(),
            LoadProblem::Value(v) => ConfigError::WrongType(v.0.clone()),
        }
    }
}

/// A value serde could not read into its field's type; the message names
/// the key and, where known, the file or the environment.
#[derive(Debug, Clone)]
pub(super) struct WrongValue(Arc<config::ConfigError>);

// By message: the error itself is not comparable, and two configurations
// with the same mistake are equal.
impl PartialEq for WrongValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for WrongValue {}

/// A key of the merged sources that is not part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RejectedKey {
    /// Dotted key as written, e.g. `mqtt.listen_port`.
    key: String,
    /// Where it was set (file name or "the environment"), when known.
    origin: Option<String>,
    /// For a removed key: what to use instead.
    removed: Option<&'static str>,
}

impl RejectedKey {
    pub(super) fn error(&self) -> ConfigError {
        match self.removed {
            Some(reason) => ConfigError::at(self.key.clone(), reason),
            None => ConfigError::UnknownKey {
                key: self.key.clone(),
                origin: self.origin.clone(),
            },
        }
    }
}

/// Keys whose default is an empty array or unset: the `config` crate drops
/// those when the defaults are serialized, so they are listed here as known.
const EMPTY_BY_DEFAULT: &[&str] = &[
    "bridge.downlink",
    "mqtt.listeners",
    "acl.rules",
    "admin.token",
    "auth.methods",
];

/// Keys that were removed, with what to use instead. Refused rather than
/// aliased when the meaning changed, so nobody gets a new behaviour unawares.
const REMOVED: &[(&str, &str)] = &[(
    "mqtt.server_keep_alive_secs",
    "removed: use mqtt.max_keepalive_secs, a cap on clients' keep-alive \
     (the old key replaced every client's keep-alive, also for 3.1.1 clients who cannot be told)",
)];

/// Loads the configuration: built-in defaults, then `file` if given (it must
/// exist), then `MQBRIDGE__<SECTION>__<KEY>` environment variables. Check
/// the result with [`Config::validate`] before using it.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(file, None)
}

/// [`load`] with the environment taken from `env` instead of the process
/// environment when `env` is `Some` (keys are full variable names such as
/// `MQBRIDGE__MQTT__LISTEN`). Lets tests set "environment" values without
/// touching the process environment.
pub fn load_with_env(
    file: Option<&Path>,
    env: Option<config::Map<String, String>>,
) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(path) = file {
        check_file(path)?;
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    // try_parsing stays off: with it, the config crate turns every value
    // that looks like a number or boolean into one before it knows the
    // field's type, so string fields lose their text ("0012" -> "12",
    // "1e3" -> "1000") and integer fields silently round floats ("1.5" -> 2).
    // Without it, numeric, boolean and enum fields are still converted from
    // the string when deserialized, and bad values are reported with the key.
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(false)
        .source(env);
    let merged = builder.add_source(environment).build()?;
    let (mut known, rejected) = split_unknown_keys(merged.collect()?)?;
    let mut config = Config::default();
    // Every field named, so that a new section does not compile until it is
    // read here too.
    let Config {
        log,
        mqtt,
        session,
        store,
        admin,
        server,
        bridge,
        acl,
        auth,
        cluster,
        problems,
    } = &mut config;
    problems.extend(rejected.into_iter().map(LoadProblem::Key));
    let mut wrong = |e| problems.push(LoadProblem::Value(WrongValue(Arc::new(e))));
    section(&mut known, "log", log).unwrap_or_else(&mut wrong);
    section(&mut known, "mqtt", mqtt).unwrap_or_else(&mut wrong);
    section(&mut known, "session", session).unwrap_or_else(&mut wrong);
    section(&mut known, "store", store).unwrap_or_else(&mut wrong);
    section(&mut known, "admin", admin).unwrap_or_else(&mut wrong);
    section(&mut known, "server", server).unwrap_or_else(&mut wrong);
    section(&mut known, "bridge", bridge).unwrap_or_else(&mut wrong);
    section(&mut known, "acl", acl).unwrap_or_else(&mut wrong);
    section(&mut known, "auth", auth).unwrap_or_else(&mut wrong);
    section(&mut known, "cluster", cluster).unwrap_or_else(&mut wrong);
    Ok(config)
}

/// Reads section `name` of `known` into `slot`, which keeps its default
/// when the section is absent or cannot be read. Read as a one-entry map so
/// that the error names the dotted key (`mqtt.max_connections`).
fn section<T: DeserializeOwned>(
    known: &mut config::Map<String, config::Value>,
    name: &str,
    slot: &mut T,
) -> Result<(), config::ConfigError> {
    let Some(value) = known.remove(name) else {
        return Ok(());
    };
    let one = config::Map::from([(name.to_owned(), value)]);
    let table = config::Value::new(None, config::ValueKind::Table(one));
    if let Some(read) = HashMap::<String, T>::deserialize(table)?.remove(name) {
        *slot = read;
    }
    Ok(())
}

/// The configuration file given to [`load`] must exist and be a file.
fn check_file(path: &Path) -> Result<(), ConfigError> {
    let (reason, source) = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(_) => ("not a regular file", None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ("not found", None),
        Err(e) => ("cannot be read", Some(e)),
    };
    Err(ConfigError::File {
        path: path.to_owned(),
        reason,
        source,
    })
}

/// Takes every unknown `section` or `section.key` out of `merged`, with where
/// it was set, in sorted order. `deny_unknown_fields` would catch these too,
/// but stops at the first and its message gives neither the dotted key nor
/// the source. Keys inside array entries (`bridge.uplink[0].x`) are left to
/// `deny_unknown_fields`.
fn split_unknown_keys(
    merged: config::Map<String, config::Value>,
) -> Result<(config::Map<String, config::Value>, Vec<RejectedKey>), ConfigError> {
    let defaults = config::Config::try_from(&Config::default())?.collect()?;
    let mut known = config::Map::new();
    let mut rejected = Vec::new();
    let mut sections: Vec<(String, config::Value)> = merged.into_iter().collect();
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    for (section, value) in sections {
        let Some(default_section) = defaults.get(&section) else {
            rejected.push(unknown(section, &value, None));
            continue;
        };
        let origin = value.origin().map(str::to_owned);
        let (Ok(table), Ok(default_table)) = (
            value.clone().into_table(),
            default_section.clone().into_table(),
        ) else {
            // Not a table: deserialization reports the type mismatch.
            known.insert(section, value);
            continue;
        };
        let mut keys: Vec<(String, config::Value)> = table.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept = config::Map::new();
        for (key, value) in keys {
            let dotted = format!("{section}.{key}");
            if let Some((_, reason)) = REMOVED.iter().find(|(k, _)| *k == dotted) {
                rejected.push(unknown(dotted, &value, Some(*reason)));
            } else if default_table.contains_key(&key)
                || EMPTY_BY_DEFAULT.contains(&dotted.as_str())
            {
                kept.insert(key, value);
            } else {
                rejected.push(unknown(dotted, &value, None));
            }
        }
        let kept = config::Value::new(origin.as_ref(), config::ValueKind::Table(kept));
        known.insert(section, kept);
    }
    Ok((known, rejected))
}

fn unknown(key: String, value: &config::Value, removed: Option<&'static str>) -> RejectedKey {
    RejectedKey {
        key,
        origin: value.origin().map(str::to_owned),
        removed,
    }
}

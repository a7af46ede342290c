//! The backend contract is the whole story: an in-memory backend written
//! here, through the public traits only (`Sink`, `Source`, `Backend`),
//! registered through the public registry and wired by configuration
//! (`kind = "memory"`), carries uplink traffic (PUBLISH → sink, PUBACK only
//! after the sink confirmed) and downlink traffic (command → device, settled
//! only after the gateway stored it) end to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use mqbridge::app::Gateway;
use mqbridge::bridge::contract::{BoxError, BoxFuture, Delivery, Pending, Sink, Source};
use mqbridge::bridge::downlink::{Command, CommandOutcome};
use mqbridge::bridge::driver::{run_sink, run_source};
use mqbridge::bridge::registry::{self, Backend, Kind, SettingError, SinkStart, SourceStart};
use mqbridge::bridge::{BridgeError, Record, RunningSink};
use mqbridge::config::BackendConfig;
use rumqttc::{Event, Packet, QoS};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::common::{self, b4};

/// One in-memory "broker", shared by a backend's sink and sources and by
/// the test, which looks into it and holds confirmations back.
#[derive(Default)]
struct Hub {
    /// Records the sink confirmed: (target, key, payload).
    confirmed: Mutex<Vec<(String, Option<String>, Bytes)>>,
    /// Confirmations wait while this is false.
    open: OnceLock<watch::Sender<bool>>,
    /// The command log; positions are indexes into it.
    commands: Mutex<Vec<Command>>,
    /// Commands before this index are settled (committed).
    committed: Mutex<usize>,
    /// Every settle call, in order.
    settled: Mutex<Vec<(String, CommandOutcome)>>,
    more: Notify,
}

impl Hub {
    fn gate(&self) -> &watch::Sender<bool> {
        self.open.get_or_init(|| watch::channel(false).0)
    }
}

/// Hubs by name (`hub = "..."` in the backend's settings): the registry's
/// constructors are plain functions, so the test reaches its hub by name.
fn hub(name: &str) -> Arc<Hub> {
    static HUBS: OnceLock<Mutex<HashMap<String, Arc<Hub>>>> = OnceLock::new();
    let hubs = HUBS.get_or_init(Default::default);
    let mut hubs = hubs.lock().expect("hubs lock");
    hubs.entry(name.to_string()).or_default().clone()
}

const MEMORY: Kind = Kind {
    kind: "memory",
    parse,
};

fn parse(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>> {
    let BackendConfig::Extension(ext) = cfg else {
        return Err(vec![SettingError::new("kind", "not a memory backend")]);
    };
    let mut errors = Vec::new();
    let hub_name = match ext.settings.get("hub") {
        Some(serde_json::Value::String(h)) => Some(h.clone()),
        _ => {
            errors.push(SettingError::new("hub", "a string is required"));
            None
        }
    };
    for key in ext.settings.keys().filter(|k| *k != "hub") {
        errors.push(SettingError::new(key.clone(), "unknown key"));
    }
    match hub_name {
        Some(h) if errors.is_empty() => Ok(Arc::new(Memory {
            name: ext.name.clone(),
            hub: hub(&h),
        })),
        _ => Err(errors),
    }
}

struct Memory {
    name: String,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").field("name", &self.name).finish()
    }
}

impl Backend for Memory {
    fn name(&self) -> &str {
        &self.name
    }

    fn check_downlink(&self, _route: &mqbridge::config::DownlinkRoute) -> Vec<SettingError> {
        Vec::new()
    }

    fn start_sink(&self, start: SinkStart) -> BoxFuture<'_, Result<RunningSink, BridgeError>> {
        let sink = Box::new(MemorySink(self.hub.clone()));
        Box::pin(async move {
            Ok(run_sink(
                &self.name,
                sink,
                start.counters,
                start.capacity,
                &start.tasks,
            ))
        })
    }

    fn start_source<'a>(
        &'a self,
        route: &'a mqbridge::config::DownlinkRoute,
        start: SourceStart,
    ) -> BoxFuture<'a, Result<JoinHandle<()>, BridgeError>> {
        let source = Box::new(MemorySource {
            hub: self.hub.clone(),
            cursor: 0,
        });
        Box::pin(async move {
            let SourceStart {
                tx,
                cancel,
                tasks,
                gauges,
                ..
            } = start;
            Ok(run_source(&route.name, source, tx, gauges, cancel, &tasks))
        })
    }
}

struct MemorySink(Arc<Hub>);

impl Sink for MemorySink {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>> {
        let hub = self.0.clone();
        let entry = (
            record.target.clone(),
            record.key.clone(),
            record.payload.clone(),
        );
        let pending: Pending = Box::pin(async move {
            let mut open = hub.gate().subscribe();
            if open.wait_for(|o| *o).await.is_err() {
                return Delivery::Retry("hub gone".into());
            }
            hub.confirmed.lock().expect("hub lock").push(entry);
            Delivery::Confirmed
        });
        Box::pin(async move { Ok(pending) })
    }
}

struct MemorySource {
    hub: Arc<Hub>,
    cursor: usize,
}

impl Source for MemorySource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        // Resume after the last settled command.
        self.cursor = *self.hub.committed.lock().expect("hub lock");
        Box::pin(async { Ok(()) })
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Command, BoxError>> {
        Box::pin(async move {
            loop {
                // Registered before looking, so a command added meanwhile wakes us.
                let more = self.hub.more.notified();
                let next = self
                    .hub
                    .commands
                    .lock()
                    .expect("hub lock")
                    .get(self.cursor)
                    .cloned();
                if let Some(c) = next {
                    self.cursor += 1;
                    return Ok(c);
                }
                more.await;
            }
        })
    }

    fn settle(
        &mut self,
        position: &str,
        outcome: CommandOutcome,
    ) -> BoxFuture<'_, Result<(), BoxError>> {
        let hub = self.hub.clone();
        let position = position.to_string();
        Box::pin(async move {
            hub.settled
                .lock()
                .expect("hub lock")
                .push((position.clone(), outcome));
            if outcome != CommandOutcome::Retry {
                let index: usize = position.parse()?;
                *hub.committed.lock().expect("hub lock") = index + 1;
            }
            Ok(())
        })
    }
}

fn add_command(hub: &Hub, key: &str, payload: &str) -> String {
    let mut commands = hub.commands.lock().expect("hub lock");
    let position = commands.len().to_string();
    commands.push(Command {
        key: Some(key.to_string()),
        routing_key: None,
        headers: Vec::new(),
        payload: Bytes::from(payload.to_string()),
        position: position.clone(),
        timestamp_ms: None,
    });
    drop(commands);
    hub.more.notify_waiters();
    position
}

/// Starts a gateway from a TOML file whose bridge uses `kind = "memory"`.
async fn start(hub_name: &str) -> (Gateway, tempfile::TempDir) {
    start_with_acl(hub_name, None).await
}

/// [`start`], with `acl` (when given) as the gateway's `acl.file`, written
/// to `<dir>/acl`.
async fn start_with_acl(hub_name: &str, acl: Option<&str>) -> (Gateway, tempfile::TempDir) {
    start_with(hub_name, acl, "").await
}

/// [`start_with_acl`], with `extra` TOML appended to the config.
async fn start_with(
    hub_name: &str,
    acl: Option<&str>,
    extra: &str,
) -> (Gateway, tempfile::TempDir) {
    registry::register(MEMORY);
    let dir = tempfile::tempdir().expect("tempdir");
    let acl_section = match acl {
        Some(text) => {
            let path = dir.path().join("acl");
            std::fs::write(&path, text).expect("write acl file");
            format!("[acl]\nfile = \"{}\"\n", path.display())
        }
        None => String::new(),
    };
    let toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:0"
[admin]
listen = ""
[store]
path = "{store}"
[[bridge.backends]]
kind = "memory"
name = "mem"
hub = "{hub_name}"
[[bridge.uplink]]
name = "telemetry"
filter = "devices/+/telemetry"
backend = "mem"
target = "up.{{level.1}}"
[[bridge.downlink]]
name = "commands"
backend = "mem"
topic = "devices/{{key}}/cmd"
qos = 1
{acl_section}
{extra}"#,
        store = dir.path().join("store").display()
    );
    let file = dir.path().join("mqbridge.toml");
    std::fs::write(&file, toml).expect("write config");
    let cfg = mqbridge::config::load_with_env(Some(&file), Some(Default::default()))
        .expect("config loads");
    let cfg = cfg.validate().expect("config is valid");
    let gw = Gateway::start(cfg).await.expect("gateway starts");
    (gw, dir)
}

/// The next PUBACK the device receives.
async fn puback(dev: &mut b4::Client) {
    loop {
        match dev.events.recv().await {
            Some(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn uplink_puback_waits_for_the_memory_sink_confirm() {
    common::init_tracing();
    let (gw, _dir) = start("uplink").await;
    let hub = hub("uplink");
    let mut dev = b4::connect(common::opts_v4(gw.mqtt_addr, "dev-1", true)).await;
    dev.client
        .publish(
            "devices/dev-1/telemetry",
            QoS::AtLeastOnce,
            false,
            b"t=21".to_vec(),
        )
        .await
        .expect("publish queued");
    // Held back by the sink: no PUBACK, nothing confirmed.
    let early = tokio::time::timeout(common::QUIET, puback(&mut dev)).await;
    assert!(early.is_err(), "PUBACK before the backend confirmed");
    assert!(hub.confirmed.lock().expect("hub lock").is_empty());
    // The backend confirms: the PUBACK follows.
    hub.gate().send_replace(true);
    common::within(10, puback(&mut dev)).await;
    let confirmed = hub.confirmed.lock().expect("hub lock").clone();
    assert_eq!(
        confirmed,
        vec![(
            "up.dev-1".to_string(),
            Some("dev-1".to_string()),
            Bytes::from_static(b"t=21")
        )]
    );
    dev.disconnect().await;
    gw.shutdown().await;
}

/// A device whose uplink waits for room in a full sink queue still gets
/// its deliveries and is still taken over at once: the wait is a branch of
/// its connection's loop, not a pause of it.
#[tokio::test]
async fn a_device_waiting_for_a_full_sink_still_gets_deliveries_and_takeovers() {
    common::init_tracing();
    // The memory sink takes 256 records in flight; 4 more wait in its queue.
    let (gw, _dir) = start_with("full-sink", None, "[bridge]\nqueue_capacity = 4\n").await;
    let hub = hub("full-sink");
    let mut devs = Vec::new();
    for id in ["full-a", "full-b", "full-c"] {
        let dev = b4::connect(common::opts_v4(gw.mqtt_addr, id, true)).await;
        devs.push(dev);
    }
    let mut blocked = devs.pop().expect("three devices");
    blocked.subscribe("news/full", QoS::AtLeastOnce).await;
    // 300 unconfirmed QoS 1 publishes (100 each, rumqttc's window) against
    // room for 260: the last device's connection waits for the sink.
    for dev in devs.iter().chain(std::iter::once(&blocked)) {
        for i in 0..100 {
            let topic = format!("devices/{i}/telemetry");
            dev.client
                .publish(topic, QoS::AtLeastOnce, false, b"x".to_vec())
                .await
                .expect("publish queued");
        }
        tokio::time::sleep(common::QUIET).await;
    }
    assert!(hub.confirmed.lock().expect("hub lock").is_empty());
    // A delivery reaches it while it waits.
    let mut other = b4::connect(common::opts_v4(gw.mqtt_addr, "full-news", true)).await;
    other
        .publish("news/full", QoS::AtLeastOnce, false, b"hello")
        .await;
    let got = common::within(5, blocked.expect_publishes(1)).await;
    assert_eq!(&got[0].payload[..], b"hello");
    // A takeover closes it at once, although its uplink still waits.
    let _new = b4::connect(common::opts_v4(gw.mqtt_addr, "full-c", true)).await;
    common::within(5, async {
        loop {
            match blocked.events.recv().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    hub.gate().send_replace(true);
    gw.shutdown().await;
}

#[tokio::test]
async fn downlink_commands_reach_the_device_and_are_settled_once_stored() {
    common::init_tracing();
    let (gw, _dir) = start("downlink").await;
    let hub = hub("downlink");
    let mut dev = b4::connect(common::opts_v4(gw.mqtt_addr, "dev-2", false)).await;
    dev.subscribe("devices/dev-2/cmd", QoS::AtLeastOnce).await;
    let first = add_command(&hub, "dev-2", "reboot");
    let got = dev.expect_publishes(1).await;
    assert_eq!(got[0].topic, "devices/dev-2/cmd");
    assert_eq!(b4::payloads(&got), ["reboot"]);
    // Settled as stored, in order, once.
    common::within(10, async {
        while hub.settled.lock().expect("hub lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        hub.settled.lock().expect("hub lock").clone(),
        vec![(first, CommandOutcome::Stored)]
    );
    // A second command after the first, in order.
    let second = add_command(&hub, "dev-2", "update");
    assert_eq!(b4::payloads(&dev.expect_publishes(1).await), ["update"]);
    common::within(10, async {
        while hub.settled.lock().expect("hub lock").len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        hub.settled.lock().expect("hub lock")[1],
        (second, CommandOutcome::Stored)
    );
    dev.disconnect().await;
    gw.shutdown().await;
}

/// Commands come from the trusted backend: one reaches a device's
/// subscription that the device's ACL no longer lets read MQTT messages
/// (rules reloaded), while an MQTT client's message on the same topic is
/// filtered.
#[tokio::test]
async fn downlink_commands_are_not_checked_against_device_acls() {
    common::init_tracing();
    let ops = "user ops\ntopic readwrite #\n";
    let (gw, dir) = start_with_acl(
        "downlink-acl",
        Some(&format!("pattern readwrite devices/%c/#\n{ops}")),
    )
    .await;
    let hub = hub("downlink-acl");
    let mut dev = b4::connect(common::opts_v4(gw.mqtt_addr, "dev-3", false)).await;
    dev.subscribe("devices/dev-3/cmd", QoS::AtLeastOnce).await;
    let rules = format!("pattern write devices/%c/telemetry\n{ops}");
    std::fs::write(dir.path().join("acl"), rules).expect("new rules");
    gw.reload_acl().expect("rules reload");

    let mut o = common::opts_v4(gw.mqtt_addr, "ops", true);
    o.set_credentials("ops", "");
    let mut operator = b4::connect(o).await;
    operator
        .publish("devices/dev-3/cmd", QoS::AtLeastOnce, false, b"over-mqtt")
        .await;
    add_command(&hub, "dev-3", "reboot");
    // In order: a leaked MQTT message would come first.
    assert_eq!(b4::payloads(&dev.expect_publishes(1).await), ["reboot"]);
    operator.disconnect().await;
    dev.disconnect().await;
    gw.shutdown().await;
}

#[test]
fn memory_settings_are_checked_with_the_rest_of_the_config() {
    registry::register(MEMORY);
    let json = serde_json::json!({
        "queue_capacity": 10,
        "backends": [
            { "kind": "memory", "name": "mem", "colour": "blue" },
            { "kind": "nats", "name": "n" },
        ],
        "uplink": [
            { "name": "t", "filter": "a/#", "backend": "mem", "target": "x" },
        ],
    });
    let bridge: mqbridge::config::BridgeConfig =
        serde_json::from_value(json).expect("the section deserializes");
    let errors = bridge.validate(3600).expect_err("invalid");
    let keys: Vec<String> = errors
        .iter()
        .filter_map(|e| e.key().map(str::to_string))
        .collect();
    assert_eq!(
        keys,
        [
            "bridge.backends[0].hub",
            "bridge.backends[0].colour",
            "bridge.backends[1].kind",
        ],
        "{errors:?}"
    );
}

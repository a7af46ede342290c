//! A RabbitMQ node of the harness' own with the `rabbitmq_mqtt` plugin
//! (Debian's rabbitmq-server ships it): the MQTT peer of `fan-in-amqp` and
//! `offline-drain`. Started lazily once per harness run (a node takes ~10 s
//! to boot), reused by every round and scenario, its queues deleted at each
//! [`shared`] call so a round starts empty, and stopped by [`SharedGuard`]'s
//! drop at the end of `main` (also on error).
//!
//! Its own node name, distribution/AMQP/MQTT ports and data directory (under
//! a temporary directory owned by the `rabbitmq` user, as the broker runs as
//! that user), like `scripts/test.sh` starts its TLS node; the main node on
//! 5672 and the TLS node are never touched.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{free_port, INFLIGHT};

pub struct RabbitNode {
    pub node: String,
    /// Its MQTT listener.
    pub mqtt: SocketAddr,
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub amqp_uri: String,
    /// The beam process (what its resident memory is read from).
    pub pid: u32,
    dir: tempfile::TempDir,
}

static SHARED: Mutex<Option<Arc<RabbitNode>>> = Mutex::new(None);

/// The shared node, started on first use; every queue on it is deleted
/// first, so each caller (a round) starts from an empty node.
pub fn shared() -> Result<Arc<RabbitNode>> {
    let mut slot = SHARED.lock().map_err(|_| anyhow::anyhow!("rabbit lock"))?;
    if let Some(node) = slot.as_ref() {
        node.delete_queues()?;
        return Ok(node.clone());
    }
    let node = Arc::new(RabbitNode::start()?);
    *slot = Some(node.clone());
    Ok(node)
}

/// Stops the shared node (if one was started) when dropped.
pub struct SharedGuard;

impl Drop for SharedGuard {
    fn drop(&mut self) {
        if let Ok(mut slot) = SHARED.lock() {
            // The last reference: brokers of finished rounds are gone.
            slot.take();
        }
    }
}

impl RabbitNode {
    fn start() -> Result<RabbitNode> {
        let dir = tempfile::Builder::new()
            .prefix("mqbridge-bench-rabbit")
            .tempdir()?;
        let (amqp, mqtt, dist) = (free_port()?, free_port()?, free_port()?);
        let node = format!("mqbridge-bench-{}@localhost", std::process::id());
        let p = dir.path();
        std::fs::write(
            p.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 mqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n\
                 mqtt.allow_anonymous = true\n\
                 mqtt.default_user = guest\n\
                 mqtt.default_pass = guest\n\
                 mqtt.vhost = /\n\
                 mqtt.exchange = amq.topic\n\
                 # The same outgoing window per client as the other brokers.\n\
                 mqtt.prefetch = {INFLIGHT}\n\
                 loopback_users = none\n"
            ),
        )?;
        std::fs::write(p.join("enabled_plugins"), "[rabbitmq_mqtt].\n")?;
        // The broker runs as the rabbitmq user (the start script switches).
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(p)
            .status();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", p.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", p.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", p.join("rabbitmq.conf"))
            .env("RABBITMQ_PID_FILE", p.join("node.pid"))
            .status()
            .context("starting rabbitmq-server")?;
        if !status.success() {
            bail!("rabbitmq-server -detached: {status}");
        }
        let mqtt = SocketAddr::from(([127, 0, 0, 1], mqtt));
        let mut n = RabbitNode {
            node,
            mqtt,
            amqp_uri: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
            pid: 0,
            dir,
        };
        // A failure from here on drops `n`, which stops the node.
        n.pid = n.await_started(amqp)?;
        Ok(n)
    }

    fn await_started(&self, amqp: u16) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for port in [amqp, self.mqtt.port()] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect(addr).is_err() {
                if Instant::now() > deadline {
                    bail!(
                        "RabbitMQ node {} not listening on {port} within 60 s (logs in {})",
                        self.node,
                        self.dir.path().join("log").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let pid = self.ctl(&["eval", "os:getpid()."])?;
        pid.trim()
            .trim_matches('"')
            .parse()
            .with_context(|| format!("beam pid from {pid:?}"))
    }

    /// `rabbitmqctl -n <node> args...`, its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .context("rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Deletes every queue of the node (the MQTT plugin's session queues
    /// and whatever a scenario declared), in one call.
    pub fn delete_queues(&self) -> Result<()> {
        self.ctl(&[
            "eval",
            "[rabbit_amqqueue:delete(Q, false, false, <<\"bench\">>) \
             || Q <- rabbit_amqqueue:list()], ok.",
        ])
        .map(|_| ())
    }
}

impl Drop for RabbitNode {
    /// Stops the node before its directory is removed.
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
    }
}

//! The brokers under test, each on free loopback ports: mqbridge (its own
//! binary, embedded defaults plus a scenario's bridge section, a temporary
//! store), Mosquitto (Debian's `mosquitto`, no persistence, queues large
//! enough to drop nothing mqbridge keeps), both child processes killed when
//! dropped, and RabbitMQ's MQTT plugin (`rabbit`: one node per harness run,
//! shared by the rounds).

pub mod rabbit;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One side of a comparison: mqbridge or a peer. Brokers are started by
/// [`Broker::start`]; client-only peers (raw Kafka/AMQP clients) are run by
/// their scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Side {
    Mqbridge,
    /// Three mqbridge processes in cluster mode on the harness' Kafka.
    MqbridgeCluster,
    Mosquitto,
    /// RabbitMQ's `rabbitmq_mqtt` plugin on a node of the harness' own.
    RabbitMqtt,
    /// A raw `rdkafka` producer (client only, no broker of its own).
    RawKafka,
    /// A raw `lapin` publisher with confirms (client only).
    RawAmqp,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Mqbridge => "mqbridge",
            Side::MqbridgeCluster => "mqbridge-cluster",
            Side::Mosquitto => "mosquitto",
            Side::RabbitMqtt => "rabbitmq-mqtt",
            Side::RawKafka => "rdkafka",
            Side::RawAmqp => "lapin",
        }
    }
}

/// Per-client queue and in-flight window, the same for every broker.
pub const QUEUED: usize = 100_000;
pub const INFLIGHT: usize = 100;

pub struct Broker {
    pub side: Side,
    /// Its MQTT listener.
    pub addr: SocketAddr,
    /// RabbitMqtt: the node's AMQP URI (where the plugin publishes).
    pub amqp_uri: Option<String>,
    /// The environment mqbridge was given, `FREE_PORT` resolved.
    env: Vec<(String, String)>,
    proc: Proc,
}

enum Proc {
    /// The temporary directory lives as long as the process.
    Child(Child, #[allow(dead_code)] tempfile::TempDir),
    Rabbit(Arc<rabbit::RabbitNode>),
}

/// The last lines of a broker's log, for an error that says why it stopped.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("its log ended with:\n{tail}")
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Broker {
    pub fn start(side: Side, mqbridge: &Path) -> Result<Broker> {
        Broker::start_with(side, mqbridge, None)
    }

    /// `bridge`: a TOML configuration for mqbridge (its bridge section), in
    /// a file given with `--config`; the other sides ignore it.
    pub fn start_with(side: Side, mqbridge: &Path, bridge: Option<&str>) -> Result<Broker> {
        Broker::start_with_env(side, mqbridge, bridge, &[])
    }

    /// As [`Broker::start_with`]; mqbridge also gets `env` (set last, so it
    /// replaces the harness' own settings, e.g. to turn the admin API on).
    pub fn start_with_env(
        side: Side,
        mqbridge: &Path,
        bridge: Option<&str>,
        env: &[(&str, String)],
    ) -> Result<Broker> {
        if side == Side::RabbitMqtt {
            let node = rabbit::shared()?;
            return Ok(Broker {
                side,
                addr: node.mqtt,
                amqp_uri: Some(node.amqp_uri.clone()),
                env: Vec::new(),
                proc: Proc::Rabbit(node),
            });
        }
        // A port from `free_port` is only free until someone else takes it
        // (any outgoing connection may get it as its local port): a broker
        // that lost its port at start is started again on new ones.
        let mut attempt = 1;
        loop {
            match Broker::spawn(side, mqbridge, bridge, env) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => {
                    eprintln!("{}: port taken at start, retrying: {e:#}", side.name());
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The value an environment variable got (`FREE_PORT` in a value is
    /// replaced by a port free at the start).
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn spawn(
        side: Side,
        mqbridge: &Path,
        bridge: Option<&str>,
        env: &[(&str, String)],
    ) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path)?;
        let mut resolved = Vec::with_capacity(env.len());
        for (k, v) in env {
            let v = if v.contains("FREE_PORT") {
                v.replace("FREE_PORT", &free_port()?.to_string())
            } else {
                v.clone()
            };
            resolved.push((k.to_string(), v));
        }
        let mut cmd = match side {
            Side::Mqbridge => {
                let mut c = Command::new(mqbridge);
                c.env("MQBRIDGE__MQTT__LISTEN", addr.to_string())
                    .env("MQBRIDGE__ADMIN__LISTEN", "")
                    .env("MQBRIDGE__STORE__PATH", dir.path().join("store"))
                    .env("MQBRIDGE__LOG__LEVEL", "warn")
                    // The same limits as the Mosquitto configuration below.
                    .env("MQBRIDGE__SESSION__MAX_QUEUED_MESSAGES", QUEUED.to_string())
                    .env("MQBRIDGE__MQTT__MAX_INFLIGHT", INFLIGHT.to_string())
                    // Mosquitto has no cap on persistent sessions; every
                    // bench client connects from 127.0.0.1 without a user.
                    .env("MQBRIDGE__SESSION__MAX_PERSISTENT_SESSIONS", "10000000")
                    .env("MQBRIDGE__SESSION__MAX_PERSISTENT_SESSIONS_PER_IP", "0")
                    .current_dir(dir.path());
                if let Some(toml) = bridge {
                    let file = dir.path().join("mqbridge.toml");
                    std::fs::write(&file, toml)?;
                    c.arg("--config").arg(file);
                }
                c.envs(resolved.iter().map(|(k, v)| (k, v)));
                c
            }
            Side::Mosquitto => {
                let conf = dir.path().join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        // Nagle off, as mqbridge has it: its default (on)
                        // would add the clients' delayed ACK to its latency.
                        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                         max_queued_messages {QUEUED}\nmax_inflight_messages {INFLIGHT}\n\
                         set_tcp_nodelay true\nlog_type error\n"
                    ),
                )?;
                // Debian installs it in /usr/sbin, not always on a user's PATH.
                let sbin = Path::new("/usr/sbin/mosquitto");
                let mut c = Command::new(if sbin.exists() {
                    sbin
                } else {
                    Path::new("mosquitto")
                });
                c.arg("-c").arg(conf);
                c
            }
            other => bail!("{} is not a broker", other.name()),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", side.name()))?;
        let mut broker = Broker {
            side,
            addr,
            amqp_uri: None,
            env: resolved,
            proc: Proc::Child(child, dir),
        };
        broker
            .wait_listening()
            .with_context(|| log_tail(&log_path))?;
        Ok(broker)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            let Proc::Child(child, _) = &mut self.proc else {
                return Ok(());
            };
            if let Some(status) = child.try_wait()? {
                bail!("{} exited at start: {status}", self.side.name());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen within 30 s", self.side.name());
            }
            // Fine-grained: `restart` times start-up with it.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Stops a broker of ours with SIGTERM (a graceful shutdown: mqbridge
    /// closes its store) and waits up to 60 s for it to exit.
    pub fn stop(mut self) -> Result<()> {
        let side = self.side.name();
        let Proc::Child(child, _) = &mut self.proc else {
            bail!("{side} is shared, not stopped by a round");
        };
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {side}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{side} exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{side} still running 60 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) the broker process has used, in seconds.
    pub fn cpu_secs(&self) -> Result<f64> {
        let pid = match &self.proc {
            Proc::Child(child, _) => child.id(),
            Proc::Rabbit(node) => node.pid,
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) end with ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("no /proc stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after ')'.
        let ticks: f64 = f
            .get(11)
            .zip(f.get(12))
            .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
            .context("no utime/stime")?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz.max(1.0))
    }

    /// Resident memory of the broker process, in KiB.
    /// (RabbitMQ: its beam process.)
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = match &self.proc {
            Proc::Child(child, _) => child.id(),
            Proc::Rabbit(node) => node.pid,
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Broker {
    /// A RabbitMQ node outlives its rounds: `rabbit::SharedGuard` stops it.
    fn drop(&mut self) {
        if let Proc::Child(child, _) = &mut self.proc {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The mqbridge binary: given, or the release build; absolute, since the
/// child runs in its own directory.
pub fn mqbridge_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = given.unwrap_or_else(|| PathBuf::from("target/release/mqbridge"));
    std::fs::canonicalize(&path).with_context(|| format!("mqbridge binary {}", path.display()))
}

//! The brokers under test, each a child process on a free loopback port:
//! mqbridge (its own binary, embedded defaults, a temporary store) and
//! Mosquitto (Debian's `mosquitto`, no persistence, queues large enough to
//! drop nothing mqbridge keeps). Killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One side of a comparison: mqbridge or a peer. Brokers are started by
/// [`Broker::start`]; client-only peers (raw Kafka/AMQP clients) are run by
/// their scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Side {
    Mqbridge,
    Mosquitto,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Mqbridge => "mqbridge",
            Side::Mosquitto => "mosquitto",
        }
    }
}

/// Per-client queue and in-flight window, the same for every broker.
pub const QUEUED: usize = 100_000;
pub const INFLIGHT: usize = 100;

pub struct Broker {
    pub side: Side,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Broker {
    pub fn start(side: Side, mqbridge: &Path) -> Result<Broker> {
        Broker::start_with_store(side, mqbridge, None)
    }

    /// [`Broker::start`], mqbridge's store at `store` when given (kept
    /// across restarts) instead of in the broker's temporary directory.
    pub fn start_with_store(side: Side, mqbridge: &Path, store: Option<&Path>) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        let mut cmd = match side {
            Side::Mqbridge => {
                let mut c = Command::new(mqbridge);
                c.env("MQBRIDGE__MQTT__LISTEN", addr.to_string())
                    .env("MQBRIDGE__ADMIN__LISTEN", "")
                    .env(
                        "MQBRIDGE__STORE__PATH",
                        store.map_or_else(|| dir.path().join("store"), Path::to_path_buf),
                    )
                    .env("MQBRIDGE__LOG__LEVEL", "warn")
                    // The same limits as the Mosquitto configuration below.
                    .env("MQBRIDGE__SESSION__MAX_QUEUED_MESSAGES", QUEUED.to_string())
                    .env("MQBRIDGE__MQTT__MAX_INFLIGHT", INFLIGHT.to_string())
                    // Mosquitto has no cap on persistent sessions; every
                    // bench client connects from 127.0.0.1 without a user.
                    .env("MQBRIDGE__SESSION__MAX_PERSISTENT_SESSIONS", "10000000")
                    .env("MQBRIDGE__SESSION__MAX_PERSISTENT_SESSIONS_PER_IP", "0")
                    .current_dir(dir.path());
                c
            }
            Side::Mosquitto => {
                let conf = dir.path().join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                         max_queued_messages {QUEUED}\nmax_inflight_messages {INFLIGHT}\nlog_type error\n"
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
            child,
            _dir: dir,
        };
        broker.wait_listening()?;
        Ok(broker)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.try_wait()? {
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

    /// Stops the broker with SIGTERM (a graceful shutdown: mqbridge closes
    /// its store) and waits up to 60 s for it to exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "SIGTERM to {}: {}",
                self.side.name(),
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.side.name());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} still running 60 s after SIGTERM", self.side.name());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory of the broker process, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mqbridge binary: given, or the release build; absolute, since the
/// child runs in its own directory.
pub fn mqbridge_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = given.unwrap_or_else(|| PathBuf::from("target/release/mqbridge"));
    std::fs::canonicalize(&path).with_context(|| format!("mqbridge binary {}", path.display()))
}

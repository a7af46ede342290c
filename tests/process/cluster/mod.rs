//! Cluster mode with three real gateway processes on one Kafka (tansu):
//! sessions following their device across nodes (also when a node is
//! killed), takeover across nodes, retained messages, device-to-device
//! QoS 1/2 across a node restart, and draining on SIGTERM.

mod drain;
mod follow;
mod retained;
mod routing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::kafka as k;
use crate::{free_port, wait_started};

/// Three gateways of one cluster, each with its own port, store and node id,
/// on cluster topics of their own (a unique prefix per test).
pub struct Nodes {
    pub dir: tempfile::TempDir,
    /// The cluster's topic prefix (`<prefix>messages`, ...).
    pub prefix: String,
    pub ports: Vec<u16>,
    /// Each node's admin endpoint (metrics).
    pub admins: Vec<u16>,
    children: Vec<Option<Child>>,
    runs: Vec<usize>,
}

/// The admin API token of every node.
pub const TOKEN: &str = "cluster-test-token";

/// Extra TOML every node gets (e.g. a downlink route), after the cluster part.
pub fn config(
    dir: &Path,
    i: usize,
    (port, admin): (u16, u16),
    kafka: &str,
    prefix: &str,
    extra: &str,
) -> PathBuf {
    let toml = format!(
        r#"
[mqtt]
listen = "127.0.0.1:{port}"
[store]
path = "{store}"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
[session]
expiry_check_interval_secs = 1
[cluster]
enabled = true
node_id = "node-{i}"
backend = "kafka"
topic_prefix = "{prefix}"
partitions = 3
node_timeout_secs = 3
advertise = "127.0.0.1:{port}"
[bridge]
uplink = []
[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "{kafka}"
{extra}
"#,
        store = dir.join(format!("store-{i}")).display(),
    );
    let path = dir.join(format!("node-{i}.toml"));
    std::fs::write(&path, toml).expect("write config");
    path
}

impl Nodes {
    /// Starts three nodes (`extra`: more TOML for each).
    pub async fn start(kafka: &str, extra: &str) -> Nodes {
        Nodes::start_each(kafka, [extra; 3]).await
    }

    /// Starts three nodes, node `i` with `extras[i]` as more TOML.
    pub async fn start_each(kafka: &str, extras: [&str; 3]) -> Nodes {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = format!("{}.", k::unique("cluster"));
        let (mut ports, mut admins) = (Vec::new(), Vec::new());
        for (i, extra) in extras.iter().enumerate() {
            let (port, admin) = (free_port(), free_port());
            config(dir.path(), i, (port, admin), kafka, &prefix, extra);
            ports.push(port);
            admins.push(admin);
        }
        let mut nodes = Nodes {
            dir,
            prefix,
            ports,
            admins,
            children: vec![None, None, None],
            runs: vec![0; 3],
        };
        for i in 0..3 {
            nodes.spawn(i).await;
        }
        nodes
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{i}-{}.log", self.runs[i]))
    }

    /// Starts node `i` (again) and waits until it accepts connections.
    pub async fn spawn(&mut self, i: usize) {
        self.runs[i] += 1;
        let log_path = self.log(i);
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = crate::mqbridge_command();
        let mut child = cmd
            .arg("--config")
            .arg(self.dir.path().join(format!("node-{i}.toml")))
            .current_dir(self.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("GW_LOG").unwrap_or_else(|_| "mqbridge=info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn mqbridge");
        wait_started(&mut child, self.ports[i], &log_path).await;
        self.children[i] = Some(child);
    }

    /// A gauge or counter of node `i` (0 when absent or unreachable).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admins[i]));
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return 0.0;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let _ = s.write_all(req).await;
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `method path` on node `i`'s admin API (with the token); the status.
    pub async fn admin(&self, i: usize, method: &str, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admins[i]));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("request");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply).await;
        reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL: the node dies without a word.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the node to exit cleanly.
    pub async fn stop(&mut self, i: usize) {
        let Some(mut c) = self.children[i].take() else {
            return;
        };
        let pid = c.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "node {i} exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} did not stop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Every node's log so far (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            for run in 1..=self.runs[i] {
                let p = self.dir.path().join(format!("node-{i}-{run}.log"));
                out.push_str(&format!("--- node {i} run {run}\n"));
                out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

//! mqbridge-bench: runs mqbridge and its peers side by side on this machine
//! in the same run, alternating them round by round, and reports the median
//! of each, the spread, and the ratio (docs/performance.md).
//!
//! Map: `peers` starts the brokers under test (mqbridge's release binary,
//! Mosquitto) on free loopback ports; `scenarios/` holds one module per
//! scenario, each offering [`scenarios::Variant`]s; `report` writes the
//! table.
//!
//!   cargo build --release && cargo run --release -p mqbridge-bench -- p2p conn-idle
//!   cargo run -p mqbridge-bench -- --smoke --mqbridge target/debug/mqbridge

mod peers;
mod report;
mod scenarios;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use scenarios::Measured;

#[derive(Parser, Debug)]
pub struct Args {
    /// Scenarios to run (default: all built; see `scenarios::ALL`).
    pub scenarios: Vec<String>,
    /// The mqbridge binary (default: target/release/mqbridge).
    #[arg(long = "mqbridge")]
    pub given_bin: Option<PathBuf>,
    /// The resolved, absolute mqbridge binary.
    #[arg(skip)]
    pub bin: PathBuf,
    /// Rounds per scenario (each runs every side once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// p2p: publisher→subscriber pairs.
    #[arg(long, default_value_t = 4)]
    pub pairs: usize,
    /// p2p: messages per pair; fan-in: per device.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// fan-in: devices publishing at once (`--messages` each).
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// downlink: offline persistent sessions the commands are for.
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
    /// downlink: commands produced (round-robin over the sessions).
    #[arg(long, default_value_t = 10_000)]
    pub commands: usize,
    /// Kafka bootstrap servers (tansu, as the test command starts it).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// RabbitMQ main node (the AMQP backend of mqbridge and of raw lapin).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// conn-idle: connections.
    #[arg(long, default_value_t = 5_000)]
    pub idle: usize,
    /// p2p-latency: the offered load, messages per second over all pairs
    /// (below what either broker saturates at on this machine).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// p2p-latency: seconds of load at that rate.
    #[arg(long, default_value_t = 5.0)]
    pub rate_secs: f64,
    /// fan-out: subscribers of the one topic (or of `#`).
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// fan-out: messages published (each delivered to every subscriber).
    #[arg(long, default_value_t = 2_000)]
    pub fanout_messages: usize,
    /// offline-drain: persistent sessions (needs as many open files; the
    /// harness raises its soft limit up to the hard one).
    #[arg(long, default_value_t = 10_000)]
    pub drain_sessions: usize,
    /// offline-drain: messages queued per session while it is offline.
    #[arg(long, default_value_t = 10)]
    pub drain_queued: usize,
    /// restart: persistent sessions in the store (issue: 100,000).
    #[arg(long, default_value_t = 10_000)]
    pub restart_sessions: usize,
    /// restart: queued messages in the store, measured at this and a tenth
    /// of it (issue: 1,000,000).
    #[arg(long, default_value_t = 100_000)]
    pub restart_queued: usize,
    /// Tiny counts, one round: checks the harness works, measures nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Where to write the results (markdown and JSON); none with --smoke.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

impl Args {
    /// The counts of a smoke run: every scenario, a few seconds in all.
    fn shrink_for_smoke(&mut self) {
        self.rounds = 1;
        self.pairs = 2;
        self.devices = 2;
        self.sessions = 20;
        self.commands = 100;
        self.messages = 200;
        self.idle = 50;
        self.rate = 1000.0;
        self.rate_secs = 0.5;
        self.subscribers = 5;
        self.fanout_messages = 50;
        self.drain_sessions = 20;
        self.drain_queued = 10;
        self.restart_sessions = 20;
        self.restart_queued = 200;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Stops the shared RabbitMQ node, if a scenario started one, however
    // main returns.
    let _rabbit = peers::rabbit::SharedGuard;
    // On Ctrl-C or SIGTERM (`timeout`), dropping the run kills the brokers
    // it started; then the guard stops RabbitMQ.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}

async fn run() -> Result<()> {
    let mut a = Args::parse();
    if a.smoke {
        a.shrink_for_smoke();
    }
    a.bin = peers::mqbridge_binary(a.given_bin.clone())?;
    let names: Vec<String> = if a.scenarios.is_empty() {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        a.scenarios.clone()
    };
    // offline-drain holds a connection per session: raise the open-file
    // limit before any broker starts, as they inherit it (the shared
    // RabbitMQ node may be started by an earlier scenario).
    if names.iter().any(|n| n == "offline-drain") {
        scenarios::raise_fd_limit(a.drain_sessions + 256)?;
    }
    // Before anything runs: at the end it would measure the run itself.
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut tables = Vec::new();
    for name in &names {
        for v in scenarios::variants(name, &a)? {
            let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); v.sides.len()];
            for _ in 0..a.rounds {
                for (i, side) in v.sides.iter().enumerate() {
                    let m = (v.run)(*side).await?;
                    eprintln!(
                        "{} {}: {:.1} {} {:?}",
                        v.name,
                        side.name(),
                        m.value,
                        m.unit,
                        m.delivered
                    );
                    runs[i].push(m);
                }
            }
            tables.push(report::Table::new(&v, runs));
        }
    }
    let (md, json) = report::render(&tables, &load_before)?;
    println!("{md}");
    if !a.smoke {
        std::fs::create_dir_all(&a.out)?;
        let stamp = std::process::Command::new("date")
            .arg("+%Y%m%d-%H%M%S")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        std::fs::write(a.out.join(format!("{stamp}.md")), &md)?;
        std::fs::write(a.out.join(format!("{stamp}.json")), json)?;
    }
    Ok(())
}

//! mqbridge-bench: runs mqbridge and its peers side by side on this machine
//! in the same run, alternating them round by round, and reports the median
//! of each, the spread, and the ratio (docs/performance.md).
//!
//! Built so far: `p2p` (QoS 0 and 1) and `conn-idle`, against Mosquitto.
//!
//!   cargo build --release && cargo run --release -p mqbridge-bench -- p2p conn-idle
//!   cargo run -p mqbridge-bench -- --smoke --mqbridge target/debug/mqbridge

mod peers;
mod scenarios;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use rumqttc::QoS;

use peers::{Broker, Kind};
use scenarios::Measured;

#[derive(Parser, Debug)]
struct Args {
    /// Scenarios to run: p2p, conn-idle (default: all built).
    scenarios: Vec<String>,
    /// The mqbridge binary (default: target/release/mqbridge).
    #[arg(long)]
    mqbridge: Option<PathBuf>,
    /// Rounds per scenario (each runs every broker once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// p2p: publisher→subscriber pairs.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// p2p: messages per pair.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// p2p: payload bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// conn-idle: connections.
    #[arg(long, default_value_t = 5_000)]
    idle: usize,
    /// Tiny counts, one round: checks the harness works, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Where to write the results (markdown and JSON); none with --smoke.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: String,
    broker: &'static str,
    /// Every round's figure, in run order.
    runs: Vec<Measured>,
    median: f64,
    min: f64,
    max: f64,
    unit: &'static str,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut a = Args::parse();
    if a.smoke {
        (a.rounds, a.pairs, a.messages, a.idle) = (1, 2, 200, 50);
    }
    let scenarios = if a.scenarios.is_empty() {
        vec!["p2p".to_string(), "conn-idle".to_string()]
    } else {
        a.scenarios.clone()
    };
    let bin = peers::mqbridge_binary(a.mqbridge.clone())?;
    let mut rows = Vec::new();
    for s in &scenarios {
        let variants: Vec<(String, Option<QoS>)> = match s.as_str() {
            "p2p" => vec![
                ("p2p-qos0".into(), Some(QoS::AtMostOnce)),
                ("p2p-qos1".into(), Some(QoS::AtLeastOnce)),
            ],
            "conn-idle" => vec![("conn-idle".into(), None)],
            other => anyhow::bail!("unknown scenario {other} (built: p2p, conn-idle)"),
        };
        for (name, qos) in variants {
            let mut runs: Vec<(Kind, Measured)> = Vec::new();
            for _ in 0..a.rounds {
                for kind in [Kind::Mqbridge, Kind::Mosquitto] {
                    let broker = Broker::start(kind, &bin)?;
                    let m = match qos {
                        Some(q) => scenarios::p2p(&broker, a.pairs, a.messages, a.size, q).await?,
                        None => scenarios::conn_idle(&broker, a.idle).await?,
                    };
                    eprintln!(
                        "{name} {}: {:.1} {} {:?}",
                        kind.name(),
                        m.value,
                        m.unit,
                        m.delivered
                    );
                    runs.push((kind, m));
                }
            }
            for kind in [Kind::Mqbridge, Kind::Mosquitto] {
                let mine: Vec<Measured> = runs
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, m)| m.clone())
                    .collect();
                rows.push(row(&name, kind, mine));
            }
        }
    }
    let (md, json) = report(&a, &rows)?;
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

fn row(scenario: &str, kind: Kind, runs: Vec<Measured>) -> Row {
    let mut v: Vec<f64> = runs.iter().map(|m| m.value).collect();
    v.sort_by(f64::total_cmp);
    let unit = runs.first().map_or("", |m| m.unit);
    Row {
        scenario: scenario.to_string(),
        broker: kind.name(),
        median: v.get(v.len() / 2).copied().unwrap_or(0.0),
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
        runs,
        unit,
    }
}

/// The markdown table (mqbridge, Mosquitto, ratio per scenario) and JSON.
fn report(a: &Args, rows: &[Row]) -> Result<(String, String)> {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        md,
        "Machine: {cpus} CPUs, load average before: {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    )?;
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(
        md,
        "Commit: {commit}; both brokers: per-client queue {}, in-flight window {}",
        peers::QUEUED,
        peers::INFLIGHT
    )?;
    writeln!(
        md,
        "Command: mqbridge-bench --rounds {} --pairs {} --messages {} --size {} --idle {}\n",
        a.rounds, a.pairs, a.messages, a.size, a.idle
    )?;
    writeln!(md, "| scenario | mqbridge (median, min–max) | Mosquitto (median, min–max) | ratio | p99 µs mqbridge / Mosquitto |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for pair in rows.chunks(2) {
        let [m, p] = pair else { continue };
        let ratio = if p.median > 0.0 {
            m.median / p.median
        } else {
            0.0
        };
        let p99 = |r: &Row| {
            let mut v: Vec<u64> = r.runs.iter().filter_map(|m| m.p99_us).collect();
            v.sort_unstable();
            v.get(v.len() / 2)
                .map_or("-".to_string(), |x| x.to_string())
        };
        writeln!(
            md,
            "| {} | {:.0} ({:.0}–{:.0}) {} | {:.0} ({:.0}–{:.0}) {} | {:.2}× | {} / {} |",
            m.scenario,
            m.median,
            m.min,
            m.max,
            m.unit,
            p.median,
            p.min,
            p.max,
            p.unit,
            ratio,
            p99(m),
            p99(p)
        )?;
    }
    Ok((md, serde_json::to_string_pretty(rows)?))
}

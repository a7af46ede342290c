//! The results: per variant, each side's median and min–max over the
//! rounds, and mqbridge's ratio to each peer; markdown for people, JSON for
//! tools.

use std::fmt::Write as _;

use anyhow::Result;

use crate::peers::{self, Side};
use crate::scenarios::{Better, Measured, Variant};

#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub side: &'static str,
    /// Every round's figure, in run order.
    pub runs: Vec<Measured>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub unit: &'static str,
}

#[derive(Debug, serde::Serialize)]
pub struct Table {
    pub scenario: String,
    pub better: Better,
    /// mqbridge first, then each peer.
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(v: &Variant, runs: Vec<Vec<Measured>>) -> Table {
        let rows = v
            .sides
            .iter()
            .zip(runs)
            .map(|(side, runs)| row(*side, runs))
            .collect();
        Table {
            scenario: v.name.clone(),
            better: v.better,
            rows,
        }
    }
}

fn row(side: Side, runs: Vec<Measured>) -> Row {
    let mut v: Vec<f64> = runs.iter().map(|m| m.value).collect();
    v.sort_by(f64::total_cmp);
    let unit = runs.first().map_or("", |m| m.unit);
    Row {
        side: side.name(),
        median: v.get(v.len() / 2).copied().unwrap_or(0.0),
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
        runs,
        unit,
    }
}

fn median_p99(r: &Row) -> String {
    let mut v: Vec<u64> = r.runs.iter().filter_map(|m| m.p99_us).collect();
    v.sort_unstable();
    v.get(v.len() / 2)
        .map_or("-".to_string(), |x| x.to_string())
}

fn better(b: Better) -> &'static str {
    match b {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

/// One markdown line per (variant, peer): mqbridge, the peer, the ratio.
/// `load`: /proc/loadavg as read before the first scenario.
pub fn render(tables: &[Table], load: &str) -> Result<(String, String)> {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
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
        "Commit: {commit}; every MQTT broker: per-client queue {}, in-flight window {}",
        peers::QUEUED,
        peers::INFLIGHT
    )?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    writeln!(md, "Command: mqbridge-bench {}\n", args.join(" "))?;
    writeln!(md, "| scenario | mqbridge (median, min–max) | peer | peer (median, min–max) | ratio | better | p99 µs mqbridge / peer |")?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for t in tables {
        let Some((m, peers)) = t.rows.split_first() else {
            continue;
        };
        if peers.is_empty() {
            // Report only: no peer to compare with.
            writeln!(
                md,
                "| {} | {:.1} ({:.1}–{:.1}) {} | – | – | – | {} | {} / – |",
                t.scenario,
                m.median,
                m.min,
                m.max,
                m.unit,
                match t.better {
                    Better::Higher => "higher",
                    Better::Lower => "lower",
                },
                median_p99(m)
            )?;
        }
        for p in peers {
            let ratio = if p.median > 0.0 {
                m.median / p.median
            } else {
                0.0
            };
            writeln!(
                md,
                "| {} | {:.1} ({:.1}–{:.1}) {} | {} | {:.1} ({:.1}–{:.1}) {} | {:.2}× | {} | {} / {} |",
                t.scenario,
                m.median,
                m.min,
                m.max,
                m.unit,
                p.side,
                p.median,
                p.min,
                p.max,
                p.unit,
                ratio,
                better(t.better),
                median_p99(m),
                median_p99(p)
            )?;
        }
    }
    Ok((md, serde_json::to_string_pretty(tables)?))
}

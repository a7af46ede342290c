//! A real Prometheus (Debian's `prometheus`) scrapes an in-process gateway
//! with the repository's scrape config and rules; every dashboard query then
//! runs through its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{dashboard_exprs, http_get, metric_names, read, rule_exprs, sample_names};
use crate::common::service;

/// The Prometheus child, killed when dropped (also when the test fails).
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query` of `expr`: the JSON answer.
async fn query(prom: SocketAddr, expr: &str) -> serde_json::Value {
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={}", encode(expr))).await;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: not JSON ({e}): {body}"));
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v
}

fn result_len(v: &serde_json::Value) -> usize {
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

/// Polls `check` every 200 ms for up to `secs`; fails with `what` and the
/// Prometheus log.
async fn wait_until<F, Fut>(secs: u64, what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} within {secs} s; Prometheus log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The repository's scrape config with the test gateway as target and 1 s
/// intervals, next to a copy of the rules.
fn write_config(dir: &Path, admin: SocketAddr) {
    let original = read("docker/prometheus/prometheus.yml");
    for needle in [
        "\"mqbridge:9883\"",
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
    ] {
        assert!(
            original.contains(needle),
            "prometheus.yml changed: {needle} not found"
        );
    }
    let config = original
        .replace("\"mqbridge:9883\"", &format!("\"{admin}\""))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
    std::fs::write(dir.join("rules.yml"), read("docker/prometheus/rules.yml"))
        .expect("write rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_against_a_real_prometheus() {
    if !service::program("prometheus", "prometheus (Debian's prometheus package)") {
        return;
    }
    let (t, admin) = super::gateway_with_traffic().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), admin);
    let port = crate::free_port();
    let prom: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = dir.path().join("prometheus.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let _child = Prometheus(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus"),
    );
    wait_until(30, "Prometheus ready", &log, || async {
        tokio::net::TcpStream::connect(prom).await.is_ok()
            && http_get(prom, "/-/ready").await.0 == 200
    })
    .await;
    // Several scrapes, so that rate() over the dashboard's window has points.
    wait_until(30, "the gateway scraped 4 times", &log, || async {
        let v = query(
            prom,
            r#"count_over_time(up{job="mqbridge"}[1m]) >= 4 and up{job="mqbridge"} == 1"#,
        )
        .await;
        result_len(&v) == 1
    })
    .await;

    let exposed = sample_names(&super::scrape(admin).await);
    let exprs = dashboard_exprs();
    let mut with_data = 0;
    for expr in &exprs {
        // Grafana's variables: every instance, a window of several scrapes.
        let concrete = expr
            .replace("$__rate_interval", "30s")
            .replace("$instance", ".+");
        let v = query(prom, &concrete).await;
        if result_len(&v) > 0 {
            with_data += 1;
            continue;
        }
        // Empty only when the gateway exports no sample of a metric the
        // query uses: families that get samples only with a downlink route
        // (commands, receipts, source up/blocked), a TLS listener (handshake
        // failures) or a spool overflow. The family itself was checked to
        // exist by every_metric_of_the_dashboard_and_rules_exists_in_metrics.
        let absent: Vec<String> = metric_names(expr)
            .into_iter()
            .filter(|n| !exposed.contains(n))
            .collect();
        assert!(
            !absent.is_empty(),
            "{concrete}: no data although the gateway exports every metric it uses"
        );
    }
    eprintln!(
        "{with_data} of {} dashboard queries returned data",
        exprs.len()
    );
    assert!(
        with_data * 4 >= exprs.len() * 3,
        "only {with_data} of {} dashboard queries returned data",
        exprs.len()
    );

    // The rules are loaded and evaluate without error.
    let alerts = rule_exprs().len();
    wait_until(30, "every rule evaluated without error", &log, || async {
        let (_, body) = http_get(prom, "/api/v1/rules").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == alerts
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
    })
    .await;
    // The gateway is up: MqbridgeDown is not pending or firing.
    let (_, alerts) = http_get(prom, "/api/v1/alerts").await;
    assert!(!alerts.contains("MqbridgeDown"), "{alerts}");
    t.gw.shutdown().await;
}

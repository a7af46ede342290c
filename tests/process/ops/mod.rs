//! Operations files checked against the real thing: the alert rules with
//! promtool, the dashboard's and rules' metric names against a gateway's
//! `/metrics`, every dashboard query through a real Prometheus scraping a
//! gateway, the Docker files with docker-compose and against the README, and
//! the JSON log format of the binary.

mod docker;
mod logs;
mod prometheus;
mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;

/// A file of the repository.
fn repo(rel: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every PromQL expression of the dashboard's panels (rows included).
fn dashboard_exprs() -> Vec<String> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_owned());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let d: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/mqbridge.json")).expect("dashboard is JSON");
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Every alert expression of the rules file. The rules keep each `expr` on
/// one line; the count check makes a multi-line one fail here rather than be
/// skipped.
fn rule_exprs() -> Vec<String> {
    let text = read("docker/prometheus/rules.yml");
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    let alerts = text
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), alerts, "one single-line expr per alert");
    assert!(exprs
        .iter()
        .all(|e| !e.is_empty() && !e.starts_with(['|', '>'])));
    exprs
}

/// The `mqbridge_*` names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while let Some(at) = expr[i..].find("mqbridge_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && word(b[end]) {
            end += 1;
        }
        if start == 0 || !word(b[start - 1]) {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// `# TYPE` of every family of an OpenMetrics exposition.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.trim().to_owned()))
        .collect()
}

/// Names of the samples present (with at least one sample line).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// The family a sample name belongs to, if it is a name Prometheus stores:
/// counters only as `<family>_total`, histograms only as
/// `<family>_bucket/_sum/_count`, other types by their family name.
fn family_of<'a>(name: &str, families: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let typed = |base: &str, want: &[&str]| {
        families
            .get_key_value(base)
            .filter(|(_, t)| want.contains(&t.as_str()))
            .map(|(k, _)| k.as_str())
    };
    if let Some(base) = name.strip_suffix("_total") {
        if let Some(f) = typed(base, &["counter"]) {
            return Some(f);
        }
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(f) = typed(base, &["histogram"]) {
                return Some(f);
            }
        }
    }
    typed(name, &["gauge", "info", "stateset", "unknown"])
}

/// HTTP/1.0 GET (no chunked bodies): status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body.to_owned())
}

/// A gateway with the admin endpoint on a free port, after some traffic:
/// messages of each QoS in and out, one on the bridged telemetry route, a
/// retained message.
async fn gateway_with_traffic() -> (common::TestGateway, SocketAddr) {
    use common::b4;
    use rumqttc::QoS;
    let t = common::start_with(|c| c.admin.listen = "127.0.0.1:0".into()).await;
    let admin = t.gw.admin_addr.expect("admin endpoint");
    let mut sub = b4::connect(common::opts_v4(t.addr, "ops-sub", true)).await;
    sub.subscribe("ops/#", QoS::ExactlyOnce).await;
    let mut publ = b4::connect(common::opts_v4(t.addr, "ops-pub", true)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("ops/data", qos, false, b"x").await;
    }
    publ.publish("ops/retained", QoS::AtLeastOnce, true, b"r")
        .await;
    publ.publish("devices/d1/telemetry/t", QoS::AtLeastOnce, false, b"21.5")
        .await;
    sub.expect_publishes(4).await;
    (t, admin)
}

/// The gateway's `/metrics`, checked to be OpenMetrics.
async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    body
}

#[test]
fn metric_names_are_extracted_from_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(mqbridge_store_commit_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) / up{job="mqbridge"} + xmqbridge_no"#,
    );
    let want: BTreeSet<String> =
        ["mqbridge_store_commit_duration_seconds_bucket".to_owned()].into();
    assert_eq!(names, want);
}

#[test]
fn dashboard_has_a_row_for_each_group_and_uses_the_provisioned_data_source() {
    let d: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/mqbridge.json")).expect("dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Connections and sessions",
        "Messages by QoS",
        "Drops and refusals",
        "Queued and retained",
        "Bridge (uplink)",
        "Bridge (downlink commands)",
        "Store",
    ] {
        assert!(rows.contains(&want), "no row {want:?} in {rows:?}");
    }
    let datasource = read("grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("uid: prometheus"));
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
    }
    // Panel ids are unique (Grafana keys state on them).
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len());
}

/// The README's metrics table names every family `/metrics` exposes, with
/// its type, and nothing that does not exist (counters as `<family>_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_documents_every_metric_with_its_type() {
    let (t, admin) = gateway_with_traffic().await;
    let exposed: BTreeMap<String, String> = families(&scrape(admin).await)
        .into_iter()
        .map(|(name, kind)| {
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name
            };
            (name, kind)
        })
        .collect();
    let readme = read("README.md");
    let documented: BTreeMap<String, String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `mqbridge_"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let kind = rest.trim_start_matches([' ', '|']).split(' ').next()?;
            Some((format!("mqbridge_{name}"), kind.to_owned()))
        })
        .collect();
    assert_eq!(documented, exposed, "README metrics table vs /metrics");
    t.gw.shutdown().await;
}

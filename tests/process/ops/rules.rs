//! The alert rules pass `promtool check rules` and their unit tests; the
//! scrape config passes `promtool check config`; every metric the dashboard
//! and the rules use exists in a real gateway's `/metrics`.

use std::collections::BTreeSet;

use super::{dashboard_exprs, families, family_of, metric_names, repo, rule_exprs};
use crate::common::service;

fn promtool(args: &[&str]) -> Option<String> {
    if !service::program("promtool", "promtool (Debian's prometheus package)") {
        return None;
    }
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo("docker/prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Some(text)
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(checked) = promtool(&["check", "rules", "rules.yml"]) else {
        return;
    };
    let alerts = rule_exprs().len();
    assert!(
        checked.contains(&format!("SUCCESS: {alerts} rules found")),
        "{checked}"
    );
    let Some(tested) = promtool(&["test", "rules", "rules.test.yml"]) else {
        return;
    };
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Each alert has a case where it fires (an exp_alerts entry with its name).
    let tests = std::fs::read_to_string(repo("docker/prometheus/rules.test.yml")).expect("read");
    let rules = std::fs::read_to_string(repo("docker/prometheus/rules.yml")).expect("read");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
    {
        let alert = alert.trim();
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "no firing test case for {alert}"
        );
    }
}

#[test]
fn scrape_config_passes_promtool_check_config() {
    let Some(out) = promtool(&["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert!(out.contains("is valid prometheus config file"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_rules_exists_in_metrics() {
    let (t, admin) = super::gateway_with_traffic().await;
    let text = super::scrape(admin).await;
    t.gw.shutdown().await;
    let families = families(&text);
    let used: BTreeSet<String> = dashboard_exprs()
        .iter()
        .chain(rule_exprs().iter())
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(used.len() >= 30, "too few metric names found: {used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| family_of(n, &families).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the rules but not in /metrics (as that type): {missing:?}\nfamilies: {families:?}"
    );
}

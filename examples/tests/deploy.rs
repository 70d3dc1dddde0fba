//! What `examples/deploy/` ships for those who run Prometheus and Grafana:
//! the alert rules pass `promtool check rules` and their own unit tests
//! (`promtool test rules`), and every metric the rules and the dashboard
//! name is one a real server exports.
//!
//! Needs `promtool` (Debian's `prometheus`; `.ci/run` installs it); without
//! it the test fails, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::harness;
use harness::Web;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is missing: install Debian's prometheus (.ci/run does)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `hodei_...` name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hodei_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn alert_rules_check_and_pass_their_tests() {
    let dir = Path::new(DEPLOY).join("prometheus");
    promtool(&["check", "rules", "hodei-alerts.yml"], &dir);
    promtool(&["test", "rules", "hodei-alerts.test.yml"], &dir);
}

#[test]
fn the_dashboard_and_the_rules_name_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let j = w.submit(
        &w.admin,
        serde_json::json!({"script": "echo hi", "tenant": "acme"}),
    );
    w.wait_state(j["id"].as_str().unwrap(), &["succeeded"]);
    let metrics = hodei_examples::http_get(&w.http, "/metrics", Some(&w.ca())).unwrap();
    let mut exported = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            exported.insert(name.to_string());
            if matches!(kind, "histogram" | "summary") {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }
    let dashboard =
        std::fs::read_to_string(Path::new(DEPLOY).join("grafana/hodei-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let rules =
        std::fs::read_to_string(Path::new(DEPLOY).join("prometheus/hodei-alerts.yml")).unwrap();
    let named: BTreeSet<String> = names(&dashboard).into_iter().chain(names(&rules)).collect();
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The alerts cover what the deployment guide promises.
    for needed in [
        "hodei_dispatched_total",
        "hodei_queue_depth",
        "hodei_workers",
        "hodei_store_commit_seconds_sum",
        "hodei_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(names(&rules).contains(needed), "no rule on {needed}");
    }
}

//! Job arrays and concurrency keys through the real server and agents over
//! TLS: an array's tasks each run once with their index, never more at
//! once than its limit; a concurrency key is shared across tenants and
//! holds up no other job; an array is cancelled whole; bad input is named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness;
use harness::Web;

fn array(w: &Web, id: &str) -> Value {
    let a = w.call("GET", &format!("/api/v1/arrays/{id}"), &w.admin, None);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

fn wait_array(w: &Web, id: &str) -> Value {
    for _ in 0..1200 {
        let s = array(w, id);
        if s["state"] != "running" {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("array {id} never ended: {}", array(w, id));
}

/// Marks `<name> start|end <ns>` lines a job writes around its work.
fn marked(file: &Path, name: &str, work: &str) -> String {
    let f = file.display();
    format!(
        "echo \"{name} start $(date +%s%N)\" >> {f}; {work}; echo \"{name} end $(date +%s%N)\" >> {f}"
    )
}

/// Each name's (start, end), from the marks.
fn spans(file: &Path) -> BTreeMap<String, (u128, u128)> {
    let mut out: BTreeMap<String, (u128, u128)> = BTreeMap::new();
    for line in std::fs::read_to_string(file).unwrap().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (name, what, at) = (parts[0], parts[1], parts[2].parse::<u128>().unwrap());
        let e = out.entry(name.to_string()).or_default();
        if what == "start" {
            assert_eq!(e.0, 0, "{name} started twice");
            e.0 = at;
        } else {
            e.1 = at;
        }
    }
    out
}

/// The most spans open at once.
fn most_at_once(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for (s, e) in spans {
        edges.push((*s, 1));
        edges.push((*e, -1));
    }
    // An end at the same instant as a start comes first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn an_array_runs_each_task_once_with_its_index_never_over_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let file = dir.path().join("marks.txt");
    std::fs::write(&file, "").unwrap();
    let body = json!({
        "spec": {
            "name": "shard",
            "script": marked(&file, "task-$HODEI_ARRAY_INDEX-of-$HODEI_ARRAY_SIZE", "sleep 0.3"),
        },
        "count": 12,
        "concurrency": 3,
    });
    let a = w.call("POST", "/api/v1/arrays", &w.admin, Some(&body.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    let s = a.json();
    assert_eq!(s["count"], 12);
    let id = s["id"].as_str().unwrap().to_string();
    // While it runs, never more than three at once by its own count.
    let mut seen_running = 0;
    loop {
        let s = array(&w, &id);
        let running = s["running"].as_u64().unwrap();
        assert!(running <= 3, "{s}");
        seen_running = seen_running.max(running);
        if s["state"] != "running" {
            assert_eq!(s["state"], "succeeded", "{s}");
            assert_eq!(s["succeeded"], 12, "{s}");
            assert_eq!(s["queued"], 0);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_running >= 1);
    let spans = spans(&file);
    let names: Vec<&String> = spans.keys().collect();
    let mut want: Vec<String> = (0..12).map(|i| format!("task-{i}-of-12")).collect();
    want.sort();
    assert_eq!(names, want.iter().collect::<Vec<_>>(), "each index once");
    let all: Vec<(u128, u128)> = spans.values().copied().collect();
    let most = most_at_once(&all);
    assert!(most <= 3, "{most} tasks ran at once, limit 3");
    assert!(
        most >= 2,
        "the limit, not the workers, should bound it: {most}"
    );
    // A task is an ordinary job of the array.
    let jobs = w
        .call("GET", "/api/v1/jobs?page_size=100", &w.admin, None)
        .json();
    let ours = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["spec"]["labels"]["hodei.array"] == id.as_str())
        .count();
    assert_eq!(ours, 12);
}

#[test]
fn a_concurrency_key_is_shared_across_tenants_and_holds_up_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let acme = w.token("submitter", &["acme"]);
    let globex = w.token("submitter", &["globex"]);
    let file = dir.path().join("marks.txt");
    std::fs::write(&file, "").unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let token = if i % 2 == 0 { &acme } else { &globex };
        let j = w.submit(
            token,
            json!({
                "script": marked(&file, &format!("deploy-{i}"), "sleep 0.3"),
                "concurrency": {"key": "deploy-prod", "limit": 1},
            }),
        );
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    // A job with no key runs at once, whatever waits on the key.
    let free = w.submit(&acme, json!({"script": marked(&file, "free", "true")}));
    w.wait_state(free["id"].as_str().unwrap(), &["succeeded"]);
    for id in &ids {
        w.wait_state(id, &["succeeded"]);
    }
    let spans = spans(&file);
    let deploys: Vec<(u128, u128)> = spans
        .iter()
        .filter(|(k, _)| k.starts_with("deploy-"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(deploys.len(), 6);
    assert_eq!(most_at_once(&deploys), 1, "two deploys overlapped");
    let last_end = deploys.iter().map(|d| d.1).max().unwrap();
    assert!(
        spans["free"].1 < last_end,
        "the free job waited for the key"
    );
    // The key shows in the job as submitted.
    let j = w.job(&ids[0]);
    assert_eq!(j["spec"]["concurrency"]["key"], "deploy-prod");
}

#[test]
fn an_array_is_cancelled_whole_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let body = json!({"spec": {"script": "sleep 30"}, "count": 40, "concurrency": 2});
    let a = w.call("POST", "/api/v1/arrays", &w.admin, Some(&body.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.json()["id"].as_str().unwrap().to_string();
    for _ in 0..200 {
        if array(&w, &id)["running"] == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = w.call(
        "POST",
        &format!("/api/v1/arrays/{id}/cancel"),
        &w.admin,
        None,
    );
    assert_eq!(c.status, 200, "{}", c.body);
    let s = wait_array(&w, &id);
    assert_eq!(s["state"], "cancelled", "{s}");
    assert_eq!(s["cancelled"], 40, "{s}");

    // Another tenant does not see it.
    let other = w.token("viewer", &["globex"]);
    let a = w.call("GET", &format!("/api/v1/arrays/{id}"), &other, None);
    assert_eq!(a.status, 404, "{}", a.body);

    for (body, field) in [
        (json!({"spec": {"script": "true"}, "count": 0}), "count"),
        (
            json!({"spec": {"script": "true"}, "count": 300000}),
            "count",
        ),
        (
            json!({"spec": {"script": "true", "idempotency_key": "k"}, "count": 2}),
            "spec.idempotency_key",
        ),
        (
            json!({"spec": {"script": "true", "concurrency": {"key": "k", "limit": 1}}, "count": 2, "concurrency": 1}),
            "spec.concurrency",
        ),
        (
            json!({"spec": {"script": "true", "concurrency": {"key": "k", "limit": 0}}, "count": 2}),
            "spec.concurrency.limit",
        ),
        (
            json!({"spec": {"script": "true"}, "count": "many"}),
            "count",
        ),
    ] {
        let a = w.call("POST", "/api/v1/arrays", &w.admin, Some(&body.to_string()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.json()["field"], field, "{body}: {}", a.body);
    }
}

#[test]
fn the_cli_submits_an_array_and_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let out = w.cli(&[
        "--output",
        "json",
        "submit",
        "--array",
        "5",
        "--array-limit",
        "2",
        "--wait",
        "--script",
        "test $HODEI_ARRAY_INDEX -lt 4",
    ]);
    // Task 4 fails: the array fails, and so does the command.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["succeeded"], 4, "{s}");
    assert_eq!(s["failed"], 1, "{s}");
    assert_eq!(s["state"], "failed");
    assert_eq!(s["concurrency"], 2);
    let id = s["array_id"].as_str().unwrap();
    let out = w.cli(&["array", "status", id]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 succeeded, 1 failed"), "{text}");
    // Refused input is bad usage: exit code 2, naming the field.
    let out = w.cli(&["submit", "--array", "0", "--script", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("count"));
}

//! Pipelines through the real server and agents over TLS: outputs passed
//! along a diamond, compensations in reverse after a failure, cycles and
//! unknown steps refused by name, cancel mid-pipeline, tenants apart, and
//! a pipeline carried across a server killed with SIGKILL, no step run
//! twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness;
use crate::process;
use harness::Web;

fn submit(w: &Web, token: &str, p: Value) -> Value {
    let a = w.call("POST", "/api/v1/pipelines", token, Some(&p.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()
}

fn status(w: &Web, id: &str) -> Value {
    let a = w.call("GET", &format!("/api/v1/pipelines/{id}"), &w.admin, None);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

fn wait_pipeline(w: &Web, id: &str, want: &[&str]) -> Value {
    for _ in 0..1200 {
        let s = status(w, id);
        if want.contains(&s["state"].as_str().unwrap()) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pipeline {id} never reached {want:?}: {}", status(w, id));
}

fn step<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {s}"))
}

fn logs(w: &Web, job: &str) -> String {
    let a = w.call(
        "GET",
        &format!("/api/v1/jobs/{job}/logs?limit=1000"),
        &w.admin,
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stream"] == "stdout")
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

fn script(s: &str) -> Value {
    json!({ "script": s })
}

#[test]
fn a_diamond_passes_outputs_to_the_steps_after_and_tenants_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let acme = w.token("submitter", &["acme"]);
    let other = w.token("submitter", &["globex"]);
    let p = submit(
        &w,
        &acme,
        json!({
            "name": "release",
            "steps": [
                {"name": "build", "job": script("echo VERSION=1.2.3 >> \"$HODEI_OUTPUTS\"; echo 'URL=http://x/?a=b' >> \"$HODEI_OUTPUTS\"")},
                {"name": "test-a", "depends_on": ["build"], "job": script("echo \"a saw $BUILD_VERSION\"; echo PASSED=a >> \"$HODEI_OUTPUTS\"")},
                {"name": "test-b", "depends_on": ["build"], "job": script("echo \"b saw $BUILD_URL\"; echo PASSED=b >> \"$HODEI_OUTPUTS\"")},
                {"name": "deploy", "depends_on": ["test-a", "test-b", "build"],
                 "job": script("echo \"deploy $BUILD_VERSION after $TEST_A_PASSED $TEST_B_PASSED\"")},
                {"name": "rollback", "depends_on": ["deploy"], "condition": "on_failure", "job": script("echo never")},
            ],
        }),
    );
    assert_eq!(p["tenant"], "acme");
    let id = p["id"].as_str().unwrap();
    let s = wait_pipeline(&w, id, &["succeeded", "failed", "cancelled"]);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(step(&s, "build")["outputs"]["VERSION"], "1.2.3");
    assert_eq!(step(&s, "build")["outputs"]["URL"], "http://x/?a=b");
    assert_eq!(step(&s, "rollback")["state"], "skipped");
    assert!(step(&s, "rollback").get("job_id").is_none());
    let deploy = step(&s, "deploy")["job_id"].as_str().unwrap();
    assert_eq!(logs(&w, deploy), "deploy 1.2.3 after a b\n");
    assert_eq!(
        logs(&w, step(&s, "test-b")["job_id"].as_str().unwrap()),
        "b saw http://x/?a=b\n"
    );
    // Each step is an ordinary job of the pipeline's tenant.
    let job = w.job(deploy);
    assert_eq!(job["spec"]["tenant"], "acme");
    assert_eq!(job["spec"]["labels"]["hodei.pipeline"], id);
    assert_eq!(s["counts"]["succeeded"], 4);
    assert_eq!(s["counts"]["skipped"], 1);

    // Another tenant neither sees nor cancels it.
    let a = w.call("GET", &format!("/api/v1/pipelines/{id}"), &other, None);
    assert_eq!(a.status, 404, "{}", a.body);
    let a = w.call(
        "POST",
        &format!("/api/v1/pipelines/{id}/cancel"),
        &other,
        None,
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let mine = w.call("GET", "/api/v1/pipelines", &other, None).json();
    assert!(mine["pipelines"].as_array().unwrap().is_empty(), "{mine}");
    let all = w.call("GET", "/api/v1/pipelines", &acme, None).json();
    assert_eq!(all["pipelines"][0]["id"], id);
    assert_eq!(all["pipelines"][0]["state"], "succeeded");
    // An ended pipeline cannot be cancelled.
    let a = w.call(
        "POST",
        &format!("/api/v1/pipelines/{id}/cancel"),
        &acme,
        None,
    );
    assert_eq!(a.status, 409, "{}", a.body);
}

#[test]
fn a_failure_runs_the_compensations_of_the_steps_that_succeeded_latest_first() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let p = submit(
        &w,
        &w.admin,
        json!({
            "name": "saga",
            "steps": [
                {"name": "reserve", "compensate": "release", "job": script("echo ID=r-1 >> \"$HODEI_OUTPUTS\"")},
                {"name": "charge", "depends_on": ["reserve"], "compensate": "refund", "job": script("sleep 0.3")},
                {"name": "slow", "depends_on": ["reserve"], "compensate": "refund", "job": script("sleep 60")},
                {"name": "ship", "depends_on": ["charge"], "job": script("sleep 0.5; exit 3")},
                {"name": "notify", "depends_on": ["ship"], "job": script("echo never")},
                {"name": "report", "depends_on": ["ship"], "condition": "always", "job": script("echo report")},
            ],
            "compensations": [
                {"name": "release", "job": script("echo \"release $RESERVE_ID\"")},
                {"name": "refund", "job": script("echo refund")},
            ],
        }),
    );
    let id = p["id"].as_str().unwrap();
    let s = wait_pipeline(&w, id, &["failed", "succeeded", "cancelled"]);
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(step(&s, "ship")["state"], "failed");
    // Failing fast: the step still running is cancelled, the step after
    // the failure skipped, the `always` step still runs.
    assert_eq!(step(&s, "slow")["state"], "cancelled");
    assert_eq!(step(&s, "notify")["state"], "skipped");
    assert_eq!(step(&s, "report")["state"], "succeeded");
    // Compensations: charge then reserve (the cancelled step had not
    // succeeded), one after the other.
    let comps = s["compensations"].as_array().unwrap();
    let order: Vec<&str> = comps.iter().map(|c| c["step"].as_str().unwrap()).collect();
    assert_eq!(order, ["charge", "reserve"], "{s}");
    assert!(comps.iter().all(|c| c["state"] == "succeeded"), "{s}");
    let release = comps[1]["job_id"].as_str().unwrap();
    assert_eq!(logs(&w, release), "release r-1\n");
    let refund = w.job(comps[0]["job_id"].as_str().unwrap());
    let release = w.job(release);
    assert!(
        refund["updated_at_ms"].as_u64() <= release["created_at_ms"].as_u64(),
        "the second compensation started before the first ended"
    );
}

#[test]
fn cycles_and_unknown_steps_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 0);
    let body = json!({
        "steps": [
            {"name": "a", "depends_on": ["c"], "job": script("true")},
            {"name": "b", "depends_on": ["a", "ghost"], "job": script("true")},
            {"name": "c", "depends_on": ["b"], "job": script("true")},
            {"name": "d", "depends_on": ["d2"], "job": {"script": "true", "priority": 99}},
            {"name": "d2", "depends_on": ["d"], "job": script("true")},
        ],
    });
    let a = w.call(
        "POST",
        "/api/v1/pipelines",
        &w.admin,
        Some(&body.to_string()),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    let detail = a.json()["detail"].as_str().unwrap().to_string();
    for want in [
        "steps[1].depends_on[1]: unknown step \"ghost\"",
        "cycle: a -> c -> b -> a",
        "cycle: d -> d2 -> d",
        "steps[3].job.priority",
    ] {
        assert!(detail.contains(want), "{want:?} not in {detail}");
    }
    // Nothing was stored.
    let all = w.call("GET", "/api/v1/pipelines", &w.admin, None).json();
    assert!(all["pipelines"].as_array().unwrap().is_empty());

    // The CLI refuses the same file before sending it, exit code 2.
    let file = dir.path().join("cycle.toml");
    std::fs::write(
        &file,
        r#"
        [[steps]]
        name = "x"
        depends_on = ["y"]
        job = { command = { script = "true" } }
        [[steps]]
        name = "y"
        depends_on = ["x", "nope"]
        job = { command = { script = "true" } }
        "#,
    )
    .unwrap();
    let out = w.cli(&["pipeline", "submit", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cycle: x -> y -> x"), "{err}");
    assert!(err.contains("unknown step \"nope\""), "{err}");
}

#[test]
fn cancelling_a_pipeline_cancels_its_running_steps_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let p = submit(
        &w,
        &w.admin,
        json!({
            "steps": [
                {"name": "first", "job": script("sleep 60")},
                {"name": "second", "depends_on": ["first"], "job": script("true")},
                {"name": "cleanup", "depends_on": ["second"], "condition": "always", "job": script("true")},
            ],
        }),
    );
    let id = p["id"].as_str().unwrap();
    let first = loop {
        let s = status(&w, id);
        if let Some(j) = step(&s, "first")["job_id"].as_str() {
            break j.to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    w.wait_state(&first, &["running"]);
    let a = w.call(
        "POST",
        &format!("/api/v1/pipelines/{id}/cancel"),
        &w.admin,
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let s = wait_pipeline(&w, id, &["cancelled", "failed", "succeeded"]);
    assert_eq!(s["state"], "cancelled", "{s}");
    assert_eq!(step(&s, "first")["state"], "cancelled");
    assert_eq!(step(&s, "second")["state"], "skipped");
    assert_eq!(step(&s, "cleanup")["state"], "skipped");
    assert_eq!(w.job(&first)["state"]["kind"], "cancelled");
    // The CLI shows the same.
    let out = w.cli(&["--output", "json", "pipeline", "status", id]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "cancelled");
}

/// A step's secret is sealed in the pipeline's record: no file of the
/// data directory holds it in the clear, before or after it ran; the job
/// saw it, and its log and outputs show it masked.
#[test]
fn a_step_s_secret_is_never_at_rest_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Web::start(dir.path(), 0);
    let value = "pipel1ne-s3cret-7d2a90";
    let p = submit(
        &w,
        &w.admin,
        json!({
            "steps": [
                {"name": "wait", "job": script("true")},
                {"name": "use", "depends_on": ["wait"], "job": {
                    "script": "echo \"saw $TOKEN\"; echo LEAK=$TOKEN >> \"$HODEI_OUTPUTS\"",
                    "secrets": [{"name": "TOKEN", "value": value}],
                }},
            ],
        }),
    );
    let id = p["id"].as_str().unwrap();
    assert_eq!(process::any_file_holds(dir.path(), value.as_bytes()), None);
    w.add_agent("late");
    let s = wait_pipeline(&w, id, &["succeeded", "failed", "cancelled"]);
    assert_eq!(s["state"], "succeeded", "{s}");
    let out = logs(&w, step(&s, "use")["job_id"].as_str().unwrap());
    // Masked where it was printed: the job had it.
    assert!(
        out.starts_with("saw ") && out.len() > 5 && !out.contains(value),
        "{out}"
    );
    let leak = step(&s, "use")["outputs"]["LEAK"].as_str().unwrap();
    assert!(!leak.is_empty() && leak != value, "{leak}");
    assert!(!s.to_string().contains(value));
    assert_eq!(process::any_file_holds(dir.path(), value.as_bytes()), None);
}

/// Every step appends its name to `file`; the pipeline runs across a
/// server killed with SIGKILL twice, and each step ran exactly once.
#[test]
fn a_pipeline_survives_server_kills_and_runs_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Web::start(dir.path(), 2);
    let file = dir.path().join("ran.txt");
    std::fs::write(&file, "").unwrap();
    let f = file.to_str().unwrap();
    let mut steps = Vec::new();
    for i in 0..6 {
        let mut s = json!({
            "name": format!("s{i}"),
            "job": script(&format!("sleep 0.4; echo s{i} >> {f}; echo N={i} >> \"$HODEI_OUTPUTS\"")),
        });
        if i > 0 {
            s["depends_on"] = json!([format!("s{}", i - 1)]);
        }
        steps.push(s);
    }
    // A wide layer too: eight steps at once after s1.
    for k in 0..8 {
        steps.push(json!({
            "name": format!("w{k}"),
            "depends_on": ["s1"],
            "job": script(&format!("echo \"w{k} $S1_N\" >> {f}")),
        }));
    }
    let p = submit(&w, &w.admin, json!({ "name": "long", "steps": steps }));
    let id = p["id"].as_str().unwrap().to_string();
    for kill_after in [Duration::from_millis(700), Duration::from_millis(900)] {
        std::thread::sleep(kill_after);
        w.kill_and_restart();
    }
    let s = wait_pipeline(&w, &id, &["succeeded", "failed", "cancelled"]);
    assert_eq!(s["state"], "succeeded", "{s}");
    let ran = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    want.extend((0..8).map(|k| format!("w{k} 1")));
    want.sort();
    assert_eq!(lines, want, "each step once:\n{ran}");
    assert_step_jobs_unique(&w, &id, 14);
}

/// One job per step: the steps' jobs are distinct, and no other job of the
/// pipeline exists.
fn assert_step_jobs_unique(w: &Web, id: &str, steps: usize) {
    let mut seen = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/jobs?page_size=1000&page_token={t}"),
            None => "/api/v1/jobs?page_size=1000".to_string(),
        };
        let page = w.call("GET", &path, &w.admin, None).json();
        for j in page["jobs"].as_array().unwrap() {
            if j["spec"]["labels"]["hodei.pipeline"] == id {
                let step = j["spec"]["labels"]["hodei.step"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(seen.insert(step.clone()), "step {step} has two jobs");
            }
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), steps);
}

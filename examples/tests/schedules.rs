//! Periodic jobs through the real server and agents over TLS: each tick
//! runs once, pause and resume and delete, the overlap policies, a server
//! killed with SIGKILL (no tick run twice, none caught up beyond the
//! policy), and a thousand schedules firing on the same second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness;
use harness::Web;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn create(w: &Web, body: Value) -> Value {
    let a = w.call(
        "POST",
        "/api/v1/schedules",
        &w.admin,
        Some(&body.to_string()),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()
}

fn schedule(w: &Web, id: &str) -> Value {
    let a = w.call("GET", &format!("/api/v1/schedules/{id}"), &w.admin, None);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

/// Every job a schedule ran: tick (ms) -> job ids, from the job list.
fn runs(w: &Web, id: &str) -> HashMap<u64, Vec<Value>> {
    let mut out: HashMap<u64, Vec<Value>> = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/jobs?page_size=1000&page_token={t}"),
            None => "/api/v1/jobs?page_size=1000".to_string(),
        };
        let page = w.call("GET", &path, &w.admin, None).json();
        for j in page["jobs"].as_array().unwrap() {
            if j["spec"]["labels"]["hodei.schedule"] == id {
                let tick: u64 = j["spec"]["labels"]["hodei.schedule.tick"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                out.entry(tick).or_default().push(j.clone());
            }
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    out
}

fn once_each(runs: &HashMap<u64, Vec<Value>>) {
    for (tick, jobs) in runs {
        assert_eq!(jobs.len(), 1, "tick {tick} ran {} times", jobs.len());
    }
}

#[test]
fn each_tick_runs_once_and_pause_resume_delete_work() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let s = create(
        &w,
        json!({
            "name": "heartbeat",
            "cron": "* * * * * *",
            "timezone": "Europe/Madrid",
            "job": {"script": "echo \"tick $HODEI_SCHEDULE_TICK\""},
        }),
    );
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["timezone"], "Europe/Madrid");
    let next: Vec<u64> = serde_json::from_value(s["next_runs_ms"].clone()).unwrap();
    assert_eq!(next.len(), 5);
    assert!(next.windows(2).all(|p| p[1] - p[0] == 1000), "{next:?}");
    std::thread::sleep(Duration::from_millis(3500));
    let r = runs(&w, &id);
    once_each(&r);
    assert!((2..=5).contains(&r.len()), "{} runs in 3.5 s", r.len());
    assert!(r.keys().all(|t| t % 1000 == 0), "ticks fall on seconds");
    let one = r.values().next().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.wait_state(&one, &["succeeded"]);

    // Paused: nothing runs, nothing is shown as next.
    let a = w.call(
        "POST",
        &format!("/api/v1/schedules/{id}/pause"),
        &w.admin,
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["paused"], true);
    assert!(a.json()["next_runs_ms"].as_array().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let before = runs(&w, &id).len();
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(runs(&w, &id).len(), before, "a paused schedule ran");
    // Resumed: from now on, the paused ticks not caught up.
    let resumed_at = now_ms();
    let a = w.call(
        "POST",
        &format!("/api/v1/schedules/{id}/resume"),
        &w.admin,
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    std::thread::sleep(Duration::from_millis(2500));
    let after = runs(&w, &id);
    once_each(&after);
    let new: Vec<u64> = after
        .keys()
        .copied()
        .filter(|t| !r.contains_key(t))
        .collect();
    assert!(!new.is_empty(), "a resumed schedule did not run");
    assert!(
        new.iter()
            .all(|t| *t + 1000 >= resumed_at || after.len() == before),
        "ticks of the pause ran: {new:?}, resumed at {resumed_at}"
    );
    let s = schedule(&w, &id);
    assert!(!s["recent_runs"].as_array().unwrap().is_empty());
    assert!(s["last_tick_ms"].as_u64().unwrap() >= resumed_at - 1000);

    // Deleted: gone, its runs stay.
    let a = w.call("DELETE", &format!("/api/v1/schedules/{id}"), &w.admin, None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["deleted"], true);
    let a = w.call("GET", &format!("/api/v1/schedules/{id}"), &w.admin, None);
    assert_eq!(a.status, 404, "{}", a.body);
    let kept = runs(&w, &id).len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs(&w, &id).len(), kept);
}

/// The runs of a schedule not ended, polled for a while: at most one at
/// a time, for the policies that forbid overlap.
fn at_most_one_open(w: &Web, id: &str, for_ms: u64) {
    let end = now_ms() + for_ms;
    while now_ms() < end {
        let s = schedule(w, id);
        let open = s["recent_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| w.job(r["job_id"].as_str().unwrap())["is_final"] == false)
            .count();
        assert!(open <= 1, "{open} runs at once: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn overlap_policies_skip_or_cancel_the_run_before() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let skip = create(
        &w,
        json!({"cron": "* * * * * *", "overlap": "skip", "job": {"script": "sleep 2.2"}}),
    );
    let cancel = create(
        &w,
        json!({"cron": "* * * * * *", "overlap": "cancel_previous", "job": {"script": "sleep 30"}}),
    );
    let allow = create(
        &w,
        json!({"cron": "* * * * * *", "job": {"script": "sleep 30"}}),
    );
    let (skip, cancel, allow) = (
        skip["id"].as_str().unwrap().to_string(),
        cancel["id"].as_str().unwrap().to_string(),
        allow["id"].as_str().unwrap().to_string(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    at_most_one_open(&w, &skip, 3500);
    at_most_one_open(&w, &cancel, 1000);
    let s = schedule(&w, &skip);
    assert!(s["skipped"].as_u64().unwrap() >= 1, "{s}");
    // cancel_previous: every run but the latest was cancelled.
    let r = runs(&w, &cancel);
    once_each(&r);
    let mut ticks: Vec<u64> = r.keys().copied().collect();
    ticks.sort_unstable();
    assert!(ticks.len() >= 3, "{ticks:?}");
    for t in &ticks[..ticks.len() - 2] {
        let j = &r[t][0];
        let state = w.job(j["id"].as_str().unwrap())["state"]["kind"].clone();
        assert_eq!(state, "cancelled", "tick {t}");
    }
    // allow: runs pile up.
    let open = runs(&w, &allow)
        .values()
        .filter(|j| w.job(j[0]["id"].as_str().unwrap())["is_final"] == false)
        .count();
    assert!(open >= 3, "{open} open runs of an overlapping schedule");
    for id in [&skip, &cancel, &allow] {
        w.call("DELETE", &format!("/api/v1/schedules/{id}"), &w.admin, None);
    }
}

#[test]
fn a_server_killed_runs_no_tick_twice_and_catches_up_as_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Web::start(dir.path(), 1);
    let s = create(
        &w,
        json!({"cron": "* * * * * *", "catch_up": 1, "job": {"script": "true"}}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2300));
    let killed_at = now_ms();
    w.proc.signal(libc::SIGKILL);
    w.proc.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(5000));
    let restarted_at = now_ms();
    w.restart();
    std::thread::sleep(Duration::from_millis(2500));
    let r = runs(&w, &id);
    once_each(&r);
    let after: Vec<u64> = r.keys().copied().filter(|t| *t > killed_at).collect();
    assert!(!after.is_empty(), "nothing ran after the restart");
    // Ticks well inside the downtime are not run: only the latest missed
    // one (catch-up 1) and those on time around the restart.
    let deep: Vec<u64> = r
        .keys()
        .copied()
        .filter(|t| *t > killed_at + 1500 && *t + 3000 < restarted_at)
        .collect();
    assert!(deep.is_empty(), "ticks of the downtime ran: {deep:?}");
    let s = schedule(&w, &id);
    assert!(s["skipped"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn a_thousand_schedules_firing_on_the_same_second_all_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 0);
    let mut ids = Vec::new();
    for i in 0..1000 {
        let s = create(
            &w,
            json!({"name": format!("s{i}"), "cron": "*/10 * * * * *", "job": {"argv": ["true"]}}),
        );
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    // The first tick after every schedule exists.
    let created = now_ms();
    let tick = (created / 10_000 + 1) * 10_000;
    std::thread::sleep(Duration::from_millis(tick - now_ms() + 3000));
    let mut per_schedule: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut token: Option<String> = None;
    let ids_set: HashSet<&String> = ids.iter().collect();
    let mut jobs_of_tick = 0;
    let mut latest_created = 0u64;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/jobs?page_size=1000&page_token={t}"),
            None => "/api/v1/jobs?page_size=1000".to_string(),
        };
        let page = w.call("GET", &path, &w.admin, None).json();
        for j in page["jobs"].as_array().unwrap() {
            let sid = j["spec"]["labels"]["hodei.schedule"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(ids_set.contains(&sid));
            let t: u64 = j["spec"]["labels"]["hodei.schedule.tick"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                per_schedule.entry(sid).or_default().insert(t),
                "a tick ran twice"
            );
            if t == tick {
                jobs_of_tick += 1;
                latest_created = latest_created.max(j["created_at_ms"].as_u64().unwrap());
            }
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(jobs_of_tick, 1000, "every schedule runs the tick once");
    println!(
        "1000 schedules on one tick: the last run stored {} ms after the tick",
        latest_created.saturating_sub(tick)
    );
}

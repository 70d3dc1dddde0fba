//! The HTTP/JSON API against the real server and agents over TLS: the
//! same rules as gRPC (validation naming the field, roles, tenants),
//! problem details, paging, log history from either end, and Server-Sent
//! Events that resume with `Last-Event-ID`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use crate::harness;
use harness::Web;

fn problem(a: &harness::Answer, status: u16, field: Option<&str>) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{}",
        a.body
    );
    let p = a.json();
    assert_eq!(p["status"].as_u64(), Some(u64::from(status)));
    if let Some(f) = field {
        assert_eq!(p["field"].as_str(), Some(f), "{}", a.body);
        assert!(p["detail"].as_str().unwrap().contains(f), "{}", a.body);
    }
}

#[test]
fn the_api_validates_authorises_and_pages_as_grpc_does() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let admin = w.admin.clone();

    // Every kind of bad submission is refused naming its field, and
    // nothing of it is stored.
    let bad: &[(serde_json::Value, &str)] = &[
        (
            json!({"spec": {"script": "true", "priority": 99}}),
            "spec.priority",
        ),
        (
            json!({"spec": {"script": "true", "tenant": "Not A Tenant"}}),
            "spec.tenant",
        ),
        (json!({"spec": {"script": "true", "colour": "red"}}), "spec"),
        (
            json!({"spec": {"script": "true", "priority": "high"}}),
            "spec.priority",
        ),
        (
            json!({"spec": {"script": "true", "argv": ["true"]}}),
            "spec.script",
        ),
        (
            json!({"spec": {"script": "true", "secrets": [{"name": "A"}]}}),
            "spec.secrets[0].value",
        ),
        (json!({"spec": {}}), "spec.command"),
        (
            json!({"spec": {"script": "true", "dependencies": ["nope"]}}),
            "spec.dependencies[0]",
        ),
        (
            json!({"spec": {"script": "true", "timeout_ms": 0}}),
            "spec.timeout",
        ),
    ];
    for (body, field) in bad {
        let a = w.call("POST", "/api/v1/jobs", &admin, Some(&body.to_string()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        let p = a.json();
        assert!(
            p["detail"].as_str().unwrap().contains(field),
            "{body}: {}",
            a.body
        );
    }
    problem(
        &w.call("POST", "/api/v1/jobs", &admin, Some("{\"spec\": ")),
        400,
        None,
    );
    let not_json = w.call_with(
        "POST",
        "/api/v1/jobs",
        &admin,
        &[("Content-Type", "text/plain")],
        None,
    );
    assert_eq!(not_json.status, 415, "{}", not_json.body);
    let listed = w.call("GET", "/api/v1/jobs", &admin, None).json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);

    // Authentication and roles.
    problem(&w.call("GET", "/api/v1/jobs", "", None), 401, None);
    problem(
        &w.call("GET", "/api/v1/jobs", "not-a-token", None),
        401,
        None,
    );
    let viewer = w.token("viewer", &["acme"]);
    let acme = w.token("submitter", &["acme"]);
    let other = w.token("submitter", &["globex"]);
    let refused = w.call(
        "POST",
        "/api/v1/jobs",
        &viewer,
        Some(&json!({"spec": {"script": "true"}}).to_string()),
    );
    problem(&refused, 403, None);
    problem(&w.call("GET", "/api/v1/tokens", &viewer, None), 403, None);

    // Submission, idempotency, Location.
    let spec =
        json!({"script": "echo out; echo err >&2", "name": "hello", "idempotency_key": "k1"});
    let body = json!({ "spec": spec }).to_string();
    let first = w.call("POST", "/api/v1/jobs", &acme, Some(&body));
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        first.header("location"),
        Some(format!("/api/v1/jobs/{id}").as_str())
    );
    let again = w.call("POST", "/api/v1/jobs", &acme, Some(&body));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["job"]["id"].as_str(), Some(id.as_str()));
    assert_eq!(again.json()["created"], json!(false));
    assert_eq!(first.json()["job"]["spec"]["tenant"], json!("acme"));

    // Another tenant's job does not exist for them; the viewer sees it.
    problem(
        &w.call("GET", &format!("/api/v1/jobs/{id}"), &other, None),
        404,
        None,
    );
    problem(
        &w.call("GET", "/api/v1/jobs/not-an-id", &admin, None),
        400,
        Some("job_id"),
    );
    let done = w.wait_state(&id, &["succeeded"]);
    assert_eq!(done["is_final"], json!(true));
    let seen = w.call("GET", &format!("/api/v1/jobs/{id}"), &viewer, None);
    assert_eq!(seen.status, 200, "{}", seen.body);
    problem(
        &w.call("POST", &format!("/api/v1/jobs/{id}/cancel"), &acme, None),
        409,
        None,
    );
    let attempts = w
        .call("GET", &format!("/api/v1/jobs/{id}/attempts"), &viewer, None)
        .json();
    assert_eq!(attempts["attempts"][0]["exit"]["code"], json!(0));

    // Its output, stdout and stderr told apart.
    let logs = w
        .call("GET", &format!("/api/v1/jobs/{id}/logs"), &viewer, None)
        .json();
    let chunks = logs["chunks"].as_array().unwrap();
    let text = |stream: &str| -> String {
        chunks
            .iter()
            .filter(|c| c["stream"] == json!(stream))
            .map(|c| c["text"].as_str().unwrap())
            .collect()
    };
    assert_eq!(text("stdout"), "out\n");
    assert_eq!(text("stderr"), "err\n");

    // Paging and filters of the job list.
    for i in 0..7 {
        w.submit(
            &admin,
            json!({"script": "true", "name": format!("p{i}"), "tenant": "globex"}),
        );
    }
    let mut seen = 0;
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/v1/jobs?tenant=globex&page_size=3&page_token={token}");
        let page = w.call("GET", &path, &admin, None).json();
        seen += page["jobs"].as_array().unwrap().len();
        pages += 1;
        match page["next_page_token"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!((seen, pages), (7, 3));
    problem(
        &w.call("GET", "/api/v1/jobs?page_size=0", &admin, None),
        400,
        Some("page_size"),
    );
    problem(
        &w.call("GET", "/api/v1/jobs?state=sleeping", &admin, None),
        400,
        Some("state"),
    );
    problem(
        &w.call("GET", "/api/v1/jobs?page_size=lots", &admin, None),
        400,
        None,
    );
    problem(
        &w.call("GET", "/api/v1/jobs?tenant=globex", &acme, None),
        403,
        None,
    );

    // Workers: read by all, drained by operators and admins only.
    let workers = w.call("GET", "/api/v1/workers", &viewer, None).json();
    assert_eq!(workers["total"], json!(1));
    let wid = workers["workers"][0]["id"].as_str().unwrap().to_string();
    problem(
        &w.call(
            "POST",
            &format!("/api/v1/workers/{wid}/drain"),
            &viewer,
            None,
        ),
        403,
        None,
    );
    let op = w.token("operator", &["acme"]);
    let drained = w.call("POST", &format!("/api/v1/workers/{wid}/drain"), &op, None);
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(drained.json()["status"], json!("draining"));

    // The audit trail recorded the API's changes, and verifies.
    let trail = w
        .call("GET", "/api/v1/audit?limit=1000", &admin, None)
        .json();
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in ["submit", "drain", "create token"] {
        assert!(
            actions.iter().any(|x| x.contains(a)),
            "{a} not in {actions:?}"
        );
    }
    let check = w.call("GET", "/api/v1/audit/verify", &admin, None).json();
    assert_eq!(check["intact"], json!(true));

    // Unknown routes answer as the API does; the document is served.
    problem(
        &w.call("GET", "/api/v1/nothing-here", &admin, None),
        404,
        None,
    );
    let doc = w.call("GET", "/api/v1/openapi.json", "", None).json();
    assert!(doc["paths"]["/api/v1/jobs/{id}/logs/stream"].is_object());

    // The overview counts dispatches per tenant against their weights.
    let o = w.call("GET", "/api/v1/overview", &admin, None).json();
    let d = o["dispatch"].as_array().unwrap();
    let acme_row = d.iter().find(|r| r["tenant"] == json!("acme")).unwrap();
    assert_eq!(acme_row["weight"], json!(1));
    assert!(acme_row["dispatched"].as_u64().unwrap() >= 1);
    let mine = w.call("GET", "/api/v1/overview", &acme, None).json();
    assert!(
        mine["jobs"].is_null(),
        "jobs of every tenant shown to a tenant"
    );
    assert!(
        mine["dispatch"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == json!("acme"))
    );
    let metrics = hodei_examples::http_get(&w.http, "/metrics", Some(&w.ca())).unwrap();
    assert!(metrics.contains("hodei_dispatched_total{tenant=\"acme\"}"));
    assert!(metrics.contains("hodei_tenant_weight{tenant=\"default\"} 3"));
    assert!(metrics.contains("hodei_tls_certificate_expiry_timestamp_seconds "));
}

#[test]
fn a_long_log_opens_at_its_tail_and_pages_back_to_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    // Many chunks: lines written apart in time, so batches stay small.
    let j = w.submit(
        &w.admin,
        json!({"script": "for i in $(seq 1 400); do echo line-$i; if [ $((i % 20)) = 0 ]; then sleep 0.05; fi; done"}),
    );
    let id = j["id"].as_str().unwrap();
    w.wait_state(id, &["succeeded"]);
    let all = w
        .call(
            "GET",
            &format!("/api/v1/jobs/{id}/logs?limit=1000"),
            &w.admin,
            None,
        )
        .json();
    let whole: String = all["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let expected: String = (1..=400).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(whole, expected);
    let n = all["chunks"].as_array().unwrap().len();
    assert!(n >= 10, "only {n} chunks; the test needs several");

    // From the tail, two chunks at a time, back to the start.
    let mut pieces: Vec<String> = Vec::new();
    let mut page = w
        .call(
            "GET",
            &format!("/api/v1/jobs/{id}/logs?tail=true&limit=2"),
            &w.admin,
            None,
        )
        .json();
    assert!(page["chunks"].as_array().unwrap().len() <= 2);
    loop {
        let text: String = page["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect();
        pieces.push(text);
        let Some(prev) = page["previous"].as_str() else {
            break;
        };
        page = w
            .call(
                "GET",
                &format!("/api/v1/jobs/{id}/logs?before={prev}&limit=2"),
                &w.admin,
                None,
            )
            .json();
        assert!(pieces.len() <= n, "paging back does not end");
    }
    pieces.reverse();
    assert_eq!(pieces.concat(), expected);
    // Forward from the tail's `next`: nothing more.
    let tail = w
        .call(
            "GET",
            &format!("/api/v1/jobs/{id}/logs?tail=true&limit=1"),
            &w.admin,
            None,
        )
        .json();
    let after = w
        .call(
            "GET",
            &format!(
                "/api/v1/jobs/{id}/logs?from={}",
                tail["next"].as_str().unwrap()
            ),
            &w.admin,
            None,
        )
        .json();
    assert_eq!(after["chunks"].as_array().unwrap().len(), 0);
    for bad in ["from=1", "before=x:1", "limit=0", "limit=100000"] {
        let a = w.call(
            "GET",
            &format!("/api/v1/jobs/{id}/logs?{bad}"),
            &w.admin,
            None,
        );
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
    }
}

/// The `event:`/`id:`/`data:` blocks of an event stream.
fn sse_events(body: &str) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let (mut ev, mut id, mut data) = (String::new(), None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                ev = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !ev.is_empty() {
            out.push((ev, id, data));
        }
    }
    out
}

#[test]
fn events_and_logs_stream_and_resume_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 1);
    let j = w.submit(
        &w.admin,
        json!({"script": "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three"}),
    );
    let id = j["id"].as_str().unwrap();
    // Followed from the start, the stream ends once the job has ended
    // and its output is complete.
    let a = w.call(
        "GET",
        &format!("/api/v1/jobs/{id}/logs/stream"),
        &w.admin,
        None,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&a.body);
    let logs: Vec<&(String, Option<String>, String)> =
        events.iter().filter(|e| e.0 == "log").collect();
    let text: String = logs
        .iter()
        .map(|e| {
            let c: serde_json::Value = serde_json::from_str(&e.2).unwrap();
            c["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "one\ntwo\nthree\n");
    assert_eq!(events.last().unwrap().0, "end");
    // Resumed after the first chunk: only what came after it.
    let first_id = logs[0].1.clone().unwrap();
    let resumed = w.call_with(
        "GET",
        &format!("/api/v1/jobs/{id}/logs/stream"),
        &w.admin,
        &[("Last-Event-ID", &first_id)],
        None,
    );
    let rest: String = sse_events(&resumed.body)
        .iter()
        .filter(|e| e.0 == "log")
        .map(|e| {
            let c: serde_json::Value = serde_json::from_str(&e.2).unwrap();
            c["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(rest, "two\nthree\n");

    // Watching one job from its current state ends at its final state.
    let watched = w.call(
        "GET",
        &format!("/api/v1/events?job_id={id}&include_current=true"),
        &w.admin,
        None,
    );
    let ev = sse_events(&watched.body);
    let last: serde_json::Value = serde_json::from_str(&ev.last().unwrap().2).unwrap();
    assert_eq!(last["to"]["kind"], json!("succeeded"));

    // Watching every job resumes from an event id: a second job's
    // changes, replayed from the bus, after the first job's last event.
    let j2 = w.submit(&w.admin, json!({"script": "true"}));
    let id2 = j2["id"].as_str().unwrap();
    w.wait_state(id2, &["succeeded"]);
    let from_first = w.call_with(
        "GET",
        &format!("/api/v1/events?job_id={id2}"),
        &w.admin,
        &[("Last-Event-ID", "0")],
        None,
    );
    let kinds: Vec<String> = sse_events(&from_first.body)
        .iter()
        .filter(|e| e.0 == "job")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.2).unwrap();
            v["to"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("succeeded"),
        "{kinds:?}"
    );
    assert!(kinds.len() >= 3, "replay from the bus: {kinds:?}");
    let bad = w.call_with(
        "GET",
        "/api/v1/events",
        &w.admin,
        &[("Last-Event-ID", "x")],
        None,
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn the_session_cookie_is_http_only_and_changes_need_the_csrf_header() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 0);
    let bad = w.call(
        "POST",
        "/api/v1/session",
        "",
        Some(&json!({"token": "wrong"}).to_string()),
    );
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(bad.header("set-cookie").is_none());
    let ok = w.call(
        "POST",
        "/api/v1/session",
        "",
        Some(&json!({"token": w.admin}).to_string()),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cookie = ok.header("set-cookie").unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |method: &str, path: &str, extra: &[(&str, &str)], body: Option<&str>| {
        let mut h = vec![("Cookie", pair.as_str())];
        h.extend_from_slice(extra);
        w.call_with(method, path, "", &h, body)
    };
    assert_eq!(
        with_cookie("GET", "/api/v1/whoami", &[], None).json()["role"],
        json!("admin")
    );
    let spec = json!({"spec": {"script": "true"}}).to_string();
    let headers = [("Content-Type", "application/json")];
    let forged = with_cookie("POST", "/api/v1/jobs", &headers, Some(&spec));
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("x-hodei-csrf"));
    let headers = [("Content-Type", "application/json"), ("X-Hodei-Csrf", "1")];
    let made = with_cookie("POST", "/api/v1/jobs", &headers, Some(&spec));
    assert_eq!(made.status, 201, "{}", made.body);
    let out = w.call("DELETE", "/api/v1/session", "", None);
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The dashboard's files come with a policy allowing only its own
    // script.
    let page = w.call("GET", "/ui/", "", None);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.body.contains("/ui/app.js"));
}

//! The HTTP/JSON API checked by an independent client: schemathesis (from
//! PyPI) generates requests from the OpenAPI document the server serves
//! and checks every answer: no 5xx, only documented statuses and content
//! types, bodies matching their schemas. The event streams are left out
//! (they stay open by design).
//!
//! Needs `schemathesis` on the PATH (`.ci/run` installs it with pip);
//! without it the test fails, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::harness;
use harness::Web;

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let found = Command::new("schemathesis").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "schemathesis is missing: pip install schemathesis (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    // No agent: schemathesis revokes workers and rotates join tokens.
    let w = Web::start(dir.path(), 0);
    // Something to find, list and cancel.
    for i in 0..3 {
        w.submit(
            &w.admin,
            serde_json::json!({"script": format!("echo {i}; sleep 30"), "tenant": "acme"}),
        );
    }
    let out = Command::new("schemathesis")
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", w.url()))
        .arg("--tls-verify")
        .arg(w.ca())
        .args(["-H", &format!("Authorization: Bearer {}", w.admin)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--exclude-path-regex", "stream|/events"])
        .args(["--max-examples", "30", "--request-timeout", "20"])
        .arg("--generation-deterministic")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "{text}");
    // The server is still serving after all of it.
    let a = w.call("GET", "/api/v1/whoami", &w.admin, None);
    assert_eq!(a.status, 200);
}

//! End to end: the real `hodei-server`, `hodei-agent` and `hodei` binaries
//! as separate processes on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{self, AGENT, CLI, SERVER};
use crate::process::{self, Proc};

struct Server {
    proc: Proc,
    grpc: String,
    /// `https://host:port` of the HTTP listener.
    http: String,
    dir: PathBuf,
}

fn start_server(dir: &Path, listen: &str) -> Server {
    let (proc, grpc, http) =
        harness::launch_on(dir, listen, "127.0.0.1:0", &["--heartbeat-timeout", "2s"]);
    Server {
        proc,
        grpc,
        http: format!("https://{http}"),
        dir: dir.to_path_buf(),
    }
}

impl Server {
    fn port(&self) -> &str {
        self.grpc.rsplit(':').next().unwrap()
    }

    fn agent(&self, name: &str) -> Proc {
        harness::agent(
            &self.grpc,
            name,
            &self.dir.join(format!("state-{name}")),
            &self.dir.join("join.token"),
            &["--cancel-grace", "500ms", "--drain-grace", "10s"],
        )
    }

    fn cli(&self, args: &[&str]) -> Output {
        harness::cli(&self.grpc, &self.dir, args)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        // Before the arguments: anything after `--` belongs to the job.
        let mut a = vec!["--output", "json"];
        a.extend(args);
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first = out.stdout.split(|b| *b == b'\n').next().unwrap();
        serde_json::from_slice(first)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", String::from_utf8_lossy(&out.stdout)))
    }

    fn state(&self, job: &str) -> String {
        self.json(&["status", job])["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn wait_state(&self, job: &str, want: &[&str]) -> String {
        for _ in 0..300 {
            let s = self.state(job);
            if want.contains(&s.as_str()) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("job {job} never reached {want:?} (now {})", self.state(job));
    }

    fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.http.trim_start_matches("https://");
        let resp =
            hodei_examples::http_get(addr, path, Some(&self.dir.join("tls/ca.crt"))).unwrap();
        process::status_and_body(&resp)
    }

    fn wait_workers(&self, n: usize) {
        for _ in 0..200 {
            let out = self.cli(&["workers", "--output", "json"]);
            let ready = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("\"status\":\"ready\""))
                .count();
            if ready >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{n} workers never became ready");
    }
}

fn submit(s: &Server, args: &[&str]) -> String {
    let mut a = vec!["submit"];
    a.extend(args);
    s.json(&a)["id"].as_str().unwrap().to_string()
}

/// Parses the Prometheus text format: every sample line is `name{labels}
/// value` with a number for the value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        m.insert(key.to_string(), v);
    }
    m
}

#[test]
fn a_job_s_whole_life_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let _agent = s.agent("a1");
    s.wait_workers(1);

    // --wait exits with the job's own code.
    let out = s.cli(&["submit", "--wait", "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // --follow streams the output, then exits 0.
    let out = s.cli(&[
        "submit",
        "--follow",
        "--name",
        "greet",
        "--script",
        "echo one; echo two >&2; echo three",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("one\n") && stdout.contains("three\n"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("two"));

    // A spec file, status, list, logs.
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        "name = \"from-file\"\ntenant = \"acme\"\npriority = 6\ncommand = { script = \"echo from a file\" }\n",
    )
    .unwrap();
    let id = submit(&s, &["--file", spec.to_str().unwrap()]);
    assert_eq!(s.wait_state(&id, &["succeeded", "failed"]), "succeeded");
    let j = s.json(&["status", &id]);
    assert_eq!(j["name"], "from-file");
    assert_eq!(j["tenant"], "acme");
    assert_eq!(j["priority"], 6);
    let logs = s.cli(&["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "from a file\n");
    let list = s.cli(&["list", "--state", "succeeded", "--output", "json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 2);
    let table = s.cli(&["list"]);
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("ID "));

    // Errors: one line, non-zero.
    let bad = s.cli(&["status", "nope"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    let missing = s.cli(&["status", "0123456789abcdef0123456789abcdef"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let invalid = s.cli(&["submit", "--priority", "9", "--", "true"]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("priority"));

    // Cancel.
    let id = submit(&s, &["--", "sleep", "60"]);
    s.wait_state(&id, &["running"]);
    assert!(s.cli(&["cancel", &id]).status.success());
    assert_eq!(s.wait_state(&id, &["cancelled"]), "cancelled");
}

#[test]
fn a_job_on_a_killed_agent_is_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let mut first = s.agent("first");
    s.wait_workers(1);
    let mark = dir.path().join("mark");
    let pidfile = dir.path().join("orphan");
    let script = format!(
        "if [ -e {m} ]; then echo second attempt; else touch {m}; echo $$ > {p}; sleep 60; fi",
        m = mark.display(),
        p = pidfile.display()
    );
    let id = submit(&s, &["--attempts", "2", "--script", &script]);
    s.wait_state(&id, &["running"]);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    // The killed agent's job keeps running unsupervised; end it here.
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        // SAFETY: sends a signal to the job's process group.
        unsafe {
            libc::killpg(pid.trim().parse().unwrap(), libc::SIGKILL);
        }
    }
    let _second = s.agent("second");
    // Lost first (the agent went silent), then retried.
    assert_eq!(s.wait_state(&id, &["succeeded", "failed"]), "succeeded");
    let j = s.json(&["status", &id]);
    assert_eq!(j["attempt"], 2);
    let logs = s.cli(&["logs", &id]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("second attempt"));
}

#[test]
fn a_server_killed_and_restarted_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_server(dir.path(), "127.0.0.1:0");
    let _agent = s.agent("a1");
    s.wait_workers(1);
    let ids: Vec<String> = (0..20)
        .map(|i| submit(&s, &["--script", &format!("sleep 0.2; echo job-{i}")]))
        .collect();
    s.proc.signal(libc::SIGKILL);
    s.proc.wait_exit(Duration::from_secs(5));
    let port = s.port().to_string();
    let s = start_server(dir.path(), &format!("127.0.0.1:{port}"));
    for (i, id) in ids.iter().enumerate() {
        let end = s.wait_state(id, &["succeeded", "failed", "lost", "cancelled"]);
        assert_eq!(end, "succeeded", "job {i}");
        let logs = s.cli(&["logs", id]);
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains(&format!("job-{i}\n")),
            "job {i}"
        );
    }
}

#[test]
fn metrics_and_health_endpoints_report_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let _agent = s.agent("a1");
    s.wait_workers(1);
    for i in 0..3 {
        let out = s.cli(&["submit", "--wait", "--", "echo", &i.to_string()]);
        assert!(out.status.success());
    }
    let out = s.cli(&["submit", "--wait", "--", "false"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.http_get("/healthz").0, 200);
    assert_eq!(s.http_get("/readyz").0, 200);
    let (status, body) = s.http_get("/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    assert_eq!(m["hodei_jobs{state=\"succeeded\"}"], 3.0);
    assert_eq!(m["hodei_jobs{state=\"failed\"}"], 1.0);
    assert_eq!(m["hodei_jobs_submitted_total"], 4.0);
    assert_eq!(m["hodei_workers{state=\"ready\"}"], 1.0);
    assert_eq!(m["hodei_submit_to_start_seconds_count"], 4.0);
    assert_eq!(m["hodei_submit_to_start_seconds_bucket{le=\"+Inf\"}"], 4.0);
    assert!(m["hodei_heartbeats_total"] >= 1.0);
    assert!(m["hodei_log_bytes_total"] >= 6.0);
    assert!(m["hodei_store_commit_seconds_count"] >= 1.0);
    assert!(m["hodei_store_commit_batch_size_sum"] >= m["hodei_store_commit_batch_size_count"]);
    assert_eq!(s.http_get("/nothing").0, 404);
}

#[test]
fn the_agent_drains_on_sigterm_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let mut agent = s.agent("a1");
    s.wait_workers(1);
    let id = submit(&s, &["--script", "echo begin; sleep 1; echo end"]);
    s.wait_state(&id, &["running"]);
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(s.state(&id), "succeeded");
    let logs = s.cli(&["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "begin\nend\n");
    // The server saw the drain: no worker is ready.
    let w = s.cli(&["workers", "--output", "json"]);
    assert!(!String::from_utf8_lossy(&w.stdout).contains("\"ready\""));
}

#[test]
fn a_second_sigterm_cancels_running_jobs_and_still_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let mut agent = s.agent("a1");
    s.wait_workers(1);
    let id = submit(&s, &["--script", "echo begin; sleep 60"]);
    s.wait_state(&id, &["running"]);
    agent.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let logs = s.cli(&["logs", &id]);
    assert!(String::from_utf8_lossy(&logs.stdout).starts_with("begin\n"));
    assert_ne!(s.state(&id), "running");
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |bin: &str, args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env_remove("HODEI_SERVER")
            .env_remove("HODEI_TOKEN")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(AGENT, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server"));
    let out = run(
        AGENT,
        &[
            "--server",
            "http://127.0.0.1:1",
            "--join-token",
            "x",
            "--drain-grace",
            "soon",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drain-grace"));
    let out = run(AGENT, &["--server", "127.0.0.1:1", "--join-token", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://"));
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "server = \"http://127.0.0.1:1\"\nbogus = 1\n").unwrap();
    let out = run(AGENT, &["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let help = run(AGENT, &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--server",
        "--join-token-file",
        "--label",
        "--cpu-millis",
        "--drain-grace",
        "--max-log-bytes",
        "--spill-dir",
        "HODEI_SERVER",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = run(SERVER, &["--store", "tape"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store"));
    let out = run(CLI, &["--server", "http://127.0.0.1:1", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

#[test]
fn the_demo_runs_and_masks_its_secret() {
    let out = Command::new(CLI).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("calling the API with ***"), "{stdout}");
    assert!(!stdout.contains("tok-4f9a-demo-secret"));
    assert!(
        stdout.contains("flaky       acme    4     succeeded  2"),
        "{stdout}"
    );
    assert!(stdout.contains("cancelled"));
    assert!(stdout.contains("delivered: true"));
    // The pipeline: its last step saw the first one's output.
    assert!(stdout.contains("packaged release-1.4.2.tar.gz"), "{stdout}");
    assert!(
        stdout.contains("release  tenant acme  succeeded"),
        "{stdout}"
    );
}

/// `submit --wait` waits through a retry to the final state; while the
/// retry waits, status says so and when it is due; `workers` shows the
/// agent's name; `list` pages with a token and `--all`.
#[test]
fn the_cli_waits_for_the_final_state_shows_retries_names_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let _agent = s.agent("builder-7");
    s.wait_workers(1);

    let w = s.json(&["workers"]);
    assert_eq!(w["name"], "builder-7");
    let table = s.cli(&["workers"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("builder-7"));

    // Fails once, succeeds on its second attempt after a 3 s backoff.
    let mark = dir.path().join("mark");
    let spec = dir.path().join("flaky.toml");
    std::fs::write(
        &spec,
        format!(
            "command = {{ script = \"if [ -f {m} ]; then echo second; else touch {m}; exit 1; fi\" }}\n\
             [retry]\nmax_attempts = 2\njitter = 0.0\n\
             [retry.backoff]\ninitial = \"3s\"\nmax = \"3s\"\nmultiplier = 1.0\n",
            m = mark.display()
        ),
    )
    .unwrap();
    let waiting = Command::new(CLI)
        .args(["--server", &s.grpc, "--ca-file"])
        .arg(dir.path().join("tls/ca.crt"))
        .arg("--token-file")
        .arg(dir.path().join("admin.token"))
        .args(["--output", "json", "submit", "--wait", "--file"])
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Find it while it waits for its retry.
    let mut seen_retry = false;
    for _ in 0..200 {
        let list = s.cli(&["list", "--output", "json"]);
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains("\"awaiting_retry\":true")) {
            let j: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(j["state"], "failed");
            assert_eq!(j["final"], false);
            let due = j["next_attempt_at_ms"].as_u64().unwrap();
            assert!(due > j["updated_at_ms"].as_u64().unwrap(), "{j}");
            let id = j["id"].as_str().unwrap();
            let human = String::from_utf8_lossy(&s.cli(&["status", id]).stdout).into_owned();
            assert!(human.contains("failed, retry in"), "{human}");
            seen_retry = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(seen_retry, "never saw the job waiting for its retry");
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let end: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(end["state"], "succeeded");
    assert_eq!(end["attempt"], 2);
    assert_eq!(end["final"], true);

    // Paging: 5 more jobs, 2 per page.
    for i in 0..5 {
        submit(&s, &["--", "echo", &i.to_string()]);
    }
    let page = s.cli(&["list", "--limit", "2", "--output", "json"]);
    let text = String::from_utf8_lossy(&page.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let token: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    let token = token["next_page_token"].as_str().unwrap().to_string();
    let next = s.cli(&[
        "list",
        "--limit",
        "2",
        "--page-token",
        &token,
        "--output",
        "json",
    ]);
    let next = String::from_utf8_lossy(&next.stdout).into_owned();
    assert!(
        !next.contains(lines[0]) && next.lines().count() >= 2,
        "{next}"
    );
    let all = s.cli(&["list", "--limit", "2", "--all", "--output", "json"]);
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    let ids: std::collections::HashSet<&str> =
        all.lines().filter(|l| l.contains("\"id\"")).collect();
    assert_eq!(ids.len(), 6, "{all}");
    assert!(!all.contains("next_page_token"));
    let human = s.cli(&["list", "--limit", "2"]);
    assert!(String::from_utf8_lossy(&human.stderr).contains("--page-token"));
}

/// After SIGTERM, /readyz answers 503 while the listeners are still open;
/// then the server exits 0.
#[test]
fn after_sigterm_readyz_says_503_before_the_listeners_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_server(dir.path(), "127.0.0.1:0");
    assert_eq!(s.http_get("/readyz").0, 200);
    s.proc.signal(libc::SIGTERM);
    let mut saw_503 = false;
    for _ in 0..200 {
        let addr = s.http.trim_start_matches("https://").to_string();
        if std::net::TcpStream::connect(&addr).is_err() {
            break;
        }
        if s.http_get("/readyz").0 == 503 {
            saw_503 = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(saw_503, "/readyz never said 503 before closing");
    assert!(s.proc.wait_exit(Duration::from_secs(20)).success());
}

/// Whether any file under `dir` holds `needle`.
/// A secret's value is in no file of the server's data directory, in the
/// clear, while its job waits or after it ran; once the job is final the
/// stored job keeps the secret's name and not even its sealed value; the
/// job saw the value and its log shows it masked.
#[test]
fn secret_values_are_sealed_at_rest_and_erased_once_final() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_server(dir.path(), "127.0.0.1:0");
    let value = "sup3r-s3cret-v4lue-9f1c27";
    // No agent yet: the job waits in the store with its secret.
    let out = Command::new(CLI)
        .args(["--server", &s.grpc, "--ca-file"])
        .arg(s.dir.join("tls/ca.crt"))
        .arg("--token-file")
        .arg(s.dir.join("admin.token"))
        .args([
            "--output",
            "json",
            "submit",
            "--secret-env",
            "API_TOKEN",
            "--",
        ])
        .args(["sh", "-c", "echo \"token=$API_TOKEN len=${#API_TOKEN}\""])
        .env("API_TOKEN", value)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let job: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(s.state(&id), "queued");
    assert_eq!(process::any_file_holds(dir.path(), value.as_bytes()), None);
    assert!(
        process::any_file_holds(dir.path(), b"hodei-sealed:v1:").is_some(),
        "the sealed value is stored"
    );

    let _agent = s.agent("a1");
    assert_eq!(s.wait_state(&id, &["succeeded", "failed"]), "succeeded");
    let logs = s.cli(&["logs", &id]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains(&format!("token=*** len={}", value.len())),
        "{text}"
    );
    assert_eq!(process::any_file_holds(dir.path(), value.as_bytes()), None);

    s.proc.signal(libc::SIGTERM);
    assert!(s.proc.wait_exit(Duration::from_secs(20)).success());
    let store = hodei_store::RedbStore::open(
        dir.path().join("hodei.redb"),
        hodei_store::StoreConfig::default(),
    )
    .unwrap();
    let job = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(hodei_store::Store::get_job(&store, id.parse().unwrap()))
        .unwrap()
        .unwrap();
    assert_eq!(job.spec.secrets.len(), 1);
    assert_eq!(job.spec.secrets[0].name, "API_TOKEN");
    assert!(job.spec.secrets[0].value.is_empty(), "erased once final");
}

/// The credential and audit commands of the CLI against the real server:
/// a viewer token made, shown once, refused for what a viewer may not do,
/// listed without the token, revoked; join tokens listed; the audit trail
/// listed and verified.
#[test]
fn the_cli_manages_tokens_and_reads_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), "127.0.0.1:0");
    let made = s.json(&[
        "token", "create", "--role", "viewer", "--tenant", "acme", "--name", "dash",
    ]);
    let (id, token) = (
        made["id"].as_str().unwrap().to_string(),
        made["token"].as_str().unwrap().to_string(),
    );
    let as_viewer = |args: &[&str]| {
        Command::new(CLI)
            .args(["--server", &s.grpc, "--ca-file"])
            .arg(s.dir.join("tls/ca.crt"))
            .args(["--token", &token])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_viewer(&["submit", "--tenant", "acme", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    assert!(as_viewer(&["list", "--tenant", "acme"]).status.success());
    let list = s.cli(&["token", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&id) && text.contains("viewer") && !text.contains(&token),
        "{text}"
    );
    assert!(s.cli(&["token", "revoke", &id]).status.success());
    let out = as_viewer(&["list", "--tenant", "acme"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );
    let joins = s.cli(&["join-token", "list"]);
    assert!(joins.status.success());
    assert_eq!(String::from_utf8_lossy(&joins.stdout).lines().count(), 2);
    let audit = s.cli(&["audit", "--since", "1h"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("create token") && text.contains("revoke token"),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    let verify = s.cli(&["audit", "--verify"]);
    assert!(verify.status.success(), "{verify:?}");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));
}

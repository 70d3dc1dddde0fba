//! The dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver), against the real server with real agents,
//! over TLS. Screenshots of every page are saved under
//! `target/tmp/ui-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them the test fails, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness;
use crate::process;
use harness::Web;
use process::Proc;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET: &str = "s3cret-value-8842";

fn screenshots() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chromedriver() -> (Proc, u16) {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    let port = process::free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

async fn browser(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    // The server's certificate comes from its own CA.
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1400,1000",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

async fn shot(c: &Client, name: &str) {
    // Let the page settle (event streams, a refresh of the overview).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let png = c.screenshot().await.unwrap();
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if v == json!(true) {
            return;
        }
        if Instant::now() > end {
            let src = c.source().await.unwrap_or_default();
            let cut: String = src.chars().take(4000).collect();
            panic!("never: {what} ({script})\npage: {cut}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn css(c: &Client, sel: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(sel))
        .await
        .unwrap_or_else(|e| panic!("{sel}: {e}"))
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    let input = css(c, "#token").await;
    until(
        c,
        "the sign-in form shows",
        "!document.getElementById('signin').hidden",
    )
    .await;
    input.send_keys(token).await.unwrap();
    css(c, "#sign-in").await.click().await.unwrap();
    until(c, "signed in", "!document.getElementById('nav').hidden").await;
}

async fn state_of(c: &Client) -> String {
    c.execute(
        "const e = document.getElementById('job-state'); return e ? e.dataset.state : '';",
        vec![],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or("")
    .to_string()
}

#[test]
fn the_dashboard_drives_the_scheduler_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let w = Web::start(dir.path(), 2);
    let base = w.url();
    let viewer = w.token("viewer", &["default"]);
    // Some history for the overview and the job list.
    for i in 0..6 {
        let tenant = if i % 2 == 0 { "default" } else { "acme" };
        w.submit(
            &w.admin,
            json!({"script": format!("echo job {i}"), "name": format!("warm-up-{i}"), "tenant": tenant}),
        );
    }
    let (_driver, port) = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(port, profile.path()).await;

        // Signed out: only the sign-in form; a wrong token is refused.
        c.goto(&format!("{base}/ui/")).await.unwrap();
        css(&c, "#token").await.send_keys("wrong-token").await.unwrap();
        css(&c, "#sign-in").await.click().await.unwrap();
        until(&c, "the refusal shows", "!document.getElementById('error').hidden").await;
        shot(&c, "sign-in").await;

        // Admin: the token never lands where scripts can read it.
        sign_in(&c, &base, &w.admin).await;
        let leaked = c
            .execute(
                "return document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage);",
                vec![],
            )
            .await
            .unwrap();
        assert!(!leaked.as_str().unwrap().contains(&w.admin), "token readable by scripts");
        css(&c, "#card-queued").await;
        until(&c, "dispatch rows", "document.querySelectorAll('#dispatch tr').length >= 3").await;
        shot(&c, "overview").await;

        // Jobs: the list, its filters.
        c.goto(&format!("{base}/ui/#/jobs")).await.unwrap();
        until(&c, "the job list", "document.querySelectorAll('#jobs tr[data-job]').length >= 6").await;
        shot(&c, "jobs").await;
        c.goto(&format!("{base}/ui/#/jobs?tenant=acme")).await.unwrap();
        until(
            &c,
            "only acme's jobs",
            "document.querySelectorAll('#jobs tr[data-job]').length === 3",
        )
        .await;

        // Submit from the form; watch it run and its output arrive live.
        c.goto(&format!("{base}/ui/#/submit")).await.unwrap();
        css(&c, "#submit-name").await.send_keys("from-the-browser").await.unwrap();
        // With a secret to mask, output that cannot begin it still
        // arrives as it is written.
        let script = "printf '\\033[31mred alert\\033[0m\\n'; echo \"key=$API_KEY\"; echo to-stderr >&2; echo started; sleep 2; echo finished";
        css(&c, "#submit-script").await.send_keys(script).await.unwrap();
        css(&c, "#submit-secrets")
            .await
            .send_keys(&format!("API_KEY={SECRET}"))
            .await
            .unwrap();
        css(&c, "#submit-go").await.click().await.unwrap();
        css(&c, "#job-state").await;
        until(&c, "output while it runs", "document.getElementById('log').textContent.includes('started')").await;
        let running = state_of(&c).await;
        assert!(
            ["running", "assigned"].contains(&running.as_str()),
            "state while its output arrives: {running}"
        );
        let log_now = css(&c, "#log").await.text().await.unwrap();
        assert!(!log_now.contains("finished"), "output arrived before it was written");
        until(&c, "the job ends", "document.getElementById('job-state').dataset.state === 'succeeded'").await;
        until(&c, "its exit", "document.getElementById('job-exit').textContent === 'exit code 0'").await;
        until(&c, "its attempt", "document.querySelectorAll('#attempts tr').length === 2").await;
        until(&c, "all output", "document.getElementById('log').textContent.includes('finished')").await;
        // ANSI colours rendered, stderr told apart, the secret masked in
        // the output and absent from the spec.
        until(&c, "a red span", "[...document.querySelectorAll('#log .a-31')].some(e => e.textContent.includes('red alert'))").await;
        until(&c, "stderr marked", "[...document.querySelectorAll('#log .stderr')].some(e => e.textContent.includes('to-stderr'))").await;
        let log = css(&c, "#log").await.text().await.unwrap();
        assert!(log.contains("key="), "{log}");
        assert!(!log.contains("\u{1b}"), "escape codes shown raw: {log}");
        let spec = c
            .execute("return document.getElementById('spec').textContent;", vec![])
            .await
            .unwrap();
        let spec = spec.as_str().unwrap();
        assert!(spec.contains("API_KEY") && spec.contains("••••••"), "{spec}");
        let source = c.source().await.unwrap();
        assert!(!source.contains(SECRET), "the secret reached the page");
        shot(&c, "job").await;

        // Cancel a long one from its page.
        c.goto(&format!("{base}/ui/#/submit")).await.unwrap();
        css(&c, "#submit-script").await.send_keys("echo waiting; sleep 120").await.unwrap();
        css(&c, "#submit-go").await.click().await.unwrap();
        css(&c, "#job-state").await;
        until(&c, "it runs", "document.getElementById('log').textContent.includes('waiting')").await;
        css(&c, "#cancel").await.click().await.unwrap();
        until(&c, "cancelled", "document.getElementById('job-state').dataset.state === 'cancelled'").await;

        // Workflows: a pipeline and a schedule are listed; the pipeline's
        // page shows its steps, their states and outputs; the schedule is
        // paused from the page.
        let p = w.call(
            "POST",
            "/api/v1/pipelines",
            &w.admin,
            Some(&json!({"name": "ui-pipeline", "steps": [
                {"name": "make", "job": {"script": "echo V=7 >> \"$HODEI_OUTPUTS\""}},
                {"name": "ship", "depends_on": ["make"], "job": {"script": "echo ship $MAKE_V"}},
            ]}).to_string()),
        );
        assert_eq!(p.status, 201, "{}", p.body);
        let pid = p.json()["id"].as_str().unwrap().to_string();
        let s = w.call(
            "POST",
            "/api/v1/schedules",
            &w.admin,
            Some(&json!({"name": "ui-nightly", "cron": "0 3 * * *", "job": {"script": "true"}}).to_string()),
        );
        assert_eq!(s.status, 201, "{}", s.body);
        c.goto(&format!("{base}/ui/#/workflows")).await.unwrap();
        until(&c, "the pipeline listed", &format!("document.querySelector('#pipelines tr[data-pipeline=\"{pid}\"]')")).await;
        until(&c, "the schedule listed", "document.querySelectorAll('#schedules tr[data-schedule]').length === 1").await;
        css(&c, "#schedules button[data-act=pause]").await.click().await.unwrap();
        until(&c, "paused", "document.querySelector('#schedules button[data-act=resume]')").await;
        c.goto(&format!("{base}/ui/#/workflows/pipelines/{pid}")).await.unwrap();
        until(&c, "the pipeline succeeded", "document.getElementById('pipeline-state') && document.getElementById('pipeline-state').dataset.state === 'succeeded'").await;
        until(&c, "its steps", "document.querySelectorAll('#steps tr[data-step] [data-state=succeeded]').length === 2").await;
        let outputs = c
            .execute("return document.querySelector('#steps tr[data-step=make]').textContent;", vec![])
            .await
            .unwrap();
        assert!(outputs.as_str().unwrap().contains("V=7"), "{outputs}");
        shot(&c, "pipeline").await;

        // Workers: an admin drains one.
        c.goto(&format!("{base}/ui/#/workers")).await.unwrap();
        until(&c, "two workers", "document.querySelectorAll('#workers tr[data-worker]').length === 2").await;
        shot(&c, "workers").await;
        css(&c, "button.drain").await.click().await.unwrap();
        until(&c, "one draining", "document.querySelectorAll('#workers [data-state=draining]').length === 1").await;

        // A viewer: no submit form, no drain button, and the API refuses
        // the drain the page does not offer.
        css(&c, "#sign-out").await.click().await.unwrap();
        until(&c, "signed out", "!document.getElementById('signin').hidden").await;
        sign_in(&c, &base, &viewer).await;
        let submit_hidden = c
            .execute("return document.getElementById('nav-submit').hidden;", vec![])
            .await
            .unwrap();
        assert_eq!(submit_hidden, json!(true));
        c.goto(&format!("{base}/ui/#/workers")).await.unwrap();
        until(&c, "the workers", "document.querySelectorAll('#workers tr[data-worker]').length === 2").await;
        let drains = c
            .execute("return document.querySelectorAll('button.drain').length;", vec![])
            .await
            .unwrap();
        assert_eq!(drains, json!(0));
        let status = c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const id = document.querySelector('#workers tr[data-worker]').dataset.worker;
                 fetch('/api/v1/workers/' + id + '/drain', {method: 'POST', headers: {'X-Hodei-Csrf': '1'}})
                   .then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403));
        c.goto(&format!("{base}/ui/#/overview")).await.unwrap();
        css(&c, "#card-queued").await;
        shot(&c, "overview-viewer").await;
        c.close().await.unwrap();
    });
}

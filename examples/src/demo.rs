//! `hodei demo`: a server on an embedded store in a temporary directory, a
//! local agent, a handful of jobs with their logs live, and a summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hodei_agent::{AgentConfig, Shutdown, run_agent};
use hodei_core::{Backoff, JobId, JobSpec, RetryPolicy, Secret};
use hodei_hwp::client::Client;
use hodei_hwp::server::security::pki::Pki;
use hodei_hwp::server::security::secrets::SecretKeys;
use hodei_hwp::server::security::tls::{ServerTls, TlsSource};
use hodei_hwp::tls::{ClientTls, JoinToken};
use hodei_hwp::{EngineConfig, Principal, ServerBuilder, Tokens};
use hodei_store::{RedbStore, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::cli::{Failure, Output, exit_text, kind, state_name, table};
use hodei_hwp::server::security::tokens::generate_token as generate;

fn fail(what: &str) -> impl FnOnce(String) -> Failure + '_ {
    move |e| Failure::server(format!("demo: {what}: {e}"))
}

fn job(name: &str, tenant: &str, priority: u8, script: &str) -> JobSpec {
    let mut s = JobSpec::script(script);
    s.name = name.into();
    s.priority = priority;
    s.tenant = tenant.parse().unwrap_or_default();
    s
}

/// The demo's jobs, with the one to cancel.
fn jobs(dir: &std::path::Path) -> (Vec<JobSpec>, String) {
    let build = job(
        "build",
        "acme",
        6,
        "for step in fetch compile link test; do echo \"$step...\"; sleep 0.3; done; echo build ok",
    );
    let report = job(
        "report",
        "globex",
        2,
        "for q in Q1 Q2 Q3 Q4; do echo \"$q revenue: $(( ${#q} * 1000 + 337 ))\"; sleep 0.2; done",
    );
    // Fails on its first attempt, succeeds on the second.
    let mark = dir.join("flaky.mark");
    let mut flaky = job(
        "flaky",
        "acme",
        4,
        &format!(
            "if [ -e {m} ]; then echo 'second try: fine'; else touch {m}; echo 'first try: network down' >&2; exit 3; fi",
            m = mark.display()
        ),
    );
    flaky.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(2),
            multiplier: 2.0,
        },
        jitter: 0.0,
    };
    let cancelled = job(
        "long-sleep",
        "globex",
        4,
        "echo 'sleeping for a minute'; sleep 60; echo 'never printed'",
    );
    let mut secret = job(
        "deploy",
        "acme",
        5,
        "echo \"calling the API with $API_TOKEN\"; printf %s \"$API_TOKEN\" | base64; echo deployed",
    );
    secret.secrets.push(Secret {
        name: "API_TOKEN".into(),
        value: "tok-4f9a-demo-secret".into(),
    });
    let urgent = job("urgent", "globex", 7, "echo 'hotfix deployed (priority 7)'");
    (
        vec![urgent, build, report, flaky, cancelled, secret],
        "long-sleep".into(),
    )
}

/// A small pipeline: a diamond whose first step publishes an output the
/// last one uses.
async fn pipeline(client: &mut Client, out: Output) -> Result<(), Failure> {
    let spec: hodei_core::PipelineSpec = toml::from_str(
        r#"
        name = "release"
        tenant = "acme"
        [[steps]]
        name = "fetch"
        job = { command = { script = "echo fetching; echo VERSION=1.4.2 >> \"$HODEI_OUTPUTS\"" } }
        [[steps]]
        name = "test"
        depends_on = ["fetch"]
        job = { command = { script = "echo testing $FETCH_VERSION" } }
        [[steps]]
        name = "lint"
        depends_on = ["fetch"]
        job = { command = { script = "echo linting" } }
        [[steps]]
        name = "package"
        depends_on = ["fetch", "test", "lint"]
        job = { command = { script = "echo packaged release-$FETCH_VERSION.tar.gz" } }
        "#,
    )
    .map_err(|e| fail("pipeline")(e.to_string()))?;
    let status = client
        .raw()
        .submit_pipeline(hodei_hwp::proto::SubmitPipelineRequest {
            pipeline: Some(hodei_hwp::pipeline_to_wire(&spec)),
        })
        .await?
        .into_inner();
    println!("--- a pipeline: fetch -> (test, lint) -> package ---");
    let end = crate::pipeline::wait_end(client, &status.pipeline_id, out).await?;
    crate::pipeline::print_status(out, &end);
    if let Some(step) = end.steps.iter().find(|s| s.name == "package")
        && let Ok(id) = step.job_id.parse::<JobId>()
    {
        crate::cli::print_logs(client, id).await?;
    }
    Ok(())
}

/// Runs the demo, printing to stdout; everything it started is stopped
/// before it returns.
pub async fn run(out: Output) -> Result<(), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("hodei-demo-")
        .tempdir()
        .map_err(|e| fail("temporary directory")(e.to_string()))?;
    let started = Instant::now();
    let config = {
        let mut c = EngineConfig::default();
        c.heartbeat_interval = Duration::from_secs(1);
        c.heartbeat_timeout = Duration::from_secs(5);
        c.cancel_grace = Duration::from_secs(2);
        c
    };
    let (keys, _) = SecretKeys::load_or_create(&dir.path().join("secrets.key"))
        .map_err(|e| fail("secrets key")(e.to_string()))?;
    let config = {
        let mut c = config;
        c.secret_keys = Some(Arc::new(keys));
        c
    };
    let path = dir.path().join("hodei.redb");
    let store =
        RedbStore::open(&path, StoreConfig::default()).map_err(|e| fail("store")(e.to_string()))?;
    // TLS as hodei-server serves it: a CA of its own, a server
    // certificate it signed, agents joining for client certificates.
    let (pki, _) =
        Pki::load_or_create(&dir.path().join("tls")).map_err(|e| fail("tls")(e.to_string()))?;
    let pki = Arc::new(pki);
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let tls = ServerTls::new(TlsSource::Generated { names }, None, Arc::clone(&pki))
        .map_err(|e| fail("tls")(e.to_string()))?;
    let join = JoinToken {
        ca: tls.fingerprint(),
        secret: generate(),
    }
    .to_string();
    let admin = generate();
    let mut tokens = Tokens::new();
    tokens.add_join_token(&join);
    tokens.add_client_token(&admin, Principal::admin());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("listen")(e.to_string()))?;
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    // The same builder as hodei-server's.
    let server = ServerBuilder::new(Arc::new(store), listener)
        .tls(tls)
        .tokens(tokens)
        .engine_config(config)
        .write_stats(|s: &RedbStore| Some(s.write_stats()))
        .start(async {
            let _ = server_stopped.await;
        })
        .await
        .map_err(|e| fail("server")(e.to_string()))?;
    let url = format!("https://{}", server.grpc_addr());
    out.say(&format!(
        "server on {url} (TLS, CA {}), store {} (redb)",
        pki.ca_path().display(),
        path.display()
    ));

    let mut agent_config = AgentConfig::new(url.clone(), join);
    agent_config.name = "demo-agent".into();
    agent_config.state_dir = dir.path().join("agent");
    agent_config.spill_dir = dir.path().join("spill");
    agent_config.cancel_grace = Duration::from_secs(2);
    let (stop_agent, agent_rx) = watch::channel(Shutdown::Run);
    let agent = tokio::spawn(run_agent(agent_config, agent_rx));

    let trust = ClientTls::ca_file(&pki.ca_path()).map_err(|e| fail("tls")(e.to_string()))?;
    let mut client = Client::connect(&url, &trust, &admin)
        .await
        .map_err(|e| fail("connect")(e.to_string()))?;
    let (specs, to_cancel) = jobs(dir.path());
    let mut submitted: Vec<(String, JobId)> = Vec::new();
    for spec in &specs {
        let (j, _) = client.submit(spec).await?;
        let id: JobId =
            j.id.parse()
                .map_err(|e: hodei_core::IdError| fail("job id")(e.to_string()))?;
        out.say(&format!(
            "submitted {:<10} tenant {:<6} priority {}  {id}",
            spec.name, spec.tenant, spec.priority
        ));
        submitted.push((spec.name.clone(), id));
    }
    println!("--- live logs ---");
    let width = specs.iter().map(|s| s.name.len()).max().unwrap_or(8);
    let mut followers = Vec::new();
    for (name, id) in &submitted {
        let mut c = client.clone();
        let prefix = format!("[{name:>width$}] ");
        let id = *id;
        followers.push(tokio::spawn(async move {
            crate::cli::follow_logs(&mut c, id, Some(&prefix)).await
        }));
    }
    if let Some((_, id)) = submitted.iter().find(|(n, _)| *n == to_cancel) {
        // Let it start and print, then cancel it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client.cancel(*id).await?;
        println!("[{:>width$}] (cancelled by the demo)", to_cancel);
    }
    for f in followers {
        match tokio::time::timeout(Duration::from_secs(60), f).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(fail("log follower")(e.to_string())),
            Err(_) => return Err(Failure::server("demo: jobs did not end within 60 s")),
        }
    }
    let mut rows = Vec::new();
    let mut finals = Vec::new();
    for (name, id) in &submitted {
        let j = crate::cli::wait_end(&mut client, *id).await?;
        let spec = j.spec.clone().unwrap_or_default();
        rows.push(vec![
            name.clone(),
            spec.tenant.clone(),
            spec.priority.unwrap_or(4).to_string(),
            state_name(kind(&j)).to_string(),
            j.attempt.to_string(),
            exit_text(&j),
        ]);
        finals.push(j);
    }
    println!("--- summary ---");
    if out.json {
        for j in &finals {
            println!("{}", crate::cli::job_json(j));
        }
    } else {
        print!(
            "{}",
            table(
                &["JOB", "TENANT", "PRIO", "STATE", "ATTEMPTS", "EXIT"],
                &rows
            )
        );
    }
    pipeline(&mut client, out).await?;
    // A clean stop: the agent drains and delivers everything, then the
    // server stops and its store closes.
    let _ = stop_agent.send(Shutdown::Drain);
    let report = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .map_err(|_| Failure::server("demo: the agent did not stop"))?
        .map_err(|e| fail("agent")(e.to_string()))?
        .map_err(|e| fail("agent")(e.to_string()))?;
    let _ = stop_server.send(());
    server
        .wait()
        .await
        .map_err(|e| fail("server")(e.to_string()))?;
    out.say(&format!(
        "done in {:.1} s: {} attempts run by the agent, all logs and results delivered: {}; agent and server stopped cleanly",
        started.elapsed().as_secs_f64(),
        report.jobs_run,
        report.is_clean()
    ));
    Ok(())
}

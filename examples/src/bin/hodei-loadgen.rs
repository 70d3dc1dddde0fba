//! `hodei-loadgen`: drives a real `hodei-server` over gRPC with simulated
//! agents and concurrent clients, and prints one JSON line of figures.
//!
//! It starts the `hodei-server` binary next to it (a separate process, so
//! the server's RSS and CPU are its own) on a fresh data directory. Each
//! simulated agent is a lightweight implementation of the worker protocol
//! (a stream, no processes): it completes a job at once or after
//! `--job-duration`. Latencies are measured from just before a client's
//! Submit call to the agent receiving AssignJob, and to the server's
//! ResultAck for the finished job (stored).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hodei_core::{JobSpec, Resources};
use hodei_examples::parse_duration;
use hodei_hwp::client::{BearerToken, channel};
use hodei_hwp::proto::job_service_client::JobServiceClient;
use hodei_hwp::proto::worker_service_client::WorkerServiceClient;
use hodei_hwp::proto::{self, agent_message::Msg as Out, server_message::Msg as In};
use hodei_hwp::spec_to_wire;
use hodei_hwp::tls::ClientTls;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Load generator for a Hodei server.
#[derive(Clone, Debug, Parser)]
#[command(name = "hodei-loadgen", version)]
struct Args {
    /// Simulated agents (N).
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Jobs to submit (M); 0 only connects agents and holds for --hold.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Concurrent submitting clients (K).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Tenants the jobs are spread over (T).
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Tenant weights, comma-separated (t0,t1,...), e.g. 1,2,4.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u32>,
    /// How long each job runs on its agent.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    job_duration: Duration,
    /// Jobs each agent runs at once (its capacity, in job-sized slots).
    #[arg(long, default_value_t = 10_000)]
    slots: u32,
    /// `redb` (durable), `postgres` (a throwaway PostgreSQL server of the
    /// run's own, on this machine) or `memory`; several, comma-separated,
    /// run one after the other and a last line gives each one's figures
    /// as a ratio of the first's.
    #[arg(long, default_value = "redb")]
    store: String,
    /// The agents' heartbeat interval (the server's setting).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    heartbeat_interval: Duration,
    /// With --jobs 0: how long to hold the agents connected.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    hold: Duration,
    /// Submit every job before any agent connects (a backlog, to see how
    /// dispatches are shared among tenants).
    #[arg(long)]
    backlog_first: bool,
    /// Submissions per second in all (0: as fast as the clients go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Agent streams per TCP connection.
    #[arg(long, default_value_t = 100)]
    agents_per_connection: usize,
    /// The hodei-server binary [default: next to this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Instead of simulated agents: one real `hodei-agent` (next to this
    /// binary) running each job (`true`) as a real process, the jobs
    /// submitted one at a time; reports submit-to-start (Submit call to the
    /// Running event on a Watch stream).
    #[arg(long)]
    real_agent: bool,
    /// Serve TLS (the server's default) instead of plaintext: simulated
    /// agents join for their own certificates and each connects with
    /// mutual TLS on a connection of its own; clients trust the CA.
    #[arg(long)]
    tls: bool,
    /// Instead of a run: open this many connections (TCP, handshake, one
    /// call, close), 32 at a time, to a plaintext server, a TLS server,
    /// and the TLS server with a client certificate, in this one run;
    /// print each rate and the ratios.
    #[arg(long)]
    compare_connections: Option<usize>,
    /// After the jobs have run, with the agents still connected: time the
    /// first data of every dashboard page (its HTTP/JSON API calls, in
    /// order, over TCP) this many times each, and print the figures.
    #[arg(long, default_value_t = 0)]
    pages: usize,
}

struct Server {
    child: Child,
    grpc: String,
    http: String,
    dir: tempfile::TempDir,
    join: String,
    admin: String,
    tls: bool,
    /// The database of a `postgres` run; stopped after the server.
    _db: Option<hodei_store::pg::LocalCluster>,
}

impl Server {
    /// What clients trust.
    fn trust(&self) -> anyhow::Result<ClientTls> {
        Ok(if self.tls {
            ClientTls::ca_file(&self.dir.path().join("tls/ca.crt"))?
        } else {
            ClientTls::Plaintext
        })
    }

    fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let ca = self.tls.then(|| self.dir.path().join("tls/ca.crt"));
        metrics(&self.http, ca.as_deref())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(a: &Args, tls: bool) -> anyhow::Result<Server> {
    let bin = match &a.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("hodei-server"),
    };
    let dir = tempfile::Builder::new()
        .prefix("hodei-loadgen-")
        .tempdir()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--store", &a.store, "--log-level", "error"])
        // One admin token submits everything: no per-caller limit.
        .args(["--rate-limit", "0", "--max-streams", "0"])
        .arg("--heartbeat-interval")
        .arg(humantime::format_duration(a.heartbeat_interval).to_string())
        .arg("--heartbeat-timeout")
        .arg(humantime::format_duration(a.heartbeat_interval * 6).to_string());
    if !tls {
        cmd.arg("--insecure-plaintext");
    }
    let db = if a.store == "postgres" {
        let db = hodei_store::pg::LocalCluster::start()?;
        cmd.args(["--database-url", &db.url()]);
        Some(db)
    } else {
        None
    };
    for (i, w) in a.weights.iter().enumerate() {
        cmd.arg("--weight").arg(format!("t{i}={w}"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let out = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(out).lines();
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() || http.is_none() {
        let Some(line) = lines.next() else {
            bail!("the server exited before printing its addresses");
        };
        let line = line?;
        if let Some(x) = line.strip_prefix("hodei-server: gRPC on ") {
            grpc = Some(x.to_string());
        }
        if let Some(x) = line.strip_prefix("hodei-server: metrics on ") {
            http = Some(
                x.trim_end_matches("/metrics")
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string(),
            );
        }
    }
    // Keep draining its stdout so it never blocks.
    std::thread::spawn(move || for _ in lines {});
    let read = |name: &str| -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(dir.path().join(name))?
            .trim()
            .to_string())
    };
    let http = http.context("metrics address")?;
    if db.is_some() {
        // It starts as a standby and leads once it holds the lease.
        let ca = tls.then(|| dir.path().join("tls/ca.crt"));
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = hodei_examples::http_get(&http, "/readyz", ca.as_deref())
                .is_ok_and(|r| r.split_whitespace().nth(1) == Some("200"));
            if ready {
                break;
            }
            if Instant::now() > end {
                bail!("the server did not lead within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Server {
        join: read("join.token")?,
        admin: read("admin.token")?,
        child,
        grpc: grpc.context("grpc address")?,
        http,
        dir,
        tls,
        _db: db,
    })
}

fn metrics(addr: &str, ca: Option<&std::path::Path>) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = hodei_examples::http_get(addr, "/metrics", ca)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn proc_stat(pid: u32) -> (f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// What the run records, shared by clients and agents.
struct Record {
    start: Instant,
    /// Per job: submit time, nanoseconds since `start` (0: not yet).
    submitted: Vec<AtomicU64>,
    /// Submit to AssignJob, microseconds.
    assign_us: Mutex<Vec<u64>>,
    /// Submit to ResultAck, microseconds.
    finish_us: Mutex<Vec<u64>>,
    completed: AtomicUsize,
    last_finish_ns: AtomicU64,
    dispatches: Mutex<Vec<String>>,
}

impl Record {
    fn since_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn job_index(name: &str) -> Option<usize> {
        name.strip_prefix("lg-")?.parse().ok()
    }
}

/// A simulated agent's own certificate: a key, a request, Join.
async fn join_one(joiner: &Channel, join: &BearerToken, i: usize) -> anyhow::Result<ClientTls> {
    let (key, csr) = hodei_hwp::tls::new_key_and_request(&format!("sim-{i}"))?;
    let mut c = WorkerServiceClient::with_interceptor(joiner.clone(), join.clone());
    let cert = c
        .join(proto::JoinRequest {
            csr_pem: csr,
            name: format!("sim-{i}"),
        })
        .await?
        .into_inner();
    Ok(ClientTls::Ca {
        roots: cert.ca_pem.into_bytes(),
        identity: Some((cert.certificate_pem.into_bytes(), key.into_bytes())),
    })
}

/// One simulated agent: its number, job slots and job duration.
#[derive(Clone, Copy)]
struct Sim {
    i: usize,
    slots: u32,
    duration: Duration,
}

async fn sim_agent(
    ch: Channel,
    join: BearerToken,
    Sim { i, slots, duration }: Sim,
    rec: Arc<Record>,
    mut stop: watch::Receiver<bool>,
    welcomed: mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::with_interceptor(ch, join);
    let (tx, rx) = mpsc::channel::<proto::AgentMessage>(4096);
    let msg = |m| proto::AgentMessage { msg: Some(m) };
    let job = Resources::new(10, 1, 0);
    tx.send(msg(Out::Register(proto::Register {
        agent_version: "loadgen".into(),
        worker_id: String::new(),
        name: format!("sim-{i}"),
        labels: Default::default(),
        capacity: Some(proto::Resources {
            cpu_millis: job.cpu_millis.saturating_mul(slots),
            memory_mb: job.memory_mb * u64::from(slots),
            gpus: 0,
        }),
        jobs: Vec::new(),
    })))
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let every = match inbound.message().await? {
        Some(proto::ServerMessage {
            msg: Some(In::Welcome(w)),
        }) => Duration::from_millis(w.heartbeat_interval_ms.max(10)),
        _ => bail!("agent {i}: no Welcome"),
    };
    let _ = welcomed.send(()).await;
    // Job id -> its index, from assignment to ResultAck.
    let mut running: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // Heartbeats of all agents spread over the interval, not in step.
    let first = tokio::time::Instant::now() + every.mul_f64(rand::random::<f64>());
    let mut hb = tokio::time::interval_at(first, every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = hb.tick() => {
                let _ = tx.try_send(msg(Out::Heartbeat(proto::Heartbeat {
                    cpu_percent: 1.0, memory_used_mb: 100, load_1m: 0.1, running_jobs: 0,
                })));
            }
            m = inbound.message() => {
                let Some(m) = m? else { break };
                match m.msg {
                    Some(In::AssignJob(a)) => {
                        let now = rec.since_ns();
                        let name = a.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                        if let Some(n) = Record::job_index(&name).filter(|n| *n < rec.submitted.len()) {
                            let t = rec.submitted[n].load(Ordering::Relaxed);
                            if t > 0 {
                                rec.assign_us.lock().push(now.saturating_sub(t) / 1000);
                            }
                            running.insert(a.job_id.clone(), n);
                        }
                        rec.dispatches.lock().push(a.spec.map(|s| s.tenant).unwrap_or_default());
                        let tx = tx.clone();
                        let finish = move || {
                            let _ = tx.try_send(msg(Out::JobStarted(proto::JobStarted {
                                job_id: a.job_id.clone(), attempt: a.attempt, started_at_ms: 0,
                            })));
                            let _ = tx.try_send(msg(Out::JobFinished(proto::JobFinished {
                                job_id: a.job_id, attempt: a.attempt,
                                exit: Some(proto::ExitStatus { kind: Some(proto::exit_status::Kind::Code(0)) }),
                                duration_ms: duration.as_millis() as u64, peak_memory_mb: 1,
                                timed_out: false, log_batches: 0, outputs: Default::default(),
                            })));
                        };
                        if duration.is_zero() {
                            finish();
                        } else {
                            tokio::spawn(async move {
                                tokio::time::sleep(duration).await;
                                finish();
                            });
                        }
                    }
                    Some(In::ResultAck(r)) => {
                        let now = rec.since_ns();
                        rec.completed.fetch_add(1, Ordering::Relaxed);
                        rec.last_finish_ns.fetch_max(now, Ordering::Relaxed);
                        if let Some(n) = running.remove(&r.job_id) {
                            let t = rec.submitted[n].load(Ordering::Relaxed);
                            rec.finish_us.lock().push(now.saturating_sub(t) / 1000);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn percentiles(mut v: Vec<u64>) -> serde_json::Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    json!({ "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": v.len() })
}

/// Submit-to-start with a real agent running real processes, one job at a
/// time: the figure that shows whether small messages wait on delayed
/// acknowledgements (TCP_NODELAY) or on anything else in the path.
async fn run_real_agent(a: &Args, server: &Server) -> anyhow::Result<serde_json::Value> {
    let bin = std::env::current_exe()?.with_file_name("hodei-agent");
    let spill = tempfile::tempdir()?;
    let token_file = spill.path().join("join.token");
    std::fs::write(&token_file, &server.join)?;
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let mut agent = Command::new(&bin)
        .args(["--server", &server.grpc, "--log-level", "error"])
        .arg("--state-dir")
        .arg(spill.path().join("state"))
        .arg("--join-token-file")
        .arg(&token_file)
        .arg("--spill-dir")
        .arg(spill.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let result = async {
        let mut c =
            hodei_hwp::client::Client::connect(&server.grpc, &ClientTls::Plaintext, &server.admin)
                .await?;
        let mut w =
            hodei_hwp::client::Client::connect(&server.grpc, &ClientTls::Plaintext, &server.admin)
                .await?;
        for _ in 0..200 {
            if c.workers().await?.iter().any(|w| w.status == "ready") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut events = w.watch(None, false).await?;
        let mut took = Vec::with_capacity(a.jobs);
        let running = hodei_hwp::proto::JobStateKind::Running as i32;
        for _ in 0..a.jobs {
            let t0 = Instant::now();
            let (job, _) = c.submit(&hodei_core::JobSpec::argv(["true"])).await?;
            loop {
                let e = tokio::time::timeout(Duration::from_secs(30), events.message())
                    .await
                    .context("no Running event within 30 s")??
                    .context("the watch ended")?;
                if e.job_id == job.id && e.to.is_some_and(|s| s.kind == running) {
                    took.push(t0.elapsed().as_micros() as u64);
                    break;
                }
            }
        }
        anyhow::Ok(json!({ "real_agent_jobs": a.jobs, "submit_to_start_ms": percentiles(took) }))
    }
    .await;
    // Every job has ended: nothing of the agent's is left to drain.
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

/// Connections a second to `server`: each a TCP connection, a handshake
/// (TLS when it serves it, with `identity` when given), one ListWorkers
/// call, closed; `conc` at a time.
async fn connection_rate(
    server: &Server,
    tls: ClientTls,
    n: usize,
    conc: usize,
) -> anyhow::Result<f64> {
    let admin = BearerToken::new(&server.admin)?;
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, tls, admin, url) = (
            Arc::clone(&next),
            tls.clone(),
            admin.clone(),
            server.grpc.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let ch = channel(&url, &tls).await?;
                let mut c = JobServiceClient::with_interceptor(ch, admin.clone());
                c.list_workers(proto::ListWorkersRequest {}).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

async fn compare_connections(a: &Args, n: usize) -> anyhow::Result<serde_json::Value> {
    let plain = start_server(a, false)?;
    let tls = start_server(a, true)?;
    // A client certificate for the mutual-TLS figure.
    let joiner = channel(
        &tls.grpc,
        &ClientTls::Pinned(tls.join.parse::<hodei_hwp::tls::JoinToken>()?.ca),
    )
    .await?;
    let agent = join_one(&joiner, &BearerToken::new(&tls.join)?, 0).await?;
    // Interleaved, twice each, so both see the same machine.
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..2 {
        rates
            .entry("plaintext")
            .or_default()
            .push(connection_rate(&plain, ClientTls::Plaintext, n, 32).await?);
        rates
            .entry("tls")
            .or_default()
            .push(connection_rate(&tls, tls.trust()?, n, 32).await?);
        rates
            .entry("mutual_tls")
            .or_default()
            .push(connection_rate(&tls, agent.clone(), n, 32).await?);
    }
    let best = |k: &str| rates[k].iter().copied().fold(0.0, f64::max);
    let (p, t, m) = (best("plaintext"), best("tls"), best("mutual_tls"));
    let (tls_cpu, plain_cpu) = (proc_stat(tls.child.id()).1, proc_stat(plain.child.id()).1);
    Ok(json!({
        "connections_each": n,
        "concurrency": 32,
        "per_s_runs": rates,
        "plaintext_per_s": p,
        "tls_per_s": t,
        "mutual_tls_per_s": m,
        "tls_over_plaintext": t / p,
        "mutual_tls_over_plaintext": m / p,
        "server_cpu_seconds_plaintext": plain_cpu,
        "server_cpu_seconds_tls_both_runs": tls_cpu,
    }))
}

async fn run(a: Args) -> anyhow::Result<serde_json::Value> {
    if let Some(n) = a.compare_connections {
        return compare_connections(&a, n).await;
    }
    let server = start_server(&a, a.tls)?;
    if a.real_agent {
        return run_real_agent(&a, &server).await;
    }
    let pid = server.child.id();
    let url = server.grpc.clone();
    let rec = Arc::new(Record {
        start: Instant::now(),
        submitted: (0..a.jobs).map(|_| AtomicU64::new(0)).collect(),
        assign_us: Mutex::new(Vec::with_capacity(a.jobs)),
        finish_us: Mutex::new(Vec::with_capacity(a.jobs)),
        completed: AtomicUsize::new(0),
        last_finish_ns: AtomicU64::new(0),
        dispatches: Mutex::new(Vec::with_capacity(a.jobs)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let join = BearerToken::new(&server.join)?;
    let admin = BearerToken::new(&server.admin)?;
    let trust = server.trust()?;
    // Over TLS each agent has its own certificate, so its own connection;
    // they join first (64 at a time), through one pinned connection.
    let identities: Vec<ClientTls> = if a.tls {
        let pin = server.join.parse::<hodei_hwp::tls::JoinToken>()?.ca;
        let joiner = channel(&url, &ClientTls::Pinned(pin)).await?;
        let mut ids = Vec::with_capacity(a.agents);
        let all: Vec<usize> = (0..a.agents).collect();
        for chunk in all.chunks(64) {
            let mut joining = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let (joiner, join) = (joiner.clone(), join.clone());
                joining.push(tokio::spawn(
                    async move { join_one(&joiner, &join, i).await },
                ));
            }
            for j in joining {
                ids.push(j.await??);
            }
        }
        ids
    } else {
        Vec::new()
    };
    let identities = Arc::new(identities);

    let connect_agents = |rec: Arc<Record>| {
        let (url, join, stop_rx) = (url.clone(), join.clone(), stop_rx.clone());
        let identities = Arc::clone(&identities);
        let (n, per, slots, dur) = (
            a.agents,
            if a.tls {
                1
            } else {
                a.agents_per_connection.max(1)
            },
            a.slots,
            a.job_duration,
        );
        async move {
            let (wtx, mut wrx) = mpsc::channel(n.max(1));
            let mut tasks = Vec::new();
            let mut ch = None;
            for i in 0..n {
                if i % per == 0 {
                    let tls = identities.get(i).cloned().unwrap_or_default();
                    ch = Some(channel(&url, &tls).await?);
                }
                let Some(c) = ch.clone() else { continue };
                let token = if identities.is_empty() {
                    join.clone()
                } else {
                    BearerToken::none()
                };
                tasks.push(tokio::spawn(sim_agent(
                    c,
                    token,
                    Sim {
                        i,
                        slots,
                        duration: dur,
                    },
                    Arc::clone(&rec),
                    stop_rx.clone(),
                    wtx.clone(),
                )));
            }
            drop(wtx);
            let mut up = 0;
            while up < n && wrx.recv().await.is_some() {
                up += 1;
            }
            anyhow::Ok((tasks, up))
        }
    };

    let submit_all = |rec: Arc<Record>| {
        let (url, admin, trust) = (url.clone(), admin.clone(), trust.clone());
        let (m, k, t, rate) = (a.jobs, a.clients.max(1), a.tenants.max(1), a.rate);
        async move {
            let next = Arc::new(AtomicUsize::new(0));
            let began = Instant::now();
            let mut tasks = Vec::new();
            let mut ch = None;
            for i in 0..k {
                if i % 16 == 0 {
                    ch = Some(channel(&url, &trust).await?);
                }
                let Some(c) = ch.clone() else { continue };
                let mut client = JobServiceClient::with_interceptor(c, admin.clone());
                let (rec, next) = (Arc::clone(&rec), Arc::clone(&next));
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= m {
                            return anyhow::Ok(());
                        }
                        if rate > 0 {
                            let due = began + Duration::from_secs_f64(n as f64 / rate as f64);
                            tokio::time::sleep_until(due.into()).await;
                        }
                        let mut spec = JobSpec::argv(["true"]);
                        spec.name = format!("lg-{n}");
                        spec.tenant = format!("t{}", n % t).parse()?;
                        spec.resources = Resources::new(10, 1, 0);
                        rec.submitted[n].store(rec.since_ns().max(1), Ordering::Relaxed);
                        client
                            .submit(proto::SubmitRequest {
                                spec: Some(spec_to_wire(&spec, true)),
                            })
                            .await?;
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(began.elapsed())
        }
    };

    let m0 = server.metrics()?;
    let t0 = Instant::now();
    let (agents, up, submit_time) = if a.backlog_first {
        let st = submit_all(Arc::clone(&rec)).await?;
        let (agents, up) = connect_agents(Arc::clone(&rec)).await?;
        (agents, up, st)
    } else {
        let (agents, up) = connect_agents(Arc::clone(&rec)).await?;
        let st = submit_all(Arc::clone(&rec)).await?;
        (agents, up, st)
    };
    if up < a.agents {
        bail!("only {up} of {} agents connected", a.agents);
    }
    // Holding agents only: count from when all are connected, so the rate
    // is the steady one, not diluted by the connect ramp.
    let (m0, t0) = if a.jobs == 0 {
        (server.metrics()?, Instant::now())
    } else {
        (m0, t0)
    };
    // Wait for every job (bounded), or hold the agents.
    let hold_end = Instant::now()
        + if a.jobs == 0 {
            a.hold
        } else {
            Duration::from_secs(600)
        };
    while Instant::now() < hold_end
        && (a.jobs == 0 || rec.completed.load(Ordering::Relaxed) < a.jobs)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed();
    let m1 = server.metrics()?;
    let (rss, cpu) = proc_stat(pid);
    let pages = if a.pages > 0 {
        let (http, admin, tls) = (server.http.clone(), server.admin.clone(), server.tls);
        let ca = tls.then(|| server.dir.path().join("tls/ca.crt"));
        let n = a.pages;
        tokio::task::spawn_blocking(move || page_timings(&http, &admin, ca.as_deref(), n)).await??
    } else {
        serde_json::Value::Null
    };
    let _ = stop_tx.send(true);
    for t in agents {
        let _ = t.await;
    }
    let d = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    let completed = rec.completed.load(Ordering::Relaxed);
    let run_secs = if a.jobs > 0 {
        rec.last_finish_ns.load(Ordering::Relaxed) as f64 / 1e9
            - rec
                .submitted
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .filter(|s| *s > 0)
                .min()
                .unwrap_or(0) as f64
                / 1e9
    } else {
        elapsed.as_secs_f64()
    };
    let mut shares = BTreeMap::new();
    {
        let d = rec.dispatches.lock();
        // While every tenant still has a backlog: the first half.
        let window = (d.len() / 2).max(1);
        for t in d.iter().take(window) {
            *shares.entry(t.clone()).or_insert(0usize) += 1;
        }
        let total: usize = shares.values().sum();
        for v in shares.values_mut() {
            *v = *v * 1000 / total.max(1);
        }
    }
    let commits = d("hodei_store_commit_batch_size_count");
    Ok(json!({
        "agents": a.agents,
        "tls": a.tls,
        "jobs": a.jobs,
        "clients": a.clients,
        "tenants": a.tenants,
        "weights": a.weights,
        "store": a.store,
        "job_duration_ms": a.job_duration.as_millis() as u64,
        "rate": a.rate,
        "completed": completed,
        "submit_seconds": submit_time.as_secs_f64(),
        "submitted_per_s": if a.jobs > 0 { a.jobs as f64 / submit_time.as_secs_f64() } else { 0.0 },
        "completed_per_s": if a.jobs > 0 && run_secs > 0.0 { completed as f64 / run_secs } else { 0.0 },
        "submit_to_assign_ms": percentiles(rec.assign_us.lock().clone()),
        "submit_to_finish_ms": percentiles(rec.finish_us.lock().clone()),
        "heartbeats_per_s": d("hodei_heartbeats_total") / elapsed.as_secs_f64(),
        "server_peak_rss_mb": rss,
        "server_cpu_seconds": cpu,
        "elapsed_seconds": elapsed.as_secs_f64(),
        "store_commits": commits,
        "store_commit_batch_mean": if commits > 0.0 { d("hodei_store_commit_batch_size_sum") / commits } else { 0.0 },
        "store_commit_mean_ms": if commits > 0.0 { d("hodei_store_commit_seconds_sum") * 1000.0 / commits } else { 0.0 },
        "store_commit_batch_max": m1.get("hodei_store_commit_batch_size_max").copied().unwrap_or(0.0),
        "dispatch_share_permille_first_half": shares,
        "pages": pages,
    }))
}

/// Times the first data of each dashboard page: the API calls the page
/// makes before it can show anything, one after the other as it makes
/// them, `n` times each; milliseconds, p50 and max (and the slowest call).
fn page_timings(
    http: &str,
    admin: &str,
    ca: Option<&std::path::Path>,
    n: usize,
) -> anyhow::Result<serde_json::Value> {
    let auth = format!("Bearer {admin}");
    let get = |path: &str| -> anyhow::Result<(serde_json::Value, Duration)> {
        let t = Instant::now();
        let raw =
            hodei_examples::http_request(http, "GET", path, &[("Authorization", &auth)], None, ca)?;
        let took = t.elapsed();
        let status = raw.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("{path}: {}", raw.lines().next().unwrap_or(""));
        }
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        Ok((v, took))
    };
    // A job in the middle of the store, and the token of a page there.
    let mut token = String::new();
    let mut middle = None;
    let total = get("/api/v1/overview")?.0["jobs"]["succeeded"]
        .as_u64()
        .unwrap_or(0);
    let mut walked = 0u64;
    while walked < total / 2 {
        let (page, _) = get(&format!("/api/v1/jobs?page_size=1000&page_token={token}"))?;
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        walked += jobs.len() as u64;
        middle = jobs
            .last()
            .and_then(|j| j["id"].as_str())
            .map(str::to_string);
        match page["next_page_token"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    let job = middle.ok_or_else(|| anyhow::anyhow!("no job to open"))?;
    let pages: Vec<(&str, Vec<String>)> = vec![
        (
            "files",
            vec!["/ui/".into(), "/ui/app.js".into(), "/ui/app.css".into()],
        ),
        ("sign-in", vec!["/api/v1/whoami".into()]),
        ("overview", vec!["/api/v1/overview".into()]),
        ("jobs", vec!["/api/v1/jobs?page_size=50".into()]),
        (
            "jobs, middle page",
            vec![format!("/api/v1/jobs?page_size=50&page_token={token}")],
        ),
        (
            "jobs, by state",
            vec!["/api/v1/jobs?state=succeeded&page_size=50".into()],
        ),
        (
            "jobs, state none has",
            vec!["/api/v1/jobs?state=failed&page_size=50".into()],
        ),
        (
            "jobs, by tenant",
            vec!["/api/v1/jobs?tenant=t0&page_size=50".into()],
        ),
        (
            "jobs, tenant and state none has",
            vec!["/api/v1/jobs?tenant=t0&state=failed&page_size=50".into()],
        ),
        (
            "job",
            vec![
                format!("/api/v1/jobs/{job}"),
                format!("/api/v1/jobs/{job}/attempts"),
                format!("/api/v1/jobs/{job}/logs?tail=true&limit=200"),
            ],
        ),
        ("workers", vec!["/api/v1/workers?page_size=100".into()]),
        (
            "workers, last page",
            vec!["/api/v1/workers?page_size=100&page_token=~".into()],
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, calls) in pages {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let mut sum = Duration::ZERO;
            for c in &calls {
                sum += get(c)?.1;
            }
            times.push(sum.as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        out.insert(
            name.to_string(),
            json!({ "p50_ms": (p50 * 100.0).round() / 100.0, "max_ms": (max * 100.0).round() / 100.0 }),
        );
    }
    Ok(serde_json::Value::Object(out))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match hodei_examples::runtime("hodei-loadgen", None) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let stores: Vec<String> = args
        .store
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let mut lines = Vec::new();
    for store in &stores {
        let mut a = args.clone();
        a.store = store.clone();
        match rt.block_on(run(a)) {
            Ok(v) => {
                println!("{v}");
                lines.push(v);
            }
            Err(e) => {
                eprintln!("hodei-loadgen: {store}: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if lines.len() > 1 {
        println!("{}", ratios(&lines));
    }
    ExitCode::SUCCESS
}

/// Each run's main figures beside the first run's, as ratios.
fn ratios(lines: &[serde_json::Value]) -> serde_json::Value {
    let f = |v: &serde_json::Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let keys: [(&str, &[&str]); 4] = [
        ("submitted_per_s", &["submitted_per_s"]),
        ("completed_per_s", &["completed_per_s"]),
        ("submit_to_assign_p50_ms", &["submit_to_assign_ms", "p50"]),
        ("submit_to_assign_p99_ms", &["submit_to_assign_ms", "p99"]),
    ];
    let base = &lines[0];
    let mut out = serde_json::Map::new();
    for l in lines {
        let mut m = serde_json::Map::new();
        for (name, path) in keys {
            let (x, b) = (f(l, path), f(base, path));
            m.insert(name.to_string(), json!(x));
            m.insert(
                format!("{name}_ratio"),
                json!(if b > 0.0 { x / b } else { 0.0 }),
            );
        }
        out.insert(
            l.get("store")
                .and_then(|s| s.as_str())
                .unwrap_or("?")
                .to_string(),
            serde_json::Value::Object(m),
        );
    }
    json!({ "compared_with": base.get("store"), "stores": out })
}

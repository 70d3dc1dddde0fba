//! Several `hodei-server` processes on one real PostgreSQL server (each
//! test starts its own): failover under kill -9, a leader stopped past its
//! lease, the database restarted under load, a newer schema refused, and a
//! redb deployment moved over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hodei_core::{JobId, JobSpec};
use hodei_hwp::client::Client;
use hodei_hwp::proto::JobStateKind;
use hodei_hwp::tls::ClientTls;
use hodei_store::pg::LocalCluster;
use parking_lot::Mutex;

use crate::harness::{self, SERVER};
use crate::process;
use process::Proc;

/// One group of servers at a time: the failover bound (5 s) is measured,
/// and the machine has two cores.
static SERIAL: Mutex<()> = parking_lot::const_mutex(());

/// One server of the group: its directory and fixed ports (it rebinds them
/// as it changes role, and again when restarted).
struct Node {
    dir: PathBuf,
    grpc: u16,
    http: u16,
    proc: Option<Proc>,
}

struct Group {
    db: LocalCluster,
    nodes: Vec<Node>,
    /// The first node's directory: its CA, secrets key and tokens are the
    /// group's.
    home: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Group {
    fn start(n: usize) -> Group {
        let db = LocalCluster::start().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                dir: tmp.path().join(format!("server-{i}")),
                grpc: process::free_port(),
                http: process::free_port(),
                proc: None,
            })
            .collect();
        let home = nodes[0].dir.clone();
        let mut g = Group {
            db,
            nodes,
            home,
            _tmp: tmp,
        };
        g.launch(0);
        // The others share the first one's CA, secrets key and tokens.
        for i in 1..n {
            let d = &g.nodes[i].dir;
            std::fs::create_dir_all(d.join("tls")).unwrap();
            for f in [
                "tls/ca.crt",
                "tls/ca.key",
                "secrets.key",
                "admin.token",
                "join.token",
            ] {
                std::fs::copy(g.home.join(f), d.join(f)).unwrap();
            }
            set_private(d);
            g.launch(i);
        }
        g
    }

    fn launch(&mut self, i: usize) {
        let node = &self.nodes[i];
        let (proc, _, _) = harness::launch(
            [
                "--store",
                "postgres",
                "--database-url",
                &self.db.url(),
                "--data-dir",
                node.dir.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", node.grpc),
                "--http-listen",
                &format!("127.0.0.1:{}", node.http),
                "--heartbeat-interval",
                "200ms",
                "--heartbeat-timeout",
                "10s",
                "--shutdown-delay",
                "100ms",
                "--log-level",
                "warn",
                "--rate-limit",
                "0",
            ]
            .map(String::from),
        );
        self.nodes[i].proc = Some(proc);
    }

    fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("https://127.0.0.1:{}", n.grpc))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn agent(&self, name: &str) -> Proc {
        let state = self.home.parent().unwrap().join(format!("agent-{name}"));
        harness::agent(
            &self.endpoints(),
            name,
            &state,
            &self.home.join("join.token"),
            &[],
        )
    }

    fn cli(&self, args: &[&str]) -> Output {
        harness::cli(&self.endpoints(), &self.home, args)
    }

    fn http(&self, i: usize, path: &str) -> (u16, String) {
        let addr = format!("127.0.0.1:{}", self.nodes[i].http);
        match hodei_examples::http_get(&addr, path, Some(&self.home.join("tls/ca.crt"))) {
            Ok(resp) => process::status_and_body(&resp),
            Err(_) => (0, String::new()),
        }
    }

    /// The node whose /readyz says ready, waiting up to `limit`.
    fn wait_leader(&self, except: Option<usize>, limit: Duration) -> Option<usize> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            for i in 0..self.nodes.len() {
                if Some(i) != except && self.http(i, "/readyz").0 == 200 {
                    return Some(i);
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    fn trust(&self) -> ClientTls {
        ClientTls::ca_file(&self.home.join("tls/ca.crt")).unwrap()
    }

    fn admin(&self) -> String {
        std::fs::read_to_string(self.home.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn set_private(d: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for f in [
        "",
        "tls",
        "tls/ca.key",
        "secrets.key",
        "admin.token",
        "join.token",
    ] {
        let p = d.join(f);
        let mode = if p.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A job that notices if another run of itself is going at the same time.
fn guarded_job(marks: &Path, i: usize) -> JobSpec {
    let mut spec = JobSpec::argv([
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "m={m}/run-{i}; mkdir $m 2>/dev/null || echo {i} >> {m}/doubles; \
             echo start-{i}; sleep 0.3; echo end-{i}; rmdir $m 2>/dev/null; true",
            m = marks.display()
        ),
    ]);
    spec.tenant = "acme".parse().unwrap();
    spec.idempotency_key = Some(format!("job-{i}"));
    spec
}

/// Submits job after job through whichever server leads, retrying each
/// (same idempotency key) until acknowledged; returns the acknowledged
/// ids.
async fn submitter(
    endpoints: String,
    tls: ClientTls,
    token: String,
    marks: PathBuf,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(usize, JobId)>>>,
) {
    let mut client: Option<Client> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = Client::connect(&endpoints, &tls, &token).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = client.as_mut().unwrap();
        match tokio::time::timeout(Duration::from_secs(5), c.submit(&guarded_job(&marks, i))).await
        {
            Ok(Ok((job, _))) => {
                let id: JobId = job.id.parse().unwrap();
                acked.lock().push((i, id));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => client = None,
        }
    }
}

/// Starts [`submitter`] on `rt`: its stop flag, what it acknowledged, its
/// task.
#[allow(clippy::type_complexity)]
fn load(
    rt: &tokio::runtime::Runtime,
    g: &Group,
    marks: &Path,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Vec<(usize, JobId)>>>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sub = rt.spawn(submitter(
        g.endpoints(),
        g.trust(),
        g.admin(),
        marks.to_path_buf(),
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    (stop, acked, sub)
}

async fn wait_all_final(client: &mut Client, ids: &[(usize, JobId)], limit: Duration) {
    let end = Instant::now() + limit;
    for (i, id) in ids {
        loop {
            let j = client.get(*id).await.unwrap();
            let k = JobStateKind::try_from(j.state.as_ref().map(|s| s.kind).unwrap_or(0))
                .unwrap_or(JobStateKind::Unspecified);
            if matches!(
                k,
                JobStateKind::Succeeded
                    | JobStateKind::Failed
                    | JobStateKind::Cancelled
                    | JobStateKind::Lost
                    | JobStateKind::TimedOut
            ) {
                assert_eq!(k, JobStateKind::Succeeded, "job {i} ({id}) ended {k:?}");
                break;
            }
            assert!(Instant::now() < end, "job {i} ({id}) still {k:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn leader_client(g: &Group) -> Client {
    for _ in 0..100 {
        if let Ok(c) = Client::connect(&g.endpoints(), &g.trust(), &g.admin()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader to connect to");
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

#[test]
fn three_servers_survive_ten_leader_kills_without_losing_or_repeating_a_job() {
    let _serial = SERIAL.lock();
    let mut g = Group::start(3);
    let marks = g.home.parent().unwrap().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let _agents: Vec<Proc> = (0..3).map(|i| g.agent(&format!("a{i}"))).collect();
    let rt = rt();
    let (stop, acked, sub) = load(&rt, &g, &marks);
    let db = rt.block_on(sql(&g.db.url()));
    let mut to_assign = Vec::new();
    for round in 0..10 {
        let leader = g
            .wait_leader(None, Duration::from_secs(20))
            .expect("a leader");
        // A random moment into its leadership, with jobs flowing.
        let before = acked.lock().len();
        std::thread::sleep(Duration::from_millis(700 + rand::random::<u64>() % 1500));
        assert!(
            acked.lock().len() > before,
            "round {round}: submissions flow through the leader"
        );
        let epoch: i64 = rt.block_on(async {
            db.query_one("SELECT epoch FROM hodei_lease", &[])
                .await
                .unwrap()
                .get(0)
        });
        let killed = Instant::now();
        g.nodes[leader].proc.as_ref().unwrap().signal(libc::SIGKILL);
        g.nodes[leader].proc = None;
        // The first assignment the next leader makes: an attempt recorded
        // after the epoch moved on.
        let assigned = rt.block_on(async {
            let end = Instant::now() + Duration::from_secs(15);
            let mut base = None;
            loop {
                assert!(
                    Instant::now() < end,
                    "round {round}: no new leader assigned a job"
                );
                let e: i64 = db
                    .query_one("SELECT epoch FROM hodei_lease", &[])
                    .await
                    .unwrap()
                    .get(0);
                let n: i64 = db
                    .query_one("SELECT count(*) FROM hodei_attempts", &[])
                    .await
                    .unwrap()
                    .get(0);
                match base {
                    None if e > epoch => base = Some(n),
                    Some(b) if n > b => return killed.elapsed(),
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let next = g
            .wait_leader(Some(leader), Duration::from_secs(10))
            .expect("a standby leads");
        to_assign.push(assigned.as_secs_f64());
        assert!(
            assigned < Duration::from_secs(5),
            "round {round}: server {next} assigned its first job {assigned:?} after the kill"
        );
        // The killed one comes back as a standby.
        g.launch(leader);
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(sub).unwrap();
    let ids = acked.lock().clone();
    assert!(ids.len() > 50, "only {} jobs acknowledged", ids.len());
    rt.block_on(async {
        let mut c = leader_client(&g).await;
        wait_all_final(&mut c, &ids, Duration::from_secs(120)).await;
        // Every acknowledged job once, with its whole log.
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let rows = db
            .query("SELECT idem_key FROM hodei_jobs", &[])
            .await
            .unwrap();
        for r in rows {
            let k: Option<String> = r.get(0);
            *by_key.entry(k.unwrap_or_default()).or_default() += 1;
        }
        let distinct: HashSet<JobId> = ids.iter().map(|(_, id)| *id).collect();
        assert_eq!(distinct.len(), ids.len(), "an id acknowledged twice");
        for (i, id) in &ids {
            assert_eq!(by_key.get(&format!("job-{i}")), Some(&1), "job {i}");
            let out = hodei_out(&mut c, *id).await;
            assert!(
                out.contains(&format!("start-{i}\n")) && out.contains(&format!("end-{i}\n")),
                "job {i}: log {out:?}"
            );
        }
    });
    let doubles = std::fs::read_to_string(marks.join("doubles")).unwrap_or_default();
    assert!(doubles.is_empty(), "ran twice at once: {doubles}");
    eprintln!(
        "failover over 10 kills (leader killed to the first assignment by the next): p50 {:.2}s max {:.2}s; {} jobs",
        p(&mut to_assign.clone(), 0.5),
        p(&mut to_assign, 1.0),
        ids.len()
    );
}

async fn hodei_out(c: &mut Client, id: JobId) -> String {
    let mut stream = c.logs(id, false).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_leader_stopped_past_its_lease_writes_nothing_and_steps_down() {
    let _serial = SERIAL.lock();
    let mut g = Group::start(2);
    let _agent = g.agent("a0");
    let rt = rt();
    let leader = g
        .wait_leader(None, Duration::from_secs(20))
        .expect("a leader");
    let other = 1 - leader;
    // A client held on the leader's own connection, as one that knew it.
    let direct = format!("https://127.0.0.1:{}", g.nodes[leader].grpc);
    let mut held = rt
        .block_on(Client::connect(&direct, &g.trust(), &g.admin()))
        .unwrap();
    let db = rt.block_on(sql(&g.db.url()));
    let count = |db: &tokio_postgres::Client| {
        rt.block_on(async {
            db.query_one("SELECT count(*) FROM hodei_jobs", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        })
    };
    let proc = g.nodes[leader].proc.as_ref().unwrap();
    proc.signal(libc::SIGSTOP);
    let taken = g
        .wait_leader(Some(leader), Duration::from_secs(15))
        .expect("the standby takes over");
    assert_eq!(taken, other);
    // The new leader runs work.
    rt.block_on(async {
        let mut c = leader_client(&g).await;
        let mut spec = JobSpec::argv(["sh", "-c", "echo after"]);
        spec.tenant = "acme".parse().unwrap();
        let (job, _) = c.submit(&spec).await.unwrap();
        wait_all_final(
            &mut c,
            &[(0, job.id.parse().unwrap())],
            Duration::from_secs(30),
        )
        .await;
    });
    let before = count(&db);
    let audit_before: i64 = rt.block_on(async {
        db.query_one("SELECT count(*) FROM hodei_audit", &[])
            .await
            .unwrap()
            .get(0)
    });
    g.nodes[leader].proc.as_ref().unwrap().signal(libc::SIGCONT);
    // At once, through the connection it still has: whatever the old
    // leader answers, nothing lands.
    let mut spec = JobSpec::argv(["sh", "-c", "echo from-the-past"]);
    spec.tenant = "acme".parse().unwrap();
    spec.idempotency_key = Some("from-the-past".into());
    let answer = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), held.submit(&spec)).await
    });
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a deposed leader acknowledged a submission: {answer:?}"
    );
    // It steps down: not ready, a standby in its metrics.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = g.http(leader, "/metrics");
        if code == 200 && body.contains("hodei_server_leader 0") {
            break;
        }
        assert!(
            Instant::now() < end,
            "the resumed server never stepped down: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(g.http(leader, "/readyz").0, 503);
    assert_eq!(g.http(other, "/readyz").0, 200);
    // The standby sends the dashboard to the leader and names it to API
    // callers; the leader serves both.
    let leader_http = format!("127.0.0.1:{}", g.nodes[other].http);
    let (code, body) = g.http(leader, "/api/v1/jobs");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&leader_http), "{body}");
    let raw = hodei_examples::http_get(
        &format!("127.0.0.1:{}", g.nodes[leader].http),
        "/ui/",
        Some(&g.home.join("tls/ca.crt")),
    )
    .unwrap();
    assert!(
        raw.starts_with("HTTP/1.0 307") || raw.starts_with("HTTP/1.1 307"),
        "{raw}"
    );
    assert!(raw.contains(&format!("{leader_http}/ui/")), "{raw}");
    assert_eq!(g.http(other, "/ui/").0, 200);
    let (_, m) = g.http(other, "/metrics");
    assert!(m.contains("hodei_server_leader 1"), "{m}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&db), before, "the deposed leader wrote a job");
    let found: i64 = rt.block_on(async {
        db.query_one(
            "SELECT count(*) FROM hodei_jobs WHERE idem_key = 'from-the-past'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert_eq!(found, 0);
    let audit_after: i64 = rt.block_on(async {
        db.query_one("SELECT count(*) FROM hodei_audit", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(
        audit_after, audit_before,
        "the deposed leader wrote to the audit trail"
    );
    // And the group goes on.
    g.nodes[leader].proc = None;
}

#[test]
fn the_database_restarted_under_load_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock();
    let g = Group::start(2);
    let marks = g.home.parent().unwrap().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let _agents: Vec<Proc> = (0..2).map(|i| g.agent(&format!("a{i}"))).collect();
    g.wait_leader(None, Duration::from_secs(20))
        .expect("a leader");
    let rt = rt();
    let (stop, acked, sub) = load(&rt, &g, &marks);
    std::thread::sleep(Duration::from_secs(2));
    let before = acked.lock().len();
    assert!(before > 0);
    g.db.stop().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    g.db.restart().unwrap();
    // Submissions resume through whichever server leads now.
    let end = Instant::now() + Duration::from_secs(30);
    let resumed = acked.lock().len();
    while acked.lock().len() < resumed + 20 {
        assert!(
            Instant::now() < end,
            "submissions did not resume after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(sub).unwrap();
    let ids = acked.lock().clone();
    rt.block_on(async {
        let mut c = leader_client(&g).await;
        wait_all_final(&mut c, &ids, Duration::from_secs(120)).await;
    });
    let doubles = std::fs::read_to_string(marks.join("doubles")).unwrap_or_default();
    assert!(doubles.is_empty(), "ran twice at once: {doubles}");
}

#[test]
fn a_database_of_a_newer_schema_is_refused_with_a_clear_error() {
    let _serial = SERIAL.lock();
    let db = LocalCluster::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrate = Command::new(SERVER)
        .args(["--store", "postgres", "--database-url", &db.url()])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let now = hodei_store::pg::SCHEMA_VERSION;
    assert!(
        String::from_utf8_lossy(&migrate.stdout)
            .contains(&format!("schema at version {now} (was 0)")),
        "{migrate:?}"
    );
    rt().block_on(async {
        sql(&db.url())
            .await
            .execute("UPDATE hodei_schema SET version = 7", &[])
            .await
            .unwrap();
    });
    let out = Command::new(SERVER)
        .args(["--store", "postgres", "--database-url", &db.url()])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 7") && err.contains(&format!("reads up to {now}")),
        "{err}"
    );
    // Missing settings are named.
    let out = Command::new(SERVER)
        .args(["--store", "postgres"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_url"));
}

#[test]
fn a_redb_deployment_moves_to_postgres_with_its_jobs_logs_tokens_and_audit_chain() {
    let _serial = SERIAL.lock();
    let db = LocalCluster::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("server");
    let (grpc, http) = (process::free_port(), process::free_port());
    let serve = |store: &[&str]| {
        let mut args: Vec<String> = store.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--data-dir",
                home.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--http-listen",
                &format!("127.0.0.1:{http}"),
                "--shutdown-delay",
                "100ms",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        harness::launch(args).0
    };
    let g = Group {
        db,
        nodes: vec![Node {
            dir: home.clone(),
            grpc,
            http,
            proc: None,
        }],
        home: home.clone(),
        _tmp: tmp,
    };
    // A redb server with history: jobs run, a token made and revoked.
    let redb = serve(&[]);
    g.wait_leader(None, Duration::from_secs(20))
        .expect("it serves");
    let agent = g.agent("a0");
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let out = g.cli(&[
                "--output",
                "json",
                "submit",
                "--tenant",
                "acme",
                "--wait",
                "--",
                "sh",
                "-c",
                &format!("echo moved-{i}"),
            ]);
            assert!(out.status.success(), "{out:?}");
            let first = out.stdout.split(|b| *b == b'\n').next().unwrap().to_vec();
            let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let made = g.cli(&[
        "token", "create", "--role", "viewer", "--tenant", "acme", "--name", "ops",
    ]);
    assert!(made.status.success(), "{made:?}");
    let before = String::from_utf8_lossy(&g.cli(&["audit", "--limit", "1000"]).stdout).into_owned();
    drop(agent);
    redb.signal(libc::SIGTERM);
    drop(redb);

    let pg = ["--store", "postgres", "--database-url", &g.db.url()];
    let migrate = Command::new(SERVER)
        .args(pg)
        .arg("--data-dir")
        .arg(&home)
        .arg("migrate")
        .arg("--from-redb")
        .arg(home.join("hodei.redb"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&migrate.stdout);
    assert!(migrate.status.success(), "{migrate:?}");
    assert!(
        said.contains("copied 5 jobs") && said.contains("the audit chain verifies"),
        "{said}"
    );
    // A second copy into the now busy database is refused.
    let again = Command::new(SERVER)
        .args(pg)
        .arg("--data-dir")
        .arg(&home)
        .args(["migrate", "--from-redb"])
        .arg(home.join("hodei.redb"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty one"));

    let _server = serve(&pg);
    g.wait_leader(None, Duration::from_secs(20))
        .expect("it leads");
    let verify = g.cli(&["audit", "--verify"]);
    assert!(verify.status.success(), "{verify:?}");
    let after = String::from_utf8_lossy(&g.cli(&["audit", "--limit", "1000"]).stdout).into_owned();
    assert!(
        after.starts_with(before.trim_end()),
        "the audit trail moved as it was"
    );
    for (i, id) in ids.iter().enumerate() {
        let st = g.cli(&["--output", "json", "status", id]);
        assert!(
            String::from_utf8_lossy(&st.stdout).contains("\"state\":\"succeeded\""),
            "{st:?}"
        );
        let logs = g.cli(&["logs", id]);
        assert!(String::from_utf8_lossy(&logs.stdout).contains(&format!("moved-{i}")));
    }
    let tokens = g.cli(&["token", "list"]);
    assert!(
        String::from_utf8_lossy(&tokens.stdout).contains("ops"),
        "{tokens:?}"
    );
    // It goes on: a new job runs on the moved deployment.
    let _agent = g.agent("a0");
    let out = g.cli(&[
        "submit",
        "--tenant",
        "acme",
        "--wait",
        "--",
        "echo",
        "on-postgres",
    ]);
    assert!(out.status.success(), "{out:?}");
}

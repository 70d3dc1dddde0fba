//! Acknowledged writes survive SIGKILL: a child process writes jobs as fast
//! as it can and prints each id once its write resolved; the parent kills it
//! at a random moment, reopens the file and finds every printed job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hodei_core::{Job, JobId, JobSpec, Timestamp};
use hodei_store::{RedbStore, Store, StoreConfig};
use rand::Rng;

const CHILD_ENV: &str = "HODEI_CRASH_CHILD_DB";

/// The writer. Does nothing unless started by the test below.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = RedbStore::open(&path, StoreConfig::default()).unwrap();
        for _ in 0..16 {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let mut spec = JobSpec::argv(["echo", "crash"]);
                    spec.name = "x".repeat(64);
                    let job = Job::new(JobId::new(), spec, Timestamp(1));
                    let id = job.id;
                    store.insert_job(job).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        // Write until killed.
        std::future::pending::<()>().await;
    });
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    // The child is this binary running only the writer below, named by
    // its path inside the test binary (`crash::crash_child_writer`).
    let writer = format!(
        "{}::crash_child_writer",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut acked_total: Vec<JobId> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--exact", &writer, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let acked = Arc::clone(&acked);
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(id) = line.strip_prefix("ACK ") {
                        acked.lock().unwrap().push(id.parse::<JobId>().unwrap());
                    }
                }
            })
        };
        // Wait (bounded) until writes are flowing, then kill at a random
        // moment in the middle of them.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < 200 {
            assert!(Instant::now() < deadline, "child never acknowledged writes");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0);
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        acked_total.extend(acked);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = RedbStore::open(&path, StoreConfig::default())
                .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
            let mut missing = 0;
            for id in &acked_total {
                if store.get_job(*id).await.unwrap().is_none() {
                    missing += 1;
                }
            }
            assert_eq!(
                missing,
                0,
                "round {round}: {missing} of {} acknowledged jobs lost",
                acked_total.len()
            );
            assert!(store.recover().await.unwrap().len() >= acked_total.len());
        });
    }
}

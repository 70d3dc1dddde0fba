//! The redb store (a real file and its log segment) against the in-memory
//! store, which keeps the same semantics in plain maps, over random
//! sequences of operations: every answer must match.
#![no_main]

use std::sync::OnceLock;

use hodei_core::{ExitStatus, Job, JobId, JobSpec, Timestamp, Transition, WorkerId};
use hodei_store::{
    JobFilter, LogChunk, LogCursor, LogStream, MemStore, RedbStore, Store, StoreConfig,
};
use libfuzzer_sys::fuzz_target;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn transition(b: u8) -> Transition {
    let w = WorkerId::from_u128(u128::from(b % 3) + 1);
    let attempt = u32::from(b / 32 % 3);
    match b % 9 {
        0 => Transition::DependenciesMet,
        1 => Transition::Assign { worker: w },
        2 => Transition::Start { attempt },
        3 => Transition::Succeed { attempt },
        4 => Transition::Fail {
            attempt,
            exit: ExitStatus::Code(1),
        },
        5 => Transition::TimeOut { attempt },
        6 => Transition::Lose { attempt },
        7 => Transition::Cancel,
        _ => Transition::Retry,
    }
}

fuzz_target!(|data: &[u8]| {
    let config = StoreConfig {
        max_log_bytes_per_job: 300,
        linger: std::time::Duration::ZERO,
        ..StoreConfig::default()
    };
    // In memory when the machine has a tmpfs: fsync there costs nothing.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = dir else { return };
    let Ok(redb) = RedbStore::open(dir.path().join("f.redb"), config) else {
        return;
    };
    let mem = MemStore::new(config);
    let mut ids: Vec<JobId> = Vec::new();
    rt().block_on(async {
        for (i, op) in data.chunks(3).take(64).enumerate() {
            let [a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
            let pick = |ids: &Vec<JobId>| ids.get(b as usize % ids.len().max(1)).copied();
            match a % 6 {
                0 => {
                    let mut spec = JobSpec::argv(["true"]);
                    spec.retry.max_attempts = u32::from(c % 3) + 1;
                    if b % 2 == 0 {
                        spec.idempotency_key = Some(format!("k{}", c % 4));
                    }
                    let job = Job::new(JobId::new(), spec, Timestamp(i as u64));
                    let r1 = redb.insert_job(job.clone()).await;
                    let r2 = mem.insert_job(job).await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                    if let Ok(ins) = r1 {
                        ids.push(ins.job().id);
                    }
                }
                1 => {
                    let Some(id) = pick(&ids) else { continue };
                    let (Ok(Some(j1)), Ok(Some(j2))) = (redb.get_job(id).await, mem.get_job(id).await)
                    else {
                        panic!("a stored job is missing");
                    };
                    assert_eq!(j1, j2);
                    let t = transition(c);
                    let r1 = redb.transition(id, j1.state, j1.attempt, t, Timestamp(i as u64)).await;
                    let r2 = mem.transition(id, j2.state, j2.attempt, t, Timestamp(i as u64)).await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                }
                2 | 3 => {
                    let Some(id) = pick(&ids) else { continue };
                    let chunk = LogChunk {
                        stream: if c % 2 == 0 { LogStream::Stdout } else { LogStream::Stderr },
                        at: Timestamp(i as u64),
                        data: vec![c; usize::from(c)],
                    };
                    let (attempt, seq) = (u32::from(b % 2) + 1, u64::from(c % 8));
                    let r1 = redb.append_log(id, attempt, seq, chunk.clone()).await;
                    let r2 = mem.append_log(id, attempt, seq, chunk).await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                }
                4 => {
                    let Some(id) = pick(&ids) else { continue };
                    let from = LogCursor {
                        attempt: u32::from(c % 3),
                        seq: u64::from(c / 3 % 8),
                    };
                    let r1 = redb.read_logs(id, from, usize::from(b % 5) + 1).await;
                    let r2 = mem.read_logs(id, from, usize::from(b % 5) + 1).await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                }
                _ => {
                    let r1 = redb.list_jobs(JobFilter::default()).await;
                    let r2 = mem.list_jobs(JobFilter::default()).await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                    let r1 = redb.recover().await;
                    let r2 = mem.recover().await;
                    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
                }
            }
        }
    });
});

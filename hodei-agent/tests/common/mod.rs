//! Running jobs through the executor in tests, and jobs whose processes
//! try to outlive them, run under one containment mode; each test binary
//! picks the mode.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use hodei_agent::{Containment, ExecConfig, Finished, LogStream, Output, run};
use hodei_core::{ExitStatus, JobSpec};
use tokio::sync::{mpsc, oneshot};

pub(crate) fn config(containment: Containment) -> ExecConfig {
    {
        let mut c = ExecConfig::default();
        c.linger = Duration::from_millis(300);
        c.timeout_grace = Duration::from_millis(300);
        c.containment = containment;
        c
    }
}

/// Runs `spec`; `cancel_after` cancels with a 200 ms grace. A run that
/// takes over 20 s fails the test.
pub(crate) fn exec(
    config: &ExecConfig,
    spec: JobSpec,
    cancel_after: Option<Duration>,
) -> (Finished, Vec<Output>, Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel(16);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let collect = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(o) = rx.recv().await {
                v.push(o);
            }
            v
        });
        let canceller = tokio::spawn(async move {
            if let Some(after) = cancel_after {
                tokio::time::sleep(after).await;
                let _ = cancel_tx.send(Duration::from_millis(200));
            } else {
                std::future::pending::<()>().await;
            }
        });
        let started = Instant::now();
        let finished =
            tokio::time::timeout(Duration::from_secs(20), run(&spec, config, tx, cancel_rx))
                .await
                .expect("the job stayed running after its main process ended");
        let took = started.elapsed();
        canceller.abort();
        (finished, collect.await.unwrap(), took)
    })
}

pub(crate) fn stdout(out: &[Output]) -> String {
    let bytes: Vec<u8> = out
        .iter()
        .filter(|o| o.stream == LogStream::Stdout)
        .flat_map(|o| o.data.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Every pid the job printed on a line `pid N`, or wrote to `pidfile`.
fn pids(out: &[Output], pidfile: Option<&std::path::Path>) -> Vec<i32> {
    let mut text = stdout(out);
    if let Some(p) = pidfile {
        // The daemon may write it a moment after the job ends.
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(p)
                && s.ends_with('\n')
            {
                text.push_str(&s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Each pid is gone soon after the job ended; survivors are killed so a
/// failing test leaves nothing behind.
fn assert_gone(pids: &[i32], expected: usize) {
    assert!(
        pids.len() >= expected,
        "expected {expected} pids, got {pids:?}"
    );
    let gone = (0..100).all(|_| {
        if pids.iter().all(|&p| !alive(p)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
        true
    });
    let survivors: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &survivors {
        // SAFETY: kill only sends a signal.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    assert!(
        !gone && survivors.is_empty(),
        "survived their job: {survivors:?}"
    );
}

/// A descendant in a new session holding stdout: the job still ends once
/// its main process does, and the descendant is killed.
pub(crate) fn a_setsid_descendant_holding_stdout(c: &ExecConfig) {
    let spec =
        JobSpec::script("setsid sh -c 'echo \"pid $$\"; exec sleep 300' &\nsleep 0.2\necho done");
    let (f, out, took) = exec(c, spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(stdout(&out).contains("done"));
    assert_gone(&pids(&out, None), 1);
}

/// A double-forking daemon with its output elsewhere: it dies with the job.
pub(crate) fn a_double_forking_daemon(c: &ExecConfig) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut spec = JobSpec::script(
        "(setsid sh -c 'echo \"pid $$\" > \"$PIDFILE\"; exec sleep 300' </dev/null >/dev/null 2>&1 &)\n\
         while [ ! -s \"$PIDFILE\" ]; do sleep 0.05; done\nexit 0",
    );
    spec.env
        .insert("PIDFILE".into(), pidfile.display().to_string());
    let (f, out, _) = exec(c, spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    assert_gone(&pids(&out, Some(&pidfile)), 1);
}

/// Several daemons in new sessions and groups, one ignoring SIGTERM, and a
/// cancel: the job is cancelled and every one of them is gone.
pub(crate) fn cancel_reaches_every_session(c: &ExecConfig) {
    let spec = JobSpec::script(
        "for i in 1 2 3; do setsid sh -c 'echo \"pid $$\"; exec sleep 300' & done\n\
         setsid sh -c 'trap \"\" TERM; echo \"pid $$\"; while :; do sleep 1; done' &\n\
         sleep 300",
    );
    let (f, out, took) = exec(c, spec, Some(Duration::from_millis(500)));
    assert!(f.cancelled);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_gone(&pids(&out, None), 4);
}

/// A timeout reaches a descendant that left the group and ignores SIGTERM.
pub(crate) fn a_timeout_reaches_every_session(c: &ExecConfig) {
    let mut spec = JobSpec::script(
        "setsid sh -c 'trap \"\" TERM; echo \"pid $$\"; while :; do sleep 1; done' &\nsleep 300",
    );
    spec.timeout = Some(Duration::from_millis(400));
    let (f, out, took) = exec(c, spec, None);
    assert!(f.timed_out);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_gone(&pids(&out, None), 1);
}

/// Jobs running side by side: one job's leftovers are killed when it ends,
/// the other job is untouched and finishes normally.
pub(crate) fn one_jobs_cleanup_spares_another_job(c: &ExecConfig) {
    let c1 = c.clone();
    let long =
        std::thread::spawn(move || exec(&c1, JobSpec::script("sleep 1.5; echo survived"), None));
    std::thread::sleep(Duration::from_millis(200));
    a_setsid_descendant_holding_stdout(c);
    let (f, out, _) = long.join().unwrap();
    assert_eq!(f.exit, ExitStatus::Code(0));
    assert!(stdout(&out).contains("survived"));
}

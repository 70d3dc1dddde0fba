//! A host application that embeds the Hodei scheduler in-process.
//!
//! Three workers run as tokio tasks; two tenants with weights 3:1 submit
//! jobs at different priorities; one job fails once and is retried after
//! its backoff; one needs a GPU worker. The scheduler is owned by one task
//! that reacts to reports from the workers and to its own deadlines:
//! nothing polls.
//!
//! ```text
//! cargo run --release -p hodei-examples --example embedded
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hodei_core::{
    Clock, Constraint, ExitStatus, JobId, JobSpec, JobState, Resources, SystemClock, TenantId,
    WorkerId,
};
use hodei_sched::{
    Action, AttemptOutcome, ClusterState, JobRequest, Scheduler, SchedulerConfig, Telemetry,
    WorkerSpec,
};
use tokio::sync::mpsc;

/// What a worker task tells the scheduler task.
enum Report {
    Started(WorkerId, JobId, u32),
    Finished(WorkerId, JobId, u32, AttemptOutcome),
}

/// What the host knows about each job, for the printout.
struct JobInfo {
    name: &'static str,
    tenant: &'static str,
    priority: u8,
    work: Duration,
    /// Fails on its first attempt, to show a retry.
    flaky: bool,
    ran_on: Vec<String>,
    state: JobState,
}

struct WorkerHandle {
    name: &'static str,
    tx: mpsc::Sender<(JobId, u32, Duration, bool)>,
}

/// A worker: runs each assignment from its channel on its own task (the
/// scheduler never sends more than the worker's capacity), reports start
/// and end, and heartbeats into the shared cluster state.
async fn worker(
    id: WorkerId,
    cluster: Arc<ClusterState>,
    mut jobs: mpsc::Receiver<(JobId, u32, Duration, bool)>,
    reports: mpsc::Sender<Report>,
) {
    let mut beat = tokio::time::interval(Duration::from_millis(500));
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some((job, attempt, work, fail)) = job else { break };
                let reports = reports.clone();
                running.spawn(async move {
                    // A full report channel slows the job down (backpressure);
                    // a closed one means the host is shutting down.
                    if reports.send(Report::Started(id, job, attempt)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(work).await;
                    let outcome = if fail {
                        AttemptOutcome::Failed(ExitStatus::Code(1))
                    } else {
                        AttemptOutcome::Succeeded
                    };
                    let _ = reports.send(Report::Finished(id, job, attempt, outcome)).await;
                });
            }
            _ = beat.tick() => {
                let t = Telemetry { cpu_percent: 20.0, memory_used_mb: 512, load_1m: 0.3 };
                // A heartbeat for a worker the cluster dropped is simply refused.
                let _ = cluster.heartbeat(id, t, SystemClock.now());
            }
        }
    }
    while running.join_next().await.is_some() {}
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let started = Instant::now();
    let cluster = Arc::new(ClusterState::default());
    let mut sched = Scheduler::new(
        SchedulerConfig::default(),
        Arc::clone(&cluster),
        SystemClock,
    );
    let interactive: TenantId = "interactive".parse()?;
    let batch: TenantId = "batch".parse()?;
    sched.set_weight(interactive.clone(), 3);
    sched.set_weight(batch.clone(), 1);

    // Bounded: a worker that reports faster than the host handles waits.
    let (report_tx, mut reports) = mpsc::channel::<Report>(64);
    let mut workers: HashMap<WorkerId, WorkerHandle> = HashMap::new();
    let mut tasks = Vec::new();
    let mut actions = Vec::new();
    for (name, cpu, gpus) in [
        ("worker-a", 2000, 0),
        ("worker-b", 2000, 0),
        ("gpu-box", 4000, 1),
    ] {
        let id = WorkerId::new();
        let (tx, rx) = mpsc::channel(8);
        tasks.push(tokio::spawn(worker(
            id,
            Arc::clone(&cluster),
            rx,
            report_tx.clone(),
        )));
        workers.insert(id, WorkerHandle { name, tx });
        let mut labels = BTreeMap::new();
        if gpus > 0 {
            labels.insert("gpu".to_string(), "a100".to_string());
        }
        actions.extend(sched.worker_joined(WorkerSpec {
            id,
            labels,
            capacity: Resources::new(cpu, 8192, gpus),
        })?);
    }
    drop(report_tx);

    let plan: [(&'static str, &TenantId, u8, u64, bool, bool); 10] = [
        ("nightly-etl", &batch, 2, 400, false, false),
        ("reindex", &batch, 2, 300, false, false),
        ("backfill-2025", &batch, 1, 300, false, false),
        ("vacuum", &batch, 0, 200, false, false),
        ("page-render", &interactive, 6, 150, false, false),
        ("thumbnail", &interactive, 6, 120, false, false),
        ("search-suggest", &interactive, 7, 100, false, false),
        ("flaky-webhook", &interactive, 5, 100, true, false),
        ("train-model", &batch, 4, 500, false, true),
        ("report-pdf", &interactive, 3, 150, false, false),
    ];
    let mut jobs: HashMap<JobId, JobInfo> = HashMap::new();
    let mut order = Vec::new();
    let mut requests = Vec::new();
    for (name, tenant, priority, ms, flaky, gpu) in plan {
        let mut spec = JobSpec::argv([name]);
        spec.name = name.to_string();
        spec.tenant = tenant.clone();
        spec.priority = priority;
        spec.resources = Resources::new(1000, 512, u32::from(gpu));
        if gpu {
            spec.constraints.push(Constraint::exists("gpu"));
        }
        if flaky {
            spec.retry.max_attempts = 3;
            spec.retry.backoff.initial = Duration::from_millis(200);
            spec.retry.jitter = 0.0;
        }
        spec.validate()?;
        let id = JobId::new();
        requests.push(JobRequest::from_spec(id, &spec));
        order.push(id);
        jobs.insert(
            id,
            JobInfo {
                name,
                tenant: if tenant == &batch {
                    "batch"
                } else {
                    "interactive"
                },
                priority,
                work: Duration::from_millis(ms),
                flaky,
                ran_on: Vec::new(),
                state: JobState::Queued,
            },
        );
    }
    let (submitted, refused) = sched.submit_many(requests);
    anyhow::ensure!(refused.is_empty(), "refused: {refused:?}");
    actions.extend(submitted);
    println!(
        "{} workers, {} jobs; tenants interactive:batch weighted 3:1\n",
        workers.len(),
        jobs.len()
    );

    let stamp = |started: Instant| format!("[{:>6.3}s]", started.elapsed().as_secs_f64());
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Changed { job, to, .. } => {
                    if let Some(info) = jobs.get_mut(&job) {
                        info.state = to;
                        if matches!(to, JobState::Succeeded | JobState::Failed { .. }) {
                            println!("{} {:<15} {}", stamp(started), info.name, to);
                        }
                    }
                }
                Action::Assign {
                    job,
                    worker,
                    attempt,
                } => {
                    let info = jobs.get_mut(&job).context("assigned an unknown job")?;
                    let handle = workers
                        .get(&worker)
                        .context("assigned to an unknown worker")?;
                    info.ran_on.push(handle.name.to_string());
                    println!(
                        "{} {:<15} {:<11} p{}  -> {} (attempt {attempt})",
                        stamp(started),
                        info.name,
                        info.tenant,
                        info.priority,
                        handle.name
                    );
                    let fail = info.flaky && attempt == 1;
                    handle.tx.send((job, attempt, info.work, fail)).await?;
                }
                // No job here outlives its deadline, so nothing is stopped;
                // actions a later scheduler adds are not needed either.
                _ => {}
            }
        }
        if sched.stats().tracked == 0 {
            break;
        }
        let deadline = sched.next_deadline();
        let sleep_for = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_since(SystemClock.now())
        });
        tokio::select! {
            report = reports.recv() => {
                let report = report.context("every worker stopped")?;
                actions = match report {
                    Report::Started(w, j, a) => sched.job_started(w, j, a)?,
                    Report::Finished(w, j, a, outcome) => sched.job_finished(w, j, a, outcome)?,
                };
            }
            _ = tokio::time::sleep(sleep_for) => actions = sched.tick(),
        }
    }

    println!(
        "\n{:<15} {:<11} {:>3}  {:<10} ran on",
        "job", "tenant", "pri", "state"
    );
    for id in &order {
        let info = &jobs[id];
        println!(
            "{:<15} {:<11} {:>3}  {:<10} {}",
            info.name,
            info.tenant,
            info.priority,
            info.state.name(),
            info.ran_on.join(", ")
        );
    }
    drop(workers);
    for t in tasks {
        t.await?;
    }
    println!(
        "\nall jobs finished in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

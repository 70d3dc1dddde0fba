//! Workflows at scale, each beside plain jobs in the same run: a pipeline
//! of 10,000 steps and an array of 100,000 tasks with a concurrency limit
//! are admitted and dispatched through the scheduler to the end, against
//! the same number of independent jobs on the same workers.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hodei_core::{
    ConcurrencyLimit, Condition, JobId, JobSpec, ManualClock, PipelineSpec, Resources, StepSpec,
    Timestamp, WorkerId,
};
use hodei_sched::{
    Action, AttemptOutcome, ClusterState, Decision, JobRequest, PipelineRun, Scheduler,
    SchedulerConfig, WorkerSpec,
};

const STEPS: usize = 10_000;
const TASKS: usize = 100_000;
/// Jobs each worker holds at once (100 millicores each).
const SLOTS: u32 = 250;

fn scheduler() -> (Scheduler<ManualClock>, Vec<WorkerId>) {
    let clock = ManualClock::new(Timestamp(1_000_000));
    let cluster = Arc::new(ClusterState::new(Default::default()));
    let mut s = Scheduler::new(SchedulerConfig::default(), cluster, clock);
    let mut workers = Vec::new();
    for i in 0..4 {
        let id = WorkerId::from_u128(i + 1);
        s.worker_joined(WorkerSpec {
            id,
            labels: Default::default(),
            capacity: Resources::new(100 * SLOTS, 64 * SLOTS as u64, 0),
        })
        .unwrap();
        workers.push(id);
    }
    (s, workers)
}

fn request(concurrency: Option<ConcurrencyLimit>) -> JobRequest {
    let mut spec = JobSpec::argv(["true"]);
    spec.concurrency = concurrency;
    JobRequest::from_spec(JobId::new(), &spec)
}

fn assigns(actions: &[Action], out: &mut Vec<(JobId, WorkerId, u32)>) {
    for a in actions {
        if let Action::Assign {
            job,
            worker,
            attempt,
        } = a
        {
            out.push((*job, *worker, *attempt));
        }
    }
}

/// Runs every assigned job to success until none is left; `on_end` is
/// told each job that ended and returns new jobs to submit. Returns the
/// jobs run.
fn drain(
    s: &mut Scheduler<ManualClock>,
    mut running: Vec<(JobId, WorkerId, u32)>,
    mut on_end: impl FnMut(JobId) -> Vec<JobRequest>,
) -> usize {
    let mut done = 0;
    while let Some((job, w, attempt)) = running.pop() {
        s.job_started(w, job, attempt).unwrap();
        let actions = s
            .job_finished(w, job, attempt, AttemptOutcome::Succeeded)
            .unwrap();
        assigns(&actions, &mut running);
        done += 1;
        let more = on_end(job);
        if !more.is_empty() {
            let (actions, refused) = s.submit_many(more);
            assert!(refused.is_empty());
            assigns(&actions, &mut running);
        }
    }
    done
}

fn plain(n: usize, concurrency: impl Fn() -> Option<ConcurrencyLimit>) -> usize {
    let (mut s, _) = scheduler();
    let (actions, refused) = s.submit_many((0..n).map(|_| request(concurrency())));
    assert!(refused.is_empty());
    let mut running = Vec::new();
    assigns(&actions, &mut running);
    let done = drain(&mut s, running, |_| Vec::new());
    assert_eq!(done, n);
    done
}

/// A wide pipeline: layers of 100 steps, each depending on two steps of
/// the layer before.
fn wide_pipeline(n: usize) -> PipelineSpec {
    let width = 100;
    let steps = (0..n)
        .map(|i| {
            let layer = i / width;
            let depends_on = if layer == 0 {
                Vec::new()
            } else {
                let base = (layer - 1) * width;
                vec![
                    format!("s{}", base + i % width),
                    format!("s{}", base + (i * 7 + 3) % width),
                ]
            };
            let mut d = depends_on;
            d.dedup();
            StepSpec {
                name: format!("s{i}"),
                depends_on: d,
                condition: Condition::OnSuccess,
                compensate: None,
                job: JobSpec::argv(["true"]),
            }
        })
        .collect();
    PipelineSpec {
        name: "wide".into(),
        tenant: Default::default(),
        fail_fast: true,
        steps,
        compensations: Vec::new(),
    }
}

/// Validates, admits and runs a pipeline to its end through the
/// scheduler, as the server does: a step's job is submitted when the run
/// decides to start it. Returns the steps run.
fn pipeline(p: &PipelineSpec) -> usize {
    let graph = p.validate().unwrap();
    let conditions: Vec<Condition> = p.steps.iter().map(|s| s.condition).collect();
    let mut run = PipelineRun::new(&graph, &conditions, true);
    let (mut s, _) = scheduler();
    let mut step_of: HashMap<JobId, usize> = HashMap::with_capacity(p.steps.len());
    let start = |ds: Vec<Decision>, step_of: &mut HashMap<JobId, usize>| -> Vec<JobRequest> {
        ds.into_iter()
            .filter_map(|d| match d {
                Decision::Start(i) => {
                    let r = request(None);
                    step_of.insert(r.id, i);
                    Some(r)
                }
                _ => None,
            })
            .collect()
    };
    let first = start(run.start(), &mut step_of);
    let (actions, _) = s.submit_many(first);
    let mut running = Vec::new();
    assigns(&actions, &mut running);
    let mut step_of_cell = step_of;
    let done = drain(&mut s, running, |job| {
        let i = step_of_cell[&job];
        let ds = run.step_ended(i, hodei_sched::StepOutcome::Succeeded);
        start(ds, &mut step_of_cell)
    });
    assert_eq!(done, p.steps.len());
    done
}

fn pipeline_10k(c: &mut Criterion) {
    let p = wide_pipeline(STEPS);
    let mut g = c.benchmark_group("dispatch_10k");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(STEPS as u64));
    g.bench_function("plain_jobs", |b| b.iter(|| plain(STEPS, || None)));
    g.bench_function("pipeline_steps", |b| b.iter(|| pipeline(&p)));
    g.finish();

    // Admission alone: validating a 10,000-step pipeline (names, every
    // dependency, cycles) and starting its run, against validating
    // 10,000 job specs.
    let mut g = c.benchmark_group("admit_10k");
    g.sample_size(20);
    g.throughput(Throughput::Elements(STEPS as u64));
    let specs: Vec<JobSpec> = (0..STEPS).map(|_| JobSpec::argv(["true"])).collect();
    g.bench_function("job_specs", |b| {
        b.iter(|| specs.iter().all(|s| s.validate().is_ok()))
    });
    // A tenth of the size, per step: linear admission costs the same per
    // step at both sizes.
    let small = wide_pipeline(STEPS / 10);
    g.bench_function("pipeline_1k_steps_x10", |b| {
        b.iter_batched(
            || vec![small.clone(); 10],
            |ps| {
                ps.into_iter()
                    .map(|p| {
                        let graph = p.validate().unwrap();
                        let conditions: Vec<Condition> =
                            p.steps.iter().map(|s| s.condition).collect();
                        let mut run = PipelineRun::new(&graph, &conditions, true);
                        run.start().len()
                    })
                    .sum::<usize>()
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("pipeline", |b| {
        b.iter_batched(
            || p.clone(),
            |p| {
                let graph = p.validate().unwrap();
                let conditions: Vec<Condition> = p.steps.iter().map(|s| s.condition).collect();
                let mut run = PipelineRun::new(&graph, &conditions, true);
                run.start().len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn array_100k(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch_100k");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(TASKS as u64));
    g.bench_function("plain_jobs", |b| b.iter(|| plain(TASKS, || None)));
    // An array's tasks: one concurrency key of the array's own, at most
    // 500 at once (half the workers' room).
    g.bench_function("array_tasks_limit_500", |b| {
        b.iter(|| {
            plain(TASKS, || {
                Some(ConcurrencyLimit {
                    key: "array/bench".into(),
                    limit: 500,
                })
            })
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline_10k, array_100k);
criterion_main!(benches);

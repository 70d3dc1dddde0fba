//! One round's effects: persist (one batch), then, once its commit lands,
//! publish and deliver.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use hodei_core::{
    Clock, Event, Job, JobId, JobState, SystemClock, Timestamp, Transition, WorkerId,
};
use hodei_sched::Action;
use hodei_store::{AttemptRecord, Batch, Inserted, Store, StoreError, Written};

use super::EngineError;
use super::agent::ToAgent;
use super::core::Core;
use super::pending::{Awaiting, Inserting, Landed};

impl<S: Store> Core<S> {
    /// Queues everything the current round changed as one batch, behind
    /// the rounds already in flight, without waiting for it to land.
    pub(super) async fn persist(&mut self) {
        let round = std::mem::take(&mut self.round);
        let now = SystemClock.now();
        let mut batch = Batch::new();
        let mut new_jobs = round.new_jobs;
        let fresh: HashMap<JobId, usize> = new_jobs
            .iter()
            .enumerate()
            .map(|(i, n)| (n.job.id, i))
            .collect();
        let mut transitions = Vec::new();
        for a in &round.actions {
            let Action::Changed {
                job,
                from,
                attempt,
                cause,
                ..
            } = a
            else {
                continue;
            };
            if let Some(&i) = fresh.get(job) {
                // A new job is stored as this round left it: a job placed
                // at once goes in already assigned, in one write.
                if let Err(e) = new_jobs[i].job.transition(*cause, now) {
                    tracing::error!(%job, error = %e, "new job's change refused");
                }
                continue;
            }
            let before = if *cause == Transition::Retry {
                attempt.saturating_sub(1)
            } else {
                *attempt
            };
            transitions.push((batch.transition(*job, *from, before, *cause, now), *job));
        }
        let mut inserts = Vec::with_capacity(new_jobs.len());
        for n in new_jobs.drain(..) {
            let id = n.job.id;
            let key = n
                .job
                .spec
                .idempotency_key
                .clone()
                .map(|k| (n.job.spec.tenant.clone(), k));
            match batch.insert_job(n.job) {
                Ok(write) => inserts.push(Inserting {
                    write,
                    id,
                    key,
                    entered: n.entered,
                    reply: n.reply,
                }),
                Err(e) => {
                    let _ = n.reply.send(Err(e.into()));
                    if let Some(k) = key {
                        self.pending_keys.remove(&k);
                    }
                    self.withdraw(id);
                }
            }
        }
        // The attempts assigned are recorded in the same commit. Should a
        // transition be refused, its record names an assignment that was
        // never sent; the next assignment of that attempt overwrites it.
        for a in &round.actions {
            if let Action::Assign {
                job,
                worker,
                attempt,
            } = a
            {
                batch.record_attempt(AttemptRecord {
                    job: *job,
                    attempt: *attempt,
                    worker: *worker,
                    assigned_at: now,
                    started_at: None,
                    finished_at: None,
                    exit: None,
                    peak_memory_mb: None,
                });
            }
        }
        for (job, attempt, patch) in round.patches {
            batch.patch_attempt(job, attempt, patch);
        }
        for entry in round.audit {
            batch.append_audit(entry);
        }
        let awaiting = Awaiting {
            actions: round.actions,
            inserts,
            transitions,
            replies: round.replies,
            now,
        };
        if batch.is_empty() {
            // Nothing to store: it lands right after the rounds before it.
            self.in_flight
                .push_back(Box::pin(std::future::ready(Landed {
                    round: awaiting,
                    outcome: Ok(Vec::new()),
                })));
            return;
        }
        match self.store.enqueue(batch).await {
            Ok(commit) => self.in_flight.push_back(Box::pin(async move {
                Landed {
                    round: awaiting,
                    outcome: commit.await,
                }
            })),
            Err(e) => self
                .in_flight
                .push_back(Box::pin(std::future::ready(Landed {
                    round: awaiting,
                    outcome: Err(e),
                }))),
        }
    }

    /// A round's commit ended: answer its new jobs, publish what was
    /// stored, deliver its messages, answer its callers.
    pub(super) fn land(&mut self, landed: Landed) {
        let Landed { round, outcome } = landed;
        let mut failed = None;
        let mut outcomes: Vec<Option<Result<Written, StoreError>>> = match outcome {
            Ok(v) => v.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::error!(error = %e, "round not stored: nothing of it takes effect");
                failed = Some(e);
                Vec::new()
            }
        };
        let mut take = |i: usize| outcomes.get_mut(i).and_then(Option::take);
        // The latest stored version of each job the round changed.
        let mut stored: HashMap<JobId, Job> = HashMap::new();
        for n in round.inserts {
            let waiters = self.key_waiters.remove(&n.id).unwrap_or_default();
            if let Some(k) = &n.key {
                self.pending_keys.remove(k);
            }
            match take(n.write) {
                Some(Ok(Written::Inserted(Inserted::Created(job)))) => {
                    self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
                    self.metrics.job_entered(&n.entered);
                    self.bus.publish(Event::JobSubmitted {
                        job: job.id,
                        tenant: job.spec.tenant.clone(),
                        at: job.created_at,
                    });
                    let _ = n.reply.send(Ok((job.clone(), true)));
                    for w in waiters {
                        let _ = w.send(Ok((job.clone(), false)));
                    }
                    stored.insert(job.id, job);
                }
                Some(Ok(Written::Inserted(Inserted::Existing(job)))) => {
                    // Another writer took the key: that job is the answer.
                    self.withdraw(n.id);
                    let _ = n.reply.send(Ok((job.clone(), false)));
                    for w in waiters {
                        let _ = w.send(Ok((job.clone(), false)));
                    }
                }
                other => {
                    let why = match other {
                        Some(Err(e)) => e,
                        _ => failed.clone().unwrap_or_else(|| {
                            StoreError::storage_message("the store did not commit it")
                        }),
                    };
                    tracing::error!(job = %n.id, error = %why, "new job not stored");
                    let _ = n.reply.send(Err(EngineError::Store(why.clone())));
                    for w in waiters {
                        let _ = w.send(Err(EngineError::Store(why.clone())));
                    }
                    self.withdraw(n.id);
                }
            }
        }
        for (write, job) in round.transitions {
            match take(write) {
                Some(Ok(Written::Job(j))) => {
                    stored.insert(j.id, j);
                }
                Some(Err(e)) => tracing::error!(%job, error = %e, "state change not stored"),
                _ => {}
            }
        }
        for r in outcomes.into_iter().flatten() {
            if let Err(e) = r {
                tracing::error!(error = %e, "attempt record not stored");
            }
        }
        self.publish(&round.actions, &stored, round.now);
        self.deliver_all(round.actions, &stored);
        for (reply, result) in round.replies {
            let _ = reply.send(result);
        }
    }

    /// Takes a job that was never stored back out of the scheduler; what
    /// fills its room goes out with the next round.
    fn withdraw(&mut self, job: JobId) {
        self.submitted_at.remove(&job);
        match self.sched.withdraw(job) {
            Ok(actions) => self.round.actions.extend(actions),
            Err(e) => tracing::error!(%job, error = %e, "could not withdraw job"),
        }
    }

    fn publish(&mut self, actions: &[Action], stored: &HashMap<JobId, Job>, now: Timestamp) {
        for a in actions {
            if let Action::Changed {
                job,
                from,
                to,
                attempt,
                ..
            } = a
                && let Some(j) = stored.get(job)
            {
                self.metrics.job_moved(from, to);
                if matches!(to, JobState::Assigned { .. }) {
                    self.metrics.dispatched(&j.spec.tenant);
                }
                if j.is_terminal() {
                    self.submitted_at.remove(job);
                }
                self.bus.publish(Event::JobChanged {
                    job: *job,
                    tenant: j.spec.tenant.clone(),
                    from: *from,
                    to: *to,
                    attempt: *attempt,
                    at: now,
                });
            }
        }
    }

    fn deliver_all(&mut self, actions: Vec<Action>, stored: &HashMap<JobId, Job>) {
        let mut lost: Vec<WorkerId> = Vec::new();
        for a in actions {
            match a {
                Action::Assign {
                    job,
                    worker,
                    attempt,
                } => {
                    let Some(j) = stored.get(&job) else {
                        continue;
                    };
                    // Opened here, for this agent's AssignJob only.
                    let spec = match &self.config.secret_keys {
                        Some(keys) => match keys.open(job, &j.spec) {
                            Ok(s) => s,
                            Err(e) => {
                                // Not sent: the attempt is never reported
                                // started and is lost with the worker's
                                // next reconnect, then retried.
                                tracing::error!(%job, error = %e, "cannot open the job's secrets");
                                continue;
                            }
                        },
                        None => j.spec.clone(),
                    };
                    let m = ToAgent::Assign {
                        job,
                        attempt,
                        spec: Box::new(spec),
                    };
                    if !self.deliver(worker, m) && !lost.contains(&worker) {
                        lost.push(worker);
                    }
                }
                Action::Stop {
                    job,
                    worker,
                    attempt,
                } => {
                    let m = ToAgent::Cancel {
                        job,
                        attempt,
                        grace: self.config.cancel_grace,
                    };
                    // An agent that cannot be told will be lost by its
                    // heartbeats; the attempt already ended here.
                    let _ = self.deliver(worker, m);
                }
                Action::Changed { .. } => {}
                other => {
                    tracing::warn!(action = ?other, "an action this engine does not carry out")
                }
            }
        }
        for worker in lost {
            tracing::warn!(%worker, "agent unreachable or too far behind; its jobs will be retried");
            self.agents.remove(&worker);
            if let Ok(more) = self.sched.worker_lost(worker) {
                self.round.actions.extend(more);
            }
        }
    }

    fn deliver(&self, worker: WorkerId, m: ToAgent) -> bool {
        self.agents
            .get(&worker)
            .is_some_and(|(_, link)| link.try_send(m))
    }
}

//! Periodic jobs: one task keeps every schedule, sleeps until the next
//! tick and starts its run, an ordinary job.
//!
//! Exactly one run per tick: a run's job carries the idempotency key
//! `schedule/<id>/<tick>`, so running a tick again (after a restart that
//! came before its record was written, or on another server that took
//! over the store) returns the job already there. After downtime the
//! ticks missed are found from the schedule's last tick: the latest
//! `catch_up` of them run ([`Cron::due`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{Clock, JobId, SystemClock, Timestamp};
use hodei_sched::{Cron, Overlap, ScheduleSpec, rfc3339};
use hodei_store::{Store, StoreError, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto;
use crate::server::engine::EngineHandle;
use crate::server::security::secrets::SecretKeys;

/// Records of schedules (their specs), by id.
const SCHEDULE: &str = "schedule";
/// A schedule's state: its last tick, its latest runs, paused.
const STATE: &str = "schedule-state";
/// Runs a schedule remembers (for its overlap policy and its status).
const RECENT: usize = 20;
/// Next ticks shown.
const SHOWN: usize = 5;
/// Commands waiting for the task; callers wait when it is full.
const QUEUE: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    /// Secret values of the job sealed, for the schedule's id.
    spec: ScheduleSpec,
    created_at: Timestamp,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    last_tick: Option<Timestamp>,
    paused: bool,
    runs: Vec<(Timestamp, JobId)>,
    skipped: u64,
}

/// Why a schedule call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("schedule {0} not found")]
    NotFound(JobId),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("secrets: {0}")]
    Secrets(#[from] crate::server::security::secrets::SecretsError),
    #[error("the server is shutting down")]
    Stopped,
}

struct Entry {
    stored: Arc<Stored>,
    cron: Cron,
    state: State,
    /// Its runs are being started.
    busy: bool,
    /// The tick it waits for.
    next: Option<Timestamp>,
}

impl Entry {
    fn status(&self, id: JobId) -> proto::ScheduleStatus {
        let s = &self.stored.spec;
        let now = SystemClock.now();
        proto::ScheduleStatus {
            schedule_id: id.to_string(),
            name: s.name.clone(),
            tenant: s.tenant.as_str().to_string(),
            cron: s.cron.clone(),
            timezone: self.cron.timezone().to_string(),
            overlap: overlap_to_wire(s.overlap) as i32,
            catch_up: s.catch_up,
            paused: self.state.paused,
            created_at_ms: self.stored.created_at.0,
            last_tick_ms: self.state.last_tick.map_or(0, |t| t.0),
            next_runs_ms: if self.state.paused {
                Vec::new()
            } else {
                self.cron
                    .upcoming(now, SHOWN)
                    .into_iter()
                    .map(|t| t.0)
                    .collect()
            },
            recent_runs: self
                .state
                .runs
                .iter()
                .map(|(t, j)| proto::ScheduleRun {
                    tick_ms: t.0,
                    job_id: j.to_string(),
                })
                .collect(),
            skipped: self.state.skipped,
            description: self.cron.describe(),
            deleted: false,
        }
    }
}

/// An overlap policy on the wire.
pub(crate) fn overlap_to_wire(o: Overlap) -> proto::Overlap {
    match o {
        Overlap::Allow => proto::Overlap::Allow,
        Overlap::Skip => proto::Overlap::Skip,
        Overlap::CancelPrevious => proto::Overlap::CancelPrevious,
    }
}

enum Cmd {
    Create {
        id: JobId,
        stored: Arc<Stored>,
        cron: Box<Cron>,
        reply: oneshot::Sender<proto::ScheduleStatus>,
    },
    Get {
        id: JobId,
        reply: oneshot::Sender<Option<proto::ScheduleStatus>>,
    },
    List {
        reply: oneshot::Sender<Vec<proto::ScheduleStatus>>,
    },
    Pause {
        id: JobId,
        paused: bool,
        reply: oneshot::Sender<Result<proto::ScheduleStatus, ScheduleError>>,
    },
    Delete {
        id: JobId,
        reply: oneshot::Sender<Result<proto::ScheduleStatus, ScheduleError>>,
    },
    /// A schedule's runs were started; its new state is stored.
    Fired { id: JobId, state: State },
}

/// The schedules of one server.
#[derive(Debug)]
pub(crate) struct Schedules<S: Store> {
    tx: mpsc::Sender<Cmd>,
    engine: EngineHandle<S>,
}

impl<S: Store> Schedules<S> {
    /// Starts the task: it loads every schedule, runs the ticks missed
    /// while the server was down (as each one's catch-up says), then runs
    /// each tick as it falls, until `stopping` turns true.
    pub(crate) fn start(engine: EngineHandle<S>, stopping: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Task {
            engine: engine.clone(),
            keys: engine.secret_keys().cloned(),
            tx: tx.downgrade(),
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
        };
        tokio::spawn(task.run(rx, stopping));
        Schedules { tx, engine }
    }

    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, ScheduleError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(f(reply))
            .await
            .map_err(|_| ScheduleError::Stopped)?;
        rx.await.map_err(|_| ScheduleError::Stopped)
    }

    /// Stores a validated schedule and starts keeping it.
    ///
    /// # Errors
    ///
    /// The store failed, or the server is stopping.
    pub(crate) async fn create(
        &self,
        mut spec: ScheduleSpec,
        cron: Cron,
    ) -> Result<proto::ScheduleStatus, ScheduleError> {
        let id = JobId::new();
        if let Some(keys) = self.engine.secret_keys()
            && !spec.job.secrets.is_empty()
        {
            let mut j = hodei_core::Job::new(id, std::mem::take(&mut spec.job), Timestamp(0));
            keys.seal(&mut j)?;
            spec.job = j.spec;
        }
        let state = State {
            paused: spec.paused,
            ..State::default()
        };
        let stored = Arc::new(Stored {
            spec,
            created_at: SystemClock.now(),
        });
        let store = self.engine.store();
        store
            .put_record(STATE, &id.to_string(), encode("schedule state", &state)?)
            .await?;
        store
            .put_record(SCHEDULE, &id.to_string(), encode("schedule", &*stored)?)
            .await?;
        self.ask(|reply| Cmd::Create {
            id,
            stored,
            cron: Box::new(cron),
            reply,
        })
        .await
    }

    /// A schedule's tenant, if it exists.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub(crate) async fn tenant(
        &self,
        id: JobId,
    ) -> Result<Option<hodei_core::TenantId>, StoreError> {
        match self
            .engine
            .store()
            .record(SCHEDULE, &id.to_string())
            .await?
        {
            Some(v) => Ok(Some(decode::<Stored>("schedule", &v)?.spec.tenant)),
            None => Ok(None),
        }
    }

    /// A schedule's status.
    ///
    /// # Errors
    ///
    /// `NotFound`, or the server is stopping.
    pub(crate) async fn get(&self, id: JobId) -> Result<proto::ScheduleStatus, ScheduleError> {
        self.ask(|reply| Cmd::Get { id, reply })
            .await?
            .ok_or(ScheduleError::NotFound(id))
    }

    /// Every schedule whose tenant `visible` accepts, oldest first.
    ///
    /// # Errors
    ///
    /// The server is stopping.
    pub(crate) async fn list(
        &self,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Vec<proto::ScheduleStatus>, ScheduleError> {
        let all = self.ask(|reply| Cmd::List { reply }).await?;
        Ok(all.into_iter().filter(|s| visible(&s.tenant)).collect())
    }

    /// Pauses (or resumes, from now on) a schedule.
    ///
    /// # Errors
    ///
    /// `NotFound`, the store failed, or the server is stopping.
    pub(crate) async fn pause(
        &self,
        id: JobId,
        paused: bool,
    ) -> Result<proto::ScheduleStatus, ScheduleError> {
        self.ask(|reply| Cmd::Pause { id, paused, reply }).await?
    }

    /// Deletes a schedule; its runs stay.
    ///
    /// # Errors
    ///
    /// `NotFound`, the store failed, or the server is stopping.
    pub(crate) async fn delete(&self, id: JobId) -> Result<proto::ScheduleStatus, ScheduleError> {
        self.ask(|reply| Cmd::Delete { id, reply }).await?
    }
}

struct Task<S: Store> {
    engine: EngineHandle<S>,
    keys: Option<Arc<SecretKeys>>,
    tx: mpsc::WeakSender<Cmd>,
    entries: HashMap<JobId, Entry>,
    /// (tick, schedule), earliest first; an entry whose schedule waits for
    /// another tick by now is stale and skipped.
    heap: BinaryHeap<Reverse<(Timestamp, JobId)>>,
}

enum Next {
    Command(Option<Cmd>),
    Due,
    Stop,
}

impl<S: Store> Task<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut stopping: watch::Receiver<bool>) {
        if let Err(e) = self.load().await {
            tracing::error!(error = %e, "cannot load schedules; they resume at the next start");
        }
        loop {
            let wait = self.heap.peek().map(|Reverse((t, _))| {
                Duration::from_millis(t.0.saturating_sub(SystemClock.now().0))
            });
            let next = tokio::select! {
                c = rx.recv() => Next::Command(c),
                () = async {
                    match wait {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => Next::Due,
                _ = stopping.wait_for(|s| *s) => Next::Stop,
            };
            match next {
                Next::Command(Some(c)) => self.command(c).await,
                Next::Due => self.fire_due(),
                Next::Command(None) | Next::Stop => break,
            }
        }
    }

    /// Loads every schedule; each not paused is due at once, so the ticks
    /// missed while down are caught up.
    async fn load(&mut self) -> Result<(), StoreError> {
        let store = Arc::clone(self.engine.store());
        let states: HashMap<String, State> = store
            .records(STATE)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, decode("schedule state", &v).ok()?)))
            .collect();
        let now = SystemClock.now();
        for (key, v) in store.records(SCHEDULE).await? {
            let Ok(id) = key.parse::<JobId>() else {
                continue;
            };
            let stored: Stored = match decode("schedule", &v) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(schedule = %id, error = %e, "unreadable schedule record");
                    continue;
                }
            };
            let cron = match Cron::parse(&stored.spec.cron, &stored.spec.timezone) {
                Ok(c) => c,
                Err((_, why)) => {
                    tracing::error!(schedule = %id, %why, "stored schedule no longer parses");
                    continue;
                }
            };
            let state = states.get(&key).cloned().unwrap_or_default();
            let paused = state.paused;
            self.entries.insert(
                id,
                Entry {
                    stored: Arc::new(stored),
                    cron,
                    state,
                    busy: false,
                    next: None,
                },
            );
            if !paused {
                self.wake(id, now);
            }
        }
        Ok(())
    }

    fn wake(&mut self, id: JobId, at: Timestamp) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.next = Some(at);
            self.heap.push(Reverse((at, id)));
        }
    }

    /// Waits for the schedule's next tick after `after`.
    fn wait_next(&mut self, id: JobId, after: Timestamp) {
        let Some(next) = self.entries.get(&id).and_then(|e| e.cron.next_after(after)) else {
            return;
        };
        self.wake(id, next);
    }

    fn fire_due(&mut self) {
        let now = SystemClock.now();
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.next != Some(at) || e.busy || e.state.paused {
                continue;
            }
            e.next = None;
            self.fire(id, now);
        }
    }

    /// Starts the runs of every tick due for schedule `id`, off the task.
    fn fire(&mut self, id: JobId, now: Timestamp) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let since = e.state.last_tick.unwrap_or(e.stored.created_at);
        let (due, missed) = e.cron.due(since, now, e.stored.spec.catch_up);
        if due.is_empty() && missed == 0 {
            // Woken early (a clock step): wait for the tick.
            self.wait_next(id, now);
            return;
        }
        e.busy = true;
        let mut state = e.state.clone();
        state.skipped += missed;
        let stored = Arc::clone(&e.stored);
        let engine = self.engine.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            if missed > 0 {
                tracing::warn!(schedule = %id, missed, "ticks missed beyond the catch-up");
            }
            let mut all_run = true;
            for tick in due {
                all_run &= run_tick(&engine, keys.as_deref(), id, &stored, &mut state, tick).await;
            }
            // Every tick up to now was run or left out by the catch-up; one
            // whose job could not be created is tried again, as missed.
            if all_run {
                state.last_tick = Some(state.last_tick.map_or(now, |t| t.max(now)));
            }
            let write = async {
                engine
                    .store()
                    .put_record(STATE, &id.to_string(), encode("schedule state", &state)?)
                    .await
            };
            if let Err(e) = write.await {
                // The runs started stay; the next start runs these ticks
                // again and finds them by their keys.
                tracing::warn!(schedule = %id, error = %e, "cannot store a schedule's state");
            }
            let _ = tx.send(Cmd::Fired { id, state }).await;
        });
    }

    async fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Create {
                id,
                stored,
                cron,
                reply,
            } => {
                let paused = stored.spec.paused;
                let e = Entry {
                    state: State {
                        paused,
                        ..State::default()
                    },
                    stored,
                    cron: *cron,
                    busy: false,
                    next: None,
                };
                let status = e.status(id);
                self.entries.insert(id, e);
                if !paused {
                    self.wait_next(id, SystemClock.now());
                }
                let _ = reply.send(status);
            }
            Cmd::Get { id, reply } => {
                let _ = reply.send(self.entries.get(&id).map(|e| e.status(id)));
            }
            Cmd::List { reply } => {
                let mut all: Vec<(Timestamp, JobId)> = self
                    .entries
                    .iter()
                    .map(|(id, e)| (e.stored.created_at, *id))
                    .collect();
                all.sort();
                let _ = reply.send(
                    all.into_iter()
                        .filter_map(|(_, id)| self.entries.get(&id).map(|e| e.status(id)))
                        .collect(),
                );
            }
            Cmd::Pause { id, paused, reply } => {
                let r = self.pause(id, paused).await;
                let _ = reply.send(r);
            }
            Cmd::Delete { id, reply } => {
                let r = self.delete(id).await;
                let _ = reply.send(r);
            }
            Cmd::Fired { id, state } => {
                let Some(e) = self.entries.get_mut(&id) else {
                    return;
                };
                let paused = e.state.paused;
                e.state = State { paused, ..state };
                e.busy = false;
                if !paused {
                    // Ticks that fell meanwhile are due now.
                    let now = SystemClock.now();
                    let last = e.state.last_tick.unwrap_or(now);
                    self.wait_next(id, last.min(now));
                }
            }
        }
    }

    async fn pause(
        &mut self,
        id: JobId,
        paused: bool,
    ) -> Result<proto::ScheduleStatus, ScheduleError> {
        let e = self
            .entries
            .get_mut(&id)
            .ok_or(ScheduleError::NotFound(id))?;
        let now = SystemClock.now();
        let mut state = e.state.clone();
        if state.paused != paused {
            state.paused = paused;
            if !paused {
                // Ticks that fell while paused do not run.
                state.last_tick = Some(state.last_tick.map_or(now, |t| t.max(now)));
            }
        }
        self.engine
            .store()
            .put_record(STATE, &id.to_string(), encode("schedule state", &state)?)
            .await?;
        e.state = state;
        e.next = None;
        let status = e.status(id);
        if !paused {
            self.wait_next(id, now);
        }
        Ok(status)
    }

    async fn delete(&mut self, id: JobId) -> Result<proto::ScheduleStatus, ScheduleError> {
        let e = self.entries.get(&id).ok_or(ScheduleError::NotFound(id))?;
        let mut status = e.status(id);
        let store = self.engine.store();
        store.remove_record(SCHEDULE, &id.to_string()).await?;
        store.remove_record(STATE, &id.to_string()).await?;
        self.entries.remove(&id);
        status.deleted = true;
        status.next_runs_ms.clear();
        Ok(status)
    }
}

/// Runs one tick: its overlap policy against the runs not ended, then its
/// job (found again by its key if it already exists). False if its job
/// could not be created.
async fn run_tick<S: Store>(
    engine: &EngineHandle<S>,
    keys: Option<&SecretKeys>,
    id: JobId,
    stored: &Stored,
    state: &mut State,
    tick: Timestamp,
) -> bool {
    let spec = &stored.spec;
    let key = format!("schedule/{id}/{}", tick.0);
    // A tick already run (before a restart) is found, not run again.
    let existing = engine
        .store()
        .find_idempotent(&spec.tenant, &key)
        .await
        .ok()
        .flatten();
    if existing.is_none() && spec.overlap != Overlap::Allow {
        let mut open = Vec::new();
        for (_, j) in &state.runs {
            if let Ok(Some(job)) = engine.store().get_job(*j).await
                && !job.is_terminal()
            {
                open.push(job.id);
            }
        }
        if !open.is_empty() {
            match spec.overlap {
                Overlap::Skip => {
                    state.skipped += 1;
                    state.last_tick = Some(tick);
                    return true;
                }
                Overlap::CancelPrevious => {
                    for j in open {
                        let _ = engine.cancel(j).await;
                    }
                }
                Overlap::Allow => {}
            }
        }
    }
    let job = match keys {
        Some(k) if !spec.job.secrets.is_empty() => match k.open(id, &spec.job) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(schedule = %id, error = %e, "cannot open a schedule's secrets");
                state.skipped += 1;
                state.last_tick = Some(tick);
                return true;
            }
        },
        _ => spec.job.clone(),
    };
    let mut job = job;
    job.tenant = spec.tenant.clone();
    job.idempotency_key = Some(key);
    if job.name.is_empty() {
        job.name = spec.name.clone();
    }
    job.labels.insert("hodei.schedule".into(), id.to_string());
    job.labels
        .insert("hodei.schedule.tick".into(), tick.0.to_string());
    job.env.insert("HODEI_SCHEDULE_TICK".into(), rfc3339(tick));
    match engine.submit(job).await {
        Ok((j, _)) => {
            state.runs.push((tick, j.id));
            if state.runs.len() > RECENT {
                state.runs.remove(0);
            }
            state.last_tick = Some(tick);
            true
        }
        Err(e) => {
            tracing::warn!(schedule = %id, error = %e, "a schedule's run could not be created");
            false
        }
    }
}

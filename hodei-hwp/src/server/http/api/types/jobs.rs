//! Jobs as the API shows them: states, exits, attempts, log pages, events.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::JobSpecJson;
use crate::proto;

/// How a process ended.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ExitJson {
    /// Its exit code, if it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// True when it never started.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub not_started: bool,
}

/// Where a job is in its life.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct StateJson {
    /// `pending`, `queued`, `assigned`, `running`, `succeeded`, `failed`,
    /// `cancelled`, `timed_out` or `lost`.
    pub kind: String,
    /// The worker, while assigned or running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The attempt the state is about.
    pub attempt: u32,
    /// How it ended, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitJson>,
}

/// A job as stored. Secret values are never included.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobJson {
    /// Its id.
    pub id: String,
    /// What it runs.
    pub spec: JobSpecJson,
    /// Where it is.
    pub state: StateJson,
    /// Attempts started so far.
    pub attempt: u32,
    /// Submitted at, ms since the epoch.
    pub created_at_ms: u64,
    /// Last changed at, ms since the epoch.
    pub updated_at_ms: u64,
    /// Whether it has reached its final state.
    pub is_final: bool,
    /// When a retry is due, ms since the epoch; 0 when none is.
    pub next_attempt_at_ms: u64,
}

/// The answer to a submission.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SubmittedJson {
    /// The job (the earlier one for a repeated idempotency key).
    pub job: JobJson,
    /// False when an earlier submission with the same key was returned.
    pub created: bool,
}

/// A page of jobs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobPageJson {
    /// The jobs, in id (submission) order.
    pub jobs: Vec<JobJson>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One attempt of a job.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AttemptJson {
    /// 1-based.
    pub attempt: u32,
    /// Where it ran.
    pub worker_id: String,
    /// Assigned at, ms since the epoch.
    pub assigned_at_ms: u64,
    /// Started at, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Ended at, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How it ended, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitJson>,
    /// Peak memory, MiB, if reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_mb: Option<u64>,
}

/// A job's attempts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AttemptsJson {
    /// In order.
    pub attempts: Vec<AttemptJson>,
}

/// A batch of output.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct LogChunkJson {
    /// The attempt that wrote it.
    pub attempt: u32,
    /// Its place in the attempt's output.
    pub seq: u64,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// Read at, ms since the epoch.
    pub at_ms: u64,
    /// The bytes as UTF-8 (invalid sequences replaced), secrets masked.
    pub text: String,
}

/// A position in a job's output: `attempt:seq`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct LogPageJson {
    /// The chunks, oldest first.
    pub chunks: Vec<LogChunkJson>,
    /// Where the next (later) page starts, `attempt:seq`: pass as `from`.
    pub next: String,
    /// Where the previous (earlier) page ends, `attempt:seq`: pass as
    /// `before`; absent at the very beginning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Bytes the job wrote past its log cap: when non-zero, the log is
    /// incomplete.
    pub truncated_bytes: u64,
}

/// A change of a job's state, as Watch sends it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JobEventJson {
    /// The job.
    pub job_id: String,
    /// The state it left.
    pub from: StateJson,
    /// The state it entered.
    pub to: StateJson,
    /// Its attempt.
    pub attempt: u32,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The event's place on the bus: resume after it with
    /// `Last-Event-ID`.
    pub seq: u64,
}

/// The state names of the API (and of the metrics).
pub(crate) fn state_name(kind: i32) -> &'static str {
    use proto::JobStateKind as K;
    match K::try_from(kind) {
        Ok(K::Pending) => "pending",
        Ok(K::Queued) => "queued",
        Ok(K::Assigned) => "assigned",
        Ok(K::Running) => "running",
        Ok(K::Succeeded) => "succeeded",
        Ok(K::Failed) => "failed",
        Ok(K::Cancelled) => "cancelled",
        Ok(K::TimedOut) => "timed_out",
        Ok(K::Lost) => "lost",
        _ => "unspecified",
    }
}

/// The wire value of a state name, for filters.
pub(crate) fn state_kind(name: &str) -> Option<proto::JobStateKind> {
    use proto::JobStateKind as K;
    Some(match name {
        "pending" => K::Pending,
        "queued" => K::Queued,
        "assigned" => K::Assigned,
        "running" => K::Running,
        "succeeded" => K::Succeeded,
        "failed" => K::Failed,
        "cancelled" => K::Cancelled,
        "timed_out" => K::TimedOut,
        "lost" => K::Lost,
        _ => return None,
    })
}

pub(super) fn exit_from_wire(e: proto::ExitStatus) -> Option<ExitJson> {
    use proto::exit_status::Kind;
    let mut x = ExitJson {
        code: None,
        signal: None,
        not_started: false,
    };
    match e.kind? {
        Kind::Code(c) => x.code = Some(c),
        Kind::Signal(s) => x.signal = Some(s),
        Kind::NotStarted(n) => x.not_started = n,
    }
    Some(x)
}

impl StateJson {
    pub(crate) fn from_wire(s: Option<proto::JobState>) -> Self {
        let s = s.unwrap_or_default();
        StateJson {
            kind: state_name(s.kind).into(),
            worker_id: (!s.worker_id.is_empty()).then_some(s.worker_id),
            attempt: s.attempt,
            exit: s.exit.and_then(exit_from_wire),
        }
    }
}

impl From<proto::Job> for JobJson {
    fn from(j: proto::Job) -> Self {
        JobJson {
            id: j.id,
            spec: JobSpecJson::from_wire(j.spec.unwrap_or_default()),
            state: StateJson::from_wire(j.state),
            attempt: j.attempt,
            created_at_ms: j.created_at_ms,
            updated_at_ms: j.updated_at_ms,
            is_final: j.is_final,
            next_attempt_at_ms: j.next_attempt_at_ms,
        }
    }
}

impl From<proto::JobEvent> for JobEventJson {
    fn from(e: proto::JobEvent) -> Self {
        JobEventJson {
            job_id: e.job_id,
            from: StateJson::from_wire(e.from),
            to: StateJson::from_wire(e.to),
            attempt: e.attempt,
            at_ms: e.at_ms,
            seq: e.seq,
        }
    }
}

impl From<hodei_core::ExitStatus> for ExitJson {
    fn from(e: hodei_core::ExitStatus) -> Self {
        exit_from_wire(crate::wire::exit_to_wire(&e)).unwrap_or(ExitJson {
            code: None,
            signal: None,
            not_started: true,
        })
    }
}

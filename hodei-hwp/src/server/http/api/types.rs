//! The JSON shapes of the HTTP API and their conversions to and from the
//! gRPC messages, so that both APIs validate through the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::proto;

/// What a job is asked to need.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourcesJson {
    /// Thousandths of a CPU.
    #[serde(default)]
    pub cpu_millis: u32,
    /// Memory, MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// GPUs.
    #[serde(default)]
    pub gpus: u32,
}

/// A placement constraint on a worker label.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConstraintJson {
    /// The label.
    pub key: String,
    /// `in`, `not_in`, `exists` or `not_exists`.
    pub op: ConstraintOpJson,
    /// The values for `in` and `not_in`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// How a constraint compares.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConstraintOpJson {
    /// The label has one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is not set.
    NotExists,
}

/// A secret: its value goes in, never comes out.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretJson {
    /// The name the job sees (an environment variable, a JSON key).
    pub name: String,
    /// The value: required on submission, absent in every answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How secrets reach the job.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SecretDeliveryJson {
    /// As environment variables.
    #[default]
    Env,
    /// As one JSON object on standard input.
    StdinJson,
}

/// Waiting between attempts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackoffJson {
    /// The first wait, ms.
    pub initial_ms: u64,
    /// The longest wait, ms.
    pub max_ms: u64,
    /// Growth per attempt.
    pub multiplier: f64,
}

/// When a failed job runs again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryJson {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Waiting between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffJson>,
    /// Random spread of each wait, 0 to 1.
    #[serde(default)]
    pub jitter: f64,
}

/// What to run and how: the same fields and rules as the gRPC `JobSpec`.
/// Exactly one of `argv` and `script`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobSpecJson {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell script, run by `sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets (values masked in the job's output).
    #[serde(default)]
    pub secrets: Vec<SecretJson>,
    /// How secrets reach the job.
    #[serde(default)]
    pub secret_delivery: SecretDeliveryJson,
    /// Where the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Run under a pseudo-terminal.
    #[serde(default)]
    pub pty: bool,
    /// What the job needs of a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesJson>,
    /// Where it may run.
    #[serde(default)]
    pub constraints: Vec<ConstraintJson>,
    /// 0 (lowest) to 7; 4 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The tenant; a single-tenant token's own when empty.
    #[serde(default)]
    pub tenant: String,
    /// Time limit of one attempt, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryJson>,
    /// A submission repeated with the same key returns the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Labels, for people and filters.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Jobs that must succeed first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// At most `limit` jobs naming `key` hold a worker at once, across
    /// tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyJson>,
}

/// A concurrency key and its limit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConcurrencyJson {
    /// The key (1 to 128 bytes), shared across tenants.
    pub key: String,
    /// How many jobs naming it may hold a worker at once (1 to 100,000).
    pub limit: u32,
}

/// A submission.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJson {
    /// The job.
    pub spec: JobSpecJson,
}

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

/// A worker.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkerJson {
    /// Its id.
    pub id: String,
    /// Its agent's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: ResourcesJson,
    /// What its jobs hold.
    pub allocated: ResourcesJson,
    /// `ready`, `draining` or `lost`.
    pub status: String,
    /// CPU busy, percent, from its last heartbeat.
    pub cpu_percent: f32,
    /// Memory in use, MiB.
    pub memory_used_mb: u64,
    /// Load average over a minute.
    pub load_1m: f32,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// The jobs on it the caller may see.
    pub jobs: Vec<String>,
}

/// A page of workers.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WorkerPageJson {
    /// The workers, in id order.
    pub workers: Vec<WorkerJson>,
    /// Workers in all (matching the filter).
    pub total: u64,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Who the caller is and what it may do.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WhoamiJson {
    /// For the audit trail (never the token).
    pub name: String,
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub role: String,
    /// The tenants it may see; absent for every tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// Whether it may submit jobs (for at least one tenant).
    pub may_submit: bool,
    /// Whether it may cancel jobs.
    pub may_cancel: bool,
    /// Whether it may drain workers.
    pub may_drain: bool,
    /// Whether it may manage tokens and read the audit trail.
    pub is_admin: bool,
}

/// Signing in to the dashboard.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionJson {
    /// A bearer token (an API token or a JWT).
    pub token: String,
}

/// Queued jobs of one tenant at one priority.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct QueueDepthJson {
    /// The tenant.
    pub tenant: String,
    /// The priority.
    pub priority: u32,
    /// Jobs waiting.
    pub depth: u64,
}

/// One tenant's share of dispatches.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TenantDispatchJson {
    /// The tenant.
    pub tenant: String,
    /// Its weight in fair sharing.
    pub weight: u32,
    /// Jobs dispatched to workers since the server started.
    pub dispatched: u64,
}

/// Submit-to-start latency since the server started, seconds (estimated
/// from the histogram's buckets).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct LatencyJson {
    /// Observations.
    pub count: u64,
    /// Mean.
    pub mean_s: f64,
    /// Median (upper bound of its bucket).
    pub p50_s: f64,
    /// 90th percentile (upper bound of its bucket).
    pub p90_s: f64,
    /// 99th percentile (upper bound of its bucket).
    pub p99_s: f64,
}

/// The state of the whole scheduler, at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OverviewJson {
    /// Queued jobs by tenant and priority (the caller's tenants).
    pub queue_depths: Vec<QueueDepthJson>,
    /// Dispatches per tenant against their weights (the caller's
    /// tenants).
    pub dispatch: Vec<TenantDispatchJson>,
    /// Workers by state: `ready`, `draining`, `lost`.
    pub workers: BTreeMap<String, u64>,
    /// Jobs by state (ended states since the server started; every
    /// tenant, shown to admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<BTreeMap<String, i64>>,
    /// Submit-to-start latency.
    pub submit_to_start: LatencyJson,
    /// Server time, ms since the epoch.
    pub now_ms: u64,
}

/// A client token's description (never the token).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokenInfoJson {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Its tenants (empty for admin).
    pub tenants: Vec<String>,
    /// A name for people.
    pub name: String,
    /// Created at, ms since the epoch.
    pub created_at_ms: u64,
    /// Expires at; 0 for never.
    pub expires_at_ms: u64,
    /// Revoked at; 0 while valid.
    pub revoked_at_ms: u64,
}

/// Making a client token.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTokenJson {
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub role: String,
    /// Its tenants (not for admin).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// Lifetime, seconds; 0 for no expiry.
    #[serde(default)]
    pub ttl_seconds: u64,
}

/// A token just made: shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreatedTokenJson {
    /// Its description.
    pub info: TokenInfoJson,
    /// The token itself.
    pub token: String,
}

/// Client tokens.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokensJson {
    /// In id order.
    pub tokens: Vec<TokenInfoJson>,
}

/// A join token's description (never the token).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JoinTokenInfoJson {
    /// Its id.
    pub id: String,
    /// Created at, ms since the epoch.
    pub created_at_ms: u64,
    /// Expires at; 0 for never.
    pub expires_at_ms: u64,
    /// Revoked at; 0 while valid.
    pub revoked_at_ms: u64,
}

/// Making a join token for agents.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateJoinTokenJson {
    /// Lifetime, seconds; 0 for the server's default.
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Revoke every other join token.
    #[serde(default)]
    pub rotate: bool,
}

/// A join token just made: shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreatedJoinTokenJson {
    /// Its description.
    pub info: JoinTokenInfoJson,
    /// The token itself.
    pub token: String,
}

/// Join tokens.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JoinTokensJson {
    /// In id order.
    pub tokens: Vec<JoinTokenInfoJson>,
}

/// A worker's credentials revoked.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevokedWorkerJson {
    /// The worker.
    pub worker_id: String,
    /// Whether its connection was open and was closed.
    pub disconnected: bool,
}

/// One record of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditRecordJson {
    /// Its place in the chain.
    pub index: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// `ok` or why not.
    pub outcome: String,
    /// From where.
    pub peer: String,
    /// More.
    pub detail: String,
    /// The chain hash, hex.
    pub hash: String,
}

/// A page of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditPageJson {
    /// The records, oldest first.
    pub records: Vec<AuditRecordJson>,
    /// Pass as `from_index` for the next page.
    pub next_index: u64,
}

/// The audit chain checked.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditCheckJson {
    /// Whether every record links and none is missing.
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    /// The first bad record, when not intact.
    pub broken_at: u64,
    /// Why, when not intact.
    pub reason: String,
}

/// An error, as RFC 9457 problem details.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ProblemJson {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind, for people.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, naming the field where one is at fault.
    pub detail: String,
    /// The first field at fault, when the request was invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- conversions ------------------------------------------------------

fn resources_to_wire(r: ResourcesJson) -> proto::Resources {
    proto::Resources {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        gpus: r.gpus,
    }
}

fn resources_from_wire(r: Option<proto::Resources>) -> ResourcesJson {
    let r = r.unwrap_or_default();
    ResourcesJson {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        gpus: r.gpus,
    }
}

impl JobSpecJson {
    /// The gRPC message, for the one validation both APIs share. `argv`
    /// and `script` together are refused here (the message has room for
    /// one).
    pub(crate) fn into_wire(self) -> Result<proto::JobSpec, (String, String)> {
        let command = match (self.argv, self.script) {
            (Some(_), Some(_)) => {
                return Err((
                    "spec.script".into(),
                    "argv and script exclude each other: give one".into(),
                ));
            }
            (Some(args), None) => Some(proto::job_spec::Command::Argv(proto::Argv { args })),
            (None, Some(s)) => Some(proto::job_spec::Command::Script(s)),
            (None, None) => None,
        };
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, s) in self.secrets.into_iter().enumerate() {
            let Some(value) = s.value else {
                return Err((format!("spec.secrets[{i}].value"), "must be set".into()));
            };
            secrets.push(proto::Secret {
                name: s.name,
                value,
            });
        }
        Ok(proto::JobSpec {
            name: self.name,
            command,
            env: self.env.into_iter().collect(),
            secrets,
            secret_delivery: match self.secret_delivery {
                SecretDeliveryJson::Env => proto::SecretDelivery::Env,
                SecretDeliveryJson::StdinJson => proto::SecretDelivery::StdinJson,
            } as i32,
            working_dir: self.working_dir,
            pty: self.pty,
            resources: self.resources.map(resources_to_wire),
            constraints: self
                .constraints
                .into_iter()
                .map(|c| proto::Constraint {
                    key: c.key,
                    op: match c.op {
                        ConstraintOpJson::In => proto::ConstraintOp::In,
                        ConstraintOpJson::NotIn => proto::ConstraintOp::NotIn,
                        ConstraintOpJson::Exists => proto::ConstraintOp::Exists,
                        ConstraintOpJson::NotExists => proto::ConstraintOp::NotExists,
                    } as i32,
                    values: c.values,
                })
                .collect(),
            priority: self.priority,
            tenant: self.tenant,
            timeout_ms: self.timeout_ms,
            retry: self.retry.map(|r| proto::RetryPolicy {
                max_attempts: r.max_attempts,
                backoff: r.backoff.map(|b| proto::Backoff {
                    initial_ms: b.initial_ms,
                    max_ms: b.max_ms,
                    multiplier: b.multiplier,
                }),
                jitter: r.jitter,
            }),
            idempotency_key: self.idempotency_key,
            labels: self.labels.into_iter().collect(),
            dependencies: self.dependencies,
            concurrency: self.concurrency.map(|c| proto::ConcurrencyLimit {
                key: c.key,
                limit: c.limit,
            }),
        })
    }

    fn from_wire(w: proto::JobSpec) -> Self {
        let (argv, script) = match w.command {
            Some(proto::job_spec::Command::Argv(a)) => (Some(a.args), None),
            Some(proto::job_spec::Command::Script(s)) => (None, Some(s)),
            None => (None, None),
        };
        JobSpecJson {
            name: w.name,
            argv,
            script,
            env: w.env.into_iter().collect(),
            // The gRPC answer carries names only already; values are
            // dropped here as well, whatever it carried.
            secrets: w
                .secrets
                .into_iter()
                .map(|s| SecretJson {
                    name: s.name,
                    value: None,
                })
                .collect(),
            secret_delivery: match proto::SecretDelivery::try_from(w.secret_delivery) {
                Ok(proto::SecretDelivery::StdinJson) => SecretDeliveryJson::StdinJson,
                _ => SecretDeliveryJson::Env,
            },
            working_dir: w.working_dir,
            pty: w.pty,
            resources: w.resources.map(|r| resources_from_wire(Some(r))),
            constraints: w
                .constraints
                .into_iter()
                .map(|c| ConstraintJson {
                    key: c.key,
                    op: match proto::ConstraintOp::try_from(c.op) {
                        Ok(proto::ConstraintOp::NotIn) => ConstraintOpJson::NotIn,
                        Ok(proto::ConstraintOp::Exists) => ConstraintOpJson::Exists,
                        Ok(proto::ConstraintOp::NotExists) => ConstraintOpJson::NotExists,
                        _ => ConstraintOpJson::In,
                    },
                    values: c.values,
                })
                .collect(),
            priority: w.priority,
            tenant: w.tenant,
            timeout_ms: w.timeout_ms,
            retry: w.retry.map(|r| RetryJson {
                max_attempts: r.max_attempts,
                backoff: r.backoff.map(|b| BackoffJson {
                    initial_ms: b.initial_ms,
                    max_ms: b.max_ms,
                    multiplier: b.multiplier,
                }),
                jitter: r.jitter,
            }),
            idempotency_key: w.idempotency_key,
            labels: w.labels.into_iter().collect(),
            dependencies: w.dependencies,
            concurrency: w.concurrency.map(|c| ConcurrencyJson {
                key: c.key,
                limit: c.limit,
            }),
        }
    }
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

fn exit_from_wire(e: proto::ExitStatus) -> Option<ExitJson> {
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

impl From<proto::Worker> for WorkerJson {
    fn from(w: proto::Worker) -> Self {
        WorkerJson {
            id: w.id,
            name: w.name,
            labels: w.labels.into_iter().collect(),
            capacity: resources_from_wire(w.capacity),
            allocated: resources_from_wire(w.allocated),
            status: w.status,
            // The worker service keeps only finite readings.
            cpu_percent: w.cpu_percent,
            memory_used_mb: w.memory_used_mb,
            load_1m: w.load_1m,
            last_heartbeat_ms: w.last_heartbeat_ms,
            jobs: w.jobs,
        }
    }
}

impl From<proto::TokenInfo> for TokenInfoJson {
    fn from(t: proto::TokenInfo) -> Self {
        TokenInfoJson {
            id: t.id,
            role: t.role,
            tenants: t.tenants,
            name: t.name,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_at_ms: t.revoked_at_ms,
        }
    }
}

impl From<proto::JoinTokenInfo> for JoinTokenInfoJson {
    fn from(t: proto::JoinTokenInfo) -> Self {
        JoinTokenInfoJson {
            id: t.id,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_at_ms: t.revoked_at_ms,
        }
    }
}

impl From<proto::AuditRecord> for AuditRecordJson {
    fn from(r: proto::AuditRecord) -> Self {
        let hash = crate::tls::hex(&r.hash);
        AuditRecordJson {
            index: r.index,
            at_ms: r.at_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            peer: r.peer,
            detail: r.detail,
            hash,
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

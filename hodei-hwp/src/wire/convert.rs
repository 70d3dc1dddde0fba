//! Checked conversions between wire messages and `hodei-core` types.

use std::fmt;
use std::time::Duration;

use hodei_core::{
    Backoff, Command, ConcurrencyLimit, Constraint, ConstraintOp, ExitStatus, FieldError, Job,
    JobId, JobSpec, JobState, LogStream, Resources, RetryPolicy, Secret, SecretDelivery, TenantId,
};

use crate::proto;
#[cfg(feature = "server")]
use crate::server::engine::ToAgent;

/// Every problem found in a wire message, each naming its field. Becomes
/// an `INVALID_ARGUMENT` status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct WireError(pub Vec<FieldError>);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&FieldError::join(&self.0))
    }
}

impl WireError {
    /// One problem with one field.
    pub fn one(field: &str, message: &str) -> Self {
        WireError(vec![FieldError {
            field: field.to_string(),
            message: message.to_string(),
        }])
    }

    /// True if a problem concerns `field` or a path below it.
    pub fn concerns(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.is_about(field))
    }
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// A spec from the wire, with every field checked (conversion and
/// [`JobSpec::validate`] alike) and paths prefixed `spec.`. An empty tenant
/// means `default_tenant`.
///
/// # Errors
///
/// [`WireError`] with every problem found, each naming its field.
pub fn spec_from_wire(w: proto::JobSpec, default_tenant: &TenantId) -> Result<JobSpec, WireError> {
    let mut p = Problems::default();
    let defaults = JobSpec::default();
    let command = match w.command {
        Some(proto::job_spec::Command::Argv(a)) => Command::Argv(a.args),
        Some(proto::job_spec::Command::Script(s)) => Command::Script(s),
        None => {
            p.add("spec.command", "must be set to argv or script");
            Command::Argv(vec!["-".into()])
        }
    };
    let secret_delivery = match proto::SecretDelivery::try_from(w.secret_delivery) {
        Ok(proto::SecretDelivery::Unspecified | proto::SecretDelivery::Env) => SecretDelivery::Env,
        Ok(proto::SecretDelivery::StdinJson) => SecretDelivery::StdinJson,
        Err(_) => {
            p.add(
                "spec.secret_delivery",
                format!("unknown value {}", w.secret_delivery),
            );
            SecretDelivery::Env
        }
    };
    let mut constraints = Vec::with_capacity(w.constraints.len());
    for (i, c) in w.constraints.into_iter().enumerate() {
        let op = match proto::ConstraintOp::try_from(c.op) {
            Ok(proto::ConstraintOp::In) => ConstraintOp::In,
            Ok(proto::ConstraintOp::NotIn) => ConstraintOp::NotIn,
            Ok(proto::ConstraintOp::Exists) => ConstraintOp::Exists,
            Ok(proto::ConstraintOp::NotExists) => ConstraintOp::NotExists,
            Ok(proto::ConstraintOp::Unspecified) | Err(_) => {
                p.add(
                    format!("spec.constraints[{i}].op"),
                    "must be in, not_in, exists or not_exists",
                );
                continue;
            }
        };
        constraints.push(Constraint {
            key: c.key,
            op,
            values: c.values,
        });
    }
    let priority = match w.priority {
        None => defaults.priority,
        Some(v) => u8::try_from(v).unwrap_or_else(|_| {
            p.add("spec.priority", format!("must be 0 to 7, got {v}"));
            defaults.priority
        }),
    };
    let tenant = if w.tenant.is_empty() {
        default_tenant.clone()
    } else {
        w.tenant.parse().unwrap_or_else(|e| {
            p.add("spec.tenant", format!("{e}"));
            default_tenant.clone()
        })
    };
    let mut dependencies = Vec::with_capacity(w.dependencies.len());
    for (i, d) in w.dependencies.iter().enumerate() {
        match d.parse::<JobId>() {
            Ok(id) => dependencies.push(id),
            Err(e) => p.add(format!("spec.dependencies[{i}]"), format!("{e}")),
        }
    }
    let retry = w.retry.map_or(defaults.retry, |r| RetryPolicy {
        max_attempts: r.max_attempts,
        backoff: r.backoff.map_or(Backoff::default(), |b| Backoff {
            initial: Duration::from_millis(b.initial_ms),
            max: Duration::from_millis(b.max_ms),
            multiplier: b.multiplier,
        }),
        jitter: r.jitter,
    });
    let spec = JobSpec {
        name: w.name,
        command,
        env: w.env.into_iter().collect(),
        secrets: w
            .secrets
            .into_iter()
            .map(|s| Secret {
                name: s.name,
                value: s.value,
            })
            .collect(),
        secret_delivery,
        working_dir: w.working_dir,
        pty: w.pty,
        resources: w.resources.map_or(defaults.resources, |r| Resources {
            cpu_millis: r.cpu_millis,
            memory_mb: r.memory_mb,
            gpus: r.gpus,
        }),
        constraints,
        priority,
        tenant,
        timeout: w.timeout_ms.map(Duration::from_millis),
        retry,
        idempotency_key: w.idempotency_key,
        labels: w.labels.into_iter().collect(),
        dependencies,
        concurrency: w.concurrency.map(|c| ConcurrencyLimit {
            key: c.key,
            limit: c.limit,
        }),
    };
    if let Err(errors) = spec.validate() {
        for e in errors.0 {
            p.add(format!("spec.{}", e.field), e.message);
        }
    }
    if p.0.is_empty() {
        Ok(spec)
    } else {
        Err(WireError(p.0))
    }
}

/// A spec for the wire. Secret values are included only when
/// `with_secret_values` (an assignment to the agent that runs the job);
/// otherwise only their names travel.
pub fn spec_to_wire(spec: &JobSpec, with_secret_values: bool) -> proto::JobSpec {
    proto::JobSpec {
        name: spec.name.clone(),
        command: Some(match &spec.command {
            Command::Argv(args) => {
                proto::job_spec::Command::Argv(proto::Argv { args: args.clone() })
            }
            Command::Script(s) => proto::job_spec::Command::Script(s.clone()),
        }),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secrets: spec
            .secrets
            .iter()
            .map(|s| proto::Secret {
                name: s.name.clone(),
                value: if with_secret_values {
                    s.value.clone()
                } else {
                    String::new()
                },
            })
            .collect(),
        secret_delivery: match spec.secret_delivery {
            SecretDelivery::Env => proto::SecretDelivery::Env,
            SecretDelivery::StdinJson => proto::SecretDelivery::StdinJson,
        } as i32,
        working_dir: spec.working_dir.clone(),
        pty: spec.pty,
        resources: Some(resources_to_wire(&spec.resources)),
        constraints: spec
            .constraints
            .iter()
            .map(|c| proto::Constraint {
                key: c.key.clone(),
                op: match c.op {
                    ConstraintOp::In => proto::ConstraintOp::In,
                    ConstraintOp::NotIn => proto::ConstraintOp::NotIn,
                    ConstraintOp::Exists => proto::ConstraintOp::Exists,
                    ConstraintOp::NotExists => proto::ConstraintOp::NotExists,
                } as i32,
                values: c.values.clone(),
            })
            .collect(),
        priority: Some(u32::from(spec.priority)),
        tenant: spec.tenant.to_string(),
        timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
        retry: Some(proto::RetryPolicy {
            max_attempts: spec.retry.max_attempts,
            backoff: Some(proto::Backoff {
                initial_ms: spec.retry.backoff.initial.as_millis() as u64,
                max_ms: spec.retry.backoff.max.as_millis() as u64,
                multiplier: spec.retry.backoff.multiplier,
            }),
            jitter: spec.retry.jitter,
        }),
        idempotency_key: spec.idempotency_key.clone(),
        labels: spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        dependencies: spec.dependencies.iter().map(JobId::to_string).collect(),
        concurrency: spec.concurrency.as_ref().map(|c| proto::ConcurrencyLimit {
            key: c.key.clone(),
            limit: c.limit,
        }),
    }
}

/// Resources as the wire carries them.
pub fn resources_to_wire(r: &Resources) -> proto::Resources {
    proto::Resources {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        gpus: r.gpus,
    }
}

/// A log stream, as the wire carries it.
pub fn log_stream_to_wire(s: LogStream) -> i32 {
    match s {
        LogStream::Stdout => proto::LogStream::Stdout as i32,
        LogStream::Stderr => proto::LogStream::Stderr as i32,
        LogStream::System => proto::LogStream::System as i32,
    }
}

/// A log stream from the wire; `field` names it in the error.
///
/// # Errors
///
/// The value is not a known stream.
pub fn log_stream_from_wire(v: i32, field: &str) -> Result<LogStream, WireError> {
    match proto::LogStream::try_from(v) {
        Ok(proto::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(proto::LogStream::Stderr) => Ok(LogStream::Stderr),
        Ok(proto::LogStream::System) => Ok(LogStream::System),
        _ => Err(WireError::one(field, "must be stdout, stderr or system")),
    }
}

/// How a process ended, from the wire; `field` names it in the error.
///
/// # Errors
///
/// The status is missing.
pub fn exit_from_wire(e: Option<proto::ExitStatus>, field: &str) -> Result<ExitStatus, WireError> {
    use proto::exit_status::Kind;
    match e.and_then(|e| e.kind) {
        Some(Kind::Code(c)) => Ok(ExitStatus::Code(c)),
        Some(Kind::Signal(s)) => Ok(ExitStatus::Signal(s)),
        Some(Kind::NotStarted(_)) => Ok(ExitStatus::NotStarted),
        None => Err(WireError::one(field, "must be set")),
    }
}

/// How a process ended, as the wire carries it.
pub fn exit_to_wire(e: &ExitStatus) -> proto::ExitStatus {
    use proto::exit_status::Kind;
    proto::ExitStatus {
        kind: Some(match e {
            ExitStatus::Code(c) => Kind::Code(*c),
            ExitStatus::Signal(s) => Kind::Signal(*s),
            ExitStatus::NotStarted => Kind::NotStarted(true),
        }),
    }
}

/// A job state for the wire.
pub fn state_to_wire(s: &JobState) -> proto::JobState {
    use proto::JobStateKind as K;
    let (kind, worker, attempt, exit) = match s {
        JobState::Pending => (K::Pending, None, 0, None),
        JobState::Queued => (K::Queued, None, 0, None),
        JobState::Assigned { worker, attempt } => (K::Assigned, Some(worker), *attempt, None),
        JobState::Running { worker, attempt } => (K::Running, Some(worker), *attempt, None),
        JobState::Succeeded => (K::Succeeded, None, 0, None),
        JobState::Failed { exit } => (K::Failed, None, 0, Some(exit_to_wire(exit))),
        JobState::Cancelled => (K::Cancelled, None, 0, None),
        JobState::TimedOut => (K::TimedOut, None, 0, None),
        JobState::Lost => (K::Lost, None, 0, None),
    };
    proto::JobState {
        kind: kind as i32,
        worker_id: worker.map(|w| w.to_string()).unwrap_or_default(),
        attempt,
        exit,
    }
}

/// A job for the API: never carries secret values.
pub fn job_to_wire(job: &Job) -> proto::Job {
    proto::Job {
        id: job.id.to_string(),
        spec: Some(spec_to_wire(&job.spec, false)),
        state: Some(state_to_wire(&job.state)),
        attempt: job.attempt,
        created_at_ms: job.created_at.as_millis(),
        updated_at_ms: job.updated_at.as_millis(),
        is_final: job.is_terminal(),
        next_attempt_at_ms: if job.awaits_retry() {
            // The scheduler draws the same delay from the same job and
            // attempt, counted from the failure the job was stored with.
            (job.updated_at + job.spec.retry.delay_for(job.id, job.attempt)).as_millis()
        } else {
            0
        },
    }
}

/// An engine message for an agent, as the wire carries it; [`ToAgent::Close`]
/// ends the stream with UNAVAILABLE, so the agent reconnects.
///
/// # Errors
///
/// UNAVAILABLE for [`ToAgent::Close`]: the stream ends so the agent reconnects.
#[cfg(feature = "server")]
pub fn to_agent_wire(m: ToAgent) -> Result<proto::ServerMessage, tonic::Status> {
    use proto::server_message::Msg;
    let msg = match m {
        ToAgent::Welcome(w) => Msg::Welcome(proto::Welcome {
            worker_id: w.worker.to_string(),
            heartbeat_interval_ms: w.heartbeat_interval.as_millis() as u64,
            abandoned_jobs: w.abandoned.iter().map(JobId::to_string).collect(),
        }),
        ToAgent::Assign { job, attempt, spec } => Msg::AssignJob(proto::AssignJob {
            job_id: job.to_string(),
            attempt,
            spec: Some(spec_to_wire(&spec, true)),
        }),
        ToAgent::Cancel {
            job,
            attempt,
            grace,
        } => Msg::CancelJob(proto::CancelJob {
            job_id: job.to_string(),
            attempt,
            grace_ms: grace.as_millis() as u64,
        }),
        ToAgent::Drain => Msg::Drain(proto::Drain {}),
        ToAgent::Close => {
            return Err(tonic::Status::unavailable(
                "the server is shutting down; reconnect and re-attach",
            ));
        }
    };
    Ok(proto::ServerMessage { msg: Some(msg) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{Timestamp, WorkerId};
    use proptest::prelude::*;
    use prost::Message;

    fn tenant() -> TenantId {
        "acme".parse().unwrap()
    }

    fn full_spec() -> JobSpec {
        let mut s = JobSpec::script("make test");
        s.name = "ci".into();
        s.env.insert("CC".into(), "clang".into());
        s.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "correct-horse".into(),
        });
        s.secret_delivery = SecretDelivery::StdinJson;
        s.working_dir = Some("/srv/build".into());
        s.resources = Resources::new(2000, 4096, 1);
        s.constraints.push(Constraint::is_in("zone", &["eu-1"]));
        s.priority = 6;
        s.tenant = tenant();
        s.timeout = Some(Duration::from_secs(600));
        s.retry.max_attempts = 3;
        s.idempotency_key = Some("build-77".into());
        s.labels.insert("team".into(), "core".into());
        s.dependencies.push(JobId::new());
        s
    }

    #[test]
    fn a_spec_survives_the_wire_when_secrets_travel() {
        let spec = full_spec();
        let wire = spec_to_wire(&spec, true);
        // Through bytes, as on a real connection.
        let bytes = wire.encode_to_vec();
        let back = proto::JobSpec::decode(bytes.as_slice()).unwrap();
        assert_eq!(spec_from_wire(back, &TenantId::default()).unwrap(), spec);
    }

    #[test]
    fn secret_values_never_leave_through_the_api() {
        let job = Job::new(JobId::new(), full_spec(), Timestamp(1));
        let wire = job_to_wire(&job);
        let bytes = wire.encode_to_vec();
        assert!(!bytes.windows(13).any(|w| w == b"correct-horse"));
        assert_eq!(wire.spec.unwrap().secrets[0].name, "TOKEN");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut w = spec_to_wire(&full_spec(), true);
        w.command = None;
        w.secret_delivery = 42;
        w.constraints[0].op = 99;
        w.priority = Some(300);
        w.tenant = "Not A Tenant".into();
        w.dependencies = vec!["nope".into()];
        w.timeout_ms = Some(0);
        w.secrets[0].value = "short".into();
        let err = spec_from_wire(w, &tenant()).unwrap_err();
        for field in [
            "spec.command",
            "spec.secret_delivery",
            "spec.constraints[0].op",
            "spec.priority",
            "spec.tenant",
            "spec.dependencies[0]",
            "spec.timeout",
            "spec.secrets[0].value",
        ] {
            assert!(err.concerns(field), "nothing about {field}: {err}");
        }
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("spec.tenant"));
        assert!(
            !status.message().contains("short"),
            "a secret value was echoed"
        );
    }

    #[test]
    fn an_empty_tenant_means_the_callers() {
        let mut w = spec_to_wire(&JobSpec::argv(["true"]), false);
        w.tenant.clear();
        assert_eq!(spec_from_wire(w, &tenant()).unwrap().tenant, tenant());
    }

    #[test]
    fn states_carry_worker_attempt_and_exit() {
        let w = WorkerId::new();
        let s = state_to_wire(&JobState::Running {
            worker: w,
            attempt: 2,
        });
        assert_eq!(
            (s.kind, s.worker_id, s.attempt),
            (proto::JobStateKind::Running as i32, w.to_string(), 2)
        );
        let f = state_to_wire(&JobState::Failed {
            exit: ExitStatus::Signal(9),
        });
        assert_eq!(
            f.exit.unwrap().kind,
            Some(proto::exit_status::Kind::Signal(9))
        );
    }

    proptest! {
        /// Whatever bytes arrive, decoding then converting never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = proto::SubmitRequest::decode(bytes.as_slice()) {
                let _ = spec_from_wire(req.spec.unwrap_or_default(), &tenant());
            }
            let _ = proto::AgentMessage::decode(bytes.as_slice());
        }
    }
}

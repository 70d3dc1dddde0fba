//! Conversions of the server's own types (feature `server`).

use hodei_core::{JobId, Resources, WorkerId};
use hodei_store::StateKind;

use super::convert::{WireError, resources_to_wire};
use crate::proto;
use crate::server::engine::Registration;

/// Labels a worker may register at most.
pub const MAX_LABELS: usize = 64;

fn invalid(field: &str, why: impl std::fmt::Display) -> WireError {
    WireError::one(field, &why.to_string())
}

fn job_id(field: &str, s: &str) -> Result<JobId, WireError> {
    s.parse().map_err(|e| invalid(field, e))
}

/// A registration, checked: every field, with the label rule jobs are
/// held to.
///
/// # Errors
///
/// The problem, naming its field.
pub fn registration_from_wire(r: proto::Register) -> Result<Registration, WireError> {
    let worker = if r.worker_id.is_empty() {
        WorkerId::new()
    } else {
        r.worker_id
            .parse()
            .map_err(|e| invalid("register.worker_id", e))?
    };
    let cap = r
        .capacity
        .ok_or_else(|| invalid("register.capacity", "must be set"))?;
    let capacity = Resources::new(cap.cpu_millis, cap.memory_mb, cap.gpus);
    if capacity.cpu_millis == 0 && capacity.memory_mb == 0 {
        return Err(invalid("register.capacity", "must offer CPU or memory"));
    }
    if r.labels.len() > MAX_LABELS {
        return Err(invalid("register.labels", format!("at most {MAX_LABELS}")));
    }
    for (k, v) in &r.labels {
        // The same rule as for a job's constraints and labels.
        if let Some(why) = hodei_core::label_key_problem(k) {
            return Err(invalid(
                &format!("register.labels.{k}"),
                format!("key {why}"),
            ));
        }
        if let Some(why) = hodei_core::label_value_problem(v) {
            return Err(invalid(
                &format!("register.labels.{k}"),
                format!("value {why}"),
            ));
        }
    }
    let mut held = Vec::with_capacity(r.jobs.len());
    for (i, h) in r.jobs.iter().enumerate() {
        let id = job_id(&format!("register.jobs[{i}].job_id"), &h.job_id)?;
        if h.attempt == 0 {
            return Err(invalid(
                &format!("register.jobs[{i}].attempt"),
                "must be at least 1",
            ));
        }
        held.push((id, h.attempt));
    }
    Ok(Registration {
        worker,
        name: r
            .name
            .chars()
            .filter(|c| !c.is_control())
            .take(253)
            .collect(),
        labels: r.labels.into_iter().collect(),
        capacity,
        held,
    })
}

/// A state filter from the wire; unspecified means none.
///
/// # Errors
///
/// An unknown value, naming `state`.
pub fn state_kind_from_wire(v: i32) -> Result<Option<StateKind>, WireError> {
    use proto::JobStateKind as K;
    Ok(Some(
        match K::try_from(v).map_err(|_| invalid("state", format!("unknown value {v}")))? {
            K::Unspecified => return Ok(None),
            K::Pending => StateKind::Pending,
            K::Queued => StateKind::Queued,
            K::Assigned => StateKind::Assigned,
            K::Running => StateKind::Running,
            K::Succeeded => StateKind::Succeeded,
            K::Failed => StateKind::Failed,
            K::Cancelled => StateKind::Cancelled,
            K::TimedOut => StateKind::TimedOut,
            K::Lost => StateKind::Lost,
        },
    ))
}

/// A worker as the wire shows it.
pub fn worker_to_wire(w: hodei_sched::WorkerSnapshot, name: String) -> proto::Worker {
    let res = |r: Resources| resources_to_wire(&r);
    proto::Worker {
        id: w.id.to_string(),
        name,
        labels: w.labels.into_iter().collect(),
        capacity: Some(res(w.capacity)),
        allocated: Some(res(w.allocated)),
        status: w.status.name().to_string(),
        cpu_percent: w.telemetry.cpu_percent,
        memory_used_mb: w.telemetry.memory_used_mb,
        load_1m: w.telemetry.load_1m,
        last_heartbeat_ms: w.last_heartbeat.as_millis(),
        jobs: w.jobs.iter().map(JobId::to_string).collect(),
    }
}

/// A schedule from the wire, checked whole: its cron and time zone, its
/// catch-up, and its job (as `job.<field>`). An empty tenant means
/// `default_tenant`.
///
/// # Errors
///
/// [`WireError`] with every problem found, each naming its field.
pub fn schedule_from_wire(
    w: crate::proto::ScheduleSpec,
    default_tenant: &hodei_core::TenantId,
) -> Result<(hodei_sched::ScheduleSpec, hodei_sched::Cron), crate::wire::WireError> {
    use hodei_core::FieldError;
    let mut problems: Vec<FieldError> = Vec::new();
    let tenant = if w.tenant.is_empty() {
        default_tenant.clone()
    } else {
        w.tenant.parse().unwrap_or_else(|e| {
            problems.push(FieldError {
                field: "tenant".into(),
                message: format!("{e}"),
            });
            default_tenant.clone()
        })
    };
    let overlap = match crate::proto::Overlap::try_from(w.overlap) {
        Ok(crate::proto::Overlap::Allow) => hodei_sched::Overlap::Allow,
        Ok(crate::proto::Overlap::Skip) => hodei_sched::Overlap::Skip,
        Ok(crate::proto::Overlap::CancelPrevious) => hodei_sched::Overlap::CancelPrevious,
        Err(_) => {
            problems.push(FieldError {
                field: "overlap".into(),
                message: format!("unknown value {}", w.overlap),
            });
            hodei_sched::Overlap::Allow
        }
    };
    let job = match w.job {
        None => {
            problems.push(FieldError {
                field: "job".into(),
                message: "must be set".into(),
            });
            hodei_core::JobSpec::script("true")
        }
        Some(j) => match crate::wire::spec_from_wire(j, &tenant) {
            Ok(s) => s,
            Err(crate::wire::WireError(errs)) => {
                for e in errs {
                    let rest = e.field.strip_prefix("spec.").unwrap_or(&e.field);
                    problems.push(FieldError {
                        field: format!("job.{rest}"),
                        message: e.message,
                    });
                }
                let mut s = hodei_core::JobSpec::script("true");
                s.tenant = tenant.clone();
                s
            }
        },
    };
    let spec = hodei_sched::ScheduleSpec {
        name: w.name,
        tenant,
        cron: w.cron,
        timezone: if w.timezone.is_empty() {
            "UTC".into()
        } else {
            w.timezone
        },
        overlap,
        catch_up: w.catch_up.unwrap_or(1),
        paused: w.paused,
        job,
    };
    match spec.validate() {
        Ok(c) if problems.is_empty() => Ok((spec, c)),
        Ok(_) => Err(crate::wire::WireError(problems)),
        Err(e) => {
            for fe in e.0 {
                if !problems.contains(&fe) {
                    problems.push(fe);
                }
            }
            Err(crate::wire::WireError(problems))
        }
    }
}

/// A schedule for the wire (secret values included: it is what a client
/// submits).
pub fn schedule_to_wire(s: &hodei_sched::ScheduleSpec) -> crate::proto::ScheduleSpec {
    crate::proto::ScheduleSpec {
        name: s.name.clone(),
        tenant: s.tenant.as_str().to_string(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        overlap: match s.overlap {
            hodei_sched::Overlap::Allow => crate::proto::Overlap::Allow,
            hodei_sched::Overlap::Skip => crate::proto::Overlap::Skip,
            hodei_sched::Overlap::CancelPrevious => crate::proto::Overlap::CancelPrevious,
        } as i32,
        catch_up: Some(s.catch_up),
        paused: s.paused,
        job: Some(crate::wire::spec_to_wire(&s.job, true)),
    }
}

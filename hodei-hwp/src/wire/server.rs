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

//! Pipelines to and from the wire.

use hodei_core::{
    CompensationSpec, Condition, FieldError, JobSpec, PipelineGraph, PipelineSpec, StepSpec,
    TenantId,
};

use super::convert::{WireError, spec_from_wire, spec_to_wire};
use super::proto;

/// A pipeline from the wire, checked whole: every problem of every step's
/// job (as `steps[i].job.<field>`), every unknown step, every cycle.
/// An empty tenant means `default_tenant`; a step's job with no tenant is
/// the pipeline's.
///
/// # Errors
///
/// [`WireError`] with every problem found, each naming its field.
pub fn pipeline_from_wire(
    w: proto::PipelineSpec,
    default_tenant: &TenantId,
) -> Result<(PipelineSpec, PipelineGraph), WireError> {
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
    // A job that does not convert is replaced by a valid placeholder, so
    // the graph is still checked and every problem is told at once.
    let mut job = |j: Option<proto::JobSpec>, field: String| -> JobSpec {
        let Some(j) = j else {
            problems.push(FieldError {
                field,
                message: "must be set".into(),
            });
            return JobSpec::script("true");
        };
        match spec_from_wire(j, &tenant) {
            Ok(s) => s,
            Err(WireError(errs)) => {
                for e in errs {
                    let rest = e.field.strip_prefix("spec.").unwrap_or(&e.field);
                    problems.push(FieldError {
                        field: format!("{field}.{rest}"),
                        message: e.message,
                    });
                }
                let mut s = JobSpec::script("true");
                s.tenant = tenant.clone();
                s
            }
        }
    };
    let mut steps = Vec::with_capacity(w.steps.len());
    let mut conditions = Vec::new();
    for (i, s) in w.steps.into_iter().enumerate() {
        let condition = match proto::StepCondition::try_from(s.condition) {
            Ok(proto::StepCondition::OnSuccess) => Condition::OnSuccess,
            Ok(proto::StepCondition::OnFailure) => Condition::OnFailure,
            Ok(proto::StepCondition::Always) => Condition::Always,
            Err(_) => {
                conditions.push(FieldError {
                    field: format!("steps[{i}].condition"),
                    message: format!("unknown value {}", s.condition),
                });
                Condition::OnSuccess
            }
        };
        let spec = job(s.job, format!("steps[{i}].job"));
        steps.push(StepSpec {
            name: s.name,
            depends_on: s.depends_on,
            condition,
            compensate: (!s.compensate.is_empty()).then_some(s.compensate),
            job: spec,
        });
    }
    let mut compensations = Vec::with_capacity(w.compensations.len());
    for (i, c) in w.compensations.into_iter().enumerate() {
        let spec = job(c.job, format!("compensations[{i}].job"));
        compensations.push(CompensationSpec {
            name: c.name,
            job: spec,
        });
    }
    problems.extend(conditions);
    let spec = PipelineSpec {
        name: w.name,
        tenant,
        fail_fast: !w.continue_on_failure,
        steps,
        compensations,
    };
    match spec.validate() {
        Ok(g) if problems.is_empty() => Ok((spec, g)),
        Ok(_) => Err(WireError(problems)),
        Err(e) => {
            // Placeholders validate; the rest may repeat a problem found
            // in conversion, which is told once.
            for fe in e.0 {
                if !problems.contains(&fe) {
                    problems.push(fe);
                }
            }
            Err(WireError(problems))
        }
    }
}

/// A pipeline for the wire (secret values included: it is what a client
/// submits).
pub fn pipeline_to_wire(p: &PipelineSpec) -> proto::PipelineSpec {
    proto::PipelineSpec {
        name: p.name.clone(),
        tenant: p.tenant.as_str().to_string(),
        continue_on_failure: !p.fail_fast,
        steps: p
            .steps
            .iter()
            .map(|s| proto::PipelineStep {
                name: s.name.clone(),
                job: Some(spec_to_wire(&s.job, true)),
                depends_on: s.depends_on.clone(),
                condition: condition_to_wire(s.condition) as i32,
                compensate: s.compensate.clone().unwrap_or_default(),
            })
            .collect(),
        compensations: p
            .compensations
            .iter()
            .map(|c| proto::PipelineCompensation {
                name: c.name.clone(),
                job: Some(spec_to_wire(&c.job, true)),
            })
            .collect(),
    }
}

/// A condition on the wire.
pub fn condition_to_wire(c: Condition) -> proto::StepCondition {
    match c {
        Condition::OnSuccess => proto::StepCondition::OnSuccess,
        Condition::OnFailure => proto::StepCondition::OnFailure,
        Condition::Always => proto::StepCondition::Always,
    }
}

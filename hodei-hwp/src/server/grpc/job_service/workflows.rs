//! Pipelines, arrays and schedules through the job service: who may see
//! and change them, and each call.

use hodei_core::{JobId, TenantId};
use hodei_store::Store;
use tonic::{Request, Response, Status};

use super::{JobApi, invalid};
use crate::proto;
use crate::server::security::auth::{Principal, Role};
use crate::server::workflows::arrays::{ArrayError, MAX_ARRAY};
use crate::server::workflows::pipelines::PipelineError;
use crate::server::workflows::schedules::ScheduleError;
use crate::wire::{pipeline_from_wire, schedule_from_wire};

/// A workflow `p` sends (`field`: a pipeline, a schedule), if `p` may:
/// its role checked, the message converted in `p`'s tenant when it names
/// none (by `convert`, which checks it whole), refused in a tenant `p`
/// may not submit to.
pub(super) fn workflow_submittable<W, T>(
    p: &Principal,
    field: &str,
    wire: Option<W>,
    names_tenant: impl Fn(&W) -> bool,
    convert: impl FnOnce(W, &TenantId) -> Result<T, crate::wire::WireError>,
    tenant: impl Fn(&T) -> &TenantId,
) -> Result<T, Status> {
    if !matches!(p.role, Role::Admin | Role::Submitter) {
        return Err(Status::permission_denied(format!(
            "submitting needs a submitter or admin token; this one is {}",
            p.role
        )));
    }
    let wire = wire.ok_or_else(|| invalid(field, "must be set"))?;
    let t = match p.default_tenant() {
        Some(t) => convert(wire, &t)?,
        None if !names_tenant(&wire) => {
            return Err(invalid(
                "tenant",
                "this token spans several tenants: name one",
            ));
        }
        None => convert(wire, &TenantId::default())?,
    };
    if !p.may_submit(tenant(&t)) {
        return Err(Status::permission_denied(format!(
            "tenant: this token may not submit for tenant {}",
            tenant(&t)
        )));
    }
    Ok(t)
}

/// The tenant a list asks for (none when empty), refused when `p` may
/// not see it.
pub(super) fn asked_tenant(p: &Principal, tenant: &str) -> Result<Option<TenantId>, Status> {
    if tenant.is_empty() {
        return Ok(None);
    }
    let t: TenantId = tenant.parse().map_err(|e| invalid("tenant", e))?;
    if !p.may_access(&t) {
        return Err(Status::permission_denied(format!(
            "tenant: this token may not list tenant {t}"
        )));
    }
    Ok(Some(t))
}

/// Refuses a cancel `p` may not make in `tenant`.
pub(super) fn may_cancel(p: &Principal, tenant: &TenantId) -> Result<(), Status> {
    if p.may_cancel(tenant) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "cancelling needs a submitter, operator or admin token; this one is {}",
            p.role
        )))
    }
}

pub(super) fn pipeline_status(e: PipelineError) -> Status {
    match e {
        PipelineError::NotFound(id) => Status::not_found(format!("pipeline {id} not found")),
        PipelineError::Ended(id, state) => {
            Status::failed_precondition(format!("pipeline {id} has already ended ({state})"))
        }
        PipelineError::Stopped => Status::unavailable("the server is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

pub(super) fn array_status(e: ArrayError) -> Status {
    match e {
        ArrayError::NotFound(id) => Status::not_found(format!("array {id} not found")),
        ArrayError::Stopped => Status::unavailable("the server is shutting down"),
        ArrayError::Create(why) => Status::unavailable(format!(
            "a task could not be created ({why}); the rest are created at the next start"
        )),
        other => Status::internal(other.to_string()),
    }
}

pub(super) fn schedule_status(e: ScheduleError) -> Status {
    match e {
        ScheduleError::NotFound(id) => Status::not_found(format!("schedule {id} not found")),
        ScheduleError::Stopped => Status::unavailable("the server is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

impl<S: Store> JobApi<S> {
    pub(super) async fn visible_pipeline(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("pipeline_id", e))?;
        match self.pipelines.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("pipeline {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// An array's id and tenant, if it exists and the caller may see it;
    /// otherwise NOT_FOUND.
    pub(super) async fn visible_array(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("array_id", e))?;
        match self.arrays.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("array {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// A schedule's id and tenant, if it exists and the caller may see it;
    /// otherwise NOT_FOUND.
    pub(super) async fn visible_schedule(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("schedule_id", e))?;
        match self.schedules.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("schedule {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// Pauses, resumes or deletes a schedule the caller may change.
    pub(super) async fn change_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
        action: &str,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        let p = self.principal(&request, action).await?;
        let peer = request.remote_addr();
        let id = request.into_inner().schedule_id;
        let r = async {
            let (id, tenant) = self.visible_schedule(&p, &id).await?;
            if !p.may_submit(&tenant) {
                return Err(Status::permission_denied(format!(
                    "changing a schedule needs a submitter or admin token; this one is {}",
                    p.role
                )));
            }
            match action {
                "pause_schedule" => self.schedules.pause(id, true).await,
                "resume_schedule" => self.schedules.pause(id, false).await,
                _ => self.schedules.delete(id).await,
            }
            .map_err(schedule_status)
        }
        .await;
        self.audit.call(&p, action, &id, peer, &r).await;
        r.map(Response::new)
    }
}

pub(super) async fn create_schedule<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::CreateScheduleRequest>,
) -> Result<Response<proto::ScheduleStatus>, Status> {
    let p = api.principal(&request, "create_schedule").await?;
    let peer = request.remote_addr();
    let wire = request.into_inner().schedule;
    let checked = workflow_submittable(
        &p,
        "schedule",
        wire,
        |w| !w.tenant.is_empty(),
        schedule_from_wire,
        |(s, _)| &s.tenant,
    );
    let (spec, cron) = match checked {
        Ok(s) => s,
        Err(e) => {
            api.audit
                .call(&p, "create_schedule", "", peer, &Err::<(), _>(e.clone()))
                .await;
            return Err(e);
        }
    };
    let detail = format!(
        "tenant {} name {:?} cron {:?} timezone {}",
        spec.tenant, spec.name, spec.cron, spec.timezone
    );
    let r = api
        .schedules
        .create(spec, cron)
        .await
        .map_err(schedule_status);
    let target = r
        .as_ref()
        .map(|s| s.schedule_id.clone())
        .unwrap_or_default();
    api.audit_created(&p, "create_schedule", target, peer, detail, &r)
        .await;
    r.map(Response::new)
}

pub(super) async fn get_schedule<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ScheduleRequest>,
) -> Result<Response<proto::ScheduleStatus>, Status> {
    let p = api.principal(&request, "read").await?;
    let (id, _) = api
        .visible_schedule(&p, &request.get_ref().schedule_id)
        .await?;
    api.schedules
        .get(id)
        .await
        .map(Response::new)
        .map_err(schedule_status)
}

pub(super) async fn list_schedules<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ListSchedulesRequest>,
) -> Result<Response<proto::ListSchedulesResponse>, Status> {
    let p = api.principal(&request, "read").await?;
    let r = request.into_inner();
    let asked = asked_tenant(&p, &r.tenant)?;
    let schedules = api
        .schedules
        .list(|t| {
            t.parse::<TenantId>()
                .is_ok_and(|t| p.may_access(&t) && asked.as_ref().is_none_or(|a| *a == t))
        })
        .await
        .map_err(schedule_status)?;
    Ok(Response::new(proto::ListSchedulesResponse { schedules }))
}

pub(super) async fn pause_schedule<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ScheduleRequest>,
) -> Result<Response<proto::ScheduleStatus>, Status> {
    api.change_schedule(request, "pause_schedule").await
}

pub(super) async fn resume_schedule<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ScheduleRequest>,
) -> Result<Response<proto::ScheduleStatus>, Status> {
    api.change_schedule(request, "resume_schedule").await
}

pub(super) async fn delete_schedule<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ScheduleRequest>,
) -> Result<Response<proto::ScheduleStatus>, Status> {
    api.change_schedule(request, "delete_schedule").await
}

pub(super) async fn submit_array<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::SubmitArrayRequest>,
) -> Result<Response<proto::ArrayStatus>, Status> {
    let p = api.principal(&request, "submit_array").await?;
    let peer = request.remote_addr();
    let r = request.into_inner();
    let checked = api.submittable(&p, r.spec).and_then(|spec| {
        if r.count == 0 || r.count > MAX_ARRAY {
            return Err(invalid(
                "count",
                format!("must be 1 to {MAX_ARRAY}, got {}", r.count),
            ));
        }
        if r.concurrency > hodei_core::MAX_CONCURRENCY_LIMIT {
            return Err(invalid(
                "concurrency",
                format!(
                    "must be 0 (no limit) to {}, got {}",
                    hodei_core::MAX_CONCURRENCY_LIMIT,
                    r.concurrency
                ),
            ));
        }
        if spec.idempotency_key.is_some() {
            return Err(invalid(
                "spec.idempotency_key",
                "set by the array for each of its tasks",
            ));
        }
        if r.concurrency > 0 && spec.concurrency.is_some() {
            return Err(invalid(
                "spec.concurrency",
                "an array with a concurrency limit sets its tasks' key",
            ));
        }
        Ok(spec)
    });
    let spec = match checked {
        Ok(s) => s,
        Err(e) => {
            api.audit
                .call(&p, "submit_array", "", peer, &Err::<(), _>(e.clone()))
                .await;
            return Err(e);
        }
    };
    let detail = format!(
        "tenant {} name {:?} count {} concurrency {}",
        spec.tenant, spec.name, r.count, r.concurrency
    );
    let limit = (r.concurrency > 0).then_some(r.concurrency);
    let res = api
        .arrays
        .submit(spec, r.count, limit)
        .await
        .map_err(array_status);
    let target = res.as_ref().map(|s| s.array_id.clone()).unwrap_or_default();
    api.audit_created(&p, "submit_array", target, peer, detail, &res)
        .await;
    res.map(Response::new)
}

pub(super) async fn get_array<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::GetArrayRequest>,
) -> Result<Response<proto::ArrayStatus>, Status> {
    let p = api.principal(&request, "read").await?;
    let (id, _) = api.visible_array(&p, &request.get_ref().array_id).await?;
    api.arrays
        .status(id)
        .await
        .map(Response::new)
        .map_err(array_status)
}

pub(super) async fn cancel_array<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::CancelArrayRequest>,
) -> Result<Response<proto::ArrayStatus>, Status> {
    let p = api.principal(&request, "cancel_array").await?;
    let peer = request.remote_addr();
    let id = request.into_inner().array_id;
    let r = async {
        let (id, tenant) = api.visible_array(&p, &id).await?;
        may_cancel(&p, &tenant)?;
        api.arrays.cancel(id).await.map_err(array_status)
    }
    .await;
    api.audit.call(&p, "cancel_array", &id, peer, &r).await;
    r.map(Response::new)
}

pub(super) async fn submit_pipeline<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::SubmitPipelineRequest>,
) -> Result<Response<proto::PipelineStatus>, Status> {
    let p = api.principal(&request, "submit_pipeline").await?;
    let peer = request.remote_addr();
    let checked = workflow_submittable(
        &p,
        "pipeline",
        request.into_inner().pipeline,
        |w| !w.tenant.is_empty(),
        pipeline_from_wire,
        |(s, _)| &s.tenant,
    );
    let (spec, graph) = match checked {
        Ok(s) => s,
        Err(e) => {
            api.audit
                .call(&p, "submit_pipeline", "", peer, &Err::<(), _>(e.clone()))
                .await;
            return Err(e);
        }
    };
    let detail = format!(
        "tenant {} name {:?} steps {}",
        spec.tenant,
        spec.name,
        spec.steps.len()
    );
    let r = api
        .pipelines
        .submit(spec, graph)
        .await
        .map_err(pipeline_status);
    let target = r
        .as_ref()
        .map(|s| s.pipeline_id.clone())
        .unwrap_or_default();
    api.audit_created(&p, "submit_pipeline", target, peer, detail, &r)
        .await;
    r.map(Response::new)
}

pub(super) async fn get_pipeline<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::GetPipelineRequest>,
) -> Result<Response<proto::PipelineStatus>, Status> {
    let p = api.principal(&request, "read").await?;
    let r = request.into_inner();
    let (id, _) = api.visible_pipeline(&p, &r.pipeline_id).await?;
    api.pipelines
        .status(id, r.summary)
        .await
        .map(Response::new)
        .map_err(pipeline_status)
}

pub(super) async fn list_pipelines<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::ListPipelinesRequest>,
) -> Result<Response<proto::ListPipelinesResponse>, Status> {
    let p = api.principal(&request, "read").await?;
    let r = request.into_inner();
    let asked = asked_tenant(&p, &r.tenant)?;
    let pipelines = api
        .pipelines
        .list(|t| p.may_access(t) && asked.as_ref().is_none_or(|a| a == t))
        .await
        .map_err(pipeline_status)?;
    Ok(Response::new(proto::ListPipelinesResponse { pipelines }))
}

pub(super) async fn cancel_pipeline<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::CancelPipelineRequest>,
) -> Result<Response<proto::PipelineStatus>, Status> {
    let p = api.principal(&request, "cancel_pipeline").await?;
    let peer = request.remote_addr();
    let id = request.into_inner().pipeline_id;
    let r = async {
        let (id, tenant) = api.visible_pipeline(&p, &id).await?;
        may_cancel(&p, &tenant)?;
        api.pipelines.cancel(id).await.map_err(pipeline_status)
    }
    .await;
    api.audit.call(&p, "cancel_pipeline", &id, peer, &r).await;
    r.map(Response::new)
}

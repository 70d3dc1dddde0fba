//! `JobService`: the API clients call.

use std::sync::Arc;

use hodei_core::{Event, FieldError, JobId, Lifecycle, RecvError, Subscriber, TenantId, WorkerId};
use hodei_store::{JobFilter, LogCursor, Store};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::proto;
use crate::server::engine::{EngineError, EngineHandle};
use crate::server::grpc::limits::Limits;
use crate::server::security::Security;
use crate::server::security::audit_log::AuditLog;
use crate::server::security::auth::{Principal, Role, Scope};
use crate::server::workflows::arrays::{ArrayError, Arrays, MAX_ARRAY};
use crate::server::workflows::pipelines::{PipelineError, Pipelines};
use crate::server::workflows::schedules::{ScheduleError, Schedules};
use crate::wire::{
    job_to_wire, log_stream_to_wire, pipeline_from_wire, schedule_from_wire, spec_from_wire,
    state_kind_from_wire, state_to_wire, worker_to_wire,
};

const STREAM_DEPTH: usize = 256;
const LOG_PAGE: usize = 256;

/// The job API service.
#[derive(Debug)]
pub struct JobApi<S: Store> {
    engine: EngineHandle<S>,
    security: Arc<Security<S>>,
    audit: Arc<AuditLog<S>>,
    limits: Arc<Limits>,
    stopping: watch::Receiver<bool>,
    pipelines: Pipelines<S>,
    arrays: Arrays<S>,
    schedules: Schedules<S>,
}

impl<S: Store> JobApi<S> {
    /// The service, on `engine`, for clients `security` authenticates,
    /// each within `limits`; what they change is recorded in `audit`.
    /// When `stopping` turns true, Watch and Logs streams end with
    /// UNAVAILABLE, and the task driving pipelines stops. Starts that
    /// task: call it within a Tokio runtime.
    pub fn new(
        engine: EngineHandle<S>,
        security: Arc<Security<S>>,
        audit: Arc<AuditLog<S>>,
        limits: Arc<Limits>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        JobApi {
            pipelines: Pipelines::start(engine.clone(), stopping.clone()),
            arrays: Arrays::start(engine.clone(), stopping.clone()),
            schedules: Schedules::start(engine.clone(), stopping.clone()),
            engine,
            security,
            audit,
            limits,
            stopping,
        }
    }
}

/// The next bus event for a stream's task, or `None` when the task should
/// end: its client went away, or the server is stopping (the client is told
/// so first).
async fn next_event<T>(
    sub: &mut Subscriber<Event>,
    stopping: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<Result<T, Status>>,
) -> Option<Result<Arc<Event>, RecvError>> {
    let next = tokio::select! {
        r = sub.recv() => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
        _ = tx.closed() => return None,
    };
    if next.is_none() {
        let _ = tx
            .send(Err(Status::unavailable("the server is shutting down")))
            .await;
    }
    next
}

/// INVALID_ARGUMENT naming the field. `why` may quote what the client
/// sent: it goes through the one bounded field-error text.
fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(FieldError::join(&[FieldError {
        field: field.to_string(),
        message: why.to_string(),
    }]))
}

/// A workflow `p` sends (`field`: a pipeline, a schedule), if `p` may:
/// its role checked, the message converted in `p`'s tenant when it names
/// none (by `convert`, which checks it whole), refused in a tenant `p`
/// may not submit to.
fn workflow_submittable<W, T>(
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
fn asked_tenant(p: &Principal, tenant: &str) -> Result<Option<TenantId>, Status> {
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
fn may_cancel(p: &Principal, tenant: &TenantId) -> Result<(), Status> {
    if p.may_cancel(tenant) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "cancelling needs a submitter, operator or admin token; this one is {}",
            p.role
        )))
    }
}

fn pipeline_status(e: PipelineError) -> Status {
    match e {
        PipelineError::NotFound(id) => Status::not_found(format!("pipeline {id} not found")),
        PipelineError::Ended(id, state) => {
            Status::failed_precondition(format!("pipeline {id} has already ended ({state})"))
        }
        PipelineError::Stopped => Status::unavailable("the server is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

fn array_status(e: ArrayError) -> Status {
    match e {
        ArrayError::NotFound(id) => Status::not_found(format!("array {id} not found")),
        ArrayError::Stopped => Status::unavailable("the server is shutting down"),
        ArrayError::Create(why) => Status::unavailable(format!(
            "a task could not be created ({why}); the rest are created at the next start"
        )),
        other => Status::internal(other.to_string()),
    }
}

fn schedule_status(e: ScheduleError) -> Status {
    match e {
        ScheduleError::NotFound(id) => Status::not_found(format!("schedule {id} not found")),
        ScheduleError::Stopped => Status::unavailable("the server is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::UnknownDependency(d) => {
            invalid("spec.dependencies", format!("{d} is not a known job"))
        }
        EngineError::Sched(hodei_sched::SchedError::UnknownJob(j)) => {
            Status::failed_precondition(format!("job {j} has already finished"))
        }
        EngineError::Sched(hodei_sched::SchedError::Cluster(c)) => Status::not_found(c.to_string()),
        EngineError::Stopped => Status::unavailable("the server is shutting down"),
        other => Status::internal(other.to_string()),
    }
}

impl<S: Store> JobApi<S> {
    /// The spec a submission carries, if `p` may submit it.
    fn submittable(
        &self,
        p: &Principal,
        wire: Option<proto::JobSpec>,
    ) -> Result<hodei_core::JobSpec, Status> {
        if !matches!(p.role, Role::Admin | Role::Submitter) {
            return Err(Status::permission_denied(format!(
                "submitting needs a submitter or admin token; this one is {}",
                p.role
            )));
        }
        let wire = wire.ok_or_else(|| invalid("spec", "must be set"))?;
        let spec = match p.default_tenant() {
            Some(t) => spec_from_wire(wire, &t)?,
            None if wire.tenant.is_empty() => {
                return Err(invalid(
                    "spec.tenant",
                    "this token spans several tenants: name one",
                ));
            }
            None => spec_from_wire(wire, &TenantId::default())?,
        };
        if !p.may_submit(&spec.tenant) {
            return Err(Status::permission_denied(format!(
                "spec.tenant: this token may not submit for tenant {}",
                spec.tenant
            )));
        }
        Ok(spec)
    }

    async fn cancel_as(&self, p: &Principal, id: &str) -> Result<Response<proto::Job>, Status> {
        let job = self.visible(p, "job_id", id).await?;
        may_cancel(p, &job.spec.tenant)?;
        if job.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "job {} has already finished ({})",
                job.id, job.state
            )));
        }
        self.engine.cancel(job.id).await.map_err(engine_status)?;
        let job = self.visible(p, "job_id", &job.id.to_string()).await?;
        Ok(Response::new(job_to_wire(&job)))
    }

    async fn drain_as(&self, p: &Principal, id: &str) -> Result<Response<proto::Worker>, Status> {
        if !p.may_drain() {
            return Err(Status::permission_denied(format!(
                "draining a worker needs an operator or admin token; this one is {}",
                p.role
            )));
        }
        let id: WorkerId = id.parse().map_err(|e| invalid("worker_id", e))?;
        self.engine.drain(id).await.map_err(engine_status)?;
        let w = self
            .engine
            .cluster()
            .worker(id)
            .ok_or_else(|| Status::not_found(format!("worker {id} not found")))?;
        let name = self.engine.worker_name(w.id);
        Ok(Response::new(worker_to_wire(w, name)))
    }

    /// Who is calling (for the HTTP API's own reads), within its request
    /// rate; a refused authentication is recorded in the audit trail.
    pub(crate) async fn caller<T>(
        &self,
        r: &Request<T>,
        action: &str,
    ) -> Result<Principal, Status> {
        self.principal(r, action).await
    }

    /// The engine the service runs on.
    pub(crate) fn engine(&self) -> &EngineHandle<S> {
        &self.engine
    }

    /// Who is calling, within its request rate; a refused authentication
    /// is recorded in the audit trail.
    async fn principal<T>(&self, r: &Request<T>, action: &str) -> Result<Principal, Status> {
        match self.security.authenticate_client(r.metadata()) {
            Ok(p) => {
                self.limits.request(&p.name)?;
                Ok(p)
            }
            Err(e) => {
                self.audit.refused(action, r.remote_addr(), &e).await;
                Err(e.into())
            }
        }
    }

    /// Records a creation (a pipeline, an array, a schedule) in the audit
    /// trail: what was made, or why it was refused.
    async fn audit_created<T>(
        &self,
        p: &Principal,
        action: &str,
        target: String,
        peer: Option<std::net::SocketAddr>,
        detail: String,
        r: &Result<T, Status>,
    ) {
        let mut entry = AuditLog::<S>::entry(&p.audit_name(), action, target, peer);
        entry.detail = detail;
        entry.outcome = match r {
            Ok(_) => "ok".into(),
            Err(e) => format!("refused: {}", e.message()),
        };
        self.engine.audit(entry).await;
    }

    /// A pipeline's id and tenant, if it exists and the caller may see it;
    /// otherwise NOT_FOUND (as for another tenant's job).
    async fn visible_pipeline(&self, p: &Principal, id: &str) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("pipeline_id", e))?;
        match self.pipelines.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("pipeline {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// An array's id and tenant, if it exists and the caller may see it;
    /// otherwise NOT_FOUND.
    async fn visible_array(&self, p: &Principal, id: &str) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("array_id", e))?;
        match self.arrays.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("array {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// A schedule's id and tenant, if it exists and the caller may see it;
    /// otherwise NOT_FOUND.
    async fn visible_schedule(&self, p: &Principal, id: &str) -> Result<(JobId, TenantId), Status> {
        let id: JobId = id.parse().map_err(|e| invalid("schedule_id", e))?;
        match self.schedules.tenant(id).await {
            Ok(Some(t)) if p.may_access(&t) => Ok((id, t)),
            Ok(_) => Err(Status::not_found(format!("schedule {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// Pauses, resumes or deletes a schedule the caller may change.
    async fn change_schedule(
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

    /// The job, if it exists and the caller may see it; otherwise NOT_FOUND
    /// (another tenant's job is not acknowledged to exist).
    async fn visible(
        &self,
        p: &Principal,
        field: &str,
        id: &str,
    ) -> Result<hodei_core::Job, Status> {
        let id: JobId = id.parse().map_err(|e| invalid(field, e))?;
        match self.engine.store().get_job(id).await {
            Ok(Some(j)) if p.may_access(&j.spec.tenant) => Ok(j),
            Ok(_) => Err(Status::not_found(format!("job {id} not found"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl<S: Store> proto::job_service_server::JobService for JobApi<S> {
    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        let p = self.principal(&request, "create_schedule").await?;
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
                self.audit
                    .call(&p, "create_schedule", "", peer, &Err::<(), _>(e.clone()))
                    .await;
                return Err(e);
            }
        };
        let detail = format!(
            "tenant {} name {:?} cron {:?} timezone {}",
            spec.tenant, spec.name, spec.cron, spec.timezone
        );
        let r = self
            .schedules
            .create(spec, cron)
            .await
            .map_err(schedule_status);
        let target = r
            .as_ref()
            .map(|s| s.schedule_id.clone())
            .unwrap_or_default();
        self.audit_created(&p, "create_schedule", target, peer, detail, &r)
            .await;
        r.map(Response::new)
    }

    async fn get_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        let p = self.principal(&request, "read").await?;
        let (id, _) = self
            .visible_schedule(&p, &request.get_ref().schedule_id)
            .await?;
        self.schedules
            .get(id)
            .await
            .map(Response::new)
            .map_err(schedule_status)
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let p = self.principal(&request, "read").await?;
        let r = request.into_inner();
        let asked = asked_tenant(&p, &r.tenant)?;
        let schedules = self
            .schedules
            .list(|t| {
                t.parse::<TenantId>()
                    .is_ok_and(|t| p.may_access(&t) && asked.as_ref().is_none_or(|a| *a == t))
            })
            .await
            .map_err(schedule_status)?;
        Ok(Response::new(proto::ListSchedulesResponse { schedules }))
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        self.change_schedule(request, "pause_schedule").await
    }

    async fn resume_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        self.change_schedule(request, "resume_schedule").await
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        self.change_schedule(request, "delete_schedule").await
    }

    async fn submit_array(
        &self,
        request: Request<proto::SubmitArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        let p = self.principal(&request, "submit_array").await?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let checked = self.submittable(&p, r.spec).and_then(|spec| {
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
                self.audit
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
        let res = self
            .arrays
            .submit(spec, r.count, limit)
            .await
            .map_err(array_status);
        let target = res.as_ref().map(|s| s.array_id.clone()).unwrap_or_default();
        self.audit_created(&p, "submit_array", target, peer, detail, &res)
            .await;
        res.map(Response::new)
    }

    async fn get_array(
        &self,
        request: Request<proto::GetArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        let p = self.principal(&request, "read").await?;
        let (id, _) = self.visible_array(&p, &request.get_ref().array_id).await?;
        self.arrays
            .status(id)
            .await
            .map(Response::new)
            .map_err(array_status)
    }

    async fn cancel_array(
        &self,
        request: Request<proto::CancelArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        let p = self.principal(&request, "cancel_array").await?;
        let peer = request.remote_addr();
        let id = request.into_inner().array_id;
        let r = async {
            let (id, tenant) = self.visible_array(&p, &id).await?;
            may_cancel(&p, &tenant)?;
            self.arrays.cancel(id).await.map_err(array_status)
        }
        .await;
        self.audit.call(&p, "cancel_array", &id, peer, &r).await;
        r.map(Response::new)
    }

    async fn submit_pipeline(
        &self,
        request: Request<proto::SubmitPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        let p = self.principal(&request, "submit_pipeline").await?;
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
                self.audit
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
        let r = self
            .pipelines
            .submit(spec, graph)
            .await
            .map_err(pipeline_status);
        let target = r
            .as_ref()
            .map(|s| s.pipeline_id.clone())
            .unwrap_or_default();
        self.audit_created(&p, "submit_pipeline", target, peer, detail, &r)
            .await;
        r.map(Response::new)
    }

    async fn get_pipeline(
        &self,
        request: Request<proto::GetPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        let p = self.principal(&request, "read").await?;
        let r = request.into_inner();
        let (id, _) = self.visible_pipeline(&p, &r.pipeline_id).await?;
        self.pipelines
            .status(id, r.summary)
            .await
            .map(Response::new)
            .map_err(pipeline_status)
    }

    async fn list_pipelines(
        &self,
        request: Request<proto::ListPipelinesRequest>,
    ) -> Result<Response<proto::ListPipelinesResponse>, Status> {
        let p = self.principal(&request, "read").await?;
        let r = request.into_inner();
        let asked = asked_tenant(&p, &r.tenant)?;
        let pipelines = self
            .pipelines
            .list(|t| p.may_access(t) && asked.as_ref().is_none_or(|a| a == t))
            .await
            .map_err(pipeline_status)?;
        Ok(Response::new(proto::ListPipelinesResponse { pipelines }))
    }

    async fn cancel_pipeline(
        &self,
        request: Request<proto::CancelPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        let p = self.principal(&request, "cancel_pipeline").await?;
        let peer = request.remote_addr();
        let id = request.into_inner().pipeline_id;
        let r = async {
            let (id, tenant) = self.visible_pipeline(&p, &id).await?;
            may_cancel(&p, &tenant)?;
            self.pipelines.cancel(id).await.map_err(pipeline_status)
        }
        .await;
        self.audit.call(&p, "cancel_pipeline", &id, peer, &r).await;
        r.map(Response::new)
    }

    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        let p = self.principal(&request, "submit").await?;
        let peer = request.remote_addr();
        let checked = self.submittable(&p, request.into_inner().spec);
        let spec = match checked {
            Ok(s) => s,
            Err(e) => {
                self.audit
                    .call(&p, "submit", "", peer, &Err::<(), _>(e.clone()))
                    .await;
                return Err(e);
            }
        };
        let mut entry = AuditLog::<S>::entry(&p.audit_name(), "submit", "", peer);
        entry.detail = format!("tenant {} name {:?}", spec.tenant, spec.name);
        let (job, created) = self
            .engine
            .submit_audited(spec, Some(entry))
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::SubmitResponse {
            job: Some(job_to_wire(&job)),
            created,
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let p = self.principal(&request, "read").await?;
        let job = self
            .visible(&p, "job_id", &request.get_ref().job_id)
            .await?;
        Ok(Response::new(job_to_wire(&job)))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let p = self.principal(&request, "read").await?;
        let r = request.into_inner();
        let tenant = match (&p.scope, asked_tenant(&p, &r.tenant)?) {
            (_, Some(t)) => Some(t),
            (Scope::All, None) => None,
            (Scope::Tenants(ts), None) if ts.len() == 1 => Some(ts[0].clone()),
            (Scope::Tenants(_), None) => {
                return Err(invalid(
                    "tenant",
                    "this token spans several tenants: name one",
                ));
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(r.page_token.parse().map_err(|e| invalid("page_token", e))?)
        };
        if r.page_size > 1000 {
            return Err(invalid("page_size", "at most 1000"));
        }
        let page = self
            .engine
            .store()
            .list_jobs(JobFilter {
                state: state_kind_from_wire(r.state)?,
                tenant,
                after,
                limit: r.page_size as usize,
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ListResponse {
            jobs: page.jobs.iter().map(job_to_wire).collect(),
            next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let p = self.principal(&request, "cancel").await?;
        let peer = request.remote_addr();
        let target = request.get_ref().job_id.clone();
        let r = self.cancel_as(&p, &target).await;
        self.audit.call(&p, "cancel", &target, peer, &r).await;
        r
    }

    type WatchStream = ReceiverStream<Result<proto::JobEvent, Status>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let p = self.principal(&request, "read").await?;
        let permit = self.limits.stream(&p.name)?;
        let r = request.into_inner();
        // Subscribe before reading the current state, so nothing between
        // the two is missed.
        let mut sub = match r.from_seq {
            Some(seq) => self.engine.bus().subscribe_from(seq),
            None => self.engine.bus().subscribe(),
        };
        // Watching one job: the stream ends (OK) once it is final. Read
        // once, after subscribing, so nothing between the two is missed.
        let watched = if r.job_id.is_empty() {
            None
        } else {
            Some(self.visible(&p, "job_id", &r.job_id).await?)
        };
        let only: Option<(JobId, u32)> =
            watched.as_ref().map(|j| (j.id, j.spec.retry.max_attempts));
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        if let Some(job) = watched {
            if r.include_current {
                let now = state_to_wire(&job.state);
                let _ = tx
                    .send(Ok(proto::JobEvent {
                        job_id: job.id.to_string(),
                        from: Some(now.clone()),
                        to: Some(now),
                        attempt: job.attempt,
                        at_ms: job.updated_at.as_millis(),
                        seq: 0,
                    }))
                    .await;
            }
            if job.is_terminal() && r.from_seq.is_none() {
                return Ok(Response::new(ReceiverStream::new(rx)));
            }
        }
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // Counted against its caller while the stream is open.
            let _permit = permit;
            loop {
                let Some(next) = next_event(&mut sub, &mut stopping, &tx).await else {
                    return;
                };
                let (seq, event) = match next {
                    Ok(e) => (sub.position() - 1, e),
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watch fell {n} events behind; resume with Get and watch again"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if let Event::JobChanged {
                    job,
                    tenant,
                    from,
                    to,
                    attempt,
                    at,
                } = &*event
                    && only.is_none_or(|(o, _)| o == *job)
                    && p.may_access(tenant)
                {
                    let last = only.is_some_and(|(_, max_attempts)| {
                        Lifecycle {
                            id: *job,
                            state: *to,
                            attempt: *attempt,
                            max_attempts,
                        }
                        .is_terminal()
                    });
                    let e = proto::JobEvent {
                        job_id: job.to_string(),
                        from: Some(state_to_wire(from)),
                        to: Some(state_to_wire(to)),
                        attempt: *attempt,
                        at_ms: at.as_millis(),
                        seq,
                    };
                    // A full queue means a slow client: it waits, and the
                    // bus tells us if it falls too far behind.
                    if tx.send(Ok(e)).await.is_err() || last {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type LogsStream = ReceiverStream<Result<proto::LogChunk, Status>>;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let p = self.principal(&request, "read").await?;
        let permit = self.limits.stream(&p.name)?;
        let r = request.into_inner();
        let mut sub = self.engine.bus().subscribe();
        let job = self.visible(&p, "job_id", &r.job_id).await?;
        let store = Arc::clone(self.engine.store());
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // Counted against its caller while the stream is open.
            let _permit = permit;
            let id = job.id;
            let mut cursor = LogCursor {
                attempt: r.from_attempt,
                seq: r.from_seq,
            };
            loop {
                // Everything stored from the cursor on.
                loop {
                    let page = match store.read_logs(id, cursor, LOG_PAGE).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    };
                    let n = page.entries.len();
                    for e in page.entries {
                        cursor = LogCursor {
                            attempt: e.cursor.attempt,
                            seq: e.cursor.seq + 1,
                        };
                        let c = proto::LogChunk {
                            attempt: e.cursor.attempt,
                            seq: e.cursor.seq,
                            stream: log_stream_to_wire(e.chunk.stream),
                            at_ms: e.chunk.at.as_millis(),
                            data: e.chunk.data,
                            truncated_bytes: page.truncated_bytes,
                        };
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    if n < LOG_PAGE {
                        break;
                    }
                }
                if !r.follow {
                    return;
                }
                match store.get_job(id).await {
                    Ok(Some(j)) if j.is_terminal() => {
                        // One more read catches batches stored after the
                        // last one above; then the log is complete.
                        if let Ok(page) = store.read_logs(id, cursor, 1).await
                            && page.entries.is_empty()
                        {
                            return;
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
                // Wait for this job's next batch or state change.
                loop {
                    let Some(next) = next_event(&mut sub, &mut stopping, &tx).await else {
                        return;
                    };
                    match next {
                        Ok(e) => match &*e {
                            Event::LogAppended { job, .. } | Event::JobChanged { job, .. }
                                if *job == id =>
                            {
                                break;
                            }
                            _ => {}
                        },
                        // Missed events: the store is the truth; read again.
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workers(
        &self,
        request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let p = self.principal(&request, "read").await?;
        let mut workers = Vec::new();
        for mut w in self.engine.cluster().workers() {
            // A tenant sees which of its own jobs run where, never another
            // tenant's job ids.
            if !p.is_admin() {
                let mut own = Vec::with_capacity(w.jobs.len());
                for id in w.jobs {
                    match self.engine.store().get_job(id).await {
                        Ok(Some(j)) if p.may_access(&j.spec.tenant) => own.push(id),
                        Ok(_) => {}
                        Err(e) => return Err(Status::internal(e.to_string())),
                    }
                }
                w.jobs = own;
            }
            let name = self.engine.worker_name(w.id);
            workers.push(worker_to_wire(w, name));
        }
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn drain_worker(
        &self,
        request: Request<proto::DrainWorkerRequest>,
    ) -> Result<Response<proto::Worker>, Status> {
        let p = self.principal(&request, "drain").await?;
        let peer = request.remote_addr();
        let target = request.get_ref().worker_id.clone();
        let r = self.drain_as(&p, &target).await;
        self.audit.call(&p, "drain", &target, peer, &r).await;
        r
    }
}

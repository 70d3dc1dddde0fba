//! `JobService`: the API clients call. Jobs and workers are answered
//! here; pipelines, arrays and schedules in `workflows.rs`; the Watch and
//! Logs streams in `streams.rs`.

mod streams;
mod workflows;

use std::sync::Arc;

use hodei_core::{FieldError, JobId, TenantId, WorkerId};
use hodei_store::{JobFilter, Store};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use self::workflows::{asked_tenant, may_cancel};
use crate::proto;
use crate::server::engine::{EngineError, EngineHandle};
use crate::server::grpc::limits::Limits;
use crate::server::security::Security;
use crate::server::security::audit_log::AuditLog;
use crate::server::security::auth::{Principal, Role, Scope};
use crate::server::workflows::arrays::Arrays;
use crate::server::workflows::pipelines::Pipelines;
use crate::server::workflows::schedules::Schedules;
use crate::wire::{job_to_wire, spec_from_wire, state_kind_from_wire, worker_to_wire};

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

/// INVALID_ARGUMENT naming the field. `why` may quote what the client
/// sent: it goes through the one bounded field-error text.
fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(FieldError::join(&[FieldError {
        field: field.to_string(),
        message: why.to_string(),
    }]))
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
        workflows::create_schedule(self, request).await
    }

    async fn get_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        workflows::get_schedule(self, request).await
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        workflows::list_schedules(self, request).await
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        workflows::pause_schedule(self, request).await
    }

    async fn resume_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        workflows::resume_schedule(self, request).await
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::ScheduleRequest>,
    ) -> Result<Response<proto::ScheduleStatus>, Status> {
        workflows::delete_schedule(self, request).await
    }

    async fn submit_array(
        &self,
        request: Request<proto::SubmitArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        workflows::submit_array(self, request).await
    }

    async fn get_array(
        &self,
        request: Request<proto::GetArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        workflows::get_array(self, request).await
    }

    async fn cancel_array(
        &self,
        request: Request<proto::CancelArrayRequest>,
    ) -> Result<Response<proto::ArrayStatus>, Status> {
        workflows::cancel_array(self, request).await
    }

    async fn submit_pipeline(
        &self,
        request: Request<proto::SubmitPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        workflows::submit_pipeline(self, request).await
    }

    async fn get_pipeline(
        &self,
        request: Request<proto::GetPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        workflows::get_pipeline(self, request).await
    }

    async fn list_pipelines(
        &self,
        request: Request<proto::ListPipelinesRequest>,
    ) -> Result<Response<proto::ListPipelinesResponse>, Status> {
        workflows::list_pipelines(self, request).await
    }

    async fn cancel_pipeline(
        &self,
        request: Request<proto::CancelPipelineRequest>,
    ) -> Result<Response<proto::PipelineStatus>, Status> {
        workflows::cancel_pipeline(self, request).await
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
        streams::watch(self, request).await
    }

    type LogsStream = ReceiverStream<Result<proto::LogChunk, Status>>;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        streams::logs(self, request).await
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

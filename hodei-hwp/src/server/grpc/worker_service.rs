//! `WorkerService.Connect`: one bidirectional stream per agent.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use hodei_core::{Clock, Event, ExitStatus, JobId, SystemClock, Timestamp, WorkerId};
use hodei_sched::Telemetry;
use hodei_store::{LogChunk, LogStream, Store};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::server::engine::{AgentLink, EngineHandle, ToAgent};
use crate::server::security::audit_log::AuditLog;
use crate::server::security::auth::AuthError;
use crate::server::security::pki::peer_cert;
use crate::server::security::{Cut, Security, SecurityError};
use crate::wire::{exit_from_wire, log_stream_from_wire, registration_from_wire, to_agent_wire};

/// The sending half of an agent's stream; an `Err` ends the stream with
/// that status.
type AgentSender = mpsc::Sender<Result<proto::ServerMessage, Status>>;

/// The engine's messages for one agent, encoded onto its stream.
struct WireLink(AgentSender);

impl AgentLink for WireLink {
    fn try_send(&self, m: ToAgent) -> bool {
        self.0.try_send(to_agent_wire(m)).is_ok()
    }
}
use crate::proto::{self, agent_message::Msg as In, server_message::Msg as Out};

/// The longest log batch accepted.
pub const MAX_LOG_BATCH: usize = 4 * 1024 * 1024;
const REGISTER_WITHIN: Duration = Duration::from_secs(10);

/// The worker stream service.
#[derive(Debug)]
pub struct WorkerApi<S: Store> {
    engine: EngineHandle<S>,
    security: Arc<Security<S>>,
    audit: Arc<AuditLog<S>>,
    queue_depth: usize,
    stopping: watch::Receiver<bool>,
}

impl<S: Store> WorkerApi<S> {
    /// The service, on `engine`, admitting agents by their client
    /// certificate (over TLS) or their join token (plaintext), as
    /// `security` says. When `stopping` turns true, every agent stream
    /// stops reading.
    pub fn new(
        engine: EngineHandle<S>,
        security: Arc<Security<S>>,
        audit: Arc<AuditLog<S>>,
        queue_depth: usize,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        WorkerApi {
            engine,
            security,
            audit,
            queue_depth,
            stopping,
        }
    }

    /// [`certified_now`](Self::certified_now), with a refusal recorded in
    /// the audit trail.
    async fn certified<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<Option<WorkerId>, Status> {
        let r = self.certified_now(request);
        if let Err(s) = &r {
            let mut e = AuditLog::<S>::entry("agent", action, "", request.remote_addr());
            e.outcome = format!("refused: {:?}: {}", s.code(), s.message());
            if s.code() == tonic::Code::PermissionDenied {
                self.audit.record(e).await;
            } else {
                self.audit
                    .refused(action, request.remote_addr(), &AuthError::Unknown)
                    .await;
            }
        }
        r
    }

    /// Who the caller's client certificate names, refusing a revoked
    /// worker. `None` when the server serves plaintext.
    fn certified_now<T>(&self, request: &Request<T>) -> Result<Option<WorkerId>, Status> {
        if self.security.tls().is_none() {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "agents connect with their client certificate: start the agent once \
                 with a join token to get one",
            )
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let peer = peer_cert(leaf).map_err(Status::unauthenticated)?;
        if self.security.is_revoked(peer.worker) {
            return Err(Status::permission_denied(format!(
                "worker {} is revoked",
                peer.worker
            )));
        }
        Ok(Some(peer.worker))
    }

    fn issued(&self, worker: WorkerId, csr: &str) -> Result<proto::Certificate, Status> {
        if csr.len() > MAX_CSR {
            return Err(invalid("csr_pem", format!("at most {MAX_CSR} bytes")));
        }
        let issued = self.security.sign(csr, worker).map_err(|e| match e {
            SecurityError::NoTls => Status::failed_precondition(e.to_string()),
            e => Status::invalid_argument(e.to_string()),
        })?;
        let ca = self
            .security
            .tls()
            .map(|t| t.pki().ca_pem().to_string())
            .unwrap_or_default();
        Ok(proto::Certificate {
            worker_id: worker.to_string(),
            certificate_pem: issued.chain_pem,
            ca_pem: ca,
            expires_at_ms: issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            serial: issued.serial,
        })
    }
}

/// The longest certificate request accepted, bytes.
const MAX_CSR: usize = 16 * 1024;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn job_id(field: &str, s: &str) -> Result<JobId, Status> {
    s.parse().map_err(|e| invalid(field, e))
}

/// An agent's outputs obey what its own parser allows: names of
/// environment variables, at most [`hodei_core::MAX_OUTPUT_BYTES`] in all.
fn check_outputs(o: &std::collections::BTreeMap<String, String>) -> Result<(), Status> {
    let size: usize = o.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if size > hodei_core::MAX_OUTPUT_BYTES {
        return Err(invalid(
            "job_finished.outputs",
            format!(
                "{size} bytes, over the limit of {}",
                hodei_core::MAX_OUTPUT_BYTES
            ),
        ));
    }
    let text: String = o.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if o.values().any(|v| v.contains(['\n', '\r'])) {
        return Err(invalid("job_finished.outputs", "a value spans lines"));
    }
    hodei_core::parse_outputs(text.as_bytes())
        .map(|_| ())
        .map_err(|e| invalid("job_finished.outputs", e))
}

fn exit_status(e: Option<proto::ExitStatus>) -> Result<ExitStatus, Status> {
    Ok(exit_from_wire(e, "job_finished.exit")?)
}

fn check_log_batch(b: &proto::LogBatch) -> Result<(JobId, LogStream), Status> {
    let job = job_id("log_batch.job_id", &b.job_id)?;
    if b.data.len() > MAX_LOG_BATCH {
        return Err(invalid(
            "log_batch.data",
            format!("at most {MAX_LOG_BATCH} bytes"),
        ));
    }
    let stream = log_stream_from_wire(b.stream, "log_batch.stream")?;
    Ok((job, stream))
}

/// The checks `WorkerService.Connect` makes on one agent message before it
/// touches any state (the same functions the service calls): field
/// formats, sizes, enums. What remains (fencing, the state machine) needs
/// the server's state. For fuzzing and for tools that relay messages.
///
/// # Errors
///
/// INVALID_ARGUMENT naming the field at fault.
pub fn check_agent_message(m: proto::AgentMessage) -> Result<(), Status> {
    match m.msg {
        None => Err(Status::invalid_argument("agent message: empty")),
        Some(In::Register(r)) => registration_from_wire(r).map(|_| ()).map_err(Status::from),
        Some(In::Heartbeat(_) | In::Ack(_) | In::Draining(_)) => Ok(()),
        Some(In::JobStarted(s)) => job_id("job_started.job_id", &s.job_id).map(|_| ()),
        Some(In::JobFinished(f)) => {
            job_id("job_finished.job_id", &f.job_id)?;
            exit_status(f.exit).map(|_| ())
        }
        Some(In::LogBatch(b)) => check_log_batch(&b).map(|_| ()),
    }
}

impl<S: Store> WorkerApi<S> {
    /// Handles one message after Register. An error ends the stream.
    async fn handle(&self, worker: WorkerId, tx: &AgentSender, m: In) -> Result<(), Status> {
        match m {
            In::Register(_) => Err(Status::failed_precondition(
                "register: already registered on this stream",
            )),
            In::Heartbeat(h) => {
                let t = Telemetry {
                    cpu_percent: if h.cpu_percent.is_finite() {
                        h.cpu_percent
                    } else {
                        0.0
                    },
                    memory_used_mb: h.memory_used_mb,
                    load_1m: if h.load_1m.is_finite() {
                        h.load_1m
                    } else {
                        0.0
                    },
                };
                self.engine
                    .metrics()
                    .heartbeats
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.engine
                    .cluster()
                    .heartbeat(worker, t, SystemClock.now())
                    .map_err(|e| Status::failed_precondition(e.to_string()))
            }
            In::JobStarted(s) => {
                let job = job_id("job_started.job_id", &s.job_id)?;
                self.engine
                    .started(worker, job, s.attempt)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))
            }
            In::JobFinished(mut f) => {
                let job = job_id("job_finished.job_id", &f.job_id)?;
                let exit = exit_status(f.exit)?;
                // Outputs are stored before the result is applied: a step
                // that succeeded has its outputs there for the steps after
                // it. Only the worker given the attempt may publish them.
                if !f.outputs.is_empty() {
                    let outputs: std::collections::BTreeMap<String, String> =
                        std::mem::take(&mut f.outputs).into_iter().collect();
                    check_outputs(&outputs)?;
                    self.assigned_here(worker, job, f.attempt).await?;
                    crate::server::workflows::pipelines::store_outputs(
                        &**self.engine.store(),
                        job,
                        f.attempt,
                        &outputs,
                    )
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                }
                let applied = self
                    .engine
                    .finished(worker, job, f.attempt, exit, f.timed_out, f.peak_memory_mb)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                // Acknowledged once stored, without holding up the stream:
                // the next messages are read while the engine applies it.
                let tx = tx.clone();
                tokio::spawn(async move {
                    if applied.wait().await.is_ok() {
                        let ack = proto::ServerMessage {
                            msg: Some(Out::ResultAck(proto::ResultAck {
                                job_id: f.job_id,
                                attempt: f.attempt,
                            })),
                        };
                        let _ = tx.send(Ok(ack)).await;
                    }
                });
                Ok(())
            }
            In::Draining(_) => self
                .engine
                .drain(worker)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string())),
            // Stored by the connection loop, which pipelines them.
            In::LogBatch(_) => Ok(()),
            In::Ack(_) => Ok(()),
        }
    }

    /// Refuses a report about an attempt not given to `worker`.
    async fn assigned_here(
        &self,
        worker: WorkerId,
        job: JobId,
        attempt: u32,
    ) -> Result<(), Status> {
        let attempts = self
            .engine
            .store()
            .attempts(job)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if attempts
            .iter()
            .any(|a| a.attempt == attempt && a.worker == worker)
        {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "job {job} attempt {attempt} is not assigned to this worker"
            )))
        }
    }

    /// Checks a log batch and returns the write that stores it; the write
    /// runs alongside the next ones, so they share commits.
    async fn log_write(
        &self,
        worker: WorkerId,
        fenced: &mut HashSet<(JobId, u32)>,
        b: proto::LogBatch,
    ) -> Result<PendingLog, Status> {
        let (job, stream) = check_log_batch(&b)?;
        // Fencing: only the worker that was given this attempt writes its
        // log. Checked once per attempt and connection.
        let store = Arc::clone(self.engine.store());
        if !fenced.contains(&(job, b.attempt)) {
            self.assigned_here(worker, job, b.attempt).await?;
            if fenced.len() >= MAX_FENCED {
                fenced.clear();
            }
            fenced.insert((job, b.attempt));
        }
        let bytes = b.data.len() as u64;
        let chunk = LogChunk {
            stream,
            at: Timestamp(b.at_ms),
            data: b.data,
        };
        let (attempt, seq, id) = (b.attempt, b.seq, b.job_id);
        Ok(Box::pin(async move {
            store
                .append_log(job, attempt, seq, chunk)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(StoredLog {
                job,
                id,
                attempt,
                seq,
                bytes,
            })
        }))
    }

    /// A batch is stored: count it, tell watchers, acknowledge it.
    async fn log_stored(&self, tx: &AgentSender, l: StoredLog) -> Result<(), Status> {
        let m = self.engine.metrics();
        m.log_bytes.fetch_add(l.bytes, Ordering::Relaxed);
        m.log_batches.fetch_add(1, Ordering::Relaxed);
        self.engine.bus().publish(Event::LogAppended {
            job: l.job,
            attempt: l.attempt,
            seq: l.seq,
            bytes: l.bytes,
        });
        let ack = proto::ServerMessage {
            msg: Some(Out::LogAck(proto::LogAck {
                job_id: l.id,
                attempt: l.attempt,
                seq: l.seq,
            })),
        };
        tx.send(Ok(ack))
            .await
            .map_err(|_| Status::cancelled("stream closed"))
    }
}

struct StoredLog {
    job: JobId,
    id: String,
    attempt: u32,
    seq: u64,
    bytes: u64,
}

type PendingLog = Pin<Box<dyn Future<Output = Result<StoredLog, Status>> + Send>>;

/// Log writes of one agent in flight at once; past it, its stream is read
/// no further until one completes (the agent's window then fills).
const LOG_WRITES_IN_FLIGHT: usize = 256;
/// Attempts whose fencing check is remembered per connection.
const MAX_FENCED: usize = 4096;

#[tonic::async_trait]
impl<S: Store> proto::worker_service_server::WorkerService for WorkerApi<S> {
    type ConnectStream = ReceiverStream<Result<proto::ServerMessage, Status>>;

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::Certificate>, Status> {
        if self.security.tls().is_none() {
            return Err(Status::failed_precondition(
                "this server serves plaintext: agents connect with the join token",
            ));
        }
        let peer = request.remote_addr();
        let token = match self.security.authenticate_join(request.metadata()) {
            Ok(id) => id,
            Err(e) => {
                self.audit.refused("worker join", peer, &e).await;
                return Err(e.into());
            }
        };
        let worker = WorkerId::new();
        let cert = self.issued(worker, &request.get_ref().csr_pem);
        let mut e =
            AuditLog::<S>::entry(&format!("join-token:{token}"), "worker join", worker, peer);
        e.outcome = crate::server::security::audit_log::outcome(&cert);
        e.detail = format!("name {:?}", request.get_ref().name);
        self.audit.record(e).await;
        let cert = cert?;
        tracing::info!(%worker, name = %request.get_ref().name, "agent joined");
        Ok(Response::new(cert))
    }

    async fn renew(
        &self,
        request: Request<proto::RenewRequest>,
    ) -> Result<Response<proto::Certificate>, Status> {
        let worker = self
            .certified(&request, "worker renew")
            .await?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this server serves plaintext: it signs no certificates",
                )
            })?;
        let cert = self.issued(worker, &request.get_ref().csr_pem);
        let mut e = AuditLog::<S>::entry(
            &format!("worker:{worker}"),
            "worker renew",
            worker,
            request.remote_addr(),
        );
        e.outcome = crate::server::security::audit_log::outcome(&cert);
        if let Ok(c) = &cert {
            e.detail = format!("serial {}", c.serial);
        }
        self.audit.record(e).await;
        let cert = cert?;
        tracing::debug!(%worker, "agent certificate renewed");
        Ok(Response::new(cert))
    }

    async fn connect(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let certified = self.certified(&request, "worker connect").await?;
        if certified.is_none()
            && let Err(e) = self.security.authenticate_join(request.metadata())
        {
            self.audit
                .refused("worker connect", request.remote_addr(), &e)
                .await;
            return Err(e.into());
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_WITHIN, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("register: not received within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("register: the stream ended before it"))?;
        let reg = match first.msg {
            Some(In::Register(mut r)) => {
                // Over TLS the worker is who its certificate names.
                if let Some(w) = certified {
                    if !r.worker_id.is_empty() && r.worker_id != w.to_string() {
                        return Err(Status::permission_denied(format!(
                            "register.worker_id: {} is not the worker the certificate names ({w})",
                            r.worker_id
                        )));
                    }
                    r.worker_id = w.to_string();
                }
                registration_from_wire(r)?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "register: must be the first message",
                ));
            }
        };
        let worker = reg.worker;
        let (tx, rx) = mpsc::channel(self.queue_depth.max(1));
        let (conn, _welcome) = self
            .engine
            .connect(reg, Box::new(WireLink(tx.clone())))
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let api = WorkerApi {
            engine: self.engine.clone(),
            security: Arc::clone(&self.security),
            audit: Arc::clone(&self.audit),
            queue_depth: self.queue_depth,
            stopping: self.stopping.clone(),
        };
        let mut stopping = self.stopping.clone();
        let mut live = self.security.connected(worker);
        tokio::spawn(async move {
            let mut writes: FuturesOrdered<PendingLog> = FuturesOrdered::new();
            let mut fenced = HashSet::new();
            loop {
                let next = tokio::select! {
                    Some(done) = writes.next(), if !writes.is_empty() => {
                        let result = match done {
                            Ok(l) => api.log_stored(&tx, l).await,
                            Err(e) => Err(e),
                        };
                        if let Err(status) = result {
                            tracing::warn!(%worker, %status, "closing agent stream");
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                        continue;
                    }
                    m = inbound.message(), if writes.len() < LOG_WRITES_IN_FLIGHT => m,
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => break,
                    () = async { let _ = live.cut.wait_for(|c| *c != Cut::Live).await; } => {
                        let status = if *live.cut.borrow() == Cut::Revoked {
                            tracing::warn!(%worker, "worker revoked: disconnecting it");
                            Status::permission_denied(format!("worker {worker} is revoked"))
                        } else {
                            tracing::info!(%worker, "a newer connection of this worker took over");
                            Status::aborted(
                                "a newer connection of this worker took over: one connection at a time",
                            )
                        };
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let result = match next {
                    Ok(Some(proto::AgentMessage {
                        msg: Some(In::LogBatch(b)),
                    })) => match api.log_write(worker, &mut fenced, b).await {
                        Ok(w) => {
                            writes.push_back(w);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Ok(Some(proto::AgentMessage { msg: Some(m) })) => {
                        // A result is acknowledged as covering every batch
                        // sent before it: those are stored first.
                        let mut flushed = Ok(());
                        if matches!(m, In::JobFinished(_)) {
                            while let Some(done) = writes.next().await {
                                flushed = match done {
                                    Ok(l) => api.log_stored(&tx, l).await,
                                    Err(e) => Err(e),
                                };
                                if flushed.is_err() {
                                    break;
                                }
                            }
                        }
                        match flushed {
                            Ok(()) => api.handle(worker, &tx, m).await,
                            Err(e) => Err(e),
                        }
                    }
                    Ok(Some(proto::AgentMessage { msg: None })) => {
                        Err(Status::invalid_argument("agent message: empty"))
                    }
                    Ok(None) | Err(_) => break,
                };
                if let Err(status) = result {
                    tracing::warn!(%worker, %status, "closing agent stream");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
            drop(live);
            api.engine.disconnected(worker, conn).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

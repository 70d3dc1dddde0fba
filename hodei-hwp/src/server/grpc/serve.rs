//! Serving the Hodei API: both services, gRPC health and reflection.

use std::future::Future;
use std::sync::Arc;

use hodei_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::job_service_server::JobServiceServer;
use crate::proto::worker_service_server::WorkerServiceServer;
use crate::server::engine::EngineHandle;
use crate::server::grpc::admin_service::AdminApi;
use crate::server::grpc::job_service::JobApi;
use crate::server::grpc::limits::{LimitConfig, Limits};
use crate::server::grpc::status_guard::StatusGuardLayer;
use crate::server::grpc::worker_service::{MAX_LOG_BATCH, WorkerApi};
use crate::server::security::Security;
use crate::server::security::audit_log::AuditLog;
use crate::server::security::tls::accept_tls;
use crate::{EngineConfig, proto};

/// HTTP/2 receive window per stream, bytes.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 receive window per connection, bytes.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `WorkerService`, `JobService`, `grpc.health.v1.Health` and
/// `AdminService` and server reflection on `listener` until `shutdown`
/// resolves: over TLS when `security` has it (handshakes run
/// concurrently, each within a time limit; agents are identified by their
/// client certificates), in plaintext otherwise (agents by join token).
///
/// Shutdown goes in this order: gRPC health reports NOT_SERVING (for both
/// services and the server as a whole); every agent, Watch and Logs stream
/// ends with UNAVAILABLE (agents reconnect to the next server and re-attach
/// their jobs); the listener stays open for `config.shutdown_delay`; then
/// it stops accepting and lets calls in flight finish.
///
/// Every accepted connection has `TCP_NODELAY` set (small messages such as
/// AssignJob must not wait on delayed acknowledgements), and every error
/// message is bounded ([`status_guard`](crate::server::grpc::status_guard)).
///
/// # Errors
///
/// [`ServeError`] when reflection cannot be built or the transport fails.
pub async fn serve<S: Store>(
    listener: TcpListener,
    engine: EngineHandle<S>,
    security: Arc<Security<S>>,
    limits: LimitConfig,
    config: &EngineConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let services = Services::new(engine, security, limits, config);
    serve_services(listener, services, config, shutdown).await
}

/// The services of one server, built once: gRPC serves them, and the
/// HTTP/JSON API calls the same ones in-process, so both APIs share their
/// validation, roles, limits and audit.
pub(crate) struct Services<S: Store> {
    pub(crate) jobs: Arc<JobApi<S>>,
    pub(crate) admin: Arc<AdminApi<S>>,
    workers: WorkerApi<S>,
    engine: EngineHandle<S>,
    security: Arc<Security<S>>,
    /// Turned true when shutdown begins: every Watch, Logs and agent
    /// stream ends.
    stop: watch::Sender<bool>,
}

impl<S: Store> Services<S> {
    pub(crate) fn new(
        engine: EngineHandle<S>,
        security: Arc<Security<S>>,
        limits: LimitConfig,
        config: &EngineConfig,
    ) -> Self {
        let (stop, stopping) = watch::channel(false);
        let audit = Arc::new(AuditLog::new(engine.clone()));
        let admin = Arc::new(AdminApi::new(
            Arc::clone(&security),
            Arc::clone(&audit),
            Arc::clone(engine.store()),
        ));
        let workers = WorkerApi::new(
            engine.clone(),
            Arc::clone(&security),
            Arc::clone(&audit),
            config.agent_queue_depth,
            stopping.clone(),
        );
        let jobs = Arc::new(JobApi::new(
            engine.clone(),
            Arc::clone(&security),
            audit,
            Limits::new(limits),
            stopping,
        ));
        Services {
            jobs,
            admin,
            workers,
            engine,
            security,
            stop,
        }
    }
}

/// [`serve`] with services already built.
pub(crate) async fn serve_services<S: Store>(
    listener: TcpListener,
    services: Services<S>,
    config: &EngineConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let Services {
        jobs,
        admin,
        workers,
        engine,
        security,
        stop,
    } = services;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<JobApi<S>>>().await;
    health
        .set_serving::<WorkerServiceServer<WorkerApi<S>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let closer = engine.clone();
    let delay = config.shutdown_delay;
    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<JobServiceServer<JobApi<S>>>()
            .await;
        health
            .set_not_serving::<WorkerServiceServer<WorkerApi<S>>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop.send(true);
        closer.close_agents().await;
        tokio::time::sleep(delay).await;
    };
    let tls = security.tls().cloned();
    let admin = AdminServiceServer::from_arc(admin);
    let workers =
        WorkerServiceServer::new(workers).max_decoding_message_size(MAX_LOG_BATCH + 64 * 1024);
    let metrics = engine;
    let jobs = JobServiceServer::from_arc(jobs);
    let router = tonic::transport::Server::builder()
        // Agents stream output: HTTP/2's default 64 KiB window would cost a
        // round trip per log batch.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .layer(StatusGuardLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(workers)
        .add_service(jobs)
        .add_service(admin);
    match tls {
        None => {
            // tonic applies its own TCP_NODELAY only to listeners it binds
            // itself.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                let conn = conn?;
                conn.set_nodelay(true)?;
                Ok::<_, std::io::Error>(conn)
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
        Some(tls) => {
            let failed = move || {
                metrics
                    .metrics()
                    .tls_handshake_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            let ready = accept_tls(listener, tls, false, failed);
            let incoming = tokio_stream::wrappers::ReceiverStream::new(ready)
                .map(|(conn, _)| Ok::<_, std::io::Error>(conn));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
    }
    Ok(())
}

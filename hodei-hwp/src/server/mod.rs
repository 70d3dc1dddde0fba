//! The server as a library (feature `server`): the [`Engine`] on
//! `hodei-sched` and `hodei-store`, the job and worker gRPC services on
//! it, bearer-token authentication, metrics, and [`serve`].

pub(crate) mod auth;
pub(crate) mod engine;
pub(crate) mod job_service;
pub(crate) mod metrics;
pub(crate) mod serve;
pub mod status_guard;
pub(crate) mod worker_service;

pub use auth::{AuthError, Principal, Tokens};
pub use engine::{
    AgentLink, Applied, Engine, EngineConfig, EngineError, EngineHandle, Registration, ToAgent,
    Welcome,
};
pub use job_service::JobApi;
pub use metrics::{Histogram, Metrics, Snapshot};
pub use serve::{ServeError, serve};
pub use worker_service::{MAX_LOG_BATCH, WorkerApi, check_agent_message};

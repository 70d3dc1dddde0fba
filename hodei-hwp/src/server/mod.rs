//! The server as a library (feature `server`), one folder per concern:
//!
//! - `engine`: the task that owns the scheduler, persists each round
//!   as one batch and publishes what landed; its metrics.
//! - [`grpc`]: the job, worker and admin services, the status guard,
//!   per-caller limits, and serving them.
//! - `http`: `/metrics`, `/healthz`, `/readyz`, the JSON API (one file
//!   per resource) and the dashboard.
//! - [`security`]: roles and tokens, JSON Web Tokens, the server's CA,
//!   TLS, stored credentials, secret sealing, the audit trail's entries.
//! - `workflows`: pipelines, periodic jobs and job arrays, each a task of
//!   ordinary jobs.
//! - `run`: the settings of a server ([`ServerSettings`], one
//!   declaration for flags, environment and TOML), [`ServerBuilder`],
//!   and several servers on one PostgreSQL database.
//!
//! Dependencies between the folders point one way: `run` assembles
//! everything; `http` calls `grpc`; `grpc` and `workflows` drive the
//! `engine`; `security` depends on none of them but the engine's handle.

pub(crate) mod engine;
pub mod grpc;
pub(crate) mod http;
pub(crate) mod run;
pub mod security;
pub(crate) mod workflows;

pub use engine::metrics::{Histogram, Metrics, Snapshot};
pub use engine::{
    AgentLink, Applied, Engine, EngineConfig, EngineError, EngineHandle, Registration, ToAgent,
    Welcome,
};
pub use grpc::admin_service::AdminApi;
pub use grpc::job_service::JobApi;
pub use grpc::serve::{ServeError, serve};
pub use grpc::worker_service::{MAX_LOG_BATCH, WorkerApi, check_agent_message};
pub use http::StatsOf;
pub use http::api::{openapi_json, parse_pipeline, parse_schedule, parse_submission};
pub use run::Prepared;
pub use run::builder::{RunningServer, ServerBuilder};
pub use run::error::ServerError;
pub use run::settings::{
    JwtSettings, ServerConfig, ServerSettings, ServerTlsConfig, SettingsError, StoreKind,
    parse_duration,
};
pub use security::auth::{AuthError, Principal, Role, Scope, Tokens};
pub use security::pki::AGENT_CERT_TTL;

//! The server as a library (feature `server`): the [`Engine`] on
//! `hodei-sched` and `hodei-store`, the job and worker gRPC services on
//! it, bearer-token authentication, metrics and the HTTP endpoints,
//! [`serve`], the settings of a server ([`ServerSettings`], one
//! declaration for flags, environment and TOML), token files, and
//! [`ServerBuilder`], which assembles them.

pub(crate) mod admin_service;
pub(crate) mod api;
pub(crate) mod arrays;
pub mod audit_log;
pub(crate) mod auth;
pub(crate) mod builder;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod job_service;
pub mod jwt;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod pipelines;
pub mod pki;
pub(crate) mod replica;
pub(crate) mod schedules;
pub mod secrets;
pub mod security;
pub(crate) mod serve;
pub(crate) mod settings;
pub mod status_guard;
pub mod tls;
pub mod tokens;
pub(crate) mod ui;
pub(crate) mod worker_service;

pub use admin_service::AdminApi;
pub use api::{openapi_json, parse_pipeline, parse_schedule, parse_submission};
pub use auth::{AuthError, Principal, Role, Scope, Tokens};
pub use builder::{AGENT_CERT_TTL, RunningServer, ServerBuilder, ServerError};
pub use engine::{
    AgentLink, Applied, Engine, EngineConfig, EngineError, EngineHandle, Registration, ToAgent,
    Welcome,
};
pub use http::StatsOf;
pub use job_service::JobApi;
pub use metrics::{Histogram, Metrics, Snapshot};
pub use serve::{ServeError, serve};
pub use settings::{
    JwtSettings, ServerConfig, ServerSettings, ServerTlsConfig, SettingsError, StoreKind,
    parse_duration,
};
pub use worker_service::{MAX_LOG_BATCH, WorkerApi, check_agent_message};

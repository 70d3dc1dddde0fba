//! The Hodei Worker Protocol, and the server as a library.
//!
//! - [`wire`]: the gRPC definitions agents and clients speak
//!   (`proto/hodei/hwp/v1`, package `hodei.hwp.v1`), generated at build
//!   time in pure Rust, and the checked conversions between wire messages
//!   and `hodei-core` types.
//! - [`client`]: what agents and the CLI connect with; [`tls`]: what they
//!   trust, and the join token that pins a server's CA.
//! - [`server`] (cargo feature `server`, on by default): the [`Engine`]
//!   on `hodei-sched` and `hodei-store`, the gRPC services on it (with
//!   health and reflection), authentication, metrics and [`serve`].
//!
//! An agent depends on this crate with `default-features = false`: the
//! wire and the client only, without the scheduler or the store.
#![deny(missing_docs)]

pub mod client;
pub mod secret_file;
#[cfg(feature = "server")]
pub mod server;
pub mod settings;
pub mod tls;
pub mod wire;

#[cfg(feature = "server")]
pub use server::{
    AGENT_CERT_TTL, AdminApi, AgentLink, Applied, AuthError, Engine, EngineConfig, EngineError,
    EngineHandle, Histogram, JobApi, MAX_LOG_BATCH, Metrics, Principal, Registration,
    RunningServer, ServeError, ServerBuilder, ServerConfig, ServerError, ServerSettings,
    SettingsError, Snapshot, StatsOf, StoreKind, ToAgent, Tokens, Welcome, WorkerApi,
    check_agent_message, serve,
};
#[cfg(feature = "server")]
pub use wire::to_agent_wire;
pub use wire::{
    WireError, condition_to_wire, exit_from_wire, exit_to_wire, job_to_wire, log_stream_from_wire,
    log_stream_to_wire, pipeline_from_wire, pipeline_to_wire, proto, resources_to_wire,
    spec_from_wire, spec_to_wire, state_to_wire,
};

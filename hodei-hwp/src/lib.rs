//! The Hodei Worker Protocol.
//!
//! The gRPC definitions agents and clients speak (`proto/hodei/hwp/v1`,
//! package `hodei.hwp.v1`), generated at build time in pure Rust, and the
//! checked conversions between wire messages and `hodei-core` types: every
//! field of an incoming message is validated, and a problem is reported
//! with the field it concerns; bearer-token authentication of agents and
//! clients; the server [`Engine`] on `hodei-sched` and `hodei-store`; the
//! gRPC services on it ([`serve`], with gRPC health and reflection); and a
//! [`client`].
#![deny(missing_docs)]

mod auth;
pub mod client;
mod convert;
mod engine;
mod job_service;
mod metrics;
mod server;
pub mod status_guard;
mod worker_service;

pub use auth::{AuthError, Principal, Tokens};
pub use convert::{
    WireError, exit_from_wire, exit_to_wire, job_to_wire, log_stream_from_wire, log_stream_to_wire,
    spec_from_wire, spec_to_wire, state_to_wire, to_agent_wire,
};
pub use engine::{
    AgentLink, Applied, Engine, EngineConfig, EngineError, EngineHandle, Registration, ToAgent,
    Welcome,
};
pub use job_service::JobApi;
pub use metrics::{Histogram, Metrics, Snapshot};
pub use server::{ServeError, serve};
pub use worker_service::{MAX_LOG_BATCH, WorkerApi, check_agent_message};

/// Code generated from the `.proto` files.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod proto {
    tonic::include_proto!("hodei.hwp.v1");

    /// The encoded descriptor set of every Hodei service, for gRPC
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hodei_hwp_descriptor.bin"));
}

//! The wire: the code generated from the `.proto` files and every
//! conversion between its messages and `hodei-core` types. Every field of
//! an incoming message is checked, and a problem names the field.

mod convert;
mod pipeline;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "server")]
pub use convert::to_agent_wire;
pub use convert::{
    WireError, exit_from_wire, exit_to_wire, job_to_wire, log_stream_from_wire, log_stream_to_wire,
    resources_to_wire, spec_from_wire, spec_to_wire, state_to_wire,
};
pub use pipeline::{condition_to_wire, pipeline_from_wire, pipeline_to_wire};
#[cfg(feature = "server")]
pub use server::{
    MAX_LABELS, registration_from_wire, schedule_from_wire, schedule_to_wire, state_kind_from_wire,
    worker_to_wire,
};

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

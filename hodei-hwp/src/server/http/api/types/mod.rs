//! The JSON shapes of the HTTP API and their conversions to and from the
//! gRPC messages, so that both APIs validate through the same code.

mod access;
mod cluster;
mod jobs;
mod spec;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(crate) use self::access::{
    AuditCheckJson, AuditPageJson, CreateJoinTokenJson, CreateTokenJson, CreatedJoinTokenJson,
    CreatedTokenJson, JoinTokenInfoJson, JoinTokensJson, RevokedWorkerJson, SessionJson,
    TokenInfoJson, TokensJson, WhoamiJson,
};
pub(crate) use self::cluster::{
    LatencyJson, OverviewJson, QueueDepthJson, TenantDispatchJson, WorkerJson, WorkerPageJson,
};
pub(crate) use self::jobs::{
    AttemptJson, AttemptsJson, JobEventJson, JobJson, JobPageJson, LogChunkJson, LogPageJson,
    SubmittedJson, state_kind,
};
pub(crate) use self::spec::{JobSpecJson, SubmitJson};

/// An error, as RFC 9457 problem details.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ProblemJson {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind, for people.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, naming the field where one is at fault.
    pub detail: String,
    /// The first field at fault, when the request was invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- conversions ------------------------------------------------------

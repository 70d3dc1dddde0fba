//! Who the caller is, sign-in, client and join tokens, revoked workers,
//! the audit trail.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::proto;

/// Who the caller is and what it may do.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WhoamiJson {
    /// For the audit trail (never the token).
    pub name: String,
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub role: String,
    /// The tenants it may see; absent for every tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// Whether it may submit jobs (for at least one tenant).
    pub may_submit: bool,
    /// Whether it may cancel jobs.
    pub may_cancel: bool,
    /// Whether it may drain workers.
    pub may_drain: bool,
    /// Whether it may manage tokens and read the audit trail.
    pub is_admin: bool,
}

/// Signing in to the dashboard.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionJson {
    /// A bearer token (an API token or a JWT).
    pub token: String,
}

/// A client token's description (never the token).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokenInfoJson {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Its tenants (empty for admin).
    pub tenants: Vec<String>,
    /// A name for people.
    pub name: String,
    /// Created at, ms since the epoch.
    pub created_at_ms: u64,
    /// Expires at; 0 for never.
    pub expires_at_ms: u64,
    /// Revoked at; 0 while valid.
    pub revoked_at_ms: u64,
}

/// Making a client token.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTokenJson {
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub role: String,
    /// Its tenants (not for admin).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// Lifetime, seconds; 0 for no expiry.
    #[serde(default)]
    pub ttl_seconds: u64,
}

/// A token just made: shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreatedTokenJson {
    /// Its description.
    pub info: TokenInfoJson,
    /// The token itself.
    pub token: String,
}

/// Client tokens.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TokensJson {
    /// In id order.
    pub tokens: Vec<TokenInfoJson>,
}

/// A join token's description (never the token).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JoinTokenInfoJson {
    /// Its id.
    pub id: String,
    /// Created at, ms since the epoch.
    pub created_at_ms: u64,
    /// Expires at; 0 for never.
    pub expires_at_ms: u64,
    /// Revoked at; 0 while valid.
    pub revoked_at_ms: u64,
}

/// Making a join token for agents.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateJoinTokenJson {
    /// Lifetime, seconds; 0 for the server's default.
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Revoke every other join token.
    #[serde(default)]
    pub rotate: bool,
}

/// A join token just made: shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CreatedJoinTokenJson {
    /// Its description.
    pub info: JoinTokenInfoJson,
    /// The token itself.
    pub token: String,
}

/// Join tokens.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct JoinTokensJson {
    /// In id order.
    pub tokens: Vec<JoinTokenInfoJson>,
}

/// A worker's credentials revoked.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RevokedWorkerJson {
    /// The worker.
    pub worker_id: String,
    /// Whether its connection was open and was closed.
    pub disconnected: bool,
}

/// One record of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditRecordJson {
    /// Its place in the chain.
    pub index: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// `ok` or why not.
    pub outcome: String,
    /// From where.
    pub peer: String,
    /// More.
    pub detail: String,
    /// The chain hash, hex.
    pub hash: String,
}

/// A page of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditPageJson {
    /// The records, oldest first.
    pub records: Vec<AuditRecordJson>,
    /// Pass as `from_index` for the next page.
    pub next_index: u64,
}

/// The audit chain checked.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditCheckJson {
    /// Whether every record links and none is missing.
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    /// The first bad record, when not intact.
    pub broken_at: u64,
    /// Why, when not intact.
    pub reason: String,
}

impl From<proto::TokenInfo> for TokenInfoJson {
    fn from(t: proto::TokenInfo) -> Self {
        TokenInfoJson {
            id: t.id,
            role: t.role,
            tenants: t.tenants,
            name: t.name,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_at_ms: t.revoked_at_ms,
        }
    }
}

impl From<proto::JoinTokenInfo> for JoinTokenInfoJson {
    fn from(t: proto::JoinTokenInfo) -> Self {
        JoinTokenInfoJson {
            id: t.id,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_at_ms: t.revoked_at_ms,
        }
    }
}

impl From<proto::AuditRecord> for AuditRecordJson {
    fn from(r: proto::AuditRecord) -> Self {
        let hash = crate::tls::hex(&r.hash);
        AuditRecordJson {
            index: r.index,
            at_ms: r.at_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            peer: r.peer,
            detail: r.detail,
            hash,
        }
    }
}

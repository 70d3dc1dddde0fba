//! Bearer-token authentication for agents and clients.

use std::fmt;

use hodei_core::TenantId;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// What a client may do. Each role can do what the ones after it can,
/// within its tenants, and more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Everything: every tenant, workers, tokens, the audit trail.
    Admin,
    /// Cancels jobs, drains workers and reads, across its tenants.
    Operator,
    /// Submits, cancels and reads its tenant's jobs.
    Submitter,
    /// Reads its tenants' jobs and the workers.
    Viewer,
}

impl Role {
    /// `admin`, `operator`, `submitter` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "submitter" => Ok(Role::Submitter),
            "viewer" => Ok(Role::Viewer),
            _ => Err(format!(
                "{s:?} is not a role: admin, operator, submitter or viewer"
            )),
        }
    }
}

/// The tenants a principal acts within.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Every tenant.
    All,
    /// These tenants only.
    Tenants(Vec<TenantId>),
}

impl Scope {
    /// Whether `tenant` is within.
    pub fn contains(&self, tenant: &TenantId) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenants(ts) => ts.contains(tenant),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Tenants(ts) => {
                let names: Vec<&str> = ts.iter().map(|t| t.as_str()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// Who a client is: a role within a scope of tenants, and a name for the
/// audit trail (a token's id, never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What it may do.
    pub role: Role,
    /// Where (admins: everywhere).
    pub scope: Scope,
    /// Who, for the audit trail: `token:<id>`, `jwt:<subject>`, a file's
    /// name.
    pub name: String,
}

impl Principal {
    /// An administrator (of every tenant).
    pub fn admin() -> Self {
        Principal {
            role: Role::Admin,
            scope: Scope::All,
            name: "admin".into(),
        }
    }

    /// A submitter for one tenant: what a tenant token is.
    pub fn tenant(t: TenantId) -> Self {
        Principal {
            name: format!("tenant:{t}"),
            role: Role::Submitter,
            scope: Scope::Tenants(vec![t]),
        }
    }

    /// `role` within `scope`, named `name`.
    pub fn new(role: Role, scope: Scope, name: impl Into<String>) -> Self {
        let scope = if role == Role::Admin {
            Scope::All
        } else {
            scope
        };
        Principal {
            role,
            scope,
            name: name.into(),
        }
    }

    /// Whether it is an administrator.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// True if this principal may see a job of `tenant`.
    pub fn may_access(&self, tenant: &TenantId) -> bool {
        self.is_admin() || self.scope.contains(tenant)
    }

    /// True if it may submit a job for `tenant`.
    pub fn may_submit(&self, tenant: &TenantId) -> bool {
        matches!(self.role, Role::Admin | Role::Submitter) && self.may_access(tenant)
    }

    /// True if it may cancel a job of `tenant`.
    pub fn may_cancel(&self, tenant: &TenantId) -> bool {
        self.role != Role::Viewer && self.may_access(tenant)
    }

    /// True if it may drain workers.
    pub fn may_drain(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    /// The tenant a submission without one is for: its only tenant, or the
    /// default for an administrator; `None` when it has several.
    pub fn default_tenant(&self) -> Option<TenantId> {
        match (&self.role, &self.scope) {
            (Role::Admin, _) => Some(TenantId::default()),
            (_, Scope::Tenants(ts)) if ts.len() == 1 => Some(ts[0].clone()),
            _ => None,
        }
    }

    /// The audit trail's name for it: `name (role)`.
    pub fn audit_name(&self) -> String {
        format!("{} ({})", self.name, self.role)
    }
}

/// A token, kept only as its hash so that a memory dump or a log line of
/// the table does not reveal it.
#[derive(Clone)]
struct Hashed([u8; 32]);

impl Hashed {
    fn of(token: &str) -> Self {
        Hashed(*blake3::hash(token.as_bytes()).as_bytes())
    }

    /// Constant-time: the time taken does not depend on where the hashes
    /// differ.
    fn matches(&self, other: &Hashed) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// The tokens a server accepts: join tokens for agents, client tokens bound
/// to a principal.
#[derive(Clone, Default)]
pub struct Tokens {
    join: Vec<Hashed>,
    clients: Vec<(Hashed, Principal)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("join", &self.join.len())
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// Why a call was refused; becomes `UNAUTHENTICATED`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing authorization metadata (expected `authorization: Bearer <token>`)")]
    Missing,
    /// The metadata is not `Bearer <token>`.
    #[error("authorization metadata must be `Bearer <token>`")]
    Malformed,
    /// The token is not known (for this kind of caller).
    #[error("unknown token")]
    Unknown,
    /// The token was revoked.
    #[error("token revoked")]
    Revoked,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// A JSON Web Token that does not verify.
    #[error("JSON Web Token refused: {0}")]
    Jwt(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        tonic::Status::unauthenticated(e.to_string())
    }
}

/// The secret of a join token: the part after `hodei-join.<fingerprint>.`
/// when the full form is given.
pub(crate) fn strip_pin(token: &str) -> &str {
    match token.parse::<crate::tls::JoinToken>() {
        Ok(_) => token.rsplit_once('.').map(|(_, s)| s).unwrap_or(token),
        Err(_) => token,
    }
}

pub(crate) fn bearer(md: &MetadataMap) -> Result<&str, AuthError> {
    let v = md.get("authorization").ok_or(AuthError::Missing)?;
    let v = v.to_str().map_err(|_| AuthError::Malformed)?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

impl Tokens {
    /// No tokens: every call is refused.
    pub fn new() -> Self {
        Tokens::default()
    }

    /// Accepts `token` from agents joining the cluster (the full
    /// `hodei-join.` form or its secret).
    pub fn add_join_token(&mut self, token: &str) {
        self.join.push(Hashed::of(strip_pin(token)));
    }

    /// The join tokens' hashes.
    pub(crate) fn join_hashes(&self) -> Vec<[u8; 32]> {
        self.join.iter().map(|h| h.0).collect()
    }

    /// Accepts `token` from clients, as `principal`.
    pub fn add_client_token(&mut self, token: &str, principal: Principal) {
        self.clients.push((Hashed::of(token), principal));
    }

    /// The principal of a client token given at start, by its hash.
    pub(crate) fn client_by_hash(&self, h: &[u8; 32]) -> Option<Principal> {
        let h = Hashed(*h);
        let mut found = None;
        for (t, p) in &self.clients {
            if t.matches(&h) && found.is_none() {
                found = Some(p.clone());
            }
        }
        found
    }

    /// Checks an agent's call.
    ///
    /// # Errors
    ///
    /// [`AuthError`] when the bearer token is missing, malformed or not a join
    /// token.
    pub fn authenticate_agent(&self, md: &MetadataMap) -> Result<(), AuthError> {
        let h = Hashed::of(strip_pin(bearer(md)?));
        // Every entry is compared, so the time does not tell which matched.
        let found = self.join.iter().fold(false, |acc, t| acc | t.matches(&h));
        if found {
            Ok(())
        } else {
            Err(AuthError::Unknown)
        }
    }

    /// Checks a client's call and says whom it speaks for.
    ///
    /// # Errors
    ///
    /// [`AuthError`] when the bearer token is missing, malformed or unknown.
    pub fn authenticate_client(&self, md: &MetadataMap) -> Result<Principal, AuthError> {
        let h = Hashed::of(bearer(md)?);
        let mut found = None;
        for (t, p) in &self.clients {
            if t.matches(&h) && found.is_none() {
                found = Some(p.clone());
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", MetadataValue::try_from(value).unwrap());
        m
    }

    fn tokens() -> Tokens {
        let mut t = Tokens::new();
        t.add_join_token("join-secret-1");
        t.add_client_token("admin-token", Principal::admin());
        t.add_client_token("acme-token", Principal::tenant("acme".parse().unwrap()));
        t
    }

    #[test]
    fn agents_need_a_join_token() {
        let t = tokens();
        assert_eq!(t.authenticate_agent(&md("Bearer join-secret-1")), Ok(()));
        assert_eq!(
            t.authenticate_agent(&md("Bearer acme-token")),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            t.authenticate_agent(&MetadataMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            t.authenticate_agent(&md("Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            t.authenticate_agent(&md("Bearer ")),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn client_tokens_are_bound_to_a_principal() {
        let t = tokens();
        let acme: TenantId = "acme".parse().unwrap();
        let globex: TenantId = "globex".parse().unwrap();
        let p = t.authenticate_client(&md("Bearer acme-token")).unwrap();
        assert!(p.may_access(&acme) && !p.may_access(&globex));
        assert!(p.may_submit(&acme) && p.may_cancel(&acme) && !p.may_drain());
        let admin = t.authenticate_client(&md("bearer admin-token")).unwrap();
        assert!(admin.may_access(&globex));
        assert_eq!(
            t.authenticate_client(&md("Bearer join-secret-1")),
            Err(AuthError::Unknown)
        );
        let status = tonic::Status::from(AuthError::Unknown);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn roles_allow_what_they_say_within_their_tenants() {
        let acme: TenantId = "acme".parse().unwrap();
        let globex: TenantId = "globex".parse().unwrap();
        let both = Scope::Tenants(vec![acme.clone(), globex.clone()]);
        let op = Principal::new(Role::Operator, both.clone(), "op");
        assert!(op.may_access(&globex) && op.may_cancel(&acme) && op.may_drain());
        assert!(!op.may_submit(&acme) && !op.is_admin());
        assert_eq!(op.default_tenant(), None);
        let viewer = Principal::new(Role::Viewer, Scope::Tenants(vec![acme.clone()]), "v");
        assert!(viewer.may_access(&acme) && !viewer.may_access(&globex));
        assert!(!viewer.may_cancel(&acme) && !viewer.may_submit(&acme) && !viewer.may_drain());
        let sub = Principal::new(Role::Submitter, Scope::Tenants(vec![acme.clone()]), "s");
        assert!(sub.may_submit(&acme) && !sub.may_submit(&globex) && !sub.may_drain());
        assert_eq!(sub.default_tenant(), Some(acme.clone()));
        // An admin is everywhere, whatever scope it was given.
        let admin = Principal::new(Role::Admin, Scope::Tenants(vec![]), "a");
        assert!(admin.may_submit(&globex) && admin.may_drain());
        for r in ["admin", "operator", "submitter", "viewer"] {
            assert_eq!(r.parse::<Role>().unwrap().as_str(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let dump = format!("{:?}", tokens());
        assert!(!dump.contains("acme-token") && !dump.contains("join-secret"));
    }
}

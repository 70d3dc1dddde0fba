//! Bearer-token authentication for agents and clients.

use std::fmt;

use hodei_core::TenantId;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// Who a client token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// Sees and acts on every tenant's jobs and on workers.
    Admin,
    /// Sees and acts on one tenant's jobs only.
    Tenant(TenantId),
}

impl Principal {
    /// True if this principal may see or act on a job of `tenant`.
    pub fn may_access(&self, tenant: &TenantId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(t) => t == tenant,
        }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
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
        t.add_client_token("admin-token", Principal::Admin);
        t.add_client_token("acme-token", Principal::Tenant("acme".parse().unwrap()));
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
    fn tokens_never_show_in_debug_output() {
        let dump = format!("{:?}", tokens());
        assert!(!dump.contains("acme-token") && !dump.contains("join-secret"));
    }
}

//! The cluster's agent credentials, kept in the store: join tokens (only
//! their hashes) and revoked workers; the agents connected now, so a
//! revocation can disconnect one at once; and signing agents' certificates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::WorkerId;
use hodei_store::{Store, StoreError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use crate::server::security::auth::{AuthError, Principal, Role, Scope, Tokens, bearer, strip_pin};
use crate::server::security::jwt::JwtConfig;
use crate::server::security::pki::Issued;
use crate::server::security::tls::ServerTls;
use crate::server::security::tokens::generate_token;
use crate::tls::{JoinToken, TlsError, hex, unhex, write_atomic};

const JOIN_KIND: &str = "join-token";
const CLIENT_KIND: &str = "client-token";
const REVOKED_KIND: &str = "revoked-worker";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A join token as stored: its hash, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinRecord {
    hash: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked_ms: Option<u64>,
}

/// A client token as stored: its hash, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClientRecord {
    hash: String,
    role: String,
    /// Tenant names, or `["*"]` for all.
    tenants: Vec<String>,
    name: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked_ms: Option<u64>,
}

impl ClientRecord {
    fn scope(&self) -> Scope {
        if self.tenants.iter().any(|t| t == "*") {
            return Scope::All;
        }
        Scope::Tenants(self.tenants.iter().filter_map(|t| t.parse().ok()).collect())
    }
}

/// A client token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTokenInfo {
    /// Its id (the start of its hash).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Its tenants.
    pub scope: Scope,
    /// What it was made for.
    pub name: String,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it stops being accepted, if ever.
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// A join token as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JoinTokenInfo {
    /// Its id (the start of its hash).
    pub id: String,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When it stops being accepted, if ever.
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A record could not be encoded or decoded.
    #[error("credential record {0}: {1}")]
    Record(String, String),
    /// No join token with this id.
    #[error("join token {0} not found")]
    UnknownJoinToken(String),
    /// No client token with this id.
    #[error("token {0} not found")]
    UnknownToken(String),
    /// A field of a request is not acceptable.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// The server serves no TLS, so it has no certificates to sign.
    #[error("this server serves plaintext: it signs no certificates")]
    NoTls,
    /// The certificate request or the files of the CA cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The credentials of a server's agents. Shared by the worker service
/// (joining, renewing, connecting) and the admin service.
#[derive(Debug)]
pub struct Security<S> {
    store: Arc<S>,
    tls: Option<Arc<ServerTls>>,
    cert_ttl: Duration,
    join_file: Option<PathBuf>,
    join: RwLock<BTreeMap<String, JoinRecord>>,
    clients: RwLock<BTreeMap<String, ClientRecord>>,
    fixed: Tokens,
    jwt: Option<JwtConfig>,
    revoked: RwLock<HashSet<WorkerId>>,
    live: Mutex<HashMap<WorkerId, (u64, watch::Sender<Cut>)>>,
    next_conn: std::sync::atomic::AtomicU64,
}

/// Why the server cuts an agent's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// It is not cut.
    Live,
    /// The worker was revoked.
    Revoked,
    /// A newer connection of the same worker took over: an agent holds
    /// one connection at a time.
    Superseded,
}

/// An agent connection the server can cut: dropped when the connection
/// ends.
#[derive(Debug)]
pub struct LiveConn<S: Store> {
    security: Arc<Security<S>>,
    worker: WorkerId,
    id: u64,
    /// Leaves [`Cut::Live`] when the connection must end.
    pub cut: watch::Receiver<Cut>,
}

impl<S: Store> Drop for LiveConn<S> {
    fn drop(&mut self) {
        let mut live = self.security.live.lock();
        if live.get(&self.worker).is_some_and(|(id, _)| *id == self.id) {
            live.remove(&self.worker);
        }
    }
}

impl<S: Store> Security<S> {
    /// Loads the records from `store`, and adds the join tokens given at
    /// start (the join tokens of `tokens`: files, library callers) unless a record of
    /// them is there already (so a revoked one stays revoked). `join_file`
    /// is rewritten with the new token on rotation. JSON Web Tokens are
    /// accepted as `jwt` says, when given.
    ///
    /// # Errors
    ///
    /// The store fails or holds a record that cannot be read.
    pub async fn load(
        store: Arc<S>,
        tls: Option<Arc<ServerTls>>,
        cert_ttl: Duration,
        tokens: &Tokens,
        join_file: Option<PathBuf>,
        jwt: Option<JwtConfig>,
    ) -> Result<Arc<Self>, SecurityError> {
        let mut join = BTreeMap::new();
        for (id, v) in store.credentials(JOIN_KIND).await? {
            let r: JoinRecord = serde_json::from_slice(&v)
                .map_err(|e| SecurityError::Record(format!("{JOIN_KIND}/{id}"), e.to_string()))?;
            join.insert(id, r);
        }
        for h in tokens.join_hashes() {
            let h = hex(&h);
            let id = h[..16].to_string();
            if let std::collections::btree_map::Entry::Vacant(slot) = join.entry(id) {
                let r = JoinRecord {
                    hash: h,
                    created_ms: now_ms(),
                    expires_ms: None,
                    revoked_ms: None,
                };
                put(&*store, slot.key(), &r).await?;
                slot.insert(r);
            }
        }
        let mut clients = BTreeMap::new();
        for (id, v) in store.credentials(CLIENT_KIND).await? {
            let r: ClientRecord = serde_json::from_slice(&v)
                .map_err(|e| SecurityError::Record(format!("{CLIENT_KIND}/{id}"), e.to_string()))?;
            clients.insert(id, r);
        }
        let mut revoked = HashSet::new();
        for (id, _) in store.credentials(REVOKED_KIND).await? {
            if let Ok(w) = id.parse() {
                revoked.insert(w);
            }
        }
        Ok(Arc::new(Security {
            store,
            tls,
            cert_ttl,
            join_file,
            join: RwLock::new(join),
            clients: RwLock::new(clients),
            fixed: tokens.clone(),
            jwt,
            revoked: RwLock::new(revoked),
            live: Mutex::new(HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Checks a client's bearer token: a token given at start, one made at
    /// run time (not revoked, not expired), or a JSON Web Token when they
    /// are configured. Says who it is.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: missing, malformed, unknown, revoked, expired, or a
    /// JSON Web Token that does not verify.
    pub fn authenticate_client(&self, md: &MetadataMap) -> Result<Principal, AuthError> {
        let token = bearer(md)?;
        if let Some(jwt) = &self.jwt
            && JwtConfig::looks_like_jwt(token)
        {
            return jwt.verify(token);
        }
        let h = hash(token);
        if let Some(p) = self.fixed.client_by_hash(&h) {
            return Ok(p);
        }
        let mut found = None;
        for (id, r) in self.clients.read().iter() {
            let same: bool = hex_to_32(&r.hash).ct_eq(&h).into();
            if same && found.is_none() {
                found = Some((id.clone(), r.clone()));
            }
        }
        let (id, r) = found.ok_or(AuthError::Unknown)?;
        if r.revoked_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        if r.expires_ms.is_some_and(|e| e <= now_ms()) {
            return Err(AuthError::Expired);
        }
        let role: Role = r.role.parse().map_err(|_| AuthError::Unknown)?;
        Ok(Principal::new(role, r.scope(), format!("token:{id}")))
    }

    /// A new client token for `role` within `scope`, shown once; kept only
    /// as its hash.
    ///
    /// # Errors
    ///
    /// [`SecurityError::Invalid`] for a non-admin token without tenants;
    /// the store fails.
    pub async fn create_token(
        &self,
        role: Role,
        scope: Scope,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(ClientTokenInfo, String), SecurityError> {
        let tenants = match (&role, &scope) {
            (Role::Admin, _) | (_, Scope::All) => vec!["*".to_string()],
            (_, Scope::Tenants(ts)) if ts.is_empty() => {
                return Err(SecurityError::Invalid(
                    "tenants",
                    format!("a {role} token needs at least one tenant (or * for all)"),
                ));
            }
            (_, Scope::Tenants(ts)) => ts.iter().map(|t| t.as_str().to_string()).collect(),
        };
        if name.len() > 200 {
            return Err(SecurityError::Invalid("name", "at most 200 bytes".into()));
        }
        let token = generate_token();
        let h = hex(&hash(&token));
        let id = h[..16].to_string();
        let now = now_ms();
        let r = ClientRecord {
            hash: h,
            role: role.as_str().to_string(),
            tenants,
            name: name.to_string(),
            created_ms: now,
            expires_ms: ttl.map(|t| now.saturating_add(t.as_millis() as u64)),
            revoked_ms: None,
        };
        put_record(&*self.store, CLIENT_KIND, &id, &r).await?;
        self.clients.write().insert(id.clone(), r.clone());
        Ok((client_info(&id, &r), token))
    }

    /// Every client token made at run time, revoked and expired ones
    /// included.
    pub fn list_tokens(&self) -> Vec<ClientTokenInfo> {
        self.clients
            .read()
            .iter()
            .map(|(id, r)| client_info(id, r))
            .collect()
    }

    /// Revokes a client token; it is refused from now on.
    ///
    /// # Errors
    ///
    /// [`SecurityError::UnknownToken`], or the store fails.
    pub async fn revoke_token(&self, id: &str) -> Result<ClientTokenInfo, SecurityError> {
        let mut r = self
            .clients
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| SecurityError::UnknownToken(id.to_string()))?;
        if r.revoked_ms.is_none() {
            r.revoked_ms = Some(now_ms());
            put_record(&*self.store, CLIENT_KIND, id, &r).await?;
            self.clients.write().insert(id.to_string(), r.clone());
        }
        Ok(client_info(id, &r))
    }

    /// The server's TLS, if it serves TLS.
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    /// Checks a join token (bearer metadata; the full `hodei-join.` form or
    /// its secret alone) and returns its id.
    ///
    /// # Errors
    ///
    /// [`AuthError`] when missing, malformed, unknown, revoked or expired.
    pub fn authenticate_join(&self, md: &MetadataMap) -> Result<String, AuthError> {
        let h = hash(strip_pin(bearer(md)?));
        let now = now_ms();
        let mut found = None;
        // Every entry is compared, so the time does not tell which matched.
        for (id, r) in self.join.read().iter() {
            let stored = hex_to_32(&r.hash);
            let same: bool = stored.ct_eq(&h).into();
            let live = r.revoked_ms.is_none() && r.expires_ms.is_none_or(|e| e > now);
            if same && live && found.is_none() {
                found = Some(id.clone());
            }
        }
        found.ok_or(AuthError::Unknown)
    }

    /// A new join token; with `rotate`, every other one is revoked. The
    /// token file (if the server has one) then holds the new token.
    ///
    /// # Errors
    ///
    /// The store fails, or the token file cannot be written.
    pub async fn create_join(
        &self,
        ttl: Option<Duration>,
        rotate: bool,
    ) -> Result<(JoinTokenInfo, String), SecurityError> {
        let secret = generate_token();
        let h = hex(&hash(&secret));
        let id = h[..16].to_string();
        let now = now_ms();
        let r = JoinRecord {
            hash: h,
            created_ms: now,
            expires_ms: ttl.map(|t| now.saturating_add(t.as_millis() as u64)),
            revoked_ms: None,
        };
        put(&*self.store, &id, &r).await?;
        self.join.write().insert(id.clone(), r.clone());
        if rotate {
            let others: Vec<String> = self
                .join
                .read()
                .iter()
                .filter(|(i, r)| **i != id && r.revoked_ms.is_none())
                .map(|(i, _)| i.clone())
                .collect();
            for other in others {
                self.revoke_join(&other).await?;
            }
        }
        let token = match &self.tls {
            Some(tls) => JoinToken {
                ca: tls.fingerprint(),
                secret,
            }
            .to_string(),
            None => secret,
        };
        if rotate && let Some(f) = &self.join_file {
            write_atomic(f, format!("{token}\n").as_bytes(), true)?;
        }
        Ok((info(&id, &r), token))
    }

    /// Every join token, revoked and expired ones included.
    pub fn list_join(&self) -> Vec<JoinTokenInfo> {
        self.join.read().iter().map(|(id, r)| info(id, r)).collect()
    }

    /// Revokes a join token.
    ///
    /// # Errors
    ///
    /// [`SecurityError::UnknownJoinToken`], or the store fails.
    pub async fn revoke_join(&self, id: &str) -> Result<JoinTokenInfo, SecurityError> {
        let mut r = self
            .join
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| SecurityError::UnknownJoinToken(id.to_string()))?;
        if r.revoked_ms.is_none() {
            r.revoked_ms = Some(now_ms());
            put(&*self.store, id, &r).await?;
            self.join.write().insert(id.to_string(), r.clone());
        }
        Ok(info(id, &r))
    }

    /// Whether the worker was revoked.
    pub fn is_revoked(&self, worker: WorkerId) -> bool {
        self.revoked.read().contains(&worker)
    }

    /// Revokes a worker: stored first, then its connection (if any) is cut.
    /// Returns whether it was connected.
    ///
    /// # Errors
    ///
    /// The store fails; nothing changed.
    pub async fn revoke_worker(&self, worker: WorkerId) -> Result<bool, SecurityError> {
        let at = now_ms().to_string().into_bytes();
        self.store
            .put_credential(REVOKED_KIND, &worker.to_string(), at)
            .await?;
        self.revoked.write().insert(worker);
        let live = self.live.lock().remove(&worker);
        Ok(match live {
            Some((_, tx)) => tx.send(Cut::Revoked).is_ok(),
            None => false,
        })
    }

    /// Signs an agent's request for `worker`, valid for the configured
    /// lifetime.
    ///
    /// # Errors
    ///
    /// No TLS, or the request cannot be used (named `csr_pem`).
    pub fn sign(&self, csr_pem: &str, worker: WorkerId) -> Result<Issued, SecurityError> {
        let tls = self.tls.as_ref().ok_or(SecurityError::NoTls)?;
        Ok(tls.pki().sign_agent(csr_pem, worker, self.cert_ttl)?)
    }

    /// Registers a worker's connection so that revoking it cuts this
    /// connection. An agent holds one connection at a time: an older
    /// connection of the same worker is cut ([`Cut::Superseded`]).
    pub fn connected(self: &Arc<Self>, worker: WorkerId) -> LiveConn<S> {
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(Cut::Live);
        if let Some((_, older)) = self.live.lock().insert(worker, (id, tx)) {
            let _ = older.send(Cut::Superseded);
        }
        // Revoked between the caller's check and now: revoke_worker marks
        // before it looks here, so one of the two sees the other.
        if self.is_revoked(worker)
            && let Some((_, tx)) = self.live.lock().get(&worker)
        {
            let _ = tx.send(Cut::Revoked);
        }
        LiveConn {
            security: Arc::clone(self),
            worker,
            id,
            cut: rx,
        }
    }
}

fn client_info(id: &str, r: &ClientRecord) -> ClientTokenInfo {
    ClientTokenInfo {
        id: id.to_string(),
        role: r.role.parse().unwrap_or(Role::Viewer),
        scope: r.scope(),
        name: r.name.clone(),
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        revoked_ms: r.revoked_ms,
    }
}

async fn put_record<S: Store, T: Serialize>(
    store: &S,
    kind: &str,
    id: &str,
    r: &T,
) -> Result<(), SecurityError> {
    let v = serde_json::to_vec(r)
        .map_err(|e| SecurityError::Record(format!("{kind}/{id}"), e.to_string()))?;
    store.put_credential(kind, id, v).await?;
    Ok(())
}

fn info(id: &str, r: &JoinRecord) -> JoinTokenInfo {
    JoinTokenInfo {
        id: id.to_string(),
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        revoked_ms: r.revoked_ms,
    }
}

async fn put<S: Store>(store: &S, id: &str, r: &JoinRecord) -> Result<(), SecurityError> {
    put_record(store, JOIN_KIND, id, r).await
}

fn hex_to_32(s: &str) -> [u8; 32] {
    unhex(s).unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_store::{MemStore, StoreConfig};
    use tonic::metadata::MetadataValue;

    fn md(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
        m
    }

    /// Credentials over `store`, with `join` given at start.
    async fn with_join(store: &Arc<MemStore>, join: &str) -> Arc<Security<MemStore>> {
        let mut t = Tokens::new();
        t.add_join_token(join);
        Security::load(
            Arc::clone(store),
            None,
            Duration::from_secs(60),
            &t,
            None,
            None,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn join_tokens_are_stored_hashed_revoked_and_rotated() {
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let s = with_join(&store, "first").await;
        let first = s.authenticate_join(&md("first")).unwrap();
        // The full form is accepted for its secret.
        let pinned = format!("hodei-join.{}.first", crate::tls::Fingerprint::of(b"ca"));
        assert_eq!(s.authenticate_join(&md(&pinned)).unwrap(), first);
        assert!(s.authenticate_join(&md("other")).is_err());
        let raw = store.credentials(JOIN_KIND).await.unwrap();
        assert!(!String::from_utf8_lossy(&raw[0].1).contains("first"));

        let (_, second) = s.create_join(None, true).await.unwrap();
        assert!(s.authenticate_join(&md(&second)).is_ok());
        assert_eq!(
            s.authenticate_join(&md("first")),
            Err(AuthError::Unknown),
            "rotation revokes the others"
        );
        // A restart keeps the revocation even though the file still holds it.
        let again = with_join(&store, "first").await;
        assert!(again.authenticate_join(&md("first")).is_err());
        assert!(again.authenticate_join(&md(&second)).is_ok());
        assert_eq!(again.list_join().len(), 2);

        let (i, expired) = again
            .create_join(Some(Duration::from_millis(0)), false)
            .await
            .unwrap();
        assert!(i.expires_ms.is_some());
        assert!(again.authenticate_join(&md(&expired)).is_err());
        assert!(matches!(
            again.revoke_join("nope").await,
            Err(SecurityError::UnknownJoinToken(_))
        ));
    }

    #[tokio::test]
    async fn client_tokens_carry_a_role_expire_and_are_revoked_at_once() {
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let mut fixed = Tokens::new();
        fixed.add_client_token("boot-admin", Principal::admin());
        let s = Security::load(
            Arc::clone(&store),
            None,
            Duration::from_secs(60),
            &fixed,
            None,
            None,
        )
        .await
        .unwrap();
        assert!(s.authenticate_client(&md("boot-admin")).unwrap().is_admin());
        let acme: hodei_core::TenantId = "acme".parse().unwrap();
        let (info, tok) = s
            .create_token(
                Role::Viewer,
                Scope::Tenants(vec![acme.clone()]),
                "dash",
                None,
            )
            .await
            .unwrap();
        let p = s.authenticate_client(&md(&tok)).unwrap();
        assert_eq!(p.role, Role::Viewer);
        assert!(p.may_access(&acme) && !p.may_cancel(&acme));
        assert_eq!(p.name, format!("token:{}", info.id));
        // Stored hashed; listed without the token.
        let raw = store.credentials(CLIENT_KIND).await.unwrap();
        assert!(!String::from_utf8_lossy(&raw[0].1).contains(&tok));
        assert!(!format!("{:?}", s.list_tokens()).contains(&tok));
        s.revoke_token(&info.id).await.unwrap();
        assert_eq!(s.authenticate_client(&md(&tok)), Err(AuthError::Revoked));
        let (_, short) = s
            .create_token(
                Role::Submitter,
                Scope::Tenants(vec![acme]),
                "ci",
                Some(Duration::ZERO),
            )
            .await
            .unwrap();
        assert_eq!(s.authenticate_client(&md(&short)), Err(AuthError::Expired));
        assert!(matches!(
            s.create_token(Role::Operator, Scope::Tenants(vec![]), "x", None)
                .await,
            Err(SecurityError::Invalid("tenants", _))
        ));
        // After a restart: still revoked, still expired.
        let again = Security::load(store, None, Duration::from_secs(60), &fixed, None, None)
            .await
            .unwrap();
        assert_eq!(
            again.authenticate_client(&md(&tok)),
            Err(AuthError::Revoked)
        );
        assert_eq!(again.list_tokens().len(), 2);
    }

    #[tokio::test]
    async fn revoking_a_worker_cuts_its_connection_and_lasts() {
        let store = Arc::new(MemStore::new(StoreConfig::default()));
        let s = Security::load(
            Arc::clone(&store),
            None,
            Duration::from_secs(60),
            &Tokens::new(),
            None,
            None,
        )
        .await
        .unwrap();
        let w = WorkerId::new();
        let older = s.connected(w);
        let mut conn = s.connected(w);
        assert_eq!(
            *older.cut.borrow(),
            Cut::Superseded,
            "one connection at a time"
        );
        assert!(!s.is_revoked(w));
        assert!(s.revoke_worker(w).await.unwrap());
        conn.cut.changed().await.unwrap();
        assert_eq!(*conn.cut.borrow(), Cut::Revoked);
        drop(older);
        assert!(!s.revoke_worker(w).await.unwrap());
        let again = Security::load(
            store,
            None,
            Duration::from_secs(60),
            &Tokens::new(),
            None,
            None,
        )
        .await
        .unwrap();
        assert!(again.is_revoked(w));
    }
}

//! Who the agent is to the server, and how it proves it.
//!
//! Against a TLS server (`https://`) the agent joins once: it pins the
//! server's CA by the fingerprint in its join token, generates a key that
//! never leaves its state directory, sends a signing request with the
//! token, and keeps the certificate it gets (`identity.json`, mode 0600,
//! in the state directory). From then on it connects with that
//! certificate (mutual TLS, no token) and renews it at two thirds of its
//! life, with a new key, over its current certificate: no restart, and
//! the connection and jobs carry on. Against a plaintext server
//! (`http://`) it sends its join token on every connection.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_hwp::client::connect_agent;
use hodei_hwp::proto;
use hodei_hwp::tls::{ClientTls, Fingerprint, JoinToken, new_key_and_request, write_atomic};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// The file in the state directory that holds the agent's certificate and
/// key.
pub const IDENTITY_FILE: &str = "identity.json";

/// Why the agent has no identity (yet).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The join token is missing or not in the form a TLS server needs.
    #[error("join_token: {0}")]
    JoinToken(String),
    /// The state directory or identity file cannot be used.
    #[error("state_dir: {0}")]
    State(String),
    /// The server refused or could not be reached.
    #[error("{0}")]
    Server(String),
    /// Another running agent holds the state directory.
    #[error("state_dir: {0}")]
    Busy(String),
}

/// What `identity.json` holds.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    worker_id: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Clone)]
enum Creds {
    /// `http://`: the join token on every call.
    Plaintext(String),
    /// `https://`, not joined yet.
    Unjoined(JoinToken),
    /// `https://`, with a certificate.
    Certified(Arc<Stored>),
}

/// The agent's credentials, shared by its connection attempts and its
/// renewal task.
#[derive(Clone)]
pub struct Identity {
    server: String,
    name: String,
    path: PathBuf,
    creds: Arc<RwLock<Creds>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.creds.read() {
            Creds::Plaintext(_) => "plaintext".to_string(),
            Creds::Unjoined(_) => "not joined".to_string(),
            Creds::Certified(s) => format!("worker {}", s.worker_id),
        };
        f.debug_struct("Identity")
            .field("server", &self.server)
            .field("state", &state)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status(what: &str, s: tonic::Status) -> IdentityError {
    IdentityError::Server(format!("{what}: {}: {}", s.code(), s.message()))
}

impl Identity {
    /// The identity for `server`: the certificate in `state_dir` if the
    /// agent joined before, else the join token (which, for `https://`,
    /// must carry the CA fingerprint).
    ///
    /// # Errors
    ///
    /// No usable certificate and no usable join token, or an identity file
    /// that cannot be read.
    pub fn load(
        server: &str,
        join_token: &str,
        state_dir: &Path,
        name: &str,
    ) -> Result<Self, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let creds = if !server.starts_with("https://") {
            if join_token.is_empty() {
                return Err(IdentityError::JoinToken(
                    "required for a plaintext (http://) server".into(),
                ));
            }
            Creds::Plaintext(join_token.to_string())
        } else if path.exists() {
            hodei_hwp::secret_file::check_private(&path)
                .map_err(|e| IdentityError::State(e.to_string()))?;
            let text = std::fs::read(&path)
                .map_err(|e| IdentityError::State(format!("{}: {e}", path.display())))?;
            let s: Stored = serde_json::from_slice(&text)
                .map_err(|e| IdentityError::State(format!("{}: {e}", path.display())))?;
            Creds::Certified(Arc::new(s))
        } else {
            let t: JoinToken = join_token.parse().map_err(|e| {
                IdentityError::JoinToken(format!(
                    "{e} (a TLS server's join.token has this form; the agent has not joined yet, \
                     so it needs one)"
                ))
            })?;
            Creds::Unjoined(t)
        };
        Ok(Identity {
            server: server.to_string(),
            name: name.to_string(),
            path,
            creds: Arc::new(RwLock::new(creds)),
        })
    }

    /// The worker id its certificate names, once it has one.
    pub fn worker(&self) -> Option<String> {
        match &*self.creds.read() {
            Creds::Certified(s) => Some(s.worker_id.clone()),
            _ => None,
        }
    }

    /// A fingerprint of the current certificate (its PEM text), to tell
    /// renewals apart.
    pub fn certificate_fingerprint(&self) -> Option<Fingerprint> {
        match &*self.creds.read() {
            Creds::Certified(s) => Some(Fingerprint::of(s.cert_pem.as_bytes())),
            _ => None,
        }
    }

    /// How to connect now: TLS settings and the bearer token, if any.
    /// Joins first if the agent has no certificate yet.
    ///
    /// # Errors
    ///
    /// Joining failed (the server refused the token or the request, or is
    /// unreachable, or presented a CA other than the pinned one).
    pub async fn credentials(&self) -> Result<(ClientTls, Option<String>), IdentityError> {
        let creds = self.creds.read().clone();
        let stored = match creds {
            Creds::Plaintext(t) => return Ok((ClientTls::Plaintext, Some(t))),
            Creds::Certified(s) => s,
            Creds::Unjoined(token) => self.join(&token).await?,
        };
        Ok((tls_of(&stored), None))
    }

    async fn join(&self, token: &JoinToken) -> Result<Arc<Stored>, IdentityError> {
        let (key_pem, csr_pem) =
            new_key_and_request(&self.name).map_err(|e| IdentityError::State(e.to_string()))?;
        let secret = token.to_string();
        let mut client = connect_agent(&self.server, &ClientTls::Pinned(token.ca), Some(&secret))
            .await
            .map_err(|e| IdentityError::Server(format!("join: {e}")))?;
        let cert = client
            .join(proto::JoinRequest {
                csr_pem,
                name: self.name.clone(),
            })
            .await
            .map_err(|s| status("join", s))?
            .into_inner();
        // The CA the agent will trust from now on must be the one it
        // pinned.
        let ca = hodei_hwp::tls::certs_from_pem("ca_pem", cert.ca_pem.as_bytes())
            .map_err(|e| IdentityError::Server(format!("join: {e}")))?;
        if !ca.iter().any(|c| Fingerprint::of(c) == token.ca) {
            return Err(IdentityError::Server(
                "join: the server sent a CA other than the one the join token pins".into(),
            ));
        }
        let stored = self.keep(cert, key_pem)?;
        tracing::info!(worker = %stored.worker_id, "joined: certificate received");
        Ok(stored)
    }

    fn keep(
        &self,
        cert: proto::Certificate,
        key_pem: String,
    ) -> Result<Arc<Stored>, IdentityError> {
        let stored = Arc::new(Stored {
            worker_id: cert.worker_id,
            cert_pem: cert.certificate_pem,
            key_pem,
            ca_pem: cert.ca_pem,
            issued_at_ms: now_ms(),
            expires_at_ms: cert.expires_at_ms,
        });
        let json =
            serde_json::to_vec_pretty(&*stored).map_err(|e| IdentityError::State(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| IdentityError::State(format!("{}: {e}", dir.display())))?;
        }
        write_atomic(&self.path, &json, true).map_err(|e| IdentityError::State(e.to_string()))?;
        *self.creds.write() = Creds::Certified(Arc::clone(&stored));
        Ok(stored)
    }

    /// When the certificate should be renewed: at two thirds of its life.
    /// `None` without a certificate.
    pub fn renew_at(&self) -> Option<SystemTime> {
        match &*self.creds.read() {
            Creds::Certified(s) => {
                let life = s.expires_at_ms.saturating_sub(s.issued_at_ms);
                Some(UNIX_EPOCH + Duration::from_millis(s.issued_at_ms + life * 2 / 3))
            }
            _ => None,
        }
    }

    /// Renews the certificate: a new key, a request signed with the
    /// current certificate's connection, the result kept. Connections
    /// already open are not touched.
    ///
    /// # Errors
    ///
    /// No certificate to renew, or the server refused or is unreachable.
    pub async fn renew(&self) -> Result<(), IdentityError> {
        let current = match &*self.creds.read() {
            Creds::Certified(s) => Arc::clone(s),
            _ => return Err(IdentityError::State("no certificate to renew".into())),
        };
        let (key_pem, csr_pem) =
            new_key_and_request(&self.name).map_err(|e| IdentityError::State(e.to_string()))?;
        let mut client = connect_agent(&self.server, &tls_of(&current), None)
            .await
            .map_err(|e| IdentityError::Server(format!("renew: {e}")))?;
        let cert = client
            .renew(proto::RenewRequest { csr_pem })
            .await
            .map_err(|s| status("renew", s))?
            .into_inner();
        let stored = self.keep(cert, key_pem)?;
        tracing::info!(
            worker = %stored.worker_id,
            expires_at_ms = stored.expires_at_ms,
            "certificate renewed"
        );
        Ok(())
    }
}

fn tls_of(s: &Stored) -> ClientTls {
    ClientTls::Ca {
        roots: s.ca_pem.clone().into_bytes(),
        identity: Some((
            s.cert_pem.clone().into_bytes(),
            s.key_pem.clone().into_bytes(),
        )),
    }
}

/// The state directory held by one running agent: an exclusive lock on
/// `agent.lock` in it, released when dropped or when the process ends
/// (even by SIGKILL).
#[derive(Debug)]
pub struct StateLock {
    /// Held open: closing it releases the lock.
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of `state_dir` (made, mode 0700, if missing).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Busy`] when another running agent holds it;
    /// [`IdentityError::State`] when the directory or lock file cannot be
    /// made.
    pub fn take(state_dir: &Path) -> Result<StateLock, IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::os::unix::io::AsRawFd;
        let at = |e: std::io::Error| IdentityError::State(format!("{}: {e}", state_dir.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(at)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(state_dir.join("agent.lock"))
            .map_err(at)?;
        // SAFETY: flock on a descriptor this function owns; no memory is
        // passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(IdentityError::Busy(format!(
                    "{} is used by another running agent: give this one its own --state-dir \
                     (or --name)",
                    state_dir.display()
                )));
            }
            return Err(at(e));
        }
        Ok(StateLock { _file: f })
    }
}

/// Locks the state directory: `dir`, or, when it is the default one
/// (`shared`) and another running agent holds it, the first free of
/// `dir-2`, `dir-3`, ... (up to 64): agents started on one machine without
/// a directory of their own each get one, and keep it across restarts.
///
/// # Errors
///
/// As [`StateLock::take`]; busy when `dir` was chosen and is held, or all
/// 64 are.
pub fn lock_state_dir(dir: &Path, shared: bool) -> Result<(PathBuf, StateLock), IdentityError> {
    let first = match StateLock::take(dir) {
        Ok(l) => return Ok((dir.to_path_buf(), l)),
        Err(e) => e,
    };
    if !shared || !matches!(first, IdentityError::Busy(_)) {
        return Err(first);
    }
    for n in 2..=64 {
        let mut name = dir.as_os_str().to_owned();
        name.push(format!("-{n}"));
        let alt = PathBuf::from(name);
        match StateLock::take(&alt) {
            Ok(l) => {
                tracing::info!(state_dir = %alt.display(), "the default state directory is in use: using the next one");
                return Ok((alt, l));
            }
            Err(IdentityError::Busy(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(first)
}

/// Renews the certificate whenever due until the agent stops; a failed
/// renewal is retried (every tenth of the time left, between 1 s and a
/// minute) while the current certificate is still valid.
pub(crate) async fn renew_loop(identity: Identity) {
    loop {
        let Some(at) = identity.renew_at() else {
            // Not joined yet: look again shortly.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        if let Err(e) = identity.renew().await {
            let left = match &*identity.creds.read() {
                Creds::Certified(s) => {
                    Duration::from_millis(s.expires_at_ms.saturating_sub(now_ms()))
                }
                _ => Duration::ZERO,
            };
            let retry = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
            tracing::warn!(error = %e, retry_in = ?retry, "cannot renew the certificate");
            tokio::time::sleep(retry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_running_agent_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a");
        let held = StateLock::take(&state).unwrap();
        let e = StateLock::take(&state).unwrap_err();
        assert!(matches!(e, IdentityError::Busy(_)));
        assert!(e.to_string().contains("another running agent"), "{e}");
        StateLock::take(&dir.path().join("b")).unwrap();
        drop(held);
        StateLock::take(&state).unwrap();
    }

    #[test]
    fn a_default_directory_in_use_yields_the_next_one_a_chosen_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("vm");
        let (a, _la) = lock_state_dir(&state, true).unwrap();
        let (b, _lb) = lock_state_dir(&state, true).unwrap();
        assert_eq!(a, state);
        assert_eq!(b, dir.path().join("vm-2"));
        assert!(matches!(
            lock_state_dir(&state, false),
            Err(IdentityError::Busy(_))
        ));
    }

    #[test]
    fn agents_of_different_names_default_to_different_directories() {
        let a = crate::default_state_dir("build-1");
        let b = crate::default_state_dir("build-2");
        assert_ne!(a, b);
        assert!(a.ends_with("build-1"));
        // One component below the base, whatever the name holds.
        let odd = crate::default_state_dir("../../etc");
        assert_eq!(odd.parent(), a.parent(), "{}", odd.display());
        assert_eq!(crate::default_state_dir("..").parent(), a.parent());
    }
}

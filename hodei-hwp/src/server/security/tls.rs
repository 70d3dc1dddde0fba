//! TLS on the server's listeners: the configuration (the server's own PKI
//! or files given to it), reloaded when its files change, and the
//! accepting side, where handshakes run concurrently so one slow client
//! cannot hold up the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::server::security::pki::Pki;
use crate::tls::{Fingerprint, TlsError, certs_from_pem, provider, read};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes running at once, at most; past it, accepting waits.
const HANDSHAKES: usize = 1024;
/// Connections whose handshake is done but that the server has not yet
/// taken; full, handshakes wait to hand theirs over.
const READY: usize = 256;

/// Where the server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsSource {
    /// Made by the server's own CA, naming these hosts and addresses.
    Generated {
        /// The names the certificate carries.
        names: Vec<String>,
    },
    /// Files given to the server.
    Files {
        /// The certificate chain, PEM: the server's certificate first, the
        /// CA's last (that is the certificate agents pin).
        cert: PathBuf,
        /// The key, PEM (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// The configurations in use, and what they were made from.
#[derive(Debug)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    fingerprint: Fingerprint,
    leaf: Fingerprint,
    /// When two thirds of the served certificate's life have passed,
    /// seconds since the epoch (a generated certificate is made again
    /// from then on).
    renew_at: Option<i64>,
    /// When the served certificate expires, seconds since the epoch.
    not_after: Option<i64>,
    stamps: Vec<Option<SystemTime>>,
}

/// The server's TLS: its certificate, the CAs whose client certificates it
/// accepts (its own, which signs agents', and `client_ca` if given), and
/// the configuration for each listener. [`reload`](Self::reload) replaces
/// them when their files change; connections already open keep theirs.
#[derive(Debug)]
pub struct ServerTls {
    source: TlsSource,
    client_ca: Option<PathBuf>,
    pki: Arc<Pki>,
    loaded: RwLock<Loaded>,
    reloading: Mutex<()>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ServerTls {
    /// TLS from `source`, with `pki` (the server's own CA) trusted for
    /// client certificates, and `client_ca` too if given.
    ///
    /// # Errors
    ///
    /// A file cannot be read or does not hold a usable certificate or key
    /// (named in the message).
    pub fn new(
        source: TlsSource,
        client_ca: Option<PathBuf>,
        pki: Arc<Pki>,
    ) -> Result<Arc<Self>, TlsError> {
        if let TlsSource::Generated { names } = &source {
            pki.ensure_server_cert(names)?;
        }
        let tls = ServerTls {
            source,
            client_ca,
            pki,
            loaded: RwLock::new(Loaded {
                grpc: Arc::new(empty_config()?),
                http: Arc::new(empty_config()?),
                fingerprint: Fingerprint::of(b""),
                leaf: Fingerprint::of(b""),
                renew_at: None,
                not_after: None,
                stamps: Vec::new(),
            }),
            reloading: Mutex::new(()),
        };
        *tls.loaded.write() = tls.load()?;
        Ok(Arc::new(tls))
    }

    /// The server's own CA.
    pub fn pki(&self) -> &Arc<Pki> {
        &self.pki
    }

    /// The fingerprint agents pin: the last certificate of the server's
    /// chain (its CA).
    pub fn fingerprint(&self) -> Fingerprint {
        self.loaded.read().fingerprint
    }

    /// The fingerprint of the certificate served now (it changes when the
    /// files are replaced and reloaded).
    pub fn certificate_fingerprint(&self) -> Fingerprint {
        self.loaded.read().leaf
    }

    /// When the certificate served now expires, seconds since the epoch
    /// (`None` if it cannot be read, which a loaded one always can).
    pub fn certificate_not_after(&self) -> Option<i64> {
        self.loaded.read().not_after
    }

    fn files(&self) -> Vec<PathBuf> {
        let (cert, key) = match &self.source {
            TlsSource::Generated { .. } => {
                (self.pki.server_cert_path(), self.pki.server_key_path())
            }
            TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        };
        let mut files = vec![cert, key];
        files.extend(self.client_ca.clone());
        files
    }

    fn load(&self) -> Result<Loaded, TlsError> {
        let files = self.files();
        let stamps = files.iter().map(|f| modified(f)).collect();
        let (cert, key) = (&files[0], &files[1]);
        let chain = certs_from_pem(&cert.display().to_string(), &read(cert)?)?;
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| TlsError::invalid(key.display().to_string(), e))?;
        let fingerprint = chain
            .last()
            .map(|c| Fingerprint::of(c))
            .unwrap_or(Fingerprint::of(b""));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.pki.ca_der().clone())
            .map_err(|e| TlsError::invalid("ca.crt", e))?;
        if let Some(ca) = &self.client_ca {
            for c in certs_from_pem(&ca.display().to_string(), &read(ca)?)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::invalid(ca.display().to_string(), e))?;
            }
        }
        // Clients (the CLI, programs) bring a token instead of a
        // certificate; agents bring one, and the worker service requires
        // it. A certificate that is presented must verify.
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::invalid("client CA", e))?;
        let config = |alpn: &[&[u8]]| -> Result<ServerConfig, TlsError> {
            let mut c = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::invalid("tls", e))?
                .with_client_cert_verifier(verifier.clone())
                .with_single_cert(chain.clone(), key_der.clone_key())
                .map_err(|e| TlsError::invalid(cert.display().to_string(), e))?;
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(c)
        };
        Ok(Loaded {
            grpc: Arc::new(config(&[b"h2"])?),
            http: Arc::new(config(&[b"http/1.1"])?),
            fingerprint,
            leaf: Fingerprint::of(&chain[0]),
            renew_at: renew_at(&chain[0]),
            not_after: validity(&chain[0]).map(|(_, to)| to),
            stamps,
        })
    }

    /// Reads the certificate, key and client CA again if any of their files
    /// changed (or, with `force`, in any case), and makes a server
    /// certificate that nears its end again. New connections use the new
    /// configuration; open ones keep theirs. Returns whether it changed.
    ///
    /// # Errors
    ///
    /// The new files cannot be used; the configuration in use stays.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let _one = self.reloading.lock();
        let stamps: Vec<_> = self.files().iter().map(|f| modified(f)).collect();
        let (changed, due) = {
            let l = self.loaded.read();
            (
                stamps != l.stamps,
                l.renew_at.is_some_and(|t| now_secs() >= t),
            )
        };
        // The generated certificate is read and checked only when its
        // files changed or its renewal is due, not on every poll.
        let mut renewed = false;
        if let TlsSource::Generated { names } = &self.source
            && (force || changed || due)
        {
            renewed = self.pki.ensure_server_cert(names)?;
        }
        if !force && !changed && !renewed {
            return Ok(false);
        }
        let next = self.load()?;
        *self.loaded.write() = next;
        Ok(true)
    }

    fn acceptor(&self, http: bool) -> TlsAcceptor {
        let l = self.loaded.read();
        TlsAcceptor::from(Arc::clone(if http { &l.http } else { &l.grpc }))
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `cert`'s validity (not before, not after), seconds since the epoch.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert).ok()?;
    let v = c.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Two thirds into `cert`'s validity, seconds since the epoch.
fn renew_at(cert: &[u8]) -> Option<i64> {
    let (from, to) = validity(cert)?;
    Some(from + (to - from) * 2 / 3)
}

fn empty_config() -> Result<ServerConfig, TlsError> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::invalid("tls", e))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())))
}

/// Accepts on `listener` and completes TLS handshakes concurrently (each
/// within a time limit, at most [`HANDSHAKES`] at once); connections whose
/// handshake succeeds come out of the returned channel in the order they
/// finish. A failed handshake is counted and logged at debug level: the
/// client learns why from the TLS alert. Stops accepting (and closes the
/// listener) once the receiver is dropped.
pub(crate) fn accept_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    http: bool,
    on_failure: impl Fn() + Clone + Send + 'static,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(READY);
    let limit = Arc::new(Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => break,
                p = Arc::clone(&limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor(http);
            let (tx, on_failure) = (tx.clone(), on_failure.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    Ok(Err(e)) => {
                        on_failure();
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        on_failure();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// The HTTP listener over TLS, for axum.
#[derive(Debug)]
pub(crate) struct TlsListener {
    pub(crate) rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub(crate) addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task ends only when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The names a generated server certificate carries by default:
/// `localhost`, the loopback addresses, this host's name, and the listen
/// address when it is a specific one.
pub fn default_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = crate::settings::host_name()
        && rustls::pki_types::DnsName::try_from(h.as_str()).is_ok()
    {
        names.push(h);
    }
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    names
}

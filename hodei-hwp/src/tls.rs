//! TLS for agents and clients: what a connection trusts, the join token
//! that pins a server's CA, and private files for keys and certificates.
//!
//! A server serves TLS by default with a CA of its own. Clients trust that
//! CA from a file ([`ClientTls::Ca`]); a new agent has only its join token,
//! which carries the CA's SHA-256 fingerprint, and trusts a server only if
//! the server presents that CA ([`ClientTls::Pinned`]): no certificate is
//! taken on first use without being checked.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A file or value does not hold what it should.
    #[error("{what}: {message}")]
    Invalid {
        /// The file or field.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl TlsError {
    pub(crate) fn invalid(what: impl Into<String>, message: impl fmt::Display) -> Self {
        TlsError::Invalid {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
        move |source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The cryptography every Hodei TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's SHA-256 digest (of its DER encoding), shown as 64 hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        unhex(s)
            .map(Fingerprint)
            .ok_or_else(|| TlsError::invalid("fingerprint", "expected 64 hex digits (SHA-256)"))
    }
}

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from `2 * N` hex digits, or `None`.
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What a join token starts with.
const JOIN_PREFIX: &str = "hodei-join";

/// A join token: the fingerprint of the CA the server's certificate chains
/// to, and the secret the server checks. Written
/// `hodei-join.<fingerprint>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA an agent pins.
    pub ca: Fingerprint,
    /// The secret (the server keeps only its hash).
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}.{}.{}", self.ca, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl FromStr for JoinToken {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let mut parts = s.trim().splitn(3, '.');
        let (Some(JOIN_PREFIX), Some(ca), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TlsError::invalid(
                "join token",
                format!("expected `{JOIN_PREFIX}.<CA fingerprint>.<secret>`"),
            ));
        };
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TlsError::invalid(
                "join token",
                "the secret must be printable ASCII",
            ));
        }
        Ok(JoinToken {
            ca: ca.parse()?,
            secret: secret.to_string(),
        })
    }
}

/// The certificates in PEM text.
///
/// # Errors
///
/// [`TlsError::Invalid`] naming `what` when the text holds none or a
/// malformed one.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(what, e))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(what, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// Reads a file.
///
/// # Errors
///
/// [`TlsError::Io`] naming the file.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(TlsError::io(path))
}

/// Writes `bytes` to `path` whole or not at all (a temporary file renamed
/// over it), mode 0600 when `private`, 0644 otherwise.
///
/// # Errors
///
/// [`TlsError::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(TlsError::io(&tmp))?;
    f.write_all(bytes).map_err(TlsError::io(&tmp))?;
    f.sync_all().map_err(TlsError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(TlsError::io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How a client connection is secured.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ClientTls {
    /// No TLS: only for `http://` endpoints of a server started with
    /// `--insecure-plaintext`.
    #[default]
    Plaintext,
    /// Trust these CA certificates (PEM); present a client certificate
    /// (PEM certificate chain and PKCS#8 key) if one is given.
    Ca {
        /// The CA certificates, PEM.
        roots: Vec<u8>,
        /// The client's certificate chain and key, PEM.
        identity: Option<(Vec<u8>, Vec<u8>)>,
    },
    /// Trust a server only if its chain holds the CA with this fingerprint
    /// (an agent's first contact, from its join token).
    Pinned(Fingerprint),
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientTls::Plaintext => f.write_str("Plaintext"),
            ClientTls::Ca { identity, .. } => f
                .debug_struct("Ca")
                .field("client_certificate", &identity.is_some())
                .finish_non_exhaustive(),
            ClientTls::Pinned(fp) => f.debug_tuple("Pinned").field(fp).finish(),
        }
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `path` (PEM).
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no certificate.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        let roots = read(path)?;
        certs_from_pem(&path.display().to_string(), &roots)?;
        Ok(ClientTls::Ca {
            roots,
            identity: None,
        })
    }

    /// The tonic configuration for `endpoint`, or `None` for plaintext.
    ///
    /// # Errors
    ///
    /// [`TlsError::Invalid`] when the scheme does not match (an `https://`
    /// endpoint without TLS settings, or TLS settings for `http://`).
    pub(crate) fn apply(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Endpoint, TlsError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let https = endpoint.uri().scheme_str() == Some("https");
        let bad = |m: &str| TlsError::invalid("endpoint", m);
        let config = ClientTlsConfig::new().assume_http2(true);
        match self {
            ClientTls::Plaintext if https => Err(bad(
                "https:// needs a CA to trust (the server's ca.crt, --ca-file)",
            )),
            ClientTls::Plaintext => Ok(endpoint),
            _ if !https => Err(bad(
                "TLS settings given for an http:// endpoint; use https://",
            )),
            ClientTls::Ca { roots, identity } => {
                let mut config = config.ca_certificate(Certificate::from_pem(roots));
                if let Some((cert, key)) = identity {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                endpoint
                    .tls_config(config)
                    .map_err(|e| TlsError::invalid("tls", e))
            }
            ClientTls::Pinned(fp) => endpoint
                .tls_config_with_verifier(config, Arc::new(PinnedCa::new(*fp)))
                .map_err(|e| TlsError::invalid("tls", e)),
        }
    }
}

/// Trusts a server whose chain holds the CA with a known fingerprint, and
/// whose leaf that CA signed for the name connected to.
#[derive(Debug)]
pub struct PinnedCa {
    ca: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    /// Pins the CA with fingerprint `ca`.
    pub fn new(ca: Fingerprint) -> Self {
        PinnedCa {
            ca,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| Fingerprint::of(c) == self.ca) else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let rest: Vec<_> = intermediates
            .iter()
            .filter(|c| Fingerprint::of(c) != self.ca)
            .cloned()
            .collect();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A new key pair (ECDSA P-256) and a signing request for it, both PEM.
/// The key never leaves the caller: only the request is sent.
///
/// # Errors
///
/// The key or the request cannot be made.
pub fn new_key_and_request(name: &str) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::invalid("key", e))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| TlsError::invalid("certificate request", e))?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_bad_ones_name_the_field() {
        let t = JoinToken {
            ca: Fingerprint::of(b"ca"),
            secret: "s3cret".into(),
        };
        let text = t.to_string();
        assert!(text.starts_with("hodei-join."));
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in [
            "",
            "abc",
            "hodei-join.zz.secret",
            "hodei-join.00.secret",
            "other.aa.bb",
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains("join token") || e.contains("fingerprint"), "{e}");
        }
        let fp = Fingerprint::of(b"x");
        assert_eq!(format!("sha256:{fp}").parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn a_key_and_request_are_pem() {
        let (key, csr) = new_key_and_request("w1").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.contains("CERTIFICATE REQUEST"));
    }

    #[test]
    fn files_are_written_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", true).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(certs_from_pem("x", b"nothing").is_err());
    }
}

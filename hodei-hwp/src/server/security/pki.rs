//! The server's own CA, in its data directory: made on first start, it
//! signs the server's certificate and the agents' client certificates.
//!
//! Files (under `<data dir>/tls/`): `ca.crt` (give it to clients),
//! `ca.key`, `server.crt` (the server's certificate followed by the CA's)
//! and `server.key`; keys are mode 0600. The server certificate is made
//! again, by the same CA, when it is missing, within a third of its life
//! of expiring, or does not name every address wanted, so agents that
//! pinned the CA are not disturbed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::WorkerId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::tls::{Fingerprint, TlsError, certs_from_pem, hex, read, write_atomic};

/// How long the CA made on first start is valid.
/// How long an agent's certificate is valid by default.
pub const AGENT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate made by the server is valid.
const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates are valid from a little before they are made, so a peer
/// whose clock is slightly behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The server's CA and the files it keeps.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
    fingerprint: Fingerprint,
}

/// A certificate signed for an agent.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate followed by the CA's, PEM.
    pub chain_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
    /// Its serial number, hex.
    pub serial: String,
}

fn at(t: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| TlsError::invalid("clock", e))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| TlsError::invalid("clock", e))
}

fn random_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive, as DER integers for serials must be.
    b[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&b)
}

impl Pki {
    /// The CA in `dir` (`<data dir>/tls`), made (with its directory, mode
    /// 0700) if missing. Returns it and the files just made.
    ///
    /// # Errors
    ///
    /// A file cannot be read or written, others may read the key, or a file
    /// does not hold a certificate or key.
    pub fn load_or_create(dir: &Path) -> Result<(Pki, Vec<PathBuf>), TlsError> {
        crate::server::security::tokens::private_dir(dir)
            .map_err(|e| TlsError::invalid(dir.display().to_string(), e))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let mut made = Vec::new();
        if !crt.exists() && !key.exists() {
            let ca_key = KeyPair::generate().map_err(|e| TlsError::invalid("ca.key", e))?;
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, "Hodei cluster CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = SystemTime::now();
            p.not_before = at(now - BACKDATE)?;
            p.not_after = at(now + CA_LIFETIME)?;
            p.serial_number = Some(random_serial());
            let cert = p
                .self_signed(&ca_key)
                .map_err(|e| TlsError::invalid("ca.crt", e))?;
            write_atomic(&key, ca_key.serialize_pem().as_bytes(), true)?;
            write_atomic(&crt, cert.pem().as_bytes(), false)?;
            made.extend([crt.clone(), key.clone()]);
        }
        crate::secret_file::check_private(&key)
            .map_err(|e| TlsError::invalid(key.display().to_string(), e))?;
        let ca_pem = String::from_utf8(read(&crt)?)
            .map_err(|e| TlsError::invalid(crt.display().to_string(), e))?;
        let ca_der = certs_from_pem(&crt.display().to_string(), ca_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::invalid(crt.display().to_string(), "empty"))?;
        let key_pem = String::from_utf8(read(&key)?)
            .map_err(|e| TlsError::invalid(key.display().to_string(), e))?;
        let ca_key = KeyPair::from_pem(&key_pem)
            .map_err(|e| TlsError::invalid(key.display().to_string(), e))?;
        let fingerprint = Fingerprint::of(&ca_der);
        Ok((
            Pki {
                dir: dir.to_path_buf(),
                ca_pem,
                ca_der,
                ca_key,
                fingerprint,
            },
            made,
        ))
    }

    /// The CA certificate, PEM (what clients trust).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA's fingerprint (what join tokens carry).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `server.crt`: the server's certificate followed by the CA's.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// `server.key`.
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, TlsError> {
        Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key).map_err(|e| TlsError::invalid("ca", e))
    }

    /// Makes the server certificate again if it is missing, expires within
    /// a third of its life, was not signed by this CA, or does not name
    /// each of `names` (host names and addresses). Returns whether it did.
    ///
    /// # Errors
    ///
    /// The files cannot be read or written, or a name is not a valid DNS
    /// name or address.
    pub fn ensure_server_cert(&self, names: &[String]) -> Result<bool, TlsError> {
        let (crt, key) = (self.server_cert_path(), self.server_key_path());
        if crt.exists() && key.exists() && self.server_cert_fits(&crt, names) {
            return Ok(false);
        }
        let server_key = KeyPair::generate().map_err(|e| TlsError::invalid("server.key", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "Hodei server");
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => {
                    rustls::pki_types::DnsName::try_from(n.as_str())
                        .map_err(|e| TlsError::invalid(format!("tls_san {n:?}"), e))?;
                    n.clone()
                        .try_into()
                        .map(SanType::DnsName)
                        .map_err(|e| TlsError::invalid(format!("tls_san {n:?}"), e))
                }
            })
            .collect::<Result<_, _>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        p.not_before = at(now - BACKDATE)?;
        p.not_after = at(now + SERVER_LIFETIME)?;
        p.serial_number = Some(random_serial());
        let cert = p
            .signed_by(&server_key, &self.issuer()?)
            .map_err(|e| TlsError::invalid("server.crt", e))?;
        write_atomic(&key, server_key.serialize_pem().as_bytes(), true)?;
        write_atomic(
            &crt,
            format!("{}{}", cert.pem(), self.ca_pem).as_bytes(),
            false,
        )?;
        Ok(true)
    }

    fn server_cert_fits(&self, crt: &Path, names: &[String]) -> bool {
        let Ok(pem) = read(crt) else { return false };
        let Ok(chain) = certs_from_pem("server.crt", &pem) else {
            return false;
        };
        if !chain.iter().any(|c| Fingerprint::of(c) == self.fingerprint) {
            return false;
        }
        let Ok((_, leaf)) = X509Certificate::from_der(&chain[0]) else {
            return false;
        };
        let v = leaf.validity();
        let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now + (to - from) / 3 > to {
            return false;
        }
        let mut have: Vec<String> = Vec::new();
        for ext in leaf.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => have.push(d.to_string()),
                        GeneralName::IPAddress(b) => {
                            let ip = match b.len() {
                                4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                                _ => None,
                            };
                            have.extend(ip.map(|i| i.to_string()));
                        }
                        _ => {}
                    }
                }
            }
        }
        names.iter().all(|n| {
            let n = n
                .parse::<IpAddr>()
                .map(|i| i.to_string())
                .unwrap_or(n.clone());
            have.contains(&n)
        })
    }

    /// Signs an agent's certificate request: the certificate names
    /// `worker` (its common name), serves only for client authentication,
    /// and is valid for `ttl`. Whatever else the request asks for is
    /// ignored; only its public key is taken, after its signature is
    /// checked.
    ///
    /// # Errors
    ///
    /// [`TlsError::Invalid`] naming `csr_pem` when the request cannot be
    /// parsed or its signature does not hold.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        worker: WorkerId,
        ttl: Duration,
    ) -> Result<Issued, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::invalid("csr_pem", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, worker.to_string());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + ttl;
        p.not_before = at(now - BACKDATE)?;
        p.not_after = at(not_after)?;
        let serial = random_serial();
        let serial_hex = hex(&serial.to_bytes());
        p.serial_number = Some(serial);
        let cert = p
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(|e| TlsError::invalid("csr_pem", e))?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            not_after,
            serial: serial_hex,
        })
    }

    /// Signs a certificate for `worker` with an arbitrary validity window,
    /// for tests of expired or not-yet-valid certificates. Returns the
    /// chain and the key, PEM.
    ///
    /// # Errors
    ///
    /// The key or certificate cannot be made.
    #[doc(hidden)]
    pub fn sign_agent_window(
        &self,
        worker: WorkerId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String), TlsError> {
        let (key, csr) = crate::tls::new_key_and_request("test")?;
        let csr = CertificateSigningRequestParams::from_pem(&csr)
            .map_err(|e| TlsError::invalid("csr_pem", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, worker.to_string());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(not_before)?;
        p.not_after = at(not_after)?;
        p.serial_number = Some(random_serial());
        let cert = p
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(|e| TlsError::invalid("csr_pem", e))?;
        Ok((format!("{}{}", cert.pem(), self.ca_pem), key))
    }
}

/// Who a client certificate names: the worker id in its common name, and
/// its serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// The worker.
    pub worker: WorkerId,
    /// The serial number, hex.
    pub serial: String,
    /// When it expires, seconds since the epoch.
    pub not_after: i64,
}

/// Reads the worker id from a verified client certificate (DER).
///
/// # Errors
///
/// A message for the caller when the certificate cannot be parsed or its
/// common name is not a worker id.
pub fn peer_cert(der: &[u8]) -> Result<PeerCert, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or("client certificate: no common name")?;
    let worker = cn
        .parse()
        .map_err(|e| format!("client certificate: common name {cn:?}: {e}"))?;
    Ok(PeerCert {
        worker,
        serial: hex(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_signs_what_it_is_asked_for_only() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, made) = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(made.len(), 2);
        let (again, made) = Pki::load_or_create(dir.path()).unwrap();
        assert!(made.is_empty());
        assert_eq!(pki.fingerprint(), again.fingerprint());

        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert!(pki.ensure_server_cert(&names).unwrap());
        assert!(!pki.ensure_server_cert(&names).unwrap());
        let more = vec!["localhost".into(), "10.1.2.3".into()];
        assert!(pki.ensure_server_cert(&more).unwrap());
        assert!(pki.ensure_server_cert(&["bad name!".into()]).is_err());

        let w = WorkerId::new();
        let (_key, csr) = crate::tls::new_key_and_request("anything").unwrap();
        let issued = pki.sign_agent(&csr, w, Duration::from_secs(60)).unwrap();
        let chain = certs_from_pem("chain", issued.chain_pem.as_bytes()).unwrap();
        let peer = peer_cert(&chain[0]).unwrap();
        assert_eq!(peer.worker, w);
        assert_eq!(peer.serial, issued.serial);
        let err = pki
            .sign_agent("garbage", w, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("csr_pem"), "{err}");
    }
}

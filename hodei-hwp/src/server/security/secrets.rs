//! Secret values at rest: sealed with XChaCha20-Poly1305 before a job is
//! stored, opened only to build the AssignJob for the agent that runs it,
//! and erased from the store once the job is final (the store's rule; the
//! names stay).
//!
//! The key file (`<data_dir>/secrets.key`, mode 0600, made on first start)
//! holds one key per line, 64 hex digits: the first seals, every one
//! opens. Rotating the key (`hodei-server rotate-secrets-key`) puts a new
//! key first and keeps the old ones, so jobs sealed before still open;
//! an old key can be deleted once every job sealed with it is final.
//!
//! A sealed value reads `hodei-sealed:v1:<key id>:<base64 nonce and
//! ciphertext>`; the job id and the secret's name are bound to it
//! (associated data), so a sealed value moved to another job or secret
//! does not open.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hodei_core::{Job, JobId, JobSpec};

use crate::secret_file::{TokenFileError, check_private, io};
use crate::tls::{hex, unhex};

const PREFIX: &str = "hodei-sealed:v1:";

/// Why a secret could not be sealed or opened, or the key file used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The key file cannot be read, written or trusted.
    #[error(transparent)]
    File(#[from] TokenFileError),
    /// A value is not sealed by any key in the file, or was altered.
    #[error("secret {name}: {why}")]
    Open {
        /// The secret's name.
        name: String,
        /// Why.
        why: String,
    },
    /// Encryption failed.
    #[error("sealing secret {0} failed")]
    Seal(String),
}

/// The keys: the first seals, all open.
pub struct SecretKeys {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SecretKeys").field("ids", &ids).finish()
    }
}

fn key_id(key: &[u8; 32]) -> String {
    hex(&blake3::hash(key).as_bytes()[..4])
}

fn new_key_line() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn parse_key(path: &Path, line_no: usize, line: &str) -> Result<[u8; 32], TokenFileError> {
    unhex(line).ok_or_else(|| TokenFileError::Malformed {
        path: format!("{}:{}", path.display(), line_no + 1),
        message: "expected a key of 64 hex digits".into(),
    })
}

fn associated(job: JobId, name: &str) -> Vec<u8> {
    let mut aad = job.to_string().into_bytes();
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

impl SecretKeys {
    /// The keys in `path`, the file made (mode 0600, one new key) if
    /// missing. Returns them and whether the file was just made.
    ///
    /// # Errors
    ///
    /// The file cannot be read or made, others may read it, or a line is
    /// not a key.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), SecretsError> {
        let made = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                writeln!(f, "{}", new_key_line()).map_err(io(path))?;
                f.sync_all().map_err(io(path))?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(path)(e).into()),
        };
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let k = parse_key(path, i, line)?;
            keys.push((key_id(&k), XChaCha20Poly1305::new(&k.into())));
        }
        if keys.is_empty() {
            return Err(TokenFileError::Malformed {
                path: path.display().to_string(),
                message: "holds no key".into(),
            }
            .into());
        }
        Ok((SecretKeys { keys }, made))
    }

    /// Puts a new key first in `path` (the others stay, to open what they
    /// sealed). Returns the new key's id.
    ///
    /// # Errors
    ///
    /// The file cannot be read or written, or others may read it.
    pub fn rotate(path: &Path) -> Result<String, SecretsError> {
        Self::load_or_create(path)?;
        let old = std::fs::read_to_string(path).map_err(io(path))?;
        let line = new_key_line();
        let id = key_id(&parse_key(path, 0, &line)?);
        crate::tls::write_atomic(path, format!("{line}\n{old}").as_bytes(), true).map_err(|e| {
            TokenFileError::Malformed {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(id)
    }

    /// The id of the key that seals (the first).
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals every secret value of `job` (those not sealed already).
    ///
    /// # Errors
    ///
    /// [`SecretsError::Seal`] if encryption fails.
    pub fn seal(&self, job: &mut Job) -> Result<(), SecretsError> {
        let (id, cipher) = &self.keys[0];
        for s in &mut job.spec.secrets {
            if s.value.starts_with(PREFIX) {
                continue;
            }
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let aad = associated(job.id, &s.name);
            let ct = cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: s.value.as_bytes(),
                        aad: &aad,
                    },
                )
                .map_err(|_| SecretsError::Seal(s.name.clone()))?;
            let mut blob = nonce.to_vec();
            blob.extend_from_slice(&ct);
            s.value = format!(
                "{PREFIX}{id}:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(blob)
            );
        }
        Ok(())
    }

    /// `spec` with its secret values opened, for the agent that runs job
    /// `job`. Values not sealed are left as they are.
    ///
    /// # Errors
    ///
    /// [`SecretsError::Open`] naming the secret whose key is gone or whose
    /// value was altered.
    pub fn open(&self, job: JobId, spec: &JobSpec) -> Result<JobSpec, SecretsError> {
        let mut spec = spec.clone();
        for s in &mut spec.secrets {
            let Some(rest) = s.value.strip_prefix(PREFIX) else {
                continue;
            };
            let fail = |why: &str| SecretsError::Open {
                name: s.name.clone(),
                why: why.to_string(),
            };
            let (id, blob) = rest.split_once(':').ok_or_else(|| fail("malformed"))?;
            let cipher = self
                .keys
                .iter()
                .find(|(k, _)| k == id)
                .map(|(_, c)| c)
                .ok_or_else(|| fail(&format!("sealed with key {id}, not in the key file")))?;
            let blob = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(blob)
                .map_err(|_| fail("malformed"))?;
            if blob.len() < 24 {
                return Err(fail("malformed"));
            }
            let (nonce, ct) = blob.split_at(24);
            let aad = associated(job, &s.name);
            let plain = cipher
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| fail("does not open: altered, or sealed for another job"))?;
            s.value = String::from_utf8(plain).map_err(|_| fail("not UTF-8"))?;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{Secret, Timestamp};

    fn job() -> Job {
        let mut spec = JobSpec::script("echo $TOKEN");
        spec.secrets = vec![Secret {
            name: "TOKEN".into(),
            value: "s3cr3t-value".into(),
        }];
        Job::new(JobId::new(), spec, Timestamp(0))
    }

    #[test]
    fn sealed_values_open_for_their_job_only_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let (keys, made) = SecretKeys::load_or_create(&path).unwrap();
        assert!(made);
        let mut j = job();
        keys.seal(&mut j).unwrap();
        let sealed = j.spec.secrets[0].value.clone();
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("s3cr3t"));
        assert_eq!(
            keys.open(j.id, &j.spec).unwrap().secrets[0].value,
            "s3cr3t-value"
        );
        // Moved to another job: does not open.
        let e = keys.open(JobId::new(), &j.spec).unwrap_err().to_string();
        assert!(e.contains("TOKEN"), "{e}");
        // Altered: does not open.
        let mut bad = j.spec.clone();
        bad.secrets[0]
            .value
            .replace_range(sealed.len() - 3.., "AAA");
        assert!(keys.open(j.id, &bad).is_err());

        // Rotation: the new key seals, the old one still opens.
        let new_id = SecretKeys::rotate(&path).unwrap();
        let (keys, made) = SecretKeys::load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(keys.current_id(), new_id);
        assert_eq!(
            keys.open(j.id, &j.spec).unwrap().secrets[0].value,
            "s3cr3t-value"
        );
        let mut k = job();
        keys.seal(&mut k).unwrap();
        assert!(k.spec.secrets[0].value.contains(&new_id));

        // A key file others may read is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SecretKeys::load_or_create(&path).is_err());
        assert!(!format!("{keys:?}").contains(&std::fs::read_to_string(&path).unwrap()[..64]));
    }
}

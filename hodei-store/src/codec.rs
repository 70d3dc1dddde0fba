//! The one place records are encoded and decoded, so the format can be
//! swapped or migrated without touching the stores.
//!
//! Every record starts with a format byte; version 1 is bincode 2's
//! standard configuration over serde.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;

/// The record format written by this build.
pub const FORMAT_VERSION: u8 = 1;

/// Encodes `value` as a versioned record.
///
/// # Errors
///
/// [`StoreError::Codec`] if the value cannot be encoded.
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| StoreError::codec(what, e))?;
    Ok(out)
}

/// Decodes a versioned record.
///
/// # Errors
///
/// [`StoreError::Codec`]: an unknown format byte, bytes that do not decode, or
/// trailing bytes.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let err = |reason: String| StoreError::codec_message(what, reason);
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            let (v, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map_err(|e| StoreError::codec(what, e))?;
            if used != body.len() {
                return Err(err(format!("{} trailing bytes", body.len() - used)));
            }
            Ok(v)
        }
        Some((v, _)) => Err(err(format!("unknown record format {v}"))),
        None => Err(err("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{Job, JobId, JobSpec, Secret, Timestamp};

    #[test]
    fn a_job_round_trips() {
        let mut spec = JobSpec::script("echo hi");
        spec.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "0123456789".into(),
        });
        spec.timeout = Some(std::time::Duration::from_secs(90));
        let job = Job::new(JobId::new(), spec, Timestamp(42));
        let bytes = encode("job", &job).unwrap();
        let back: Job = decode("job", &bytes).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn foreign_bytes_are_an_error_not_a_panic() {
        assert!(decode::<Job>("job", &[]).is_err());
        assert!(decode::<Job>("job", &[9, 1, 2]).is_err());
        assert!(decode::<Job>("job", &[1, 255, 255, 255]).is_err());
    }
}

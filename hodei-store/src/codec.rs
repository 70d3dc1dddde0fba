//! The one place records are encoded and decoded, so the format can be
//! swapped or migrated without touching the stores.
//!
//! Every record starts with a format byte; both versions are bincode 2's
//! standard configuration over serde. Version 2 added
//! [`JobSpec::concurrency`](hodei_core::JobSpec::concurrency): a job record
//! of version 1 is read through its old layout ([`decode_job`]); every
//! other record is laid out the same in both.

use hodei_core::Job;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;

/// The record format written by this build.
pub const FORMAT_VERSION: u8 = 2;

/// The format before job specs had a concurrency limit.
const FORMAT_V1: u8 = 1;

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
        Some((&(FORMAT_VERSION | FORMAT_V1), body)) => body_of(what, body),
        Some((v, _)) => Err(err(format!("unknown record format {v}"))),
        None => Err(err("empty record".into())),
    }
}

fn body_of<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, StoreError> {
    let (v, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| StoreError::codec(what, e))?;
    if used != body.len() {
        return Err(StoreError::codec_message(
            what,
            format!("{} trailing bytes", body.len() - used),
        ));
    }
    Ok(v)
}

/// Decodes a job record of either format.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_job(bytes: &[u8]) -> Result<Job, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => body_of::<v1::Job>("job", body).map(Into::into),
        _ => decode("job", bytes),
    }
}

/// The layout of format 1: a job spec without a concurrency limit.
mod v1 {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use hodei_core::{
        Command, Constraint, JobId, JobState, Resources, RetryPolicy, Secret, SecretDelivery,
        TenantId, Timestamp,
    };
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(super) struct JobSpec {
        pub(super) name: String,
        pub(super) command: Command,
        pub(super) env: BTreeMap<String, String>,
        pub(super) secrets: Vec<Secret>,
        pub(super) secret_delivery: SecretDelivery,
        pub(super) working_dir: Option<String>,
        pub(super) pty: bool,
        pub(super) resources: Resources,
        pub(super) constraints: Vec<Constraint>,
        pub(super) priority: u8,
        pub(super) tenant: TenantId,
        #[serde(with = "humantime_serde")]
        pub(super) timeout: Option<Duration>,
        pub(super) retry: RetryPolicy,
        pub(super) idempotency_key: Option<String>,
        pub(super) labels: BTreeMap<String, String>,
        pub(super) dependencies: Vec<JobId>,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Job {
        pub(super) id: JobId,
        pub(super) spec: JobSpec,
        pub(super) state: JobState,
        pub(super) attempt: u32,
        pub(super) created_at: Timestamp,
        pub(super) updated_at: Timestamp,
    }

    impl From<Job> for hodei_core::Job {
        fn from(j: Job) -> Self {
            let s = j.spec;
            hodei_core::Job {
                id: j.id,
                spec: hodei_core::JobSpec {
                    name: s.name,
                    command: s.command,
                    env: s.env,
                    secrets: s.secrets,
                    secret_delivery: s.secret_delivery,
                    working_dir: s.working_dir,
                    pty: s.pty,
                    resources: s.resources,
                    constraints: s.constraints,
                    priority: s.priority,
                    tenant: s.tenant,
                    timeout: s.timeout,
                    retry: s.retry,
                    idempotency_key: s.idempotency_key,
                    labels: s.labels,
                    dependencies: s.dependencies,
                    concurrency: None,
                },
                state: j.state,
                attempt: j.attempt,
                created_at: j.created_at,
                updated_at: j.updated_at,
            }
        }
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
        let back: Job = decode_job(&bytes).unwrap();
        assert_eq!(back, job);
    }

    /// A job stored before specs had a concurrency limit reads as one
    /// without.
    #[test]
    fn a_job_of_format_1_still_reads() {
        let mut spec = JobSpec::script("echo hi");
        spec.timeout = Some(std::time::Duration::from_secs(90));
        spec.labels.insert("a".into(), "b".into());
        let job = Job::new(JobId::new(), spec.clone(), Timestamp(42));
        let old = v1::Job {
            id: job.id,
            spec: v1::JobSpec {
                name: spec.name,
                command: spec.command,
                env: spec.env,
                secrets: spec.secrets,
                secret_delivery: spec.secret_delivery,
                working_dir: spec.working_dir,
                pty: spec.pty,
                resources: spec.resources,
                constraints: spec.constraints,
                priority: spec.priority,
                tenant: spec.tenant,
                timeout: spec.timeout,
                retry: spec.retry,
                idempotency_key: spec.idempotency_key,
                labels: spec.labels,
                dependencies: spec.dependencies,
            },
            state: job.state,
            attempt: job.attempt,
            created_at: job.created_at,
            updated_at: job.updated_at,
        };
        let mut bytes = encode("job", &old).unwrap();
        bytes[0] = FORMAT_V1;
        assert_eq!(decode_job(&bytes).unwrap(), job);
        // The current format reads through the same call.
        let mut limited = job.clone();
        limited.spec.concurrency = Some(hodei_core::ConcurrencyLimit {
            key: "deploy".into(),
            limit: 1,
        });
        assert_eq!(
            decode_job(&encode("job", &limited).unwrap()).unwrap(),
            limited
        );
    }

    #[test]
    fn foreign_bytes_are_an_error_not_a_panic() {
        assert!(decode::<Job>("job", &[]).is_err());
        assert!(decode::<Job>("job", &[9, 1, 2]).is_err());
        assert!(decode::<Job>("job", &[1, 255, 255, 255]).is_err());
    }
}

//! A job's spec in JSON, and its conversion to the wire's, so that both
//! APIs validate through the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::proto;

/// What a job is asked to need.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourcesJson {
    /// Thousandths of a CPU.
    #[serde(default)]
    pub cpu_millis: u32,
    /// Memory, MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// GPUs.
    #[serde(default)]
    pub gpus: u32,
}

/// A placement constraint on a worker label.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConstraintJson {
    /// The label.
    pub key: String,
    /// `in`, `not_in`, `exists` or `not_exists`.
    pub op: ConstraintOpJson,
    /// The values for `in` and `not_in`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// How a constraint compares.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConstraintOpJson {
    /// The label has one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is not set.
    NotExists,
}

/// A secret: its value goes in, never comes out.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretJson {
    /// The name the job sees (an environment variable, a JSON key).
    pub name: String,
    /// The value: required on submission, absent in every answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How secrets reach the job.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SecretDeliveryJson {
    /// As environment variables.
    #[default]
    Env,
    /// As one JSON object on standard input.
    StdinJson,
}

/// Waiting between attempts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackoffJson {
    /// The first wait, ms.
    pub initial_ms: u64,
    /// The longest wait, ms.
    pub max_ms: u64,
    /// Growth per attempt.
    pub multiplier: f64,
}

/// When a failed job runs again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryJson {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Waiting between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffJson>,
    /// Random spread of each wait, 0 to 1.
    #[serde(default)]
    pub jitter: f64,
}

/// What to run and how: the same fields and rules as the gRPC `JobSpec`.
/// Exactly one of `argv` and `script`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobSpecJson {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell script, run by `sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets (values masked in the job's output).
    #[serde(default)]
    pub secrets: Vec<SecretJson>,
    /// How secrets reach the job.
    #[serde(default)]
    pub secret_delivery: SecretDeliveryJson,
    /// Where the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Run under a pseudo-terminal.
    #[serde(default)]
    pub pty: bool,
    /// What the job needs of a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesJson>,
    /// Where it may run.
    #[serde(default)]
    pub constraints: Vec<ConstraintJson>,
    /// 0 (lowest) to 7; 4 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// The tenant; a single-tenant token's own when empty.
    #[serde(default)]
    pub tenant: String,
    /// Time limit of one attempt, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryJson>,
    /// A submission repeated with the same key returns the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Labels, for people and filters.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Jobs that must succeed first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// At most `limit` jobs naming `key` hold a worker at once, across
    /// tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyJson>,
}

/// A concurrency key and its limit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConcurrencyJson {
    /// The key (1 to 128 bytes), shared across tenants.
    pub key: String,
    /// How many jobs naming it may hold a worker at once (1 to 100,000).
    pub limit: u32,
}

/// A submission.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJson {
    /// The job.
    pub spec: JobSpecJson,
}

pub(super) fn resources_to_wire(r: ResourcesJson) -> proto::Resources {
    proto::Resources {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        gpus: r.gpus,
    }
}

pub(super) fn resources_from_wire(r: Option<proto::Resources>) -> ResourcesJson {
    let r = r.unwrap_or_default();
    ResourcesJson {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        gpus: r.gpus,
    }
}

impl JobSpecJson {
    /// The gRPC message, for the one validation both APIs share. `argv`
    /// and `script` together are refused here (the message has room for
    /// one).
    pub(crate) fn into_wire(self) -> Result<proto::JobSpec, (String, String)> {
        let command = match (self.argv, self.script) {
            (Some(_), Some(_)) => {
                return Err((
                    "spec.script".into(),
                    "argv and script exclude each other: give one".into(),
                ));
            }
            (Some(args), None) => Some(proto::job_spec::Command::Argv(proto::Argv { args })),
            (None, Some(s)) => Some(proto::job_spec::Command::Script(s)),
            (None, None) => None,
        };
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, s) in self.secrets.into_iter().enumerate() {
            let Some(value) = s.value else {
                return Err((format!("spec.secrets[{i}].value"), "must be set".into()));
            };
            secrets.push(proto::Secret {
                name: s.name,
                value,
            });
        }
        Ok(proto::JobSpec {
            name: self.name,
            command,
            env: self.env.into_iter().collect(),
            secrets,
            secret_delivery: match self.secret_delivery {
                SecretDeliveryJson::Env => proto::SecretDelivery::Env,
                SecretDeliveryJson::StdinJson => proto::SecretDelivery::StdinJson,
            } as i32,
            working_dir: self.working_dir,
            pty: self.pty,
            resources: self.resources.map(resources_to_wire),
            constraints: self
                .constraints
                .into_iter()
                .map(|c| proto::Constraint {
                    key: c.key,
                    op: match c.op {
                        ConstraintOpJson::In => proto::ConstraintOp::In,
                        ConstraintOpJson::NotIn => proto::ConstraintOp::NotIn,
                        ConstraintOpJson::Exists => proto::ConstraintOp::Exists,
                        ConstraintOpJson::NotExists => proto::ConstraintOp::NotExists,
                    } as i32,
                    values: c.values,
                })
                .collect(),
            priority: self.priority,
            tenant: self.tenant,
            timeout_ms: self.timeout_ms,
            retry: self.retry.map(|r| proto::RetryPolicy {
                max_attempts: r.max_attempts,
                backoff: r.backoff.map(|b| proto::Backoff {
                    initial_ms: b.initial_ms,
                    max_ms: b.max_ms,
                    multiplier: b.multiplier,
                }),
                jitter: r.jitter,
            }),
            idempotency_key: self.idempotency_key,
            labels: self.labels.into_iter().collect(),
            dependencies: self.dependencies,
            concurrency: self.concurrency.map(|c| proto::ConcurrencyLimit {
                key: c.key,
                limit: c.limit,
            }),
        })
    }

    pub(super) fn from_wire(w: proto::JobSpec) -> Self {
        let (argv, script) = match w.command {
            Some(proto::job_spec::Command::Argv(a)) => (Some(a.args), None),
            Some(proto::job_spec::Command::Script(s)) => (None, Some(s)),
            None => (None, None),
        };
        JobSpecJson {
            name: w.name,
            argv,
            script,
            env: w.env.into_iter().collect(),
            // The gRPC answer carries names only already; values are
            // dropped here as well, whatever it carried.
            secrets: w
                .secrets
                .into_iter()
                .map(|s| SecretJson {
                    name: s.name,
                    value: None,
                })
                .collect(),
            secret_delivery: match proto::SecretDelivery::try_from(w.secret_delivery) {
                Ok(proto::SecretDelivery::StdinJson) => SecretDeliveryJson::StdinJson,
                _ => SecretDeliveryJson::Env,
            },
            working_dir: w.working_dir,
            pty: w.pty,
            resources: w.resources.map(|r| resources_from_wire(Some(r))),
            constraints: w
                .constraints
                .into_iter()
                .map(|c| ConstraintJson {
                    key: c.key,
                    op: match proto::ConstraintOp::try_from(c.op) {
                        Ok(proto::ConstraintOp::NotIn) => ConstraintOpJson::NotIn,
                        Ok(proto::ConstraintOp::Exists) => ConstraintOpJson::Exists,
                        Ok(proto::ConstraintOp::NotExists) => ConstraintOpJson::NotExists,
                        _ => ConstraintOpJson::In,
                    },
                    values: c.values,
                })
                .collect(),
            priority: w.priority,
            tenant: w.tenant,
            timeout_ms: w.timeout_ms,
            retry: w.retry.map(|r| RetryJson {
                max_attempts: r.max_attempts,
                backoff: r.backoff.map(|b| BackoffJson {
                    initial_ms: b.initial_ms,
                    max_ms: b.max_ms,
                    multiplier: b.multiplier,
                }),
                jitter: r.jitter,
            }),
            idempotency_key: w.idempotency_key,
            labels: w.labels.into_iter().collect(),
            dependencies: w.dependencies,
            concurrency: w.concurrency.map(|c| ConcurrencyJson {
                key: c.key,
                limit: c.limit,
            }),
        }
    }
}

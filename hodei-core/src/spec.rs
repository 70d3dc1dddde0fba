//! [`JobSpec`]: what a client asks to run, and its validation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::id::{JobId, TenantId};
use crate::resources::Resources;

/// Number of priority levels; priorities run from 0 (lowest) to
/// `PRIORITY_LEVELS - 1` (highest).
pub const PRIORITY_LEVELS: u8 = 8;

/// Shortest secret value accepted, in bytes.
///
/// Masking a very short value (say `ab`) would blank out ordinary words all
/// over the log while protecting almost nothing: such a value can be guessed.
/// The rule is enforced at submission, so an agent never receives a secret it
/// cannot mask safely.
pub const MIN_SECRET_LEN: usize = 8;

/// Longest timeout accepted: seven days.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

const MAX_ARGS: usize = 4096;
const MAX_ARG_BYTES: usize = 128 * 1024;
const MAX_SCRIPT_BYTES: usize = 1024 * 1024;
const MAX_ENV: usize = 1024;
const MAX_ENV_VALUE_BYTES: usize = 128 * 1024;
const MAX_SECRETS: usize = 256;
const MAX_SECRET_BYTES: usize = 64 * 1024;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 253;
const MAX_CONSTRAINTS: usize = 64;
const MAX_DEPENDENCIES: usize = 256;
const MAX_IDEMPOTENCY_KEY: usize = 128;
const MAX_ATTEMPTS: u32 = 100;
const MAX_CPU_MILLIS: u32 = 1024 * 1000;
const MAX_MEMORY_MB: u64 = 64 * 1024 * 1024;
const MAX_GPUS: u32 = 64;

/// What to execute.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// A program and its arguments, executed directly (no shell).
    Argv(Vec<String>),
    /// A script run by `/bin/sh` with a safety header (`set -eu`), so a
    /// failing step or an unset variable fails the job.
    Script(String),
}

impl Default for Command {
    fn default() -> Self {
        Command::Argv(Vec::new())
    }
}

/// How secret values reach the job's process.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretDelivery {
    /// As environment variables named after the secrets.
    #[default]
    Env,
    /// As one JSON object `{"NAME": "value", ...}` written to the process's
    /// standard input, which is then closed.
    StdinJson,
}

/// A named secret. Its value is never printed by `Debug` and is masked in
/// job logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The name (an environment-variable name).
    pub name: String,
    /// The value.
    pub value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// How a constraint compares a worker label.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present (`values` must be empty).
    Exists,
    /// The label is absent (`values` must be empty).
    NotExists,
}

/// A label selector a worker must satisfy to run the job.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// The label key.
    pub key: String,
    /// The comparison.
    pub op: ConstraintOp,
    /// The values compared against, for `in` and `not_in`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl Constraint {
    /// `key` must have one of `values`.
    pub fn is_in(key: impl Into<String>, values: &[&str]) -> Self {
        Constraint {
            key: key.into(),
            op: ConstraintOp::In,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// `key` must be present.
    pub fn exists(key: impl Into<String>) -> Self {
        Constraint {
            key: key.into(),
            op: ConstraintOp::Exists,
            values: Vec::new(),
        }
    }

    /// Whether a worker with these labels satisfies the constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            ConstraintOp::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            ConstraintOp::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            ConstraintOp::Exists => value.is_some(),
            ConstraintOp::NotExists => value.is_none(),
        }
    }
}

/// Exponential backoff between attempts.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Upper bound on any delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Factor applied per further attempt (1.0 to 10.0).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
        }
    }
}

/// How often and how patiently to retry a failed, timed-out or lost job.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Total attempts allowed, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The backoff schedule.
    pub backoff: Backoff,
    /// Fraction of each delay that is randomised (0.0 to 1.0): the delay is
    /// drawn uniformly from `[d * (1 - jitter), d]`, so jobs that failed
    /// together do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::default(),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// True if a job that just finished attempt `attempt` (1-based) may run
    /// again.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay to wait after attempt `attempt` (1-based) failed, with
    /// jitter drawn from `rng`. Deterministic for a seeded RNG.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let base = self.backoff_without_jitter(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || base.is_zero() {
            return base;
        }
        let factor = 1.0 - jitter * rng.random::<f64>();
        base.mul_f64(factor)
    }

    /// The delay after attempt `attempt` (1-based) of `job`, jitter
    /// included. The jitter is drawn from the job's id and the attempt, so
    /// the scheduler and anyone showing the job agree on when its next
    /// attempt is due, and jobs that failed together still spread out.
    pub fn delay_for(&self, job: crate::JobId, attempt: u32) -> Duration {
        use rand::SeedableRng;
        let id = job.as_u128();
        let seed = (id as u64) ^ ((id >> 64) as u64).rotate_left(17) ^ u64::from(attempt);
        self.delay(attempt, &mut rand::rngs::SmallRng::seed_from_u64(seed))
    }

    /// The delay after attempt `attempt` (1-based) before jitter.
    pub fn backoff_without_jitter(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.backoff.initial.as_secs_f64() * self.backoff.multiplier.powi(exp);
        let max = self.backoff.max.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.backoff.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }
}

/// Everything a client says about a job it submits.
///
/// Deserialises from JSON or TOML; only `command` is required. Call
/// [`JobSpec::validate`] before accepting one.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    /// A short human name (not unique).
    pub name: String,
    /// What to execute.
    pub command: Command,
    /// Environment variables for the process.
    pub env: BTreeMap<String, String>,
    /// Secret values, delivered as `secret_delivery` says and masked in logs.
    pub secrets: Vec<Secret>,
    /// How secrets reach the process.
    pub secret_delivery: SecretDelivery,
    /// Working directory (absolute); a fresh temporary one when unset.
    pub working_dir: Option<String>,
    /// Run under a pseudo-terminal instead of plain pipes.
    pub pty: bool,
    /// What the job needs from its worker.
    pub resources: Resources,
    /// Label selectors the worker must satisfy.
    pub constraints: Vec<Constraint>,
    /// 0 (lowest) to `PRIORITY_LEVELS - 1` (highest).
    pub priority: u8,
    /// The tenant that owns the job.
    pub tenant: TenantId,
    /// Wall-clock limit per attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retries after failure, timeout or loss.
    pub retry: RetryPolicy,
    /// A second submission with the same key (and tenant) returns the first
    /// job instead of creating another.
    pub idempotency_key: Option<String>,
    /// Free-form labels on the job itself.
    pub labels: BTreeMap<String, String>,
    /// Jobs that must succeed before this one is queued.
    pub dependencies: Vec<JobId>,
    /// At most `limit` jobs naming the same key hold a worker at once,
    /// whatever their tenants; the others wait without holding up any job
    /// that names another key or none.
    pub concurrency: Option<ConcurrencyLimit>,
}

/// Longest concurrency key.
pub const MAX_CONCURRENCY_KEY: usize = 128;

/// Highest limit of a concurrency key.
pub const MAX_CONCURRENCY_LIMIT: u32 = 100_000;

/// A key shared by jobs that may not all run at once (one deploy per
/// environment, say), and how many of them may.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// The key: 1 to 128 bytes, no control characters. Keys are one
    /// namespace across tenants.
    pub key: String,
    /// How many jobs naming the key may hold a worker at once (1 to
    /// 100,000); a job is placed only while fewer than its own limit do.
    pub limit: u32,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: String::new(),
            command: Command::default(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            secret_delivery: SecretDelivery::Env,
            working_dir: None,
            pty: false,
            resources: Resources::new(100, 64, 0),
            constraints: Vec::new(),
            priority: PRIORITY_LEVELS / 2,
            tenant: TenantId::default(),
            timeout: None,
            retry: RetryPolicy::default(),
            idempotency_key: None,
            labels: BTreeMap::new(),
            dependencies: Vec::new(),
            concurrency: None,
        }
    }
}

/// One problem with one field of a spec.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FieldError {
    /// The field, as a path: `env.PATH`, `command.argv[0]`, `retry.jitter`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// True if this problem concerns `field` or a path below it
    /// (`retry` covers `retry.jitter` and `retry[0]`).
    pub fn is_about(&self, field: &str) -> bool {
        self.field == field
            || self
                .field
                .strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a spec. Never empty.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

/// The longest text of a [`SpecErrors`]: the first problems, then how
/// many more. Errors travel in gRPC metadata, which clients cap at 8 KiB.
pub const MAX_ERRORS_TEXT: usize = 4 * 1024;

/// The longest text of one problem within a [`SpecErrors`].
const MAX_ONE_ERROR_TEXT: usize = 512;

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid job spec: {}", FieldError::join(&self.0))
    }
}

impl FieldError {
    /// The problems as one text, `field: message; ...`, bounded: the first
    /// problems up to [`MAX_ERRORS_TEXT`] bytes (each cut at 512), then
    /// `and N more`.
    pub fn join(errors: &[FieldError]) -> String {
        let mut text = String::new();
        for (i, e) in errors.iter().enumerate() {
            let mut one = e.to_string();
            if one.len() > MAX_ONE_ERROR_TEXT {
                let mut cut = MAX_ONE_ERROR_TEXT;
                while !one.is_char_boundary(cut) {
                    cut -= 1;
                }
                one.truncate(cut);
                one.push_str("...");
            }
            let sep = if i > 0 { "; " } else { "" };
            if i > 0 && text.len() + sep.len() + one.len() > MAX_ERRORS_TEXT {
                text.push_str(&format!("; and {} more", errors.len() - i));
                break;
            }
            text.push_str(sep);
            text.push_str(&one);
        }
        text
    }
}

impl SpecErrors {
    /// The problems found, in field order.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// True if any problem concerns `field` or a path below it.
    pub fn concerns(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.is_about(field))
    }
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 256
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Label keys: 1 to 63 of `A-Za-z0-9-_./`, starting alphanumeric.
/// What is wrong with `s` as a label key, if anything: the one rule for
/// keys, whether a worker registers the label or a job's constraint names
/// it, so every label a worker can have is one a job can select.
pub fn label_key_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > MAX_LABEL_KEY {
        return Some(format!("must be 1 to {MAX_LABEL_KEY} bytes"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or digit".into());
    }
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        .map(|c| format!("contains {c:?}; allowed: letters, digits, '-', '_', '.', '/'"))
}

/// What is wrong with `s` as a label value, if anything (the same rule for
/// workers and constraints).
pub fn label_value_problem(s: &str) -> Option<String> {
    if s.len() > MAX_LABEL_VALUE {
        return Some(format!("must be at most {MAX_LABEL_VALUE} bytes"));
    }
    s.chars()
        .find(|c| c.is_control())
        .map(|c| format!("contains control character {c:?}"))
}

impl JobSpec {
    /// A spec that runs `argv` with every other field at its default.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        JobSpec {
            command: Command::Argv(argv.into_iter().map(Into::into).collect()),
            ..JobSpec::default()
        }
    }

    /// A spec that runs a shell script with every other field at its default.
    pub fn script(script: impl Into<String>) -> Self {
        JobSpec {
            command: Command::Script(script.into()),
            ..JobSpec::default()
        }
    }

    /// The secret values, for building a masker.
    pub fn secret_values(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.iter().map(|s| s.value.as_bytes())
    }

    /// Checks every field and returns every problem found, each naming its
    /// field.
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] with every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        self.validate_inner(None)
    }

    /// Like [`validate`](Self::validate), also refusing a dependency on the
    /// job's own id `id`.
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] with every problem found, each naming its field.
    pub fn validate_as(&self, id: JobId) -> Result<(), SpecErrors> {
        self.validate_inner(Some(id))
    }

    fn validate_inner(&self, own_id: Option<JobId>) -> Result<(), SpecErrors> {
        let mut p = Problems::default();
        if self.name.len() > 256 || self.name.chars().any(char::is_control) {
            p.add(
                "name",
                "must be at most 256 bytes with no control characters",
            );
        }
        self.check_command(&mut p);
        self.check_env_and_secrets(&mut p);
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                p.add("working_dir", "must be an absolute path");
            }
            if dir.contains('\0') {
                p.add("working_dir", "must not contain NUL");
            }
        }
        self.check_resources(&mut p);
        self.check_constraints(&mut p);
        if self.priority >= PRIORITY_LEVELS {
            p.add(
                "priority",
                format!(
                    "must be 0 to {}, got {}",
                    PRIORITY_LEVELS - 1,
                    self.priority
                ),
            );
        }
        if let Some(t) = self.timeout {
            if t.is_zero() {
                p.add("timeout", "must be greater than zero");
            } else if t > MAX_TIMEOUT {
                p.add("timeout", "must be at most 7 days");
            }
        }
        self.check_retry(&mut p);
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                p.add(
                    "idempotency_key",
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
                );
            } else if key.chars().any(char::is_control) {
                p.add("idempotency_key", "must not contain control characters");
            }
        }
        self.check_labels(&mut p);
        self.check_dependencies(own_id, &mut p);
        if let Some(c) = &self.concurrency {
            if c.key.is_empty() || c.key.len() > MAX_CONCURRENCY_KEY {
                p.add(
                    "concurrency.key",
                    format!("must be 1 to {MAX_CONCURRENCY_KEY} bytes"),
                );
            } else if c.key.chars().any(char::is_control) {
                p.add("concurrency.key", "must not contain control characters");
            }
            if c.limit == 0 || c.limit > MAX_CONCURRENCY_LIMIT {
                p.add(
                    "concurrency.limit",
                    format!("must be 1 to {MAX_CONCURRENCY_LIMIT}, got {}", c.limit),
                );
            }
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(p.0))
        }
    }

    fn check_command(&self, p: &mut Problems) {
        match &self.command {
            Command::Argv(argv) => {
                if argv.is_empty() {
                    p.add("command.argv", "must name a program");
                } else if argv[0].is_empty() {
                    p.add("command.argv[0]", "program must not be empty");
                }
                if argv.len() > MAX_ARGS {
                    p.add("command.argv", format!("at most {MAX_ARGS} arguments"));
                }
                if argv.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES {
                    p.add(
                        "command.argv",
                        format!("at most {MAX_ARG_BYTES} bytes in all"),
                    );
                }
                for (i, a) in argv.iter().enumerate() {
                    if a.contains('\0') {
                        p.add(format!("command.argv[{i}]"), "must not contain NUL");
                    }
                }
            }
            Command::Script(s) => {
                if s.trim().is_empty() {
                    p.add("command.script", "must not be empty");
                }
                if s.len() > MAX_SCRIPT_BYTES {
                    p.add(
                        "command.script",
                        format!("at most {MAX_SCRIPT_BYTES} bytes"),
                    );
                }
                if s.contains('\0') {
                    p.add("command.script", "must not contain NUL");
                }
            }
        }
    }

    fn check_env_and_secrets(&self, p: &mut Problems) {
        if self.env.len() > MAX_ENV {
            p.add("env", format!("at most {MAX_ENV} variables"));
        }
        for (k, v) in &self.env {
            if !is_env_name(k) {
                p.add(
                    format!("env.{k}"),
                    "name must match [A-Za-z_][A-Za-z0-9_]* (at most 256 bytes)",
                );
            }
            if v.contains('\0') || v.len() > MAX_ENV_VALUE_BYTES {
                p.add(
                    format!("env.{k}"),
                    format!("value must have no NUL and at most {MAX_ENV_VALUE_BYTES} bytes"),
                );
            }
        }
        if self.secrets.len() > MAX_SECRETS {
            p.add("secrets", format!("at most {MAX_SECRETS} secrets"));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            let field = format!("secrets[{i}]");
            if !is_env_name(&s.name) {
                p.add(
                    format!("{field}.name"),
                    "must match [A-Za-z_][A-Za-z0-9_]* (at most 256 bytes)",
                );
            } else if !seen.insert(s.name.as_str()) {
                p.add(
                    format!("{field}.name"),
                    format!("{:?} appears twice", s.name),
                );
            } else if self.env.contains_key(&s.name) {
                p.add(
                    format!("{field}.name"),
                    format!("{:?} is also set in env", s.name),
                );
            }
            // The value itself is never quoted back: error messages travel
            // to logs and clients.
            // Masking skips line breaks, so they do not count.
            if s.value
                .bytes()
                .filter(|b| !matches!(b, b'\r' | b'\n'))
                .count()
                < MIN_SECRET_LEN
            {
                p.add(
                    format!("{field}.value"),
                    format!(
                        "must be at least {MIN_SECRET_LEN} bytes besides line breaks to be masked safely"
                    ),
                );
            } else if s.value.len() > MAX_SECRET_BYTES {
                p.add(
                    format!("{field}.value"),
                    format!("at most {MAX_SECRET_BYTES} bytes"),
                );
            }
            if s.value.contains('\0') {
                p.add(format!("{field}.value"), "must not contain NUL");
            }
        }
    }

    fn check_resources(&self, p: &mut Problems) {
        let r = &self.resources;
        if r.cpu_millis == 0 && r.memory_mb == 0 {
            p.add(
                "resources",
                "at least one of cpu_millis and memory_mb must be greater than zero",
            );
        }
        if r.cpu_millis > MAX_CPU_MILLIS {
            p.add("resources.cpu_millis", format!("at most {MAX_CPU_MILLIS}"));
        }
        if r.memory_mb > MAX_MEMORY_MB {
            p.add("resources.memory_mb", format!("at most {MAX_MEMORY_MB}"));
        }
        if r.gpus > MAX_GPUS {
            p.add("resources.gpus", format!("at most {MAX_GPUS}"));
        }
    }

    fn check_constraints(&self, p: &mut Problems) {
        if self.constraints.len() > MAX_CONSTRAINTS {
            p.add("constraints", format!("at most {MAX_CONSTRAINTS}"));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if let Some(why) = label_key_problem(&c.key) {
                p.add(format!("constraints[{i}].key"), why);
            }
            match c.op {
                ConstraintOp::In | ConstraintOp::NotIn if c.values.is_empty() => p.add(
                    format!("constraints[{i}].values"),
                    "must not be empty for in / not_in",
                ),
                ConstraintOp::Exists | ConstraintOp::NotExists if !c.values.is_empty() => p.add(
                    format!("constraints[{i}].values"),
                    "must be empty for exists / not_exists",
                ),
                _ => {}
            }
            for (j, v) in c.values.iter().enumerate() {
                if let Some(why) = label_value_problem(v) {
                    p.add(format!("constraints[{i}].values[{j}]"), why);
                }
            }
        }
    }

    fn check_retry(&self, p: &mut Problems) {
        let r = &self.retry;
        if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
            p.add("retry.max_attempts", format!("must be 1 to {MAX_ATTEMPTS}"));
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            p.add("retry.jitter", "must be between 0.0 and 1.0");
        }
        if !(1.0..=10.0).contains(&r.backoff.multiplier) {
            p.add("retry.backoff.multiplier", "must be between 1.0 and 10.0");
        }
        if r.backoff.initial > r.backoff.max {
            p.add("retry.backoff.initial", "must not exceed retry.backoff.max");
        }
        if r.backoff.max > Duration::from_secs(24 * 3600) {
            p.add("retry.backoff.max", "must be at most 24 hours");
        }
    }

    fn check_labels(&self, p: &mut Problems) {
        if self.labels.len() > MAX_LABELS {
            p.add("labels", format!("at most {MAX_LABELS} labels"));
        }
        for (k, v) in &self.labels {
            if let Some(why) = label_key_problem(k) {
                p.add(format!("labels.{k}"), format!("key {why}"));
            }
            if let Some(why) = label_value_problem(v) {
                p.add(format!("labels.{k}"), format!("value {why}"));
            }
        }
    }

    fn check_dependencies(&self, own_id: Option<JobId>, p: &mut Problems) {
        if self.dependencies.len() > MAX_DEPENDENCIES {
            p.add("dependencies", format!("at most {MAX_DEPENDENCIES}"));
        }
        let mut seen = BTreeSet::new();
        for (i, d) in self.dependencies.iter().enumerate() {
            if Some(*d) == own_id {
                p.add(
                    format!("dependencies[{i}]"),
                    "a job cannot depend on itself",
                );
            } else if !seen.insert(*d) {
                p.add(format!("dependencies[{i}]"), format!("{d} is listed twice"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ten_thousand_problems_make_a_short_message_saying_how_many_more() {
        let mut spec = JobSpec::argv(["true"]);
        for i in 0..10_000 {
            spec.env
                .insert(format!("{i}-bad name {}", "x".repeat(i % 3000)), "v".into());
        }
        let err = spec.validate().unwrap_err();
        assert!(err.errors().len() >= 10_000);
        let text = err.to_string();
        assert!(text.len() <= MAX_ERRORS_TEXT + 64, "{}", text.len());
        assert!(text.starts_with("invalid job spec: env"), "{}", &text[..80]);
        let more: usize = text
            .rsplit_once("; and ")
            .and_then(|(_, r)| r.strip_suffix(" more"))
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(more > 9_000, "{more}");
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        JobSpec::argv(["echo", "hi"]).validate().unwrap();
        JobSpec::script("echo hi").validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let id = JobId::new();
        let mut spec = JobSpec::argv(Vec::<String>::new());
        spec.env.insert("1BAD".into(), "x".into());
        spec.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "short".into(),
        });
        spec.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "long-enough-value".into(),
        });
        spec.resources = Resources::ZERO;
        spec.priority = 99;
        spec.timeout = Some(Duration::from_secs(365 * 24 * 3600));
        spec.retry.max_attempts = 0;
        spec.retry.jitter = 2.0;
        spec.dependencies = vec![id];
        spec.working_dir = Some("relative/dir".into());
        spec.constraints.push(Constraint {
            key: "zone".into(),
            op: ConstraintOp::In,
            values: vec![],
        });
        spec.idempotency_key = Some(String::new());
        let err = spec.validate_as(id).unwrap_err();
        for field in [
            "command.argv",
            "env.1BAD",
            "secrets[0].value",
            "secrets[1].name",
            "resources",
            "priority",
            "timeout",
            "retry.max_attempts",
            "retry.jitter",
            "dependencies[0]",
            "working_dir",
            "constraints[0].values",
            "idempotency_key",
        ] {
            assert!(err.concerns(field), "no error for {field}: {err}");
        }
        assert_eq!(err.errors().len(), 13, "{err}");
        // Plain validate cannot know the id, so the self-dependency passes.
        assert!(!spec.validate().unwrap_err().concerns("dependencies"));
    }

    #[test]
    fn errors_never_quote_a_secret_value() {
        let mut spec = JobSpec::argv(["true"]);
        spec.secrets.push(Secret {
            name: "bad name".into(),
            value: "hunter2".into(),
        });
        let msg = spec.validate().unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!format!("{spec:?}").contains("hunter2"));
    }

    #[test]
    fn secret_colliding_with_env_is_refused() {
        let mut spec = JobSpec::argv(["true"]);
        spec.env.insert("TOKEN".into(), "x".into());
        spec.secrets.push(Secret {
            name: "TOKEN".into(),
            value: "0123456789".into(),
        });
        assert!(spec.validate().unwrap_err().concerns("secrets[0].name"));
    }

    #[test]
    fn constraints_match_labels() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "eu".to_string())]
            .into_iter()
            .collect();
        assert!(Constraint::is_in("zone", &["eu", "us"]).matches(&labels));
        assert!(!Constraint::is_in("zone", &["us"]).matches(&labels));
        assert!(Constraint::exists("zone").matches(&labels));
        let not_in = Constraint {
            key: "gpu".into(),
            op: ConstraintOp::NotIn,
            values: vec!["a100".into()],
        };
        assert!(not_in.matches(&labels));
        let not_exists = Constraint {
            key: "zone".into(),
            op: ConstraintOp::NotExists,
            values: vec![],
        };
        assert!(!not_exists.matches(&labels));
    }

    #[test]
    fn spec_parses_from_json_and_toml() {
        let json = r#"{
            "name": "build",
            "command": {"argv": ["make", "-j4"]},
            "env": {"CC": "clang"},
            "resources": {"cpu_millis": 2000, "memory_mb": 1024},
            "constraints": [{"key": "arch", "op": "in", "values": ["x86_64"]}],
            "priority": 6,
            "tenant": "acme",
            "timeout": "10m",
            "retry": {"max_attempts": 3, "backoff": {"initial": "2s", "max": "1m", "multiplier": 2.0}, "jitter": 0.5}
        }"#;
        let spec: JobSpec = serde_json::from_str(json).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.timeout, Some(Duration::from_secs(600)));
        assert_eq!(spec.tenant.as_str(), "acme");
        assert_eq!(spec.retry.max_attempts, 3);

        let toml_text = r#"
            name = "nightly"
            command = { script = "echo start\nsleep 1" }
            priority = 2
            tenant = "ops"
            secret_delivery = "stdin_json"
            [[secrets]]
            name = "API_TOKEN"
            value = "s3cr3t-value"
            [resources]
            memory_mb = 512
        "#;
        let spec: JobSpec = toml::from_str(toml_text).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.command, Command::Script("echo start\nsleep 1".into()));
        assert_eq!(spec.secret_delivery, SecretDelivery::StdinJson);
        assert_eq!(spec.resources.memory_mb, 512);

        assert!(serde_json::from_str::<JobSpec>(r#"{"comand": {"argv": ["x"]}}"#).is_err());
        assert!(serde_json::from_str::<JobSpec>(r#"{"tenant": "Bad Tenant"}"#).is_err());
    }

    #[test]
    fn backoff_grows_exponentially_to_its_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(10),
                multiplier: 2.0,
            },
            jitter: 0.0,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<u64> = (1..=6)
            .map(|a| policy.delay(a, &mut rng).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert!(policy.allows_another(9));
        assert!(!policy.allows_another(10));
    }

    #[test]
    fn jitter_stays_in_range_and_is_deterministic_when_seeded() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff: Backoff {
                initial: Duration::from_secs(8),
                max: Duration::from_secs(60),
                multiplier: 2.0,
            },
            jitter: 0.5,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=4)
                .map(|a| policy.delay(a, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        for (a, d) in (1..=4).zip(draw(3)) {
            let base = policy.backoff_without_jitter(a);
            assert!(d <= base && d >= base / 2, "attempt {a}: {d:?} vs {base:?}");
        }
    }
}

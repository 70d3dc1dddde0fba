//! [`AgentSettings`]: every setting of `hodei-agent`, declared once and
//! read from flags, environment variables and a TOML file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hodei_core::Resources;
use hodei_hwp::secret_file::read_secret_file;
pub use hodei_hwp::settings::SettingsError;
use hodei_hwp::settings::{parse_duration, parse_key_value as parse_label, read_toml};
use serde::Deserialize;

use crate::IDENTITY_FILE;
use crate::agent::AgentConfig;
use crate::contain::{Containment, ContainmentMode};

fn labels_from_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .collect())
}

fn containment_from_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ContainmentMode>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// Every setting of `hodei-agent`, declared once: as flags and environment
/// variables (clap) and as keys of a TOML file (serde, the same names in
/// snake_case). Each is optional here; [`resolve`] fills in the defaults
/// and checks them.
///
/// [`resolve`]: AgentSettings::resolve
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentSettings {
    /// The server's gRPC endpoint, e.g. https://10.0.0.1:7070 (http:// for
    /// a server started with --insecure-plaintext); for servers sharing a
    /// database, all of them, comma-separated: the agent finds the leader
    /// and moves to the next one when it changes.
    #[arg(long, env = "HODEI_SERVER")]
    pub server: Option<String>,
    /// Where the agent keeps its key and certificate (identity.json, mode
    /// 0600); one running agent per directory (a second agent on the
    /// default one takes NAME-2, NAME-3, ...) [default:
    /// /var/lib/hodei-agent/NAME for root, else
    /// ~/.local/state/hodei-agent/NAME].
    #[arg(long, env = "HODEI_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The join token (prefer --join-token-file: flags show in `ps`). For
    /// a TLS server it is needed only until the agent has joined.
    #[arg(long, env = "HODEI_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (mode 0600).
    #[arg(long, env = "HODEI_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The worker's name [default: the host name].
    #[arg(long, env = "HODEI_AGENT_NAME")]
    pub name: Option<String>,
    /// A label, key=value; repeat for several. In the file: a table.
    #[arg(long = "label", value_parser = parse_label, env = "HODEI_AGENT_LABELS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "labels_from_table")]
    pub labels: Vec<(String, String)>,
    /// CPU offered, millicores [default: every CPU].
    #[arg(long, env = "HODEI_AGENT_CPU_MILLIS")]
    pub cpu_millis: Option<u32>,
    /// Memory offered, MiB [default: all memory].
    #[arg(long, env = "HODEI_AGENT_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// GPUs offered [default: 0].
    #[arg(long, env = "HODEI_AGENT_GPUS")]
    pub gpus: Option<u32>,
    /// How long running jobs may go on after a drain begins [default: 5m].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_DRAIN_GRACE")]
    #[serde(default, with = "humantime_serde")]
    pub drain_grace: Option<Duration>,
    /// Between SIGTERM and SIGKILL when the agent cancels a job [default: 10s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_CANCEL_GRACE")]
    #[serde(default, with = "humantime_serde")]
    pub cancel_grace: Option<Duration>,
    /// Output kept per attempt; past it, the head and tail are kept, 0 for
    /// no cap [default: 67108864].
    #[arg(long, env = "HODEI_AGENT_MAX_LOG_BYTES")]
    pub max_log_bytes: Option<u64>,
    /// Unacknowledged output held in memory before spilling to disk
    /// [default: 67108864].
    #[arg(long, env = "HODEI_AGENT_MEMORY_LIMIT")]
    pub memory_limit: Option<usize>,
    /// Where output spills while the server is unreachable
    /// [default: $TMPDIR/hodei-agent].
    #[arg(long, env = "HODEI_AGENT_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// The largest delay between reconnect attempts [default: 30s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_RECONNECT_MAX")]
    #[serde(default, with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
    /// How long to keep trying to deliver logs and results on shutdown
    /// [default: 5m].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_FLUSH_TIMEOUT")]
    #[serde(default, with = "humantime_serde")]
    pub flush_timeout: Option<Duration>,
    /// How a job's processes are contained: auto (a cgroup v2 per job
    /// where the agent may create one, else the child subreaper), cgroup
    /// or subreaper [default: auto].
    #[arg(long, env = "HODEI_AGENT_CONTAINMENT")]
    #[serde(default, deserialize_with = "containment_from_text")]
    pub containment: Option<ContainmentMode>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long = "log-level", env = "HODEI_LOG")]
    pub log_level: Option<String>,
}

impl AgentSettings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not TOML, or holds an unknown key or a
    /// value of the wrong type (named in the message).
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        read_toml(path)
    }

    /// These settings where given, `other`'s elsewhere (flags over a
    /// file). Labels are merged, these winning per key. A join token given
    /// here, inline or as a file, wins over both forms in `other`.
    pub fn or(self, other: AgentSettings) -> AgentSettings {
        let mut labels = other.labels;
        labels.extend(self.labels);
        let (join_token, join_token_file) =
            if self.join_token.is_some() || self.join_token_file.is_some() {
                (self.join_token, self.join_token_file)
            } else {
                (other.join_token, other.join_token_file)
            };
        AgentSettings {
            server: self.server.or(other.server),
            state_dir: self.state_dir.or(other.state_dir),
            join_token,
            join_token_file,
            name: self.name.or(other.name),
            labels,
            cpu_millis: self.cpu_millis.or(other.cpu_millis),
            memory_mb: self.memory_mb.or(other.memory_mb),
            gpus: self.gpus.or(other.gpus),
            drain_grace: self.drain_grace.or(other.drain_grace),
            cancel_grace: self.cancel_grace.or(other.cancel_grace),
            max_log_bytes: self.max_log_bytes.or(other.max_log_bytes),
            memory_limit: self.memory_limit.or(other.memory_limit),
            spill_dir: self.spill_dir.or(other.spill_dir),
            reconnect_max: self.reconnect_max.or(other.reconnect_max),
            flush_timeout: self.flush_timeout.or(other.flush_timeout),
            containment: self.containment.or(other.containment),
            log_level: self.log_level.or(other.log_level),
        }
    }

    /// Fills in the defaults (capacity detected from the machine), reads
    /// the token file, checks every value, and returns the agent's
    /// configuration and the log level.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] naming the first setting refused.
    pub fn resolve(self) -> Result<(AgentConfig, String), SettingsError> {
        let server = self.server.ok_or_else(|| {
            SettingsError::invalid(
                "server",
                "required (--server, HODEI_SERVER or `server` in the file)",
            )
        })?;
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(SettingsError::invalid(
                "server",
                format!("{server:?} must start with http:// or https://"),
            ));
        }
        let name = self.name.clone().unwrap_or_else(crate::host_name);
        let state_dir_is_default = self.state_dir.is_none();
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| crate::default_state_dir(&name));
        let joined = server.starts_with("https://") && state_dir.join(IDENTITY_FILE).exists();
        let token = match (self.join_token, self.join_token_file) {
            (Some(t), _) => t,
            (None, Some(p)) => read_secret_file(&p)
                .map_err(|e| SettingsError::invalid("join_token_file", e.to_string()))?,
            (None, None) if joined => String::new(),
            (None, None) => {
                return Err(SettingsError::invalid(
                    "join_token",
                    "required (--join-token-file, --join-token, HODEI_JOIN_TOKEN or the file) \
                     until the agent has joined",
                ));
            }
        };
        let mut c = AgentConfig::new(server, token);
        c.state_dir = state_dir;
        c.state_dir_is_default = state_dir_is_default;
        if let Some(n) = self.name {
            c.name = n;
        }
        // Refused now rather than on every connection attempt.
        crate::Identity::load(&c.server, &c.join_token, &c.state_dir, &c.name).map_err(
            |e| match e {
                crate::IdentityError::JoinToken(m) => SettingsError::invalid("join_token", m),
                crate::IdentityError::State(m) | crate::IdentityError::Busy(m) => {
                    SettingsError::invalid("state_dir", m)
                }
                e => SettingsError::invalid("server", e.to_string()),
            },
        )?;
        c.labels = self.labels.into_iter().collect();
        // The server's rule: a label a job could never select is refused here.
        for (k, v) in &c.labels {
            if let Some(why) = hodei_core::label_key_problem(k) {
                return Err(SettingsError::invalid(
                    format!("labels.{k}"),
                    format!("key {why}"),
                ));
            }
            if let Some(why) = hodei_core::label_value_problem(v) {
                return Err(SettingsError::invalid(
                    format!("labels.{k}"),
                    format!("value {why}"),
                ));
            }
        }
        let detected = c.capacity;
        c.capacity = Resources::new(
            self.cpu_millis.unwrap_or(detected.cpu_millis),
            self.memory_mb.unwrap_or(detected.memory_mb),
            self.gpus.unwrap_or(detected.gpus),
        );
        if c.capacity.cpu_millis == 0 && c.capacity.memory_mb == 0 {
            return Err(SettingsError::invalid(
                "cpu_millis, memory_mb",
                "at least one must be above 0",
            ));
        }
        if let Some(d) = self.drain_grace {
            c.drain_grace = d;
        }
        if let Some(d) = self.cancel_grace {
            c.cancel_grace = d;
        }
        if let Some(n) = self.max_log_bytes {
            c.max_log_bytes = n;
        }
        if let Some(n) = self.memory_limit {
            c.memory_limit = n;
        }
        if let Some(p) = self.spill_dir {
            c.spill_dir = p;
        }
        if let Some(d) = self.reconnect_max {
            if d < c.reconnect_min {
                return Err(SettingsError::invalid(
                    "reconnect_max",
                    format!("at least {:?}", c.reconnect_min),
                ));
            }
            c.reconnect_max = d;
        }
        if let Some(d) = self.flush_timeout {
            c.flush_timeout = d;
        }
        let mode = self.containment.unwrap_or(ContainmentMode::Auto);
        c.exec.containment = Containment::new(mode)
            .map_err(|e| SettingsError::invalid("containment", e.to_string()))?;
        Ok((c, self.log_level.unwrap_or_else(|| "info".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_every_refusal_names_its_setting() {
        let file: AgentSettings = toml::from_str(
            "server = \"http://file:7070\"\njoin_token = \"t\"\n[labels]\nzone = \"a\"\nrack = \"r1\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let flags = AgentSettings {
            labels: vec![("zone".into(), "b".into())],
            containment: Some(ContainmentMode::Subreaper),
            ..AgentSettings::default()
        };
        let (c, level) = flags.or(file).resolve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server, "http://file:7070");
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("b"));
        assert_eq!(c.labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(level, "info");
        let cases = [
            ("join_token = \"t\"", "server:"),
            ("server = \"ftp://x\"\njoin_token = \"t\"", "server:"),
            ("server = \"http://x\"", "join_token:"),
            (
                "server = \"http://x\"\njoin_token = \"t\"\n[labels]\n\"bad key\" = \"v\"",
                "labels.bad key:",
            ),
            (
                "server = \"http://x\"\njoin_token = \"t\"\ncpu_millis = 0\nmemory_mb = 0",
                "cpu_millis, memory_mb:",
            ),
            (
                "server = \"http://x\"\njoin_token = \"t\"\nreconnect_max = \"1ms\"",
                "reconnect_max:",
            ),
            (
                "server = \"http://x\"\njoin_token_file = \"/nonexistent/token\"",
                "join_token_file:",
            ),
        ];
        for (toml, want) in cases {
            let s: AgentSettings = toml::from_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
            let err = s.resolve().map(|_| ()).unwrap_err();
            assert!(err.to_string().starts_with(want), "{toml}: {err}");
        }
        let err = toml::from_str::<AgentSettings>("containment = \"jail\"")
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("containment") || err.to_string().contains("jail"),
            "{err}"
        );
    }
}

//! [`ServerSettings`]: every setting of a Hodei server, declared once and
//! read from flags, environment variables and a TOML file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hodei_store::StoreConfig;
use serde::Deserialize;

use crate::server::engine::EngineConfig;
pub use crate::settings::{SettingsError, parse_duration};
use crate::settings::{parse_key_value, read_toml};

/// Parses `tenant=N`.
fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (t, w) = parse_key_value(s)?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number"))?;
    Ok((t, w))
}

fn weights_from_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, u32)>, D::Error> {
    Ok(BTreeMap::<String, u32>::deserialize(d)?
        .into_iter()
        .collect())
}

/// Every setting of `hodei-server`, declared once: as flags and
/// environment variables (clap) and as keys of a TOML file (serde, the
/// same names in snake_case). Each is optional here; [`resolve`] fills in
/// the defaults and checks them.
///
/// [`resolve`]: ServerSettings::resolve
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Where the gRPC API listens [default: 127.0.0.1:7070].
    #[arg(long, env = "HODEI_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where /metrics, /healthz, /readyz, the JSON API (/api/v1) and the dashboard (/ui) listen [default: 127.0.0.1:7071].
    #[arg(long, env = "HODEI_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// The data directory: the store and the token files [default: ./hodei-data].
    #[arg(long, env = "HODEI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `redb` (durable, the default), `postgres` (a database several
    /// servers share, one leading at a time; needs --database-url) or
    /// `memory` (lost on exit; for tests and load runs).
    #[arg(long, env = "HODEI_STORE")]
    pub store: Option<String>,
    /// The PostgreSQL database for --store postgres, e.g.
    /// postgres://hodei@db.internal:5432/hodei (a password in it shows in
    /// `ps`: prefer the environment variable or the file).
    #[arg(long, env = "HODEI_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With --store postgres: how long the leader's lease runs between
    /// renewals (every third of it); a standby takes over once it lapses
    /// [default: 3s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_LEASE")]
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// With --store postgres: the gRPC endpoint standbys send agents and
    /// clients to while this server leads [default: https://LISTEN, or
    /// http:// with --insecure-plaintext; the host name for an unspecified
    /// address].
    #[arg(long, env = "HODEI_ADVERTISE")]
    pub advertise: Option<String>,
    /// With --store postgres: the HTTP endpoint standbys name while this
    /// server leads [default: from --http-listen as for --advertise].
    #[arg(long, env = "HODEI_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// How often agents heartbeat [default: 5s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_HEARTBEAT_INTERVAL")]
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// A worker silent this long is lost and its jobs are retried [default: 15s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_HEARTBEAT_TIMEOUT")]
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when a job is cancelled [default: 10s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_CANCEL_GRACE")]
    #[serde(default, with = "humantime_serde")]
    pub cancel_grace: Option<Duration>,
    /// On SIGTERM, how long /readyz answers 503 and gRPC health reports
    /// NOT_SERVING, listeners still open, before the server stops
    /// accepting [default: 1s].
    #[arg(long, value_parser = parse_duration, env = "HODEI_SHUTDOWN_DELAY")]
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Option<Duration>,
    /// A tenant's weight in fair sharing, tenant=N; repeat for several
    /// (unlisted tenants weigh 1). In the file: a table, `[weights]`.
    #[arg(long = "weight", value_parser = parse_weight, env = "HODEI_WEIGHTS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "weights_from_table")]
    pub weights: Vec<(String, u32)>,
    /// Output stored per job; later output is dropped and counted
    /// [default: 67108864].
    #[arg(long, env = "HODEI_MAX_LOG_BYTES_PER_JOB")]
    pub max_log_bytes_per_job: Option<u64>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long = "log-level", env = "HODEI_LOG")]
    pub log_level: Option<String>,
    /// The server's certificate chain, PEM (its certificate first, the
    /// CA's last) [default: made by the server's own CA in
    /// <data_dir>/tls].
    #[arg(long, env = "HODEI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert, PEM.
    #[arg(long, env = "HODEI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) whose client certificates identify agents, in
    /// addition to the server's own CA, which signs those agents get by
    /// joining.
    #[arg(long, env = "HODEI_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// A host name or address the generated server certificate names, in
    /// addition to localhost, the loopback addresses, the host name and a
    /// specific listen address; repeat for several.
    #[arg(long = "tls-san", env = "HODEI_TLS_SANS", value_delimiter = ',')]
    #[serde(default)]
    pub tls_san: Vec<String>,
    /// Serves gRPC and HTTP without TLS: tokens, secrets and logs cross the
    /// network readable by anyone on the path. For a trusted loopback or a
    /// network encrypted below Hodei only.
    #[arg(long, env = "HODEI_INSECURE_PLAINTEXT")]
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Accept JSON Web Tokens signed with this key: a PEM public key (RSA,
    /// EC P-256 or Ed25519) or a JWKS file. Needs --jwt-issuer and
    /// --jwt-audience.
    #[arg(long, env = "HODEI_JWT_KEY", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub jwt_key: Option<PathBuf>,
    /// The `iss` JSON Web Tokens must carry.
    #[arg(long, env = "HODEI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` JSON Web Tokens must carry.
    #[arg(long, env = "HODEI_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim naming the tenant(s): a string, a list, or "*"
    /// [default: tenant].
    #[arg(long, env = "HODEI_JWT_TENANT_CLAIM")]
    pub jwt_tenant_claim: Option<String>,
    /// The claim naming the role: admin, operator, submitter or viewer
    /// [default: role].
    #[arg(long, env = "HODEI_JWT_ROLE_CLAIM")]
    pub jwt_role_claim: Option<String>,
    /// Requests a second each client (token, JSON Web Token subject) may
    /// make, twice that in a burst; past it, RESOURCE_EXHAUSTED. 0: no
    /// limit [default: 1000].
    #[arg(long, env = "HODEI_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Watch and Logs streams each client may hold open at once. 0: no
    /// limit [default: 100].
    #[arg(long, env = "HODEI_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// How long the certificates signed for agents are valid; agents renew
    /// at two thirds of it [default: 24h].
    #[arg(long, value_parser = parse_duration, env = "HODEI_AGENT_CERT_TTL")]
    #[serde(default, with = "humantime_serde")]
    pub agent_cert_ttl: Option<Duration>,
}

/// How a server secures its listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTlsConfig {
    /// No TLS (`--insecure-plaintext`).
    Plaintext,
    /// TLS with a certificate from `source`; agents' certificates from the
    /// server's own CA or `client_ca`.
    Tls {
        /// Where the server's certificate comes from.
        source: crate::server::security::tls::TlsSource,
        /// Other CAs whose client certificates are accepted.
        client_ca: Option<PathBuf>,
    },
}

/// Which store a server keeps its state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// A redb file in the data directory.
    Redb,
    /// Memory only: lost when the server stops.
    Memory,
    /// A PostgreSQL database shared by several servers
    /// ([`ServerConfig::postgres`]).
    Postgres,
}

/// A server on a shared PostgreSQL database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The database.
    pub url: String,
    /// How long a lease runs between renewals.
    pub lease: Duration,
    /// The gRPC endpoint standbys name while this server leads.
    pub advertise: String,
    /// The HTTP endpoint standbys name while this server leads.
    pub advertise_http: String,
}

/// Settings resolved: defaults filled in, every value checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where gRPC listens.
    pub listen: SocketAddr,
    /// Where the HTTP endpoints listen.
    pub http_listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The store.
    pub store_kind: StoreKind,
    /// The shared database, for [`StoreKind::Postgres`].
    pub postgres: Option<PostgresConfig>,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The store's settings.
    pub store: StoreConfig,
    /// The log level.
    pub log_level: String,
    /// TLS or plaintext.
    pub tls: ServerTlsConfig,
    /// How long agents' certificates are valid.
    pub agent_cert_ttl: Duration,
    /// JSON Web Tokens, when accepted.
    pub jwt: Option<JwtSettings>,
    /// What each client may do.
    pub limits: crate::server::grpc::limits::LimitConfig,
}

/// Where JSON Web Tokens' key is and what they must say.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtSettings {
    /// The public key or JWKS file.
    pub key: PathBuf,
    /// The issuer.
    pub issuer: String,
    /// The audience.
    pub audience: String,
    /// The tenant claim.
    pub tenant_claim: String,
    /// The role claim.
    pub role_claim: String,
}

impl ServerSettings {
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
    /// file). Weights are merged, these winning per tenant.
    pub fn or(self, other: ServerSettings) -> ServerSettings {
        let mut weights = other.weights;
        weights.extend(self.weights);
        ServerSettings {
            listen: self.listen.or(other.listen),
            http_listen: self.http_listen.or(other.http_listen),
            data_dir: self.data_dir.or(other.data_dir),
            store: self.store.or(other.store),
            database_url: self.database_url.or(other.database_url),
            lease: self.lease.or(other.lease),
            advertise: self.advertise.or(other.advertise),
            advertise_http: self.advertise_http.or(other.advertise_http),
            heartbeat_interval: self.heartbeat_interval.or(other.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.or(other.heartbeat_timeout),
            cancel_grace: self.cancel_grace.or(other.cancel_grace),
            shutdown_delay: self.shutdown_delay.or(other.shutdown_delay),
            weights,
            max_log_bytes_per_job: self.max_log_bytes_per_job.or(other.max_log_bytes_per_job),
            log_level: self.log_level.or(other.log_level),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            tls_client_ca: self.tls_client_ca.or(other.tls_client_ca),
            tls_san: if self.tls_san.is_empty() {
                other.tls_san
            } else {
                self.tls_san
            },
            insecure_plaintext: self.insecure_plaintext || other.insecure_plaintext,
            agent_cert_ttl: self.agent_cert_ttl.or(other.agent_cert_ttl),
            jwt_key: self.jwt_key.or(other.jwt_key),
            jwt_issuer: self.jwt_issuer.or(other.jwt_issuer),
            jwt_audience: self.jwt_audience.or(other.jwt_audience),
            jwt_tenant_claim: self.jwt_tenant_claim.or(other.jwt_tenant_claim),
            jwt_role_claim: self.jwt_role_claim.or(other.jwt_role_claim),
            rate_limit: self.rate_limit.or(other.rate_limit),
            max_streams: self.max_streams.or(other.max_streams),
        }
    }

    /// Fills in the defaults and checks every value.
    ///
    /// # Errors
    ///
    /// [`SettingsError::Invalid`] naming the first setting refused.
    pub fn resolve(self) -> Result<ServerConfig, SettingsError> {
        let store_kind = match self.store.as_deref().unwrap_or("redb") {
            "redb" => StoreKind::Redb,
            "memory" => StoreKind::Memory,
            "postgres" => StoreKind::Postgres,
            other => {
                return Err(SettingsError::invalid(
                    "store",
                    format!("{other:?} must be redb, postgres or memory"),
                ));
            }
        };
        let lease = self.lease.unwrap_or(Duration::from_secs(3));
        if lease < Duration::from_millis(300) {
            return Err(SettingsError::invalid(
                "lease",
                format!("{lease:?} must be at least 300ms"),
            ));
        }
        if store_kind != StoreKind::Postgres && self.database_url.is_some() {
            return Err(SettingsError::invalid(
                "database_url",
                "is for --store postgres",
            ));
        }
        let database_url = match (store_kind, self.database_url) {
            (StoreKind::Postgres, None) => {
                return Err(SettingsError::invalid(
                    "database_url",
                    "required with --store postgres",
                ));
            }
            (_, url) => url,
        };
        let mut engine = EngineConfig::default();
        if let Some(d) = self.heartbeat_interval {
            engine.heartbeat_interval = d;
        }
        if let Some(d) = self.heartbeat_timeout {
            engine.heartbeat_timeout = d;
        }
        if engine.heartbeat_timeout <= engine.heartbeat_interval {
            return Err(SettingsError::invalid(
                "heartbeat_timeout",
                format!(
                    "{:?} must be longer than heartbeat_interval {:?}",
                    engine.heartbeat_timeout, engine.heartbeat_interval
                ),
            ));
        }
        if let Some(d) = self.cancel_grace {
            engine.cancel_grace = d;
        }
        engine.shutdown_delay = self.shutdown_delay.unwrap_or(Duration::from_secs(1));
        // One weight per tenant, the last given winning.
        let weights: BTreeMap<String, u32> = self.weights.into_iter().collect();
        for (tenant, w) in weights {
            if w == 0 {
                return Err(SettingsError::invalid(
                    format!("weights.{tenant}"),
                    "must be at least 1",
                ));
            }
            let t = tenant
                .parse()
                .map_err(|e| SettingsError::invalid(format!("weights.{tenant}"), format!("{e}")))?;
            engine.tenant_weights.push((t, w));
        }
        let mut store = StoreConfig::default();
        if let Some(n) = self.max_log_bytes_per_job {
            store.max_log_bytes_per_job = n;
        }
        let log_level = self.log_level.unwrap_or_else(|| "info".into());
        if log_level.parse::<tracing::Level>().is_err() {
            return Err(SettingsError::invalid(
                "log_level",
                format!("{log_level:?}: expected error, warn, info, debug or trace"),
            ));
        }
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let listen = self.listen.unwrap_or(local(7070));
        let tls = match (self.insecure_plaintext, self.tls_cert, self.tls_key) {
            (true, None, None) if self.tls_client_ca.is_none() && self.tls_san.is_empty() => {
                ServerTlsConfig::Plaintext
            }
            (true, ..) => {
                return Err(SettingsError::invalid(
                    "insecure_plaintext",
                    "cannot be combined with tls_cert, tls_key, tls_client_ca or tls_san",
                ));
            }
            (false, Some(cert), Some(key)) => ServerTlsConfig::Tls {
                source: crate::server::security::tls::TlsSource::Files { cert, key },
                client_ca: self.tls_client_ca,
            },
            (false, None, None) => {
                let mut names = crate::server::security::tls::default_names(listen);
                for n in self.tls_san {
                    let ok = n.parse::<std::net::IpAddr>().is_ok()
                        || rustls::pki_types::DnsName::try_from(n.as_str()).is_ok();
                    if !ok {
                        return Err(SettingsError::invalid(
                            "tls_san",
                            format!("{n:?} is neither a host name nor an address"),
                        ));
                    }
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                ServerTlsConfig::Tls {
                    source: crate::server::security::tls::TlsSource::Generated { names },
                    client_ca: self.tls_client_ca,
                }
            }
            (false, Some(_), None) => {
                return Err(SettingsError::invalid("tls_key", "tls_cert needs tls_key"));
            }
            (false, None, Some(_)) => {
                return Err(SettingsError::invalid("tls_cert", "tls_key needs tls_cert"));
            }
        };
        let agent_cert_ttl = self
            .agent_cert_ttl
            .unwrap_or(crate::server::security::pki::AGENT_CERT_TTL);
        if agent_cert_ttl < Duration::from_secs(10) {
            return Err(SettingsError::invalid(
                "agent_cert_ttl",
                format!("{agent_cert_ttl:?} is too short: at least 10s"),
            ));
        }
        let jwt = match (self.jwt_key, self.jwt_issuer, self.jwt_audience) {
            (None, None, None) => None,
            (Some(key), Some(issuer), Some(audience)) => Some(JwtSettings {
                key,
                issuer,
                audience,
                tenant_claim: self.jwt_tenant_claim.unwrap_or_else(|| "tenant".into()),
                role_claim: self.jwt_role_claim.unwrap_or_else(|| "role".into()),
            }),
            (None, ..) => {
                return Err(SettingsError::invalid(
                    "jwt_key",
                    "required with jwt_issuer and jwt_audience",
                ));
            }
            (_, None, _) => {
                return Err(SettingsError::invalid(
                    "jwt_issuer",
                    "required with jwt_key (tokens' iss is checked)",
                ));
            }
            (_, _, None) => {
                return Err(SettingsError::invalid(
                    "jwt_audience",
                    "required with jwt_key (tokens' aud is checked)",
                ));
            }
        };
        let rate = self.rate_limit.unwrap_or(1000.0);
        if !rate.is_finite() || rate < 0.0 {
            return Err(SettingsError::invalid(
                "rate_limit",
                format!("{rate} must be a number of requests a second, 0 or more"),
            ));
        }
        let limits =
            crate::server::grpc::limits::LimitConfig::new(rate, self.max_streams.unwrap_or(100));
        let http_listen = self.http_listen.unwrap_or(local(7071));
        let scheme = if tls == ServerTlsConfig::Plaintext {
            "http"
        } else {
            "https"
        };
        let postgres = database_url.map(|url| PostgresConfig {
            url,
            lease,
            advertise: self.advertise.unwrap_or_else(|| advertised(scheme, listen)),
            advertise_http: self
                .advertise_http
                .unwrap_or_else(|| advertised(scheme, http_listen)),
        });
        Ok(ServerConfig {
            listen,
            http_listen,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("hodei-data")),
            store_kind,
            postgres,
            engine,
            store,
            log_level,
            tls,
            agent_cert_ttl,
            jwt,
            limits,
        })
    }
}

/// How others reach `addr`: itself, or the host name when it is the
/// unspecified address.
fn advertised(scheme: &str, addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = crate::settings::host_name().unwrap_or_else(|| "localhost".into());
        format!("{scheme}://{host}:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(s: &str) -> Result<ServerSettings, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = from_toml(
            "listen = \"0.0.0.0:9000\"\nheartbeat_interval = \"2s\"\n[weights]\nacme = 3\nglobex = 2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let flags = ServerSettings {
            heartbeat_interval: Some(Duration::from_secs(1)),
            weights: vec![("acme".into(), 5)],
            ..ServerSettings::default()
        };
        let c = flags.or(file).resolve().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap_or(c.listen));
        assert_eq!(c.http_listen.port(), 7071);
        assert_eq!(c.engine.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.store_kind, StoreKind::Redb);
        let w: Vec<(String, u32)> = c
            .engine
            .tenant_weights
            .iter()
            .map(|(t, w)| (t.as_str().to_string(), *w))
            .collect();
        assert_eq!(w, vec![("acme".into(), 5), ("globex".into(), 2)]);
    }

    #[test]
    fn every_refusal_names_its_setting() {
        let cases = [
            ("store = \"sqlite\"", "store:"),
            ("heartbeat_interval = \"20s\"", "heartbeat_timeout:"),
            ("[weights]\nacme = 0", "weights.acme:"),
            ("[weights]\n\"a b\" = 1", "weights.a b:"),
            ("log_level = \"loud\"", "log_level:"),
            ("tls_cert = \"/c\"", "tls_key:"),
            ("tls_key = \"/k\"", "tls_cert:"),
            (
                "insecure_plaintext = true\ntls_client_ca = \"/ca\"",
                "insecure_plaintext:",
            ),
            ("tls_san = [\"not a name\"]", "tls_san:"),
            ("agent_cert_ttl = \"1s\"", "agent_cert_ttl:"),
            ("jwt_key = \"/k.pem\"\njwt_audience = \"a\"", "jwt_issuer:"),
            ("jwt_key = \"/k.pem\"\njwt_issuer = \"i\"", "jwt_audience:"),
            ("jwt_issuer = \"i\"", "jwt_key:"),
            ("rate_limit = -1.0", "rate_limit:"),
            ("store = \"postgres\"", "database_url:"),
            ("database_url = \"postgres://h/d\"", "database_url:"),
            (
                "store = \"postgres\"\ndatabase_url = \"postgres://h/d\"\nlease = \"10ms\"",
                "lease:",
            ),
        ];
        for (toml, want) in cases {
            let err = from_toml(toml)
                .unwrap_or_else(|e| panic!("{e}"))
                .resolve()
                .map(|_| ())
                .unwrap_err();
            assert!(err.to_string().starts_with(want), "{toml}: {err}");
        }
        let err = from_toml("lisen = \"x\"").map(|_| ()).unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn a_postgres_server_advertises_where_it_listens() {
        let c = from_toml(
            "store = \"postgres\"\ndatabase_url = \"postgres://h/d\"\nlisten = \"10.0.0.5:7070\"",
        )
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(c.store_kind, StoreKind::Postgres);
        let pg = c.postgres.unwrap();
        assert_eq!(pg.advertise, "https://10.0.0.5:7070");
        assert_eq!(pg.advertise_http, "https://127.0.0.1:7071");
        assert_eq!(pg.lease, Duration::from_secs(3));
        let c = from_toml(
            "store = \"postgres\"\ndatabase_url = \"postgres://h/d\"\ninsecure_plaintext = true\nadvertise = \"http://lb:1\"\nlisten = \"0.0.0.0:7070\"",
        )
        .unwrap()
        .resolve()
        .unwrap();
        let pg = c.postgres.unwrap();
        assert_eq!(pg.advertise, "http://lb:1");
        assert!(pg.advertise_http.starts_with("http://"));
    }
}

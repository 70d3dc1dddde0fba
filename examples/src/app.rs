//! The `hodei` command line: its arguments, declared once (flags and
//! environment), and what each command does. The binary only parses and
//! runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{self, Failure, Output};
use crate::{demo, parse_duration, parse_label, read_secret_file};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use hodei_core::{JobId, JobSpec, Resources, RetryPolicy, Secret, WorkerId};
use hodei_hwp::client::Client;
use hodei_hwp::proto::{self, JobStateKind};
use hodei_hwp::spec_to_wire;
use hodei_hwp::tls::ClientTls;

/// The Hodei command-line client.
///
/// Talks to a hodei-server over gRPC. The token comes from --token,
/// HODEI_TOKEN, --token-file, HODEI_TOKEN_FILE or, failing those,
/// ./hodei-data/admin.token. Errors print one line and exit non-zero (2 for
/// bad usage).
#[derive(Debug, Parser)]
#[command(name = "hodei", version)]
pub struct Args {
    /// A TOML file with any of the settings below (snake_case keys, e.g.
    /// `server = "http://10.0.0.1:7070"`, `token_file = "..."`).
    #[arg(long, global = true, env = "HODEI_CLI_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ClientSettings,
    #[command(subcommand)]
    command: Command,
}

/// Every setting of the `hodei` command line, declared once: as flags and
/// environment variables (clap) and as keys of a TOML file (serde).
#[derive(Clone, Debug, Default, serde::Deserialize, ClapArgs)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientSettings {
    /// The server's gRPC endpoint [default: https://127.0.0.1:7070];
    /// http:// for a server started with --insecure-plaintext. For servers
    /// sharing a database, several, comma-separated: the leader is used.
    #[arg(long, global = true, env = "HODEI_SERVER")]
    pub server: Option<String>,
    /// The CA certificate the server's certificate must chain to (PEM)
    /// [default: ./hodei-data/tls/ca.crt].
    #[arg(long, global = true, env = "HODEI_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client token (prefer --token-file: flags show in `ps`).
    #[arg(long, global = true, env = "HODEI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding a client token (mode 0600).
    #[arg(long, global = true, env = "HODEI_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Tables for people or JSON (one document per line) for scripts
    /// [default: table].
    #[arg(long, short, global = true, value_enum)]
    pub output: Option<Format>,
}

impl ClientSettings {
    /// These settings where given, `other`'s elsewhere (flags over a
    /// file). A token given here, inline or as a file, wins over both
    /// forms in `other`.
    pub fn or(self, other: ClientSettings) -> ClientSettings {
        let (token, token_file) = if self.token.is_some() || self.token_file.is_some() {
            (self.token, self.token_file)
        } else {
            (other.token, other.token_file)
        };
        ClientSettings {
            server: self.server.or(other.server),
            ca_file: self.ca_file.or(other.ca_file),
            token,
            token_file,
            output: self.output.or(other.output),
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Tables for people.
    Table,
    /// JSON, one document per line, for scripts.
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submits a job: a command after `--`, a --script, or a --file spec.
    Submit(Box<SubmitArgs>),
    /// Shows one job.
    #[command(alias = "get")]
    Status {
        /// The job id.
        job: String,
    },
    /// Lists jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, succeeded, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only this tenant's jobs (admin tokens).
        #[arg(long)]
        tenant: Option<String>,
        /// Jobs per page (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start at this page (the token the previous page ended with).
        #[arg(long)]
        page_token: Option<String>,
        /// Every page, to the end.
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
    },
    /// Prints a job's output; with -f, follows it until the job ends.
    Logs {
        /// The job id.
        job: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancels a job.
    Cancel {
        /// The job id.
        job: String,
    },
    /// Lists the cluster's workers.
    Workers,
    /// Stops placing new jobs on a worker (admin tokens).
    Drain {
        /// The worker id.
        worker: String,
    },
    /// Prints state changes as they happen (of one job, or all).
    Watch {
        /// The job id; all jobs when left out.
        job: Option<String>,
    },
    /// Join tokens: create (shown once), list, revoke (admin tokens).
    JoinToken {
        /// What to do.
        #[command(subcommand)]
        action: JoinTokenAction,
    },
    /// Client tokens with a role and tenants: create (shown once), list,
    /// revoke (admin tokens).
    Token {
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The audit trail: every mutating call and refused authentication,
    /// oldest first (admin tokens).
    Audit {
        /// From this time on: RFC 3339 (2026-11-24T10:00:00Z) or a while
        /// ago (1h).
        #[arg(long)]
        since: Option<String>,
        /// Records at most [default: every one].
        #[arg(long)]
        limit: Option<u64>,
        /// Check every link of the chain instead, and that none was cut
        /// off; exits 1 if it does not hold.
        #[arg(long)]
        verify: bool,
    },
    /// Revokes a worker: disconnects it at once and refuses its
    /// certificate from then on; its jobs are retried elsewhere (admin
    /// tokens).
    RevokeWorker {
        /// The worker id.
        worker: String,
    },
    /// Job arrays: show an array's counts, cancel it (submit one with
    /// `hodei submit --array N`).
    Array {
        /// What to do.
        #[command(subcommand)]
        action: crate::array::ArrayAction,
    },
    /// Periodic jobs: create from a TOML or JSON file, list, show, pause,
    /// resume, delete.
    Schedule {
        /// What to do.
        #[command(subcommand)]
        action: crate::schedule::ScheduleAction,
    },
    /// Pipelines: submit a TOML or JSON file, show one, list, cancel.
    Pipeline {
        /// What to do.
        #[command(subcommand)]
        action: crate::pipeline::PipelineAction,
    },
    /// Runs a server on a temporary embedded store and a local agent,
    /// submits a few jobs, shows their logs live and a summary, and stops.
    Demo,
}

/// What to do with client tokens.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Creates a token and prints it (it is not shown again).
    Create {
        /// admin, operator, submitter or viewer.
        #[arg(long)]
        role: String,
        /// A tenant it acts within; repeat for several, * for all.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// What it is for (shown in lists and the audit trail).
        #[arg(long, default_value = "")]
        name: String,
        /// It stops being accepted after this long, e.g. 30d [default: never].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Lists tokens made at run time (ids, roles, dates; never the tokens).
    List,
    /// Revokes a token by id; it is refused from now on.
    Revoke {
        /// The id `list` shows.
        id: String,
    },
}

/// What to do with join tokens.
#[derive(Debug, Subcommand)]
pub enum JoinTokenAction {
    /// Creates a join token and prints it (it is not shown again).
    Create {
        /// It stops being accepted after this long, e.g. 1h [default: never].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Revoke every other join token (agents holding certificates are
        /// not affected).
        #[arg(long)]
        rotate: bool,
    },
    /// Lists join tokens (ids and dates; never the tokens).
    List,
    /// Revokes a join token by id.
    Revoke {
        /// The id `list` shows.
        id: String,
    },
}

/// How to submit a job.
#[derive(Debug, ClapArgs)]
pub struct SubmitArgs {
    /// A JSON or TOML job spec (by extension; `-` reads JSON from stdin).
    #[arg(long, short, conflicts_with_all = ["script", "command"])]
    file: Option<PathBuf>,
    /// A shell script to run (with `set -eu`).
    #[arg(long, conflicts_with = "command")]
    script: Option<String>,
    /// The job's name.
    #[arg(long)]
    name: Option<String>,
    /// The tenant [default: the token's own].
    #[arg(long)]
    tenant: Option<String>,
    /// 0 (lowest) to 7 (highest) [default: 4].
    #[arg(long)]
    priority: Option<u8>,
    /// CPU, millicores.
    #[arg(long)]
    cpu_millis: Option<u32>,
    /// Memory, MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Stop the attempt after this long, e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Attempts in all, retries included [default: 1].
    #[arg(long)]
    attempts: Option<u32>,
    /// An environment variable, K=V; repeat for several.
    #[arg(long = "env", value_parser = parse_label)]
    env: Vec<(String, String)>,
    /// A secret from this program's environment variable NAME, passed to
    /// the job as NAME and masked in its output; repeat for several.
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    /// A label, K=V; repeat for several.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Run only on workers whose label K equals V; repeat for several.
    #[arg(long = "on", value_parser = parse_label)]
    constraints: Vec<(String, String)>,
    /// Run in a pseudo-terminal.
    #[arg(long)]
    pty: bool,
    /// A key that makes repeated submissions return the first job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// At most N jobs naming this key run at once, whatever their
    /// tenants: KEY=N.
    #[arg(long, value_parser = parse_label)]
    concurrency: Option<(String, String)>,
    /// Submit N tasks of this job as an array, each with HODEI_ARRAY_INDEX
    /// (0 to N-1) in its environment.
    #[arg(long)]
    array: Option<u32>,
    /// With --array: at most this many tasks run at once.
    #[arg(long, requires = "array")]
    array_limit: Option<u32>,
    /// Wait for the job (or every task of the array) to end and exit with
    /// its exit code.
    #[arg(long)]
    wait: bool,
    /// Print the job's output as it runs (implies --wait).
    #[arg(long)]
    follow: bool,
    /// The command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn spec_from_args(a: &SubmitArgs) -> Result<(JobSpec, bool), Failure> {
    if let Some(path) = &a.file {
        let spec: JobSpec = crate::cli::read_file(path)?;
        return Ok((spec, true));
    }
    let mut spec = match (&a.script, a.command.is_empty()) {
        (Some(s), _) => JobSpec::script(s.clone()),
        (None, false) => JobSpec::argv(a.command.clone()),
        (None, true) => {
            return Err(Failure::usage(
                "command: give one after `--`, or --script, or --file",
            ));
        }
    };
    if let Some(n) = &a.name {
        spec.name = n.clone();
    }
    let tenant_given = a.tenant.is_some();
    if let Some(t) = &a.tenant {
        spec.tenant = t
            .parse()
            .map_err(|e| Failure::usage(format!("tenant: {e}")))?;
    }
    if let Some(p) = a.priority {
        spec.priority = p;
    }
    if a.cpu_millis.is_some() || a.memory_mb.is_some() {
        spec.resources = Resources::new(a.cpu_millis.unwrap_or(0), a.memory_mb.unwrap_or(0), 0);
    }
    spec.timeout = a.timeout;
    if let Some(n) = a.attempts {
        spec.retry = RetryPolicy {
            max_attempts: n,
            ..RetryPolicy::default()
        };
    }
    spec.env = a.env.iter().cloned().collect();
    for name in &a.secret_env {
        let value = std::env::var(name).map_err(|_| {
            Failure::usage(format!("secret-env {name}: not set in this environment"))
        })?;
        spec.secrets.push(Secret {
            name: name.clone(),
            value,
        });
    }
    spec.labels = a.labels.iter().cloned().collect();
    for (k, v) in &a.constraints {
        spec.constraints
            .push(hodei_core::Constraint::is_in(k.clone(), &[v.as_str()]));
    }
    spec.pty = a.pty;
    spec.idempotency_key = a.idempotency_key.clone();
    if let Some((key, n)) = &a.concurrency {
        let limit = n
            .parse()
            .map_err(|e| Failure::usage(format!("concurrency {key}={n}: {e}")))?;
        spec.concurrency = Some(hodei_core::ConcurrencyLimit {
            key: key.clone(),
            limit,
        });
    }
    Ok((spec, tenant_given))
}

async fn submit(c: &mut Client, a: &SubmitArgs, out: Output) -> Result<ExitCode, Failure> {
    let (spec, tenant_given) = spec_from_args(a)?;
    spec.validate().map_err(|e| crate::cli::invalid(&e))?;
    let mut wire = spec_to_wire(&spec, true);
    if !tenant_given {
        // Empty: the server uses the token's own tenant.
        wire.tenant.clear();
    }
    if let Some(n) = a.array {
        return crate::array::submit(c, wire, n, a.array_limit, a.wait || a.follow, out).await;
    }
    let r = c
        .raw()
        .submit(proto::SubmitRequest { spec: Some(wire) })
        .await
        .map_err(Failure::from)?
        .into_inner();
    let job = r
        .job
        .ok_or_else(|| Failure::server("submit: the server returned no job"))?;
    let id: JobId = job
        .id
        .parse()
        .map_err(|e| Failure::server(format!("submit: bad job id: {e}")))?;
    if a.follow {
        out.note(&format!("submitted {id}"));
        cli::follow_logs(c, id, None).await?;
    } else if a.wait {
        out.note(&format!("submitted {id}; waiting"));
    } else {
        out.job(&job, !r.created);
        return Ok(ExitCode::SUCCESS);
    }
    let end = cli::wait_end(c, id).await?;
    out.job(&end, false);
    Ok(cli::exit_code(&end))
}

fn when(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

async fn client_token(
    c: &mut Client,
    action: TokenAction,
    out: Output,
) -> Result<ExitCode, Failure> {
    let infos = match action {
        TokenAction::Create {
            role,
            tenants,
            name,
            ttl,
        } => {
            let r = c
                .admin()
                .create_token(proto::CreateTokenRequest {
                    role,
                    tenants,
                    name,
                    ttl_seconds: ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                })
                .await?
                .into_inner();
            let id = r.info.as_ref().map(|i| i.id.clone()).unwrap_or_default();
            if out.json {
                println!(
                    "{{\"id\":{},\"token\":{}}}",
                    json_str(&id),
                    json_str(&r.token)
                );
            } else {
                // The token alone on stdout, for `> file`.
                println!("{}", r.token);
                out.note(&format!("token {id} created; it is not shown again"));
            }
            return Ok(ExitCode::SUCCESS);
        }
        TokenAction::List => {
            c.admin()
                .list_tokens(proto::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens
        }
        TokenAction::Revoke { id } => vec![
            c.admin()
                .revoke_token(proto::RevokeTokenRequest { id })
                .await?
                .into_inner(),
        ],
    };
    if out.json {
        for t in &infos {
            println!(
                "{{\"id\":{},\"role\":{},\"tenants\":{},\"name\":{},\"created_at_ms\":{},\"expires_at_ms\":{},\"revoked_at_ms\":{}}}",
                json_str(&t.id),
                json_str(&t.role),
                serde_json::Value::from(t.tenants.clone()),
                json_str(&t.name),
                t.created_at_ms,
                t.expires_at_ms,
                t.revoked_at_ms
            );
        }
    } else {
        let rows: Vec<_> = infos
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.role.clone(),
                    t.tenants.join(","),
                    t.name.clone(),
                    when(t.created_at_ms),
                    when(t.expires_at_ms),
                    when(t.revoked_at_ms),
                ]
            })
            .collect();
        print!(
            "{}",
            cli::table(
                &[
                    "ID", "ROLE", "TENANTS", "NAME", "CREATED", "EXPIRES", "REVOKED"
                ],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: RFC 3339, or a while ago.
fn since_ms(s: &str) -> Result<u64, Failure> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = parse_duration(s).map_err(|_| {
                Failure::usage(format!(
                    "since: {s:?} is neither a time (2026-11-24T10:00:00Z) nor a while ago (1h)"
                ))
            })?;
            std::time::SystemTime::now() - ago
        }
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        .max(1))
}

async fn audit(
    c: &mut Client,
    since: Option<String>,
    limit: Option<u64>,
    verify: bool,
    out: Output,
) -> Result<ExitCode, Failure> {
    if verify {
        let v = c
            .admin()
            .verify_audit(proto::VerifyAuditRequest {})
            .await?
            .into_inner();
        if out.json {
            println!(
                "{{\"intact\":{},\"records\":{},\"broken_at\":{},\"reason\":{}}}",
                v.intact,
                v.records,
                v.broken_at,
                json_str(&v.reason)
            );
        } else if v.intact {
            println!("audit trail intact: {} records", v.records);
        } else {
            println!("audit trail BROKEN at record {}: {}", v.broken_at, v.reason);
        }
        return Ok(if v.intact {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut req = proto::ListAuditRequest {
        from_index: 0,
        since_ms: match &since {
            Some(s) => since_ms(s)?,
            None => 0,
        },
        limit: 1000,
    };
    let mut left = limit.unwrap_or(u64::MAX);
    let mut rows = Vec::new();
    while left > 0 {
        req.limit = left.min(1000) as u32;
        let page = c.admin().list_audit(req).await?.into_inner();
        let n = page.records.len() as u64;
        for r in page.records {
            if out.json {
                println!(
                    "{{\"index\":{},\"at_ms\":{},\"actor\":{},\"action\":{},\"target\":{},\"outcome\":{},\"peer\":{},\"detail\":{}}}",
                    r.index,
                    r.at_ms,
                    json_str(&r.actor),
                    json_str(&r.action),
                    json_str(&r.target),
                    json_str(&r.outcome),
                    json_str(&r.peer),
                    json_str(&r.detail)
                );
            } else {
                rows.push(vec![
                    r.index.to_string(),
                    when(r.at_ms),
                    r.actor,
                    r.action,
                    r.target,
                    r.outcome,
                    r.peer,
                ]);
            }
        }
        if n == 0 || page.next_index == req.from_index && req.since_ms == 0 {
            break;
        }
        left = left.saturating_sub(n);
        req.from_index = page.next_index;
        req.since_ms = 0;
    }
    if !out.json {
        print!(
            "{}",
            cli::table(
                &["#", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "PEER"],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn join_token_row(t: &proto::JoinTokenInfo) -> Vec<String> {
    vec![
        t.id.clone(),
        when(t.created_at_ms),
        when(t.expires_at_ms),
        when(t.revoked_at_ms),
    ]
}

fn join_token_json(t: &proto::JoinTokenInfo) -> String {
    format!(
        "{{\"id\":\"{}\",\"created_at_ms\":{},\"expires_at_ms\":{},\"revoked_at_ms\":{}}}",
        t.id, t.created_at_ms, t.expires_at_ms, t.revoked_at_ms
    )
}

async fn join_token(
    c: &mut Client,
    action: JoinTokenAction,
    out: Output,
) -> Result<ExitCode, Failure> {
    let infos = match action {
        JoinTokenAction::Create { ttl, rotate } => {
            let r = c
                .admin()
                .create_join_token(proto::CreateJoinTokenRequest {
                    ttl_seconds: ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                    rotate,
                })
                .await?
                .into_inner();
            if out.json {
                let id = r.info.as_ref().map(|i| i.id.as_str()).unwrap_or("");
                println!("{{\"id\":\"{id}\",\"token\":\"{}\"}}", r.token);
            } else {
                // The token alone on stdout, for `> join.token`.
                println!("{}", r.token);
                if let Some(i) = &r.info {
                    out.note(&format!(
                        "join token {} created; it is not shown again",
                        i.id
                    ));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        JoinTokenAction::List => {
            c.admin()
                .list_join_tokens(proto::ListJoinTokensRequest {})
                .await?
                .into_inner()
                .tokens
        }
        JoinTokenAction::Revoke { id } => vec![
            c.admin()
                .revoke_join_token(proto::RevokeJoinTokenRequest { id })
                .await?
                .into_inner(),
        ],
    };
    if out.json {
        for t in &infos {
            println!("{}", join_token_json(t));
        }
    } else {
        let rows: Vec<_> = infos.iter().map(join_token_row).collect();
        print!(
            "{}",
            cli::table(&["ID", "CREATED", "EXPIRES", "REVOKED"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn main_async(args: Args) -> Result<ExitCode, Failure> {
    let file = match &args.config {
        Some(p) => hodei_hwp::settings::read_toml::<ClientSettings>(p)
            .map_err(|e| Failure::usage(e.to_string()))?,
        None => ClientSettings::default(),
    };
    let settings = args.settings.or(file);
    let out = Output {
        json: settings.output == Some(Format::Json),
    };
    let server = settings
        .server
        .clone()
        .unwrap_or_else(|| "https://127.0.0.1:7070".into());
    if let Command::Demo = args.command {
        return demo::run(out).await.map(|()| ExitCode::SUCCESS);
    }
    let token = match (&settings.token, &settings.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            read_secret_file(p).map_err(|e| Failure::usage(format!("token_file: {e}")))?
        }
        (None, None) => {
            let fallback = PathBuf::from("hodei-data/admin.token");
            if fallback.exists() {
                read_secret_file(&fallback)
                    .map_err(|e| Failure::usage(format!("token_file: {e}")))?
            } else {
                return Err(Failure::usage(
                    "token: required (--token-file, --token, HODEI_TOKEN or HODEI_TOKEN_FILE)",
                ));
            }
        }
    };
    let tls = if server.starts_with("https://") {
        let ca = settings
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("hodei-data/tls/ca.crt"));
        ClientTls::ca_file(&ca).map_err(|e| {
            Failure::usage(format!(
                "ca_file: {e} (the server's <data_dir>/tls/ca.crt; --ca-file or HODEI_CA_FILE)"
            ))
        })?
    } else {
        ClientTls::Plaintext
    };
    let mut c = Client::connect(&server, &tls, &token)
        .await
        .map_err(|e| Failure::server(format!("server {server}: {e}")))?;
    let parse_job = |s: &str| -> Result<JobId, Failure> {
        s.parse()
            .map_err(|e| Failure::usage(format!("job id {s:?}: {e}")))
    };
    match args.command {
        Command::Submit(a) => submit(&mut c, &a, out).await,
        Command::Status { job } => {
            let j = c.get(parse_job(&job)?).await?;
            out.job(&j, false);
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            tenant,
            limit,
            page_token,
            all,
        } => {
            let state = match state.as_deref() {
                None => JobStateKind::Unspecified,
                Some(s) => cli::parse_state(s).map_err(Failure::usage)?,
            };
            let mut token = page_token.unwrap_or_default();
            loop {
                let r = c
                    .list(proto::ListRequest {
                        state: state as i32,
                        tenant: tenant.clone().unwrap_or_default(),
                        page_token: token,
                        page_size: limit.clamp(1, 1000),
                    })
                    .await?;
                out.jobs(&r.jobs);
                token = r.next_page_token;
                if token.is_empty() {
                    break;
                }
                if !all {
                    out.next_page(&token);
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { job, follow } => {
            let id = parse_job(&job)?;
            if follow {
                cli::follow_logs(&mut c, id, None).await?;
            } else {
                cli::print_logs(&mut c, id).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job } => {
            let j = c.cancel(parse_job(&job)?).await?;
            out.job(&j, false);
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers => {
            let w = c.workers().await?;
            out.workers(&w);
            Ok(ExitCode::SUCCESS)
        }
        Command::JoinToken { action } => join_token(&mut c, action, out).await,
        Command::Pipeline { action } => crate::pipeline::run(&mut c, action, out).await,
        Command::Array { action } => crate::array::run(&mut c, action, out).await,
        Command::Schedule { action } => crate::schedule::run(&mut c, action, out).await,
        Command::Token { action } => client_token(&mut c, action, out).await,
        Command::Audit {
            since,
            limit,
            verify,
        } => audit(&mut c, since, limit, verify, out).await,
        Command::RevokeWorker { worker } => {
            let r = c
                .admin()
                .revoke_worker(proto::RevokeWorkerRequest { worker_id: worker })
                .await?
                .into_inner();
            if out.json {
                println!(
                    "{{\"worker_id\":\"{}\",\"disconnected\":{}}}",
                    r.worker_id, r.disconnected
                );
            } else {
                let how = if r.disconnected {
                    "disconnected and revoked"
                } else {
                    "revoked (it was not connected)"
                };
                println!("worker {} {how}", r.worker_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { worker } => {
            let id: WorkerId = worker
                .parse()
                .map_err(|e| Failure::usage(format!("worker id {worker:?}: {e}")))?;
            let w = c.drain(id).await?;
            out.workers(std::slice::from_ref(&w));
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { job } => {
            let id = job.as_deref().map(parse_job).transpose()?;
            let mut s = c.watch(id, true).await?;
            while let Some(e) = s.message().await? {
                out.event(&e);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => Ok(ExitCode::SUCCESS),
    }
}

/// Runs the command `args` names on a small runtime; errors print one
/// line and give a non-zero exit code (2 for bad usage).
pub fn run(args: Args) -> ExitCode {
    let runtime = match crate::runtime("hodei", Some(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let plaintext = args
        .settings
        .server
        .as_deref()
        .is_some_and(|s| s.starts_with("http://"));
    match runtime.block_on(main_async(args)) {
        Ok(code) => code,
        Err(f) => {
            // What a TLS server answers to plaintext HTTP/2 is not HTTP/2.
            let hint = if plaintext && f.message.contains("protocol error") {
                " (the server may serve TLS: use https:// and --ca-file)"
            } else {
                ""
            };
            eprintln!("hodei: {}{hint}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings_come_from_flags_then_the_file() {
        let file: ClientSettings = toml::from_str(
            "server = \"http://file:7070\"\ntoken_file = \"/t\"\noutput = \"json\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let flags = ClientSettings {
            token: Some("inline".into()),
            ..ClientSettings::default()
        };
        let s = flags.or(file);
        assert_eq!(s.server.as_deref(), Some("http://file:7070"));
        // A token given as a flag wins over the file's token file.
        assert_eq!((s.token.as_deref(), s.token_file), (Some("inline"), None));
        assert_eq!(s.output, Some(Format::Json));
        let err = toml::from_str::<ClientSettings>("sever = \"x\"")
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("sever"), "{err}");
    }
}

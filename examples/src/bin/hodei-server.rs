//! `hodei-server`: the Hodei API over gRPC on an embedded store (or a
//! PostgreSQL database several servers share), with Prometheus metrics and
//! health endpoints over HTTP.
//!
//! Every setting ([`ServerSettings`]) comes from a flag, an environment
//! variable or a TOML file (`--config`), in that order of precedence. Bad
//! configuration exits 2 naming the setting.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hodei_examples::{bad_config, init_logging, runtime, shutdown_signal};
use hodei_hwp::ServerSettings;
use hodei_hwp::server::security::tokens::{add_tenant_token, load_data_dir_tokens, private_dir};

/// The Hodei server: schedules jobs onto agents, stores everything in an
/// embedded database, serves the gRPC API and, over HTTP, /metrics,
/// /healthz, /readyz, the JSON API (/api/v1) and the dashboard (/ui/).
///
/// On first start it creates, in the data directory, a CA and a server
/// certificate (tls/), a join token (for agents) and an admin token (for
/// the CLI), keys and tokens mode 0600, and prints where they are. Both
/// listeners serve TLS unless --insecure-plaintext is given. SIGHUP reads
/// the TLS files again. SIGTERM or SIGINT stops it cleanly: it stops accepting, tells
/// agents, flushes the store and exits 0.
#[derive(Debug, Parser)]
#[command(name = "hodei-server", version)]
struct Args {
    /// A TOML file with any of the settings below (snake_case keys, e.g.
    /// `listen = "0.0.0.0:7070"`).
    #[arg(long, env = "HODEI_SERVER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServerSettings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a client token bound to one tenant, stores it in the data
    /// directory (tenant-tokens, mode 0600) and prints it. A running
    /// server picks it up on its next start.
    TenantToken {
        /// The tenant the token may act for.
        tenant: String,
    },
    /// Puts a new key first in the data directory's secrets.key: jobs
    /// submitted from the next start on are sealed with it; the old keys
    /// stay to open jobs sealed before. Delete an old line once every job
    /// sealed with it is final (their values are erased then).
    RotateSecretsKey,
    /// With --store postgres: brings the database's schema to this
    /// version (servers also do it as they start) and, with --from-redb,
    /// copies a redb deployment into it (jobs, logs, attempts, tokens and
    /// the audit chain, which still verifies). Stop the redb server first.
    Migrate {
        /// The redb file to copy (DATA_DIR/hodei.redb of the old server).
        #[arg(long)]
        from_redb: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file = args.config.as_deref().map(ServerSettings::from_file);
    let config = match file
        .transpose()
        .map(|f| args.settings.or(f.unwrap_or_default()))
    {
        Ok(s) => match s.resolve() {
            Ok(c) => c,
            Err(e) => return bad_config("hodei-server", e),
        },
        Err(e) => return bad_config("hodei-server", e),
    };
    if let Err(e) = init_logging(&config.log_level) {
        return bad_config("hodei-server", e);
    }
    if let Err(e) = private_dir(&config.data_dir) {
        return bad_config("hodei-server", format!("data_dir: {e}"));
    }
    if let Some(Command::TenantToken { tenant }) = &args.command {
        return match add_tenant_token(&config.data_dir.join("tenant-tokens"), tenant) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => bad_config("hodei-server", e),
        };
    }
    if let Some(Command::RotateSecretsKey) = &args.command {
        let path = config.data_dir.join("secrets.key");
        return match hodei_hwp::server::security::secrets::SecretKeys::rotate(&path) {
            Ok(id) => {
                println!(
                    "new secrets key {id} first in {}; restart the server to seal with it",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => bad_config("hodei-server", e),
        };
    }
    if let Some(Command::Migrate { from_redb }) = &args.command {
        let rt = match runtime("hodei-server", None) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        return match rt.block_on(config.migrate(from_redb.as_deref())) {
            Ok(said) => {
                println!("hodei-server: {said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hodei-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut config = config;
    match config.load_secret_keys() {
        Ok(true) => println!(
            "hodei-server: created {} (seals jobs' secret values at rest)",
            config.data_dir.join("secrets.key").display()
        ),
        Ok(false) => {}
        Err(e) => {
            eprintln!("hodei-server: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (tls, made) = match config.server_tls() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hodei-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    for path in made {
        println!("hodei-server: created {}", path.display());
    }
    match &tls {
        Some(t) => println!(
            "hodei-server: TLS on both listeners; clients trust {}, agents pin CA sha256:{}",
            t.pki().ca_path().display(),
            t.fingerprint()
        ),
        None => eprintln!(
            "hodei-server: WARNING: --insecure-plaintext: tokens, job secrets and logs cross the \
             network unencrypted, and agents are identified by a shared token only"
        ),
    }
    let tokens = match load_data_dir_tokens(&config.data_dir, tls.as_ref().map(|t| t.fingerprint()))
    {
        Ok((tokens, made)) => {
            for path in made {
                let what = if path.ends_with("join.token") {
                    "join"
                } else {
                    "admin"
                };
                println!(
                    "hodei-server: created the {what} token in {}",
                    path.display()
                );
            }
            tokens
        }
        Err(e) => {
            eprintln!("hodei-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(rt) = runtime("hodei-server", None) else {
        return ExitCode::FAILURE;
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let result = rt.block_on(async move {
        let shutdown = shutdown_signal().map_err(|e| e.to_string())?;
        // SIGHUP: read the certificate, key and client CA files again now
        // (they are also checked every few seconds).
        if let Some(tls) = tls.clone() {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("SIGHUP: {e}"))?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match tls.reload(true) {
                        Ok(_) => tracing::info!("SIGHUP: TLS files reloaded"),
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: TLS files cannot be used; keeping the ones in use"
                        ),
                    }
                }
            });
        }
        config
            .run(tokens, tls, shutdown, move |grpc, http| {
                // Scripts and tests read these two lines.
                println!("hodei-server: gRPC on {scheme}://{grpc}");
                println!("hodei-server: metrics on {scheme}://{http}/metrics");
            })
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hodei-server: {e}");
            ExitCode::FAILURE
        }
    }
}

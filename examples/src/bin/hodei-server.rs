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
use hodei_examples::{bad_config, init_logging, server};
use hodei_hwp::ServerSettings;
use hodei_hwp::server::security::tokens::private_dir;

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
    match args.command {
        Some(Command::TenantToken { tenant }) => server::tenant_token(&config, &tenant),
        Some(Command::RotateSecretsKey) => server::rotate_secrets_key(&config),
        Some(Command::Migrate { from_redb }) => server::migrate(&config, from_redb.as_deref()),
        None => server::serve(config),
    }
}

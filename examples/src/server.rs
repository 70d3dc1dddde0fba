//! What `hodei-server` does with its settings: serve until a signal, or
//! one of its subcommands. The binary parses; this runs.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use hodei_hwp::ServerConfig;
use hodei_hwp::server::security::secrets::SecretKeys;
use hodei_hwp::server::security::tls::ServerTls;
use hodei_hwp::server::security::tokens::add_tenant_token;

use crate::{bad_config, runtime, shutdown_signal};

/// `hodei-server tenant-token TENANT`: a client token bound to one
/// tenant, stored in the data directory and printed.
pub fn tenant_token(config: &ServerConfig, tenant: &str) -> ExitCode {
    match add_tenant_token(&config.data_dir.join("tenant-tokens"), tenant) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => bad_config("hodei-server", e),
    }
}

/// `hodei-server rotate-secrets-key`: a new key first in `secrets.key`.
pub fn rotate_secrets_key(config: &ServerConfig) -> ExitCode {
    let path = config.data_dir.join("secrets.key");
    match SecretKeys::rotate(&path) {
        Ok(id) => {
            println!(
                "new secrets key {id} first in {}; restart the server to seal with it",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => bad_config("hodei-server", e),
    }
}

/// `hodei-server migrate [--from-redb FILE]`: the PostgreSQL schema
/// brought to this version, and a redb deployment copied in.
pub fn migrate(config: &ServerConfig, from_redb: Option<&Path>) -> ExitCode {
    let rt = match runtime("hodei-server", None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(config.migrate(from_redb)) {
        Ok(said) => {
            println!("hodei-server: {said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hodei-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT: prepares the data directory (saying
/// what it made), then runs; SIGHUP reads the TLS files again.
pub fn serve(mut config: ServerConfig) -> ExitCode {
    let prepared = match config.prepare() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hodei-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    for note in &prepared.notes {
        println!("hodei-server: {note}");
    }
    if prepared.tls.is_none() {
        eprintln!(
            "hodei-server: WARNING: --insecure-plaintext: tokens, job secrets and logs cross the \
             network unencrypted, and agents are identified by a shared token only"
        );
    }
    let Ok(rt) = runtime("hodei-server", None) else {
        return ExitCode::FAILURE;
    };
    let (tls, tokens) = (prepared.tls, prepared.tokens);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let result = rt.block_on(async move {
        let shutdown = shutdown_signal().map_err(|e| e.to_string())?;
        if let Some(tls) = tls.clone() {
            reload_on_hangup(tls)?;
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

/// On SIGHUP, reads the certificate, key and client CA files again (they
/// are also checked every few seconds); files that cannot be used leave
/// the ones in use. The task ends with the runtime.
fn reload_on_hangup(tls: Arc<ServerTls>) -> Result<(), String> {
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
    Ok(())
}

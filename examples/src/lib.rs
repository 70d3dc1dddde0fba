//! Thin binaries and runnable examples assembled from the Hodei crates.
//!
//! Every program here parses its configuration, builds its parts from the
//! libraries and runs them; logic they need lives in the libraries. This
//! library holds the few helpers the binaries share.
#![deny(missing_docs)]

pub mod app;
pub mod array;
pub mod cli;
pub mod demo;
pub mod pipeline;
pub mod schedule;
pub mod server;

/// A multi-threaded tokio runtime with `threads` workers (one per CPU when
/// `None`); if it cannot start, says so on stderr as `program` and returns
/// the exit code to end with.
pub fn runtime(
    program: &str,
    threads: Option<usize>,
) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n);
    }
    b.enable_all().build().map_err(|e| {
        eprintln!("{program}: cannot start the runtime: {e}");
        std::process::ExitCode::FAILURE
    })
}

pub use hodei_hwp::settings::{parse_duration, parse_key_value as parse_label};

/// Says on stderr, as `program`, what configuration was refused, and
/// returns exit code 2.
pub fn bad_config(program: &str, e: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{program}: {e}");
    std::process::ExitCode::from(2)
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// # Errors
///
/// The signal handlers cannot be installed (outside a runtime).
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static>
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
    })
}

/// Sends log lines to standard error at `level` (`error`, `warn`, `info`,
/// `debug` or `trace`).
pub fn init_logging(level: &str) -> Result<(), String> {
    let level: tracing::Level = level
        .parse()
        .map_err(|_| format!("log level {level:?}: expected error, warn, info, debug or trace"))?;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| e.to_string())
}

/// Reads a secret (a token) from a file, trimmed; the file must not be
/// readable by group or others.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    hodei_hwp::server::security::tokens::read_secret_file(path).map_err(|e| e.to_string())
}

/// `GET path` over HTTP/1.0 to `addr` (`host:port`), through TLS trusting
/// the CA certificates in `ca` when given; the whole response, headers
/// first. For scripts, tests and the load generator reading `/metrics`.
///
/// # Errors
///
/// The CA file cannot be read, or the connection or handshake fails.
pub fn http_get(addr: &str, path: &str, ca: Option<&std::path::Path>) -> std::io::Result<String> {
    http_request(addr, "GET", path, &[], None, ca)
}

/// One HTTP/1.0 request to `addr` (`host:port`) with `headers` and an
/// optional body, over TLS trusting `ca` when given; returns the raw
/// answer, read until the server closes the connection. For tests and
/// scripts of the HTTP/JSON API.
///
/// # Errors
///
/// The CA file cannot be read, or the connection or handshake fails.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    ca: Option<&std::path::Path>,
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let mut resp = Vec::new();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    let Some(ca) = ca else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())?;
        tcp.read_to_end(&mut resp)?;
        return Ok(String::from_utf8_lossy(&resp).into_owned());
    };
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in hodei_hwp::tls::certs_from_pem("ca", &pem).map_err(|e| bad(e.to_string()))? {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(hodei_hwp::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| bad(e.to_string()))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| bad(e.to_string()))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(request.as_bytes())?;
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        // A server that closes without close_notify still sent it all.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

//! Thin binaries and runnable examples assembled from the Hodei crates.
//!
//! Every program here parses its configuration, builds its parts from the
//! libraries and runs them; logic they need lives in the libraries. This
//! library holds the few helpers the binaries share.
#![deny(missing_docs)]

use std::time::Duration;

pub mod cli;
pub mod demo;

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

/// Parses a duration such as `500ms`, `10s` or `5m` (for clap).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

/// Parses `key=value` (for clap).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected key=value")),
    }
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
    tokens::check_private(path).map_err(|e| format!("{e:#}"))?;
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse_or_say_why() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("nokey").is_err());
    }
}

/// Token files in a server's data directory: created once, mode 0600.
pub mod tokens {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use anyhow::{Context, bail};
    use hodei_core::TenantId;
    use rand::Rng;

    /// A new random token: 32 bytes from the operating system's generator,
    /// as 64 hex digits.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Creates `dir` (mode 0700) if missing.
    pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
    }

    /// Refuses a file that group or others may read.
    pub(crate) fn check_private(path: &Path) -> anyhow::Result<()> {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{}: mode {:o} lets others read a secret; chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        Ok(())
    }

    /// The token in `path`, made (mode 0600) if the file does not exist.
    /// Returns it and whether it was just made.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(String, bool)> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                let t = generate();
                writeln!(f, "{t}").with_context(|| format!("{}", path.display()))?;
                f.sync_all()?;
                Ok((t, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                crate::read_secret_file(path)
                    .map(|t| (t, false))
                    .map_err(anyhow::Error::msg)
            }
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// Tenant tokens: one `tenant token` pair per line; `#` starts a
    /// comment. A missing file holds none.
    pub fn tenant_tokens(path: &Path) -> anyhow::Result<Vec<(TenantId, String)>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        check_private(path)?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((tenant, token)) = line.split_once(char::is_whitespace) else {
                bail!("{}:{}: expected `tenant token`", path.display(), i + 1);
            };
            let tenant: TenantId = tenant
                .parse()
                .map_err(|e| anyhow::anyhow!("{}:{}: tenant: {e}", path.display(), i + 1))?;
            out.push((tenant, token.trim().to_string()));
        }
        Ok(out)
    }

    /// Adds a new token for `tenant` to the file (made mode 0600) and
    /// returns it.
    pub fn add_tenant_token(path: &Path, tenant: &str) -> anyhow::Result<String> {
        let tenant: TenantId = tenant.parse().map_err(|e| anyhow::anyhow!("tenant: {e}"))?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        check_private(path)?;
        let t = generate();
        writeln!(f, "{tenant} {t}")?;
        f.sync_all()?;
        Ok(t)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tokens_are_made_once_private_and_read_back() {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("join.token");
            let (a, made) = load_or_create(&p).unwrap();
            assert!(made);
            assert_eq!(a.len(), 64);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let (b, made) = load_or_create(&p).unwrap();
            assert!(!made);
            assert_eq!(a, b);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                load_or_create(&p)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );

            let tt = dir.path().join("tenant-tokens");
            let t = add_tenant_token(&tt, "acme").unwrap();
            let all = tenant_tokens(&tt).unwrap();
            assert_eq!(all.len(), 1);
            assert_eq!(all[0].0.as_str(), "acme");
            assert_eq!(all[0].1, t);
            assert!(add_tenant_token(&tt, "").is_err());
        }
    }
}

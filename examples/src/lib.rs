//! Thin binaries and runnable examples assembled from the Hodei crates.
//!
//! Every program here parses its configuration, builds its parts from the
//! libraries and runs them; logic they need lives in the libraries. This
//! library holds the few helpers the binaries share.
#![deny(missing_docs)]

use std::time::Duration;

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
        .try_init()
        .map_err(|e| e.to_string())
}

/// Reads a secret (a token) from a file, trimmed; the file must not be
/// readable by group or others.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: readable by others; chmod 600 it",
            path.display()
        ));
    }
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

//! What the programs' settings share: the error that names a setting,
//! the parsers of flag values, and reading a TOML file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why settings were refused; names the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A setting's value is not acceptable, or a required one is missing.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting, as written in the file (`weights.acme`).
        setting: String,
        /// What is wrong with it.
        message: String,
    },
    /// The settings file cannot be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl SettingsError {
    /// `setting` is refused for `message`.
    pub fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsError::Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// This machine's host name, if it has one: what the server's
/// certificate and advertised endpoints name, and an agent's default name.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Reads settings from a TOML file.
///
/// # Errors
///
/// [`SettingsError::File`]: the file cannot be read, is not TOML, or
/// holds an unknown key or a value of the wrong type (named in the
/// message).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, SettingsError> {
    let file = |message: String| SettingsError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    toml::from_str(&text).map_err(|e| file(e.to_string()))
}

/// Parses a duration such as `500ms`, `10s` or `5m`.
///
/// # Errors
///
/// Says what it expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

/// Parses `key=value` (the value may hold `=`).
///
/// # Errors
///
/// No `=`, or an empty key.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_why() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("nokey").is_err());
    }
}

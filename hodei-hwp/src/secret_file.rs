//! Secret files (tokens): private to their owner, read trimmed. Used by
//! agents and clients for their tokens, and by the server for its own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file or directory could not be read, written or made.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read a secret.
    #[error("{path}: mode {mode:o} lets others read a secret; chmod 600 it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's contents are not what it should hold.
    #[error("{path}: {message}")]
    Malformed {
        /// The file (and line, where it applies).
        path: String,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenFileError + '_ {
    move |source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a file that group or others may read.
///
/// # Errors
///
/// [`TokenFileError::Exposed`], or the file cannot be read.
pub fn check_private(path: &Path) -> Result<(), TokenFileError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Reads a secret (a token) from a private file, trimmed.
///
/// # Errors
///
/// The file is readable by others, unreadable or empty.
pub fn read_secret_file(path: &Path) -> Result<String, TokenFileError> {
    check_private(path)?;
    let s = std::fs::read_to_string(path).map_err(io(path))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(TokenFileError::Malformed {
            path: path.display().to_string(),
            message: "empty".into(),
        });
    }
    Ok(s)
}

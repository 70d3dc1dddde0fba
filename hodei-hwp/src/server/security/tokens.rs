//! Token files in a server's data directory: created once, mode 0600,
//! refused when others may read them.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hodei_core::TenantId;
use rand::Rng;

use crate::secret_file::io;
pub use crate::secret_file::{TokenFileError, check_private, read_secret_file};
use crate::server::security::auth::{Principal, Role, Scope, Tokens, strip_pin};
use crate::tls::{Fingerprint, JoinToken, write_atomic};

/// A new random token: 32 bytes from the operating system's generator,
/// as 64 hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    crate::tls::hex(&bytes)
}

/// Creates `dir` (mode 0700) if missing.
///
/// # Errors
///
/// The directory cannot be made.
pub fn private_dir(dir: &Path) -> Result<(), TokenFileError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// The token in `path`, made (mode 0600) if the file does not exist.
/// Returns it and whether it was just made.
///
/// # Errors
///
/// The file cannot be made or read, or others may read it.
pub fn load_or_create(path: &Path) -> Result<(String, bool), TokenFileError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            let t = generate_token();
            writeln!(f, "{t}").map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
            Ok((t, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret_file(path).map(|t| (t, false))
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Tenant tokens: one `tenant token` pair per line; `#` starts a comment.
/// A missing file holds none.
///
/// # Errors
///
/// The file cannot be read, others may read it, or a line is malformed.
pub fn tenant_tokens(path: &Path) -> Result<Vec<(TenantId, String)>, TokenFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    check_private(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let Some((tenant, token)) = line.split_once(char::is_whitespace) else {
            return Err(TokenFileError::Malformed {
                path: at(),
                message: "expected `tenant token`".into(),
            });
        };
        let tenant: TenantId = tenant.parse().map_err(|e| TokenFileError::Malformed {
            path: at(),
            message: format!("tenant: {e}"),
        })?;
        out.push((tenant, token.trim().to_string()));
    }
    Ok(out)
}

/// Adds a new token for `tenant` to the file (made mode 0600) and returns
/// it.
///
/// # Errors
///
/// The tenant name is invalid, or the file cannot be written.
pub fn add_tenant_token(path: &Path, tenant: &str) -> Result<String, TokenFileError> {
    let tenant: TenantId = tenant.parse().map_err(|e| TokenFileError::Malformed {
        path: "tenant".into(),
        message: format!("{e}"),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    check_private(path)?;
    let t = generate_token();
    writeln!(f, "{tenant} {t}").map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(t)
}

/// The tokens a server in `dir` accepts: `join.token` (agents) and
/// `admin.token` (every tenant), made on first use, and the lines of
/// `tenant-tokens`. Returns them and the files just made.
///
/// With `pin` (the server serves TLS), `join.token` holds the full form an
/// agent needs, `hodei-join.<CA fingerprint>.<secret>`: a bare secret or
/// an old fingerprint is rewritten in place.
///
/// # Errors
///
/// A token file cannot be made or read, or others may read it.
pub fn load_data_dir_tokens(
    dir: &Path,
    pin: Option<Fingerprint>,
) -> Result<(Tokens, Vec<PathBuf>), TokenFileError> {
    let mut tokens = Tokens::new();
    let mut made = Vec::new();
    let join = dir.join("join.token");
    let admin = dir.join("admin.token");
    let (join_token, created) = load_or_create(&join)?;
    if created {
        made.push(join.clone());
    }
    if let Some(ca) = pin {
        let secret = strip_pin(&join_token).to_string();
        let full = JoinToken { ca, secret }.to_string();
        if full != join_token {
            write_atomic(&join, format!("{full}\n").as_bytes(), true).map_err(|e| {
                TokenFileError::Malformed {
                    path: join.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        }
    }
    let (admin_token, created) = load_or_create(&admin)?;
    if created {
        made.push(admin);
    }
    tokens.add_join_token(&join_token);
    tokens.add_client_token(
        &admin_token,
        Principal::new(Role::Admin, Scope::All, "admin.token"),
    );
    for (tenant, token) in tenant_tokens(&dir.join("tenant-tokens"))? {
        let name = format!("tenant-tokens:{tenant}");
        tokens.add_client_token(
            &token,
            Principal::new(Role::Submitter, Scope::Tenants(vec![tenant]), name),
        );
    }
    Ok((tokens, made))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn tokens_are_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("join.token");
        let (a, made) = load_or_create(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(made);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&p)
            .map(|m| m.permissions().mode())
            .unwrap_or_default();
        assert_eq!(mode & 0o777, 0o600);
        let (b, made) = load_or_create(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!made);
        assert_eq!(a, b);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = load_or_create(&p).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let tt = dir.path().join("tenant-tokens");
        let t = add_tenant_token(&tt, "acme").unwrap_or_else(|e| panic!("{e}"));
        let all = tenant_tokens(&tt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.as_str(), "acme");
        assert_eq!(all[0].1, t);
        assert!(add_tenant_token(&tt, "").is_err());
        std::fs::write(&tt, "acme\n").unwrap_or_else(|e| panic!("{e}"));
        let err = tenant_tokens(&tt).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("tenant-tokens:1"), "{err}");
    }
}

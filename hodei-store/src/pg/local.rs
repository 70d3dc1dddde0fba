//! [`LocalCluster`]: a throwaway PostgreSQL server in a temporary
//! directory, for tests, benchmarks and trying Hodei on one machine.
//!
//! It uses the server binaries installed on the machine
//! (`/usr/lib/postgresql/<version>/bin`, or `HODEI_PG_BIN`), listens on a
//! free port of 127.0.0.1 only, trusts local connections, and is stopped
//! and removed when dropped. PostgreSQL refuses to run as root: run as
//! root, the cluster belongs to the `postgres` user (or `nobody`).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a local cluster could not be made or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or HODEI_PG_BIN: install Debian's `postgresql` package"
    )]
    NotInstalled,
    /// A step failed.
    #[error("{step}: {detail}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// What it printed or why it could not run.
        detail: String,
    },
}

/// A throwaway PostgreSQL server in a temporary directory, for tests,
/// benchmarks and trying Hodei on one machine.
///
/// It uses the server binaries installed on the machine
/// (`/usr/lib/postgresql/<version>/bin`, or `HODEI_PG_BIN`), listens on a
/// free port of 127.0.0.1 only, trusts local connections, and is stopped
/// and removed when dropped. PostgreSQL refuses to run as root: run as
/// root, the cluster belongs to the `postgres` user (or `nobody`).
#[derive(Debug)]
pub struct LocalCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

fn failed(step: &'static str) -> impl FnOnce(std::io::Error) -> LocalClusterError {
    move |e| LocalClusterError::Failed {
        step,
        detail: e.to_string(),
    }
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HODEI_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// The user and group to run as when root: `postgres`, else `nobody`.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
    };
    Some(
        user("postgres")
            .or_else(|| user("nobody"))
            .unwrap_or((65534, 65534)),
    )
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// Makes a cluster in a new temporary directory and starts it.
    ///
    /// # Errors
    ///
    /// [`LocalClusterError::NotInstalled`], or the step that failed with
    /// what it printed.
    pub fn start() -> Result<Self, LocalClusterError> {
        let bin = find_bin().ok_or(LocalClusterError::NotInstalled)?;
        let root = std::env::temp_dir().join(format!(
            "hodei-pg-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&root).map_err(failed("temporary directory"))?;
        // World-traversable so the unprivileged owner reaches its data.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(failed("temporary directory"))?;
        let owner = unprivileged();
        if let Some(o) = owner {
            chown(&root, o).map_err(failed("chown"))?;
        }
        let mut c = LocalCluster {
            root,
            bin,
            port: 0,
            owner,
        };
        c.run(
            "initdb",
            "initdb",
            &[
                "-D",
                &c.data().to_string_lossy(),
                "-U",
                "hodei",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
        )?;
        // A few tries: another process may take the free port first.
        let mut last = None;
        for _ in 0..3 {
            c.port = free_port().map_err(failed("free port"))?;
            match c.start_server() {
                Ok(()) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(LocalClusterError::Failed {
            step: "pg_ctl start",
            detail: "no attempt".into(),
        }))
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn run(&self, step: &'static str, tool: &str, args: &[&str]) -> Result<(), LocalClusterError> {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).env("HOME", &self.root);
        }
        let out = cmd.output().map_err(failed(step))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
        Err(LocalClusterError::Failed {
            step,
            detail: format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            ),
        })
    }

    fn start_server(&self) -> Result<(), LocalClusterError> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=4GB -c wal_compression=on",
            self.port,
            self.root.display()
        );
        self.run(
            "pg_ctl start",
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.root.join("server.log").to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Its URL, for the `hodei` database user and the `postgres`
    /// database.
    pub fn url(&self) -> String {
        format!("postgres://hodei@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (as a crash would: `immediate` mode),
    /// keeping its data.
    ///
    /// # Errors
    ///
    /// What `pg_ctl` printed.
    pub fn stop(&self) -> Result<(), LocalClusterError> {
        self.run(
            "pg_ctl stop",
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Starts it again on the same port after [`stop`](Self::stop).
    ///
    /// # Errors
    ///
    /// What `pg_ctl` printed.
    pub fn restart(&self) -> Result<(), LocalClusterError> {
        self.start_server()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

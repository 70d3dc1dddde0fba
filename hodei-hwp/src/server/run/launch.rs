//! What [`ServerConfig::run`] does with a configuration: the server's
//! TLS and secrets key from its data directory, the store it names, and
//! either one server or a replica of several on PostgreSQL.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hodei_store::{MemStore, RedbStore, Store as _};
use tokio::net::TcpListener;

use crate::server::run::builder::{Parts, ServerBuilder, run_built};
use crate::server::run::error::ServerError;
use crate::server::run::replica;
use crate::server::run::settings::{ServerConfig, ServerTlsConfig, StoreKind};
use crate::server::security::auth::Tokens;
use crate::server::security::jwt::JwtConfig;
use crate::server::security::pki::Pki;
use crate::server::security::secrets::SecretKeys;
use crate::server::security::tls::{ServerTls, TlsSource};

/// What a server finds or makes in its data directory before it serves
/// ([`ServerConfig::prepare`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct Prepared {
    /// TLS for both listeners; `None` with `--insecure-plaintext`.
    pub tls: Option<Arc<ServerTls>>,
    /// The join, admin and tenant tokens of the data directory.
    pub tokens: Tokens,
    /// What was made and what clients and agents trust, one line each,
    /// for the operator.
    pub notes: Vec<String>,
}

impl ServerConfig {
    /// Everything a server needs from its data directory before it
    /// serves: the secrets key ([`load_secret_keys`](Self::load_secret_keys)),
    /// TLS ([`server_tls`](Self::server_tls)) and the token files, each
    /// made on first start.
    ///
    /// # Errors
    ///
    /// [`ServerError::Secrets`], [`ServerError::Tls`] or
    /// [`ServerError::Tokens`], naming the file that cannot be made or used.
    pub fn prepare(&mut self) -> Result<Prepared, ServerError> {
        let mut notes = Vec::new();
        if self.load_secret_keys()? {
            notes.push(format!(
                "created {} (seals jobs' secret values at rest)",
                self.data_dir.join("secrets.key").display()
            ));
        }
        let (tls, made) = self.server_tls()?;
        notes.extend(made.iter().map(|p| format!("created {}", p.display())));
        if let Some(t) = &tls {
            notes.push(format!(
                "TLS on both listeners; clients trust {}, agents pin CA sha256:{}",
                t.pki().ca_path().display(),
                t.fingerprint()
            ));
        }
        let (tokens, made) = crate::server::security::tokens::load_data_dir_tokens(
            &self.data_dir,
            tls.as_ref().map(|t| t.fingerprint()),
        )?;
        for path in made {
            let what = if path.ends_with("join.token") {
                "join"
            } else {
                "admin"
            };
            notes.push(format!("created the {what} token in {}", path.display()));
        }
        Ok(Prepared { tls, tokens, notes })
    }

    /// The server's TLS as these settings describe it: `None` for
    /// plaintext; otherwise the server's own CA in `<data_dir>/tls` (made
    /// on first start, with a server certificate unless files are given).
    /// Returns it and the files just made.
    ///
    /// # Errors
    ///
    /// [`ServerError::Tls`] naming the file that cannot be made or used.
    pub fn server_tls(&self) -> Result<(Option<Arc<ServerTls>>, Vec<PathBuf>), ServerError> {
        let ServerTlsConfig::Tls { source, client_ca } = &self.tls else {
            return Ok((None, Vec::new()));
        };
        let (pki, mut made) = Pki::load_or_create(&self.data_dir.join("tls"))?;
        let pki = Arc::new(pki);
        let fresh = !pki.server_cert_path().exists();
        let tls = ServerTls::new(source.clone(), client_ca.clone(), Arc::clone(&pki))?;
        if fresh && matches!(source, TlsSource::Generated { .. }) {
            made.push(pki.server_cert_path());
        }
        Ok((Some(tls), made))
    }

    /// Loads the key that seals jobs' secret values
    /// (`<data_dir>/secrets.key`, made on first start) into the engine's
    /// settings. Returns whether the file was just made. [`run`](Self::run)
    /// does it when it was not done.
    ///
    /// # Errors
    ///
    /// [`ServerError::Secrets`]: the file cannot be made, read or trusted.
    pub fn load_secret_keys(&mut self) -> Result<bool, ServerError> {
        let (keys, made) = SecretKeys::load_or_create(&self.data_dir.join("secrets.key"))?;
        self.engine.secret_keys = Some(Arc::new(keys));
        Ok(made)
    }

    /// For `--store postgres`: brings the database's schema to this
    /// build's version and, with `from_redb`, copies that redb store's
    /// jobs, logs, tokens and audit chain into it (checking the chain
    /// after). Returns what it did, to print.
    ///
    /// # Errors
    ///
    /// [`ServerError::Database`]: not a PostgreSQL configuration, the
    /// database unreachable or of a newer schema, the copy failed (a
    /// non-empty database is refused: a copy goes into a fresh one).
    pub async fn migrate(
        &self,
        from_redb: Option<&std::path::Path>,
    ) -> Result<String, ServerError> {
        use hodei_store::StoreError;
        let db_err = ServerError::Database;
        let pg = self.postgres.as_ref().ok_or_else(|| {
            db_err(StoreError::storage_message(
                "migrate needs --store postgres and --database-url",
            ))
        })?;
        let db = hodei_store::pg::PgDatabase::connect(&pg.url, 4)
            .await
            .map_err(db_err)?;
        let was = db.migrate().await.map_err(db_err)?;
        let mut said = format!(
            "schema at version {} (was {was})",
            hodei_store::pg::SCHEMA_VERSION
        );
        if let Some(path) = from_redb {
            let from = RedbStore::open(path, self.store).map_err(|source| ServerError::Store {
                path: path.to_path_buf(),
                source,
            })?;
            let to = db.store(self.store, None).await.map_err(db_err)?;
            let any = to
                .list_jobs(hodei_store::JobFilter {
                    limit: 1,
                    ..Default::default()
                })
                .await
                .map_err(db_err)?;
            if !any.jobs.is_empty() || !to.audit_records(0, 1).await.map_err(db_err)?.is_empty() {
                return Err(db_err(StoreError::storage_message(
                    "the database already holds jobs or audit records: copy into an empty one",
                )));
            }
            let c = hodei_store::pg::copy_redb(&from, &to)
                .await
                .map_err(db_err)?;
            said.push_str(&format!(
                "; copied {} jobs, {} attempts, {} log chunks, {} credentials and {} audit records from {} (the audit chain verifies)",
                c.jobs,
                c.attempts,
                c.log_chunks,
                c.credentials,
                c.audit_records,
                path.display()
            ));
        }
        Ok(said)
    }

    /// Runs the server these settings describe until `shutdown` resolves:
    /// binds both listeners, opens the store in the data directory (or
    /// memory), starts (over `tls`, from [`server_tls`](Self::server_tls),
    /// when given), calls `started` with the gRPC and HTTP addresses, and
    /// returns once it has stopped and its store is flushed.
    ///
    /// # Errors
    ///
    /// A listener cannot be bound (naming its setting), the store cannot
    /// be opened, or serving fails.
    pub async fn run(
        self,
        tokens: Tokens,
        tls: Option<Arc<ServerTls>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        started: impl FnOnce(SocketAddr, SocketAddr),
    ) -> Result<(), ServerError> {
        let mut this = self;
        if this.engine.secret_keys.is_none() {
            this.load_secret_keys()?;
        }
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        };
        let grpc = bind("listen", this.listen).await?;
        let http = bind("http_listen", this.http_listen).await?;
        let jwt = match &this.jwt {
            Some(j) => Some(JwtConfig::from_file(
                &j.key,
                &j.issuer,
                &j.audience,
                &j.tenant_claim,
                &j.role_claim,
            )?),
            None => None,
        };
        let parts = Parts {
            limits: this.limits,
            jwt,
            tokens,
            engine: this.engine,
            agent_cert_ttl: this.agent_cert_ttl,
            join_file: this.data_dir.join("join.token"),
            tls,
        };
        match this.store_kind {
            StoreKind::Memory => {
                let store = Arc::new(MemStore::new(this.store));
                run_built(
                    parts.apply(ServerBuilder::new(store, grpc), http),
                    shutdown,
                    started,
                )
                .await
            }
            StoreKind::Postgres => {
                let pg = this.postgres.clone().ok_or_else(|| {
                    ServerError::Task("--store postgres without --database-url".into())
                })?;
                replica::run(
                    replica::Replica {
                        pg,
                        store: this.store,
                        listen: this.listen,
                        http_listen: this.http_listen,
                        parts,
                    },
                    (grpc, http),
                    shutdown,
                    started,
                )
                .await
            }
            _ => {
                let path = this.data_dir.join("hodei.redb");
                let store = RedbStore::open(&path, this.store)
                    .map_err(|source| ServerError::Store { path, source })?;
                let b = ServerBuilder::new(Arc::new(store), grpc)
                    .write_stats(|s: &RedbStore| Some(s.write_stats()));
                run_built(parts.apply(b, http), shutdown, started).await
            }
        }
    }
}

//! [`ServerError`]: why a server could not start or stopped badly.

use std::net::SocketAddr;

use crate::server::engine::EngineError;
use crate::server::grpc::serve::ServeError;
use crate::server::security::SecurityError;

/// Why a server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The engine could not recover from the store.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// Serving gRPC failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A listener could not be bound.
    #[error("{what}: cannot bind {addr}: {source}")]
    Bind {
        /// Which listener (its setting).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener failed.
    #[error("{what}: {source}")]
    Listener {
        /// Which listener.
        what: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A server task ended abnormally.
    #[error("server task: {0}")]
    Task(String),
    /// The agent credentials could not be loaded.
    #[error("credentials: {0}")]
    Security(#[from] SecurityError),
    /// The TLS files could not be used.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The secrets key file could not be used.
    #[error("secrets key: {0}")]
    Secrets(#[from] crate::server::security::secrets::SecretsError),
    /// A token file in the data directory cannot be made or read, or
    /// others may read it.
    #[error("tokens: {0}")]
    Tokens(#[from] crate::secret_file::TokenFileError),
    /// The shared database cannot be used (a newer schema, say).
    #[error("database: {0}")]
    Database(#[source] hodei_store::StoreError),
    /// The store could not be opened.
    #[error("store {path}: {source}")]
    Store {
        /// Its file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: hodei_store::StoreError,
    },
}

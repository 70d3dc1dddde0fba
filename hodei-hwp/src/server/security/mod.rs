//! Who may do what, and what is kept secret: roles and scopes
//! (`auth.rs`), JSON Web Tokens from an identity provider ([`jwt`]),
//! token files ([`tokens`]), the server's own CA ([`pki`]), TLS
//! configurations reloaded on change ([`tls`]), the stored credentials
//! and live agent connections (`credentials.rs`, [`Security`]), secret
//! values sealed at rest ([`secrets`]) and the audit trail's entries
//! ([`audit_log`]).

pub mod audit_log;
pub(crate) mod auth;
mod credentials;
pub mod jwt;
pub mod pki;
pub mod secrets;
pub mod tls;
pub mod tokens;

pub use credentials::{ClientTokenInfo, Cut, JoinTokenInfo, LiveConn, Security, SecurityError};

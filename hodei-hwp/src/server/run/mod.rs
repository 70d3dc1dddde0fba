//! Running a server: its settings declared once for flags, environment
//! and TOML (`settings.rs`), [`ServerBuilder`](builder::ServerBuilder)
//! (`builder.rs`), what [`ServerConfig::run`](settings::ServerConfig::run)
//! does with a configuration (`launch.rs`), and several servers on one
//! PostgreSQL database (`replica.rs`).

pub(crate) mod builder;
pub(crate) mod error;
mod launch;
pub use launch::Prepared;
pub(crate) mod replica;
pub(crate) mod settings;

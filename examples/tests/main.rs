//! The end-to-end tests of the Hodei binaries and server, as one test
//! binary (one link of the server instead of one per file). Each module
//! is a subject; `harness` starts the real `hodei-server` and
//! `hodei-agent` for all of them, `common` an in-process server with its
//! own CA, `process` the child processes.

mod common;
mod harness;
mod process;

mod agent;
mod arrays;
mod browser;
mod deploy;
mod e2e;
mod http_api;
mod pipelines;
mod replicas;
mod schedules;
mod schemathesis;
mod security;
mod tls;

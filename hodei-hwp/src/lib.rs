//! The Hodei Worker Protocol.
//!
//! The gRPC definitions that agents and clients speak, the services that
//! turn the scheduling engine and the store into a server, and a client
//! library.
#![deny(missing_docs)]

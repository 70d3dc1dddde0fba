//! Thin binaries and runnable examples assembled from the Hodei crates.
//!
//! Every program here parses its configuration, builds its parts from the
//! libraries and runs them; logic they need lives in the libraries.
#![deny(missing_docs)]

//! Criterion benchmarks for Hodei. The benches live in `benches/`; each
//! group runs Hodei's implementation beside a baseline in the same run:
//!
//! ```text
//! cargo bench -p hodei-benches --bench core
//! ```
#![deny(missing_docs)]

//! The stores' integration tests as one test binary, a module per
//! subject.

mod conformance;
mod crash;
mod open_errors;
mod postgres;

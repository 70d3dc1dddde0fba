//! The scheduler's integration tests as one test binary, a module per
//! subject; `common` builds what they share.

mod common;

mod cluster_state;
mod fairness;
mod model;
mod pipeline_model;
mod scheduler;

//! Workflows built of ordinary jobs: pipelines, periodic jobs and job
//! arrays. Each has one task, started and stopped with the job service,
//! that follows the engine's bus and keeps what must survive as keyed
//! records; every job it makes carries an idempotency key of its owner
//! and place, so none is created twice.

pub(crate) mod arrays;
pub(crate) mod pipelines;
pub(crate) mod schedules;

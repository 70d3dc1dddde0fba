//! The gRPC side: the job, worker and admin services, the guard that
//! turns errors into statuses, per-caller limits, and [`serve`](serve::serve),
//! which serves the services (with health and reflection) on a listener.

pub(crate) mod admin_service;
pub(crate) mod job_service;
pub mod limits;
pub(crate) mod serve;
pub mod status_guard;
pub(crate) mod worker_service;

//! Everything served over HTTP, on one axum router: the operational
//! endpoints (`endpoints.rs`: `/metrics`, `/healthz`, `/readyz`), the
//! JSON API (`api/`, one file per resource) and the dashboard (`ui/`).

pub(crate) mod api;
mod endpoints;
pub(crate) mod ui;

pub use endpoints::StatsOf;
pub(crate) use endpoints::{Http, PlainListener, role_metrics, router};

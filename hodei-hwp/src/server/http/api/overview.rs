//! The scheduler at a glance.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use hodei_store::Store;
use tonic::Status;

use super::types::*;
use super::{Api, ApiResult, Caller, Problems};

pub(super) fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil() as u64;
    for (le, cumulative) in buckets {
        if *cumulative >= want {
            return if le.is_finite() { *le } else { f64::MAX };
        }
    }
    0.0
}

/// The scheduler at a glance: queues, dispatch shares, workers, jobs,
/// latency. Tenants the caller may not see are left out.
#[utoipa::path(get, path = "/api/v1/overview", tag = "jobs",
    responses((status = 200, description = "The overview", body = OverviewJson), Problems))]
pub(super) async fn overview<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
) -> ApiResult<Json<OverviewJson>> {
    let c = caller.on(&api);
    let p = c.principal("read").await?;
    let engine = api.jobs.engine();
    let snap = engine
        .snapshot()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let metrics = engine.metrics();
    let queue_depths = snap
        .queue_depths
        .iter()
        .filter(|(t, _, _)| p.may_access(t))
        .map(|(t, pr, n)| QueueDepthJson {
            tenant: t.to_string(),
            priority: u32::from(*pr),
            depth: *n as u64,
        })
        .collect();
    let dispatch = metrics
        .tenants()
        .into_iter()
        .filter(|(t, _)| p.may_access(t))
        .map(|(t, c)| TenantDispatchJson {
            tenant: t.to_string(),
            weight: c.weight.unwrap_or(1),
            dispatched: c.dispatched,
        })
        .collect();
    let (ready, draining, lost) = engine.cluster().counts();
    let workers = BTreeMap::from([
        ("ready".to_string(), ready as u64),
        ("draining".to_string(), draining as u64),
        ("lost".to_string(), lost as u64),
    ]);
    let jobs = p.is_admin().then(|| {
        metrics
            .jobs_by_state()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect()
    });
    let (buckets, count, sum) = metrics.submit_to_start.cumulative();
    let submit_to_start = LatencyJson {
        count,
        mean_s: if count > 0 { sum / count as f64 } else { 0.0 },
        p50_s: quantile(&buckets, count, 0.5),
        p90_s: quantile(&buckets, count, 0.9),
        p99_s: quantile(&buckets, count, 0.99),
    };
    Ok(Json(OverviewJson {
        queue_depths,
        dispatch,
        workers,
        jobs,
        submit_to_start,
        now_ms: hodei_core::Clock::now(&hodei_core::SystemClock).as_millis(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let b = vec![(0.1, 50), (1.0, 90), (10.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 100, 0.5), 0.1);
        assert_eq!(quantile(&b, 100, 0.9), 1.0);
        assert_eq!(quantile(&b, 100, 0.99), 10.0);
        assert_eq!(quantile(&b, 0, 0.5), 0.0);
    }
}

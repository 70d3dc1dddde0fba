//! Quotas: what each tenant's jobs may hold at once, what they hold, and
//! the jobs parked over their tenant's cap.

use std::collections::VecDeque;

use hodei_core::{Clock, JobId, Resources, TenantId};
use rustc_hash::FxHashMap as HashMap;

use super::{Action, Scheduler};

/// Caps, usage and parked jobs, per tenant.
#[derive(Default)]
pub(super) struct Quotas {
    caps: HashMap<TenantId, Resources>,
    usage: HashMap<TenantId, Resources>,
    /// Jobs that found their tenant's cap full, in the order they did.
    parked: HashMap<TenantId, VecDeque<JobId>>,
}

impl Quotas {
    /// Whether `tenant` may take `res` more now.
    pub(super) fn admits(&self, tenant: &TenantId, res: &Resources) -> bool {
        let Some(cap) = self.caps.get(tenant) else {
            return true;
        };
        let used = self.usage.get(tenant).copied().unwrap_or_default();
        used.checked_add(res).is_some_and(|u| u.fits(cap))
    }

    pub(super) fn park(&mut self, tenant: TenantId, job: JobId) {
        self.parked.entry(tenant).or_default().push_back(job);
    }

    /// Jobs parked over the tenant's cap, handed back to be tried again.
    pub(super) fn unpark(&mut self, tenant: &TenantId) -> Option<VecDeque<JobId>> {
        self.parked.remove(tenant)
    }

    pub(super) fn parked(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }
}

impl<C: Clock> Scheduler<C> {
    /// Caps what a tenant's jobs may hold at once; `None` lifts the cap.
    pub fn set_quota(&mut self, tenant: TenantId, quota: Option<Resources>) -> Vec<Action> {
        match quota {
            Some(q) => {
                self.quotas.caps.insert(tenant.clone(), q);
            }
            None => {
                self.quotas.caps.remove(&tenant);
            }
        }
        self.unpark(&tenant);
        self.run(|_, _| Ok(())).unwrap_or_default()
    }

    pub(super) fn add_usage(&mut self, tenant: TenantId, res: Resources) {
        let u = self.quotas.usage.entry(tenant).or_default();
        *u = u.checked_add(&res).unwrap_or(*u);
    }

    pub(super) fn sub_usage(&mut self, tenant: &TenantId, res: Resources) {
        if let Some(u) = self.quotas.usage.get_mut(tenant) {
            *u = u.saturating_sub(&res);
        }
        self.unpark(tenant);
    }

    /// Room freed under a tenant's cap: its parked jobs are tried again.
    pub(super) fn unpark(&mut self, tenant: &TenantId) {
        if let Some(q) = self.quotas.unpark(tenant) {
            self.ready_again.extend(q);
        }
    }
}

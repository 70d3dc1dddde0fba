//! [`Resources`]: what a job asks for and what a worker offers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of compute: CPU in thousandths of a core, memory in MiB, and
/// whole GPUs.
///
/// All arithmetic is checked: an operation that would overflow or go below
/// zero returns `None` rather than wrapping, so capacity accounting can
/// never silently over-commit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

impl Resources {
    /// Nothing at all.
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_mb: 0,
        gpus: 0,
    };

    /// A shorthand constructor.
    pub const fn new(cpu_millis: u32, memory_mb: u64, gpus: u32) -> Self {
        Resources {
            cpu_millis,
            memory_mb,
            gpus,
        }
    }

    /// True when every component is zero.
    pub const fn is_zero(&self) -> bool {
        self.cpu_millis == 0 && self.memory_mb == 0 && self.gpus == 0
    }

    /// True when `self` fits inside `available` in every component.
    pub const fn fits(&self, available: &Resources) -> bool {
        self.cpu_millis <= available.cpu_millis
            && self.memory_mb <= available.memory_mb
            && self.gpus <= available.gpus
    }

    /// `self + other`, or `None` if any component overflows.
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_add(other.cpu_millis)?,
            memory_mb: self.memory_mb.checked_add(other.memory_mb)?,
            gpus: self.gpus.checked_add(other.gpus)?,
        })
    }

    /// `self - other`, or `None` if any component would go below zero.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_sub(other.cpu_millis)?,
            memory_mb: self.memory_mb.checked_sub(other.memory_mb)?,
            gpus: self.gpus.checked_sub(other.gpus)?,
        })
    }

    /// `self - other`, each component floored at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// The largest fraction of `capacity` that `self` uses in any component
    /// (0.0 to 1.0 when it fits; components with zero capacity are skipped).
    ///
    /// Placement scores by this "dominant share".
    pub fn dominant_share(&self, capacity: &Resources) -> f64 {
        let mut share: f64 = 0.0;
        if capacity.cpu_millis > 0 {
            share = share.max(self.cpu_millis as f64 / capacity.cpu_millis as f64);
        }
        if capacity.memory_mb > 0 {
            share = share.max(self.memory_mb as f64 / capacity.memory_mb as f64);
        }
        if capacity.gpus > 0 {
            share = share.max(self.gpus as f64 / capacity.gpus as f64);
        }
        share
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resources({self})")
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu={}m mem={}MiB", self.cpu_millis, self.memory_mb)?;
        if self.gpus > 0 {
            write!(f, " gpu={}", self.gpus)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res() -> impl Strategy<Value = Resources> {
        (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(c, m, g)| Resources::new(c, m, g))
    }

    #[test]
    fn fits_checks_every_component() {
        let cap = Resources::new(2000, 4096, 1);
        assert!(Resources::new(2000, 4096, 1).fits(&cap));
        assert!(!Resources::new(2001, 1, 0).fits(&cap));
        assert!(!Resources::new(1, 4097, 0).fits(&cap));
        assert!(!Resources::new(1, 1, 2).fits(&cap));
        assert!(Resources::ZERO.fits(&Resources::ZERO));
    }

    #[test]
    fn checked_arithmetic_refuses_overflow_and_underflow() {
        let a = Resources::new(u32::MAX, 1, 0);
        assert_eq!(a.checked_add(&Resources::new(1, 0, 0)), None);
        assert_eq!(
            Resources::new(1, 1, 1).checked_sub(&Resources::new(0, 2, 0)),
            None
        );
        assert_eq!(
            Resources::new(1, 1, 1).saturating_sub(&Resources::new(0, 2, 0)),
            Resources::new(1, 0, 1)
        );
    }

    #[test]
    fn dominant_share_takes_the_largest_fraction() {
        let cap = Resources::new(4000, 1000, 0);
        let s = Resources::new(1000, 500, 0).dominant_share(&cap);
        assert!((s - 0.5).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in res(), b in res()) {
            if let Some(sum) = a.checked_add(&b) {
                prop_assert_eq!(sum.checked_sub(&b), Some(a));
                prop_assert!(a.fits(&sum));
            }
        }

        #[test]
        fn sub_succeeds_exactly_when_it_fits(a in res(), b in res()) {
            prop_assert_eq!(b.checked_sub(&a).is_some(), a.fits(&b));
        }
    }
}

//! Identifiers: [`JobId`], [`WorkerId`] and [`TenantId`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string has the wrong length for this kind of id.
    #[error("{kind} must be {expected} characters, got {got}")]
    Length {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The expected length (or the maximum).
        expected: usize,
        /// The length found.
        got: usize,
    },
    /// The string holds a character this kind of id does not allow.
    #[error("{kind} contains {found:?}, allowed: {allowed}")]
    Character {
        /// Which kind of id was being parsed.
        kind: &'static str,
        /// The offending character.
        found: char,
        /// A description of the allowed characters.
        allowed: &'static str,
    },
}

/// The high half of the last id handed out: 48 bits of Unix milliseconds,
/// then a 16-bit counter. Bumped with a CAS so ids made by one process are
/// strictly increasing even within one millisecond or if the wall clock
/// steps back.
static LAST_HIGH: AtomicU64 = AtomicU64::new(0);

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn next_high() -> u64 {
    let now = unix_millis() << 16;
    let mut prev = LAST_HIGH.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.wrapping_add(1));
        match LAST_HIGH.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

fn parse_hex_u128(kind: &'static str, s: &str) -> Result<u128, IdError> {
    if s.len() != 32 {
        return Err(IdError::Length {
            kind,
            expected: 32,
            got: s.len(),
        });
    }
    if let Some(found) = s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(IdError::Character {
            kind,
            found,
            allowed: "lowercase hex digits",
        });
    }
    u128::from_str_radix(s, 16).map_err(|_| IdError::Length {
        kind,
        expected: 32,
        got: s.len(),
    })
}

/// A job's identifier: 128 bits, time-ordered.
///
/// The top 48 bits are the Unix time in milliseconds at creation, the next
/// 16 a per-process counter and the low 64 bits random. Ids made by one
/// process strictly increase, so store keys sort by submission. The text
/// form is 32 lowercase hex digits, which sorts the same way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct JobId(u128);

impl JobId {
    /// A new id, greater than every id this process made before.
    pub fn new() -> Self {
        let low: u64 = rand::random();
        JobId(((next_high() as u128) << 64) | low as u128)
    }

    /// The id with these 128 bits.
    pub const fn from_u128(v: u128) -> Self {
        JobId(v)
    }

    /// The 128 bits of this id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// Big-endian bytes, which sort like the ids themselves.
    pub const fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The Unix time in milliseconds at which the id was made.
    pub const fn unix_millis(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_u128("job id", s).map(JobId)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for JobId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A worker's identifier: 128 random bits, given by the server when a worker
/// first registers. Text form: 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct WorkerId(u128);

impl WorkerId {
    /// A new random id.
    pub fn new() -> Self {
        WorkerId(rand::random())
    }

    /// The id with these 128 bits.
    pub const fn from_u128(v: u128) -> Self {
        WorkerId(v)
    }

    /// The 128 bits of this id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl Default for WorkerId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({self})")
    }
}

impl FromStr for WorkerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_u128("worker id", s).map(WorkerId)
    }
}

impl From<WorkerId> for String {
    fn from(id: WorkerId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for WorkerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A tenant's name: 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`,
/// starting with a letter or digit.
///
/// Cloning is cheap (a shared string), because tenants are copied into
/// every queue entry and event.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The longest tenant name accepted.
    pub const MAX_LEN: usize = 64;

    /// The tenant name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    /// The tenant `default`, used when a spec names none.
    fn default() -> Self {
        TenantId(Arc::from("default"))
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "tenant id";
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(IdError::Length {
                kind: KIND,
                expected: Self::MAX_LEN,
                got: s.len(),
            });
        }
        const ALLOWED: &str = "a-z, 0-9, '-', '_', '.' (starting with a letter or digit)";
        for (i, c) in s.chars().enumerate() {
            let ok = c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || (i > 0 && matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(IdError::Character {
                    kind: KIND,
                    found: c,
                    allowed: ALLOWED,
                });
            }
        }
        Ok(TenantId(Arc::from(s)))
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0.to_string()
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn job_ids_increase_within_a_process() {
        let mut prev = JobId::new();
        for _ in 0..10_000 {
            let next = JobId::new();
            assert!(next > prev);
            assert!(next.to_string() > prev.to_string());
            prev = next;
        }
    }

    #[test]
    fn job_id_carries_its_creation_time() {
        let before = unix_millis();
        let id = JobId::new();
        assert!(id.unix_millis() >= before);
        assert!(id.unix_millis() <= unix_millis() + 70_000);
    }

    #[test]
    fn bad_ids_are_refused_with_a_reason() {
        assert!(matches!(
            "abc".parse::<JobId>(),
            Err(IdError::Length { got: 3, .. })
        ));
        let upper = "0".repeat(31) + "G";
        assert!(matches!(
            upper.parse::<JobId>(),
            Err(IdError::Character { found: 'G', .. })
        ));
        assert!("".parse::<TenantId>().is_err());
        assert!("-acme".parse::<TenantId>().is_err());
        assert!("Acme".parse::<TenantId>().is_err());
        assert!("a".repeat(65).parse::<TenantId>().is_err());
        assert!("acme-prod.eu_1".parse::<TenantId>().is_ok());
    }

    #[test]
    fn ids_round_trip_through_serde() {
        let id = JobId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t.as_str(), "acme");
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }

    proptest! {
        #[test]
        fn job_id_display_round_trips(v in any::<u128>()) {
            let id = JobId::from_u128(v);
            prop_assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        }

        #[test]
        fn worker_id_display_round_trips(v in any::<u128>()) {
            let id = WorkerId::from_u128(v);
            prop_assert_eq!(id.to_string().parse::<WorkerId>().unwrap(), id);
        }

        #[test]
        fn job_id_text_order_is_numeric_order(a in any::<u128>(), b in any::<u128>()) {
            let (x, y) = (JobId::from_u128(a), JobId::from_u128(b));
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }

        #[test]
        fn tenant_display_round_trips(s in "[a-z0-9][a-z0-9._-]{0,63}") {
            let t: TenantId = s.parse().unwrap();
            prop_assert_eq!(t.to_string(), s);
        }
    }
}

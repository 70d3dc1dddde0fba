//! The audit chain: each record carries the hash of the one before it.

use hodei_core::Timestamp;
use serde::{Deserialize, Serialize};

/// What happened, by whom, to what, with what outcome, from where.
/// Appended with [`Store::append_audit`] or [`Batch::append_audit`].
///
/// [`Store::append_audit`]: crate::Store::append_audit
/// [`Batch::append_audit`]: crate::Batch::append_audit
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who: a token's id and role, a worker, `server`, `unauthenticated`.
    pub actor: String,
    /// What: `submit`, `cancel`, `drain`, ...
    pub action: String,
    /// To what: a job, a worker, a token id.
    pub target: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
    /// The caller's address, when known.
    pub peer: String,
    /// Details (never secret values).
    pub detail: String,
}

/// A stored audit record: the entry, its place in the chain and the hashes
/// that link it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub index: u64,
    /// The entry.
    pub entry: AuditEntry,
    /// The previous record's hash (zeros for the first).
    pub prev: [u8; 32],
    /// blake3 of index, entry and `prev`.
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The record at `index` following a record with hash `prev`.
    pub fn new(index: u64, entry: AuditEntry, prev: [u8; 32]) -> Self {
        let hash = hash(index, &entry, &prev);
        AuditRecord {
            index,
            entry,
            prev,
            hash,
        }
    }
}

fn hash(index: u64, e: &AuditEntry, prev: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&index.to_be_bytes());
    h.update(&e.at.0.to_be_bytes());
    // Length-prefixed so that moving bytes between fields changes the hash.
    for field in [
        &e.actor, &e.action, &e.target, &e.outcome, &e.peer, &e.detail,
    ] {
        h.update(&(field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev);
    *h.finalize().as_bytes()
}

/// The result of checking an audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every link holds.
    Intact {
        /// Records checked.
        records: u64,
    },
    /// The first record whose link does not hold (altered, or following a
    /// removed record).
    Broken {
        /// Its index (or the index expected where one is missing).
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Checks records given in index order.
pub fn verify_chain<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> ChainCheck {
    let mut prev = [0u8; 32];
    let mut expected = 0u64;
    for r in records {
        if r.index != expected {
            return ChainCheck::Broken {
                index: expected,
                reason: format!("record {expected} is missing (found {} next)", r.index),
            };
        }
        if r.prev != prev {
            return ChainCheck::Broken {
                index: r.index,
                reason: "does not link to the previous record".into(),
            };
        }
        if hash(r.index, &r.entry, &r.prev) != r.hash {
            return ChainCheck::Broken {
                index: r.index,
                reason: "content does not match its hash".into(),
            };
        }
        prev = r.hash;
        expected += 1;
    }
    ChainCheck::Intact { records: expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (0..n)
            .map(|i| {
                let r = AuditRecord::new(
                    i,
                    AuditEntry {
                        at: Timestamp(i),
                        actor: "acme".into(),
                        action: "submit".into(),
                        detail: format!("job {i}"),
                        ..AuditEntry::default()
                    },
                    prev,
                );
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_is_intact() {
        assert_eq!(verify_chain(&chain(10)), ChainCheck::Intact { records: 10 });
    }

    #[test]
    fn any_alteration_or_removal_is_found_at_its_place() {
        for i in 0..10 {
            let mut c = chain(10);
            c[i as usize].entry.detail.push('!');
            assert!(matches!(verify_chain(&c), ChainCheck::Broken { index, .. } if index == i));
            // Every field is covered, not only the detail.
            let mut c = chain(10);
            c[i as usize].entry.outcome = "ok".into();
            assert!(matches!(verify_chain(&c), ChainCheck::Broken { index, .. } if index == i));

            let mut c = chain(10);
            c.remove(i as usize);
            if i < 9 {
                assert!(matches!(verify_chain(&c), ChainCheck::Broken { index, .. } if index == i));
            }

            // Re-hashing an altered record does not help: the next link breaks.
            let mut c = chain(10);
            let r = &mut c[i as usize];
            r.entry.actor = "mallory".into();
            *r = AuditRecord::new(r.index, r.entry.clone(), r.prev);
            if i < 9 {
                assert!(
                    matches!(verify_chain(&c), ChainCheck::Broken { index, .. } if index == i + 1)
                );
            }
        }
    }
}

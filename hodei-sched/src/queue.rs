//! [`PriorityQueue`]: a lock-free MPMC queue with fixed priority levels.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::SegQueue;

/// The most priority levels a [`PriorityQueue`] can have.
pub const MAX_LEVELS: usize = 64;

/// A lock-free multi-producer multi-consumer queue with a fixed number of
/// priority levels, FIFO within a level.
///
/// Built from one lock-free FIFO queue per level (crossbeam's `SegQueue`)
/// and an atomic bitmap of the levels that may hold items; `push` and `pop`
/// are O(1) and never take a lock.
///
/// Guarantees:
///
/// - **Nothing is lost or duplicated**: every pushed item is popped exactly
///   once.
/// - **FIFO within a level**: items of one priority pushed by one thread are
///   popped in the order pushed; across threads, in the linearization order
///   of the pushes.
/// - **Priority across levels**: when no push races with it, `pop` returns an
///   item of the highest non-empty level. While pushes race, a `pop` may
///   return a lower-priority item than one pushed concurrently (the queue is
///   not linearizable across levels); it never returns a lower level when a
///   higher one was non-empty for the whole duration of the pop.
/// - **`len`** sums the levels' lengths one after another, so it is exact
///   when no operation is in flight and an approximation while they race.
///   No counter is shared by all operations: pushes and pops on different
///   levels touch different cache lines.
///
/// Higher numbers are higher priorities: with 8 levels, 7 pops first.
///
/// ```
/// use hodei_sched::PriorityQueue;
/// let q = PriorityQueue::new(8);
/// q.push(1, "low");
/// q.push(7, "urgent");
/// q.push(1, "low, later");
/// assert_eq!(q.pop(), Some("urgent"));
/// assert_eq!(q.pop(), Some("low"));
/// assert_eq!(q.pop(), Some("low, later"));
/// assert_eq!(q.pop(), None);
/// ```
pub struct PriorityQueue<T> {
    levels: Box<[SegQueue<T>]>,
    /// Bit `p` set: level `p` may be non-empty. Never clear while it holds
    /// an item that no pop has claimed.
    nonempty: AtomicU64,
}

impl<T> fmt::Debug for PriorityQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueue")
            .field("levels", &self.levels.len())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> PriorityQueue<T> {
    /// A queue with `levels` priority levels (clamped to 1..=64);
    /// priorities run from 0 to `levels - 1`.
    pub fn new(levels: usize) -> Self {
        let levels = levels.clamp(1, MAX_LEVELS);
        PriorityQueue {
            levels: (0..levels).map(|_| SegQueue::new()).collect(),
            nonempty: AtomicU64::new(0),
        }
    }

    /// The number of priority levels.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Adds `item` at `priority`; a priority above the highest level is
    /// clamped to it.
    pub fn push(&self, priority: usize, item: T) {
        let p = priority.min(self.levels.len() - 1);
        self.levels[p].push(item);
        let bit = 1u64 << p;
        // Most pushes land on a level already marked: skip the RMW.
        if self.nonempty.load(Ordering::SeqCst) & bit == 0 {
            self.nonempty.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Removes the oldest item of the highest non-empty level.
    pub fn pop(&self) -> Option<T> {
        loop {
            let bits = self.nonempty.load(Ordering::SeqCst);
            if bits == 0 {
                return None;
            }
            let p = 63 - bits.leading_zeros() as usize;
            if let Some(item) = self.levels[p].pop() {
                return Some(item);
            }
            // The level looked empty: clear its bit, then look again, since
            // a push may have landed between our pop and the clear (its own
            // fetch_or might have run before our fetch_and).
            self.nonempty.fetch_and(!(1u64 << p), Ordering::SeqCst);
            if !self.levels[p].is_empty() {
                self.nonempty.fetch_or(1u64 << p, Ordering::SeqCst);
            }
        }
    }

    /// Items in the queue (see the type's docs for accuracy under
    /// concurrency).
    pub fn len(&self) -> usize {
        self.levels.iter().map(SegQueue::len).sum()
    }

    /// True when no level holds an item (see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(SegQueue::is_empty)
    }

    /// Items at one level.
    pub fn len_at(&self, priority: usize) -> usize {
        self.levels.get(priority).map_or(0, SegQueue::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0usize..10).prop_map(Op::Push), Just(Op::Pop)]
    }

    proptest! {
        /// Single-threaded, the queue behaves exactly like a binary heap
        /// keyed by (priority, reverse insertion order).
        #[test]
        fn matches_a_binary_heap_model(ops in proptest::collection::vec(op(), 0..400)) {
            let q = PriorityQueue::new(8);
            let mut model = BinaryHeap::new();
            for (seq, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(p) => {
                        q.push(p, seq);
                        model.push((p.min(7), Reverse(seq)));
                    }
                    Op::Pop => {
                        let want = model.pop().map(|(_, Reverse(s))| s);
                        prop_assert_eq!(q.pop(), want);
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }

    #[test]
    fn many_threads_lose_and_duplicate_nothing() {
        const PRODUCERS: usize = 4;
        const PER: usize = 50_000;
        let q = Arc::new(PriorityQueue::new(8));
        let done = Arc::new(AtomicUsize::new(0));
        let mut seen: Vec<usize> = std::thread::scope(|s| {
            for t in 0..PRODUCERS {
                let q = &q;
                let done = &done;
                s.spawn(move || {
                    for i in 0..PER {
                        q.push(i % 8, t * PER + i);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    let q = &q;
                    let done = &done;
                    s.spawn(move || {
                        let mut got = Vec::new();
                        loop {
                            match q.pop() {
                                Some(v) => got.push(v),
                                None if done.load(Ordering::SeqCst) == PRODUCERS
                                    && q.is_empty() =>
                                {
                                    return got;
                                }
                                None => std::thread::yield_now(),
                            }
                        }
                    })
                })
                .collect();
            consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
        assert_eq!(q.pop(), None);
        assert_eq!(q.len(), 0);
        seen.sort_unstable();
        assert_eq!(seen.len(), PRODUCERS * PER, "lost or duplicated items");
        assert!(
            seen.iter().enumerate().all(|(i, v)| i == *v),
            "an item was duplicated"
        );
    }

    #[test]
    fn per_thread_fifo_within_a_level_survives_concurrency() {
        let q = PriorityQueue::new(4);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let q = &q;
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        q.push(2, (t, i));
                    }
                });
            }
        });
        let mut last = [None::<u64>; 2];
        while let Some((t, i)) = q.pop() {
            let prev = last[t as usize].replace(i);
            assert!(prev.is_none_or(|p| p < i));
        }
    }

    #[test]
    fn out_of_range_priorities_clamp_to_the_top() {
        let q = PriorityQueue::new(4);
        q.push(0, 'a');
        q.push(99, 'b');
        assert_eq!(q.len_at(3), 1);
        assert_eq!(q.pop(), Some('b'));
        assert_eq!(PriorityQueue::<u8>::new(1000).levels(), MAX_LEVELS);
    }
}

//! [`Wfq`]: weighted fair queuing across flows (tenants).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

/// Virtual time is kept in fixed point so that tags stay exact integers:
/// serving `cost` at `weight` advances a flow by `cost * SCALE / weight`.
const SCALE: u128 = 1 << 32;

/// The most priority levels inside one flow.
pub const FLOW_LEVELS: usize = 64;

struct Flow<K, T> {
    key: K,
    weight: u32,
    /// The flow's finish tag: where its next item starts if it stays
    /// backlogged.
    finish: u128,
    active: bool,
    /// The sequence number of the flow's live heap entry; others are stale.
    entry: u64,
    /// Priority levels, highest index first out; FIFO within a level.
    levels: Vec<VecDeque<(u64, T)>>,
    nonempty: u64,
    len: usize,
}

impl<K, T> Flow<K, T> {
    fn pop_highest(&mut self) -> Option<(u8, u64, T)> {
        if self.nonempty == 0 {
            return None;
        }
        let p = 63 - self.nonempty.leading_zeros() as usize;
        let (cost, item) = self.levels[p].pop_front()?;
        if self.levels[p].is_empty() {
            self.nonempty &= !(1u64 << p);
        }
        self.len -= 1;
        Some((p as u8, cost, item))
    }
}

/// An item taken from a [`Wfq`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued<K, T> {
    /// The flow it belonged to.
    pub flow: K,
    /// Its priority within the flow.
    pub priority: u8,
    /// Its cost.
    pub cost: u64,
    /// The item.
    pub item: T,
    /// The flow's tag when it was taken: where it goes back on
    /// [`Wfq::unpop`].
    start: u128,
    /// What taking it advanced the flow's tag by.
    charged: u128,
    /// Virtual time before it was taken.
    prev_vtime: u128,
    /// The heap entry it was taken from: put back under the same sequence
    /// number, the flow keeps its place among flows with equal tags.
    entry: u64,
}

/// Weighted fair queuing across flows, by start-time fair queuing (SFQ).
///
/// Each flow (a tenant, say) has a weight. Every dequeue serves the active
/// flow with the smallest virtual start tag, then advances that flow's tag
/// by `cost / weight`; a flow that becomes active starts at the current
/// virtual time, so a flow that was idle **banks no credit**. Inside a flow,
/// higher priorities go first and equal priorities in arrival order.
///
/// **Fairness bound** (Goyal, Vin and Cheng, 1996): over any period in which
/// flows `f` and `g` are both backlogged, the cost served to each, divided
/// by its weight, differs by at most `c_f / w_f + c_g / w_g`, where `c` is the
/// largest cost of an item of that flow. With unit costs, a flow of weight
/// `w` among backlogged flows of total weight `W` receives `n * w / W` of `n`
/// dequeues, within `2 * w` items. A newly active flow is served within as
/// many dequeues as there are active flows.
///
/// **Looking past an item**: [`unpop`](Wfq::unpop) puts a taken item back
/// where it was and refunds its flow, as if it had never been taken. A
/// scheduler that takes items in fair order, keeps those it can place and
/// puts back the rest charges each flow only for what was placed, so
/// waiting costs no flow its place and the bound above holds for what is
/// actually dispatched.
///
/// **Cost**: `push`, `pop` and `unpop` are O(log a) for `a` active flows (a
/// binary heap of active flows, with stale entries skipped) plus O(1)
/// inside a flow.
///
/// Not thread-safe by itself: it is owned by one task (the scheduler's).
///
/// ```
/// use hodei_sched::Wfq;
/// let mut q = Wfq::new();
/// q.set_weight("big", 3);
/// for i in 0..8 {
///     q.push("big", 0, 1, i);
///     q.push("small", 0, 1, i);
/// }
/// let firsts: Vec<&str> = (0..8).map(|_| q.pop().unwrap().flow).collect();
/// assert_eq!(firsts.iter().filter(|f| **f == "big").count(), 6);
/// ```
pub struct Wfq<K, T> {
    flows: Vec<Flow<K, T>>,
    index: HashMap<K, usize>,
    /// Active flows by (start tag, arrival order).
    active: BinaryHeap<Reverse<(u128, u64, usize)>>,
    vtime: u128,
    seq: u64,
    len: usize,
    default_weight: u32,
    active_flows: usize,
    /// Heap entries left behind by `unpop`, skipped when they surface.
    stale: usize,
}

impl<K, T> fmt::Debug for Wfq<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wfq")
            .field("flows", &self.flows.len())
            .field("active", &self.active_flows)
            .field("len", &self.len)
            .finish()
    }
}

impl<K: Hash + Eq + Clone, T> Default for Wfq<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, T> Wfq<K, T> {
    /// An empty queue; flows get weight 1 until told otherwise.
    pub fn new() -> Self {
        Wfq {
            flows: Vec::new(),
            index: HashMap::default(),
            active: BinaryHeap::new(),
            vtime: 0,
            seq: 0,
            len: 0,
            default_weight: 1,
            active_flows: 0,
            stale: 0,
        }
    }

    /// Sets the weight given to flows never configured (at least 1).
    pub fn set_default_weight(&mut self, weight: u32) {
        self.default_weight = weight.max(1);
    }

    fn flow_index(&mut self, key: &K) -> usize {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.flows.len();
        self.flows.push(Flow {
            key: key.clone(),
            weight: self.default_weight,
            finish: 0,
            active: false,
            entry: 0,
            levels: Vec::new(),
            nonempty: 0,
            len: 0,
        });
        self.index.insert(key.clone(), i);
        i
    }

    /// Sets a flow's weight (at least 1). It applies from the flow's next
    /// dequeue.
    pub fn set_weight(&mut self, flow: K, weight: u32) {
        let i = self.flow_index(&flow);
        self.flows[i].weight = weight.max(1);
    }

    /// A flow's weight.
    pub fn weight(&self, flow: &K) -> u32 {
        self.index
            .get(flow)
            .map_or(self.default_weight, |&i| self.flows[i].weight)
    }

    /// Adds `item` to `flow` at `priority` (clamped below 64) with `cost`
    /// (at least 1).
    pub fn push(&mut self, flow: K, priority: u8, cost: u64, item: T) {
        let i = self.flow_index(&flow);
        let f = &mut self.flows[i];
        let p = (priority as usize).min(FLOW_LEVELS - 1);
        if f.levels.len() <= p {
            f.levels.resize_with(p + 1, VecDeque::new);
        }
        f.levels[p].push_back((cost.max(1), item));
        f.nonempty |= 1u64 << p;
        f.len += 1;
        self.len += 1;
        if !f.active {
            f.active = true;
            // An idle flow restarts at the current virtual time: no credit
            // for the time it was away.
            let start = f.finish.max(self.vtime);
            // While active, `finish` is the tag of the flow's live entry.
            f.finish = start;
            self.seq += 1;
            f.entry = self.seq;
            self.active_flows += 1;
            self.active.push(Reverse((start, self.seq, i)));
        }
    }

    /// Takes the next item in fair order.
    pub fn pop(&mut self) -> Option<Dequeued<K, T>> {
        let (start, entry, i) = loop {
            let Reverse((start, seq, i)) = self.active.pop()?;
            let f = &self.flows[i];
            if f.active && f.entry == seq {
                break (start, seq, i);
            }
            self.stale -= 1;
        };
        let f = &mut self.flows[i];
        let (priority, cost, item) = f.pop_highest()?;
        self.len -= 1;
        let prev_vtime = self.vtime;
        self.vtime = start;
        let charged = (cost as u128 * SCALE / f.weight as u128).max(1);
        f.finish = start + charged;
        if f.len > 0 {
            self.seq += 1;
            f.entry = self.seq;
            self.active.push(Reverse((f.finish, self.seq, i)));
        } else {
            f.active = false;
            self.active_flows -= 1;
        }
        Some(Dequeued {
            flow: f.key.clone(),
            priority,
            cost,
            item,
            start,
            charged,
            prev_vtime,
            entry,
        })
    }

    /// Puts back an item taken by [`pop`](Wfq::pop) and refunds its flow:
    /// it is next out of its flow at its priority again, and the flow's tag
    /// is what it would be had the item never been taken. Items put back
    /// in the reverse order they were taken restore the queue exactly,
    /// except for what was taken in between and kept.
    pub fn unpop(&mut self, d: Dequeued<K, T>) {
        let i = self.flow_index(&d.flow);
        let f = &mut self.flows[i];
        let p = (d.priority as usize).min(FLOW_LEVELS - 1);
        if f.levels.len() <= p {
            f.levels.resize_with(p + 1, VecDeque::new);
        }
        f.levels[p].push_front((d.cost.max(1), d.item));
        f.nonempty |= 1u64 << p;
        f.len += 1;
        self.len += 1;
        f.finish = if f.active {
            self.stale += 1;
            f.finish.saturating_sub(d.charged)
        } else {
            f.active = true;
            self.active_flows += 1;
            d.start
        };
        f.entry = d.entry;
        self.active.push(Reverse((f.finish, d.entry, i)));
        if self.stale > self.active_flows + 64 {
            // Rebuild from the live entries: the heap stays O(active flows).
            let live = self
                .flows
                .iter()
                .enumerate()
                .filter(|(_, f)| f.active)
                .map(|(i, f)| Reverse((f.finish, f.entry, i)));
            self.active = live.collect();
            self.stale = 0;
        }
        // Virtual time follows what was served: unwound only while this
        // item was the last taken.
        if self.vtime == d.start {
            self.vtime = d.prev_vtime;
        }
    }

    /// Items queued in all flows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items queued in one flow.
    pub fn flow_len(&self, flow: &K) -> usize {
        self.index.get(flow).map_or(0, |&i| self.flows[i].len)
    }

    /// Items queued in one flow at one priority.
    pub fn flow_len_at(&self, flow: &K, priority: u8) -> usize {
        self.index.get(flow).map_or(0, |&i| {
            self.flows[i]
                .levels
                .get(priority as usize)
                .map_or(0, VecDeque::len)
        })
    }

    /// Flows with at least one item queued.
    pub fn active_flows(&self) -> usize {
        self.active_flows
    }

    /// Every known flow with its queue length.
    pub fn flows(&self) -> impl Iterator<Item = (&K, usize)> {
        self.flows.iter().map(|f| (&f.key, f.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backlogged_flows_share_by_weight_within_the_bound() {
        let mut q = Wfq::new();
        let weights = [("a", 1u32), ("b", 2), ("c", 4)];
        for (k, w) in weights {
            q.set_weight(k, w);
            for i in 0..10_000 {
                q.push(k, 0, 1, i);
            }
        }
        let mut served = [0u64; 3];
        for n in 1..=10_000u64 {
            let d = q.pop().unwrap();
            let idx = weights.iter().position(|(k, _)| *k == d.flow).unwrap();
            served[idx] += 1;
            // The pairwise bound holds at every prefix.
            for x in 0..3 {
                for y in 0..3 {
                    let (wx, wy) = (weights[x].1 as f64, weights[y].1 as f64);
                    let gap = (served[x] as f64 / wx - served[y] as f64 / wy).abs();
                    assert!(gap <= 1.0 / wx + 1.0 / wy + 1e-9, "after {n}: {served:?}");
                }
            }
        }
        for (i, (_, w)) in weights.iter().enumerate() {
            let ideal = 10_000.0 * *w as f64 / 7.0;
            let bound = 2.0 * *w as f64;
            assert!(
                (served[i] as f64 - ideal).abs() <= bound,
                "flow {i}: served {} ideal {ideal:.1}",
                served[i]
            );
        }
    }

    #[test]
    fn a_newly_active_flow_is_served_within_the_bound() {
        let mut q = Wfq::new();
        for (k, w) in [("a", 1u32), ("b", 2), ("c", 4)] {
            q.set_weight(k, w);
            for i in 0..1_000 {
                q.push(k, 0, 1, i);
            }
        }
        for _ in 0..500 {
            q.pop();
        }
        q.push("late", 0, 1, 0);
        let active = q.active_flows();
        let waited = (1..=active).find(|_| q.pop().unwrap().flow == "late");
        assert!(
            waited.is_some(),
            "late flow not served within {active} dequeues"
        );
    }

    #[test]
    fn an_idle_flow_banks_no_credit() {
        let mut q = Wfq::new();
        q.push("a", 0, 1, 0);
        q.pop();
        // b is served alone for a long time while a is idle.
        for i in 0..1_000 {
            q.push("b", 0, 1, i);
        }
        for _ in 0..900 {
            assert_eq!(q.pop().unwrap().flow, "b");
        }
        for i in 0..100 {
            q.push("a", 0, 1, i);
        }
        // Equal weights: a now gets half, not a burst of 900.
        let a_served = (0..20).filter(|_| q.pop().unwrap().flow == "a").count();
        assert!((9..=11).contains(&a_served), "a served {a_served} of 20");
    }

    #[test]
    fn priority_orders_items_inside_a_flow() {
        let mut q = Wfq::new();
        q.push("a", 1, 1, "low");
        q.push("a", 5, 1, "high");
        q.push("a", 5, 1, "high2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|d| d.item)).collect();
        assert_eq!(order, ["high", "high2", "low"]);
    }

    #[test]
    fn costs_count_against_the_weight() {
        let mut q = Wfq::new();
        for i in 0..100 {
            q.push("heavy", 0, 10, i);
            q.push("light", 0, 1, i);
        }
        let mut cost = [0u64; 2];
        for _ in 0..55 {
            let d = q.pop().unwrap();
            cost[(d.flow == "light") as usize] += d.cost;
        }
        assert!(cost[0].abs_diff(cost[1]) <= 11, "{cost:?}");
    }

    proptest! {
        /// Nothing pushed is lost, nothing is invented, and within a flow
        /// the order is (priority desc, arrival).
        #[test]
        fn wfq_is_a_lossless_per_flow_priority_queue(
            ops in proptest::collection::vec((0u8..4, 0u8..4, 1u64..5, any::<bool>()), 0..300),
            weights in proptest::collection::vec(1u32..5, 4),
        ) {
            let mut q = Wfq::new();
            for (k, w) in weights.iter().enumerate() { q.set_weight(k as u8, *w); }
            let mut model: Vec<Vec<(u8, usize)>> = vec![Vec::new(); 4];
            for (seq, (flow, prio, cost, is_pop)) in ops.into_iter().enumerate() {
                if is_pop {
                    match q.pop() {
                        Some(d) => {
                            let m = &mut model[d.flow as usize];
                            let best = m.iter().enumerate()
                                .max_by_key(|(_, (p, s))| (*p, Reverse(*s)))
                                .map(|(i, _)| i).unwrap();
                            let (p, s) = m.remove(best);
                            prop_assert_eq!((d.priority, d.item), (p, s));
                        }
                        None => prop_assert!(model.iter().all(Vec::is_empty)),
                    }
                } else {
                    q.push(flow, prio, cost, seq);
                    model[flow as usize].push((prio, seq));
                }
                prop_assert_eq!(q.len(), model.iter().map(Vec::len).sum::<usize>());
            }
        }

        /// Taking items and putting them all back, in reverse, leaves the
        /// queue exactly as it was: it then serves the same order as a
        /// queue that was never touched.
        #[test]
        fn unpop_in_reverse_restores_the_queue_exactly(
            ops in proptest::collection::vec((0u8..4, 0u8..3, 1u64..4, 0u8..6), 1..200),
            weights in proptest::collection::vec(1u32..5, 4),
        ) {
            let mut touched = Wfq::new();
            let mut plain = Wfq::new();
            for (k, w) in weights.iter().enumerate() {
                touched.set_weight(k as u8, *w);
                plain.set_weight(k as u8, *w);
            }
            for (seq, (flow, prio, cost, op)) in ops.into_iter().enumerate() {
                if op == 0 {
                    // Both serve one item; they must agree.
                    let a = touched.pop().map(|d| (d.flow, d.item));
                    let b = plain.pop().map(|d| (d.flow, d.item));
                    prop_assert_eq!(a, b);
                } else if op == 1 {
                    let taken: Vec<_> = std::iter::from_fn(|| touched.pop()).take(seq % 7 + 1).collect();
                    for d in taken.into_iter().rev() {
                        touched.unpop(d);
                    }
                } else {
                    touched.push(flow, prio, cost, seq);
                    plain.push(flow, prio, cost, seq);
                }
                prop_assert_eq!(touched.len(), plain.len());
            }
            let a: Vec<_> = std::iter::from_fn(|| touched.pop().map(|d| (d.flow, d.item))).collect();
            let b: Vec<_> = std::iter::from_fn(|| plain.pop().map(|d| (d.flow, d.item))).collect();
            prop_assert_eq!(a, b);
        }
    }
}

//! [`Bus`]: a bounded broadcast channel of `Arc<E>`.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::task::{Poll, Waker};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

/// Why [`Subscriber::try_recv`] returned no event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TryRecvError {
    /// No event is waiting.
    #[error("no event waiting")]
    Empty,
    /// The subscriber fell behind and this many events were overwritten
    /// before it read them. The next receive returns the oldest event kept.
    #[error("subscriber lagged and missed {0} events")]
    Lagged(u64),
    /// Every [`Bus`] handle was dropped and all events were read.
    #[error("bus closed")]
    Closed,
}

/// Why [`Subscriber::recv`] returned no event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum RecvError {
    /// The subscriber missed this many events; see [`TryRecvError::Lagged`].
    #[error("subscriber lagged and missed {0} events")]
    Lagged(u64),
    /// Every [`Bus`] handle was dropped and all events were read.
    #[error("bus closed")]
    Closed,
}

struct Slot<E> {
    /// `seq + 1` of the event held, 0 when the slot was never written.
    stamp: u64,
    value: Option<Arc<E>>,
}

// The publisher writes `tail` and a slot per event while subscribers write
// `has_waiters` and read neighbouring slots: each gets its own cache line so
// they do not invalidate one another.
struct Shared<E> {
    slots: Box<[CachePadded<RwLock<Slot<E>>>]>,
    mask: u64,
    /// The sequence number the next published event gets.
    tail: CachePadded<AtomicU64>,
    subscribers: AtomicUsize,
    /// True while `wakers` may hold a parked subscriber; publishers skip
    /// the lock when it is false.
    has_waiters: CachePadded<AtomicBool>,
    wakers: Mutex<Vec<Waker>>,
    publishers: AtomicUsize,
    closed: AtomicBool,
}

impl<E> Shared<E> {
    fn wake_all(&self) {
        let wakers = {
            let mut w = self.wakers.lock();
            self.has_waiters.store(false, Ordering::Relaxed);
            std::mem::take(&mut *w)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// A bounded broadcast channel: every subscriber sees every event published
/// after it subscribed, as a shared `Arc<E>`, unless it falls behind.
///
/// - **Bounded, never blocking**: the bus keeps the last `capacity` events
///   in a ring. Publishing never waits for subscribers. A subscriber more
///   than `capacity` events behind gets [`RecvError::Lagged`] with the number
///   it missed, then continues from the oldest event still kept.
/// - **Independent subscribers**: each one keeps its own position; a slow one
///   affects nobody else. Dropping a subscriber releases its place at once
///   (see [`subscriber_count`](Bus::subscriber_count)); with no subscribers,
///   publishing stores nothing.
/// - **Concurrency**: any number of publishers (clone the `Bus`) and
///   subscribers on any threads. Publishing is one atomic increment and one
///   per-slot write lock; it takes the wake-up lock only when a subscriber
///   is parked in [`Subscriber::recv`]. Events from one publisher
///   are seen in the order published; events from racing publishers are seen
///   in sequence order, which every subscriber shares.
///
/// # Example
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use hodei_core::Bus;
/// let bus = Bus::new(16);
/// let mut sub = bus.subscribe();
/// bus.publish("job queued");
/// assert_eq!(*sub.recv().await.unwrap(), "job queued");
/// # });
/// ```
///
/// A subscriber that falls behind is told how much it missed, then reads
/// on from the oldest event the bus still keeps; the publisher never
/// waited for it:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use hodei_core::{Bus, RecvError};
/// let bus = Bus::new(4);
/// let mut slow = bus.subscribe();
/// for i in 0..10 {
///     bus.publish(i);
/// }
/// // Ten published, four kept: the first six are gone.
/// assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(6));
/// assert_eq!(*slow.recv().await.unwrap(), 6);
/// # });
/// ```
pub struct Bus<E> {
    shared: Arc<Shared<E>>,
}

impl<E> fmt::Debug for Bus<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("capacity", &self.capacity())
            .field("published", &self.shared.tail.load(Ordering::Relaxed))
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl<E> Bus<E> {
    /// A bus keeping the last `capacity` events (rounded up to a power of
    /// two, at least 2).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|_| {
                CachePadded::new(RwLock::new(Slot {
                    stamp: 0,
                    value: None,
                }))
            })
            .collect();
        Bus {
            shared: Arc::new(Shared {
                slots,
                mask: cap as u64 - 1,
                tail: CachePadded::new(AtomicU64::new(0)),
                subscribers: AtomicUsize::new(0),
                has_waiters: CachePadded::new(AtomicBool::new(false)),
                wakers: Mutex::new(Vec::new()),
                publishers: AtomicUsize::new(1),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// How many events the ring keeps.
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }

    /// Subscribers alive now.
    pub fn subscriber_count(&self) -> usize {
        self.shared.subscribers.load(Ordering::Acquire)
    }

    /// A subscriber that sees events published from now on.
    pub fn subscribe(&self) -> Subscriber<E> {
        self.shared.subscribers.fetch_add(1, Ordering::AcqRel);
        Subscriber {
            next: self.shared.tail.load(Ordering::Acquire),
            shared: Arc::clone(&self.shared),
        }
    }

    /// A subscriber that starts at sequence number `seq` (see
    /// [`Subscriber::position`]): it first receives the events from `seq` on
    /// that the ring still holds. A `seq` older than the ring reports the
    /// gap as a lag; one in the future starts at the next event.
    pub fn subscribe_from(&self, seq: u64) -> Subscriber<E> {
        self.shared.subscribers.fetch_add(1, Ordering::AcqRel);
        let tail = self.shared.tail.load(Ordering::Acquire);
        Subscriber {
            next: seq.min(tail),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Events published so far: the sequence number the next one gets.
    pub fn published(&self) -> u64 {
        self.shared.tail.load(Ordering::Acquire)
    }

    /// Publishes `event` and returns how many subscribers were alive.
    /// Never blocks on subscribers.
    pub fn publish(&self, event: E) -> usize {
        self.publish_arc(Arc::new(event))
    }

    /// Publishes an event already in an `Arc`.
    pub fn publish_arc(&self, event: Arc<E>) -> usize {
        let shared = &*self.shared;
        let subscribers = shared.subscribers.load(Ordering::Acquire);
        if subscribers == 0 {
            return 0;
        }
        let seq = shared.tail.fetch_add(1, Ordering::AcqRel);
        {
            let mut slot = shared.slots[(seq & shared.mask) as usize].write();
            // A publisher that stalled for a whole lap must not overwrite a
            // newer event; its own event then counts as missed.
            if slot.stamp < seq + 1 {
                slot.stamp = seq + 1;
                slot.value = Some(event);
            }
        }
        // Pairs with the fence in `recv`: either we see the parked
        // subscriber, or it sees the slot we just wrote.
        fence(Ordering::SeqCst);
        if shared.has_waiters.load(Ordering::Relaxed) {
            shared.wake_all();
        }
        subscribers
    }
}

impl<E> Clone for Bus<E> {
    fn clone(&self) -> Self {
        self.shared.publishers.fetch_add(1, Ordering::AcqRel);
        Bus {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<E> Drop for Bus<E> {
    fn drop(&mut self) {
        if self.shared.publishers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closed.store(true, Ordering::Release);
            fence(Ordering::SeqCst);
            self.shared.wake_all();
        }
    }
}

/// One subscriber of a [`Bus`]. Receives every event published after it
/// subscribed, unless it lags more than the bus's capacity behind.
pub struct Subscriber<E> {
    shared: Arc<Shared<E>>,
    next: u64,
}

impl<E> fmt::Debug for Subscriber<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("next", &self.next)
            .finish()
    }
}

impl<E> Subscriber<E> {
    /// The next event if one is waiting.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when no event waits; [`TryRecvError::Lagged`]
    /// with the count missed when the subscriber fell more than the bus's
    /// capacity behind (the next call reads on from the oldest event kept);
    /// [`TryRecvError::Closed`] once every publisher is gone.
    pub fn try_recv(&mut self) -> Result<Arc<E>, TryRecvError> {
        try_recv(&self.shared, &mut self.next)
    }

    /// Waits for the next event. Cancel-safe: dropping the future loses
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] with the count missed when the subscriber fell
    /// more than the bus's capacity behind (the next call reads on from the
    /// oldest event kept); [`RecvError::Closed`] once every publisher is gone
    /// and every event was read.
    pub async fn recv(&mut self) -> Result<Arc<E>, RecvError> {
        let shared = &*self.shared;
        let next = &mut self.next;
        let ready = |r: Result<Arc<E>, TryRecvError>| match r {
            Ok(v) => Some(Ok(v)),
            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        };
        poll_fn(|cx| {
            if let Some(r) = ready(try_recv(shared, next)) {
                return Poll::Ready(r);
            }
            {
                let mut wakers = shared.wakers.lock();
                // One entry per parked task, however often it is polled.
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                shared.has_waiters.store(true, Ordering::Relaxed);
            }
            // Pairs with the fence in `publish`: either the publisher sees
            // `has_waiters`, or we see its event now.
            fence(Ordering::SeqCst);
            match ready(try_recv(shared, next)) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The sequence number of the next event this subscriber receives;
    /// after a successful receive, the event's own number is this minus one.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Events published but not yet read by this subscriber (may exceed the
    /// capacity, in which case the next receive reports a lag).
    pub fn pending(&self) -> u64 {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .saturating_sub(self.next)
    }
}

fn try_recv<E>(shared: &Shared<E>, next: &mut u64) -> Result<Arc<E>, TryRecvError> {
    let slot = shared.slots[(*next & shared.mask) as usize].read();
    if slot.stamp == *next + 1
        && let Some(v) = &slot.value
    {
        *next += 1;
        return Ok(Arc::clone(v));
    }
    if slot.stamp > *next + 1 {
        drop(slot);
        let oldest = shared
            .tail
            .load(Ordering::Acquire)
            .saturating_sub(shared.slots.len() as u64);
        let resume = oldest.max(*next + 1);
        let missed = resume - *next;
        *next = resume;
        return Err(TryRecvError::Lagged(missed));
    }
    drop(slot);
    if shared.closed.load(Ordering::Acquire) && *next >= shared.tail.load(Ordering::Acquire) {
        return Err(TryRecvError::Closed);
    }
    Err(TryRecvError::Empty)
}

impl<E> Drop for Subscriber<E> {
    fn drop(&mut self) {
        self.shared.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn every_subscriber_sees_every_event_in_order() {
        let bus = Bus::new(64);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for i in 0..50u32 {
            assert_eq!(bus.publish(i), 2);
        }
        for sub in [&mut a, &mut b] {
            for i in 0..50u32 {
                assert_eq!(*sub.try_recv().unwrap(), i);
            }
            assert_eq!(sub.try_recv(), Err(TryRecvError::Empty));
        }
    }

    #[test]
    fn a_lagging_subscriber_learns_how_many_it_missed() {
        let bus = Bus::new(8);
        let mut fast = bus.subscribe();
        let mut slow = bus.subscribe();
        for i in 0..20u64 {
            bus.publish(i);
            assert_eq!(*fast.try_recv().unwrap(), i);
        }
        assert_eq!(slow.try_recv(), Err(TryRecvError::Lagged(12)));
        for i in 12..20u64 {
            assert_eq!(*slow.try_recv().unwrap(), i);
        }
        assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn late_subscribers_see_only_later_events() {
        let bus = Bus::new(8);
        let _keep = bus.subscribe();
        bus.publish(1);
        let mut late = bus.subscribe();
        bus.publish(2);
        assert_eq!(*late.try_recv().unwrap(), 2);
    }

    #[test]
    fn a_subscriber_can_start_from_an_earlier_point() {
        let bus = Bus::new(8);
        let _journal = bus.subscribe();
        for i in 0..5u64 {
            bus.publish(i);
        }
        let mut s = bus.subscribe_from(2);
        assert_eq!(s.position(), 2);
        assert_eq!(*s.try_recv().unwrap(), 2);
        assert_eq!(s.position(), 3);
        // Too far back: the gap is reported, then the oldest kept follows.
        for i in 5..20u64 {
            bus.publish(i);
        }
        let mut old = bus.subscribe_from(0);
        assert_eq!(old.try_recv(), Err(TryRecvError::Lagged(12)));
        assert_eq!(*old.try_recv().unwrap(), 12);
        // In the future: starts with the next event.
        let mut later = bus.subscribe_from(1_000);
        bus.publish(20);
        assert_eq!(*later.try_recv().unwrap(), 20);
        assert_eq!(bus.published(), 21);
    }

    #[test]
    fn dropping_a_subscriber_frees_its_place() {
        let bus = Bus::<u8>::new(4);
        let a = bus.subscribe();
        let b = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 2);
        drop(a);
        assert_eq!(bus.subscriber_count(), 1);
        drop(b);
        assert_eq!(bus.subscriber_count(), 0);
        assert_eq!(bus.publish(1), 0);
    }

    #[test]
    fn closing_the_bus_ends_subscribers_after_the_backlog() {
        let bus = Bus::new(4);
        let mut s = bus.subscribe();
        bus.publish(1);
        drop(bus);
        assert_eq!(*s.try_recv().unwrap(), 1);
        assert_eq!(s.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(rt().block_on(s.recv()), Err(RecvError::Closed));
    }

    #[test]
    fn recv_wakes_when_an_event_arrives() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let bus = Bus::new(1024);
            let mut subs: Vec<_> = (0..4).map(|_| bus.subscribe()).collect();
            let tasks: Vec<_> = subs
                .drain(..)
                .map(|mut s| {
                    tokio::spawn(async move {
                        let mut seen = 0u64;
                        loop {
                            match s.recv().await {
                                Ok(_) => seen += 1,
                                Err(RecvError::Lagged(n)) => seen += n,
                                Err(RecvError::Closed) => return seen,
                            }
                        }
                    })
                })
                .collect();
            let publisher = tokio::task::spawn_blocking(move || {
                for i in 0..100_000u64 {
                    bus.publish(i);
                }
            });
            publisher.await.unwrap();
            for t in tasks {
                let seen = tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("subscriber hung")
                    .unwrap();
                assert_eq!(
                    seen, 100_000,
                    "every event is either received or counted as missed"
                );
            }
        });
    }

    #[test]
    fn racing_publishers_lose_nothing_a_fast_reader_keeps_up_with() {
        let bus = Bus::new(1 << 16);
        let mut s = bus.subscribe();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let bus = bus.clone();
                scope.spawn(move || {
                    for i in 0..10_000u64 {
                        bus.publish(t * 1_000_000 + i);
                    }
                });
            }
        });
        let mut got = Vec::new();
        while let Ok(v) = s.try_recv() {
            got.push(*v);
        }
        assert_eq!(got.len(), 40_000);
        for t in 0..4u64 {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1_000_000 == t).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "publisher order kept");
        }
    }
}

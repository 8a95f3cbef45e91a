//! Coalesced wakes across threads (interrupt coalescing, as a NIC does it).
//!
//! Streams cross threads twice: the host's events (the JS thread in the product) reach the
//! node's runtime thread, and the node's tool steps reach their consumer (napi's runtime, the
//! JS thread). Each crossing wakes a parked thread: a syscall on one side and a context switch
//! on the other, several microseconds on a VM. At 1000 handoff streams × 50 deltas/s that was
//! most of the CPU a node spent per delta.
//!
//! [`Wakes`] sits between a producer and the consumer it wakes. A wake goes through at once
//! unless the boundary is busy: a second wake within [`TICK`] of the last direct one arms it, and
//! from then on wakes only queue; the node's [`Wakes::pump`] task delivers the queued ones once
//! per tick and disarms after a tick that found none. A busy boundary then costs one thread
//! wake per tick instead of one per item and the producer no syscall; an idle one keeps its
//! single-item latency. Without a running pump (no node runtime) every wake is direct, so
//! nothing can wait on a pump that does not exist.
//!
//! [`Wakes::wrap`] turns a consumer's waker into one that wakes through the boundary, so any
//! channel (tokio's mpsc here) gets this behaviour without changing its producer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// While a boundary is busy, the longest a queued wake waits (the pump's period; tokio's timer
/// rounds it up to its 1 ms resolution).
pub const TICK: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    /// Pumps running (one per started node runtime).
    pumps: usize,
    /// The pump, parked until the boundary arms.
    pump: Option<Waker>,
    /// Wakes only queue; the pump delivers them every tick.
    armed: bool,
    deferred: Vec<Waker>,
    /// When a wake last went through at once.
    last_direct: Option<Instant>,
    /// Counters for tests and status: wakes delivered at once / by the pump.
    direct: u64,
    coalesced: u64,
}

/// One thread boundary's wake policy (module doc). Shared through `Arc`.
#[derive(Default)]
pub struct Wakes {
    state: Mutex<State>,
}

impl Wakes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Wake `w` now, or at the pump's next tick while the boundary is busy.
    pub fn wake(&self, w: Waker) {
        self.wake_at(w, Instant::now());
    }

    /// [`Wakes::wake`] at a given time (tests pin it, so a preempted test thread cannot miss
    /// the window it checks).
    fn wake_at(&self, w: Waker, now: Instant) {
        let to_wake = {
            let mut st = self.lock();
            if st.armed {
                st.deferred.push(w);
                st.coalesced += 1;
                None
            } else if st.pumps > 0
                && st
                    .last_direct
                    .is_some_and(|t| now.saturating_duration_since(t) < TICK)
            {
                st.armed = true;
                st.deferred.push(w);
                st.coalesced += 1;
                st.pump.take()
            } else {
                st.last_direct = Some(now);
                st.direct += 1;
                Some(w)
            }
        };
        if let Some(w) = to_wake {
            w.wake();
        }
    }

    /// A waker that wakes `inner` through this boundary.
    pub fn wrap(self: &Arc<Self>, inner: &Waker) -> Waker {
        Waker::from(Arc::new(Through {
            wakes: Arc::clone(self),
            inner: inner.clone(),
        }))
    }

    /// Run by the node while it runs: delivers queued wakes once per [`TICK`] while the boundary
    /// is armed. Ends only by being dropped; then every queued wake is delivered and later ones
    /// go through at once (unless another pump still runs).
    pub async fn pump(self: Arc<Self>) {
        struct Running<'a>(&'a Wakes);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                let deferred = {
                    let mut st = self.0.lock();
                    st.pumps -= 1;
                    st.pump = None;
                    if st.pumps > 0 {
                        return;
                    }
                    st.armed = false;
                    std::mem::take(&mut st.deferred)
                };
                deferred.into_iter().for_each(Waker::wake);
            }
        }
        self.lock().pumps += 1;
        let _running = Running(&self);
        let mut batch: Vec<Waker> = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut st = self.lock();
                if st.armed {
                    Poll::Ready(())
                } else {
                    st.pump = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            loop {
                tokio::time::sleep(TICK).await;
                {
                    let mut st = self.lock();
                    std::mem::swap(&mut batch, &mut st.deferred);
                    if batch.is_empty() {
                        st.armed = false;
                        st.last_direct = None;
                    }
                }
                if batch.is_empty() {
                    break;
                }
                batch.drain(..).for_each(Waker::wake);
            }
        }
    }

    /// Wakes delivered at once and wakes the pump delivered, so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.direct, st.coalesced)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A consumer's waker, woken through a [`Wakes`] boundary.
struct Through {
    wakes: Arc<Wakes>,
    inner: Waker,
}

impl Wake for Through {
    fn wake(self: Arc<Self>) {
        self.wakes.wake(self.inner.clone());
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.wake(self.inner.clone());
    }
}

/// A consumer's wrapped waker, kept while its task stays the same, so channels that skip
/// re-registering an equal waker (`will_wake`) keep skipping it.
#[derive(Default)]
pub struct WrappedWaker {
    cached: Option<(Waker, Waker)>,
}

impl WrappedWaker {
    /// Poll `f` with `cx`'s waker wrapped through `wakes` (or plainly without a boundary).
    pub fn poll<T>(
        &mut self,
        wakes: Option<&Arc<Wakes>>,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Some(wakes) = wakes else {
            return f(cx);
        };
        let fresh = match &self.cached {
            Some((inner, _)) => !inner.will_wake(cx.waker()),
            None => true,
        };
        if fresh {
            self.cached = Some((cx.waker().clone(), wakes.wrap(cx.waker())));
        }
        let wrapped = match &self.cached {
            Some((_, w)) => w,
            None => return f(cx),
        };
        f(&mut Context::from_waker(wrapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn without_a_pump_every_wake_goes_through_at_once() {
        let w = Wakes::new();
        let (c, waker) = counter();
        for _ in 0..100 {
            w.wake(waker.clone());
        }
        assert_eq!(c.0.load(Ordering::SeqCst), 100);
        assert_eq!(w.counts(), (100, 0));
    }

    #[test]
    fn a_busy_boundary_defers_wakes_to_the_pump_and_an_idle_one_does_not() {
        rt().block_on(async {
            let w = Wakes::new();
            let pump = tokio::spawn(Arc::clone(&w).pump());
            tokio::task::yield_now().await;
            let (c, waker) = counter();
            // All three in the same instant (pinned: a descheduled test thread must not turn
            // "within the tick" into "after it").
            let t = Instant::now();
            // Idle: the first wake goes through at once.
            w.wake_at(waker.clone(), t);
            assert_eq!(c.0.load(Ordering::SeqCst), 1);
            // A second one within the tick arms the boundary: queued, not delivered yet.
            w.wake_at(waker.clone(), t);
            w.wake_at(waker.clone(), t);
            assert_eq!(c.0.load(Ordering::SeqCst), 1);
            // The pump delivers them (it ticks every TICK; the bound only has to tell "the
            // pump did it" from "never").
            let t0 = Instant::now();
            while c.0.load(Ordering::SeqCst) < 3 {
                assert!(t0.elapsed() < Duration::from_secs(2), "the pump never woke");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // After a tick without wakes it disarms: the next one goes through at once again.
            let t1 = Instant::now();
            while w.lock().armed {
                assert!(
                    t1.elapsed() < Duration::from_secs(2),
                    "the pump never disarmed"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            w.wake(waker.clone());
            assert_eq!(c.0.load(Ordering::SeqCst), 4);
            assert_eq!(w.counts(), (2, 2));
            pump.abort();
        });
    }

    #[test]
    fn dropping_the_pump_delivers_what_it_held_and_later_wakes_are_direct() {
        rt().block_on(async {
            let w = Wakes::new();
            let pump = tokio::spawn(Arc::clone(&w).pump());
            tokio::task::yield_now().await;
            let (c, waker) = counter();
            w.wake(waker.clone());
            w.wake(waker.clone());
            assert_eq!(c.0.load(Ordering::SeqCst), 1);
            pump.abort();
            let _ = pump.await;
            assert_eq!(c.0.load(Ordering::SeqCst), 2, "held wake delivered on drop");
            w.wake(waker.clone());
            w.wake(waker.clone());
            assert_eq!(c.0.load(Ordering::SeqCst), 4);
        });
    }

    #[test]
    fn a_wrapped_waker_is_reused_while_its_task_stays_the_same() {
        let w = Wakes::new();
        let (c, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let mut ww = WrappedWaker::default();
        let mut seen: Vec<Waker> = Vec::new();
        for _ in 0..3 {
            let _ = ww.poll(Some(&w), &mut cx, |cx| {
                seen.push(cx.waker().clone());
                Poll::<()>::Pending
            });
        }
        assert!(seen[0].will_wake(&seen[1]) && seen[1].will_wake(&seen[2]));
        seen[0].wake_by_ref();
        assert_eq!(c.0.load(Ordering::SeqCst), 1, "wakes the inner waker");
        let (_, other) = counter();
        let mut cx2 = Context::from_waker(&other);
        let _ = ww.poll(Some(&w), &mut cx2, |cx| {
            assert!(
                !cx.waker().will_wake(&seen[0]),
                "a new task gets a new wrapper"
            );
            Poll::<()>::Pending
        });
    }
}

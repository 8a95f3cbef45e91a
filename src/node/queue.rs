//! One link's writer queue: the actor queues encoded frames without ever waiting, the link
//! task's writer takes them; the same shared state carries the actor's close request and the
//! link's "proved" flag.
//!
//! Flow:
//! ```text
//! actor ──try_push (Full / Closed, never waits)──▶ LinkQueue ──recv / try_recv──▶ link writer
//! actor ──close(CloseCmd)───────────────────────▶ LinkQueue ──closed()─────────▶ link task
//! link reader ──push_pong (best effort)─────────▶ LinkQueue
//! ```
//!
//! Why not a tokio `mpsc` + `oneshot`: a bounded tokio channel allocates its shared state
//! (cache-padded, ~0.6 KiB) and a first block of 32 slots on creation and keeps a block for as
//! long as it lives, so with the oneshot for the close request and two `Arc`'d atomics every
//! idle link held ~1.5 KiB of empty queues. Here one small allocation holds everything, and the
//! item buffer (a `VecDeque`) is released whenever the writer finds it empty and parks, so an
//! idle link holds no slots at all.
//!
//! Bounds (the actor's rules, [`WRITER_QUEUE_FRAMES`] and [`WRITER_QUEUE_BYTES`]): at
//! most that many items, and that many bytes of frames unless the queue holds none (one maximum
//! frame always fits an empty queue). Pongs count against the item bound only, not the bytes
//! (≤ 125 bytes each, and they never came from the actor).
//!
//! Two lanes: urgent items (pongs, and frames the core marks urgent: `ping`, `pong`, our own
//! `cancel` and `credit`) are taken before the bulk lane, so on a slow link they wait for the
//! frame being written, not for every chunk queued before them. An urgent frame overtakes at
//! most [`URGENT_MAX_OVERTAKE`] bulk frames; behind more it keeps its FIFO place (see there).
//!
//! A std `Mutex` is fine here: it is held for a few field updates, never across an `.await`,
//! and its only two users are the actor and the link task.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Per-link writer queue bound, in frames: every stream window one caller may have open,
/// 64 chunks × 1024 calls = 65 536. Flow control (credit) is what bounds a stream's frames in
/// flight, so a smaller frame bound turns windowed traffic into loss whenever a consumer falls
/// behind: with 1024 frames, 1000 handoff streams at 50 chunks/s through a relay (a burst of
/// 1000 tiny chunks every 20 ms) overflowed it within a second of CPU starvation and the relay
/// closed the caller's link as a slow peer. Memory stays bounded by [`WRITER_QUEUE_BYTES`] plus
/// one queue slot per frame actually queued. Beyond it frames are dropped and counted, never
/// awaited.
pub const WRITER_QUEUE_FRAMES: usize =
    crate::proto::STREAM_WINDOW_CHUNKS as usize * crate::mesh::calls::DEFAULT_MAX_INFLIGHT_CALLS;
/// Per-link writer queue bound, in bytes: 16 MiB = one largest frame (`MAX_FRAME_BYTES`), so a
/// single maximum frame always fits an empty queue while a stuck peer pins at most this much.
pub const WRITER_QUEUE_BYTES: usize = crate::proto::MAX_FRAME_BYTES;
/// Most bulk frames an urgent one may overtake. A sealed `cancel` or `credit` carries its
/// node pair's next end-to-end counter, and the destination refuses a frame more than
/// `mesh::e2e::WINDOW` (1024) counters below the highest it has seen: overtaking more than that
/// many frames of the same pair would get them refused as replays. Half of it leaves margin;
/// a bulk lane this long holds small frames only (the byte bound admits 64 maximum chunks), so
/// it drains quickly anyway.
pub const URGENT_MAX_OVERTAKE: usize = 512;

/// What the actor tells a link task to do with its socket.
#[derive(Debug, Clone)]
pub(crate) struct CloseCmd {
    pub code: u16,
    pub reason: String,
    /// Try to flush the frames already queued (bounded) before the close frame.
    pub flush: bool,
}

/// One item of a link's writer queue.
#[derive(Debug)]
pub(crate) enum LinkOut {
    /// An encoded mesh frame (one BINARY message).
    Frame(Vec<u8>),
    /// An encoded mesh frame queued on several links (gossip), shared.
    Shared(Arc<[u8]>),
    /// The answer to a WebSocket PING from the peer (or a proxy in between).
    Pong(Vec<u8>),
}

impl LinkOut {
    /// Bytes this item counts against the queue's byte bound (pongs: none).
    pub fn len(&self) -> usize {
        match self {
            LinkOut::Frame(b) => b.len(),
            LinkOut::Shared(b) => b.len(),
            LinkOut::Pong(_) => 0,
        }
    }
}

/// Why [`QueueSender::try_push`] did not queue an item (it is dropped, after the lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// A bound would be exceeded.
    Full,
    /// The link task is gone (its `LinkDown` is on the way).
    Closed,
}

/// Milliseconds on a process-wide monotonic clock (for ages handed between tasks).
fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The shared state of one link's queue.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Set by the actor once a pong was received on this link (the dialer's health rule).
    proved: AtomicBool,
    /// When the link reader last saw bytes of a message still arriving ([`mono_ms`]; 0 =
    /// never): a large frame crawling over a slow path. The actor reads it for links the core
    /// suspects.
    rx_progress: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<LinkOut>,
    /// The urgent lane, taken first.
    urgent: VecDeque<LinkOut>,
    /// Bytes of frames in `items` (what [`LinkOut::len`] counts).
    bytes: usize,
    /// The actor's close request, until the link task takes it.
    close: Option<CloseCmd>,
    /// The writer, when it waits for an item (a push wakes only this one: while the writer is
    /// busy writing, new items need no wake-up).
    recv_waker: Option<Waker>,
    /// The link task, when it waits for the close request.
    close_waker: Option<Waker>,
    /// The actor dropped its sender: no more frames will come.
    sender_gone: bool,
    /// The link task dropped its receiver: pushing is pointless.
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while locked cannot leave the fields inconsistent (plain assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new empty queue (no item buffer allocated until the first push).
pub(crate) fn link_queue() -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared::default());
    (QueueSender(shared.clone()), QueueReceiver(shared))
}

/// Wake the writer if it waits (and, with `close`, whoever waits for the close request), after
/// the lock is released.
fn wake(mut st: MutexGuard<'_, State>, close: bool) {
    let r = st.recv_waker.take();
    let c = if close { st.close_waker.take() } else { None };
    drop(st);
    for w in [r, c].into_iter().flatten() {
        w.wake();
    }
}

/// The actor's end. Dropping it closes the queue: the writer drains what is queued, then ends.
#[derive(Debug)]
pub(crate) struct QueueSender(Arc<Shared>);

impl QueueSender {
    /// Queue one item now or hand it back; never waits. `Ok(drained)`: whether the queue,
    /// this item included, is at most half of both bounds (a slow peer caught up). `urgent`:
    /// in the urgent lane (unless more than [`URGENT_MAX_OVERTAKE`] bulk frames wait).
    pub fn try_push(&self, out: LinkOut, urgent: bool) -> Result<bool, PushError> {
        let len = out.len();
        let mut st = self.0.lock();
        if st.bytes > 0 && st.bytes + len > WRITER_QUEUE_BYTES {
            return Err(PushError::Full);
        }
        if st.receiver_gone {
            return Err(PushError::Closed);
        }
        if st.items.len() + st.urgent.len() >= WRITER_QUEUE_FRAMES {
            return Err(PushError::Full);
        }
        if urgent && st.items.len() <= URGENT_MAX_OVERTAKE {
            st.urgent.push_back(out);
        } else {
            st.items.push_back(out);
        }
        st.bytes += len;
        let drained = drained(&st);
        wake(st, false);
        Ok(drained)
    }

    /// Ask the link task to close its socket (it sees this before any queued frame).
    pub fn close(&self, cmd: CloseCmd) {
        let mut st = self.0.lock();
        st.close = Some(cmd);
        wake(st, true);
    }

    pub fn proved(&self) -> bool {
        self.0.proved.load(Ordering::Relaxed)
    }

    pub fn set_proved(&self) {
        self.0.proved.store(true, Ordering::Relaxed);
    }

    /// How long ago (ms) the reader last saw bytes of an unfinished message arrive, if ever.
    pub fn rx_progress_age(&self) -> Option<u64> {
        let at = self.0.rx_progress.load(Ordering::Relaxed);
        (at != 0).then(|| mono_ms().saturating_sub(at))
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.sender_gone = true;
        wake(st, true);
    }
}

/// The link task's end (its reader pushes pongs, its writer takes items).
#[derive(Debug)]
pub(crate) struct QueueReceiver(Arc<Shared>);

impl QueueReceiver {
    /// The next item; `None` once the actor dropped its sender and everything was taken. An
    /// empty queue releases its item buffer before waiting.
    pub async fn recv(&self) -> Option<LinkOut> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<LinkOut>> {
        let mut st = self.0.lock();
        if let Some(out) = take(&mut st) {
            return Poll::Ready(Some(out));
        }
        if st.sender_gone {
            return Poll::Ready(None);
        }
        if st.items.capacity() > 0 {
            st.items = VecDeque::new();
        }
        if st.urgent.capacity() > 0 {
            st.urgent = VecDeque::new();
        }
        register(&mut st.recv_waker, cx);
        Poll::Pending
    }

    /// Whether nothing is queued right now.
    pub fn is_empty(&self) -> bool {
        let st = self.0.lock();
        st.items.is_empty() && st.urgent.is_empty()
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Option<LinkOut> {
        take(&mut self.0.lock())
    }

    /// Resolves with the actor's close request, or `None` when the actor dropped the link
    /// without one (it is gone, or the link is already being taken down).
    pub async fn closed(&self) -> Option<CloseCmd> {
        poll_fn(|cx| {
            let mut st = self.0.lock();
            if let Some(cmd) = st.close.take() {
                return Poll::Ready(Some(cmd));
            }
            if st.sender_gone {
                return Poll::Ready(None);
            }
            register(&mut st.close_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// The next urgent item if one is queued (between the pieces of a frame).
    pub fn try_recv_urgent(&self) -> Option<LinkOut> {
        let mut st = self.0.lock();
        let out = st.urgent.pop_front()?;
        st.bytes -= out.len();
        Some(out)
    }

    /// The close request, if the actor sent one.
    pub fn try_closed(&self) -> Option<CloseCmd> {
        self.0.lock().close.take()
    }

    /// Bytes of an unfinished message arrived (see [`QueueSender::rx_progress_age`]).
    pub fn note_rx_progress(&self) {
        self.0
            .rx_progress
            .store(mono_ms().max(1), Ordering::Relaxed);
    }

    /// Queue a pong (best effort: dropped once the actor let go of the link or the queue is
    /// full, so a peer that floods pings loses pongs, nothing else).
    pub fn push_pong(&self, payload: Vec<u8>) {
        let mut st = self.0.lock();
        if st.sender_gone || st.items.len() + st.urgent.len() >= WRITER_QUEUE_FRAMES {
            return;
        }
        st.urgent.push_back(LinkOut::Pong(payload));
        wake(st, false);
    }

    pub fn proved(&self) -> bool {
        self.0.proved.load(Ordering::Relaxed)
    }

    /// Bytes held by the item buffer (for tests of the idle footprint).
    #[cfg(test)]
    pub fn buffered_capacity(&self) -> usize {
        let st = self.0.lock();
        (st.items.capacity() + st.urgent.capacity()) * std::mem::size_of::<LinkOut>()
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let items = {
            let mut st = self.0.lock();
            st.receiver_gone = true;
            st.bytes = 0;
            (
                std::mem::take(&mut st.items),
                std::mem::take(&mut st.urgent),
            )
        };
        // Frames are freed outside the lock.
        drop(items);
    }
}

fn drained(st: &State) -> bool {
    st.bytes <= WRITER_QUEUE_BYTES / 2
        && st.items.len() + st.urgent.len() <= WRITER_QUEUE_FRAMES / 2
}

fn take(st: &mut State) -> Option<LinkOut> {
    let out = match st.urgent.pop_front() {
        Some(out) => out,
        None => st.items.pop_front()?,
    };
    st.bytes -= out.len();
    Some(out)
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
impl QueueSender {
    fn try_push_bulk(&self, out: LinkOut) -> Result<bool, PushError> {
        self.try_push(out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urgent_frames_overtake_queued_bulk_in_their_own_order_but_never_too_many() {
        let (tx, rx) = link_queue();
        tx.try_push_bulk(frame(1000)).unwrap();
        tx.try_push_bulk(frame(1001)).unwrap();
        tx.try_push(frame(1), true).unwrap();
        rx.push_pong(vec![0; 2]);
        tx.try_push(frame(3), true).unwrap();
        let order: Vec<usize> = std::iter::from_fn(|| rx.try_recv())
            .map(|o| match o {
                LinkOut::Pong(p) => p.len(),
                o => o.len(),
            })
            .collect();
        assert_eq!(order, [1, 2, 3, 1000, 1001]);
        assert_eq!(rx.0.lock().bytes, 0);
        // Behind more than URGENT_MAX_OVERTAKE bulk frames an urgent one keeps its place.
        for _ in 0..=URGENT_MAX_OVERTAKE {
            tx.try_push_bulk(frame(10)).unwrap();
        }
        tx.try_push(frame(7), true).unwrap();
        let lens: Vec<usize> = std::iter::from_fn(|| rx.try_recv())
            .map(|o| o.len())
            .collect();
        assert_eq!(lens.len(), URGENT_MAX_OVERTAKE + 2);
        assert_eq!(lens.last(), Some(&7));
    }

    fn frame(n: usize) -> LinkOut {
        LinkOut::Frame(vec![0u8; n])
    }

    fn cmd(code: u16) -> CloseCmd {
        CloseCmd {
            code,
            reason: "r".into(),
            flush: true,
        }
    }

    #[test]
    fn a_new_queue_and_a_drained_one_hold_no_item_buffer() {
        let (tx, rx) = link_queue();
        assert_eq!(rx.buffered_capacity(), 0);
        for _ in 0..100 {
            tx.try_push_bulk(frame(10)).unwrap();
        }
        assert!(rx.buffered_capacity() > 0);
        while rx.try_recv().is_some() {}
        // The writer parks on an empty queue: the buffer goes.
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(rx.buffered_capacity(), 0);
    }

    #[test]
    fn the_frame_bound_refuses_one_frame_more_and_drained_needs_half() {
        let (tx, rx) = link_queue();
        for _ in 0..WRITER_QUEUE_FRAMES {
            tx.try_push_bulk(frame(1)).unwrap();
        }
        assert!(matches!(tx.try_push_bulk(frame(1)), Err(PushError::Full)));
        assert!(!drained(&tx.0.lock()));
        for _ in 0..WRITER_QUEUE_FRAMES / 2 - 1 {
            rx.try_recv().unwrap();
        }
        assert!(!drained(&tx.0.lock()));
        rx.try_recv().unwrap();
        assert!(drained(&tx.0.lock()));
    }

    #[test]
    fn the_byte_bound_admits_one_maximum_frame_into_an_empty_queue_only() {
        let (tx, rx) = link_queue();
        tx.try_push_bulk(frame(WRITER_QUEUE_BYTES)).unwrap();
        assert!(matches!(tx.try_push_bulk(frame(1)), Err(PushError::Full)));
        assert!(!drained(&tx.0.lock()));
        rx.try_recv().unwrap();
        assert!(drained(&tx.0.lock()));
        tx.try_push_bulk(frame(WRITER_QUEUE_BYTES / 2)).unwrap();
        tx.try_push_bulk(frame(WRITER_QUEUE_BYTES / 2)).unwrap();
        assert!(matches!(tx.try_push_bulk(frame(1)), Err(PushError::Full)));
    }

    #[test]
    fn pongs_never_touch_the_byte_count() {
        // A ping payload used to be subtracted from the byte count without ever being added.
        let (tx, rx) = link_queue();
        rx.push_pong(vec![7u8; 125]);
        tx.try_push_bulk(frame(100)).unwrap();
        assert!(matches!(rx.try_recv(), Some(LinkOut::Pong(_))));
        assert!(matches!(rx.try_recv(), Some(LinkOut::Frame(_))));
        assert_eq!(rx.0.lock().bytes, 0);
        assert!(drained(&tx.0.lock()));
    }

    #[test]
    fn a_dropped_receiver_refuses_with_closed_and_frees_the_frames() {
        let (tx, rx) = link_queue();
        tx.try_push_bulk(frame(10)).unwrap();
        drop(rx);
        assert!(matches!(tx.try_push_bulk(frame(1)), Err(PushError::Closed)));
        assert_eq!(tx.0.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn the_writer_drains_what_is_queued_after_the_sender_is_dropped_then_ends() {
        let (tx, rx) = link_queue();
        tx.try_push_bulk(frame(1)).unwrap();
        tx.try_push_bulk(frame(2)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.map(|o| o.len()), Some(1));
        assert_eq!(rx.recv().await.map(|o| o.len()), Some(2));
        assert!(rx.recv().await.is_none());
        assert!(rx.closed().await.is_none());
        // Pongs after the actor let go are dropped.
        rx.push_pong(vec![1]);
        assert!(rx.try_recv().is_none());
    }

    /// Paused time: each sleep returns only once the spawned task ran and parked (time
    /// advances when nothing is runnable), so the push and the close find it waiting.
    #[tokio::test(start_paused = true)]
    async fn a_close_request_and_a_push_wake_the_waiting_task() {
        let (tx, rx) = link_queue();
        let task = tokio::spawn(async move {
            let first = rx.recv().await.map(|o| o.len());
            let cmd = rx.closed().await.map(|c| c.code);
            (first, cmd)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_push_bulk(frame(3)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.close(cmd(1013));
        let r = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(r.unwrap().unwrap(), (Some(3), Some(1013)));
        assert!(drained(&tx.0.lock()));
    }
}

//! A bounded queue of log lines and events from the core to the shim, drained by pull
//! (`nextEvent()` in JS) so a slow consumer never blocks the core: when the queue is full the
//! oldest entry is dropped and counted, and the next delivered entry reports the gap.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Most entries kept before the oldest are dropped.
pub const EVENT_QUEUE_CAPACITY: usize = 1024;

/// Severity of a [`NodeEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log line for the host logger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub level: Level,
    pub message: String,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<NodeEvent>,
    dropped: u64,
    closed: bool,
}

/// The queue itself. The std `Mutex` is held only for push/pop, never across `.await`.
#[derive(Default)]
pub struct EventQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl EventQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, level: Level, message: String) {
        {
            let mut g = self.lock();
            if g.queue.len() >= EVENT_QUEUE_CAPACITY {
                g.queue.pop_front();
                g.dropped += 1;
            }
            g.queue.push_back(NodeEvent { level, message });
        }
        self.notify.notify_one();
    }

    pub fn info(&self, message: String) {
        self.push(Level::Info, message);
    }

    pub fn warn(&self, message: String) {
        self.push(Level::Warn, message);
    }

    /// Wake every waiter with `None` from now on once the queue is drained.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Reopen after a restart.
    pub fn reopen(&self) {
        self.lock().closed = false;
    }

    /// The next event, waiting for one; `None` once closed and drained.
    pub async fn next(&self) -> Option<NodeEvent> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                if g.dropped > 0 {
                    let n = std::mem::take(&mut g.dropped);
                    return Some(NodeEvent {
                        level: Level::Warn,
                        message: format!("{n} log lines dropped: the event queue was full"),
                    });
                }
                if let Some(e) = g.queue.pop_front() {
                    return Some(e);
                }
                if g.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_oldest_and_reports_the_gap() {
        let q = EventQueue::new();
        for i in 0..(EVENT_QUEUE_CAPACITY + 5) {
            q.info(format!("line {i}"));
        }
        let first = q.next().await.expect("event");
        assert_eq!(first.level, Level::Warn);
        assert!(
            first.message.starts_with("5 log lines dropped"),
            "{first:?}"
        );
        let next = q.next().await.expect("event");
        assert_eq!(next.message, "line 5");
    }

    #[tokio::test]
    async fn close_ends_the_stream_after_draining() {
        let q = EventQueue::new();
        q.info("a".into());
        q.close();
        assert_eq!(q.next().await.map(|e| e.message), Some("a".into()));
        assert_eq!(q.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_is_woken_by_push() {
        let q = std::sync::Arc::new(EventQueue::new());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        q.info("hello".into());
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken in time")
            .expect("task");
        assert_eq!(got.map(|e| e.message), Some("hello".into()));
    }
}

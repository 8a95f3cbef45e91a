//! The consumer's end of a remote tool call: a [`ToolCall`] hands out its steps
//! ([`ToolEvent`]) as the caller task produces them, and cancels the call when told to or when
//! dropped.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, ErrorCode, Result};
use crate::wake::{Wakes, WrappedWaker};

/// One step of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolEvent {
    /// Partial output (exec's stdout/stderr as it comes).
    Progress { text: String, details: Value },
    /// The final result.
    Result(crate::tools::ToolOutput),
}

/// A running tool call: pull its steps with [`ToolCall::next`]; [`ToolCall::cancel`] (or
/// dropping it) cancels the remote call.
pub struct ToolCall {
    rx: tokio::sync::Mutex<(mpsc::Receiver<Result<ToolEvent>>, WrappedWaker)>,
    cancel: watch::Sender<bool>,
    /// A result or an error was handed out.
    finished: std::sync::atomic::AtomicBool,
    /// How the node's steps wake the consumer (`None`: directly).
    wakes: Option<Arc<Wakes>>,
}

impl ToolCall {
    /// A call that is already over.
    pub fn ready(r: Result<ToolEvent>) -> ToolCall {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(r);
        let (cancel, _) = watch::channel(false);
        ToolCall::new(rx, cancel)
    }

    pub(crate) fn new(
        rx: mpsc::Receiver<Result<ToolEvent>>,
        cancel: watch::Sender<bool>,
    ) -> ToolCall {
        ToolCall {
            rx: tokio::sync::Mutex::new((rx, WrappedWaker::default())),
            cancel,
            finished: std::sync::atomic::AtomicBool::new(false),
            wakes: None,
        }
    }

    /// Wake the consumer through `wakes` (the node's tool-step boundary, [`crate::wake`]).
    pub(crate) fn with_wakes(mut self, wakes: Arc<Wakes>) -> ToolCall {
        self.wakes = Some(wakes);
        self
    }

    /// The next step; `None` after the result or an error. A call whose task vanished without
    /// a result (the node stopped) ends with a `Cancelled` error, and so does a call cancelled
    /// before its outcome was handed out: whatever the task reached meanwhile (a routing error
    /// such as `Unreachable`, or even a result) loses to the caller's cancel, so an aborted call
    /// always ends `Cancelled` however the cancel raced the call's own progress.
    pub async fn next(&self) -> Option<Result<ToolEvent>> {
        use std::sync::atomic::Ordering;
        if self.finished.load(Ordering::Acquire) {
            return None;
        }
        let mut guard = self.rx.lock().await;
        let (rx, waker) = &mut *guard;
        let wakes = self.wakes.as_ref();
        let step = std::future::poll_fn(|cx| waker.poll(wakes, cx, |cx| rx.poll_recv(cx))).await;
        drop(guard);
        let step = step.unwrap_or_else(|| {
            Err(Error::new(
                ErrorCode::Cancelled,
                "the tool call ended without a result (the clawmatrix service stopped)",
            ))
        });
        if matches!(step, Ok(ToolEvent::Progress { .. })) {
            return Some(step);
        }
        self.finished.store(true, Ordering::Release);
        let step = match step {
            Err(e) if e.code == ErrorCode::Cancelled => Err(e),
            ended if *self.cancel.borrow() => Err(Error::new(
                ErrorCode::Cancelled,
                match ended {
                    Err(e) => format!(
                        "cancelled by the caller (the call had ended: {})",
                        e.message
                    ),
                    Ok(_) => "cancelled by the caller (the result came too late)".to_string(),
                },
            )),
            step => step,
        };
        Some(step)
    }

    /// Cancel the call (for exec, every process the command started is killed). Idempotent.
    pub fn cancel(&self) {
        // `send_replace`, not `send`: the flag must stick even when the call's task already
        // ended and dropped its receiver, since `next` reads it.
        self.cancel.send_replace(true);
    }
}

impl Drop for ToolCall {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::STEP_QUEUE;
    use super::*;

    /// Steps produced on the node faster than once per tick wake their consumer (on another
    /// runtime, as napi's is) through the boundary's pump, and none is lost or reordered.
    #[test]
    fn a_busy_tool_call_wakes_its_consumer_through_the_pump_and_loses_nothing() {
        const STEPS: usize = 500;
        let node_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let consumer_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let wakes = Wakes::new();
        let pump = node_rt.spawn(Arc::clone(&wakes).pump());
        let (tx, rx) = mpsc::channel(STEP_QUEUE);
        let (cancel, _) = watch::channel(false);
        let call = ToolCall::new(rx, cancel).with_wakes(Arc::clone(&wakes));
        let producer = node_rt.spawn(async move {
            for i in 0..STEPS {
                let step = ToolEvent::Progress {
                    text: i.to_string(),
                    details: Value::Null,
                };
                tx.send(Ok(step)).await.unwrap();
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let done = ToolEvent::Result(crate::tools::ToolOutput {
                text: "done".into(),
                details: Value::Null,
            });
            tx.send(Ok(done)).await.unwrap();
        });
        let got = consumer_rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut got = Vec::new();
                while let Some(step) = call.next().await {
                    match step.unwrap() {
                        ToolEvent::Progress { text, .. } => {
                            got.push(text.parse::<usize>().unwrap())
                        }
                        ToolEvent::Result(_) => break,
                    }
                }
                got
            })
            .await
            .expect("every step within 10 s")
        });
        assert_eq!(got, (0..STEPS).collect::<Vec<_>>());
        node_rt.block_on(producer).unwrap();
        let (direct, coalesced) = wakes.counts();
        assert!(coalesced > 0, "no wake was coalesced ({direct} direct)");
        pump.abort();
    }
}

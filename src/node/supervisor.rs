//! Supervision of the node actor: a panic in the actor (a bug) must not leave a node that says
//! `running` while nothing moves. The actor's run is wrapped in `catch_unwind`; on a panic the
//! supervisor records the failure (status: `running: false`, `failed: {reason, at,
//! restarting}`), logs it, waits a backoff and starts a fresh actor on the same input channel
//! and snapshot, with a fresh mesh core (a new incarnation, so peers take its records over the
//! old ones). The failed actor's links close with it (their writer queues are dropped), so
//! the dialers and peers reconnect to the new one.
//!
//! Restarts are bounded: at most [`MAX_RESTARTS`] within [`RESTART_WINDOW`]; one more failure
//! in that window and the actor stays down (`failed.restarting: false`) until the service is
//! restarted. The panic never leaves the node's runtime, so it cannot cross the napi boundary.

use std::any::Any;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::status::{Failure, Restarts};

/// First restart delay; doubled for every failure still inside the window.
pub const RESTART_BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest restart delay.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Restarts allowed within [`RESTART_WINDOW`]: a bug that fires on every start would otherwise
/// restart forever; five within ten minutes is not a transient fault.
pub const MAX_RESTARTS: usize = 5;
/// The window failures are counted in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The actor's health as status reports it. Shared between the supervisor and `Node::status`;
/// the std `Mutex` guards only quick field updates and is never held across an `.await`.
#[derive(Default)]
pub struct ActorHealth {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    /// Set while the actor is down.
    failed: Option<Failure>,
    last_failure: Option<Failure>,
    restarts: u32,
    /// When recent failures happened (pruned to the window).
    recent: Vec<Instant>,
}

impl ActorHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // The state is plain data updated in single steps: still consistent after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a failure; returns the delay before the restart, or `None` when the restart
    /// budget is spent (the actor stays down).
    pub fn fail(&self, reason: String) -> Option<Duration> {
        let now = Instant::now();
        let mut st = self.lock();
        st.recent
            .retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        st.recent.push(now);
        let n = st.recent.len();
        let delay = (n <= MAX_RESTARTS).then(|| {
            let factor = 1u32 << (n - 1).min(16);
            RESTART_BACKOFF_START
                .saturating_mul(factor)
                .min(RESTART_BACKOFF_MAX)
        });
        let failure = Failure {
            reason,
            at: crate::status::rfc3339_utc(SystemTime::now()),
            restarting: delay.is_some(),
        };
        st.last_failure = Some(failure.clone());
        st.failed = Some(failure);
        delay
    }

    /// The restart could not happen after all (the node stopped, or a fresh core could not be
    /// built): the actor stays down.
    pub fn give_up(&self, why: Option<String>) {
        let mut st = self.lock();
        if let Some(f) = st.failed.as_mut() {
            f.restarting = false;
            if let Some(why) = why {
                f.reason = format!("{}; restart failed: {why}", f.reason);
            }
        }
    }

    /// A fresh actor runs; returns the restart count.
    pub fn restarted(&self) -> u32 {
        let mut st = self.lock();
        st.failed = None;
        st.restarts += 1;
        st.restarts
    }

    /// `(failed, restarts)` for the status report.
    pub fn view(&self) -> (Option<Failure>, Option<Restarts>) {
        let st = self.lock();
        let restarts = st.last_failure.clone().map(|last| Restarts {
            count: st.restarts,
            last_failure: last,
        });
        (st.failed.clone(), restarts)
    }
}

/// The failure reason for a panic payload.
pub fn panic_reason(payload: &(dyn Any + Send)) -> String {
    format!(
        "the node actor panicked: {}",
        crate::error::panic_message(payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_stop_after_the_budget() {
        let h = ActorHealth::default();
        let mut delays = Vec::new();
        for i in 0..MAX_RESTARTS {
            delays.push(h.fail(format!("boom {i}")).expect("restart"));
            assert!(h.view().0.is_some_and(|f| f.restarting));
            assert_eq!(h.restarted(), i as u32 + 1);
            assert!(h.view().0.is_none());
        }
        assert_eq!(delays[0], RESTART_BACKOFF_START);
        assert_eq!(delays[1], RESTART_BACKOFF_START * 2);
        assert!(delays.iter().all(|d| *d <= RESTART_BACKOFF_MAX));
        assert_eq!(h.fail("again".into()), None, "budget spent");
        let (failed, restarts) = h.view();
        let failed = failed.expect("down");
        assert!(!failed.restarting);
        assert_eq!(failed.reason, "again");
        let restarts = restarts.expect("restarts");
        assert_eq!(restarts.count, MAX_RESTARTS as u32);
        assert_eq!(restarts.last_failure.reason, "again");
    }

    #[test]
    fn the_panic_reason_is_the_panic_message() {
        let p = std::panic::catch_unwind(|| panic!("bad state {}", 7)).unwrap_err();
        assert_eq!(panic_reason(&*p), "the node actor panicked: bad state 7");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(5u8)).unwrap_err();
        assert!(panic_reason(&*p).ends_with("(no message)"));
    }
}

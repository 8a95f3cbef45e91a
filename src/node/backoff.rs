//! Reconnect backoff for dialers (iroh-relay style): exponential from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`] with ±[`JITTER_PERCENT`] jitter drawn from an injected seed, reset to the
//! minimum only after a link proved healthy.
//!
//! "Healthy" is decided by the dialer (see `dialer.rs`): the link stayed up for at least one
//! heartbeat interval AND a pong was received on it. A link that authenticates and then dies at
//! once (a peer that crashes on every connect, a proxy that cuts idle streams) therefore keeps
//! backing off instead of hammering the peer every second.

use std::time::Duration;

/// First delay after a failure: 1 s. Short enough that a restarted cloud node is back quickly.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Largest delay: 60 s. A peer down for hours costs one connection attempt a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Jitter, ± this percentage of the delay, so dialers that lost the same relay at the same
/// moment do not reconnect in lockstep.
pub const JITTER_PERCENT: u64 = 20;

/// Exponential backoff state for one peer.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The un-jittered delay the next failure will wait.
    current: Duration,
    rng: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Backoff {
    /// Fresh state; `seed` drives the jitter (the node passes OS randomness, tests a constant).
    pub fn new(seed: u64) -> Self {
        Backoff {
            current: BACKOFF_MIN,
            rng: seed,
        }
    }

    /// The delay to wait now (jittered), doubling the base for the next failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(BACKOFF_MAX);
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let span = base_ms * JITTER_PERCENT / 100;
        // Uniform in [base - span, base + span].
        let offset = splitmix(&mut self.rng) % (2 * span + 1);
        Duration::from_millis(base_ms - span + offset)
    }

    /// The link proved healthy: the next failure waits [`BACKOFF_MIN`] again.
    pub fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }

    /// The un-jittered delay the next failure will wait.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(7);
        let mut base = BACKOFF_MIN;
        for _ in 0..12 {
            let d = b.next_delay();
            let lo = base.mul_f64(0.8);
            let hi = base.mul_f64(1.2);
            assert!(d >= lo && d <= hi, "{d:?} outside {lo:?}..={hi:?}");
            base = (base * 2).min(BACKOFF_MAX);
        }
        assert_eq!(b.current(), BACKOFF_MAX);
    }

    #[test]
    fn reset_returns_to_the_minimum() {
        let mut b = Backoff::new(1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN.mul_f64(1.2));
    }

    #[test]
    fn jitter_depends_on_the_seed() {
        let a: Vec<_> = {
            let mut b = Backoff::new(1);
            (0..4).map(|_| b.next_delay()).collect()
        };
        let c: Vec<_> = {
            let mut b = Backoff::new(2);
            (0..4).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, c);
    }
}

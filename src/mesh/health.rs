//! Local health, after Lifeguard (Dadgar et al., 2018): a node that is itself slow must doubt
//! itself before it accuses its peers.
//!
//! Two signs that the trouble is here and not at the peer:
//! - **a late tick**: the shell asked to be woken at a heartbeat deadline and came back much
//!   later (the process was stopped, its threads starved, the machine swapping). Nothing was
//!   heard in that time because nothing was read, so every link is forgiven the stall
//!   ([`crate::mesh::ping::PingTracker::forgive`]);
//! - **unanswered probes**: we asked other neighbours about a silent peer and none of them
//!   answered either, while their links were talking a moment ago.
//!
//! Each sign raises the score by one (at most [`MAX_SCORE`]); every link's timeout is multiplied
//! by `1 + score` ([`LocalHealth::scale`]), so an unhealthy node gives its peers longer instead
//! of dropping healthy links. The score falls by one for every calm period (one base timeout
//! without a sign), so a node back to health detects failures at full speed again within
//! `MAX_SCORE` timeouts at most.

/// Highest score: timeouts stretch at most 9× (36 s at the default 4 s).
pub const MAX_SCORE: u32 = 8;

/// A tick later than its deadline by at least this much (ms) counts as a stall, unless half
/// the heartbeat interval is more. Ordinary scheduling delays on a loaded machine (tens of ms)
/// stay far below it.
pub const STALL_MIN_MS: u64 = 500;

/// The local health score and when it last changed.
#[derive(Debug, Clone, Default)]
pub struct LocalHealth {
    score: u32,
    /// Start of the current calm period (no sign since).
    calm_since: u64,
}

impl LocalHealth {
    /// A healthy node at `now`.
    pub fn new(now: u64) -> Self {
        LocalHealth {
            score: 0,
            calm_since: now,
        }
    }

    /// The current score, 0 (healthy) to [`MAX_SCORE`].
    pub fn score(&self) -> u32 {
        self.score
    }

    /// Timeout multiplier: `1 + score`.
    pub fn scale(&self) -> u64 {
        1 + u64::from(self.score)
    }

    /// A sign of local trouble at `now`.
    pub fn raise(&mut self, now: u64) {
        self.score = (self.score + 1).min(MAX_SCORE);
        self.calm_since = now;
    }

    /// One point back per `calm_ms` without a sign.
    pub fn decay(&mut self, now: u64, calm_ms: u64) {
        let calm_ms = calm_ms.max(1);
        while self.score > 0 && now.saturating_sub(self.calm_since) >= calm_ms {
            self.score -= 1;
            self.calm_since = self.calm_since.saturating_add(calm_ms);
        }
        if self.score == 0 {
            self.calm_since = self.calm_since.max(now.saturating_sub(calm_ms));
        }
    }

    /// When the next point falls back, if any.
    pub fn next_decay(&self, calm_ms: u64) -> Option<u64> {
        (self.score > 0).then(|| self.calm_since.saturating_add(calm_ms.max(1)))
    }

    /// The stall, if a tick at `now` for work due at `due` came late by at least the stall
    /// threshold for heartbeat `interval_ms`.
    pub fn stall(now: u64, due: u64, interval_ms: u64) -> Option<u64> {
        let late = now.saturating_sub(due);
        (late >= STALL_MIN_MS.max(interval_ms / 2)).then_some(late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_raise_the_scale_up_to_the_cap_and_calm_periods_bring_it_back() {
        let mut h = LocalHealth::new(0);
        assert_eq!(h.scale(), 1);
        for i in 0..20 {
            h.raise(1_000 + i);
        }
        assert_eq!(h.score(), MAX_SCORE);
        assert_eq!(h.scale(), 9);
        assert_eq!(h.next_decay(4_000), Some(1_019 + 4_000));
        h.decay(1_019 + 3_999, 4_000);
        assert_eq!(h.score(), MAX_SCORE, "not a whole calm period yet");
        h.decay(1_019 + 4_000 * 3, 4_000);
        assert_eq!(h.score(), MAX_SCORE - 3);
        h.decay(1_000_000, 4_000);
        assert_eq!(h.score(), 0);
        assert_eq!(h.next_decay(4_000), None);
        // Calm since long ago: one sign is one point, not several lost to a stale clock.
        h.raise(1_000_001);
        assert_eq!(h.score(), 1);
    }

    #[test]
    fn only_a_tick_late_by_the_threshold_is_a_stall() {
        assert_eq!(LocalHealth::stall(1_400, 1_000, 1_000), None);
        assert_eq!(LocalHealth::stall(1_500, 1_000, 1_000), Some(500));
        assert_eq!(LocalHealth::stall(900, 1_000, 1_000), None, "early");
        // A 15 s heartbeat tolerates 7.5 s of lateness before calling it a stall.
        assert_eq!(LocalHealth::stall(8_000, 1_000, 15_000), None);
        assert_eq!(LocalHealth::stall(8_500, 1_000, 15_000), Some(7_500));
    }
}

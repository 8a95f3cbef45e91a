//! Per-link heartbeat: when to ping, which ping is outstanding, consecutive misses, the
//! smoothed RTT (EWMA α = 1/8 as RFC 6298's SRTT, kept ×8 in integers) and the windowed
//! minimum RTT (the least of the last [`MIN_RTT_WINDOW`] samples).
//!
//! The minimum is what records advertise: queueing in a busy process or a congested path only
//! ever adds delay, so a spike moves the smoothed RTT for a while but never the minimum. The
//! minimum rises only when every sample of the window (about two minutes at the default
//! heartbeat) is higher, i.e. when the path itself got slower.
//!
//! Flow: `poll(now)` at each tick; when a ping is due and the previous one is unanswered it
//! counts a miss, and after `misses_allowed` consecutive misses it reports [`PingAction::Dead`].
//! `on_pong` matches the outstanding `seq` and samples RTT; `on_activity` (any frame from the
//! peer) resets the miss count, since a talking peer is alive.

/// Largest RTT sample taken, ms (10 minutes: far beyond any link that survives heartbeats).
pub const MAX_RTT_SAMPLE_MS: u64 = 600_000;

/// RTT samples the windowed minimum looks back over: 8 pings, 2 minutes at the default
/// 15 s heartbeat.
pub const MIN_RTT_WINDOW: usize = 8;

/// What the link should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingAction {
    /// Nothing due.
    Idle,
    /// Send `ping {seq, t: now}`.
    Send { seq: u64 },
    /// Too many consecutive misses: close the link.
    Dead,
}

/// Heartbeat state of one link.
#[derive(Debug, Clone)]
pub struct PingTracker {
    interval_ms: u64,
    misses_allowed: u32,
    next_ping_at: u64,
    outstanding: Option<u64>,
    seq: u64,
    misses: u32,
    srtt_x8: Option<u64>,
    /// The last samples (ring), `samples` of them valid.
    recent: [u64; MIN_RTT_WINDOW],
    samples: usize,
}

impl PingTracker {
    /// A tracker whose first ping is due at `now`.
    pub fn new(now: u64, interval_ms: u64, misses_allowed: u32) -> Self {
        PingTracker {
            interval_ms: interval_ms.max(1),
            misses_allowed: misses_allowed.max(1),
            next_ping_at: now,
            outstanding: None,
            seq: 0,
            misses: 0,
            srtt_x8: None,
            recent: [0; MIN_RTT_WINDOW],
            samples: 0,
        }
    }

    /// Next time `poll` has something to do.
    pub fn deadline(&self) -> u64 {
        self.next_ping_at
    }

    /// Advance to `now`. `jitter` (any value) shortens the next interval by up to 10 %.
    pub fn poll(&mut self, now: u64, jitter: u64) -> PingAction {
        if now < self.next_ping_at {
            return PingAction::Idle;
        }
        if self.outstanding.is_some() {
            self.misses += 1;
            if self.misses >= self.misses_allowed {
                return PingAction::Dead;
            }
        }
        self.seq += 1;
        self.outstanding = Some(self.seq);
        let spread = self.interval_ms / 10 + 1;
        self.next_ping_at = now + self.interval_ms - (jitter % spread).min(self.interval_ms - 1);
        PingAction::Send { seq: self.seq }
    }

    /// A pong arrived; returns the RTT sample if it answers the outstanding ping.
    pub fn on_pong(&mut self, now: u64, seq: u64, t: u64) -> Option<u64> {
        if self.outstanding != Some(seq) {
            return None;
        }
        self.outstanding = None;
        self.misses = 0;
        // `t` is our own clock echoed by the peer, but the peer may lie: clamp the sample so
        // the fixed-point average below can never overflow.
        let rtt = now.saturating_sub(t).min(MAX_RTT_SAMPLE_MS);
        self.srtt_x8 = Some(match self.srtt_x8 {
            None => rtt * 8,
            // srtt += (rtt - srtt) / 8, in ×8 fixed point: srtt8 = srtt8 - srtt8/8 + rtt
            Some(s) => s - s / 8 + rtt,
        });
        self.recent[self.samples % MIN_RTT_WINDOW] = rtt;
        self.samples += 1;
        Some(rtt)
    }

    /// Any frame from the peer proves it alive.
    pub fn on_activity(&mut self) {
        self.misses = 0;
    }

    /// Smoothed RTT in ms, once measured.
    pub fn srtt_ms(&self) -> Option<u64> {
        self.srtt_x8.map(|s| (s + 4) / 8)
    }

    /// The least RTT of the last [`MIN_RTT_WINDOW`] samples, ms, once measured.
    pub fn min_rtt_ms(&self) -> Option<u64> {
        let n = self.samples.min(MIN_RTT_WINDOW);
        self.recent[..n].iter().copied().min()
    }

    /// Whether a whole window of samples has been taken, so [`PingTracker::min_rtt_ms`] is the
    /// path's latency and not the luck of the first few pongs (a link comes up while the mesh
    /// is busiest: convergence, reconnect storms).
    pub fn window_full(&self) -> bool {
        self.samples >= MIN_RTT_WINDOW
    }

    /// Consecutive misses so far.
    pub fn misses(&self) -> u32 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_misses_mark_the_link_dead_after_the_configured_count() {
        let mut p = PingTracker::new(0, 1_000, 3);
        assert_eq!(p.poll(0, 0), PingAction::Send { seq: 1 });
        assert_eq!(p.poll(999, 0), PingAction::Idle);
        assert_eq!(p.poll(1_000, 0), PingAction::Send { seq: 2 });
        assert_eq!(p.poll(2_000, 0), PingAction::Send { seq: 3 });
        assert_eq!(p.misses(), 2);
        assert_eq!(p.poll(3_000, 0), PingAction::Dead);
    }

    #[test]
    fn a_pong_resets_misses_and_smooths_rtt() {
        let mut p = PingTracker::new(0, 1_000, 3);
        let PingAction::Send { seq } = p.poll(0, 0) else {
            panic!()
        };
        assert_eq!(p.on_pong(80, seq, 0), Some(80));
        assert_eq!(p.srtt_ms(), Some(80));
        let PingAction::Send { seq } = p.poll(1_000, 0) else {
            panic!()
        };
        assert_eq!(
            p.on_pong(1_000, seq + 1, 1_000),
            None,
            "unknown seq ignored"
        );
        assert_eq!(p.on_pong(1_160, seq, 1_000), Some(160));
        assert_eq!(p.srtt_ms(), Some(90), "80 + (160 - 80) / 8");
        assert_eq!(p.misses(), 0);
    }

    #[test]
    fn a_lying_pong_cannot_overflow_the_average() {
        let mut p = PingTracker::new(0, 1_000, 3);
        for round in 0..20u64 {
            let now = round * 1_000;
            let PingAction::Send { seq } = p.poll(now, 0) else {
                panic!()
            };
            // t = 0 from a peer at a huge clock reading: the sample is clamped.
            assert!(p.on_pong(u64::MAX - 1, seq, 0).is_some());
        }
        assert_eq!(p.srtt_ms(), Some(MAX_RTT_SAMPLE_MS));
    }

    #[test]
    fn the_windowed_minimum_ignores_spikes_and_follows_a_lasting_change() {
        let mut p = PingTracker::new(0, 1_000, 3);
        let mut now = 0;
        let mut sample = |p: &mut PingTracker, rtt: u64| {
            let PingAction::Send { seq } = p.poll(now, 0) else {
                panic!()
            };
            p.on_pong(now + rtt, seq, now);
            now += 1_000;
        };
        assert_eq!(p.min_rtt_ms(), None);
        for rtt in [2, 150, 3, 400, 2] {
            sample(&mut p, rtt);
        }
        assert_eq!(p.min_rtt_ms(), Some(2), "spikes never move the minimum");
        assert!(
            p.srtt_ms().unwrap_or(0) > 50,
            "while the average follows them"
        );
        for _ in 0..MIN_RTT_WINDOW {
            sample(&mut p, 80);
        }
        assert_eq!(
            p.min_rtt_ms(),
            Some(80),
            "a whole window slower: the path changed"
        );
    }

    #[test]
    fn jitter_shortens_the_interval_by_at_most_a_tenth() {
        let mut p = PingTracker::new(0, 1_000, 3);
        p.poll(0, u64::MAX);
        assert!((900..=1_000).contains(&p.deadline()));
    }
}

//! Per-link heartbeat and liveness: when to ping, when the peer has been silent long enough to
//! be suspected and then declared dead, the smoothed RTT (EWMA α = 1/8 as RFC 6298's SRTT, kept
//! ×8 in integers) and the windowed minimum RTT (the least of the last [`MIN_RTT_WINDOW`]
//! samples).
//!
//! # Liveness
//! A peer is judged by *silence*, the time since anything arrived from it (a frame, or bytes of
//! a large frame still arriving, which the shell reports as activity), not by counting lost
//! pings: a pong that is late behind a big transfer still leaves the link talking. With the
//! timeout `T = interval × misses` (3.75 s by default), scaled by the node's local health
//! ([`crate::mesh::health`]: an overloaded node gives its peers longer):
//! - silence ≥ `T/2`: [`PingAction::Suspect`], once per silent spell: the core asks other
//!   neighbours whether they still hear the peer (an indirect probe, as SWIM does);
//! - silence ≥ `T`: [`PingAction::Dead`].
//!
//! Pings go out every `interval` regardless (they are what the peer hears from us and what RTT
//! is measured with). `forgive` moves the silence clock forward by the time our own node was
//! stalled: a peer is never blamed for what we could not hear while we were not running.
//!
//! # RTT
//! The minimum is what records advertise: queueing in a busy process or a congested path only
//! ever adds delay, so a spike moves the smoothed RTT for a while but never the minimum. The
//! minimum rises only when every sample of the window is higher, i.e. when the path itself got
//! slower.
//!
//! Flow: `poll(now, jitter, scale)` at each tick; `on_pong` matches the outstanding `seq` and
//! samples RTT; `on_activity` (anything from the peer) restarts the silence clock.

/// Largest RTT sample taken, ms (10 minutes: far beyond any link that survives heartbeats).
pub const MAX_RTT_SAMPLE_MS: u64 = 600_000;

/// Slots the windowed minimum looks back over; each slot keeps the least sample taken during
/// [`MIN_RTT_SLOT_MS`]: 8 × 15 s = 2 minutes, whatever the heartbeat interval (a 1 s heartbeat
/// must not make the advertised RTT 15 times more jumpy than 0.1.8's 15 s one did).
pub const MIN_RTT_WINDOW: usize = 8;

/// Length of one slot of the windowed minimum, ms (at least one sample per slot: a slower
/// heartbeat makes every sample its own slot).
pub const MIN_RTT_SLOT_MS: u64 = 15_000;

/// What the link should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingAction {
    /// Nothing due.
    Idle,
    /// Send `ping {seq, t: now}`.
    Send { seq: u64 },
    /// Silent for half the timeout: probe the peer through other links (once per silent spell).
    Suspect,
    /// Silent for the whole timeout: close the link.
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
    /// When anything last arrived from the peer (or the link came up).
    last_heard: u64,
    /// `Suspect` was reported for the current silent spell.
    suspected: bool,
    srtt_x8: Option<u64>,
    /// The least sample of each of the last slots (ring); `slots` of them filled, the newest at
    /// `(slots - 1) % MIN_RTT_WINDOW`, opened at `slot_started`.
    recent: [u64; MIN_RTT_WINDOW],
    slots: usize,
    slot_started: u64,
}

impl PingTracker {
    /// A tracker whose first ping is due at `now`; the peer counts as heard at `now`.
    pub fn new(now: u64, interval_ms: u64, misses_allowed: u32) -> Self {
        PingTracker {
            interval_ms: interval_ms.max(1),
            misses_allowed: misses_allowed.max(1),
            next_ping_at: now,
            outstanding: None,
            seq: 0,
            last_heard: now,
            suspected: false,
            srtt_x8: None,
            recent: [0; MIN_RTT_WINDOW],
            slots: 0,
            slot_started: 0,
        }
    }

    /// Silence after which the peer is dead, at local-health `scale` (≥ 1).
    pub fn timeout_ms(&self, scale: u64) -> u64 {
        self.interval_ms
            .saturating_mul(u64::from(self.misses_allowed))
            .saturating_mul(scale.max(1))
    }

    /// Next time `poll` has something to do at local-health `scale`.
    pub fn deadline(&self, scale: u64) -> u64 {
        let timeout = self.timeout_ms(scale);
        let next_verdict = if self.suspected {
            self.last_heard.saturating_add(timeout)
        } else {
            self.last_heard.saturating_add(timeout / 2)
        };
        self.next_ping_at.min(next_verdict)
    }

    /// Advance to `now`. `jitter` (any value) shortens the next ping interval by up to 10 %;
    /// `scale` stretches the timeout (local health, ≥ 1). Call until it returns `Idle`.
    pub fn poll(&mut self, now: u64, jitter: u64, scale: u64) -> PingAction {
        let silence = now.saturating_sub(self.last_heard);
        let timeout = self.timeout_ms(scale);
        if silence >= timeout {
            return PingAction::Dead;
        }
        if !self.suspected && silence >= timeout / 2 {
            self.suspected = true;
            return PingAction::Suspect;
        }
        if now < self.next_ping_at {
            return PingAction::Idle;
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
        self.on_activity(now);
        // `t` is our own clock echoed by the peer, but the peer may lie: clamp the sample so
        // the fixed-point average below can never overflow.
        let rtt = now.saturating_sub(t).min(MAX_RTT_SAMPLE_MS);
        self.srtt_x8 = Some(match self.srtt_x8 {
            None => rtt * 8,
            // srtt += (rtt - srtt) / 8, in ×8 fixed point: srtt8 = srtt8 - srtt8/8 + rtt
            Some(s) => s - s / 8 + rtt,
        });
        // A new slot once most of one has passed: pings come up to 10 % early (jitter), and a
        // heartbeat as slow as the slot must still give every sample a slot of its own.
        let slot_len = MIN_RTT_SLOT_MS - MIN_RTT_SLOT_MS / 8;
        if self.slots == 0 || now.saturating_sub(self.slot_started) >= slot_len {
            self.recent[self.slots % MIN_RTT_WINDOW] = rtt;
            self.slots += 1;
            self.slot_started = now;
        } else {
            let cur = &mut self.recent[(self.slots - 1) % MIN_RTT_WINDOW];
            *cur = (*cur).min(rtt);
        }
        Some(rtt)
    }

    /// Anything from the peer proves it alive: the silence clock restarts.
    pub fn on_activity(&mut self, now: u64) {
        self.suspected = false;
        self.last_heard = self.last_heard.max(now);
    }

    /// Our own node was stalled for `stall_ms` up to `now`: that time does not count as the
    /// peer's silence (it may have spoken; we were not listening).
    pub fn forgive(&mut self, now: u64, stall_ms: u64) {
        self.last_heard = self.last_heard.saturating_add(stall_ms).min(now);
        if self.suspected && now.saturating_sub(self.last_heard) < self.timeout_ms(1) / 2 {
            self.suspected = false;
        }
    }

    /// When the peer was last heard.
    pub fn last_heard(&self) -> u64 {
        self.last_heard
    }

    /// Time since the peer was last heard.
    pub fn silence_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_heard)
    }

    /// Whether the current silent spell has been reported as `Suspect`.
    pub fn suspected(&self) -> bool {
        self.suspected
    }

    /// Smoothed RTT in ms, once measured.
    pub fn srtt_ms(&self) -> Option<u64> {
        self.srtt_x8.map(|s| (s + 4) / 8)
    }

    /// The least RTT of the last [`MIN_RTT_WINDOW`] slots, ms, once measured.
    pub fn min_rtt_ms(&self) -> Option<u64> {
        let n = self.slots.min(MIN_RTT_WINDOW);
        self.recent[..n].iter().copied().min()
    }

    /// Whether a whole window of slots has been filled, so [`PingTracker::min_rtt_ms`] is the
    /// path's latency and not the luck of the first few pongs (a link comes up while the mesh
    /// is busiest: convergence, reconnect storms).
    pub fn window_full(&self) -> bool {
        self.slots >= MIN_RTT_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Poll until idle, collecting what was due.
    fn due(p: &mut PingTracker, now: u64, scale: u64) -> Vec<PingAction> {
        let mut out = Vec::new();
        for _ in 0..4 {
            match p.poll(now, 0, scale) {
                PingAction::Idle => break,
                a => out.push(a),
            }
            if out.last() == Some(&PingAction::Dead) {
                break;
            }
        }
        out
    }

    #[test]
    fn a_silent_peer_is_suspected_at_half_the_timeout_and_dead_at_the_timeout() {
        // 1 s × 4 = 4 s.
        let mut p = PingTracker::new(0, 1_000, 4);
        assert_eq!(due(&mut p, 0, 1), vec![PingAction::Send { seq: 1 }]);
        assert_eq!(due(&mut p, 999, 1), vec![]);
        assert_eq!(due(&mut p, 1_000, 1), vec![PingAction::Send { seq: 2 }]);
        assert_eq!(p.deadline(1), 2_000);
        assert_eq!(
            due(&mut p, 2_000, 1),
            vec![PingAction::Suspect, PingAction::Send { seq: 3 }]
        );
        assert_eq!(
            p.silence_ms(2_000),
            2_000,
            "nothing heard since the link came up"
        );
        assert_eq!(due(&mut p, 3_000, 1), vec![PingAction::Send { seq: 4 }]);
        assert_eq!(p.deadline(1), 4_000);
        assert_eq!(due(&mut p, 3_999, 1), vec![]);
        assert_eq!(due(&mut p, 4_000, 1), vec![PingAction::Dead]);
    }

    #[test]
    fn any_activity_restarts_the_silence_clock_and_the_suspicion() {
        let mut p = PingTracker::new(0, 1_000, 4);
        due(&mut p, 0, 1);
        due(&mut p, 1_000, 1);
        assert_eq!(due(&mut p, 2_000, 1)[0], PingAction::Suspect);
        // A chunk of a big transfer arrives: no pong yet, but the peer talks.
        p.on_activity(3_500);
        assert!(!p.suspected());
        assert_eq!(p.silence_ms(3_500), 0);
        assert_eq!(due(&mut p, 4_000, 1), vec![PingAction::Send { seq: 4 }]);
        assert_eq!(p.deadline(1), 5_000, "next ping; suspicion at 5.5 s");
        assert_eq!(
            due(&mut p, 5_500, 1),
            vec![PingAction::Suspect, PingAction::Send { seq: 5 }]
        );
        assert_eq!(due(&mut p, 7_499, 1)[..], [PingAction::Send { seq: 6 }]);
        assert_eq!(due(&mut p, 7_500, 1), vec![PingAction::Dead]);
    }

    #[test]
    fn local_health_scales_the_timeout() {
        let mut p = PingTracker::new(0, 1_000, 4);
        assert_eq!(p.timeout_ms(3), 12_000);
        p.on_activity(0);
        assert!(!due(&mut p, 4_000, 3).contains(&PingAction::Dead));
        assert!(due(&mut p, 11_999, 3)
            .iter()
            .all(|a| *a != PingAction::Dead));
        assert_eq!(due(&mut p, 12_000, 3), vec![PingAction::Dead]);
    }

    #[test]
    fn our_own_stall_is_forgiven_not_counted_as_the_peers_silence() {
        let mut p = PingTracker::new(0, 1_000, 4);
        due(&mut p, 0, 1);
        // We were stopped from 500 ms to 10.5 s: the peer may have talked all along.
        p.forgive(10_500, 10_000);
        assert_eq!(p.silence_ms(10_500), 500);
        assert_eq!(due(&mut p, 10_500, 1), vec![PingAction::Send { seq: 2 }]);
        // Forgiveness never puts the clock in the future.
        p.forgive(10_600, 1_000_000);
        assert_eq!(p.silence_ms(10_600), 0);
    }

    #[test]
    fn a_0_1_8_heartbeat_keeps_its_45_second_timeout() {
        let mut p = PingTracker::new(0, 15_000, 3);
        assert_eq!(p.timeout_ms(1), 45_000);
        due(&mut p, 0, 1);
        assert!(due(&mut p, 44_999, 1)
            .iter()
            .all(|a| *a != PingAction::Dead));
        assert_eq!(due(&mut p, 45_000, 1), vec![PingAction::Dead]);
    }

    #[test]
    fn a_pong_is_the_peer_heard_and_smooths_rtt() {
        let mut p = PingTracker::new(0, 1_000, 3);
        let PingAction::Send { seq } = p.poll(0, 0, 1) else {
            panic!()
        };
        assert_eq!(p.on_pong(80, seq, 0), Some(80));
        assert_eq!(p.srtt_ms(), Some(80));
        let PingAction::Send { seq } = p.poll(1_000, 0, 1) else {
            panic!()
        };
        assert_eq!(
            p.on_pong(1_000, seq + 1, 1_000),
            None,
            "unknown seq ignored"
        );
        assert_eq!(p.on_pong(1_160, seq, 1_000), Some(160));
        assert_eq!(p.srtt_ms(), Some(90), "80 + (160 - 80) / 8");
        assert_eq!(p.silence_ms(1_160), 0, "a pong is the peer heard");
    }

    #[test]
    fn a_lying_pong_cannot_overflow_the_average() {
        let mut p = PingTracker::new(0, 1_000, 3);
        for round in 0..20u64 {
            let now = round * 1_000;
            p.on_activity(now);
            let PingAction::Send { seq } = p.poll(now, 0, 1) else {
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
            p.on_activity(now);
            let PingAction::Send { seq } = p.poll(now, 0, 1) else {
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
        assert!(!p.window_full(), "five samples in one 15 s slot");
        // Two minutes at 80 ms, one sample a second: the path changed.
        for _ in 0..(MIN_RTT_WINDOW as u64 * MIN_RTT_SLOT_MS / 1_000) {
            sample(&mut p, 80);
        }
        assert!(p.window_full());
        assert_eq!(p.min_rtt_ms(), Some(80), "a whole window slower");
    }

    #[test]
    fn jitter_shortens_the_interval_by_at_most_a_tenth() {
        let mut p = PingTracker::new(0, 1_000, 3);
        p.poll(0, u64::MAX, 1);
        assert!((900..=1_000).contains(&p.deadline(1)));
    }
}

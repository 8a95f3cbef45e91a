//! One live, authenticated link as the core sees it: the peer, who dialled, its heartbeat and
//! the RTT we last advertised for it in our record.
//!
//! # Advertised RTT
//! Records carry link RTTs for route weights, and every change of a record costs a flood over
//! every link of the mesh. So a record carries a *bucket*, not the measured value: buckets are
//! [`RTT_MIN_BUCKET_MS`] × 2^k (10, 20, 40, 80, … ms), the advertised value is the smallest
//! bucket ≥ the windowed minimum RTT (queueing spikes do not move it), and it moves only when
//! that minimum leaves the current
//! bucket's range by more than a quarter of it ([`Link::readvertise`]). Loopback and LAN links
//! (0-12 ms smoothed) never leave the first bucket; a WAN link's normal jitter (±20 %) never crosses one.

use super::ping::PingTracker;
use crate::proto::NodeId;

/// Shell-chosen link handle, unique among the shell's live sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// Who opened the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialled us.
    Inbound,
    /// We dialled the peer.
    Outbound,
}

/// A live link.
#[derive(Debug, Clone)]
pub struct Link {
    pub peer: NodeId,
    pub direction: Direction,
    pub ping: PingTracker,
    pub up_since: u64,
    pub last_seen: u64,
    /// RTT bucket (ms) in the last record we published; starts at [`RTT_MIN_BUCKET_MS`].
    pub advertised_rtt: u32,
    /// The indirect probe of the current silent spell, if one was sent (`core::links`).
    pub probe: Option<Probe>,
    /// The last RTT samples, late pongs included, for status percentiles.
    pub rtt_window: RttWindow,
}

/// An indirect probe about this link's silent peer: who was asked and what came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub seq: u64,
    /// Neighbours asked (they were talking when asked).
    pub asked: u8,
    /// Answers received.
    pub answered: u8,
    /// A neighbour still hears the peer: the peer is alive, this link is what failed.
    pub peer_heard: bool,
    /// The silence was already blamed on ourselves once this spell (see `mesh::health`).
    pub doubted: bool,
}

/// Heartbeats a link keeps for its RTT percentiles: 32 (40 s at the default 1.25 s heartbeat,
/// 3.2 s at a 100 ms one), 208 bytes per link: 64 cost an idle link 10 % more memory.
pub const RTT_WINDOW: usize = 32;

/// The last [`RTT_WINDOW`] heartbeats of a link: when each ping left (our clock, ms, low 32
/// bits) and its RTT once answered (ms, clamped to `u16`: 65 s is beyond any link that survives
/// its heartbeat). Unlike the heartbeat's own bookkeeping, a pong that comes after the next
/// ping went out still counts with its real RTT, and a ping not answered yet counts with its
/// age: on a congested link those are the tail the percentiles exist to show.
#[derive(Debug, Clone)]
pub struct RttWindow {
    sent: [u32; RTT_WINDOW],
    rtt: [u16; RTT_WINDOW],
    /// Pings recorded so far (the window holds the last `RTT_WINDOW` of them).
    pings: u64,
    /// The last ping's `seq` (pings are numbered consecutively).
    last: u64,
}

/// `rtt` of a ping not answered yet.
const PENDING: u16 = u16::MAX;

impl Default for RttWindow {
    fn default() -> Self {
        RttWindow {
            sent: [0; RTT_WINDOW],
            rtt: [PENDING; RTT_WINDOW],
            pings: 0,
            last: 0,
        }
    }
}

/// Percentiles of a link's recent heartbeat RTTs, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttPercentiles {
    pub p50: u64,
    pub p99: u64,
    /// Pings they were taken over (at most [`RTT_WINDOW`]), unanswered ones included.
    pub samples: usize,
}

impl RttWindow {
    /// Ping `seq` left at `now`.
    pub fn sent(&mut self, seq: u64, now: u64) {
        let i = slot(seq);
        self.sent[i] = now as u32;
        self.rtt[i] = PENDING;
        self.pings += 1;
        self.last = seq;
    }

    /// A pong echoing ping `seq` sent at `t` arrived at `now` (ignored unless that ping is in
    /// the window and not answered yet).
    pub fn answered(&mut self, seq: u64, t: u64, now: u64) {
        let i = slot(seq);
        if self.rtt[i] == PENDING && self.sent[i] == t as u32 {
            self.rtt[i] = u16::try_from(now.saturating_sub(t)).unwrap_or(PENDING - 1);
        }
    }

    /// p50 and p99 (nearest rank) at `now`, once a ping was sent; a ping not answered yet
    /// counts with its age.
    pub fn percentiles(&self, now: u64) -> Option<RttPercentiles> {
        let n = usize::try_from(self.pings)
            .unwrap_or(RTT_WINDOW)
            .min(RTT_WINDOW);
        if n == 0 {
            return None;
        }
        let mut v = [0u64; RTT_WINDOW];
        for (k, x) in v[..n].iter_mut().enumerate() {
            let i = slot(self.last.wrapping_sub(k as u64));
            *x = match self.rtt[i] {
                PENDING => u64::from((now as u32).wrapping_sub(self.sent[i])),
                r => u64::from(r),
            };
        }
        let v = &mut v[..n];
        v.sort_unstable();
        let rank = |p: usize| v[(n * p).div_ceil(100).max(1) - 1];
        Some(RttPercentiles {
            p50: rank(50),
            p99: rank(99),
            samples: n,
        })
    }
}

fn slot(seq: u64) -> usize {
    (seq % RTT_WINDOW as u64) as usize
}

/// Smallest advertised RTT bucket, ms. Wide enough that loopback and LAN links, including a
/// busy process's scheduling delays (RTT up to 12 ms), stay inside it, so such links
/// never change a record.
pub const RTT_MIN_BUCKET_MS: u32 = 10;

/// Largest advertised RTT bucket, ms (10 × 2^11 ≈ 20 s: beyond any heartbeat-surviving link).
pub const RTT_MAX_BUCKET_MS: u32 = RTT_MIN_BUCKET_MS << 11;

/// The bucket advertised for an RTT of `ms`: the smallest `10 × 2^k` ≥ `ms`.
pub fn rtt_bucket(ms: u64) -> u32 {
    let mut b = RTT_MIN_BUCKET_MS;
    while u64::from(b) < ms && b < RTT_MAX_BUCKET_MS {
        b *= 2;
    }
    b
}

impl Link {
    /// The node id of whoever dialled this link.
    pub fn dialer<'a>(&'a self, self_id: &'a str) -> &'a str {
        match self.direction {
            Direction::Inbound => &self.peer,
            Direction::Outbound => self_id,
        }
    }

    /// The bucket to advertise if the link's RTT (the windowed minimum, which queueing spikes
    /// do not move: see `ping`) has clearly left the advertised one, else `None`. Nothing moves
    /// before a whole window of samples: a new link advertises the first bucket until then. "Clearly": above the bucket by more than a quarter of it, or below the bucket
    /// beneath it by more than a quarter of that (hysteresis, so a value sitting on a boundary
    /// does not flap between two buckets).
    pub fn readvertise(&self) -> Option<u32> {
        if !self.ping.window_full() {
            return None;
        }
        let srtt = self.ping.min_rtt_ms()?;
        let cur = u64::from(self.advertised_rtt);
        let upper = cur + cur / 4;
        let lower = if self.advertised_rtt <= RTT_MIN_BUCKET_MS {
            0
        } else {
            (cur / 2) - (cur / 2) / 4
        };
        (srtt > upper || srtt < lower).then(|| rtt_bucket(srtt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ping::{PingAction, PingTracker, MIN_RTT_SLOT_MS, MIN_RTT_WINDOW};

    fn link_with_samples(advertised: u32, samples: &[u64]) -> Link {
        let mut ping = PingTracker::new(0, MIN_RTT_SLOT_MS, 3);
        let mut now = 0;
        let full = samples
            .iter()
            .cycle()
            .take(samples.len().max(MIN_RTT_WINDOW));
        for &rtt in full {
            ping.on_activity(now);
            let PingAction::Send { seq } = ping.poll(now, 0, 1) else {
                panic!("ping due")
            };
            ping.on_pong(now + rtt, seq, now);
            now += MIN_RTT_SLOT_MS;
        }
        Link {
            peer: "p".into(),
            direction: Direction::Outbound,
            ping,
            up_since: 0,
            last_seen: 0,
            advertised_rtt: advertised,
            probe: None,
            rtt_window: RttWindow::default(),
        }
    }

    #[test]
    fn rtt_percentiles_count_late_pongs_and_unanswered_pings_by_their_age() {
        let mut w = RttWindow::default();
        assert_eq!(w.percentiles(0), None);
        // Pings 1..=100 every 10 ms, each answered after `seq` ms.
        for seq in 1..=100u64 {
            w.sent(seq, seq * 10);
            w.answered(seq, seq * 10, seq * 10 + seq);
        }
        // The last 32 pings (69..=100).
        let p = w.percentiles(1_000).unwrap();
        assert_eq!((p.p50, p.p99, p.samples), (84, 100, RTT_WINDOW));
        // A pong for a ping already out of the window, or with another time, changes nothing.
        w.answered(5, 50, 2_000);
        w.answered(100, 999, 2_000);
        assert_eq!(w.percentiles(1_000).unwrap().p99, 100);
        // 32 pings to a congested peer: answered late (after the next ones left), or not yet.
        for seq in 101..=132u64 {
            w.sent(seq, seq * 10);
        }
        for seq in 101..=116u64 {
            w.answered(seq, seq * 10, seq * 10 + 500);
        }
        // At 1700 ms the unanswered ones (117..=132) are 380..=530 ms old.
        let p = w.percentiles(1_700).unwrap();
        assert_eq!((p.p50, p.p99), (500, 530));
        // Much later they dominate.
        assert_eq!(w.percentiles(10_000).unwrap().p99, 10_000 - 1170);
    }

    #[test]
    fn rtt_buckets_double_from_five_ms_and_are_capped() {
        assert_eq!(rtt_bucket(0), 10);
        assert_eq!(rtt_bucket(10), 10);
        assert_eq!(rtt_bucket(11), 20);
        assert_eq!(rtt_bucket(80), 80);
        assert_eq!(rtt_bucket(81), 160);
        assert_eq!(rtt_bucket(u64::MAX), RTT_MAX_BUCKET_MS);
    }

    #[test]
    fn loopback_jitter_never_leaves_the_first_bucket() {
        for samples in [&[0u64, 1, 0, 2, 4, 1][..], &[3, 3, 8, 4, 12], &[12]] {
            let l = link_with_samples(RTT_MIN_BUCKET_MS, samples);
            assert_eq!(l.readvertise(), None, "{samples:?}");
        }
    }

    #[test]
    fn a_value_on_a_bucket_boundary_does_not_flap() {
        // Advertised 80 (for 41-80 ms); readings around 80 and around 40 stay put.
        for rtt in [38, 40, 41, 79, 80, 81, 100] {
            let l = link_with_samples(80, &[rtt]);
            assert_eq!(l.readvertise(), None, "rtt {rtt}");
        }
    }

    #[test]
    fn nothing_moves_before_a_whole_window_of_samples() {
        // The first pongs of a link that came up in a busy moment.
        let mut l = link_with_samples(10, &[]);
        let mut now = 0;
        for i in 0..MIN_RTT_WINDOW {
            l.ping.on_activity(now);
            let PingAction::Send { seq } = l.ping.poll(now, 0, 1) else {
                panic!()
            };
            l.ping.on_pong(now + 90, seq, now);
            now += MIN_RTT_SLOT_MS;
            if i + 1 < MIN_RTT_WINDOW {
                assert_eq!(l.readvertise(), None, "after {} samples", i + 1);
            }
        }
        assert_eq!(l.readvertise(), Some(160), "a whole window at 90 ms");
    }

    #[test]
    fn a_real_change_moves_the_bucket() {
        assert_eq!(link_with_samples(10, &[80]).readvertise(), Some(80));
        assert_eq!(link_with_samples(80, &[101]).readvertise(), Some(160));
        assert_eq!(link_with_samples(80, &[29]).readvertise(), Some(40));
        assert_eq!(link_with_samples(80, &[2]).readvertise(), Some(10));
    }
}

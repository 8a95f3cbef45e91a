//! Admission control for unauthenticated connections, and the counters the shell keeps about
//! hostile input outside the core.
//!
//! A listening node is on the public internet: anyone can open sockets to it. Before the
//! handshake, a connection holds a pre-auth slot ([`Admission::try_admit`] → [`Slot`]). Slots are
//! limited globally ([`MAX_PENDING_HANDSHAKES`]) and per source ([`MAX_PENDING_PER_SOURCE`],
//! a source being an IPv4 address or an IPv6 /64), so one address that opens sockets as fast as
//! they are closed holds at most its own few slots and the others stay free for real peers. A
//! refused socket is closed at accept, before any byte is read, and counted by reason.
//!
//! How long a slot is held is bounded by the listener (one hard deadline per connection, see
//! [`super::listener`]); what it may cost in memory by the pre-auth message limits
//! (`link::HANDSHAKE_MAX_MESSAGE`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most inbound connections that may be in TLS/upgrade/handshake at once. 64 covers a burst of
/// every peer of a large mesh reconnecting together (a handshake takes milliseconds); beyond it
/// sockets are closed at accept.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Most pending handshakes from one source (an IPv4 address, or an IPv6 /64: one host or one
/// site's prefix, which a single attacker gets whole). 8 because a source is one gateway or a
/// NAT with a few behind it and a handshake takes milliseconds, so 8 at once is already a
/// reconnect storm; and 8 × 8 = 64, so filling the global cap takes 8 distinct sources, while
/// one address alone, however fast it reopens sockets, leaves 56 slots to everyone else.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// Why a connection was refused or cut before it authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreauthReject {
    /// Every pre-auth slot was taken ([`MAX_PENDING_HANDSHAKES`]).
    GlobalFull,
    /// The source already held [`MAX_PENDING_PER_SOURCE`] slots.
    PerSource,
    /// The connection was cut at its hard pre-auth deadline (TLS, upgrade, handshake and the
    /// rejection's own writes did not end in time: a peer that stops reading, a stalled actor).
    Deadline,
}

impl PreauthReject {
    /// The key in `clawmatrix.status` (`mesh.preauthRejects`).
    pub fn as_str(self) -> &'static str {
        match self {
            PreauthReject::GlobalFull => "globalFull",
            PreauthReject::PerSource => "perSource",
            PreauthReject::Deadline => "deadline",
        }
    }
}

/// Counters of hostile or broken input the shell handles itself (the core never sees these
/// connections or frames). Lock-free: bumped from connection tasks and the accept loop, read by
/// `status()`.
#[derive(Debug, Default)]
pub struct ShellCounters {
    pending: AtomicU64,
    global_full: AtomicU64,
    per_source: AtomicU64,
    deadline: AtomicU64,
    frame_too_large: AtomicU64,
    bad_framing: AtomicU64,
}

/// Why a link was closed with 4010 `protocol_error` by the shell's framing after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolClose {
    /// A message announced (or reassembled) beyond `MAX_FRAME_BYTES`.
    FrameTooLarge,
    /// A WebSocket framing violation (RFC 6455: unmasked client frame, reserved bits, unknown
    /// opcode, bad control frame, bad fragmentation, invalid UTF-8 text).
    BadFraming,
}

impl ProtocolClose {
    /// The key in `clawmatrix.status` (`mesh.protocolErrorCloses`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolClose::FrameTooLarge => "frameTooLarge",
            ProtocolClose::BadFraming => "badFraming",
        }
    }
}

impl ShellCounters {
    /// Count one; returns the count for `why` so far (1 for the first).
    pub fn preauth_reject(&self, why: PreauthReject) -> u64 {
        let c = match why {
            PreauthReject::GlobalFull => &self.global_full,
            PreauthReject::PerSource => &self.per_source,
            PreauthReject::Deadline => &self.deadline,
        };
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn protocol_close(&self, why: ProtocolClose) {
        let c = match why {
            ProtocolClose::FrameTooLarge => &self.frame_too_large,
            ProtocolClose::BadFraming => &self.bad_framing,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections holding a pre-auth slot now.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Pre-auth rejections by reason (status keys).
    pub fn preauth_rejects(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            (PreauthReject::GlobalFull, &self.global_full),
            (PreauthReject::PerSource, &self.per_source),
            (PreauthReject::Deadline, &self.deadline),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_str(), v.load(Ordering::Relaxed)))
    }

    /// 4010 closes by reason (status keys).
    pub fn protocol_closes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            (ProtocolClose::FrameTooLarge, &self.frame_too_large),
            (ProtocolClose::BadFraming, &self.bad_framing),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_str(), v.load(Ordering::Relaxed)))
    }
}

/// The source a pre-auth slot is charged to: an IPv4 address, or the /64 of an IPv6 address
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The pre-auth slots of one listener.
#[derive(Debug)]
pub struct Admission {
    global: usize,
    per_source: usize,
    /// Slots held: total and per source (entries removed at 0, so the map holds only sources
    /// with a pending handshake: at most `global` entries). A std `Mutex`: held for a map
    /// update, never across an `.await`.
    held: Mutex<(usize, HashMap<Source, usize>)>,
    counters: Arc<ShellCounters>,
}

/// One pre-auth slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: Source,
}

impl Admission {
    pub fn new(global: usize, per_source: usize, counters: Arc<ShellCounters>) -> Arc<Self> {
        Arc::new(Admission {
            global,
            per_source,
            held: Mutex::new((0, HashMap::new())),
            counters,
        })
    }

    /// Take a slot for a connection from `ip`, or say (and count) why not, with the count of
    /// that reason so far. The per-source limit is checked first: a source over its own limit
    /// is `perSource` even when the listener is also full, so the counters name the address
    /// that floods.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, (PreauthReject, u64)> {
        let source = Source::of(ip);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *held;
        let mine = by_source.get(&source).copied().unwrap_or(0);
        let refused = if mine >= self.per_source {
            Some(PreauthReject::PerSource)
        } else if *total >= self.global {
            Some(PreauthReject::GlobalFull)
        } else {
            None
        };
        if let Some(why) = refused {
            drop(held);
            return Err((why, self.counters.preauth_reject(why)));
        }
        *total += 1;
        by_source.insert(source, mine + 1);
        drop(held);
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            admission: Arc::clone(self),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut held = a.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
        drop(held);
        a.counters.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_own_slots_and_no_more() {
        let c = Arc::new(ShellCounters::default());
        let a = Admission::new(4, 2, Arc::clone(&c));
        let s1 = a.try_admit(ip("10.0.0.1")).unwrap();
        let _s2 = a.try_admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.try_admit(ip("10.0.0.1")).unwrap_err().0,
            PreauthReject::PerSource
        );
        // Another address is still admitted; a released slot is reusable.
        let _s3 = a.try_admit(ip("10.0.0.2")).unwrap();
        drop(s1);
        let _s4 = a.try_admit(ip("10.0.0.1")).unwrap();
        let _s5 = a.try_admit(ip("10.0.0.3")).unwrap();
        assert_eq!(
            a.try_admit(ip("10.0.0.4")).unwrap_err().0,
            PreauthReject::GlobalFull
        );
        assert_eq!(c.pending(), 4);
        let rejects: Vec<_> = c.preauth_rejects().collect();
        assert_eq!(
            rejects,
            vec![("globalFull", 1), ("perSource", 1), ("deadline", 0)]
        );
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_source_and_mapped_ipv4_is_ipv4() {
        let c = Arc::new(ShellCounters::default());
        let a = Admission::new(64, 1, c);
        let _s = a.try_admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            a.try_admit(ip("2001:db8:1:2:ffff::9")).unwrap_err().0,
            PreauthReject::PerSource
        );
        let _t = a.try_admit(ip("2001:db8:1:3::1")).unwrap();
        let _u = a.try_admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            a.try_admit(ip("::ffff:192.0.2.7")).unwrap_err().0,
            PreauthReject::PerSource
        );
    }

    #[test]
    fn dropped_slots_leave_no_state_behind() {
        let c = Arc::new(ShellCounters::default());
        let a = Admission::new(64, 8, Arc::clone(&c));
        let slots: Vec<_> = (0..50u8)
            .map(|i| a.try_admit(IpAddr::from([10, 0, 1, i])).unwrap())
            .collect();
        assert_eq!(c.pending(), 50);
        drop(slots);
        assert_eq!(c.pending(), 0);
        let held = a.held.lock().unwrap();
        assert_eq!(held.0, 0);
        assert!(held.1.is_empty());
    }
}

//! Single-node and two-node behaviour of the mesh core driven by hand: admission, duplicate
//! links, decode-error accounting, spoofed link-local frames, shutdown, limits.

use clawmatrix::mesh::{Direction, LinkId, LocalInfo, Mesh, MeshEvent, Output, SendError};
use clawmatrix::proto::{encode, AgentInfo, Body, FrameId, Header, RejectCode};

#[path = "sim/mod.rs"]
#[allow(unused)]
mod sim;
use sim::sim_config;

fn mesh(id: &str) -> Mesh {
    Mesh::new(sim_config(id, 1, 42), LocalInfo::default(), 0)
}

/// Nodes "a" and "b" linked on link 1, records exchanged.
fn linked_pair() -> (Mesh, Mesh) {
    let mut a = mesh("a");
    let mut b = mesh("b");
    a.handle_link_up(0, LinkId(1), "b".into(), Direction::Outbound);
    b.handle_link_up(0, LinkId(1), "a".into(), Direction::Inbound);
    pump(&mut a, &mut b, 0);
    (a, b)
}

/// A gossip frame from "b" carrying the signed record `wire`, with frame id `id`.
fn gossip_from_b(id: u8, wire: &[u8]) -> Vec<u8> {
    let h = Header {
        v: 1,
        id: FrameId([id; 16]),
        src: "b".into(),
        dst: None,
        ttl: 1,
        hops: 0,
        ts: 0,
        body: Body::Gossip { records: 1 },
    };
    encode(&h, wire).expect("encodes")
}

/// Deliver every frame `a` and `b` send each other over link 1 until both are quiet: records
/// exchanged, so each can seal frames for the other.
fn pump(a: &mut Mesh, b: &mut Mesh, now: u64) {
    for _ in 0..100 {
        a.handle_tick(now);
        b.handle_tick(now);
        let mut moved = false;
        for a_to_b in [true, false] {
            let (from, to) = if a_to_b {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            for o in std::iter::from_fn(|| from.poll_output()).collect::<Vec<_>>() {
                let bytes = match o {
                    Output::Send { bytes, .. } => bytes,
                    Output::SendShared { bytes, .. } => bytes.to_vec(),
                    _ => continue,
                };
                moved = true;
                to.handle_data(now, LinkId(1), &bytes);
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the pair never went quiet");
}

fn drain(m: &mut Mesh) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn closes(out: &[Output]) -> Vec<(LinkId, u16)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { link, code, .. } => Some((*link, *code)),
            _ => None,
        })
        .collect()
}

#[test]
fn admit_refuses_self_duplicates_and_capacity() {
    let mut cfg = sim_config("a", 1, 1);
    cfg.max_links = 1;
    let mut m = Mesh::new(cfg, LocalInfo::default(), 0);
    let key = |n: &str| sim::sim_keys(n, 0).0.public();
    assert_eq!(m.admit("a", &key("a")), Err(RejectCode::SelfId));
    assert_eq!(m.admit("b", &key("b")), Ok(()));
    m.handle_link_up_keyed(0, LinkId(1), "b".into(), key("b"), Direction::Inbound);
    assert_eq!(m.admit("b", &key("b")), Err(RejectCode::DuplicateNode));
    assert_eq!(
        m.admit("b", &key("c")),
        Err(RejectCode::KeyChanged),
        "b's key was bound at link up"
    );
    assert_eq!(m.admit("c", &key("c")), Err(RejectCode::Capacity));
    m.note_handshake_reject(RejectCode::BadMac);
    m.note_handshake_reject(RejectCode::BadMac);
    assert_eq!(m.stats().handshake_rejects.get("bad_mac"), Some(&2));
}

#[test]
fn simultaneous_links_settle_on_the_one_dialed_by_the_smaller_id() {
    // a and b dial each other at once; each side sees its own link first.
    let mut a = mesh("a");
    let mut b = mesh("b");
    a.handle_link_up(0, LinkId(1), "b".into(), Direction::Outbound); // a dialed (kept)
    b.handle_link_up(0, LinkId(2), "a".into(), Direction::Outbound); // b dialed
    drain(&mut a);
    drain(&mut b);
    a.handle_link_up(1, LinkId(2), "b".into(), Direction::Inbound);
    b.handle_link_up(1, LinkId(1), "a".into(), Direction::Inbound);
    assert_eq!(closes(&drain(&mut a)), [(LinkId(2), 4003)]);
    assert_eq!(closes(&drain(&mut b)), [(LinkId(2), 4003)]);
    assert_eq!(a.link_peer(LinkId(1)), Some("b"));
    assert_eq!(b.link_peer(LinkId(1)), Some("a"));
}

#[test]
fn garbage_is_counted_by_code_and_oversized_frames_close_the_link() {
    let mut m = mesh("a");
    m.handle_link_up(0, LinkId(1), "b".into(), Direction::Inbound);
    drain(&mut m);
    m.handle_data(1, LinkId(1), b"\x00\x00");
    m.handle_data(1, LinkId(1), b"{}\x00\x00\x00\x02");
    m.handle_data(1, LinkId(9), b"whatever");
    let s = m.stats();
    assert_eq!(s.decode_errors, 2);
    assert_eq!(s.decode_errors_by_code.get("truncated"), Some(&1));
    assert_eq!(s.decode_errors_by_code.get("bad_header"), Some(&1));
    assert_eq!(s.unknown_link, 1);
    let big = vec![0u8; clawmatrix::proto::MAX_FRAME_BYTES + 1];
    m.handle_data(2, LinkId(1), &big);
    let out = drain(&mut m);
    assert_eq!(closes(&out), [(LinkId(1), 4010)]);
    assert_eq!(m.link_count(), 0);
}

#[test]
fn link_local_frames_must_come_from_the_link_peer() {
    let mut m = mesh("a");
    m.handle_link_up(0, LinkId(1), "b".into(), Direction::Inbound);
    drain(&mut m);
    let h = Header {
        v: 1,
        id: FrameId([1; 16]),
        src: "mallory".into(),
        dst: None,
        ttl: 8,
        hops: 0,
        ts: 0,
        body: Body::Leave {
            node: "c".into(),
            incarnation: 9,
            sig: clawmatrix::proto::Sig64([0; 64]),
        },
    };
    m.handle_data(1, LinkId(1), &encode(&h, &[]).expect("encodes"));
    assert_eq!(m.stats().dropped_spoofed, 1);
}

#[test]
fn pings_are_answered_and_the_first_ping_goes_out_at_link_up() {
    let mut m = mesh("a");
    m.handle_link_up(0, LinkId(1), "b".into(), Direction::Inbound);
    assert_eq!(m.poll_timeout(), Some(0), "deferred work: tick now");
    m.handle_tick(0);
    let out = drain(&mut m);
    let pings = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { bytes, .. } => clawmatrix::proto::decode(bytes).ok(),
            _ => None,
        })
        .filter(|f| matches!(f.header.body, Body::Ping { .. }))
        .count();
    assert_eq!(pings, 1);
    let next = m.poll_timeout().expect("a timer");
    assert!(next > 0 && next <= 15_000);
}

#[test]
fn shutdown_sends_leave_then_closes_normally() {
    let mut m = mesh("a");
    m.handle_link_up(0, LinkId(1), "b".into(), Direction::Outbound);
    m.handle_tick(0);
    drain(&mut m);
    m.shutdown(5);
    let out = drain(&mut m);
    let leave = out.iter().position(|o| match o {
        Output::Send { bytes, .. } => matches!(
            clawmatrix::proto::decode(bytes).map(|f| f.header.body),
            Ok(Body::Leave { .. })
        ),
        _ => false,
    });
    let close = out
        .iter()
        .position(|o| matches!(o, Output::Close { code: 1000, .. }));
    assert!(leave.is_some() && close.is_some() && leave < close);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Event(MeshEvent::PeerDown { .. }))));
    assert_eq!(
        m.send(
            6,
            "b".into(),
            Body::Cancel {
                call_id: clawmatrix::proto::CallId([0; 16]),
                reason: String::new()
            },
            vec![]
        ),
        Err(SendError::ShutDown)
    );
}

#[test]
fn send_refuses_self_link_local_and_unknown_destinations() {
    let mut m = mesh("a");
    let cancel = Body::Cancel {
        call_id: clawmatrix::proto::CallId([0; 16]),
        reason: String::new(),
    };
    assert_eq!(
        m.send(0, "a".into(), cancel.clone(), vec![]),
        Err(SendError::ToSelf)
    );
    assert_eq!(
        m.send(0, "b".into(), Body::Ping { seq: 1, t: 0 }, vec![]),
        Err(SendError::InvalidBody)
    );
    assert_eq!(
        m.send(0, "zed".into(), cancel, vec![])
            .map_err(|e| e.code()),
        Err("no_route")
    );
}

#[test]
fn calls_are_bounded() {
    let mut cfg = sim_config("a", 1, 1);
    cfg.max_inflight_calls = 2;
    let mut m = Mesh::new(cfg, LocalInfo::default(), 0);
    let mut b = mesh("b");
    m.handle_link_up(0, LinkId(1), "b".into(), Direction::Outbound);
    b.handle_link_up(0, LinkId(1), "a".into(), Direction::Inbound);
    pump(&mut m, &mut b, 0);
    for _ in 0..2 {
        m.start_call(0, "b".into(), "x".into(), vec![], 1_000)
            .expect("room");
    }
    assert_eq!(
        m.start_call(0, "b".into(), "x".into(), vec![], 1_000),
        Err(SendError::TooManyCalls(2))
    );
}

#[test]
fn an_oversized_own_record_is_refused() {
    let mut m = mesh("a");
    let agents = (0..2_000)
        .map(|i| AgentInfo {
            id: format!("agent-{i}"),
            description: "x".repeat(20),
            tags: vec![],
        })
        .collect();
    let e = m
        .update_local(
            0,
            LocalInfo {
                agents,
                ..LocalInfo::default()
            },
        )
        .expect_err("too big");
    assert_eq!(e.code(), "record_too_large");
    assert_eq!(m.own_record().agents.len(), 0);
}

#[test]
fn a_replayed_frame_straight_from_its_source_is_refused_by_the_end_to_end_window() {
    // Frames for us straight from their source skip the relay dedup cache; the replay window
    // of the end-to-end session is what refuses a copy.
    let (mut a, mut b) = linked_pair();
    a.start_call(1, "b".into(), "x".into(), b"once".to_vec(), 1_000)
        .expect("starts");
    let sent: Vec<Vec<u8>> = drain(&mut a)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    for _ in 0..2 {
        b.handle_data(2, LinkId(1), &sent[0]);
    }
    let delivered = drain(&mut b)
        .iter()
        .filter(|o| matches!(o, Output::Deliver { .. }))
        .count();
    assert_eq!(delivered, 1, "delivered once");
    assert_eq!(b.stats().e2e_refused.get("replay"), Some(&1));
    assert_eq!(b.stats().dropped_dup, 0, "not the dedup cache's doing");
}

#[test]
fn a_record_with_another_key_for_a_known_node_is_refused_and_reported_once() {
    use clawmatrix::proto::signed::SignedRecord;
    let (mut a, b) = linked_pair();
    // b "reinstalled": a record for b, newer, signed by a new key.
    let new_key = sim::sim_keys("b-reinstalled", 1).0;
    let mut record = b.own_record().clone();
    record.version += 10;
    record.key = new_key.public();
    let wire = SignedRecord::sign(record, &new_key).expect("signs").wire;
    drain(&mut a);
    a.handle_data(1, LinkId(1), &gossip_from_b(1, &wire));
    a.handle_data(2, LinkId(1), &gossip_from_b(2, &wire));
    let events: Vec<MeshEvent> = drain(&mut a)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(e @ MeshEvent::KeyRefused { .. }) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "reported once: {events:?}");
    assert_eq!(a.stats().records_refused.get("key_changed"), Some(&2));
    let row = a
        .trust_rows()
        .into_iter()
        .find(|r| r.node == "b")
        .expect("b trusted");
    assert_eq!(
        row.key,
        Some(sim::sim_keys("b", 0).0.public()),
        "the old key stays"
    );
    assert_eq!(row.conflict.map(|c| c.count), Some(2));
    // After an operator's reset, the new key is trusted on first use.
    assert!(a.reset_trust("b"));
    let mut record = b.own_record().clone();
    record.version += 20;
    record.key = new_key.public();
    let wire = SignedRecord::sign(record, &new_key).expect("signs").wire;
    a.handle_data(3, LinkId(1), &gossip_from_b(3, &wire));
    assert!(drain(&mut a).iter().any(|o| matches!(
        o,
        Output::Event(MeshEvent::KeyLearned { node, key }) if node == "b" && *key == new_key.public()
    )));
}

#[test]
fn revoked_and_pinned_keys_decide_admission() {
    use clawmatrix::identity::Fingerprint;
    let key = |n: &str| sim::sim_keys(n, 0).0.public();
    let mut cfg = sim_config("a", 1, 1);
    cfg.revoked.insert(Fingerprint::of(&key("stolen")));
    cfg.pins.insert("p".into(), Fingerprint::of(&key("p")));
    let m = Mesh::new(cfg, LocalInfo::default(), 0);
    assert_eq!(m.admit("stolen", &key("stolen")), Err(RejectCode::Revoked));
    assert_eq!(
        m.admit("other-id", &key("stolen")),
        Err(RejectCode::Revoked)
    );
    assert_eq!(m.admit("p", &key("p")), Ok(()));
    assert_eq!(m.admit("p", &key("q")), Err(RejectCode::KeyChanged));
    assert_eq!(
        m.admit("q", &key("q")),
        Ok(()),
        "unpinned: trusted on first use"
    );
}

/// The `urgent` flag of every frame `m` queued (drained).
fn urgency(m: &mut Mesh) -> Vec<bool> {
    drain(m)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { urgent, .. } => Some(urgent),
            _ => None,
        })
        .collect()
}

#[test]
fn a_cancel_goes_urgent_only_once_its_call_was_answered_so_it_never_overtakes_the_call() {
    let (mut a, mut b) = linked_pair();
    // Unanswered: the call may still wait in the link's queue, so its cancel queues behind it.
    let early = a
        .start_call(1, "b".into(), "x".into(), vec![], 10_000)
        .expect("starts");
    assert_eq!(urgency(&mut a), [false], "the call");
    assert!(a.cancel_call(1, early, "user"));
    assert_eq!(urgency(&mut a), [false], "the cancel of an unanswered call");
    // Answered with a chunk: credit and cancel go urgent.
    let call = a
        .start_call(2, "b".into(), "x".into(), vec![], 10_000)
        .expect("starts");
    drain(&mut a);
    b.send(
        2,
        "a".into(),
        Body::Chunk {
            call_id: call,
            seq: 0,
        },
        vec![1],
    )
    .expect("b answers");
    for o in drain(&mut b) {
        if let Output::Send { bytes, urgent, .. } = o {
            assert!(!urgent, "a chunk is bulk");
            a.handle_data(3, LinkId(1), &bytes);
        }
    }
    drain(&mut a);
    assert!(a.send_credit(4, call, 32));
    assert_eq!(urgency(&mut a), [true], "the credit");
    assert!(a.cancel_call(5, call, "user"));
    assert_eq!(urgency(&mut a), [true], "the cancel of an answered call");
}

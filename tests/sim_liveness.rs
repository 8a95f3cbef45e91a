//! Failure detection in simulation, with the default heartbeat (1.25 s × 3 = 3.75 s of
//! silence): a silent node is dead within the 5 s bound everywhere; a broken link is closed
//! while its peer stays reachable through a neighbour that still hears it (indirect probe); a
//! node whose own process stalled does not accuse its peers (local health); a node whose
//! helpers go silent too doubts itself before dropping links; bytes of a big frame still
//! arriving keep a link alive.

#[path = "sim/mod.rs"]
mod sim;

use clawmatrix::config::{DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_MISSES};
use clawmatrix::mesh::{CallFailure, DownReason, MeshEvent};
use clawmatrix::proto::Body;
use sim::{node_name, Sim};

/// Silence after which a link is dead at the defaults.
const TIMEOUT: u64 = DEFAULT_HEARTBEAT_INTERVAL_MS * DEFAULT_HEARTBEAT_MISSES as u64;

fn defaults(n: usize, seed: u64) -> Sim {
    Sim::new(n, seed, |c| {
        c.heartbeat_interval_ms = DEFAULT_HEARTBEAT_INTERVAL_MS;
        c.heartbeat_misses = DEFAULT_HEARTBEAT_MISSES;
    })
}

fn heartbeat_downs(sim: &Sim, i: usize, peer: &str) -> Vec<u64> {
    sim.events_where(i, |e| {
        matches!(e, MeshEvent::PeerDown { node, reason: DownReason::HeartbeatTimeout, .. } if node == peer)
    })
    .into_iter()
    .map(|(t, _)| t)
    .collect()
}

fn unreachable_at(sim: &Sim, i: usize, peer: &str) -> Vec<u64> {
    sim.events_where(
        i,
        |e| matches!(e, MeshEvent::Unreachable { node } if node == peer),
    )
    .into_iter()
    .map(|(t, _)| t)
    .collect()
}

/// A triangle 0–1–2 with 5 ms links, converged and past its first heartbeats.
fn triangle(seed: u64) -> Sim {
    let mut sim = defaults(3, seed);
    sim.connect(0, 1, 5);
    sim.connect(0, 2, 5);
    sim.connect(1, 2, 5);
    sim.run_until_converged(30_000, 100).expect("converges");
    sim.run_for(10_000);
    sim
}

#[test]
fn a_silent_node_is_dead_everywhere_within_five_seconds_over_twenty_trials() {
    let mut worst = 0;
    for seed in 0..20 {
        let mut sim = triangle(seed);
        // Stop at a different phase of the heartbeat each trial.
        sim.run_for(seed * 61);
        let t0 = sim.now;
        sim.kill(2);
        sim.run_for(10_000);
        for i in [0, 1] {
            let down = heartbeat_downs(&sim, i, "n002");
            assert_eq!(down.len(), 1, "seed {seed}: node {i} drops n002 once");
            let detect = down[0] - t0;
            assert!(
                (TIMEOUT - DEFAULT_HEARTBEAT_INTERVAL_MS..=5_000).contains(&detect),
                "seed {seed}: node {i} took {detect} ms"
            );
            let gone = unreachable_at(&sim, i, "n002");
            assert_eq!(gone.len(), 1, "seed {seed}: n002 unreachable at node {i}");
            assert!(
                gone[0] - t0 <= 5_000,
                "seed {seed}: unreachable after {} ms",
                gone[0] - t0
            );
            worst = worst.max(gone[0] - t0);
        }
    }
    eprintln!("worst silent-node detection over 20 trials: {worst} ms");
}

#[test]
fn a_broken_link_is_closed_but_its_peer_stays_reachable_through_a_neighbour_that_hears_it() {
    let mut sim = triangle(7);
    let t0 = sim.now;
    sim.cut_silently(0, 2);
    sim.run_for(10_000);
    let down = heartbeat_downs(&sim, 0, "n002");
    assert_eq!(down.len(), 1, "the blackholed link is closed");
    assert!(down[0] - t0 <= 5_000);
    let st = sim.mesh(0).stats();
    assert!(st.probes_sent >= 1, "node 0 asked n001 about n002: {st:?}");
    assert!(st.probe_acks >= 1, "and n001 answered");
    assert_eq!(
        st.heartbeat_timeouts_peer_alive, 1,
        "n001 still heard n002, so the link failed, not the node"
    );
    assert!(sim.mesh(1).stats().probes_served >= 1);
    assert!(
        unreachable_at(&sim, 0, "n002").is_empty(),
        "n002 was never declared unreachable"
    );
    let via = sim.view(0, 2).expect("n002 known");
    assert!(
        matches!(via.state, clawmatrix::mesh::PeerState::Via { ref next_hop, .. } if next_hop == "n001"),
        "n002 is reached through n001: {:?}",
        via.state
    );
}

#[test]
fn a_stall_shorter_than_the_timeout_costs_no_link_on_either_side() {
    // Twenty phases of a 2.75 s stall: the stalled node sees it, nobody drops anybody.
    let mut stalls = 0;
    for seed in 0..20 {
        let mut sim = triangle(100 + seed);
        sim.run_for(seed * 59);
        sim.pause(0, TIMEOUT - 1_000);
        sim.run_for(15_000);
        let st = sim.mesh(0).stats();
        assert_eq!(
            st.heartbeat_timeouts, 0,
            "seed {seed}: the stalled node accused a peer: {st:?}"
        );
        assert!(heartbeat_downs(&sim, 1, "n000").is_empty(), "seed {seed}");
        assert_eq!(st.local_stalls, 1, "seed {seed}: the stall was seen");
        stalls += st.local_stalls;
    }
    assert_eq!(stalls, 20);
}

#[test]
fn a_longer_stall_is_the_stalled_nodes_fault_its_peers_drop_it_and_it_drops_nobody() {
    let mut sim = triangle(41);
    let t0 = sim.now;
    sim.pause(0, 10_000);
    sim.run_for(10_100);
    assert!(
        sim.mesh(0).local_health() >= 1,
        "just after the stall, n000 doubts itself"
    );
    sim.run_for(10_000);
    for i in [1, 2] {
        let down = heartbeat_downs(&sim, i, "n000");
        assert_eq!(down.len(), 1, "node {i} drops the silent n000");
        assert!(down[0] - t0 <= 5_000);
    }
    let st = sim.mesh(0).stats();
    assert_eq!(st.heartbeat_timeouts, 0, "n000 blames nobody: {st:?}");
    assert_eq!(st.local_stalls, 1);
    sim.run_for(60_000);
    assert_eq!(sim.mesh(0).local_health(), 0, "health comes back when calm");
}

#[test]
fn a_node_whose_helpers_go_silent_too_doubts_itself_before_dropping_its_links() {
    let mut sim = triangle(5);
    let t0 = sim.now;
    // Node 0's network fails link by link: the helper it asks is cut before it can answer.
    sim.cut_silently(0, 1);
    sim.run_for(200);
    sim.cut_silently(0, 2);
    sim.run_for(30_000);
    let st = sim.mesh(0).stats();
    assert_eq!(st.self_doubts, 1, "{st:?}");
    let first = heartbeat_downs(&sim, 0, "n001");
    assert_eq!(first.len(), 1);
    assert!(
        first[0] - t0 > TIMEOUT + DEFAULT_HEARTBEAT_INTERVAL_MS,
        "the verdict waited: {} ms",
        first[0] - t0
    );
    // The others, whose network is fine, judged at full speed.
    let by_1 = heartbeat_downs(&sim, 1, "n000");
    assert_eq!(by_1.len(), 1);
    assert!(by_1[0] - t0 <= 5_000);
}

#[test]
fn bytes_of_a_big_frame_still_arriving_keep_the_link_alive() {
    let mut sim = triangle(9);
    // Frames from n002 stop reaching n000 (a 16 MiB frame crawling over a slow path), but the
    // shell sees its bytes arrive and says so.
    let link = clawmatrix::mesh::LinkId(1);
    assert_eq!(sim.mesh(0).link_peer(link), Some(node_name(2).as_str()));
    sim.cut_silently(0, 2);
    for _ in 0..20 {
        sim.run_for(1_000);
        sim.with(0, |m, now| m.handle_link_activity(now, link));
    }
    assert!(heartbeat_downs(&sim, 0, "n002").is_empty());
    // Positive control: once the bytes stop too, the link dies within the bound.
    let t0 = sim.now;
    sim.run_for(10_000);
    let down = heartbeat_downs(&sim, 0, "n002");
    assert_eq!(down.len(), 1);
    assert!(down[0] - t0 <= 5_000);
}

#[test]
fn a_call_whose_relay_dies_fails_at_once_with_path_broken_while_a_second_relay_exists() {
    // 0 and 3 both linked to relays 1 (5 ms) and 2 (40 ms): calls go through 1.
    let mut sim = defaults(4, 11);
    sim.connect(0, 1, 5);
    sim.connect(1, 3, 5);
    sim.connect(0, 2, 40);
    sim.connect(2, 3, 40);
    sim.run_until_converged(30_000, 100).expect("converges");
    // Past a full RTT window so both relays advertise their latency.
    sim.run_for(130_000);
    let r = sim.mesh(0).routes().get("n003").cloned().expect("route");
    assert_eq!(r.next_hop, "n001");
    let id = sim
        .with(0, |m, now| {
            m.start_call(now, node_name(3), "slow".into(), vec![], 600_000)
        })
        .expect("starts");
    sim.run_for(100);
    // Relay 1 is killed: both its sockets close (kill -9).
    let t0 = sim.now;
    sim.cut(0, 1);
    sim.cut(1, 3);
    sim.kill(1);
    sim.run_for(1_000);
    let failed = sim.events_where(0, |e| matches!(e, MeshEvent::CallFailed { .. }));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(matches!(
        failed[0].1,
        MeshEvent::CallFailed { call_id, reason: CallFailure::PathBroken, .. } if call_id == id
    ));
    assert!(
        failed[0].0 - t0 <= 10,
        "failed {} ms after the kill",
        failed[0].0 - t0
    );
    // n003 is still reachable through relay 2, and the server heard the cancel that way.
    assert_eq!(
        sim.mesh(0).routes().get("n003").map(|r| r.next_hop.clone()),
        Some("n002".to_string())
    );
    assert!(sim.nodes[3]
        .deliveries
        .iter()
        .any(|(_, h, _)| matches!(&h.body, Body::Cancel { call_id, .. } if *call_id == id)));
    // Positive control: a call started on the new path is untouched by later route work.
    let id2 = sim
        .with(0, |m, now| {
            m.start_call(now, node_name(3), "slow".into(), vec![], 600_000)
        })
        .expect("starts");
    sim.run_for(20_000);
    assert!(sim
        .events_where(
            0,
            |e| matches!(e, MeshEvent::CallFailed { call_id, .. } if *call_id == id2)
        )
        .is_empty());
}

#[test]
fn a_probe_naming_no_valid_node_is_counted_as_malformed_and_not_answered() {
    use clawmatrix::proto::frame::{Header, ENVELOPE_VERSION, MAX_NODE_ID_BYTES};
    use clawmatrix::proto::{codec, FrameId};
    let mut sim = triangle(13);
    let served = sim.mesh(1).stats().probes_served;
    for (i, node) in ["".to_string(), "x".repeat(MAX_NODE_ID_BYTES + 1)]
        .into_iter()
        .enumerate()
    {
        let h = Header {
            v: ENVELOPE_VERSION,
            id: FrameId([i as u8 + 1; 16]),
            src: node_name(0),
            dst: None,
            ttl: 1,
            hops: 0,
            ts: sim.now,
            body: Body::Probe { node, seq: 7 },
        };
        sim.inject(0, 1, codec::encode(&h, &[]).expect("encodes"));
    }
    sim.run_for(100);
    let st = sim.mesh(1).stats();
    assert_eq!(
        st.decode_errors_by_code.get("bad_probe"),
        Some(&2),
        "{st:?}"
    );
    assert_eq!(st.probes_served, served, "no answer to a malformed probe");
}

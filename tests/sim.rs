//! Multi-node behaviour of the mesh core, driven through the in-memory network in `sim/`.
//! Virtual clock, seeded randomness, no sockets, no sleeps.

#[path = "sim/mod.rs"]
mod sim;

use clawmatrix::mesh::{CallFailure, LocalInfo, MeshEvent, PeerState, Target};
use clawmatrix::proto::{AgentInfo, Body};
use sim::{node_name, Sim};

const LAT: u64 = 10;

#[test]
fn fifty_nodes_in_a_random_topology_converge() {
    let mut sim = Sim::new(50, 7, |_| {});
    sim.random_topology(25, LAT);
    let t = sim.run_until_converged(60_000, 50).expect("converges");
    eprintln!(
        "random 50: converged at {t} ms virtual, {} frames",
        sim.frames_sent
    );
    assert!(t <= 5_000, "took {t} ms");
}

#[test]
fn fifty_nodes_in_a_line_converge() {
    let mut sim = Sim::new(50, 8, |_| {});
    sim.line_topology(LAT);
    let t = sim.run_until_converged(60_000, 50).expect("converges");
    eprintln!(
        "line 50: converged at {t} ms virtual, {} frames",
        sim.frames_sent
    );
    // 49 hops of 10 ms each way, a few times over for the RTT re-publish.
    assert!(t <= 5_000, "took {t} ms");
}

fn agent(id: &str, tags: &[&str]) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        description: String::new(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

fn gossip_frames(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .map(|n| n.mesh.stats().gossip_frames_out)
        .sum()
}

fn call_body(sim: &mut Sim) -> Body {
    let mut id = [0u8; 16];
    id.copy_from_slice(&sim.rng.bytes32()[..16]);
    Body::Call {
        call_id: clawmatrix::proto::CallId(id),
        method: "test.echo".into(),
        deadline_ms: None,
    }
}

#[test]
fn a_record_change_reaches_every_node_with_bounded_gossip() {
    let mut sim = Sim::new(50, 9, |_| {});
    sim.random_topology(25, LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    sim.run_for(1_000);
    let links = sim.conns.iter().filter(|c| c.up).count() as u64;
    let before = gossip_frames(&sim);
    let info = LocalInfo {
        agents: vec![agent("coder", &["coding"])],
        ..LocalInfo::default()
    };
    sim.with(7, |m, now| m.update_local(now, info))
        .expect("fits");
    let version = sim.mesh(7).own_record().version + 1;
    sim.run_for(2_000);
    for i in (0..50).filter(|&i| i != 7) {
        let v = sim.view(i, 7).expect("known");
        assert_eq!(v.version, version, "node {i}");
        assert_eq!(v.agents[0].id, "coder", "node {i}");
    }
    let cost = gossip_frames(&sim) - before;
    eprintln!("one record change: {cost} gossip frames over {links} links");
    assert!(
        cost <= 2 * links,
        "{cost} gossip frames for one change over {links} links"
    );
}

#[test]
fn a_partition_heals_and_both_sides_reconverge() {
    let mut sim = Sim::new(40, 10, |_| {});
    for side in [0usize, 20] {
        for i in 1..20 {
            let j = sim.rng.below(i as u64) as usize;
            sim.connect(side + i, side + j, LAT);
        }
        for _ in 0..8 {
            let a = side + sim.rng.below(20) as usize;
            let b = side + sim.rng.below(20) as usize;
            if a != b {
                sim.connect(a, b, LAT);
            }
        }
    }
    sim.connect(3, 23, LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    sim.cut(3, 23);
    let t0 = sim.now;
    let t = sim
        .run_until_converged(t0 + 60_000, 50)
        .expect("partition visible");
    assert!(matches!(
        sim.view(0, 30).expect("still known").state,
        PeerState::Unreachable { .. }
    ));
    sim.connect(3, 23, LAT);
    let t1 = sim.now;
    let t2 = sim.run_until_converged(t1 + 60_000, 50).expect("heals");
    eprintln!("partition seen in {} ms, healed in {} ms", t - t0, t2 - t1);
    assert!(t - t0 <= 2_000 && t2 - t1 <= 2_000);
}

#[test]
fn ttl_exhaustion_on_a_line_of_twelve_drops_and_reports_unreachable() {
    let mut sim = Sim::new(12, 11, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    let body = call_body(&mut sim);
    let err = sim
        .with(0, |m, now| m.send(now, node_name(11), body.clone(), vec![]))
        .expect_err("beyond ttl");
    assert_eq!(err.code(), "too_far");
    sim.with(0, |m, now| {
        m.send(now, node_name(8), body.clone(), b"hi".to_vec())
    })
    .expect("8 hops is within ttl 8");
    // A crafted frame that ignores the sender-side check is dropped by the 8th relay.
    let header = clawmatrix::proto::Header {
        v: 1,
        id: clawmatrix::proto::FrameId([7; 16]),
        src: node_name(0),
        dst: Some(node_name(11)),
        ttl: 8,
        hops: 0,
        ts: sim.now,
        body: body.clone(),
    };
    let bytes = sim
        .with(0, |m, _| m.seal_routed(header, b"payload".to_vec()))
        .expect("seals");
    sim.inject(0, 1, bytes);
    sim.run_for(1_000);
    assert_eq!(
        sim.nodes[8].deliveries.len(),
        1,
        "the in-range frame arrived"
    );
    assert_eq!(sim.mesh(8).stats().dropped_ttl, 1);
    assert!(sim.nodes[11].deliveries.is_empty());
    let back: Vec<_> = sim.nodes[0]
        .deliveries
        .iter()
        .filter(
            |(_, h, _)| matches!(&h.body, Body::Unreachable { node, .. } if *node == node_name(11)),
        )
        .collect();
    assert_eq!(back.len(), 1, "the source is told");
}

#[test]
fn frames_are_delivered_once_despite_cycles() {
    let n = 20;
    let mut sim = Sim::new(n, 12, |_| {});
    for i in 0..n {
        sim.connect(i, (i + 1) % n, LAT);
    }
    for i in (0..n).step_by(4) {
        sim.connect(i, (i + 5) % n, LAT);
    }
    sim.run_until_converged(60_000, 50).expect("converges");
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let body = call_body(&mut sim);
            sim.with(a, |m, now| m.send(now, node_name(b), body, vec![]))
                .expect("routable");
        }
    }
    // The same frame reaching node 2 from both of its ring neighbours.
    let header = clawmatrix::proto::Header {
        v: 1,
        id: clawmatrix::proto::FrameId([9; 16]),
        src: node_name(0),
        dst: Some(node_name(2)),
        ttl: 8,
        hops: 0,
        ts: sim.now,
        body: call_body(&mut sim),
    };
    let bytes = sim
        .with(0, |m, _| m.seal_routed(header, Vec::new()))
        .expect("seals");
    sim.inject(1, 2, bytes.clone());
    sim.inject(3, 2, bytes);
    let frames_before = sim.frames_sent;
    sim.run_for(2_000);
    for (b, node) in sim.nodes.iter().enumerate() {
        let mut ids: Vec<_> = node.deliveries.iter().map(|(_, h, _)| h.id).collect();
        let total = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), total, "node {b} got a duplicate");
        if total != n - 1 + usize::from(b == 2) {
            for d in &node.deliveries {
                eprintln!("{b}: {} {:?}", d.0, d.1.body);
            }
        }
        let expected = n - 1 + usize::from(b == 2);
        assert_eq!(total, expected, "node {b}");
    }
    assert_eq!(sim.mesh(2).stats().dropped_dup, 1);
    // No storm: every frame follows one path (≤ 10 hops on this ring).
    let relayed = sim.frames_sent - frames_before;
    assert!(relayed <= (n * (n - 1) * 10 + 20) as u64, "{relayed}");
}

/// A crafted `call` frame from `src` to `dst` with a fixed id.
fn crafted(sim: &mut Sim, id: u8, src: usize, dst: usize, hops: u8) -> Vec<u8> {
    let header = clawmatrix::proto::Header {
        v: 1,
        id: clawmatrix::proto::FrameId([id; 16]),
        src: node_name(src),
        dst: Some(node_name(dst)),
        ttl: 8,
        hops,
        ts: sim.now,
        body: call_body(sim),
    };
    // Sealed by the claimed source, as it would send it.
    sim.with(src, |m, _| m.seal_routed(header, Vec::new()))
        .expect("seals")
}

#[test]
fn frames_straight_from_their_source_skip_the_dedup_cache_and_relayed_ones_use_it() {
    // 0 – 1 – 2: node 1 gets frames for itself from 0 directly, and frames it relays 0 → 2.
    let mut sim = Sim::new(3, 21, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    let before = sim.mesh(1).dedup_len();
    let direct = crafted(&mut sim, 1, 0, 1, 0);
    sim.inject(0, 1, direct);
    sim.run_for(100);
    assert_eq!(
        sim.mesh(1).dedup_len(),
        before,
        "a direct frame for us takes no cache slot"
    );
    assert_eq!(sim.nodes[1].deliveries.len(), 1);
    // The same id claiming a hop already (so maybe a copy) is checked and remembered.
    let relayed_in = crafted(&mut sim, 2, 0, 1, 1);
    sim.inject(0, 1, relayed_in.clone());
    sim.inject(0, 1, relayed_in);
    sim.run_for(100);
    assert_eq!(sim.nodes[1].deliveries.len(), 2, "the copy was dropped");
    assert_eq!(sim.mesh(1).stats().dropped_dup, 1);
    // A frame node 1 relays is remembered, so its copy is dropped before it is relayed twice.
    let through = crafted(&mut sim, 3, 0, 2, 0);
    sim.inject(0, 1, through.clone());
    sim.inject(0, 1, through);
    sim.run_for(100);
    assert_eq!(sim.nodes[2].deliveries.len(), 1);
    assert_eq!(sim.mesh(1).stats().dropped_dup, 2);
    assert_eq!(sim.mesh(1).dedup_len(), before + 2);
}

#[test]
fn a_nodes_own_frame_coming_back_is_dropped_as_a_loop() {
    let mut sim = Sim::new(3, 22, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    // Node 1 receives a frame that claims to be its own, on its way to node 2.
    let back = crafted(&mut sim, 4, 1, 2, 2);
    let (loops, relayed) = (
        sim.mesh(1).stats().dropped_loop,
        sim.mesh(1).stats().relayed,
    );
    sim.inject(0, 1, back);
    sim.run_for(100);
    assert_eq!(sim.mesh(1).stats().dropped_loop, loops + 1);
    assert_eq!(sim.mesh(1).stats().relayed, relayed, "not relayed again");
    assert!(sim.nodes[2].deliveries.is_empty());
}

#[test]
fn a_silently_dead_node_is_detected_and_its_routes_withdrawn_within_the_heartbeat_bound() {
    let mut sim = Sim::new(30, 13, |_| {});
    sim.random_topology(15, LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    sim.run_for(20_000);
    let victim = 4;
    let cfg = sim.mesh(0).config().clone();
    sim.kill(victim);
    let t0 = sim.now;
    let bound = cfg.heartbeat_interval_ms * u64::from(cfg.heartbeat_misses + 1) + 1_000;
    let t = sim
        .run_until_converged(t0 + bound, 100)
        .unwrap_or_else(|e| panic!("not withdrawn within {bound} ms: {e}"));
    eprintln!("dead node withdrawn after {} ms (bound {bound})", t - t0);
    let timeouts: u64 = sim
        .nodes
        .iter()
        .map(|n| n.mesh.stats().heartbeat_timeouts)
        .sum();
    assert!(timeouts >= 1);
    for i in (0..30).filter(|&i| i != victim) {
        let v = sim.view(i, victim).expect("still remembered");
        assert!(matches!(v.state, PeerState::Unreachable { .. }), "node {i}");
    }
}

#[test]
fn a_node_with_two_relays_fails_over_when_one_dies() {
    // home 0 reaches office 3 through cloud 1 (fast) or cloud 2 (slow).
    let mut sim = Sim::new(4, 14, |_| {});
    sim.connect(0, 1, 5);
    sim.connect(3, 1, 5);
    sim.connect(0, 2, 20);
    sim.connect(3, 2, 20);
    sim.run_for(5_000);
    let via = |sim: &Sim| match sim.view(0, 3).map(|v| v.state) {
        Some(PeerState::Via { next_hop, .. }) => Some(next_hop),
        _ => None,
    };
    assert_eq!(via(&sim), Some(node_name(1)));
    sim.kill(1);
    sim.run_for(61_000);
    assert_eq!(via(&sim), Some(node_name(2)));
    let body = call_body(&mut sim);
    sim.with(0, |m, now| m.send(now, node_name(3), body, vec![]))
        .expect("routable again");
    sim.run_for(1_000);
    assert_eq!(sim.nodes[3].deliveries.len(), 1);
}

#[test]
fn a_call_completes_with_a_reply() {
    let mut sim = Sim::new(3, 15, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(10_000, 50).expect("converges");
    let id = sim
        .with(0, |m, now| {
            m.start_call(now, node_name(2), "echo".into(), b"ping".to_vec(), 5_000)
        })
        .expect("starts");
    sim.run_for(100);
    let (from, h, payload) = sim.nodes[2].deliveries[0].clone();
    assert_eq!((from.as_str(), payload.as_slice()), ("n000", &b"ping"[..]));
    assert_eq!(h.hops, 1, "one relay crossed");
    let reply = Body::Reply {
        call_id: id,
        ok: true,
        code: None,
        message: None,
    };
    sim.with(2, |m, now| {
        m.send(now, node_name(0), reply, b"pong".to_vec())
    })
    .expect("reply routable");
    sim.run_for(10_000);
    assert_eq!(sim.mesh(0).inflight_calls(), 0);
    assert_eq!(sim.nodes[0].deliveries[0].2, b"pong");
    assert!(sim
        .events_where(0, |e| matches!(e, MeshEvent::CallFailed { .. }))
        .is_empty());
}

#[test]
fn a_call_fails_unreachable_when_its_route_disappears() {
    let mut sim = Sim::new(3, 16, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(10_000, 50).expect("converges");
    let id = sim
        .with(0, |m, now| {
            m.start_call(now, node_name(2), "slow".into(), vec![], 60_000)
        })
        .expect("starts");
    sim.run_for(100);
    sim.cut(1, 2);
    let t0 = sim.now;
    sim.run_for(1_000);
    let failed = sim.events_where(0, |e| matches!(e, MeshEvent::CallFailed { .. }));
    assert_eq!(failed.len(), 1);
    let (t, e) = &failed[0];
    assert_eq!(
        *e,
        MeshEvent::CallFailed {
            call_id: id,
            dst: node_name(2),
            reason: CallFailure::Unreachable
        }
    );
    assert!(t - t0 <= 100, "failed {} ms after the cut", t - t0);
}

#[test]
fn a_call_deadline_fires_and_cancels() {
    let mut sim = Sim::new(3, 17, |_| {});
    sim.line_topology(LAT);
    sim.run_until_converged(10_000, 50).expect("converges");
    let t0 = sim.now;
    let id = sim
        .with(0, |m, now| {
            m.start_call(now, node_name(2), "slow".into(), vec![], 5_000)
        })
        .expect("starts");
    sim.run_for(10_000);
    let failed = sim.events_where(0, |e| matches!(e, MeshEvent::CallFailed { .. }));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, t0 + 5_000);
    assert!(matches!(
        failed[0].1,
        MeshEvent::CallFailed { call_id, reason: CallFailure::Deadline, .. } if call_id == id
    ));
    assert!(sim.nodes[2]
        .deliveries
        .iter()
        .any(|(_, h, _)| matches!(&h.body, Body::Cancel { call_id, .. } if *call_id == id)));
}

#[test]
fn a_graceful_leave_drops_the_node_at_once() {
    let mut sim = Sim::new(20, 18, |_| {});
    sim.random_topology(10, LAT);
    sim.run_until_converged(60_000, 50).expect("converges");
    sim.shutdown(5);
    let t0 = sim.now;
    let t = sim
        .run_until_converged(t0 + 60_000, 20)
        .expect("reconverges");
    eprintln!("leave propagated in {} ms", t - t0);
    assert!(t - t0 <= 1_000, "{} ms", t - t0);
    assert_eq!(
        sim.events_where(
            0,
            |e| matches!(e, MeshEvent::Left { node } if *node == "n005")
        )
        .len(),
        1
    );
}

#[test]
fn an_unreachable_node_is_forgotten_after_forget_after() {
    let mut sim = Sim::new(3, 19, |c| {
        c.heartbeat_interval_ms = 1_000;
        c.forget_after_ms = 60_000;
    });
    sim.line_topology(LAT);
    sim.run_until_converged(10_000, 50).expect("converges");
    sim.kill(2);
    sim.run_for(10_000);
    assert!(matches!(
        sim.view(0, 2).expect("known").state,
        PeerState::Unreachable { .. }
    ));
    sim.run_for(60_000);
    assert!(sim.view(0, 2).is_none(), "forgotten");
    assert_eq!(
        sim.events_where(0, |e| matches!(e, MeshEvent::Forgotten { .. }))
            .len(),
        1
    );
}

#[test]
fn resolve_orders_direct_then_latency_and_honours_exclusions() {
    let mut sim = Sim::new(4, 20, |_| {});
    sim.connect(0, 1, 30);
    sim.connect(0, 2, 5);
    sim.connect(2, 3, 5);
    for (i, tags) in [
        (1, vec!["coding"]),
        (2, vec!["coding"]),
        (3, vec!["coding", "gpu"]),
    ] {
        let info = LocalInfo {
            agents: vec![agent("coder", &tags)],
            tags: if i == 3 {
                vec!["big".to_string()]
            } else {
                vec![]
            },
            ..LocalInfo::default()
        };
        sim.with(i, |m, now| m.update_local(now, info))
            .expect("fits");
    }
    // Links advertise measured latency once a whole window of pongs is in (8 × 15 s).
    sim.run_for(8 * 15_000 + 5_000);
    let m = sim.mesh(0);
    let names =
        |c: Vec<clawmatrix::mesh::Candidate>| c.into_iter().map(|c| c.node).collect::<Vec<_>>();
    let coder = Target::parse("coder").expect("parses");
    assert_eq!(names(m.resolve(&coder, &[])), ["n002", "n001", "n003"]);
    assert_eq!(names(m.resolve(&coder, &["n002".into()])), ["n001", "n003"]);
    let gpu = Target::parse("tags:gpu,coding").expect("parses");
    assert_eq!(names(m.resolve(&gpu, &[])), ["n003"]);
    let node_tag = Target::parse("tags:big").expect("parses");
    // Node tags apply to the node's agents too (tags ∪), so the agent is the candidate.
    let c = m.resolve(&node_tag, &[]);
    assert_eq!(
        (c[0].node.as_str(), c[0].agent.as_deref()),
        ("n003", Some("coder"))
    );
    assert_eq!(
        names(m.resolve(&Target::parse("n001").expect("parses"), &[])),
        ["n001"]
    );
    assert!(m
        .resolve(&Target::parse("nobody").expect("parses"), &[])
        .is_empty());
}

#[test]
fn a_hundred_nodes_with_one_percent_loss_converge() {
    let mut sim = Sim::new(100, 21, |_| {});
    sim.loss = 0.01;
    sim.random_topology(50, LAT);
    let t = sim.run_until_converged(120_000, 10).expect("converges");
    eprintln!(
        "100 nodes, 1% loss: converged at {t} ms virtual ({} link latencies), {} frames, {} bytes",
        t / LAT,
        sim.frames_sent,
        sim.bytes_sent
    );
    // Without loss, flooding converges in a few diameters × latency (< 1 s). A lost gossip frame
    // is repaired by another path or by the next anti-entropy digest (every 10 s per node to a
    // random link); 60 s allows for several rounds of that.
    assert!(t <= 60_000, "{t} ms");
}

#[test]
fn status_latency_is_the_measured_rtt_to_the_first_hop_plus_buckets_beyond() {
    // Records carry RTT buckets (10 ms at least), but a 1 ms link must not look like 10 ms.
    let mut sim = Sim::new(3, 22, |_| {});
    sim.line_topology(1);
    sim.run_until_converged(10_000, 10).expect("converges");
    sim.run_for(1_000);
    let direct = sim.view(0, 1).expect("known");
    assert_eq!(direct.latency_ms, Some(2), "the measured RTT of the link");
    let via = sim.view(0, 2).expect("known");
    assert_eq!(
        via.latency_ms,
        Some(2 + 10),
        "measured first hop + the next link's bucket"
    );
}

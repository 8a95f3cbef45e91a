//! Handoff and messages over real sockets: home hands tasks to office's `coder` through cloud,
//! with a scripted OpenClaw host (`tests/support/fake_host.rs`) answering `agent.run` on the serving nodes.
//! Stream ordering, the inactivity timeout and its reset, the hard cap, retries on another node
//! only before output, cancel reaching the remote run, isolation of concurrent streams, a
//! target dropping mid-stream, unknown agents, and `cluster_send` acknowledgements.

mod loopback_common;

#[path = "support/fake_host.rs"]
mod fake_host;

use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::handoff::{HOST_AGENT_ABORT, HOST_AGENT_RUN, HOST_AGENT_SEND};
use clawmatrix::tools::remote::{ToolCall, ToolCaller, ToolEvent};
use clawmatrix::tools::ToolOutput;
use fake_host::{FakeHost, FakeHostOptions};
use loopback_common::*;
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(40);

struct Office {
    node: Node,
    host: FakeHost,
}

struct Mesh {
    _cloud: Node,
    cloud_port: u16,
    home: Node,
    offices: Vec<Office>,
}

/// cloud listens; each office (offering `coder`, tags coding) and home dial it. `home_extra`
/// goes into home's config (timeouts).
async fn mesh(offices: &[(&str, FakeHostOptions)], home_extra: Value) -> Mesh {
    let cp = reserve_port();
    let cloud = start(config("cloud", Some(cp), &[], json!({})));
    let mut out = Vec::new();
    for (id, opts) in offices {
        let node = start(config(
            id,
            None,
            &[("cloud", cp)],
            json!({"agents": [{"id": "coder", "description": "writes code", "tags": ["coding"]}]}),
        ));
        let host = FakeHost::spawn(node.host(), opts.clone());
        out.push(Office { node, host });
    }
    let home = start(config("home", None, &[("cloud", cp)], home_extra));
    wait_for("offices relayed via cloud", Duration::from_secs(10), || {
        offices
            .iter()
            .all(|(id, _)| is_relayed_via(&home, id, "cloud"))
    })
    .await;
    Mesh {
        _cloud: cloud,
        cloud_port: cp,
        home,
        offices: out,
    }
}

fn caller() -> ToolCaller {
    ToolCaller {
        agent_id: Some("assistant".into()),
        session_key: None,
    }
}

fn handoff(node: &Node, target: &str, task: &str) -> ToolCall {
    node.start_tool(
        "cluster_handoff",
        &json!({"target": target, "task": task}),
        caller(),
    )
}

/// Run a call to its end: progress texts and the result.
async fn finish(call: &ToolCall) -> (Vec<String>, Result<ToolOutput, Error>) {
    let mut progress = Vec::new();
    while let Some(step) = call.next().await {
        match step {
            Ok(ToolEvent::Progress { text, .. }) => progress.push(text),
            Ok(ToolEvent::Result(out)) => return (progress, Ok(out)),
            Err(e) => return (progress, Err(e)),
        }
    }
    panic!("no result");
}

fn bounded<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(TEST_BOUND, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_arrive_in_order_and_the_final_text_names_node_and_agent() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({}),
        )
        .await;
        let (progress, r) = finish(&handoff(&m.home, "coder", "stream 40 every 2")).await;
        let out = r.expect("handoff");
        let want: Vec<String> = (1..=40).map(|i| format!("chunk-{i} ")).collect();
        assert_eq!(
            progress.concat(),
            want.concat(),
            "deltas in order, none lost"
        );
        assert!(
            out.text
                .starts_with("[handoff: coder on office answered]\n"),
            "{}",
            out.text
        );
        assert!(out.text.ends_with(&want.concat()), "{}", out.text);
        assert_eq!(out.details["node"], "office");
        assert_eq!(out.details["agent"], "coder");
        assert_eq!(out.details["streamMatchesFinal"], true);
        // The serving side ran the agent in a per-handoff session (not a :subagent: key).
        let runs = m.offices[0].host.seen_kind(HOST_AGENT_RUN);
        assert_eq!(runs.len(), 1);
        let key = runs[0].params["sessionKey"].as_str().unwrap().to_string();
        assert!(key.starts_with("agent:coder:clawmatrix:handoff:"), "{key}");
        assert!(!key.contains(":subagent:"));
        assert_eq!(runs[0].params["agentId"], "coder");
        // Both sides list it in status.
        let h = m.home.status().handoffs.expect("handoffs");
        assert_eq!(h["called"], 1);
        assert_eq!(h["recent"][0]["state"], "ok");
        // One progress step per chunk (the server merges deltas that wait for credit).
        assert_eq!(h["recent"][0]["chunks"], progress.len() as u64);
        assert!(h["recent"][0]["tail"]
            .as_str()
            .is_some_and(|t| t.ends_with("chunk-40 ")));
        let o = m.offices[0].node.status().handoffs.expect("handoffs");
        assert_eq!(o["served"], 1);
        assert_eq!(o["recent"][0]["peer"], "home");

        // A tag query resolves to the same agent; an empty final reply uses the stream.
        let (_, r) = finish(&handoff(&m.home, "tags:coding", "stream 3 final empty")).await;
        let out = r.expect("tags handoff");
        assert!(
            out.text.ends_with("chunk-1 chunk-2 chunk-3 "),
            "{}",
            out.text
        );
        assert_eq!(out.details["usedStreamAsFinal"], true);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_resets_the_inactivity_timeout_and_silence_fires_it() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({"handoffTimeout": 1000}),
        )
        .await;
        // 6 deltas 400 ms apart: 2 s in all, twice the timeout, never 1 s silent.
        let t0 = Instant::now();
        let (p, r) = finish(&handoff(&m.home, "coder", "stream 6 every 400")).await;
        r.expect("a stream that keeps flowing is not timed out");
        assert_eq!(p.len(), 6);
        assert!(t0.elapsed() >= Duration::from_millis(1900));
        // Tool activity counts as output for the timer but shows nothing.
        let (p, r) = finish(&handoff(&m.home, "coder", "tools 4 every 400")).await;
        assert!(r
            .expect("tool activity keeps it alive")
            .text
            .ends_with("done"));
        assert!(p.is_empty());

        // 1.5 s of silence: the inactivity timeout fires, saying which and how much arrived.
        let t0 = Instant::now();
        let (_, r) = finish(&handoff(&m.home, "coder", "silent 1500 then stream 1")).await;
        let e = r.expect_err("silence times out");
        assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
        assert!(e.message.contains("handoffTimeout"), "{}", e.message);
        assert!(
            e.message.contains("no other reachable node matches coder"),
            "{}",
            e.message
        );
        assert!(e.message.contains("no output had arrived"), "{}", e.message);
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hard_cap_ends_a_handoff_that_keeps_streaming() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({"handoffTimeout": 1000, "handoffMaxMs": 1500}),
        )
        .await;
        let t0 = Instant::now();
        let (p, r) = finish(&handoff(&m.home, "coder", "stream 100 every 100")).await;
        let e = r.expect_err("capped");
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(
            e.message.contains("hard cap handoffMaxMs (1500 ms)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("chunk(s)"), "{}", e.message);
        assert!(e.message.contains("not retried"), "{}", e.message);
        assert!(p.len() >= 10, "{}", p.len());
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1450) && took < Duration::from_secs(4),
            "{took:?}"
        );
        // The cap cancels the remote run.
        let host = m.offices[0].host.clone();
        wait_for(
            "office aborted the capped run",
            Duration::from_secs(5),
            || !host.seen_kind(HOST_AGENT_ABORT).is_empty(),
        )
        .await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_that_fails_mid_stream_leaves_an_exact_status_record() {
    bounded(async {
        // Chunks every 10 ms: the running record follows the stream only every 200 ms, so the
        // record of a failure must be completed from what the attempt saw, not left behind.
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({"handoffTimeout": 1000, "handoffMaxMs": 1000}),
        )
        .await;
        let (p, r) = finish(&handoff(&m.home, "coder", "stream 500 every 10")).await;
        assert_eq!(r.expect_err("capped").code, ErrorCode::Timeout);
        assert!(p.len() >= 10, "{}", p.len());
        let h = m.home.status().handoffs.expect("handoffs");
        let rec = &h["recent"][0];
        assert_eq!(rec["state"], "timeout");
        assert_eq!(h["running"], 0);
        // The chunk the cap interrupted on its way to the consumer may be counted too.
        let chunks = rec["chunks"].as_u64().unwrap_or(0) as usize;
        assert!(
            chunks == p.len() || chunks == p.len() + 1,
            "{chunks} vs {}",
            p.len()
        );
        let last = p.last().cloned().unwrap_or_default();
        let tail = rec["tail"].as_str().unwrap_or("");
        assert!(
            tail.ends_with(&last) || chunks == p.len() + 1,
            "tail {tail:?} does not end with the last delta {last:?}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_retried_on_another_node_but_never_after_output() {
    bounded(async {
        let mut silent = FakeHostOptions::agents(&["coder"]);
        silent.silent_runs = true;
        let m = mesh(&[("office-a", silent)], json!({"handoffTimeout": 2500})).await;
        // office-a takes it and never answers; office-b joins meanwhile; after 2.5 s with no
        // output the handoff moves to office-b.
        let call = handoff(&m.home, "coder", "stream 3");
        let host_a = m.offices[0].host.clone();
        wait_for("office-a running it", Duration::from_secs(5), || {
            !host_a.seen_kind(HOST_AGENT_RUN).is_empty()
        })
        .await;
        let b = start(config(
            "office-b",
            None,
            &[("cloud", m.cloud_port)],
            json!({"agents": [{"id": "coder", "description": "writes code", "tags": ["coding"]}]}),
        ));
        let host_b = FakeHost::spawn(b.host(), FakeHostOptions::agents(&["coder"]));
        wait_for("office-b relayed", Duration::from_secs(10), || {
            is_relayed_via(&m.home, "office-b", "cloud")
        })
        .await;
        let (p, r) = finish(&call).await;
        let out = r.expect("retried on office-b");
        assert_eq!(out.details["node"], "office-b");
        assert_eq!(p.concat(), "chunk-1 chunk-2 chunk-3 ");
        let retried = out.details["retriedAfter"].to_string();
        assert!(
            retried.contains("office-a") && retried.contains("handoffTimeout"),
            "{retried}"
        );
        assert_eq!(host_a.seen_kind(HOST_AGENT_RUN).len(), 1);
        assert_eq!(host_b.seen_kind(HOST_AGENT_RUN).len(), 1);
        // office-a's abandoned run was aborted there.
        wait_for("office-a aborted", Duration::from_secs(5), || {
            !host_a.seen_kind(HOST_AGENT_ABORT).is_empty()
        })
        .await;

        // Output seen, then silence: the timeout is final; office-b is not asked.
        m.offices[0].node.stop();
        wait_for("office-a gone", Duration::from_secs(10), || {
            peer(&m.home, "office-a").is_none_or(|p| p.hops.is_none())
        })
        .await;
        let runs_b = host_b.seen_kind(HOST_AGENT_RUN).len();
        let (p, r) = finish(&handoff(&m.home, "coder", "hang")).await;
        let e = r.expect_err("timeout after output");
        assert_eq!(p, vec!["working…".to_string()]);
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(e.message.contains("1 chunk(s)"), "{}", e.message);
        assert!(
            e.message
                .contains("not retried: output had already arrived"),
            "{}",
            e.message
        );
        assert_eq!(
            host_b.seen_kind(HOST_AGENT_RUN).len(),
            runs_b + 1,
            "one attempt only"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drops_before_output_is_retried_and_one_that_drops_mid_stream_is_not() {
    bounded(async {
        let mut silent = FakeHostOptions::agents(&["coder"]);
        silent.silent_runs = true;
        let m = mesh(&[("office-a", silent)], json!({})).await;
        // office-a takes the handoff and says nothing; office-b joins; office-a then drops.
        let call = handoff(&m.home, "coder", "stream 2");
        let host_a = m.offices[0].host.clone();
        wait_for("office-a running it", Duration::from_secs(5), || {
            !host_a.seen_kind(HOST_AGENT_RUN).is_empty()
        })
        .await;
        let b = start(config(
            "office-b",
            None,
            &[("cloud", m.cloud_port)],
            json!({"agents": [{"id": "coder", "description": "writes code", "tags": ["coding"]}]}),
        ));
        let host_b = FakeHost::spawn(b.host(), FakeHostOptions::agents(&["coder"]));
        wait_for("office-b relayed", Duration::from_secs(10), || {
            is_relayed_via(&m.home, "office-b", "cloud")
        })
        .await;
        m.offices[0].node.stop();
        let (p, r) = finish(&call).await;
        let out = r.expect("retried on office-b");
        assert_eq!(out.details["node"], "office-b");
        assert_eq!(p.concat(), "chunk-1 chunk-2 ");
        let retried = out.details["retriedAfter"].to_string();
        assert!(retried.contains("office-a became unreachable"), "{retried}");

        // Now office-b hangs after one delta and drops off the mesh mid-stream: not retried.
        let call = handoff(&m.home, "coder", "hang");
        match call.next().await {
            Some(Ok(ToolEvent::Progress { text, details })) => {
                assert_eq!(text, "working…");
                assert_eq!(details["node"], "office-b");
            }
            other => panic!("first delta: {other:?}"),
        }
        let t0 = Instant::now();
        b.stop();
        let (_, r) = finish(&call).await;
        let e = r.expect_err("unreachable mid-stream");
        assert_eq!(e.code, ErrorCode::Unreachable, "{e:?}");
        assert!(
            e.message.contains("office-b became unreachable"),
            "{}",
            e.message
        );
        assert!(e.message.contains("1 chunk(s)"), "{}", e.message);
        assert!(e.message.contains("not retried"), "{}", e.message);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(host_b.seen_kind(HOST_AGENT_RUN).len(), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_tool_aborts_the_remote_run() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({}),
        )
        .await;
        let call = handoff(&m.home, "coder", "hang");
        assert!(matches!(
            call.next().await,
            Some(Ok(ToolEvent::Progress { .. }))
        ));
        let t0 = Instant::now();
        call.cancel();
        let (_, r) = finish(&call).await;
        let e = r.expect_err("cancelled");
        assert_eq!(e.code, ErrorCode::Cancelled);
        assert!(
            e.message.contains("cancelled by the caller"),
            "{}",
            e.message
        );
        let host = m.offices[0].host.clone();
        let stopped = wait_for("office aborted the run", Duration::from_secs(5), || {
            !host.seen_kind(HOST_AGENT_ABORT).is_empty()
        })
        .await;
        let abort = &host.seen_kind(HOST_AGENT_ABORT)[0];
        let run = &host.seen_kind(HOST_AGENT_RUN)[0];
        assert_eq!(abort.params["sessionKey"], run.params["sessionKey"]);
        assert!(abort.params["runId"].as_str().unwrap().starts_with("run-"));
        eprintln!(
            "cancel → remote abort request: {:?} (polled within {stopped:?})",
            abort.at.duration_since(t0)
        );
        let node = &m.offices[0].node;
        wait_for("served record cancelled", Duration::from_secs(5), || {
            let h = node.status().handoffs.unwrap_or_default();
            h["recent"][0]["state"] == "cancelled" && h["recent"][0]["abortToStopMs"].is_u64()
        })
        .await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handoffs_are_isolated_and_a_slow_consumer_stalls_only_itself() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({}),
        )
        .await;
        // The slow one: 300 deltas, its consumer reads nothing for 2 s.
        let slow = handoff(&m.home, "coder", "stream 300");
        let t0 = Instant::now();
        let mut fast = Vec::new();
        for i in 0..24 {
            let task = format!("stream {} every 3", 20 + i);
            fast.push((20 + i, handoff(&m.home, "coder", &task)));
        }
        for (n, call) in &fast {
            let (p, r) = finish(call).await;
            r.expect("fast handoff");
            let want: String = (1..=*n).map(|i| format!("chunk-{i} ")).collect();
            assert_eq!(p.concat(), want);
        }
        let fast_done = t0.elapsed();
        assert!(
            fast_done < Duration::from_secs(5),
            "fast streams took {fast_done:?}"
        );
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed())).await;
        // The slow stream is intact: merged deltas while it was not read, in order.
        let (p, r) = finish(&slow).await;
        let out = r.expect("slow handoff");
        let want: String = (1..=300).map(|i| format!("chunk-{i} ")).collect();
        assert_eq!(p.concat(), want);
        assert_eq!(out.details["streamMatchesFinal"], true);
        eprintln!("24 concurrent handoffs done in {fast_done:?} while one consumer was stalled");
    })
    .await
    .expect("bounded");
}

/// Office's OpenClaw is stalled: `agents.list` answers after 11 s (longer than the fixed 10 s a
/// host round trip used to get). The handoff waits, within its own `handoffTimeout` (20 s), and
/// the mesh stays up meanwhile: the core answers the heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_serving_host_delays_a_handoff_within_its_timeout_instead_of_failing_it() {
    bounded(async {
        let mut stalled = FakeHostOptions::agents(&["coder"]);
        stalled.agents_list_delay = Duration::from_secs(11);
        let m = mesh(&[("office", stalled)], json!({"handoffTimeout": 20_000})).await;
        let t0 = Instant::now();
        let (_, r) = finish(&handoff(&m.home, "coder", "after the stall")).await;
        let out = r.expect("the handoff succeeds after the stall");
        assert!(out.text.ends_with("after the stall"), "{}", out.text);
        assert!(
            t0.elapsed() >= Duration::from_secs(11),
            "{:?}",
            t0.elapsed()
        );
        for node in [&m.home, &m.offices[0].node] {
            let s = node.status();
            assert_eq!(
                s.mesh.heartbeat_timeouts, 0,
                "{}: a link timed out",
                s.node_id
            );
        }
        assert!(is_relayed_via(&m.home, "office", "cloud"));
    })
    .await
    .expect("bounded");
}

/// The same stall against a `handoffTimeout` (3 s) shorter than it: the caller gets office's
/// error, naming the host request and the timeout that governed it, before its own timer fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_the_handoffs_timeout_fails_it_with_the_serving_nodes_clear_error() {
    bounded(async {
        let mut stalled = FakeHostOptions::agents(&["coder"]);
        stalled.agents_list_delay = Duration::from_secs(11);
        let m = mesh(&[("office", stalled)], json!({"handoffTimeout": 3_000})).await;
        let t0 = Instant::now();
        let (_, r) = finish(&handoff(&m.home, "coder", "x")).await;
        let e = r.expect_err("the stall outlasts the timeout");
        assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
        assert!(
            e.message.contains(
                "host agents.list: no answer from OpenClaw within 2.7 s, the deadline set by the \
                 handoff's handoffTimeout (3.0 s, sent by home)"
            ),
            "{}",
            e.message
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agents_and_unreachable_targets_give_clear_errors() {
    bounded(async {
        let m = mesh(&[("office", FakeHostOptions::agents(&["main"]))], json!({})).await;
        let (_, r) = finish(&handoff(&m.home, "nobody", "x")).await;
        let e = r.expect_err("unknown");
        assert_eq!(e.code, ErrorCode::Unreachable);
        assert!(
            e.message
                .contains("no reachable node offers agent \"nobody\""),
            "{}",
            e.message
        );
        // Offered in agents[] but OpenClaw on office has no such agent.
        let (_, r) = finish(&handoff(&m.home, "coder", "x")).await;
        let e = r.expect_err("not in OpenClaw");
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        assert!(
            e.message
                .contains("OpenClaw there has no such agent (agents.list: main)"),
            "{}",
            e.message
        );
        // Arguments are validated first.
        let call = m
            .home
            .start_tool("cluster_handoff", &json!({"target": "coder"}), caller());
        let e = finish(&call).await.1.expect_err("missing task");
        assert!(
            e.message.contains("cluster_handoff.task: required"),
            "{}",
            e.message
        );
        let call = m.home.start_tool(
            "cluster_send",
            &json!({"target": "tags:", "message": "m"}),
            caller(),
        );
        let e = finish(&call).await.1.expect_err("bad target");
        assert!(e.message.contains("cluster_send.target"), "{}", e.message);
        // An unknown or cut-off node.
        let (_, r) = finish(&handoff(&m.home, "tags:nothing-has-this", "x")).await;
        assert!(r
            .expect_err("no match")
            .message
            .contains("no reachable node or agent matches tags:nothing-has-this"));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_send_is_acknowledged_and_reaches_the_agents_main_session() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({}),
        )
        .await;
        let call = m.home.start_tool(
            "cluster_send",
            &json!({"target": "coder", "message": "build is green"}),
            caller(),
        );
        let out = finish(&call).await.1.expect("delivered");
        assert_eq!(
            out.text,
            "delivered to coder on office (session agent:coder:main)"
        );
        assert_eq!(out.details["delivered"], true);
        let sent = m.offices[0].host.seen_kind(HOST_AGENT_SEND);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].params["sessionKey"], "agent:coder:main");
        let text = sent[0].params["message"].as_str().unwrap();
        assert!(
            text.contains("build is green") && text.contains("agent assistant on home"),
            "{text}"
        );
        let h = m.home.status().handoffs.unwrap();
        assert_eq!(h["messagesSent"], 1);
        assert_eq!(
            m.offices[0].node.status().handoffs.unwrap()["messagesReceived"],
            1
        );

        // Unknown agent, then an unreachable node.
        let call = m.home.start_tool(
            "cluster_send",
            &json!({"target": "ghost", "message": "m"}),
            caller(),
        );
        let e = finish(&call).await.1.expect_err("unknown");
        assert!(
            e.message
                .contains("cluster_send: no reachable node offers agent \"ghost\""),
            "{}",
            e.message
        );
        m.offices[0].node.stop();
        wait_for("office gone", Duration::from_secs(10), || {
            peer(&m.home, "office").is_none_or(|p| p.hops.is_none())
        })
        .await;
        let call = m.home.start_tool(
            "cluster_send",
            &json!({"target": "office", "message": "m"}),
            caller(),
        );
        let e = finish(&call).await.1.expect_err("unreachable");
        assert_eq!(e.code, ErrorCode::Unreachable, "{e:?}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_from_peers_are_refused_naming_the_field() {
    bounded(async {
        let m = mesh(
            &[("office", FakeHostOptions::agents(&["coder"]))],
            json!({}),
        )
        .await;
        let cases: [(&str, &[u8], &str); 4] = [
            (
                "agent.handoff",
                b"not json",
                "agent.handoff request: expected",
            ),
            (
                "agent.handoff",
                br#"{"handoffId":"x","maxMs":5}"#,
                "missing field `task`",
            ),
            (
                "agent.handoff",
                br#"{"task":"  ","handoffId":"x","maxMs":5}"#,
                "agent.handoff request.task: must not be empty",
            ),
            (
                "agent.send",
                br#"{"message":7}"#,
                "agent.send request: invalid type",
            ),
        ];
        for (method, payload, want) in cases {
            let e = m
                .home
                .request("office", method, payload.to_vec(), Duration::from_secs(5))
                .await
                .expect_err("refused");
            assert_eq!(e.code, ErrorCode::Remote, "{e:?}");
            assert!(e.message.contains(want), "{method}: {}", e.message);
        }
        assert!(m.offices[0].host.seen_kind(HOST_AGENT_RUN).is_empty());
    })
    .await
    .expect("bounded");
}

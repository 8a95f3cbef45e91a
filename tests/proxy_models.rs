//! The model proxy end to end in one process: home's proxy → cloud (relay) → office → a scripted
//! upstream, over real sockets. Byte-for-byte SSE, every error status, retries before the first
//! byte, a mid-stream failure, cancellation in both directions, the overall deadline, the
//! `[Model: …]` line, and the providers handed to the host.

mod loopback_common;
mod proxy_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use clawmatrix::proxy::token;
use loopback_common::*;
use proxy_support::*;
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(40);
/// method, path, token, body, expected status, expected cause.
type ErrCase<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

const UPSTREAM_KEY: &str = "sk-office-upstream-secret";

struct Mesh {
    cloud: Node,
    offices: Vec<Node>,
    home: Node,
    up: Upstream,
    home_host: FakeHost,
    office_hosts: Vec<FakeHost>,
}

impl Mesh {
    fn home_addr(&self) -> std::net::SocketAddr {
        let port = self.home.config().proxy_port;
        format!("127.0.0.1:{port}").parse().unwrap()
    }
    fn token(&self) -> String {
        token::derive(SECRET, "home")
    }
    /// `POST /v1/chat/completions` on home's proxy with the token, read whole (bounded 15 s).
    async fn complete(&self, model: &str, stream: bool) -> Got {
        let path = "/v1/chat/completions";
        let body = chat(model, stream);
        fetch(
            self.home_addr(),
            "POST",
            path,
            Some(&self.token()),
            body,
            Duration::from_secs(15),
        )
        .await
    }
}

fn models(ids: &[&str]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({"id": id, "provider": "mock"}))
            .collect(),
    )
}

/// One office serving `model` from the provider `mock` at `addr` (a test's own upstream).
async fn mesh_with_upstream_at(addr: std::net::SocketAddr, model: &str) -> Mesh {
    let providers = vec![HashMap::from([(
        "mock".to_string(),
        json!({"baseUrl": format!("http://{addr}/v1")}),
    )])];
    mesh(
        start_upstream().await,
        &[models(&[model])],
        &providers,
        json!({}),
    )
    .await
}

/// cloud listens; each office (`office-<i>`) and home dial it. Office `i` serves `office_models[i]`
/// from `providers` (its fake host's view of OpenClaw's config).
async fn mesh(
    up: Upstream,
    office_models: &[Value],
    providers: &[HashMap<String, Value>],
    home_extra: Value,
) -> Mesh {
    let cp = reserve_port();
    let cloud = start(config("cloud", Some(cp), &[], json!({"models": []})));
    let mut offices = Vec::new();
    let mut office_hosts = Vec::new();
    for (i, m) in office_models.iter().enumerate() {
        let o = start(config(
            &format!("office-{i}"),
            None,
            &[("cloud", cp)],
            json!({"models": m}),
        ));
        office_hosts.push(fake_host(&o, providers[i].clone(), Some(UPSTREAM_KEY)));
        offices.push(o);
    }
    let mut extra = json!({"models": []});
    if let (Some(e), Value::Object(h)) = (extra.as_object_mut(), home_extra) {
        e.extend(h);
    }
    let home = start(config("home", None, &[("cloud", cp)], extra));
    let home_host = fake_host(&home, HashMap::new(), None);
    for i in 0..offices.len() {
        let id = format!("office-{i}");
        wait_for("office relayed via cloud", Duration::from_secs(10), || {
            is_relayed_via(&home, &id, "cloud")
        })
        .await;
    }
    Mesh {
        cloud,
        offices,
        home,
        up,
        home_host,
        office_hosts,
    }
}

fn mock_provider(up: &Upstream) -> HashMap<String, Value> {
    HashMap::from([(
        "mock".to_string(),
        json!({"baseUrl": up.base_url(), "api": "openai-completions"}),
    )])
}

/// A mesh with one office whose upstream is the scripted one.
async fn simple(office_models: &[&str], home_extra: Value) -> Mesh {
    let up = start_upstream().await;
    let providers = vec![mock_provider(&up)];
    mesh(up, &[models(office_models)], &providers, home_extra).await
}

fn delta(content: &str) -> Value {
    json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_passes_through_byte_for_byte_and_flushes_each_chunk() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-sse"], json!({})).await;
        let events = vec![
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "think"}}], "x_unknown": {"a": [1, 2]}}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "read", "arguments": "{\"pa"}},
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "exec", "arguments": "{\"co"}}
            ]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "mmand\":\"ls\"}"}}]}}]}),
            delta("héllo ✓"),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        ];
        m.up.script("m-sse", sse_script(&events, Duration::from_millis(150)));
        let expected: Vec<u8> = sse(&events).concat();
        let t0 = Instant::now();
        let got = m.complete("m-sse", true).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.headers["content-type"], "text/event-stream");
        assert_eq!(got.headers["x-clawmatrix-node"], "office-0");
        assert_eq!(got.body(), expected, "the SSE bytes are unchanged");
        assert!(got.error.is_none());
        // Flushed as they arrive: the first event reached the client long before the last was
        // sent (6 pieces, 150 ms apart).
        let first = got.frames.first().unwrap().0 - t0;
        let last = got.frames.last().unwrap().0 - t0;
        assert!(last - first >= Duration::from_millis(500), "first {first:?} last {last:?}");
        // The key was added on office; the consumer's token never left home.
        let seen = m.up.seen();
        assert_eq!(seen.len(), 1);
        let head = seen[0].head.to_ascii_lowercase();
        assert!(head.contains(&format!("authorization: bearer {UPSTREAM_KEY}").to_ascii_lowercase()), "{head}");
        assert!(!head.contains("cmx-"), "the proxy token is not forwarded: {head}");
        assert!(head.starts_with("post /v1/chat/completions "), "{head}");
        assert_eq!(seen[0].body, chat("m-sse", true), "the request body is forwarded unchanged");
    })
    .await
    .expect("bounded");
}

/// Mesh frames `node` has sent so far: the first status snapshot published after this call
/// began. Status counters are refreshed by a throttled snapshot, so the value read at once may
/// be older; a later one that differs was published after it (the heartbeats keep the count
/// moving, every `HEARTBEAT_MS`), so it counts every frame sent before the call.
async fn frames_out(node: &Node) -> u64 {
    let first = node.status().mesh.frames_out;
    let mut now = first;
    wait_for("a newer status snapshot", Duration::from_secs(5), || {
        now = node.status().mesh.frames_out;
        now != first
    })
    .await;
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_that_arrive_together_cross_the_mesh_in_a_few_frames_in_order() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-burst"], json!({})).await;
        let events: Vec<Value> = (0..500).map(|i| delta(&format!("token-{i} "))).collect();
        // No gap: the whole answer reaches office's socket at once (a fast upstream).
        m.up.script("m-burst", sse_script(&events, Duration::ZERO));
        let before = frames_out(&m.offices[0]).await;
        let got = m.complete("m-burst", true).await;
        let sent = frames_out(&m.offices[0]).await - before;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.body(), sse(&events).concat(), "every byte, in order");
        assert!(got.error.is_none());
        // 501 SSE events, ~55 KB: the head, a few data chunks and the end (a frame per event
        // before office gathered what its upstream socket already held).
        assert!(sent <= 30, "office sent {sent} mesh frames for 501 events");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_json_and_upstream_statuses_pass_through() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-json", "m-429"], json!({})).await;
        let body = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "usage": {"total_tokens": 2}});
        m.up.script("m-json", json_script(200, body.clone(), &[("x-request-id", "r1")]));
        m.up.script("m-429", json_script(429, json!({"error": {"message": "slow down"}}), &[("retry-after", "7")]));
        let a = m.home_addr();
        let t = m.token();
        let got = fetch(a, "POST", "/v1/chat/completions", Some(&t), chat("m-json", false), Duration::from_secs(10)).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.json(), body);
        assert_eq!(got.headers["x-request-id"], "r1");
        let got = fetch(a, "POST", "/v1/chat/completions", Some(&t), chat("m-429", false), Duration::from_secs(10)).await;
        assert_eq!(got.status, 429);
        assert_eq!(got.headers["retry-after"], "7");
        assert_eq!(got.json()["error"]["message"], "slow down");
        // Node-qualified names route to that node and reach the upstream with the plain id.
        let got = fetch(a, "POST", "/v1/chat/completions", Some(&t), chat("office-0/m-json", false), Duration::from_secs(10)).await;
        assert_eq!(got.status, 200);
        let last = m.up.seen().pop().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&last.body).unwrap()["model"], "m-json");
        // The per-node provider path pins the node.
        let got = fetch(a, "POST", "/node/office-0/v1/chat/completions", Some(&t), chat("m-json", false), Duration::from_secs(10)).await;
        assert_eq!(got.status, 200);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_error_has_the_openai_shape_and_a_cause_header() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-json"], json!({})).await;
        let a = m.home_addr();
        let t = m.token();
        let cases: Vec<ErrCase> = vec![
            ("POST", "/v1/chat/completions", None, chat("m-json", false), 401, "missing_token"),
            ("POST", "/v1/chat/completions", Some("cmx-wrong"), chat("m-json", false), 401, "invalid_token"),
            ("POST", "/v1/chat/completions", Some(&t), b"{not json".to_vec(), 400, "invalid_request"),
            ("POST", "/v1/chat/completions", Some(&t), br#"{"messages":[]}"#.to_vec(), 400, "invalid_request"),
            ("POST", "/v1/chat/completions", Some(&t), br#"{"model":5}"#.to_vec(), 400, "invalid_request"),
            ("POST", "/v1/chat/completions", Some(&t), br#"{"model":"m-json","stream":"yes"}"#.to_vec(), 400, "invalid_request"),
            ("POST", "/v1/chat/completions", Some(&t), chat("nope", false), 404, "model_not_found"),
            ("POST", "/node/ghost/v1/chat/completions", Some(&t), chat("m-json", false), 404, "node_not_found"),
            ("POST", "/v1/embeddings", Some(&t), chat("m-json", false), 404, "not_found"),
            ("GET", "/v1/chat/completions", Some(&t), vec![], 405, "method_not_allowed"),
            ("POST", "/v1/responses", Some(&t), chat("m-json", false), 400, "wrong_api"),
        ];
        for (method, path, tok, body, status, cause) in cases {
            let got = fetch(a, method, path, tok, body, Duration::from_secs(10)).await;
            assert_eq!(got.status, status, "{method} {path} → {}", String::from_utf8_lossy(&got.body()));
            assert_eq!(got.headers["x-clawmatrix-error"], cause, "{method} {path}");
            let e = got.json();
            assert!(e["error"]["message"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
            assert_eq!(e["error"]["code"], cause);
            assert!(e["error"]["type"].is_string());
        }
        // 413 is decided from Content-Length before the body is read.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut sock = tokio::net::TcpStream::connect(a).await.unwrap();
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                17 << 20
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(text.starts_with("http/1.1 413"), "{text}");
            assert!(text.contains("x-clawmatrix-error: request_too_large"), "{text}");
        }
        // The 400 for a wrong dialect names the node it came from.
        let got = fetch(a, "POST", "/v1/responses", Some(&t), chat("m-json", false), Duration::from_secs(10)).await;
        assert_eq!(got.headers["x-clawmatrix-node"], "office-0");
        assert!(m.up.seen().is_empty(), "no error case reached the upstream");
        // GET /v1/models lists the mesh's models with their node.
        let got = fetch(a, "GET", "/v1/models", Some(&t), vec![], Duration::from_secs(10)).await;
        let list = got.json();
        let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
        assert!(ids.contains(&"office-0/m-json"), "{ids:?}");
        let got = fetch(a, "GET", "/v1/models", None, vec![], Duration::from_secs(10)).await;
        assert_eq!(got.status, 401);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fails_before_the_first_byte_is_replaced_by_the_next() {
    tokio::time::timeout(TEST_BOUND, async {
        let up = start_upstream().await;
        up.script("shared", json_script(200, json!({"ok": "from b"}), &[]));
        // office-0's provider points at a closed port: connect fails before any byte.
        let dead_hold = hold_port();
        let dead = dead_hold.port;
        let providers = vec![
            HashMap::from([(
                "mock".to_string(),
                json!({"baseUrl": format!("http://127.0.0.1:{dead}/v1")}),
            )]),
            mock_provider(&up),
        ];
        let m = mesh(
            up,
            &[models(&["shared"]), models(&["shared"])],
            &providers,
            json!({}),
        )
        .await;
        let got = m.complete("shared", false).await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.json(), json!({"ok": "from b"}));
        assert_eq!(got.headers["x-clawmatrix-node"], "office-1");
        // Both fail → 502 naming the cause and the last node tried.
        let providers_dead = HashMap::from([(
            "mock".to_string(),
            json!({"baseUrl": format!("http://127.0.0.1:{dead}/v1")}),
        )]);
        let m2 = mesh(
            start_upstream().await,
            &[models(&["x"]), models(&["x"])],
            &[providers_dead.clone(), providers_dead],
            json!({}),
        )
        .await;
        let got = fetch(
            m2.home_addr(),
            "POST",
            "/v1/chat/completions",
            Some(&token::derive(SECRET, "home")),
            chat("x", false),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(got.status, 502);
        assert_eq!(got.headers["x-clawmatrix-error"], "upstream_connect");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_first_byte_ends_the_stream_with_an_error_event() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-broken"], json!({})).await;
        m.up.script(
            "m-broken",
            Script::Pieces {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                pieces: vec![format!("data: {}\n\n", delta("par")).into_bytes()],
                gap: Duration::ZERO,
                break_off: true,
            },
        );
        let got = m.complete("m-broken", true).await;
        assert_eq!(got.status, 200);
        let body = String::from_utf8(got.body()).unwrap();
        assert!(
            body.starts_with(&format!("data: {}\n\n", delta("par"))),
            "{body}"
        );
        let last = body.trim_end().lines().last().unwrap();
        assert!(
            last.starts_with("data: {\"error\""),
            "ends with an error event: {body}"
        );
        assert!(last.contains("upstream_body"), "{last}");
        assert!(!body.contains("[DONE]"));
    })
    .await
    .expect("bounded");
}

/// The upstream sees its client go away within `bound` of `t0`.
async fn upstream_sees_disconnect(up: &Upstream, t0: Instant, bound: Duration) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(gone) = up.seen().last().and_then(|s| s.client_gone) {
            let took = gone.saturating_duration_since(t0);
            assert!(
                took <= bound,
                "upstream saw the disconnect after {took:?} (bound {bound:?})"
            );
            return took;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream never saw its client go away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stream `model` through home's proxy, read the first chunk, leave; the time until the
/// upstream saw its client go away (asserted ≤ 500 ms).
async fn leave_after_first_chunk(m: &Mesh, model: &str) -> Duration {
    use http_body_util::BodyExt;
    let resp = open(
        m.home_addr(),
        "POST",
        "/v1/chat/completions",
        Some(&m.token()),
        chat(model, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first chunk").expect("ok");
    assert!(first.into_data().is_ok());
    let t0 = Instant::now();
    drop(body);
    upstream_sees_disconnect(&m.up, t0, Duration::from_millis(500)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_the_upstream_request_across_two_hops() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-slow", "m-hang", "m-quiet"], json!({})).await;
        let many: Vec<Value> = (0..100).map(|i| delta(&format!("t{i}"))).collect();
        m.up.script("m-slow", sse_script(&many, Duration::from_millis(100)));
        m.up.script("m-hang", Script::Hang);
        let (a, t) = (m.home_addr(), m.token());

        // Streaming, after the first byte.
        let took = leave_after_first_chunk(&m, "m-slow").await;
        eprintln!("stream cancel: upstream saw the disconnect {took:?} after the client left");

        // Streaming, while the upstream is silent after its first chunk: nothing is written to
        // the client, so only the closed connection tells the proxy it left.
        m.up.script(
            "m-quiet",
            sse_script(&[delta("a"), delta("b")], Duration::from_secs(10)),
        );
        let took = leave_after_first_chunk(&m, "m-quiet").await;
        eprintln!(
            "quiet stream cancel: upstream saw the disconnect {took:?} after the client left"
        );

        // Non-stream, before the first byte: the client gives up while the upstream thinks.
        let req = tokio::spawn(async move {
            open(
                a,
                "POST",
                "/v1/chat/completions",
                Some(&t),
                chat("m-hang", false),
            )
            .await
        });
        let wait_seen = Instant::now() + Duration::from_secs(5);
        while m.up.seen().len() < 3 {
            assert!(
                Instant::now() < wait_seen,
                "the hanging request never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        req.abort();
        let took = upstream_sees_disconnect(&m.up, t0, Duration::from_millis(500)).await;
        eprintln!("non-stream cancel: upstream saw the disconnect {took:?} after the client left");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overall_deadline_gives_504_and_unreachable_nodes_503() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-hang"], json!({"proxyTimeoutMs": 1500})).await;
        m.up.script("m-hang", Script::Hang);
        let t0 = Instant::now();
        let got = m.complete("m-hang", false).await;
        assert_eq!(got.status, 504, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.headers["x-clawmatrix-error"], "deadline");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "{took:?}"
        );
        // office stops: home still knows the model but cannot reach it → 503 with Retry-After.
        m.offices[0].stop();
        wait_for("office unreachable", Duration::from_secs(10), || {
            peer(&m.home, "office-0")
                .is_some_and(|p| p.state == clawmatrix::status::PeerState::Unreachable)
        })
        .await;
        let got = m.complete("m-hang", false).await;
        assert_eq!(got.status, 503, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.headers["x-clawmatrix-error"], "no_reachable_node");
        assert!(got.headers.contains_key("retry-after"));
        let _ = &m.cloud;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overall_deadline_ends_a_stream_that_is_still_going_with_an_error_event() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-slow"], json!({"proxyTimeoutMs": 1200})).await;
        let events: Vec<Value> = (0..10).map(|i| delta(&format!("t{i}"))).collect();
        m.up.script("m-slow", sse_script(&events, Duration::from_millis(300)));
        let t0 = Instant::now();
        let got = m.complete("m-slow", true).await;
        let took = t0.elapsed();
        assert_eq!(got.status, 200);
        let body = String::from_utf8(got.body()).unwrap();
        assert!(
            body.starts_with(&format!("data: {}\n\n", events[0])),
            "{body}"
        );
        let last = body.trim_end().lines().last().unwrap();
        assert!(
            last.starts_with("data: {\"error\"") && last.contains("deadline"),
            "ends with a deadline error event: {body}"
        );
        assert!(!body.contains("[DONE]"));
        assert!(
            took >= Duration::from_millis(1100) && took < Duration::from_secs(3),
            "{took:?}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_line_is_added_only_when_the_consumed_model_has_one() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(
            &["m-a", "m-b"],
            json!({"proxyModels": [{"id": "m-a", "description": "office GPU box"}, {"id": "m-b"}]}),
        )
        .await;
        let ok = json!({"choices": []});
        m.up.script("m-a", json_script(200, ok.clone(), &[]));
        m.up.script("m-b", json_script(200, ok, &[]));
        for model in ["m-a", "m-b"] {
            let got = m.complete(model, false).await;
            assert_eq!(got.status, 200);
        }
        let seen = m.up.seen();
        let a: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            a["messages"][0],
            json!({"role": "system", "content": "[Model: office GPU box]"})
        );
        assert_eq!(a["messages"][1]["content"], "hi");
        assert_eq!(
            seen[1].body,
            chat("m-b", false),
            "no description: the body is untouched"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_hands_its_host_one_provider_per_serving_node_and_office_resolves_once() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = simple(&["m-json"], json!({})).await;
        m.up.script("m-json", json_script(200, json!({"ok": 1}), &[]));
        let port = m.home.config().proxy_port;
        let want = format!("http://127.0.0.1:{port}/node/office-0/v1");
        let deadline = Instant::now() + Duration::from_secs(10);
        let entry = loop {
            let last = m.home_host.syncs.lock().unwrap().last().cloned();
            if let Some(e) = last.and_then(|s| s["providers"].get("clawmatrix-office-0").cloned()) {
                break e;
            }
            assert!(
                Instant::now() < deadline,
                "no providers.sync for clawmatrix-office-0"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(entry["baseUrl"], want);
        assert_eq!(entry["apiKey"], token::derive(SECRET, "home"));
        assert_eq!(entry["models"][0]["id"], "m-json");
        assert!(!entry.to_string().contains(UPSTREAM_KEY));
        for _ in 0..3 {
            let got = m.complete("m-json", false).await;
            assert_eq!(got.status, 200);
        }
        assert_eq!(
            *m.office_hosts[0].upstream_calls.lock().unwrap(),
            1,
            "resolved once, then cached"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_between_requests() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    tokio::time::timeout(TEST_BOUND, async {
        // A keep-alive upstream (hyper) that counts the connections it accepts.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                                    b"{\"ok\":true}",
                                )))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let m = mesh_with_upstream_at(addr, "ka").await;
        for _ in 0..5 {
            let got = m.complete("ka", false).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.json(), json!({"ok": true}));
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "one upstream connection for five requests"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(TEST_BOUND, async {
        // A keep-alive upstream that answers one request per connection and then, 100 ms
        // later, closes it without saying so (as servers do with idle keep-alive sockets).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let closes = Arc::clone(&closed);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let closes = Arc::clone(&closes);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    // The head, then the body to its content-length (the proxy forwards one).
                    let whole = |buf: &[u8]| {
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        (buf.len() >= end + len).then_some(())
                    };
                    while whole(&buf).is_none() {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let body = b"{\"ok\":true}";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(&[head.as_bytes(), body].concat()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(s);
                    closes.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let m = mesh_with_upstream_at(addr, "idle-close").await;
        for i in 0..3 {
            let got = m.complete("idle-close", false).await;
            assert_eq!(got.status, 200, "request {i}: {}", String::from_utf8_lossy(&got.body()));
            assert_eq!(got.json(), json!({"ok": true}));
            // Past the upstream's close (well within the pool's idle age): the next request
            // finds the closed connection in the pool.
            wait_for("the upstream closed its side", Duration::from_secs(5), || {
                closed.load(Ordering::SeqCst) > i
            })
            .await;
        }
    })
    .await
    .expect("bounded");
}

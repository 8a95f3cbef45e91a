//! Remote tools end to end over real sockets: home calls office's tools through cloud
//! (exec/read/write/edit with progress), policy refusals on both ends, cancel killing the remote
//! process tree, target resolution, and other tools routed to office's gateway
//! (`POST /tools/invoke`, served here by a stub).

mod loopback_common;
mod tools_support;

use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::tools::remote::{ToolCaller, ToolEvent};
use clawmatrix::tools::ToolOutput;
use loopback_common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tools_support::{live_group_members, TempDir};

const TEST_BOUND: Duration = Duration::from_secs(40);

struct Mesh {
    _cloud: Node,
    office: Node,
    home: Node,
    root: TempDir,
    state: TempDir,
}

/// cloud listens; office (tool proxy on: exec/read/write/edit + `extra_allow`, deny browser,
/// root = a temp dir) and home (tool proxy off) dial it.
async fn mesh(extra_allow: &[&str], gateway: Option<(u16, &str)>) -> Mesh {
    let root = TempDir::new("remote-root");
    let state = TempDir::new("remote-state");
    let cp = reserve_port();
    let cloud = start(config("cloud", Some(cp), &[], json!({})));
    let mut allow = vec!["exec", "read", "write", "edit"];
    allow.extend_from_slice(extra_allow);
    let office = start_with(
        config(
            "office",
            None,
            &[("cloud", cp)],
            json!({"toolProxy": {"enabled": true, "allow": allow, "deny": ["browser"],
                                 "root": root.path().to_string_lossy()}}),
        ),
        StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            gateway_port: gateway.map(|g| g.0),
            gateway_token: gateway.map(|g| g.1.to_string()),
            ..StartOptions::default()
        },
    );
    let home = start(config("home", None, &[("cloud", cp)], json!({})));
    wait_for("office relayed via cloud", Duration::from_secs(10), || {
        is_relayed_via(&home, "office", "cloud") && is_relayed_via(&office, "home", "cloud")
    })
    .await;
    Mesh {
        _cloud: cloud,
        office,
        home,
        root,
        state,
    }
}

/// Run a tool to its end: the progress texts and the result.
async fn run(node: &Node, name: &str, args: Value) -> (Vec<String>, Result<ToolOutput, Error>) {
    let call = node.start_tool(
        name,
        &args,
        ToolCaller {
            agent_id: Some("assistant".into()),
            session_key: None,
        },
    );
    let mut progress = Vec::new();
    while let Some(step) = call.next().await {
        match step {
            Ok(ToolEvent::Progress { text, .. }) => progress.push(text),
            Ok(ToolEvent::Result(out)) => return (progress, Ok(out)),
            Err(e) => return (progress, Err(e)),
        }
    }
    panic!("{name}: no result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_runs_write_read_edit_and_exec_on_office_through_cloud_and_office_audits_them() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        let t0 = Instant::now();
        let (_, r) = run(
            &m.home,
            "cluster_write",
            json!({"node": "office", "path": "notes/a.txt", "content": "hello mesh\n"}),
        )
        .await;
        let out = r.expect("write");
        assert!(
            out.text.starts_with("[write ran on office]"),
            "{}",
            out.text
        );
        assert!(out.text.contains("created notes/a.txt"), "{}", out.text);
        assert_eq!(out.details["node"], "office");
        assert_eq!(
            std::fs::read_to_string(m.root.join("notes/a.txt")).unwrap(),
            "hello mesh\n"
        );

        let (_, r) = run(
            &m.home,
            "cluster_read",
            json!({"node": "office", "path": "notes/a.txt"}),
        )
        .await;
        assert!(r.expect("read").text.ends_with("hello mesh\n"));

        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "edit",
                   "args": {"path": "notes/a.txt", "oldText": "hello", "newText": "bye"}}),
        )
        .await;
        assert!(r.expect("edit").text.contains("1 replacement"));

        let (progress, r) = run(
            &m.home,
            "cluster_exec",
            json!({"node": "office", "command": "cat notes/a.txt; echo oops >&2; printf '\\377'",
                   "timeout": 20}),
        )
        .await;
        let out = r.expect("exec");
        assert!(!progress.is_empty(), "exec streams progress");
        assert!(progress.concat().contains("bye mesh"), "{progress:?}");
        assert!(out.text.contains("bye mesh"), "{}", out.text);
        assert!(out.text.contains("[stderr]\noops"), "{}", out.text);
        assert!(out.text.contains("[exit code 0]"), "{}", out.text);
        assert_eq!(out.details["result"]["binary"], true);
        eprintln!("write+read+edit+exec over 2 hops: {:?}", t0.elapsed());

        // office audited all four; its status summarises them and names the caller.
        let tools = m.office.status().tools.expect("tools section");
        assert_eq!(tools["enabled"], true);
        assert_eq!(tools["audit"]["calls"], 4);
        assert_eq!(tools["audit"]["ok"], 4);
        assert_eq!(tools["audit"]["last"]["callerNode"], "home");
        assert_eq!(tools["audit"]["last"]["callerAgent"], "assistant");
        let log = std::fs::read_to_string(m.state.join("audit.log")).expect("audit file");
        assert_eq!(log.lines().count(), 4, "{log}");
        let text = clawmatrix::status::render_text(&m.office.status());
        assert!(text.contains("Tools: proxy enabled"), "{text}");
        assert!(text.contains("served 4 calls (4 ok"), "{text}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_back_as_the_serving_nodes_own_errors() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        // Denied by office's deny list.
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "browser", "args": {}}),
        )
        .await;
        let e = r.expect_err("denied");
        assert_eq!(e.code, ErrorCode::Denied, "{}", e.message);
        assert!(e.message.contains("on office"), "{}", e.message);
        // Not in office's allow list.
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "web_fetch", "args": {"url": "http://x"}}),
        )
        .await;
        assert_eq!(r.expect_err("not allowed").code, ErrorCode::Denied);
        // home's proxy is disabled: office calling home is refused by home.
        let (_, r) = run(
            &m.office,
            "cluster_exec",
            json!({"node": "home", "command": "true"}),
        )
        .await;
        let e = r.expect_err("disabled");
        assert_eq!(e.code, ErrorCode::Denied);
        assert!(
            e.message.contains("tool proxy is disabled on home"),
            "{}",
            e.message
        );
        // Bad arguments are refused by office's executor, naming the field.
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "read", "args": {"path": 3}}),
        )
        .await;
        let e = r.expect_err("mistyped");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message.contains("read.path: expected a string"),
            "{}",
            e.message
        );
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "read", "args": {"path": "x", "extra": 1}}),
        )
        .await;
        assert_eq!(r.expect_err("extra").code, ErrorCode::InvalidArgument);
        let (_, r) = run(
            &m.home,
            "cluster_read",
            json!({"node": "office", "path": "../../etc/passwd"}),
        )
        .await;
        assert_eq!(r.expect_err("outside root").code, ErrorCode::Denied);
        // Caller-side validation happens before anything is sent.
        let (_, r) = run(&m.home, "cluster_read", json!({"node": "office"})).await;
        assert_eq!(r.expect_err("missing").code, ErrorCode::InvalidArgument);
        let audit = m.office.status().tools.unwrap()["audit"].clone();
        assert_eq!(audit["denied"], 3, "{audit}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_remote_exec_kills_its_process_tree_on_office() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        let call = m.home.start_tool(
            "cluster_exec",
            &json!({"node": "office", "command": "echo $$; (sleep 100; echo never) & sleep 100"}),
            ToolCaller::default(),
        );
        let pgid: i32 = match call.next().await {
            Some(Ok(ToolEvent::Progress { text, details })) => {
                assert_eq!(details["node"], "office");
                assert_eq!(details["stream"], "stdout");
                text.trim().parse().expect("pid")
            }
            other => panic!("expected progress, got {other:?}"),
        };
        assert!(!live_group_members(pgid).is_empty());
        let t0 = Instant::now();
        call.cancel();
        match call.next().await {
            Some(Err(e)) => assert_eq!(e.code, ErrorCode::Cancelled),
            other => panic!("expected the cancel error, got {other:?}"),
        }
        wait_for(
            "the remote process group is gone",
            Duration::from_secs(3),
            || live_group_members(pgid).is_empty(),
        )
        .await;
        eprintln!("remote process tree killed {:?} after cancel", t0.elapsed());
        wait_for("the cancel is audited", Duration::from_secs(3), || {
            m.office.status().tools.unwrap()["audit"]["errors"] == 1
        })
        .await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_right_after_it_starts_ends_cancelled_even_for_an_unknown_node() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        // What the shim does with an already-aborted signal: start, then cancel at once. The
        // route lookup for "x" fails on its own (Unreachable); the cancel must win anyway.
        for node in ["x", "office"] {
            let call = m.home.start_tool(
                "cluster_exec",
                &json!({"node": node, "command": "echo hi"}),
                ToolCaller::default(),
            );
            call.cancel();
            match call.next().await {
                Some(Err(e)) => assert_eq!(e.code, ErrorCode::Cancelled, "{node}: {}", e.message),
                other => panic!("{node}: expected the cancel error, got {other:?}"),
            }
            assert!(call.next().await.is_none());
        }
        // Control: the same call to "x" without the cancel is refused as unreachable.
        let (_, r) = run(
            &m.home,
            "cluster_exec",
            json!({"node": "x", "command": "echo hi"}),
        )
        .await;
        assert_eq!(r.expect_err("unknown").code, ErrorCode::Unreachable);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_cancel_that_comes_after_the_call_already_failed_still_ends_cancelled() {
    use clawmatrix::tools::remote::ToolCall;
    tokio::time::timeout(TEST_BOUND, async {
        // The race the shim can lose: the call's task reached its outcome (here UNREACHABLE,
        // queued but not yet pulled) before the cancel arrived.
        let unreachable = || {
            Err(Error::new(
                ErrorCode::Unreachable,
                "node x is not reachable",
            ))
        };
        let call = ToolCall::ready(unreachable());
        call.cancel();
        let e = call.next().await.expect("a step").expect_err("cancelled");
        assert_eq!(e.code, ErrorCode::Cancelled, "{}", e.message);
        assert!(
            e.message.contains("node x is not reachable"),
            "{}",
            e.message
        );
        assert!(call.next().await.is_none());
        // Control: without the cancel the outcome is handed out as it is.
        let call = ToolCall::ready(unreachable());
        let e = call.next().await.expect("a step").expect_err("unreachable");
        assert_eq!(e.code, ErrorCode::Unreachable);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_resolve_by_id_or_tags_and_unknown_or_local_targets_are_refused() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        let (_, r) = run(
            &m.home,
            "cluster_exec",
            json!({"node": "tags:office-tag", "command": "echo tagged"}),
        )
        .await;
        let out = r.expect("by tag");
        assert_eq!(out.details["node"], "office");
        assert!(out.text.starts_with("[exec ran on office]"), "{}", out.text);

        // Non-UTF-8 file names come back lossily decoded, flagged as binary output.
        let (_, r) = run(
            &m.home,
            "cluster_exec",
            json!({"node": "office", "command": "touch \"$(printf 'bad\\377name')\"; ls"}),
        )
        .await;
        let out = r.expect("odd names");
        assert!(out.text.contains("bad\u{fffd}name"), "{}", out.text);
        assert_eq!(out.details["result"]["binary"], true);

        // Arguments too large for one frame are refused before anything is sent.
        let big = "x".repeat(16 * 1024 * 1024 - 16);
        let (_, r) = run(
            &m.home,
            "cluster_write",
            json!({"node": "office", "path": "big.txt", "content": big}),
        )
        .await;
        let e = r.expect_err("too large");
        assert_eq!(e.code, ErrorCode::TooLarge, "{}", e.message);
        assert!(!m.root.join("big.txt").exists());

        let (_, r) = run(
            &m.home,
            "cluster_exec",
            json!({"node": "tags:nope", "command": "true"}),
        )
        .await;
        let e = r.expect_err("no tag match");
        assert_eq!(e.code, ErrorCode::Unreachable);
        assert!(e.message.contains("tags:nope"), "{}", e.message);

        let (_, r) = run(
            &m.home,
            "cluster_read",
            json!({"node": "nobody", "path": "x"}),
        )
        .await;
        let e = r.expect_err("unknown node");
        assert_eq!(e.code, ErrorCode::Unreachable);
        assert!(e.message.contains("nobody"), "{}", e.message);

        let (_, r) = run(
            &m.home,
            "cluster_read",
            json!({"node": "home", "path": "x"}),
        )
        .await;
        let e = r.expect_err("self");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("is this node"), "{}", e.message);
    })
    .await
    .expect("bounded");
}

/// A one-shot stub of `POST /tools/invoke`: records the request, answers `status` + `body`.
async fn stub_gateway(status: u16, body: Value) -> (u16, tokio::task::JoinHandle<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = s.read(&mut tmp).await.unwrap();
            buf.extend_from_slice(&tmp[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(h) = text.find("\r\n\r\n") {
                let len = text[..h]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= h + 4 + len || n == 0 {
                    break;
                }
            }
        }
        let body = body.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tools_go_to_the_serving_gateways_tools_invoke_with_its_token() {
    tokio::time::timeout(TEST_BOUND, async {
        let reply = json!({"ok": true, "result": {
            "content": [{"type": "text", "text": "fetched 12 bytes"}],
            "details": {"status": 200}}});
        let (port, seen) = stub_gateway(200, reply).await;
        let m = mesh(&["web_fetch", "sessions_list"], Some((port, "tok-office"))).await;
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "web_fetch", "args": {"url": "http://example.test"}}),
        )
        .await;
        let out = r.expect("web_fetch");
        assert!(out.text.contains("fetched 12 bytes"), "{}", out.text);
        assert_eq!(out.details["result"]["status"], 200);
        let req = seen.await.unwrap();
        assert!(req.starts_with("POST /tools/invoke HTTP/1.1"), "{req}");
        assert!(req.to_ascii_lowercase().contains("authorization: bearer tok-office"), "{req}");
        assert!(
            req.contains(r#"{"args":{"url":"http://example.test"},"tool":"web_fetch"}"#),
            "{req}"
        );
        drop(m);

        // The gateway's own refusal comes back as a tool error.
        let reply = json!({"ok": false, "error": {"type": "not_found", "message": "Tool not available: sessions_list"}});
        let (port, _seen) = stub_gateway(404, reply).await;
        let m = mesh(&["sessions_list"], Some((port, "tok"))).await;
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "sessions_list", "args": {}}),
        )
        .await;
        let e = r.expect_err("404");
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("Tool not available: sessions_list"), "{}", e.message);
        drop(m);

        // No token known: a clear error naming what is missing.
        let m = mesh(&["web_fetch"], None).await;
        let (_, r) = run(
            &m.home,
            "cluster_tool",
            json!({"node": "office", "tool": "web_fetch", "args": {}}),
        )
        .await;
        let e = r.expect_err("no gateway");
        assert_eq!(e.code, ErrorCode::ConfigInvalid);
        assert!(e.message.contains("gateway"), "{}", e.message);
    })
    .await
    .expect("bounded");
}

/// Every piece of `tool.call` on office, asked the way `rawResult` says: the result-part
/// chunks (0x00 + piece) and the end payload, concatenated; and how many parts there were.
async fn tool_call_pieces(m: &Mesh, payload: Value) -> (usize, Vec<u8>) {
    use clawmatrix::rpc::{CallOptions, StreamItem};
    let mut s = m
        .home
        .call_stream(
            "office",
            "tool.call",
            payload.to_string().into_bytes(),
            CallOptions {
                deadline: Duration::from_secs(20),
            },
        )
        .await
        .expect("call opens");
    let (mut parts, mut all) = (0, Vec::new());
    while let Some(item) = s.next().await {
        match item.expect("no stream error") {
            StreamItem::Chunk(c) => {
                assert_eq!(c[0], 0, "a result part");
                parts += 1;
                all.extend_from_slice(&c[1..]);
            }
            StreamItem::End(e) => {
                all.extend_from_slice(&e);
                return (parts, all);
            }
        }
    }
    panic!("the call ended without an end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_read_crosses_in_pieces_raw_for_new_callers_and_json_for_old_ones() {
    tokio::time::timeout(TEST_BOUND, async {
        let m = mesh(&[], None).await;
        // ~900 KiB (under the default 1 MiB maxOutputBytes) of multi-byte text, so piece
        // boundaries fall inside characters and JSON would need escapes (quotes, newlines).
        let content = "é🦀 \"quoted\" line\n".repeat(40_000);
        assert!(content.len() > 3 * 256 * 1024 && content.len() < 1024 * 1024);
        std::fs::write(m.root.join("large.txt"), &content).unwrap();

        // The tool as agents call it: the whole text, behind the line naming the node.
        let (_, r) = run(
            &m.home,
            "cluster_read",
            json!({"node": "office", "path": "large.txt"}),
        )
        .await;
        let out = r.expect("read");
        assert_eq!(
            out.text.len(),
            "[read ran on office]\n".len() + content.len()
        );
        assert!(out.text == format!("[read ran on office]\n{content}"));
        assert_eq!(out.details["node"], "office");

        // On the wire, a caller that asks for it gets the raw form: marker, sizes, head, and
        // the text's bytes as they are.
        let args = json!({"path": "large.txt"});
        let (parts, raw) =
            tool_call_pieces(&m, json!({"tool": "read", "args": args, "rawResult": true})).await;
        assert!(parts >= 3, "{parts} parts");
        assert_eq!(raw[0], 1);
        let text_len = u64::from_be_bytes(raw[1..9].try_into().unwrap()) as usize;
        let head_len = u32::from_be_bytes(raw[9..13].try_into().unwrap()) as usize;
        assert_eq!(text_len, content.len());
        let head: Value = serde_json::from_slice(&raw[13..13 + head_len]).unwrap();
        assert_eq!(head["ok"], true);
        assert!(raw[13 + head_len..] == *content.as_bytes());

        // A caller of an older version (no rawResult) still gets the JSON form.
        let (parts, json_bytes) = tool_call_pieces(&m, json!({"tool": "read", "args": args})).await;
        assert!(parts >= 3, "{parts} parts");
        let v: Value = serde_json::from_slice(&json_bytes).expect("JSON");
        assert_eq!(v["ok"], true);
        assert!(v["text"].as_str() == Some(content.as_str()));
    })
    .await
    .expect("bounded");
}

//! Per-caller access rules (`access`) enforced on the serving node over real loopback sockets:
//! home dials office directly, office's rules refuse some of what home asks for. Each refusal
//! names its rule (tool call, handoff, message, model request); the calls next to it still run.
//! Tool refusals are audited with the rule, the caller node and its agent. A model request one
//! node refuses is served by the next node that allows it.

mod loopback_common;
mod proxy_support;
mod tools_support;

#[path = "support/fake_host.rs"]
mod fake_host;

use std::collections::HashMap;
use std::time::Duration;

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::handoff::{HOST_AGENT_RUN, HOST_AGENT_SEND};
use clawmatrix::proxy::token;
use clawmatrix::tools::remote::{ToolCaller, ToolEvent};
use clawmatrix::tools::ToolOutput;
use fake_host::{FakeHost, FakeHostOptions};
use loopback_common::*;
use serde_json::{json, Value};
use tools_support::TempDir;

const TEST_BOUND: Duration = Duration::from_secs(40);

/// office listens with `office_extra` in its config; home dials it. Returns when each sees the
/// other directly.
async fn pair(office_extra: Value, office_opts: StartOptions) -> (Node, Node) {
    let port = reserve_port();
    let office = start_with(config("office", Some(port), &[], office_extra), office_opts);
    let home = start(config(
        "home",
        None,
        &[("office", port)],
        json!({"models": []}),
    ));
    wait_for("home and office linked", Duration::from_secs(10), || {
        is_direct(&home, "office") && is_direct(&office, "home")
    })
    .await;
    (office, home)
}

fn caller() -> ToolCaller {
    ToolCaller {
        agent_id: Some("assistant".into()),
        session_key: None,
    }
}

/// Run a tool on `node` to its result.
async fn run(node: &Node, name: &str, args: Value) -> Result<ToolOutput, Error> {
    let call = node.start_tool(name, &args, caller());
    while let Some(step) = call.next().await {
        match step {
            Ok(ToolEvent::Progress { .. }) => {}
            Ok(ToolEvent::Result(out)) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
    panic!("{name}: no result");
}

fn audit_lines(state: &TempDir) -> Vec<Value> {
    let text = std::fs::read_to_string(state.join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_refused_by_a_rule_names_it_and_is_audited_while_other_tools_still_run() {
    tokio::time::timeout(TEST_BOUND, async {
        let root = TempDir::new("access-root");
        let state = TempDir::new("access-state");
        std::fs::write(root.join("notes.txt"), "hello\n").unwrap();
        let (_office, home) = pair(
            json!({
                "toolProxy": {"enabled": true, "root": root.path().to_string_lossy()},
                "access": {"rules": [
                    {"name": "no-exec", "nodes": ["home"], "tools": ["exec"], "effect": "deny"},
                    {"nodes": ["*"], "callerAgents": ["nobody"], "tools": ["*"], "effect": "deny"}
                ]}
            }),
            StartOptions {
                state_dir: Some(state.path().to_path_buf()),
                ..StartOptions::default()
            },
        )
        .await;

        let e = run(
            &home,
            "cluster_exec",
            json!({"node": "office", "command": "touch ran"}),
        )
        .await
        .expect_err("exec is refused");
        assert_eq!(e.code, ErrorCode::Denied, "{e:?}");
        assert!(
            e.message.contains(
                "refused by access rule 'no-exec' (access.rules[0]): node home (agent \
                 assistant) may not use tool exec"
            ),
            "{}",
            e.message
        );
        assert!(!root.join("ran").exists(), "the command never ran");

        // Next to it, read is allowed (the second rule is for another calling agent).
        let out = run(
            &home,
            "cluster_read",
            json!({"node": "office", "path": "notes.txt"}),
        )
        .await
        .expect("read is allowed");
        assert!(out.text.ends_with("hello\n"), "{}", out.text);

        let lines = audit_lines(&state);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["tool"], "exec");
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[0]["rule"], "no-exec");
        assert_eq!(lines[0]["caller_node"], "home");
        assert_eq!(lines[0]["caller_agent"], "assistant");
        assert_eq!(lines[1]["tool"], "read");
        assert_eq!(lines[1]["outcome"], "ok");
        assert!(lines[1].get("rule").is_none(), "{}", lines[1]);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_and_a_message_to_a_refused_agent_name_the_rule_and_never_reach_openclaw() {
    tokio::time::timeout(TEST_BOUND, async {
        let (office, home) = pair(
            json!({
                "agents": [{"id": "coder"}, {"id": "reviewer"}],
                "access": {"rules": [
                    {"name": "no-reviewer", "nodes": ["home"], "callerAgents": ["assistant"],
                     "agents": ["reviewer"], "effect": "deny"}
                ]}
            }),
            StartOptions::default(),
        )
        .await;
        let host = FakeHost::spawn(
            office.host(),
            FakeHostOptions::agents(&["coder", "reviewer"]),
        );
        wait_for("home sees office's agents", Duration::from_secs(10), || {
            peer(&home, "office").is_some_and(|p| p.agents.iter().any(|a| a.id == "reviewer"))
        })
        .await;

        let e = run(
            &home,
            "cluster_handoff",
            json!({"target": "reviewer", "task": "review this"}),
        )
        .await
        .expect_err("the handoff is refused");
        assert_eq!(e.code, ErrorCode::Denied, "{e:?}");
        assert!(
            e.message.contains(
                "refused by access rule 'no-reviewer' (access.rules[0]): node home (agent \
                 assistant) may not use agent reviewer"
            ),
            "{}",
            e.message
        );
        let e = run(
            &home,
            "cluster_send",
            json!({"target": "reviewer", "message": "ping"}),
        )
        .await
        .expect_err("the message is refused");
        assert_eq!(e.code, ErrorCode::Denied, "{e:?}");
        assert!(e.message.contains("'no-reviewer'"), "{}", e.message);
        assert!(host.seen_kind(HOST_AGENT_RUN).is_empty());
        assert!(host.seen_kind(HOST_AGENT_SEND).is_empty());

        // The agent next to it still takes handoffs.
        let out = run(
            &home,
            "cluster_handoff",
            json!({"target": "coder", "task": "write it"}),
        )
        .await
        .expect("coder is allowed");
        assert!(out.text.trim_end().ends_with("write it"), "{}", out.text);
        assert_eq!(host.seen_kind(HOST_AGENT_RUN).len(), 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_request_refused_by_the_default_is_a_403_naming_it_and_an_allowed_model_answers() {
    tokio::time::timeout(TEST_BOUND, async {
        let up = proxy_support::start_upstream().await;
        let (office, home) = pair(
            json!({
                "models": [{"id": "m-open", "provider": "mock"}, {"id": "m-closed", "provider": "mock"}],
                "access": {"default": "deny", "rules": [
                    {"name": "open-models", "nodes": ["home"], "models": ["m-open"], "effect": "allow"},
                    {"name": "agents-only", "nodes": ["*"], "callerAgents": ["*"], "models": ["*"],
                     "effect": "allow"}
                ]}
            }),
            StartOptions::default(),
        )
        .await;
        let providers = HashMap::from([(
            "mock".to_string(),
            json!({"baseUrl": up.base_url(), "api": "openai-completions"}),
        )]);
        let _office_host = proxy_support::fake_host(&office, providers, Some("sk-test"));
        let _home_host = proxy_support::fake_host(&home, HashMap::new(), None);
        let reply = json!({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]});
        up.script("m-open", proxy_support::json_script(200, reply.clone(), &[]));
        up.script("m-closed", proxy_support::json_script(200, reply.clone(), &[]));
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", home.config().proxy_port)
            .parse()
            .unwrap();
        let tok = token::derive(SECRET, "home");
        wait_for("home sees office's models", Duration::from_secs(10), || {
            peer(&home, "office").is_some_and(|p| p.models.iter().any(|m| m.id == "m-closed"))
        })
        .await;
        let fetch = |model: &str| {
            proxy_support::fetch(
                addr,
                "POST",
                "/v1/chat/completions",
                Some(&tok),
                proxy_support::chat(model, false),
                Duration::from_secs(10),
            )
        };

        let got = fetch("m-closed").await;
        assert_eq!(got.status, 403, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.headers["x-clawmatrix-error"], "access_denied");
        let message = got.json()["error"]["message"].as_str().unwrap_or("").to_owned();
        assert!(
            message.contains(
                "refused by access.default \"deny\": no rule lets node home use model m-closed"
            ),
            "{message}"
        );
        assert!(up.seen().is_empty(), "the refused request never reached the upstream");

        let got = fetch("m-open").await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.json(), reply);
        assert_eq!(up.seen().len(), 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_request_one_node_refuses_is_served_by_the_next_node_that_allows_it() {
    tokio::time::timeout(TEST_BOUND, async {
        let up = proxy_support::start_upstream().await;
        let providers = HashMap::from([(
            "mock".to_string(),
            json!({"baseUrl": up.base_url(), "api": "openai-completions"}),
        )]);
        let served = json!({"models": [{"id": "m-shared", "provider": "mock"}]});
        // office-0 is home's direct peer, so it is tried first; office-1 is one hop further.
        let port = reserve_port();
        let mut strict = served.clone();
        strict["access"] = json!({"rules": [
            {"name": "not-home", "nodes": ["home"], "models": ["*"], "effect": "deny"}
        ]});
        let office0 = start(config("office-0", Some(port), &[], strict));
        let office1 = start(config("office-1", None, &[("office-0", port)], served));
        let home = start(config("home", None, &[("office-0", port)], json!({"models": []})));
        let _hosts = [
            proxy_support::fake_host(&office0, providers.clone(), Some("sk-test")),
            proxy_support::fake_host(&office1, providers, Some("sk-test")),
            proxy_support::fake_host(&home, HashMap::new(), None),
        ];
        wait_for("home reaches office-1 via office-0", Duration::from_secs(10), || {
            is_direct(&home, "office-0") && is_relayed_via(&home, "office-1", "office-0")
        })
        .await;
        let reply = json!({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]});
        up.script("m-shared", proxy_support::json_script(200, reply.clone(), &[]));
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", home.config().proxy_port)
            .parse()
            .unwrap();
        let got = proxy_support::fetch(
            addr,
            "POST",
            "/v1/chat/completions",
            Some(&token::derive(SECRET, "home")),
            proxy_support::chat("m-shared", false),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body()));
        assert_eq!(got.headers["x-clawmatrix-node"], "office-1");
        assert_eq!(got.json(), reply);
        assert_eq!(up.seen().len(), 1);
        let log = drain(&home).await;
        assert!(
            log.iter()
                .any(|l| l.contains("m-shared on office-0") && l.contains("'not-home'")),
            "home tried office-0 first and was refused: {log:?}"
        );
    })
    .await
    .expect("bounded");
}

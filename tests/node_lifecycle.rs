//! The node's lifecycle against real sockets: start binds, stop releases, restart rebinds, a
//! second node (as after an OpenClaw reload loads a second addon copy) can take the same ports,
//! bind failures name the field, and sockets handed over in `StartOptions` are served on.
//!
//! The tests of the node's own bind hold their ports with [`ports::hold_port`] (bound, not
//! listening) rather than handing sockets over: the bind of the configured port is what they
//! test.

use std::net::TcpListener;

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::config::Config;
use clawmatrix::error::ErrorCode;
use clawmatrix::node::listener::PreBound;

mod ports;
use ports::{handover, hold_port, reserve_port};

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn config(listen_port: u16, proxy_port: u16) -> Config {
    let v = serde_json::json!({
        "nodeId": "life-01",
        "secret": "0123456789abcdef",
        "listen": true,
        "listenHost": "127.0.0.1",
        "listenPort": listen_port,
        "proxyPort": proxy_port,
        "agents": [{ "id": "main", "description": "d", "tags": [] }],
    });
    Config::from_json(&v).expect("valid config").config
}

#[test]
fn start_binds_stop_releases_and_restart_rebinds() {
    let (l, p) = (hold_port(), hold_port());
    let (lp, pp) = (l.port, p.port);
    let node = Node::new(config(lp, pp));
    let info = node.start(&StartOptions::default()).expect("start");
    assert_eq!(info.listen_addr.map(|a| a.port()), Some(lp));
    assert_eq!(info.proxy_addr.port(), pp);
    assert!(!port_is_free(lp) && !port_is_free(pp));
    // start is idempotent
    assert_eq!(node.start(&StartOptions::default()).expect("again"), info);

    node.stop();
    assert!(port_is_free(lp), "listen port released");
    assert!(port_is_free(pp), "proxy port released");
    node.stop(); // idempotent

    node.start(&StartOptions::default()).expect("restart");
    assert!(!port_is_free(pp));
    assert!(node.status().running);
    node.stop();
    assert!(!node.status().running);
}

#[test]
fn a_second_node_takes_over_the_ports_after_the_first_stops() {
    let (l, p) = (hold_port(), hold_port());
    let (lp, pp) = (l.port, p.port);
    let first = Node::new(config(lp, pp));
    first.start(&StartOptions::default()).expect("first");
    let second = Node::new(config(lp, pp));
    let err = second
        .start(&StartOptions::default())
        .expect_err("ports taken");
    assert_eq!(err.code, ErrorCode::BindFailed);
    assert!(
        err.message
            .starts_with("listenPort: cannot bind 127.0.0.1:"),
        "{}",
        err.message
    );
    assert!(
        !second.is_running(),
        "a failed start leaves nothing running"
    );
    first.stop();
    second
        .start(&StartOptions::default())
        .expect("second after first stopped");
    second.stop();
}

#[test]
fn proxy_port_conflict_names_proxy_port_and_leaves_the_listener_unbound() {
    let (l, p) = (hold_port(), hold_port());
    let (lp, pp) = (l.port, p.port);
    let _blocker = TcpListener::bind(("127.0.0.1", pp)).expect("blocker");
    let node = Node::new(config(lp, pp));
    let err = node
        .start(&StartOptions::default())
        .expect_err("proxy taken");
    assert_eq!(err.code, ErrorCode::BindFailed);
    assert!(
        err.message
            .contains(&format!("proxyPort: cannot bind 127.0.0.1:{pp}")),
        "{}",
        err.message
    );
    assert!(
        port_is_free(lp),
        "the listener bound before the failure was released"
    );
}

#[test]
fn dropping_a_running_node_releases_its_ports() {
    let (l, p) = (hold_port(), hold_port());
    let (lp, pp) = (l.port, p.port);
    {
        let node = Node::new(config(lp, pp));
        node.start(&StartOptions::default()).expect("start");
    }
    assert!(port_is_free(lp) && port_is_free(pp));
}

#[test]
fn state_dir_is_created() {
    let dir = std::env::temp_dir().join(format!("clawmatrix-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = Node::new(config(reserve_port(), reserve_port()));
    node.start(&handover(
        node.config(),
        StartOptions {
            state_dir: Some(dir.join("nested")),
            ..StartOptions::default()
        },
    ))
    .expect("start");
    assert!(dir.join("nested").is_dir());
    node.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tools_validate_arguments_before_anything_else_and_name_missing_capabilities() {
    let node = Node::new(config(reserve_port(), reserve_port()));
    let err = node
        .invoke_tool("cluster_peers", &serde_json::json!({}))
        .expect_err("not running");
    assert_eq!(err.code, ErrorCode::NotRunning);
    let err = node
        .invoke_tool("cluster_read", &serde_json::json!({"node": "x"}))
        .expect_err("bad args");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(err.message, "cluster_read.path: required");

    node.start(&handover(node.config(), StartOptions::default()))
        .expect("start");
    let out = node
        .invoke_tool("cluster_peers", &serde_json::Value::Null)
        .expect("peers");
    assert!(out.text.contains("ClawMatrix node life-01"), "{}", out.text);
    assert_eq!(out.details["nodeId"], "life-01");
    let err = node
        .invoke_tool(
            "cluster_handoff",
            &serde_json::json!({"target": "coder", "task": "t"}),
        )
        .expect_err("streams");
    // Handoff streams: the synchronous entry point points at the streaming one.
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(
        err.message.contains("use Node::start_tool"),
        "{}",
        err.message
    );
    let err = node
        .invoke_tool("cluster_nope", &serde_json::json!({}))
        .expect_err("unknown tool");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    node.stop();
}

fn listening(port: u16) -> PreBound {
    PreBound::new(TcpListener::bind(("127.0.0.1", port)).expect("bind"))
}

#[test]
fn handed_over_sockets_are_served_on_and_a_restart_binds_the_configured_ports_itself() {
    let (l, p) = (hold_port(), hold_port());
    let (lp, pp) = (l.port, p.port);
    let node = Node::new(config(lp, pp));
    let opts = StartOptions {
        listener: Some(listening(lp)),
        proxy_listener: Some(listening(pp)),
        ..StartOptions::default()
    };
    let info = node.start(&opts).expect("start");
    assert_eq!(info.listen_addr.map(|a| a.port()), Some(lp));
    assert_eq!(info.proxy_addr.port(), pp);
    assert!(!port_is_free(lp) && !port_is_free(pp));
    // The proxy answers on the handed socket.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pp)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    std::io::Write::write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut head).expect("answer");
    assert!(head.starts_with(b"HTTP/1.1 "), "{head:?}");
    drop(s);
    node.stop();
    assert!(
        port_is_free(lp) && port_is_free(pp),
        "stop closed the handed sockets"
    );
    // The sockets went to the first start; the same options now bind the configured ports.
    let again = node.start(&opts).expect("restart");
    assert_eq!(again, info);
    node.stop();
}

#[test]
fn a_handed_over_socket_on_another_port_fails_start_naming_the_field() {
    let (l, p, other) = (hold_port(), hold_port(), hold_port());
    let node = Node::new(config(l.port, p.port));
    let err = node
        .start(&StartOptions {
            listener: Some(listening(other.port)),
            ..StartOptions::default()
        })
        .expect_err("wrong port");
    assert_eq!(err.code, ErrorCode::BindFailed);
    assert!(
        err.message
            .starts_with("listenPort: the handed-over socket is bound to")
            && err
                .message
                .contains(&format!("not to the configured port {}", l.port)),
        "{}",
        err.message
    );
    assert!(!node.is_running());
    assert!(port_is_free(other.port), "the refused socket was closed");
    let err = node
        .start(&StartOptions {
            proxy_listener: Some(listening(other.port)),
            ..StartOptions::default()
        })
        .expect_err("wrong port");
    assert!(err.message.starts_with("proxyPort: "), "{}", err.message);
    assert!(
        port_is_free(l.port),
        "the listener bound before the failure was released"
    );
}

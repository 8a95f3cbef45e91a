//! `wss://` links with the test fixtures in `tests/fixtures/tls/`: a dialer pinned to the CA
//! that signed the listener's certificate links up; one pinned to another CA refuses it, logs
//! why and backs off; bad TLS files fail `start()` naming the field.

mod loopback_common;

use std::time::Duration;

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::ErrorCode;
use clawmatrix::rpc::METHOD_ECHO;
use loopback_common::*;
use serde_json::json;

const TEST_BOUND: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tls_hub(id: &str) -> (Node, u16) {
    let port = reserve_port();
    let tls = json!({"tls": {"certFile": fixture("server.pem"), "keyFile": fixture("server.key")}});
    (start(config(id, Some(port), &[], tls)), port)
}

fn wss_dialer(id: &str, hub: &str, port: u16, ca: &str) -> Node {
    let mut c = config(id, None, &[], json!({"tls": {"caFile": fixture(ca)}}));
    let url = format!("wss://localhost:{port}");
    let v = json!({"nodeId": hub, "url": url});
    let mut j = c.to_json();
    j["peers"] = json!([v]);
    c = clawmatrix::config::Config::from_json(&j)
        .expect("valid")
        .config;
    start(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_pinned_ca_links_up_and_carries_requests() {
    tokio::time::timeout(TEST_BOUND, async {
        let (hub, port) = tls_hub("tls-hub");
        let logs = drain(&hub).await.join("\n");
        assert!(logs.contains("(wss)"), "{logs}");
        let leaf = wss_dialer("tls-leaf", "tls-hub", port, "ca.pem");
        wait_for("wss link up", Duration::from_secs(10), || {
            is_direct(&leaf, "tls-hub") && is_direct(&hub, "tls-leaf")
        })
        .await;
        let body = vec![7u8; 4096];
        let got = leaf
            .request("tls-hub", METHOD_ECHO, body.clone(), Duration::from_secs(5))
            .await
            .expect("echo over wss");
        assert_eq!(got, body);
        leaf.stop();
        hub.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_pinned_to_another_ca_refuses_the_listener_and_backs_off() {
    tokio::time::timeout(TEST_BOUND, async {
        let (hub, port) = tls_hub("tls-hub2");
        let leaf = wss_dialer("tls-stranger", "tls-hub2", port, "other-ca.pem");
        let mut failures: Vec<String> = Vec::new();
        let t0 = std::time::Instant::now();
        while failures.len() < 2 {
            assert!(t0.elapsed() < Duration::from_secs(8), "{failures:#?}");
            failures.extend(
                drain(&leaf)
                    .await
                    .into_iter()
                    .filter(|l| l.contains("cannot link to tls-hub2")),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Backoff grows: "retrying in N ms", 1 s ± 20 % then 2 s ± 20 %.
        let delay = |l: &str| -> u64 {
            l.rsplit("retrying in ")
                .next()
                .and_then(|r| r.trim_end_matches(" ms").parse().ok())
                .unwrap_or(0)
        };
        let (d1, d2) = (delay(&failures[0]), delay(&failures[1]));
        assert!((800..=1200).contains(&d1), "{failures:#?}");
        assert!((1600..=2400).contains(&d2), "{failures:#?}");
        assert!(failures[0].contains("TLS"), "{failures:#?}");
        assert!(
            failures[0].contains("UnknownIssuer") || failures[0].contains("certificate"),
            "{failures:#?}"
        );
        assert!(failures[0].contains("retrying in"), "{failures:#?}");
        assert_eq!(leaf.status().mesh.links_up, 0);
        assert_eq!(hub.status().mesh.links_up, 0);
        leaf.stop();
        hub.stop();
    })
    .await
    .expect("test bounded");
}

#[test]
fn missing_or_bad_tls_files_fail_start_naming_the_field() {
    // Held, not reserved: the check at the end binds the port to see that the node did not.
    let hold = hold_port();
    let port = hold.port;
    let c = config(
        "tls-bad",
        Some(port),
        &[],
        json!({"tls": {"certFile": fixture("nope.pem"), "keyFile": fixture("server.key")}}),
    );
    let err = Node::new(c)
        .start(&StartOptions::default())
        .expect_err("missing cert");
    assert_eq!(err.code, ErrorCode::ConfigInvalid);
    assert!(err.message.starts_with("tls.certFile:"), "{}", err.message);

    let c = config(
        "tls-bad",
        Some(port),
        &[],
        json!({"tls": {"certFile": fixture("server.pem"), "keyFile": fixture("ca.pem")}}),
    );
    let err = Node::new(c)
        .start(&StartOptions::default())
        .expect_err("not a key");
    assert_eq!(err.code, ErrorCode::ConfigInvalid);
    assert!(err.message.starts_with("tls.keyFile:"), "{}", err.message);

    let c = config(
        "tls-bad",
        None,
        &[("x", port)],
        json!({"tls": {"caFile": fixture("README.md")}}),
    );
    let err = Node::new(c)
        .start(&StartOptions::default())
        .expect_err("no CA in file");
    assert!(err.message.starts_with("tls.caFile:"), "{}", err.message);
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing was bound"
    );
}

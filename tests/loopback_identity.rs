//! Node identity over real sockets, in process: a node's key persists in its state dir; pinned
//! keys link and a wrong pin is refused; a node that comes back with a new key is refused
//! (handshake and records) and reported, until an operator resets its trust; a revoked key is
//! refused; and a secret rotation across three nodes (listener first, then dialers, then the old
//! secret removed) never refuses a link or loses a call made while the mesh is linked.

mod loopback_common;

use std::time::Duration;

use clawmatrix::app::Node;
use clawmatrix::rpc::METHOD_ECHO;
use loopback_common::*;
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(60);
const OLD: &str = "the-old-mesh-secret-0123456789";
const NEW: &str = "the-new-mesh-secret-9876543210";

fn fingerprint(n: &Node) -> String {
    n.status().identity.expect("running").fingerprint
}

fn trust_state(n: &Node, id: &str) -> Option<String> {
    n.status()
        .identity
        .expect("running")
        .trust
        .into_iter()
        .find(|t| t.node_id == id)
        .map(|t| t.state)
}

async fn echo(from: &Node, to: &str) -> bool {
    from.request(to, METHOD_ECHO, b"ping".to_vec(), Duration::from_secs(3))
        .await
        .is_ok_and(|r| r == b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_persists_pins_link_and_a_new_key_is_refused_until_its_trust_is_reset() {
    tokio::time::timeout(TEST_BOUND, async {
        let (hub_state, office_state) = (StateDir::new("hub"), StateDir::new("office"));
        let hp = reserve_port();
        let hub = start_in(config("hub", Some(hp), &[], json!({})), &hub_state);
        let hub_fp = fingerprint(&hub);
        // The key file is created 0600 and the same key comes back after a restart.
        let key_file = hub_state.0.join("node.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file)
                .expect("key file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        hub.stop();
        let hub = start_in(config("hub", Some(hp), &[], json!({})), &hub_state);
        assert_eq!(fingerprint(&hub), hub_fp, "the key persisted");

        // office pins the hub's key: linked, and the hub shows as pinned.
        let pinned = json!({"identity": {"pins": {"hub": hub_fp}}});
        let office = start_in(
            config("office", None, &[("hub", hp)], pinned),
            &office_state,
        );
        wait_for(
            "office linked to the pinned hub",
            Duration::from_secs(10),
            || is_direct(&office, "hub") && is_direct(&hub, "office"),
        )
        .await;
        assert_eq!(trust_state(&office, "hub").as_deref(), Some("pinned"));
        assert_eq!(trust_state(&hub, "office").as_deref(), Some("first_seen"));
        let office_fp = fingerprint(&office);
        let p = peer(&office, "hub").expect("hub");
        assert_eq!(p.fingerprint.as_deref(), Some(hub_fp.as_str()));
        assert_eq!(p.trust.as_deref(), Some("pinned"));

        // A node pinning a wrong key for the hub is refused at the handshake.
        let wrong = json!({"identity": {"pins": {"hub": office_fp}}});
        let skeptic = start(config("skeptic", None, &[("hub", hp)], wrong));
        wait_for(
            "key_changed counted at the dialer",
            Duration::from_secs(10),
            || {
                skeptic
                    .status()
                    .mesh
                    .key_refusals
                    .get("key_changed")
                    .is_some_and(|n| *n >= 1)
            },
        )
        .await;
        assert!(!is_direct(&skeptic, "hub"));
        skeptic.stop();

        // office is reinstalled: its key file is gone, it starts with a new key.
        office.stop();
        std::fs::remove_file(office_state.0.join("node.key")).expect("remove key");
        let office = start_in(
            config(
                "office",
                None,
                &[("hub", hp)],
                json!({"identity": {"pins": {"hub": hub_fp}}}),
            ),
            &office_state,
        );
        assert_ne!(fingerprint(&office), office_fp, "a new key");
        wait_for(
            "the hub refuses office's new key",
            Duration::from_secs(10),
            || reject_count(&hub, "key_changed") >= 1,
        )
        .await;
        assert!(!is_direct(&hub, "office"));
        assert_eq!(trust_state(&hub, "office").as_deref(), Some("changed"));
        let lines = drain(&hub).await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("REFUSED node key") && l.contains("office")),
            "reported loudly: {lines:#?}"
        );
        let text = clawmatrix::status::render_text(&hub.status());
        assert!(text.contains("REFUSED"), "{text}");
        // The operator checked, and resets office's trust on the hub: office links again.
        assert!(hub.reset_trust("office").await.expect("reset"));
        wait_for(
            "office linked with its new key",
            Duration::from_secs(30),
            || is_direct(&hub, "office"),
        )
        .await;
        assert_eq!(trust_state(&hub, "office").as_deref(), Some("first_seen"));
        // The new binding was persisted (by the store's own task, off the actor: poll for it):
        // the hub remembers it across its own restart.
        let new_key = office.status().identity.expect("running").key;
        let path = hub_state.0.join("trust.json");
        let persisted = || {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|t| t["nodes"]["office"]["key"] == new_key.as_str())
        };
        wait_for(
            "the new key in trust.json",
            Duration::from_secs(10),
            persisted,
        )
        .await;
        office.stop();
        hub.stop();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_everywhere_it_is_revoked() {
    tokio::time::timeout(TEST_BOUND, async {
        let thief_state = StateDir::new("thief");
        // The thief's key, as the operator revokes it.
        let thief = start_in(config("laptop", None, &[], json!({})), &thief_state);
        let fp = fingerprint(&thief);
        thief.stop();
        let hp = reserve_port();
        let hub = start(config(
            "hub",
            Some(hp),
            &[],
            json!({"identity": {"revoked": [fp]}}),
        ));
        let thief = start_in(
            config("laptop", None, &[("hub", hp)], json!({})),
            &thief_state,
        );
        wait_for("revoked refused", Duration::from_secs(10), || {
            reject_count(&hub, "revoked") >= 1
        })
        .await;
        assert!(!is_direct(&hub, "laptop"));
        thief.stop();
        hub.stop();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotation_across_three_nodes_refuses_no_link_and_loses_no_call() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let states = [
            StateDir::new("cloud"),
            StateDir::new("office"),
            StateDir::new("home"),
        ];
        let cp = reserve_port();
        let secrets = |secret: &str, previous: Option<&str>| match previous {
            Some(p) => json!({"secret": secret, "secretPrevious": p}),
            None => json!({"secret": secret}),
        };
        let node = |i: usize, extra: Value| {
            let c = match i {
                0 => config("cloud", Some(cp), &[], extra),
                1 => config("office", None, &[("cloud", cp)], extra),
                _ => config("home", None, &[("cloud", cp)], extra),
            };
            start_in(c, &states[i])
        };
        let mut nodes: Vec<Node> = (0..3).map(|i| node(i, secrets(OLD, None))).collect();
        // Each step changes some nodes' config (a restart, as OpenClaw applies it); after each,
        // the mesh links again and calls across it work.
        let steps: [(&[usize], Value); 3] = [
            (&[0], secrets(NEW, Some(OLD))), // the listener first: it accepts both
            (&[1, 2], secrets(NEW, Some(OLD))), // then the dialers: they dial with the new one
            (&[0, 1, 2], secrets(NEW, None)), // then the old secret goes
        ];
        let mut calls = 0;
        // Every node instance's bad_mac count, taken before it is replaced (a restart starts
        // the count again), so a refusal at any step is seen.
        let mut bad_macs = 0;
        for (step, (which, extra)) in steps.iter().enumerate() {
            wait_for("linked", Duration::from_secs(20), || {
                is_relayed_via(&nodes[2], "office", "cloud")
                    && is_relayed_via(&nodes[1], "home", "cloud")
            })
            .await;
            for _ in 0..5 {
                assert!(echo(&nodes[2], "office").await, "a call before step {step}");
                calls += 1;
            }
            for &i in *which {
                bad_macs += reject_count(&nodes[i], "bad_mac");
                nodes[i].stop();
                nodes[i] = node(i, extra.clone());
            }
        }
        wait_for(
            "linked on the new secret only",
            Duration::from_secs(20),
            || {
                is_relayed_via(&nodes[2], "office", "cloud")
                    && is_relayed_via(&nodes[1], "home", "cloud")
            },
        )
        .await;
        for _ in 0..5 {
            assert!(echo(&nodes[2], "office").await, "a call after the rotation");
            calls += 1;
        }
        assert_eq!(calls, 20);
        // No link was ever refused for its secret (the listener went first), at any step.
        for n in &nodes {
            bad_macs += reject_count(n, "bad_mac");
        }
        assert_eq!(
            bad_macs, 0,
            "no node instance refused a secret during the rotation"
        );
        // A straggler still on the old secret alone is now refused.
        let straggler = start(config(
            "straggler",
            None,
            &[("cloud", cp)],
            secrets(OLD, None),
        ));
        wait_for("the old secret refused", Duration::from_secs(10), || {
            reject_count(&nodes[0], "bad_mac") >= 1
        })
        .await;
        straggler.stop();
        for n in nodes {
            n.stop();
        }
    })
    .await
    .expect("bounded");
}

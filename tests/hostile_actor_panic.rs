//! A node whose actor fails says so and comes back: the actor is made to panic (as a bug in it
//! would), status reports `running: false` with the failure's reason while it is down, the
//! supervisor restarts it after a backoff, and the node links to its peer and serves calls
//! again, with the restart counted in status.

mod loopback_common;

use std::time::Duration;

use clawmatrix::node::supervisor::RESTART_BACKOFF_START;
use loopback_common::*;
use serde_json::json;

const TEST_BOUND: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_is_reported_failed_then_restarted_and_links_again() {
    tokio::time::timeout(TEST_BOUND, async {
        let cp = reserve_port();
        let cloud = start(config("cloud", Some(cp), &[], json!({})));
        let home = start(config("home", None, &[("cloud", cp)], json!({})));
        wait_for("home linked to cloud", Duration::from_secs(10), || {
            is_direct(&home, "cloud") && is_direct(&cloud, "home")
        })
        .await;
        let before = home.status();
        assert!(before.running && before.failed.is_none() && before.restarts.is_none());
        drain(&home).await;

        assert!(home.debug_panic_actor("injected fault: routes out of step"));
        // Down: not running, and why.
        let to_failed = wait_for("status reports the failure", Duration::from_secs(5), || {
            let s = home.status();
            !s.running
                && s.failed.as_ref().is_some_and(|f| {
                    f.restarting
                        && f.reason
                            == "the node actor panicked: injected fault: routes out of step"
                })
        })
        .await;
        let down = home.status();
        let text = clawmatrix::status::render_text(&down);
        assert!(text.contains(" - FAILED"), "{text}");
        assert!(text.contains("injected fault: routes out of step (restarting)"), "{text}");

        // Back: running, restarted once, linked and serving again.
        let to_linked = wait_for("restarted and linked again", Duration::from_secs(10), || {
            let s = home.status();
            s.running
                && s.failed.is_none()
                && s.restarts.as_ref().is_some_and(|r| r.count == 1)
                && is_direct(&home, "cloud")
                && is_direct(&cloud, "home")
        })
        .await;
        eprintln!(
            "failure seen in status after {to_failed:?}; restarted and linked again {to_linked:?} later"
        );
        let up = home.status();
        let restarts = up.restarts.clone().expect("restarts");
        assert!(restarts.last_failure.reason.ends_with("routes out of step"));
        assert!(restarts.last_failure.at.ends_with('Z'), "{}", restarts.last_failure.at);
        assert!(clawmatrix::status::render_text(&up).contains("Restarts: 1 (last failure at "));
        let echoed = home
            .request("cloud", "mesh.echo", b"after restart".to_vec(), Duration::from_secs(5))
            .await
            .expect("echo through the restarted actor");
        assert_eq!(echoed, b"after restart");
        let log = drain(&home).await.join("\n");
        assert!(
            log.contains(&format!(
                "the node actor panicked: injected fault: routes out of step; restarting it in {} ms",
                RESTART_BACKOFF_START.as_millis()
            )),
            "{log}"
        );
        assert!(log.contains("node actor restarted (1 restart since start)"), "{log}");
        home.stop();
        assert!(!home.status().running);
    })
    .await
    .expect("bounded");
}

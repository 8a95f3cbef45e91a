//! Handshake: literal JSON fixtures per frame, success both ways, and every rejection path
//! (wrong secret both directions, replayed hello, replayed transcript, self id, version,
//! reflected MAC, wrong node, duplicate node, malformed, timeout).

use clawmatrix::proto::auth::{compute_mac, Role, Transcript};
use clawmatrix::proto::handshake::HANDSHAKE_TIMEOUT_MS;
use clawmatrix::proto::{
    Acceptor, Bytes32, Dialer, HandshakeConfig, HandshakeFrame, NonceCache, RejectCode, Step,
};

const SECRET: &[u8] = b"correct horse battery staple";

fn cfg(node: &str, secret: &[u8]) -> HandshakeConfig {
    HandshakeConfig::new(node, secret)
}

fn ok(_: &str) -> Result<(), RejectCode> {
    Ok(())
}

fn send(step: Step) -> String {
    match step {
        Step::Send(f) => f.encode(),
        other => panic!("expected Send, got {other:?}"),
    }
}

fn rejected(step: &Step) -> RejectCode {
    match step {
        Step::Rejected { code, .. } => *code,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Run dialer `d` against acceptor `a` until the acceptor's verdict on `auth`.
fn run(
    d_cfg: HandshakeConfig,
    a_cfg: HandshakeConfig,
    nonces: &mut NonceCache,
) -> (Step, Option<Step>) {
    let (mut d, hello) = Dialer::new(d_cfg, None, [1; 32], 0);
    let mut a = Acceptor::new(a_cfg, [2; 32], 0);
    let challenge = match a.on_frame(&hello.encode(), nonces, ok) {
        Step::Send(f) => f.encode(),
        other => return (other, None),
    };
    let auth = match d.on_frame(&challenge, ok) {
        Step::Send(f) => f.encode(),
        other => return (other, None),
    };
    let verdict = a.on_frame(&auth, nonces, ok);
    let dialer_end = match &verdict {
        Step::Done { send: Some(w), .. } => Some(d.on_frame(&w.encode(), ok)),
        _ => None,
    };
    (verdict, dialer_end)
}

#[test]
fn handshake_frames_match_their_literal_fixtures() {
    let n1 = Bytes32([1; 32]);
    let m = Bytes32([0xab; 32]);
    let h1 = "01".repeat(32);
    let hm = "ab".repeat(32);
    let cases = [
        (
            HandshakeFrame::Hello {
                version: 1,
                features: 3,
                node: "home-01".into(),
                nonce: n1,
            },
            format!(
                r#"{{"type":"hello","version":1,"features":3,"node":"home-01","nonce":"{h1}"}}"#
            ),
        ),
        (
            HandshakeFrame::Challenge {
                version: 1,
                features: 3,
                node: "cloud-01".into(),
                nonce: n1,
                mac: m,
            },
            format!(
                r#"{{"type":"challenge","version":1,"features":3,"node":"cloud-01","nonce":"{h1}","mac":"{hm}"}}"#
            ),
        ),
        (
            HandshakeFrame::Auth { mac: m },
            format!(r#"{{"type":"auth","mac":"{hm}"}}"#),
        ),
        (
            HandshakeFrame::Welcome { features: 3 },
            r#"{"type":"welcome","features":3}"#.to_string(),
        ),
        (
            HandshakeFrame::Reject {
                code: RejectCode::BadMac,
                reason: "authentication failed".into(),
            },
            r#"{"type":"reject","code":"bad_mac","reason":"authentication failed"}"#.to_string(),
        ),
    ];
    for (frame, json) in cases {
        assert_eq!(frame.encode(), json);
        assert_eq!(HandshakeFrame::decode(&json), Ok(frame));
    }
}

#[test]
fn reject_codes_map_to_distinct_close_codes() {
    let mut seen = std::collections::HashSet::new();
    for c in RejectCode::ALL {
        assert!((4000..4100).contains(&c.close_code()));
        assert!(seen.insert(c.close_code()), "{c}");
        let json = serde_json::to_string(&c).expect("serializes");
        assert_eq!(json, format!("\"{}\"", c.as_str()));
    }
}

#[test]
fn handshake_succeeds_and_both_sides_learn_the_peer() {
    let mut nonces = NonceCache::default();
    let (verdict, dialer) = run(cfg("home-01", SECRET), cfg("cloud-01", SECRET), &mut nonces);
    match verdict {
        Step::Done {
            peer,
            send,
            features,
        } => {
            assert_eq!(peer, "home-01");
            assert_eq!(send, Some(HandshakeFrame::Welcome { features }));
        }
        other => panic!("{other:?}"),
    }
    match dialer {
        Some(Step::Done {
            peer, send: None, ..
        }) => assert_eq!(peer, "cloud-01"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn handshake_succeeds_the_other_way_round() {
    let mut nonces = NonceCache::default();
    let (verdict, dialer) = run(cfg("cloud-01", SECRET), cfg("home-01", SECRET), &mut nonces);
    assert!(matches!(verdict, Step::Done { ref peer, .. } if peer == "cloud-01"));
    assert!(matches!(dialer, Some(Step::Done { ref peer, .. }) if peer == "home-01"));
}

#[test]
fn a_listener_with_the_wrong_secret_is_rejected_by_the_dialer() {
    let mut nonces = NonceCache::default();
    let (step, _) = run(
        cfg("home-01", SECRET),
        cfg("cloud-01", b"wrong secret 1234"),
        &mut nonces,
    );
    assert_eq!(rejected(&step), RejectCode::BadMac);
    assert!(matches!(
        step,
        Step::Rejected {
            send: Some(HandshakeFrame::Reject { .. }),
            by_peer: false,
            ..
        }
    ));
}

#[test]
fn a_dialer_with_the_wrong_secret_is_rejected_by_the_listener() {
    // The dialer cannot verify a listener MAC under the wrong secret either, so build its auth
    // by hand: a MAC over the right transcript but the wrong key.
    let mut nonces = NonceCache::default();
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let hello = HandshakeFrame::Hello {
        version: 1,
        features: 3,
        node: "home-01".into(),
        nonce: Bytes32([1; 32]),
    };
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let HandshakeFrame::Challenge {
        nonce, features, ..
    } = HandshakeFrame::decode(&challenge).expect("challenge")
    else {
        panic!("not a challenge")
    };
    let t = Transcript {
        dialer: "home-01",
        listener: "cloud-01",
        dialer_nonce: &Bytes32([1; 32]),
        listener_nonce: &nonce,
        version: 1,
        dialer_features: 3,
        listener_features: features,
    };
    let mac = compute_mac(b"wrong secret 1234", Role::Dialer, &t);
    let step = a.on_frame(&HandshakeFrame::Auth { mac }.encode(), &mut nonces, ok);
    assert_eq!(rejected(&step), RejectCode::BadMac);
    assert_eq!(RejectCode::BadMac.close_code(), 4001);
}

#[test]
fn a_reflected_listener_mac_does_not_authenticate_the_dialer() {
    let mut nonces = NonceCache::default();
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let hello = HandshakeFrame::Hello {
        version: 1,
        features: 3,
        node: "home-01".into(),
        nonce: Bytes32([1; 32]),
    };
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let HandshakeFrame::Challenge { mac, .. } = HandshakeFrame::decode(&challenge).expect("ok")
    else {
        panic!("not a challenge")
    };
    let step = a.on_frame(&HandshakeFrame::Auth { mac }.encode(), &mut nonces, ok);
    assert_eq!(rejected(&step), RejectCode::BadMac);
}

#[test]
fn a_replayed_hello_is_rejected_and_a_replayed_transcript_fails() {
    let mut nonces = NonceCache::default();
    // A genuine session, recorded by an attacker.
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let auth = send(d.on_frame(&challenge, ok));
    assert!(matches!(
        a.on_frame(&auth, &mut nonces, ok),
        Step::Done { .. }
    ));
    // Replaying the same hello to a new acceptor: rejected at once.
    let mut a2 = Acceptor::new(cfg("cloud-01", SECRET), [3; 32], 10);
    assert_eq!(
        rejected(&a2.on_frame(&hello.encode(), &mut nonces, ok)),
        RejectCode::Replay
    );
    // With a fresh nonce cache (e.g. a restarted listener) the old auth does not verify,
    // because the listener's nonce is new.
    let mut fresh = NonceCache::default();
    let mut a3 = Acceptor::new(cfg("cloud-01", SECRET), [4; 32], 10);
    let _ = send(a3.on_frame(&hello.encode(), &mut fresh, ok));
    assert_eq!(
        rejected(&a3.on_frame(&auth, &mut fresh, ok)),
        RejectCode::BadMac
    );
}

#[test]
fn the_nonce_cache_is_bounded() {
    let mut c = NonceCache::new(8);
    for i in 0..100u8 {
        assert!(c.insert(&Bytes32([i; 32])));
    }
    assert_eq!(c.len(), 8);
    assert!(!c.insert(&Bytes32([99; 32])));
}

#[test]
fn a_peer_claiming_our_own_id_is_rejected_on_both_sides() {
    let mut nonces = NonceCache::default();
    let (step, _) = run(
        cfg("cloud-01", SECRET),
        cfg("cloud-01", SECRET),
        &mut nonces,
    );
    assert_eq!(rejected(&step), RejectCode::SelfId);
    // Dialer side: a challenge claiming the dialer's id.
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let fake = HandshakeFrame::Challenge {
        version: 1,
        features: 3,
        node: "home-01".into(),
        nonce: Bytes32([2; 32]),
        mac: Bytes32([0; 32]),
    };
    assert_eq!(
        rejected(&d.on_frame(&fake.encode(), ok)),
        RejectCode::SelfId
    );
}

#[test]
fn incompatible_versions_and_missing_required_features_are_rejected() {
    let mut nonces = NonceCache::default();
    let mut newer = cfg("home-01", SECRET);
    newer.version = 2;
    let (step, _) = run(newer, cfg("cloud-01", SECRET), &mut nonces);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    let mut bare = cfg("home-01", SECRET);
    bare.features = 0;
    let (step, _) = run(bare, cfg("cloud-01", SECRET), &mut nonces);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
}

#[test]
fn the_listener_must_be_the_configured_node() {
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), Some("cloud-02".into()), [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let challenge = send(a.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    assert_eq!(rejected(&d.on_frame(&challenge, ok)), RejectCode::WrongNode);
}

#[test]
fn a_duplicate_node_is_refused_after_authentication() {
    let mut nonces = NonceCache::default();
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let auth = send(d.on_frame(&challenge, ok));
    let step = a.on_frame(&auth, &mut nonces, |_| Err(RejectCode::DuplicateNode));
    assert_eq!(rejected(&step), RejectCode::DuplicateNode);
    // The dialer sees the reject as the peer's verdict.
    let Step::Rejected { send: Some(r), .. } = step else {
        panic!()
    };
    let end = d.on_frame(&r.encode(), ok);
    assert!(matches!(
        end,
        Step::Rejected {
            code: RejectCode::DuplicateNode,
            by_peer: true,
            ..
        }
    ));
}

#[test]
fn malformed_and_out_of_order_frames_are_rejected() {
    let mut nonces = NonceCache::default();
    let long = format!(r#"{{"type":"auth","mac":"{}"}}"#, "a".repeat(5000));
    for text in [
        "",
        "{",
        r#"{"type":"hello"}"#,
        r#"{"type":"auth","mac":"abcd"}"#,
        r#"{"type":"welcome","features":1}"#,
        r#"{"type":"hello","version":1,"features":3,"node":"","nonce":"0101010101010101010101010101010101010101010101010101010101010101"}"#,
        r#"{"type":"hello","version":1,"features":3,"node":"x","nonce":"0101010101010101010101010101010101010101010101010101010101010101","extra":1}"#,
        long.as_str(),
    ] {
        let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
        assert_eq!(
            rejected(&a.on_frame(text, &mut nonces, ok)),
            RejectCode::Malformed,
            "{text}"
        );
    }
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    assert_eq!(
        rejected(&d.on_frame(r#"{"type":"welcome","features":1}"#, ok)),
        RejectCode::Malformed
    );
}

#[test]
fn an_unfinished_handshake_times_out() {
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 100);
    assert_eq!(a.deadline(), 100 + HANDSHAKE_TIMEOUT_MS);
    assert!(a.on_tick(100 + HANDSHAKE_TIMEOUT_MS - 1).is_none());
    let step = a.on_tick(100 + HANDSHAKE_TIMEOUT_MS).expect("times out");
    assert_eq!(rejected(&step), RejectCode::Timeout);
    assert!(a.on_tick(u64::MAX).is_none(), "reported once");
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    assert_eq!(
        rejected(&d.on_tick(HANDSHAKE_TIMEOUT_MS).expect("times out")),
        RejectCode::Timeout
    );
}

#[test]
fn the_secret_never_appears_on_the_wire() {
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let mut nonces = NonceCache::default();
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let auth = send(d.on_frame(&challenge, ok));
    let secret = std::str::from_utf8(SECRET).expect("utf8");
    for text in [hello.encode(), challenge, auth] {
        assert!(!text.contains(secret));
    }
}

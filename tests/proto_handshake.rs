//! Handshake (wire version 2, SPAKE2 + key confirmation): literal JSON fixtures per frame,
//! success both ways, every rejection path (wrong secret both directions, forged and reflected
//! confirmations, replayed hello, replayed transcript, self id, version 1 peers and other
//! versions, wrong node, duplicate node, malformed shares and frames, timeout), and the absence
//! of an offline guessing oracle on either side.

use clawmatrix::identity::NodeKey;
use clawmatrix::proto::auth::{nonce_from_seed, Pake};
use clawmatrix::proto::handshake::HANDSHAKE_TIMEOUT_MS;
use clawmatrix::proto::Sig64;
use clawmatrix::proto::{
    Acceptor, Bytes32, Dialer, HandshakeConfig, HandshakeFrame, NonceCache, PakeShare, RejectCode,
    Step, PROTOCOL_VERSION,
};
use serde_json::Value;

const SECRET: &[u8] = b"correct horse battery staple";

fn cfg(node: &str, secret: &[u8]) -> HandshakeConfig {
    HandshakeConfig::new(node, secret, key_of(node))
}

/// A node key per node id (the same id gets the same key).
fn key_of(node: &str) -> std::sync::Arc<NodeKey> {
    let mut seed = [0u8; 32];
    for (i, b) in node.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_add(i as u8);
    }
    std::sync::Arc::new(NodeKey::from_seed(&seed))
}

fn ok(_: &str, _: &Bytes32) -> Result<(), RejectCode> {
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

fn reason(step: &Step) -> &str {
    match step {
        Step::Rejected { reason, .. } => reason,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The JSON object keys of a handshake frame, sorted.
fn keys(text: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(text).expect("json");
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

/// A valid SPAKE2 share (a real curve point) for frames built by hand.
fn share(seed: u8) -> PakeShare {
    Pake::start(b"any secret at all", &[seed; 32]).1
}

/// Run dialer `d` against acceptor `a` until the acceptor's verdict on `auth`; then, if it sent
/// `welcome`, the dialer's verdict on it.
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
    let mut p = [0x11u8; 33];
    p[0] = clawmatrix::proto::auth::PAKE_SIDE_SYMMETRIC;
    let p = PakeShare(p);
    let h1 = "01".repeat(32);
    let hm = "ab".repeat(32);
    let hp = format!("53{}", "11".repeat(32));
    let hk = "44".repeat(32);
    let hs = "55".repeat(64);
    let cases = [
        (
            HandshakeFrame::Hello {
                version: 2,
                features: 3,
                node: "home-01".into(),
                nonce: n1,
                pake: p,
                key: Bytes32([0x44; 32]),
            },
            format!(
                r#"{{"type":"hello","version":2,"features":3,"node":"home-01","nonce":"{h1}","pake":"{hp}","key":"{hk}"}}"#
            ),
        ),
        (
            HandshakeFrame::Challenge {
                version: 2,
                features: 3,
                node: "cloud-01".into(),
                nonce: n1,
                pake: p,
                key: Bytes32([0x44; 32]),
                pake2: None,
            },
            format!(
                r#"{{"type":"challenge","version":2,"features":3,"node":"cloud-01","nonce":"{h1}","pake":"{hp}","key":"{hk}"}}"#
            ),
        ),
        (
            HandshakeFrame::Auth {
                mac: m,
                sig: Sig64([0x55; 64]),
                mac2: None,
            },
            format!(r#"{{"type":"auth","mac":"{hm}","sig":"{hs}"}}"#),
        ),
        (
            HandshakeFrame::Welcome {
                features: 3,
                mac: m,
                sig: Sig64([0x55; 64]),
            },
            format!(r#"{{"type":"welcome","features":3,"mac":"{hm}","sig":"{hs}"}}"#),
        ),
        (
            HandshakeFrame::Reject {
                code: RejectCode::IncompatibleVersion,
                reason: "peer speaks wire version 1, this node speaks 2".into(),
            },
            r#"{"type":"reject","code":"incompatible_version","reason":"peer speaks wire version 1, this node speaks 2"}"#
                .to_string(),
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
fn the_frames_a_real_exchange_sends_round_trip_and_fit_the_size_limit() {
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let mut nonces = NonceCache::default();
    let challenge = match a.on_frame(&hello.encode(), &mut nonces, ok) {
        Step::Send(f) => f,
        other => panic!("{other:?}"),
    };
    let auth = match d.on_frame(&challenge.encode(), ok) {
        Step::Send(f) => f,
        other => panic!("{other:?}"),
    };
    let welcome = match a.on_frame(&auth.encode(), &mut nonces, ok) {
        Step::Done { send: Some(w), .. } => w,
        other => panic!("{other:?}"),
    };
    let long = "n".repeat(128);
    let (_, big_hello) = Dialer::new(cfg(&long, SECRET), None, [3; 32], 0);
    for f in [hello, challenge, auth, welcome, big_hello] {
        let text = f.encode();
        assert!(
            text.len() <= clawmatrix::proto::handshake_frame::MAX_HANDSHAKE_BYTES,
            "{text}"
        );
        assert_eq!(HandshakeFrame::decode(&text), Ok(f));
    }
}

#[test]
fn reject_codes_and_close_codes_are_the_stable_v1_table() {
    let table = [
        (RejectCode::Malformed, "malformed", 4000),
        (RejectCode::BadMac, "bad_mac", 4001),
        (RejectCode::Replay, "replay", 4002),
        (RejectCode::DuplicateNode, "duplicate_node", 4003),
        (RejectCode::SelfId, "self_id", 4004),
        (
            RejectCode::IncompatibleVersion,
            "incompatible_version",
            4005,
        ),
        (RejectCode::Timeout, "timeout", 4006),
        (RejectCode::WrongNode, "wrong_node", 4007),
        (RejectCode::Capacity, "capacity", 4008),
        (RejectCode::KeyChanged, "key_changed", 4011),
        (RejectCode::Revoked, "revoked", 4012),
        (RejectCode::BadSignature, "bad_signature", 4013),
    ];
    assert_eq!(RejectCode::ALL.len(), table.len());
    for (c, s, close) in table {
        assert_eq!(c.as_str(), s);
        assert_eq!(c.close_code(), close);
        let json = serde_json::to_string(&c).expect("serializes");
        assert_eq!(json, format!("\"{s}\""));
    }
}

#[test]
fn handshake_succeeds_and_both_sides_learn_the_peer() {
    let mut nonces = NonceCache::default();
    let (verdict, dialer) = run(cfg("home-01", SECRET), cfg("cloud-01", SECRET), &mut nonces);
    match verdict {
        Step::Done {
            peer,
            peer_key,
            send: Some(HandshakeFrame::Welcome { features: wf, .. }),
            features,
        } => {
            assert_eq!(peer, "home-01");
            assert_eq!(
                peer_key,
                key_of("home-01").public(),
                "the dialer's proved key"
            );
            assert_eq!(wf, features);
        }
        other => panic!("{other:?}"),
    }
    match dialer {
        Some(Step::Done {
            peer,
            peer_key,
            send: None,
            ..
        }) => {
            assert_eq!(peer, "cloud-01");
            assert_eq!(
                peer_key,
                key_of("cloud-01").public(),
                "the listener's proved key"
            );
        }
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
fn a_listener_with_the_wrong_secret_refuses_the_dialers_confirmation() {
    // The listener proves nothing first, so the mismatch shows at the dialer's confirmation.
    let mut nonces = NonceCache::default();
    let (step, dialer) = run(
        cfg("home-01", SECRET),
        cfg("cloud-01", b"wrong secret 1234"),
        &mut nonces,
    );
    assert_eq!(rejected(&step), RejectCode::BadMac);
    assert!(
        dialer.is_none(),
        "no welcome, so the dialer hears only the reject"
    );
    assert!(matches!(
        step,
        Step::Rejected {
            send: Some(HandshakeFrame::Reject {
                code: RejectCode::BadMac,
                ..
            }),
            by_peer: false,
            ..
        }
    ));
}

#[test]
fn a_dialer_with_the_wrong_secret_is_rejected_by_the_listener() {
    let mut nonces = NonceCache::default();
    let (step, dialer) = run(
        cfg("home-01", b"wrong secret 1234"),
        cfg("cloud-01", SECRET),
        &mut nonces,
    );
    assert_eq!(rejected(&step), RejectCode::BadMac);
    assert_eq!(reason(&step), "authentication failed");
    assert!(dialer.is_none());
}

#[test]
fn a_forged_or_reflected_listener_confirmation_is_refused_by_the_dialer() {
    let mut nonces = NonceCache::default();
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let auth = send(d.on_frame(&challenge, ok));
    let HandshakeFrame::Auth {
        mac: dialer_mac, ..
    } = HandshakeFrame::decode(&auth).expect("auth")
    else {
        panic!("not an auth")
    };
    // The dialer's own MAC sent back as the listener's: role separation refuses it.
    let reflected = HandshakeFrame::Welcome {
        features: 3,
        mac: dialer_mac,
        sig: Sig64([0; 64]),
    };
    assert_eq!(
        rejected(&d.on_frame(&reflected.encode(), ok)),
        RejectCode::BadMac
    );
    // A welcome with a made-up MAC is refused too.
    let (mut d2, hello2) = Dialer::new(cfg("home-01", SECRET), None, [3; 32], 0);
    let mut a2 = Acceptor::new(cfg("cloud-01", SECRET), [4; 32], 0);
    let challenge2 = send(a2.on_frame(&hello2.encode(), &mut nonces, ok));
    let _ = send(d2.on_frame(&challenge2, ok));
    let forged = HandshakeFrame::Welcome {
        features: 3,
        mac: Bytes32([0; 32]),
        sig: Sig64([0; 64]),
    };
    assert_eq!(
        rejected(&d2.on_frame(&forged.encode(), ok)),
        RejectCode::BadMac
    );
}

#[test]
fn a_dialer_mac_from_another_session_does_not_authenticate() {
    // Two sessions against the same listener; the auth of one fed to the other.
    let mut nonces = NonceCache::default();
    let (mut d1, hello1) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a1 = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let c1 = send(a1.on_frame(&hello1.encode(), &mut nonces, ok));
    let auth1 = send(d1.on_frame(&c1, ok));
    let (_, hello2) = Dialer::new(cfg("home-01", SECRET), None, [3; 32], 0);
    let mut a2 = Acceptor::new(cfg("cloud-01", SECRET), [4; 32], 0);
    let _ = send(a2.on_frame(&hello2.encode(), &mut nonces, ok));
    assert_eq!(
        rejected(&a2.on_frame(&auth1, &mut nonces, ok)),
        RejectCode::BadMac
    );
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
    // because the listener's nonce and SPAKE2 share are new.
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
fn the_public_nonce_is_derived_one_way_from_the_secret_seed() {
    let (_, hello) = Dialer::new(cfg("home-01", SECRET), None, [7; 32], 0);
    let HandshakeFrame::Hello { nonce, .. } = hello else {
        panic!("not a hello")
    };
    assert_eq!(nonce, nonce_from_seed(&[7; 32]));
    assert_ne!(nonce, Bytes32([7; 32]), "the seed itself never goes out");
    assert_ne!(nonce_from_seed(&[7; 32]), nonce_from_seed(&[8; 32]));
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
        version: PROTOCOL_VERSION,
        features: 3,
        node: "home-01".into(),
        nonce: Bytes32([2; 32]),
        pake: share(2),
        key: Bytes32([0x44; 32]),
        pake2: None,
    };
    assert_eq!(
        rejected(&d.on_frame(&fake.encode(), ok)),
        RejectCode::SelfId
    );
}

#[test]
fn other_versions_and_missing_required_features_are_rejected_naming_both_sides() {
    let mut nonces = NonceCache::default();
    let mut newer = cfg("home-01", SECRET);
    newer.version = 4;
    let (step, _) = run(newer, cfg("cloud-01", SECRET), &mut nonces);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    assert_eq!(
        reason(&step),
        "peer speaks wire version 4, this node speaks 3"
    );
    // A version 2 dialer (no node key): its hello lacks `key`, and it hears both versions.
    let v2_hello = format!(
        r#"{{"type":"hello","version":2,"features":3,"node":"old-home","nonce":"{}","pake":"{}"}}"#,
        "01".repeat(32),
        share(9)
    );
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let step = a.on_frame(&v2_hello, &mut NonceCache::default(), ok);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    assert_eq!(
        reason(&step),
        "peer speaks wire version 2, this node speaks 3"
    );
    let mut bare = cfg("home-01", SECRET);
    bare.features = 0;
    let (step, _) = run(bare, cfg("cloud-01", SECRET), &mut nonces);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    assert_eq!(
        reason(&step),
        "peer offers features 0x0, this node requires 0x1"
    );
}

#[test]
fn a_version_1_hello_is_refused_as_incompatible_naming_both_versions() {
    // Byte for byte what a v1 dialer sends: no `pake`.
    let v1_hello = format!(
        r#"{{"type":"hello","version":1,"features":3,"node":"old-home","nonce":"{}"}}"#,
        "01".repeat(32)
    );
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let step = a.on_frame(&v1_hello, &mut NonceCache::default(), ok);
    assert_eq!(PROTOCOL_VERSION, 3);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    assert_eq!(RejectCode::IncompatibleVersion.close_code(), 4005);
    let want = "peer speaks wire version 1, this node speaks 3";
    assert_eq!(reason(&step), want);
    // The v1 peer hears the same reason in a frame its own (v1) decoder reads.
    match step {
        Step::Rejected {
            send: Some(f),
            by_peer: false,
            ..
        } => assert_eq!(
            f.encode(),
            format!(r#"{{"type":"reject","code":"incompatible_version","reason":"{want}"}}"#)
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_version_1_challenge_is_refused_by_the_dialer_naming_both_versions() {
    let v1_challenge = format!(
        r#"{{"type":"challenge","version":1,"features":3,"node":"old-cloud","nonce":"{}","mac":"{}"}}"#,
        "02".repeat(32),
        "ab".repeat(32)
    );
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let step = d.on_frame(&v1_challenge, ok);
    assert_eq!(rejected(&step), RejectCode::IncompatibleVersion);
    assert_eq!(
        reason(&step),
        "peer speaks wire version 1, this node speaks 3"
    );
}

#[test]
fn a_v1_listeners_malformed_answer_to_our_hello_names_the_likely_cause() {
    // A v1 listener's strict decoder refuses the `pake` field and answers `malformed`.
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let step = d.on_frame(
        r#"{"type":"reject","code":"malformed","reason":"malformed handshake frame"}"#,
        ok,
    );
    match step {
        Step::Rejected {
            code: RejectCode::Malformed,
            by_peer: true,
            send: None,
            reason,
        } => assert!(
            reason.contains("wire version 1") && reason.contains("version 3 hello"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
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
    let step = a.on_frame(&auth, &mut nonces, |_, _| Err(RejectCode::DuplicateNode));
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
fn malformed_and_out_of_order_frames_and_bad_shares_are_rejected() {
    let long = format!(r#"{{"type":"auth","mac":"{}"}}"#, "a".repeat(5000));
    let n = "01".repeat(32);
    let good = share(9).encode();
    // 'A' (asymmetric side A) instead of 'S': a share from another SPAKE2 mode.
    let side_a = format!("41{}", &good[2..]);
    // Not the compressed encoding of any curve point: y = 2 (little endian) has no x on
    // Edwards25519, (y² - 1) / (d·y² + 1) is not a square mod 2^255 - 19.
    let not_a_point = format!("5302{}", "00".repeat(31));
    let k = "44".repeat(32);
    let hello = |node: &str, pake: &str, extra: &str| {
        format!(
            r#"{{"type":"hello","version":3,"features":3,"node":"{node}","nonce":"{n}","pake":"{pake}","key":"{k}"{extra}}}"#
        )
    };
    let cases = [
        String::new(),
        "{".into(),
        r#"{"type":"hello"}"#.into(),
        r#"{"type":"auth","mac":"abcd"}"#.into(),
        format!(r#"{{"type":"welcome","features":1,"mac":"{n}"}}"#),
        hello("", &good, ""),
        hello("x", &good, r#","extra":1"#),
        hello("x", &good[..64], ""),
        hello("x", &side_a, ""),
        hello("x", &not_a_point, ""),
        long,
    ];
    for (i, text) in cases.iter().enumerate() {
        // A fresh cache each time: the hellos share a nonce.
        let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
        assert_eq!(
            rejected(&a.on_frame(text, &mut NonceCache::default(), ok)),
            RejectCode::Malformed,
            "case {i}: {text}"
        );
    }
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    assert_eq!(
        rejected(&d.on_frame(
            &format!(r#"{{"type":"welcome","features":1,"mac":"{n}"}}"#),
            ok
        )),
        RejectCode::Malformed
    );
    let (mut d, _) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let bad_challenge = format!(
        r#"{{"type":"challenge","version":3,"features":3,"node":"cloud-01","nonce":"{n}","pake":"{not_a_point}","key":"{k}"}}"#
    );
    assert_eq!(
        rejected(&d.on_frame(&bad_challenge, ok)),
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
    let welcome = match a.on_frame(&auth, &mut nonces, ok) {
        Step::Done { send: Some(w), .. } => w.encode(),
        other => panic!("{other:?}"),
    };
    let secret = std::str::from_utf8(SECRET).expect("utf8");
    let secret_hex = clawmatrix::proto::hex::encode(SECRET);
    for text in [hello.encode(), challenge, auth, welcome] {
        assert!(!text.contains(secret));
        assert!(!text.contains(&secret_hex));
    }
}

#[test]
fn the_listeners_first_answer_is_a_bare_pake_share_with_no_verifier() {
    // Whatever a raw client sends, the listener answers with its id, nonce and SPAKE2 share:
    // no MAC, nothing to test a guess against.
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let (_, hello) = Dialer::new(cfg("prober", b"a guess of the secret"), None, [1; 32], 0);
    let challenge = send(a.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    assert_eq!(
        keys(&challenge),
        ["features", "key", "node", "nonce", "pake", "type", "version"]
    );
    // The share is a uniformly random point to anyone without the secret: the same listener
    // randomness under another secret gives a different, equally well-formed share, and the
    // prober cannot tell which one it got.
    let mut other = Acceptor::new(cfg("cloud-01", b"some other secret"), [2; 32], 0);
    let challenge2 = send(other.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    let pake = |t: &str| match HandshakeFrame::decode(t) {
        Ok(HandshakeFrame::Challenge { pake, .. }) => pake,
        other => panic!("{other:?}"),
    };
    assert_ne!(pake(&challenge), pake(&challenge2));
    assert_eq!(keys(&challenge), keys(&challenge2));
    // A wrong guess learns only "no", at confirmation, from a reject without any MAC.
    let (mut d, hello) = Dialer::new(cfg("prober", b"a guess of the secret"), None, [5; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [6; 32], 0);
    let mut nonces = NonceCache::default();
    let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
    let auth = send(d.on_frame(&challenge, ok));
    let verdict = a.on_frame(&auth, &mut nonces, ok);
    assert_eq!(rejected(&verdict), RejectCode::BadMac);
    let Step::Rejected { send: Some(r), .. } = verdict else {
        panic!()
    };
    assert_eq!(keys(&r.encode()), ["code", "reason", "type"]);
}

#[test]
fn a_fake_listener_cannot_test_a_dictionary_offline_against_a_dialers_messages() {
    // The dialer's hello is a bare share too.
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), Some("cloud-01".into()), [1; 32], 0);
    assert_eq!(
        keys(&hello.encode()),
        ["features", "key", "node", "nonce", "pake", "type", "version"]
    );
    // The fake listener runs the exchange with its one online guess (wrong) and records the
    // dialer's confirmation.
    let fake_seed = [2; 32];
    let mut fake = Acceptor::new(cfg("cloud-01", b"guess-0 of the secret"), fake_seed, 0);
    let challenge = send(fake.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    let auth = send(d.on_frame(&challenge, ok));
    assert_eq!(
        rejected(&fake.on_frame(&auth, &mut NonceCache::default(), ok)),
        RejectCode::BadMac
    );
    // Offline, it re-runs its side (same randomness) under every word of a dictionary that
    // contains the real secret: the recorded confirmation verifies under none of them, because
    // the share it sent fixed its one guess.
    let dictionary: [&[u8]; 4] = [
        b"guess-1 of the secret",
        SECRET,
        b"correct horse battery stapler",
        b"",
    ];
    for word in dictionary {
        let mut replay = Acceptor::new(cfg("cloud-01", word), fake_seed, 0);
        let _ = send(replay.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
        assert_eq!(
            rejected(&replay.on_frame(&auth, &mut NonceCache::default(), ok)),
            RejectCode::BadMac,
            "{:?}",
            String::from_utf8_lossy(word)
        );
    }
    // Its one online guess would have worked had it been right: that is the only test.
    let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [3; 32], 0);
    let mut right = Acceptor::new(cfg("cloud-01", SECRET), [4; 32], 0);
    let challenge = send(right.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    let auth = send(d.on_frame(&challenge, ok));
    assert!(matches!(
        right.on_frame(&auth, &mut NonceCache::default(), ok),
        Step::Done { .. }
    ));
}

#[test]
fn a_version_2_listener_never_answers_a_first_frame_with_the_bare_reason_a_version_1_one_gives() {
    // Dialers explain a bare `malformed` reason to their first frame as a version 1 listener
    // (its strict decoder refuses the version 2 hello's `pake` field): a version 2 listener
    // must always say more, or a garbled hello would be reported as an old peer.
    for first in [
        "{not json".to_string(),
        r#"{"type":"auth","mac":"00"}"#.to_string(),
        HandshakeFrame::Auth {
            mac: clawmatrix::proto::Bytes32([7; 32]),
            sig: Sig64([7; 64]),
            mac2: None,
        }
        .encode(),
    ] {
        let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
        let step = a.on_frame(&first, &mut NonceCache::default(), ok);
        assert_eq!(rejected(&step), RejectCode::Malformed, "{first}");
        assert_ne!(reason(&step), RejectCode::Malformed.reason(), "{first}");
    }
    // The dialer then reports the listener's own reason, not a version 1 listener.
    let (mut d, _hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let refusal = match a.on_frame("{not json", &mut NonceCache::default(), ok) {
        Step::Rejected { send: Some(f), .. } => f.encode(),
        other => panic!("expected a rejection to send, got {other:?}"),
    };
    let step = d.on_frame(&refusal, ok);
    assert!(!reason(&step).contains("version 1"), "{}", reason(&step));
}

#[test]
fn a_dialer_announcing_a_key_it_does_not_hold_is_refused_with_bad_signature() {
    use clawmatrix::proto::auth::{compute_mac, Role, Transcript};
    // The thief knows the secret and announces the victim's public key as its own.
    let (victim, thief) = (key_of("victim"), key_of("thief"));
    let attempt = |signer: &NodeKey| {
        let seed = [1; 32];
        let (pake, share) = Pake::start(SECRET, &seed);
        let nonce = nonce_from_seed(&seed);
        let hello = HandshakeFrame::Hello {
            version: PROTOCOL_VERSION,
            features: 3,
            node: "victim".into(),
            nonce,
            pake: share,
            key: victim.public(),
        };
        let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
        let mut nonces = NonceCache::default();
        let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
        let Ok(HandshakeFrame::Challenge {
            version,
            features,
            node,
            nonce: listener_nonce,
            pake: listener_share,
            key: listener_key,
            ..
        }) = HandshakeFrame::decode(&challenge)
        else {
            panic!("not a challenge: {challenge}")
        };
        let k = pake.finish(&listener_share).expect("a valid share");
        let t = Transcript {
            dialer: "victim".into(),
            listener: node,
            dialer_nonce: nonce,
            listener_nonce,
            dialer_version: PROTOCOL_VERSION,
            version,
            dialer_features: 3,
            listener_features: features,
            dialer_share: share,
            listener_share,
            dialer_key: victim.public(),
            listener_key,
            listener_share2: None,
        };
        let auth = HandshakeFrame::Auth {
            mac: compute_mac(&k, Role::Dialer, &t),
            sig: signer.sign(&t.key_proof_message(Role::Dialer)),
            mac2: None,
        };
        a.on_frame(&auth.encode(), &mut nonces, ok)
    };
    // The MAC is right (it knows the secret), the key proof is not.
    assert_eq!(rejected(&attempt(&thief)), RejectCode::BadSignature);
    // Positive control: the same exchange signed by the victim's key authenticates.
    assert!(matches!(
        attempt(&victim),
        Step::Done { ref peer_key, .. } if *peer_key == victim.public()
    ));
}

#[test]
fn the_admission_verdict_on_the_proved_key_ends_the_handshake() {
    for code in [RejectCode::KeyChanged, RejectCode::Revoked] {
        let mut nonces = NonceCache::default();
        let (mut d, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
        let mut a = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
        let challenge = send(a.on_frame(&hello.encode(), &mut nonces, ok));
        let auth = send(d.on_frame(&challenge, ok));
        let mut asked = None;
        let step = a.on_frame(&auth, &mut nonces, |node, key| {
            asked = Some((node.to_string(), *key));
            Err(code)
        });
        assert_eq!(rejected(&step), code);
        assert_eq!(asked, Some(("home-01".into(), key_of("home-01").public())));
    }
}

/// A listener rotating its secret: `secret` = new, `previous` = old.
fn rotating(node: &str) -> HandshakeConfig {
    HandshakeConfig {
        previous: Some(b"the old mesh secret".to_vec()),
        ..cfg(node, b"the new mesh secret")
    }
}

#[test]
fn during_a_rotation_a_listener_accepts_dialers_with_either_secret_and_no_other() {
    for (dialer_secret, ok_expected) in [
        (&b"the new mesh secret"[..], true),
        (&b"the old mesh secret"[..], true),
        (&b"a third secret entirely"[..], false),
    ] {
        let mut nonces = NonceCache::default();
        let (verdict, dialer) = run(
            cfg("home-01", dialer_secret),
            rotating("cloud-01"),
            &mut nonces,
        );
        if ok_expected {
            assert!(matches!(verdict, Step::Done { .. }), "{verdict:?}");
            assert!(
                matches!(dialer, Some(Step::Done { .. })),
                "the dialer verified the listener's confirmation: {dialer:?}"
            );
        } else {
            assert_eq!(rejected(&verdict), RejectCode::BadMac);
        }
    }
    // The challenge carries the second share; without a rotation it does not.
    let (_, hello) = Dialer::new(cfg("home-01", SECRET), None, [1; 32], 0);
    let mut a = Acceptor::new(rotating("cloud-01"), [2; 32], 0);
    let c = send(a.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    assert!(keys(&c).contains(&"pake2".to_string()), "{c}");
    let mut plain = Acceptor::new(cfg("cloud-01", SECRET), [2; 32], 0);
    let c = send(plain.on_frame(&hello.encode(), &mut NonceCache::default(), ok));
    assert!(!keys(&c).contains(&"pake2".to_string()), "{c}");
}

#[test]
fn a_rotated_dialer_refused_by_a_listener_with_only_the_old_secret_gets_in_with_its_previous() {
    let mut nonces = NonceCache::default();
    // The dialer already has new + old; the listener still only the old.
    let dialer = rotating("home-01");
    let listener = cfg("cloud-01", b"the old mesh secret");
    let (first, _) = run(dialer.clone(), listener.clone(), &mut nonces);
    assert_eq!(rejected(&first), RejectCode::BadMac);
    let (second, end) = run(
        dialer.previous_first(),
        listener,
        &mut NonceCache::default(),
    );
    assert!(matches!(second, Step::Done { .. }), "{second:?}");
    assert!(matches!(end, Some(Step::Done { .. })), "{end:?}");
    // previous_first swaps the two, and twice is the original.
    assert_eq!(dialer.previous_first().secret, b"the old mesh secret");
    assert_eq!(
        dialer.previous_first().previous_first().secret,
        b"the new mesh secret"
    );
}

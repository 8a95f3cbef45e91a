//! Binary frame codec: one literal JSON fixture per body type (exact serialized header, and the
//! literal decodes to the same value), round trips with payloads, and rejection of truncated,
//! oversized, wrong-typed, wrong-version and unknown frames, never panicking on any bytes.

use clawmatrix::proto::codec::{decode_header, TRAILER_BYTES};
use clawmatrix::proto::{
    decode, decode_owned, encode, encode_owned, AgentInfo, Body, Bytes32, CallId, CodecError,
    DigestSum, FrameId, Header, LinkInfo, ModelInfo, NodeRecord, Sig64, MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
};

const FID: &str = "000102030405060708090a0b0c0d0e0f";
const CID: &str = "ffeeddccbbaa99887766554433221100";

fn fid() -> FrameId {
    FrameId::from_hex(FID).expect("hex")
}

fn cid() -> CallId {
    CallId::from_hex(CID).expect("hex")
}

fn header(dst: Option<&str>, body: Body) -> Header {
    Header {
        v: 1,
        id: fid(),
        src: "home-01".into(),
        dst: dst.map(String::from),
        ttl: 8,
        hops: 0,
        ts: 1000,
        body,
    }
}

fn envelope(dst: &str, body: &str) -> String {
    format!(
        r#"{{"v":1,"id":"{FID}","src":"home-01","dst":{dst},"ttl":8,"hops":0,"ts":1000,"body":{body}}}"#
    )
}

fn record() -> NodeRecord {
    let mut extra = serde_json::Map::new();
    extra.insert("contextWindow".into(), 32768.into());
    extra.insert("provider".into(), "ollama".into());
    NodeRecord {
        node: "office-01".into(),
        incarnation: 1_700_000_000_000,
        version: 3,
        key: Bytes32([0x11; 32]),
        xkey: Bytes32([0x22; 32]),
        listen: false,
        agents: vec![AgentInfo {
            id: "coder".into(),
            description: "writes code".into(),
            tags: vec!["coding".into()],
        }],
        models: vec![ModelInfo {
            id: "qwen".into(),
            description: Some("local".into()),
            extra,
        }],
        tags: vec!["gpu".into()],
        links: vec![LinkInfo {
            peer: "cloud-01".into(),
            rtt_ms: 12,
        }],
    }
}

const RECORD_JSON: &str = r#"{"node":"office-01","incarnation":1700000000000,"version":3,"key":"1111111111111111111111111111111111111111111111111111111111111111","xkey":"2222222222222222222222222222222222222222222222222222222222222222","listen":false,"agents":[{"id":"coder","description":"writes code","tags":["coding"]}],"models":[{"id":"qwen","description":"local","contextWindow":32768,"provider":"ollama"}],"tags":["gpu"],"links":[{"peer":"cloud-01","rtt_ms":12}]}"#;

/// (header, exact JSON) for every body type.
fn fixtures() -> Vec<(Header, String)> {
    let routed = r#""office-01""#;
    vec![
        (
            header(None, Body::Ping { seq: 1, t: 1000 }),
            envelope("null", r#"{"type":"ping","seq":1,"t":1000}"#),
        ),
        (
            header(None, Body::Pong { seq: 1, t: 1000 }),
            envelope("null", r#"{"type":"pong","seq":1,"t":1000}"#),
        ),
        (
            header(
                None,
                Body::Digest {
                    entries: vec![("office-01".into(), 1_700_000_000_000, 3)],
                    sum: None,
                    ask: false,
                },
            ),
            envelope(
                "null",
                r#"{"type":"digest","entries":[["office-01",1700000000000,3]]}"#,
            ),
        ),
        (
            header(
                None,
                Body::Digest {
                    entries: vec![("office-01".into(), 1_700_000_000_000, 3)],
                    sum: None,
                    ask: true,
                },
            ),
            envelope(
                "null",
                r#"{"type":"digest","entries":[["office-01",1700000000000,3]],"ask":true}"#,
            ),
        ),
        (
            header(
                None,
                Body::Digest {
                    entries: vec![],
                    sum: Some(DigestSum {
                        n: 2,
                        h: Bytes32([0xab; 32]),
                    }),
                    ask: false,
                },
            ),
            envelope(
                "null",
                &format!(
                    r#"{{"type":"digest","entries":[],"sum":{{"n":2,"h":"{}"}}}}"#,
                    "ab".repeat(32)
                ),
            ),
        ),
        (
            header(None, Body::Gossip { records: 2 }),
            envelope("null", r#"{"type":"gossip","records":2}"#),
        ),
        (
            header(
                None,
                Body::Leave {
                    node: "home-01".into(),
                    incarnation: 5,
                    sig: Sig64([0x33; 64]),
                },
            ),
            envelope(
                "null",
                &format!(
                    r#"{{"type":"leave","node":"home-01","incarnation":5,"sig":"{}"}}"#,
                    "33".repeat(64)
                ),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Call {
                    call_id: cid(),
                    method: "model.chat".into(),
                    deadline_ms: Some(60_000),
                },
            ),
            envelope(
                routed,
                &format!(
                    r#"{{"type":"call","call_id":"{CID}","method":"model.chat","deadline_ms":60000}}"#
                ),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Reply {
                    call_id: cid(),
                    ok: false,
                    code: Some("denied".into()),
                    message: Some("tool not allowed".into()),
                },
            ),
            envelope(
                routed,
                &format!(
                    r#"{{"type":"reply","call_id":"{CID}","ok":false,"code":"denied","message":"tool not allowed"}}"#
                ),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Chunk {
                    call_id: cid(),
                    seq: 4,
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"chunk","call_id":"{CID}","seq":4}}"#),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::End {
                    call_id: cid(),
                    ok: true,
                    code: None,
                    message: None,
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"end","call_id":"{CID}","ok":true}}"#),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Cancel {
                    call_id: cid(),
                    reason: "deadline".into(),
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"cancel","call_id":"{CID}","reason":"deadline"}}"#),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Unreachable {
                    call_id: cid(),
                    node: "gpu-02".into(),
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"unreachable","call_id":"{CID}","node":"gpu-02"}}"#),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Credit {
                    call_id: cid(),
                    chunks: 32,
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"credit","call_id":"{CID}","chunks":32}}"#),
            ),
        ),
        (
            header(
                Some("office-01"),
                Body::Sealed {
                    call_id: cid(),
                    ctr: 7,
                },
            ),
            envelope(
                routed,
                &format!(r#"{{"type":"sealed","call_id":"{CID}","ctr":7}}"#),
            ),
        ),
        (
            header(
                None,
                Body::Probe {
                    node: "gpu-02".into(),
                    seq: 9,
                },
            ),
            envelope("null", r#"{"type":"probe","node":"gpu-02","seq":9}"#),
        ),
        (
            header(
                None,
                Body::ProbeAck {
                    node: "gpu-02".into(),
                    seq: 9,
                    heard_ms: Some(120),
                },
            ),
            envelope(
                "null",
                r#"{"type":"probe_ack","node":"gpu-02","seq":9,"heard_ms":120}"#,
            ),
        ),
    ]
}

#[test]
fn a_gossip_payload_is_each_records_json_with_its_length_and_signature() {
    use clawmatrix::identity::NodeKey;
    use clawmatrix::proto::signed::{split, verify_record, SignedRecord};
    let key = NodeKey::from_seed(&[5; 32]);
    let signed = SignedRecord::sign(record(), &key).expect("signs");
    // The record serializes to the literal fixture, and the wire form is len | json | sig.
    assert_eq!(signed.json(), RECORD_JSON.as_bytes());
    let wire = &signed.wire[..];
    assert_eq!(&wire[..4], &(RECORD_JSON.len() as u32).to_be_bytes());
    assert_eq!(&wire[4..4 + RECORD_JSON.len()], RECORD_JSON.as_bytes());
    assert_eq!(wire.len(), 4 + RECORD_JSON.len() + 64);
    let mut payload = wire.to_vec();
    payload.extend_from_slice(wire);
    let parts = split(&payload, 2).expect("splits");
    assert!(parts
        .iter()
        .all(|p| verify_record(&key.public(), p.json, &p.sig)));
    let parsed: NodeRecord = serde_json::from_slice(parts[0].json).expect("parses");
    assert_eq!(parsed, record());
}

fn frame_bytes(json: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = payload.to_vec();
    b.extend_from_slice(json.as_bytes());
    b.extend_from_slice(&(json.len() as u32).to_be_bytes());
    b
}

#[test]
fn every_body_type_serializes_to_its_literal_fixture() {
    let fx = fixtures();
    let mut kinds: Vec<&str> = fx.iter().map(|(h, _)| h.body.kind()).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        clawmatrix::proto::frame::BODY_TYPES,
        "a fixture per body type"
    );
    for (h, json) in fx {
        assert_eq!(serde_json::to_string(&h).expect("serializes"), json);
        let bytes = encode(&h, &[]).expect("encodes");
        assert_eq!(bytes, frame_bytes(&json, &[]), "{}", h.body.kind());
    }
}

#[test]
fn every_literal_fixture_decodes_to_its_value() {
    for (h, json) in fixtures() {
        let f = decode(&frame_bytes(&json, b"\x00raw\xff")).expect("decodes");
        assert_eq!(f.header, h);
        assert_eq!(f.payload, b"\x00raw\xff");
    }
}

#[test]
fn frames_round_trip_with_binary_payloads() {
    for (i, (h, _)) in fixtures().into_iter().enumerate() {
        let payload: Vec<u8> = (0..(i * 997)).map(|x| (x * 31 % 256) as u8).collect();
        let f = decode(&encode(&h, &payload).expect("encodes")).expect("decodes");
        assert_eq!((f.header, f.payload), (h.clone(), payload.clone()));
        // The owned forms produce the same bytes and keep the payload in place.
        let owned = encode_owned(&h, payload.clone()).expect("encodes");
        assert_eq!(owned, encode(&h, &payload).expect("encodes"));
        let f = decode_owned(owned).expect("decodes");
        assert_eq!((f.header, f.payload), (h, payload));
    }
}

#[test]
fn a_relayed_header_is_rewritten_in_the_received_buffer() {
    let (mut h, _) = fixtures().remove(5);
    let payload = vec![7u8; 100_000];
    let bytes = encode_owned(&h, payload).expect("encodes");
    let cap = bytes.capacity();
    let at = bytes.as_ptr();
    let mut f = decode_owned(bytes).expect("decodes");
    h.ttl -= 1;
    h.hops += 1;
    f.header = h.clone();
    let again = encode_owned(&f.header, f.payload).expect("encodes");
    // Same allocation: the payload did not move.
    assert_eq!((again.as_ptr(), again.capacity()), (at, cap));
    assert_eq!(decode(&again).expect("decodes").header, h);
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let json = envelope("null", r#"{"type":"ping","seq":1,"t":2,"new":true}"#)
        .replace(r#""ts":1000"#, r#""ts":1000,"trace":"x""#);
    let f = decode(&frame_bytes(&json, &[])).expect("decodes");
    assert_eq!(f.header.body, Body::Ping { seq: 1, t: 2 });
}

#[test]
fn truncated_frames_are_rejected() {
    let (h, _) = &fixtures()[5];
    let bytes = encode(h, b"payload").expect("encodes");
    let hlen = bytes.len() - b"payload".len() - TRAILER_BYTES;
    // Shorter than the trailer, or than the header the trailer announces.
    for keep in 0..TRAILER_BYTES + hlen {
        let e = decode(&bytes[bytes.len() - keep..]).expect_err("truncated");
        assert_eq!(e.code(), "truncated", "kept {keep}");
    }
    // Cutting into the payload is not detectable (the payload is the rest of the message).
    assert!(decode(&bytes[b"payload".len()..]).is_ok());
    // Cutting the end off breaks the trailer: an error, whichever.
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn oversized_frames_and_headers_are_rejected_before_parsing() {
    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    let e = decode(&big).expect_err("too large");
    assert!(matches!(e, CodecError::TooLarge { what: "frame", .. }));
    let mut lying = b"{}".to_vec();
    lying.extend_from_slice(&((MAX_HEADER_BYTES + 1) as u32).to_be_bytes());
    assert!(matches!(
        decode(&lying),
        Err(CodecError::TooLarge { what: "header", .. })
    ));
    let (h, _) = &fixtures()[0];
    let e = encode(h, &vec![0u8; MAX_FRAME_BYTES]).expect_err("too large");
    assert_eq!(e.code(), "too_large");
}

#[test]
fn wrong_typed_fields_are_bad_headers() {
    for json in [
        envelope("null", r#"{"type":"ping","seq":"one","t":2}"#),
        envelope("null", r#"{"type":"ping","seq":1}"#),
        envelope(r#""x""#, r#"{"type":"call","call_id":"zz","method":"m"}"#),
        envelope("null", r#"{"seq":1,"t":2}"#),
        envelope("7", r#"{"type":"ping","seq":1,"t":2}"#),
        envelope(r#""office-01""#, r#"{"type":"ping","seq":1,"t":2}"#),
        envelope(
            "null",
            &format!(r#"{{"type":"call","call_id":"{CID}","method":"m"}}"#),
        ),
        envelope("null", r#"{"type":"ping","seq":1,"t":2}"#).replace("home-01", ""),
        "[]".to_string(),
        "not json".to_string(),
    ] {
        let e = decode(&frame_bytes(&json, &[])).expect_err(&json);
        assert_eq!(e.code(), "bad_header", "{json}: {e}");
    }
}

#[test]
fn unknown_types_and_versions_have_their_own_codes() {
    let json = envelope("null", r#"{"type":"teleport","to":"mars"}"#);
    assert_eq!(
        decode(&frame_bytes(&json, &[])),
        Err(CodecError::UnknownType {
            kind: "teleport".into()
        })
    );
    let json = envelope("null", r#"{"type":"ping","seq":1,"t":2}"#).replace(r#""v":1"#, r#""v":2"#);
    assert_eq!(
        decode_header(json.as_bytes()),
        Err(CodecError::WrongVersion { got: 2 })
    );
}

#[test]
fn decode_never_panics_on_prefixes_or_random_bytes() {
    for (h, _) in fixtures() {
        let bytes = encode(&h, b"xyz").expect("encodes");
        for cut in 0..=bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        // Flip each header and trailer byte once.
        for i in b"xyz".len()..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let _ = decode(&b);
        }
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 300) as usize;
        let mut b: Vec<u8> = (0..len)
            .map(|i| (x.rotate_left(i as u32 % 64) >> 3) as u8)
            .collect();
        if x % 3 == 0 && b.len() >= 4 {
            // A plausible length trailer makes the parser reach the JSON.
            let n = ((b.len() - 4) as u32).min(x as u32 % 64);
            let at = b.len() - 4;
            b[at..].copy_from_slice(&n.to_be_bytes());
        }
        let _ = decode(&b);
    }
}

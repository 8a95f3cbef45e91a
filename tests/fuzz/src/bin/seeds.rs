//! Writes the seed corpus: a handful of valid inputs per target, built with the crate's own
//! encoders (so they stay valid as the formats change). `npm run fuzz -- --write-seeds` runs it
//! into `tests/fuzz/corpus/<target>/`; a file is rewritten only when its bytes change.
//!
//! Usage: `seeds <corpus dir>`.

use std::path::Path;

use clawmatrix::identity::key::NodeKey;
use clawmatrix::proto::codec::encode_body_owned;
use clawmatrix::proto::frame::{Body, Header, NodeRecord};
use clawmatrix::proto::signed::SignedRecord;
use clawmatrix::proto::tool_result::{encode_json_ok, encode_raw_head};
use clawmatrix::proto::{encode, Bytes32, CallId, FrameId, Sig64};
use clawmatrix_fuzz::handshake::{push_op, DialerCase, ListenerCase, Op};
use clawmatrix_fuzz::push_bytes;
use serde_json::json;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    let p = d.join(name);
    if std::fs::read(&p).ok().as_deref() != Some(bytes) {
        std::fs::write(&p, bytes).expect("seed written");
    }
}

/// One WebSocket frame (FIN, opcode, payload, masked with `mask` when given).
fn ws_frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut p = payload.to_vec();
    if let Some(k) = mask {
        out.extend_from_slice(&k);
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    out.extend_from_slice(&p);
    out
}

fn ws(dir: &Path) {
    let k = Some([0x12, 0x34, 0x56, 0x78]);
    let close = |code: u16, reason: &str| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        p
    };
    // [flags][piece seed][stream]: flags bit 0 = client role, bits 1-2 = limit index.
    let mut server = vec![0u8, 0];
    server.extend(ws_frame(true, 2, b"hello mesh", k));
    server.extend(ws_frame(true, 1, "héllo".as_bytes(), k));
    server.extend(ws_frame(true, 9, b"ping", k));
    server.extend(ws_frame(true, 10, b"", k));
    server.extend(ws_frame(true, 8, &close(1000, "bye"), k));
    write(dir, "ws_reader_diff", "server-messages", &server);

    let mut client = vec![1u8, 7];
    client.extend(ws_frame(false, 2, b"frag-", None));
    client.extend(ws_frame(true, 9, b"x", None));
    client.extend(ws_frame(false, 0, b"ment", None));
    client.extend(ws_frame(true, 0, b"ed", None));
    client.extend(ws_frame(false, 1, "tex".as_bytes(), None));
    client.extend(ws_frame(true, 0, "t✓".as_bytes(), None));
    client.extend(ws_frame(true, 8, &close(4003, "going"), None));
    write(dir, "ws_reader_diff", "client-fragments", &client);

    let mut mid = vec![2u8, 3];
    mid.extend(ws_frame(true, 2, &[0xAB; 300], k));
    mid.extend(ws_frame(true, 2, &[0xCD; 999], k));
    write(dir, "ws_reader_diff", "server-126-length", &mid);

    let mut big = vec![1u8 | 4, 0];
    big.extend(ws_frame(false, 2, &[1; 2000], None));
    big.extend(ws_frame(true, 0, &[2; 3000], None));
    write(dir, "ws_reader_diff", "client-large-fragments", &big);

    let mut bad = vec![0u8, 0];
    bad.extend(ws_frame(true, 2, b"unmasked from a client", None));
    write(dir, "ws_reader_diff", "server-refuses-unmasked", &bad);

    let mut huge = vec![1u8 | 2, 0];
    huge.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3]);
    write(dir, "ws_reader_diff", "client-announced-too-large", &huge);
}

fn header(dst: Option<&str>, body: Body) -> Header {
    Header {
        v: 1,
        id: FrameId([0x5A; 16]),
        src: "office-01".into(),
        dst: dst.map(Into::into),
        ttl: 8,
        hops: 1,
        ts: 1_700_000_000_000,
        body,
    }
}

fn codec(dir: &Path) {
    let c = CallId([0xC1; 16]);
    let bodies: Vec<(&str, Option<&str>, Body, &[u8])> = vec![
        ("ping", None, Body::Ping { seq: 7, t: 42 }, b""),
        ("pong", None, Body::Pong { seq: 7, t: 43 }, b""),
        (
            "digest",
            None,
            Body::Digest {
                entries: vec![("office-01".into(), 1, 2), ("home".into(), 3, 4)],
                sum: None,
                ask: true,
            },
            b"",
        ),
        ("gossip", None, Body::Gossip { records: 0 }, b""),
        (
            "leave",
            None,
            Body::Leave {
                node: "office-01".into(),
                incarnation: 3,
                sig: Sig64([0x33; 64]),
            },
            b"",
        ),
        (
            "call",
            Some("home"),
            Body::Call {
                call_id: c,
                method: "tool.call".into(),
                deadline_ms: Some(30_000),
            },
            b"{\"tool\":\"read\"}",
        ),
        (
            "reply",
            Some("home"),
            Body::Reply {
                call_id: c,
                ok: false,
                code: Some("CLAWMATRIX_DENIED".into()),
                message: Some("no \"quotes\"\n".into()),
            },
            b"",
        ),
        (
            "chunk",
            Some("home"),
            Body::Chunk { call_id: c, seq: 1 },
            b"\x00bytes",
        ),
        (
            "end",
            Some("home"),
            Body::End {
                call_id: c,
                ok: true,
                code: None,
                message: None,
            },
            b"done",
        ),
        (
            "cancel",
            Some("home"),
            Body::Cancel {
                call_id: c,
                reason: "client gone".into(),
            },
            b"",
        ),
        (
            "credit",
            Some("home"),
            Body::Credit {
                call_id: c,
                chunks: 64,
            },
            b"",
        ),
        (
            "unreachable",
            Some("home"),
            Body::Unreachable {
                call_id: c,
                node: "gpu".into(),
            },
            b"",
        ),
        (
            "sealed",
            Some("home"),
            Body::Sealed { call_id: c, ctr: 9 },
            b"\x01\x02sealed",
        ),
    ];
    for (name, dst, body, payload) in bodies {
        let wire = encode(&header(dst, body.clone()), payload).expect("encodes");
        write(dir, "frame_codec", &format!("frame-{name}"), &wire);
        if matches!(name, "call" | "chunk" | "reply") {
            let inner = encode_body_owned(&body, payload.to_vec()).expect("encodes");
            write(dir, "frame_codec", &format!("body-{name}"), &inner);
        }
    }
    let key = NodeKey::from_seed(&[9; 32]);
    let record = NodeRecord {
        node: "office-01".into(),
        incarnation: 1,
        version: 2,
        key: key.public(),
        xkey: Bytes32([8; 32]),
        listen: true,
        agents: vec![],
        models: vec![],
        tags: vec!["gpu".into()],
        links: vec![],
    };
    let signed = SignedRecord::sign(record, &key).expect("signs");
    let mut two = signed.wire.to_vec();
    two.extend_from_slice(&signed.wire);
    write(dir, "frame_codec", "gossip-two-records", &two);
}

fn handshakes(dir: &Path) {
    let scripts = |honest: &[clawmatrix::proto::HandshakeFrame]| {
        let mut s: Vec<(&str, Vec<Op>)> = vec![
            ("honest", vec![Op::Honest, Op::Honest]),
            ("replay", vec![Op::Honest, Op::Replay(0)]),
            ("late", vec![Op::Honest, Op::Tick(20_000_000), Op::Honest]),
        ];
        // The honest frames as text, for the fuzzer to mutate.
        s.push((
            "as-text",
            honest.iter().map(|f| Op::Text(f.encode())).collect(),
        ));
        s
    };
    for flags in [0u8, 1, 2 | 4, 8, 16, 32, 0x40 | 3] {
        let case = ListenerCase { flags };
        let honest = case.honest();
        for (name, ops) in scripts(&honest) {
            let mut input = vec![flags];
            ops.iter().for_each(|op| push_op(&mut input, op));
            write(
                dir,
                "handshake_listener",
                &format!("{flags:02x}-{name}"),
                &input,
            );
        }
    }
    for flags in [0u8, 1, 2, 3 | 4, 8, 16, 32, 0x80] {
        let case = DialerCase { flags };
        let honest = case.honest();
        for (name, ops) in scripts(&honest) {
            let mut input = vec![flags];
            ops.iter().for_each(|op| push_op(&mut input, op));
            write(
                dir,
                "handshake_dialer",
                &format!("{flags:02x}-{name}"),
                &input,
            );
        }
    }
}

fn config(dir: &Path) {
    let secret = "Vq7#pL2mX9tR4wKz-fuzz";
    let cases = [
        (
            "minimal",
            json!({"nodeId": "n1", "secret": secret, "listen": true}),
        ),
        (
            "dialer",
            json!({"nodeId": "home-01", "secret": secret, "peers": [{"nodeId": "cloud-01", "url": "wss://cloud.example.com:19000/mesh"}], "tags": ["home"]}),
        ),
        (
            "full",
            json!({
                "nodeId": "office-01", "secret": secret, "secretPrevious": "An0ther#Secret-2024!",
                "listen": true, "listenHost": "::", "listenPort": 20000, "proxyPort": 20001,
                "peers": [{"nodeId": "cloud-01", "url": "wss://[2001:db8::1]:19000/mesh"}],
                "agents": [{"id": "coder", "description": "writes code", "tags": ["coding"]}],
                "models": [{
                    "id": "qwen2.5:7b", "provider": "ollama", "api": "openai-responses",
                    "reasoning": true, "input": ["text", "image"],
                    "cost": {"input": 0.5, "output": 1.5, "cacheRead": 0.1, "cacheWrite": 0.2},
                    "contextWindow": 32768, "maxTokens": 8192,
                    "upstream": {"baseUrl": "http://127.0.0.1:11434/v1", "api": "openai-completions", "model": "qwen2.5:7b-instruct", "apiKeyEnv": "OLLAMA_KEY"}
                }],
                "proxyModels": [{"id": "claude-sonnet", "nodeId": "cloud-01", "description": "big"}],
                "handoffTimeout": 1000, "handoffMaxMs": 2000, "proxyTimeoutMs": 30000,
                "heartbeatIntervalMs": 100, "heartbeatMisses": 100, "forgetAfterMs": 5000,
                "toolProxy": {"enabled": true, "allow": ["exec"], "deny": ["write"], "maxOutputBytes": 4096, "root": "/srv/agent"},
                "tls": {"certFile": "/etc/cm/cert.pem", "keyFile": "/etc/cm/key.pem", "caFile": "/etc/cm/ca.pem"},
                "access": {"default": "deny", "rules": [
                    {"name": "home-read-only", "nodes": ["home-01"], "callerAgents": ["main"], "tools": ["read"], "models": ["*"], "agents": [], "effect": "allow"}
                ]}
            }),
        ),
        (
            "invalid",
            json!({"nodeId": "bad id", "secret": "short", "listenPort": 0, "peers": [{"url": "http://x"}]}),
        ),
    ];
    for (name, v) in cases {
        let valid = clawmatrix::config::Config::from_json(&v).is_ok();
        assert_eq!(valid, name != "invalid", "config seed {name}");
        let text = serde_json::to_vec_pretty(&v).expect("json");
        write(dir, "config", name, &text);
    }
}

fn tool_result(dir: &Path) {
    let part = |out: &mut Vec<u8>, b: &[u8]| {
        out.push(0);
        push_bytes(out, b);
    };
    let prefix = b"[read ran on office-01]\n";
    let mut json_form = vec![prefix.len() as u8];
    json_form.extend_from_slice(prefix);
    let payload = encode_json_ok("file text", &json!({"path": "a.txt"})).expect("json");
    let (a, b) = payload.split_at(payload.len() / 2);
    part(&mut json_form, a);
    part(&mut json_form, b);
    write(dir, "tool_result", "json-two-parts", &json_form);

    let text = "héllo raw text";
    let (fixed, head) = encode_raw_head(text.len(), &json!({"bytes": 14})).expect("head");
    let mut raw = vec![0u8];
    part(&mut raw, &fixed[..5]);
    let mut rest = fixed[5..].to_vec();
    rest.extend_from_slice(&head);
    part(&mut raw, &rest);
    part(&mut raw, text.as_bytes());
    write(dir, "tool_result", "raw-three-parts", &raw);

    // A 1 KiB part pushed 17,000 more times: past the 16 MiB limit.
    let mut big = vec![0u8];
    part(&mut big, &[b'a'; 1024]);
    big.push(1);
    big.extend_from_slice(&17_000u16.to_be_bytes());
    write(dir, "tool_result", "json-past-the-limit", &big);
}

fn proxy(dir: &Path) {
    let post = |path: &str, body: &str, auth: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let bearer = "authorization: Bearer tok-fuzz\r\n";
    let chat =
        |m: &str| format!(r#"{{"model":"{m}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let cases = [
        (
            "models",
            "GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-fuzz\r\n\r\n"
                .to_string(),
        ),
        (
            "models-pinned",
            "GET /node/meta/v1/models HTTP/1.1\r\nx-api-key: tok-fuzz\r\n\r\n".to_string(),
        ),
        ("chat", post("/v1/chat/completions", &chat("m"), bearer)),
        (
            "chat-qualified",
            post("/v1/chat/completions", &chat("Office-B/m"), bearer),
        ),
        (
            "chat-provider-name",
            post(
                "/v1/chat/completions",
                &chat("clawmatrix-office-b/shared"),
                bearer,
            ),
        ),
        (
            "chat-slash-model",
            post("/v1/chat/completions", &chat("meta/llama-3"), bearer),
        ),
        (
            "chat-proxy-pin",
            post("/v1/chat/completions", &chat("pinned"), bearer),
        ),
        (
            "chat-unreachable",
            post("/v1/chat/completions", &chat("big"), bearer),
        ),
        (
            "responses-pinned",
            post(
                "/node/office-01/v1/responses",
                r#"{"model":"shared","stream":true,"input":"hi"}"#,
                bearer,
            ),
        ),
        (
            "messages-bad-stream",
            post(
                "/v1/messages",
                r#"{"model":"m","stream":"yes"}"#,
                "x-api-key: tok-fuzz\r\n",
            ),
        ),
        ("no-token", post("/v1/chat/completions", &chat("m"), "")),
        (
            "wrong-method",
            "DELETE /v1/responses HTTP/1.1\r\nauthorization: Bearer tok-fuzz\r\n\r\n".to_string(),
        ),
        (
            "pipelined",
            format!(
                "{}{}",
                post("/v1/messages", &chat("x"), bearer),
                post("/node/ghost/v1/messages", &chat("x"), bearer)
            ),
        ),
    ];
    for (name, req) in cases {
        write(dir, "proxy_route", name, req.as_bytes());
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    ws(dir);
    codec(dir);
    handshakes(dir);
    config(dir);
    tool_result(dir);
    proxy(dir);
}

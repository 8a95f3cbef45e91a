//! Unit tests of the configuration: the validation table, defaults, the spec's templates, and a
//! deterministic fuzz pass that feeds mutated JSON and asserts nothing panics.

use serde_json::{json, Value};

use super::*;

/// A secret the low-entropy check accepts (16 random characters from four classes).
const SECRET: &str = "Vq7#pL2mX9tR4wKz";

/// What a table row expects.
enum Expect {
    /// Accepted without warnings.
    Ok,
    /// Accepted with exactly one warning: (path, reason substring).
    Warn(&'static str, &'static str),
    /// Rejected with exactly one issue: (path, reason substring).
    Err(&'static str, &'static str),
}

/// One validation case: `patch` is merged key by key into the base config (a valid listening
/// node); a patch value of `"<absent>"` removes the key.
struct Row {
    name: &'static str,
    patch: Value,
    expect: Expect,
}

fn base() -> Value {
    json!({ "nodeId": "n1", "secret": SECRET, "listen": true })
}

fn merged(patch: &Value) -> Value {
    let mut v = base();
    if let (Some(obj), Some(patch)) = (v.as_object_mut(), patch.as_object()) {
        for (k, pv) in patch {
            if pv == "<absent>" {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), pv.clone());
            }
        }
    }
    v
}

fn row(name: &'static str, patch: Value, expect: Expect) -> Row {
    Row {
        name,
        patch,
        expect,
    }
}

fn ok(name: &'static str, patch: Value) -> Row {
    row(name, patch, Expect::Ok)
}

fn err(name: &'static str, patch: Value, path: &'static str, reason: &'static str) -> Row {
    row(name, patch, Expect::Err(path, reason))
}

fn peer(id: &str, url: &str) -> Value {
    json!({ "nodeId": id, "url": url })
}

fn model(extra: Value) -> Value {
    let mut m = json!({ "id": "m1", "provider": "ollama" });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    m
}

/// The validation table: one row per rule and case. Kept one row per line (hence the
/// `rustfmt::skip`) so the table reads as a table.
#[rustfmt::skip]
fn validation_rows() -> Vec<Row> {
    let dial = json!([peer("cloud-01", "wss://cloud.example.com:19000")]);
    vec![
        ok("the base config is valid", json!({})),
        err("nodeId is required", json!({"nodeId": "<absent>"}), "nodeId", "is required"),
        err("secret is required", json!({"secret": "<absent>"}), "secret", "is required"),
        err("a short secret names the minimum", json!({"secret": "short"}), "secret", "must be at least 16 characters long"),
        ok("a random secret of exactly 16 characters is enough", json!({"secret": "tq8mzv2kx7rp4wjc"})),
        row("a 16-letter run is accepted with a low-entropy warning", json!({"secret": "ABCDEFGHIJKLMNOP"}), Expect::Warn("secret", "looks low-entropy")),
        row("digits counting up are accepted with a low-entropy warning", json!({"secret": "0123456789abcdef"}), Expect::Warn("secret", "looks low-entropy: about 18 bits estimated, want at least 64")),
        row("one repeated character gets the warning", json!({"secret": "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"}), Expect::Warn("secret", "looks low-entropy")),
        row("a repeated short phrase gets the warning", json!({"secret": "hunter2hunter2hunter2hunter2"}), Expect::Warn("secret", "looks low-entropy")),
        row("common words get the warning", json!({"secret": "your-shared-secret"}), Expect::Warn("secret", "looks low-entropy")),
        row("sixteen digits get the warning", json!({"secret": "8204710398476523"}), Expect::Warn("secret", "looks low-entropy")),
        ok("a long random base64 secret gets no warning", json!({"secret": "c2VjcmV0IGZyb20gb3BlbnNzbCByYW5k+Q7x"})),
        err("a numeric secret is a type error", json!({"secret": 1234567890123456_u64}), "secret", "expected a string, got number"),
        err("nodeId with a space is invalid", json!({"nodeId": "cloud 01"}), "nodeId", "invalid node id \"cloud 01\""),
        err("nodeId must start with a letter or digit", json!({"nodeId": "-cloud"}), "nodeId", "starting with a letter or digit"),
        err("nodeId of 65 characters is too long", json!({"nodeId": "a".repeat(65)}), "nodeId", "1-64 characters"),
        ok("nodeId of 64 characters is fine", json!({"nodeId": "a".repeat(64)})),
        ok("nodeId may hold dots, dashes and underscores", json!({"nodeId": "Cloud.01_eu-west"})),
        err("empty nodeId is invalid", json!({"nodeId": ""}), "nodeId", "invalid node id \"\""),
        err("non-ASCII nodeId is invalid", json!({"nodeId": "nœud"}), "nodeId", "invalid node id"),
        err("duplicate peer nodeIds are rejected", json!({"peers": [peer("a", "ws://h1:1"), peer("a", "ws://h2:1")]}), "peers[1].nodeId", "duplicate peer nodeId \"a\" (also peers[0])"),
        err("duplicate peer urls are rejected after normalization", json!({"peers": [peer("a", "wss://h.example"), peer("b", "WSS://H.example:443/")]}), "peers[1].url", "duplicate peer url (same as peers[0])"),
        err("a peer with our own nodeId is rejected", json!({"peers": [peer("n1", "ws://h:1")]}), "peers[0].nodeId", "is this node's own nodeId"),
        err("an http peer url is rejected", json!({"peers": [peer("a", "http://h:1")]}), "peers[0].url", "expected ws:// or wss://"),
        err("a peer url port above 65535 is rejected", json!({"peers": [peer("a", "wss://h:99999")]}), "peers[0].url", "invalid port \"99999\""),
        err("a peer url with userinfo is rejected", json!({"peers": [peer("a", "wss://me:pw@h:1")]}), "peers[0].url", "userinfo"),
        err("a peer url with a query is rejected", json!({"peers": [peer("a", "wss://h:1/?token=x")]}), "peers[0].url", "query"),
        err("a peer url without host is rejected", json!({"peers": [peer("a", "wss://:1")]}), "peers[0].url", "missing host"),
        err("a peer without url is rejected", json!({"peers": [{"nodeId": "a"}]}), "peers[0].url", "is required"),
        err("a peer with a bad nodeId is rejected", json!({"peers": [peer("a b", "ws://h:1")]}), "peers[0].nodeId", "invalid node id"),
        err("peers must be an array", json!({"peers": {"nodeId": "a"}}), "peers", "expected an array, got object"),
        err("a peer must be an object", json!({"peers": ["wss://h:1"]}), "peers[0]", "expected an object, got string"),
        err("listenPort as a string is a type error", json!({"listenPort": "19000"}), "listenPort", "expected an integer, got string"),
        err("listenPort null is a type error", json!({"listenPort": null}), "listenPort", "expected an integer, got null"),
        err("listenPort 0 is out of range", json!({"listenPort": 0}), "listenPort", "must be between 1 and 65535, got 0"),
        err("listenPort 70000 is out of range", json!({"listenPort": 70000}), "listenPort", "got 70000"),
        err("negative listenPort is out of range", json!({"listenPort": -1}), "listenPort", "got -1"),
        err("fractional listenPort is not an integer", json!({"listenPort": 1.5}), "listenPort", "expected an integer, got 1.5"),
        ok("integral float listenPort is accepted", json!({"listenPort": 19010.0})),
        err("proxyPort 65536 is out of range", json!({"proxyPort": 65536}), "proxyPort", "between 1 and 65535"),
        err("listenPort equal to proxyPort on 0.0.0.0 collides", json!({"listenPort": 19001}), "proxyPort", "must differ from listenPort (19001)"),
        err("listenPort equal to proxyPort on localhost collides", json!({"listenHost": "localhost", "proxyPort": 19000}), "proxyPort", "must differ from listenPort"),
        ok("equal ports are fine on a specific non-loopback address", json!({"listenHost": "192.168.1.10", "proxyPort": 19000})),
        ok("equal ports are fine when not listening", json!({"listen": false, "peers": dial.clone(), "proxyPort": 19000})),
        err("empty listenHost is rejected", json!({"listenHost": ""}), "listenHost", "must not be empty"),
        err("listenHost with a space is rejected", json!({"listenHost": "my host"}), "listenHost", "expected an IP address or a hostname"),
        ok("IPv6 unspecified listenHost is accepted", json!({"listenHost": "::"})),
        ok("hostname listenHost is accepted", json!({"listenHost": "mesh.internal"})),
        err("a tag with whitespace is rejected and named", json!({"tags": ["ok", "a b"]}), "tags[1]", "invalid tag \"a b\": must not contain whitespace"),
        err("an empty tag is rejected", json!({"tags": [""]}), "tags[0]", "must not be empty"),
        err("a tag with a comma is rejected", json!({"tags": ["a,b"]}), "tags[0]", "must not contain a comma"),
        err("a tag starting with tags: is rejected", json!({"tags": ["tags:gpu"]}), "tags[0]", "must not start with \"tags:\""),
        err("a tag over 64 characters is rejected", json!({"tags": ["t".repeat(65)]}), "tags[0]", "longer than 64 characters"),
        err("a tag must be a string", json!({"tags": [7]}), "tags[0]", "expected a string, got number"),
        err("agent tags follow the tag rules", json!({"agents": [{"id": "coder", "tags": ["bad tag"]}]}), "agents[0].tags[0]", "invalid tag \"bad tag\""),
        err("duplicate agent ids are rejected", json!({"agents": [{"id": "coder"}, {"id": "coder"}]}), "agents[1].id", "duplicate agent id \"coder\" (also agents[0])"),
        err("agent ids follow the id rule", json!({"agents": [{"id": "my coder"}]}), "agents[0].id", "invalid agent id"),
        err("an agent needs an id", json!({"agents": [{"description": "x"}]}), "agents[0].id", "is required"),
        ok("an agent with only an id is fine", json!({"agents": [{"id": "coder"}]})),
        err("a tool name with a space is rejected", json!({"toolProxy": {"allow": ["ex ec"]}}), "toolProxy.allow[0]", "invalid tool name \"ex ec\""),
        err("a wildcard inside a tool name is rejected", json!({"toolProxy": {"deny": ["exec*"]}}), "toolProxy.deny[0]", "must stand alone"),
        err("an empty tool name is rejected", json!({"toolProxy": {"allow": [""]}}), "toolProxy.allow[0]", "must not be empty"),
        ok("a lone wildcard and dotted names are allowed", json!({"toolProxy": {"enabled": true, "allow": ["*"], "deny": ["browser", "mcp.fs-write"]}})),
        err("unknown field in toolProxy is named", json!({"toolProxy": {"bogus": 1}}), "toolProxy.bogus", "unknown field"),
        err("unknown field at the root is named", json!({"bogus": true}), "bogus", "unknown field"),
        err("unknown field in a peer is named", json!({"peers": [{"nodeId": "a", "url": "ws://h:1", "tls": true}]}), "peers[0].tls", "unknown field"),
        err("unknown field in a model cost is named", json!({"models": [model(json!({"cost": {"inputs": 1}}))]}), "models[0].cost.inputs", "unknown field"),
        err("toolProxy must be an object", json!({"toolProxy": []}), "toolProxy", "expected an object, got array"),
        err("a model needs a provider", json!({"models": [{"id": "m1"}]}), "models[0].provider", "is required"),
        err("an empty model provider is rejected", json!({"models": [model(json!({"provider": ""}))]}), "models[0].provider", "must be non-empty"),
        err("an empty model id is rejected", json!({"models": [model(json!({"id": ""}))]}), "models[0].id", "invalid model id"),
        err("an unknown model api is rejected", json!({"models": [model(json!({"api": "gemini"}))]}), "models[0].api", "expected one of \"openai-completions\""),
        err("an upstream needs a baseUrl", json!({"models": [model(json!({"upstream": {}}))]}), "models[0].upstream.baseUrl", "is required"),
        err("an upstream baseUrl must be http(s)", json!({"models": [model(json!({"upstream": {"baseUrl": "ws://x"}}))]}), "models[0].upstream.baseUrl", "expected http:// or https://"),
        err("an upstream baseUrl without a host is rejected", json!({"models": [model(json!({"upstream": {"baseUrl": "http:///v1"}}))]}), "models[0].upstream.baseUrl", "missing host"),
        err("an unknown upstream api is rejected", json!({"models": [model(json!({"upstream": {"baseUrl": "http://h", "api": "grpc"}}))]}), "models[0].upstream.api", "expected one of"),
        err("an upstream model id with spaces is rejected", json!({"models": [model(json!({"upstream": {"baseUrl": "http://h", "model": "a b"}}))]}), "models[0].upstream.model", "without whitespace"),
        err("a bad apiKeyEnv name is rejected", json!({"models": [model(json!({"upstream": {"baseUrl": "http://h", "apiKeyEnv": "1-KEY"}}))]}), "models[0].upstream.apiKeyEnv", "invalid environment variable name"),
        err("unknown upstream fields are rejected", json!({"models": [model(json!({"upstream": {"baseUrl": "http://h", "apiKey": "sk-1"}}))]}), "models[0].upstream.apiKey", "unknown field"),
        err("proxyTimeoutMs below a second is rejected", json!({"proxyTimeoutMs": 10}), "proxyTimeoutMs", "1000"),
        ok("every documented model api is accepted", json!({"models": [model(json!({"api": "anthropic-messages"})), model(json!({"id": "m2", "api": "openai-responses"}))]})),
        err("an unknown model input is rejected", json!({"models": [model(json!({"input": ["audio"]}))]}), "models[0].input[0]", "expected \"text\" or \"image\", got \"audio\""),
        err("an empty model input list is rejected", json!({"models": [model(json!({"input": []}))]}), "models[0].input", "at least one input"),
        err("duplicate model ids are rejected", json!({"models": [model(json!({})), model(json!({}))]}), "models[1].id", "duplicate model id \"m1\" (also models[0])"),
        err("a negative price is rejected", json!({"models": [model(json!({"cost": {"input": -1}}))]}), "models[0].cost.input", "non-negative"),
        err("a zero context window is rejected", json!({"models": [model(json!({"contextWindow": 0}))]}), "models[0].contextWindow", "between 1 and"),
        err("a proxy model pinned to ourselves is rejected", json!({"proxyModels": [{"id": "m1", "nodeId": "n1"}]}), "proxyModels[0].nodeId", "is this node's own nodeId"),
        err("a proxy model pinned to a bad node id is rejected", json!({"proxyModels": [{"id": "m1", "nodeId": "office 01"}]}), "proxyModels[0].nodeId", "invalid node id"),
        err("a duplicate proxy model is rejected", json!({"proxyModels": [{"id": "m1"}, {"id": "m1"}]}), "proxyModels[1].id", "duplicate proxy model \"m1\""),
        ok("a proxy model without nodeId is auto-discovered", json!({"proxyModels": [{"id": "m1"}, {"id": "m1", "nodeId": "office-01"}]})),
        err("maxOutputBytes below 1 KiB is rejected", json!({"toolProxy": {"maxOutputBytes": 100}}), "toolProxy.maxOutputBytes", "must be between 1024 and 67108864, got 100"),
        err("maxOutputBytes above 64 MiB is rejected", json!({"toolProxy": {"maxOutputBytes": 67108865}}), "toolProxy.maxOutputBytes", "got 67108865"),
        ok("maxOutputBytes of exactly 64 MiB is fine", json!({"toolProxy": {"maxOutputBytes": 67108864}})),
        ok("tls with cert and key is accepted", json!({"listen": true, "tls": {"certFile": "/c.pem", "keyFile": "/k.pem"}})),
        ok("tls with only a CA bundle is accepted", json!({"tls": {"caFile": "/ca.pem"}})),
        err("tls.certFile without keyFile is rejected", json!({"listen": true, "tls": {"certFile": "/c.pem"}}), "tls.keyFile", "is required when tls.certFile is set"),
        err("tls.keyFile without certFile is rejected", json!({"listen": true, "tls": {"keyFile": "/k.pem"}}), "tls.certFile", "is required when tls.keyFile is set"),
        err("an empty tls.caFile is rejected", json!({"tls": {"caFile": ""}}), "tls.caFile", "must be a non-empty file path"),
        err("an unknown tls field is rejected", json!({"tls": {"pinned": true}}), "tls.pinned", "unknown field"),
        ok("an absolute toolProxy.root is accepted", json!({"toolProxy": {"root": "/srv/agent"}})),
        err("a relative toolProxy.root is rejected", json!({"toolProxy": {"root": "work"}}), "toolProxy.root", "must be an absolute path"),
        err("a tilde toolProxy.root is rejected", json!({"toolProxy": {"root": "~/work"}}), "toolProxy.root", "\"~\" is not expanded"),
        err("an empty toolProxy.root is rejected", json!({"toolProxy": {"root": ""}}), "toolProxy.root", "must not be empty"),
        err("toolProxy.root must be a string", json!({"toolProxy": {"root": 1}}), "toolProxy.root", "expected a string, got number"),
        err("heartbeatIntervalMs below 100 is rejected", json!({"heartbeatIntervalMs": 99}), "heartbeatIntervalMs", "between 100 and 600000"),
        ok("heartbeatIntervalMs of 600000 is fine", json!({"heartbeatIntervalMs": 600000})),
        err("heartbeatMisses of 0 is rejected", json!({"heartbeatMisses": 0}), "heartbeatMisses", "between 1 and 100"),
        err("handoffTimeout below a second is rejected", json!({"handoffTimeout": 999}), "handoffTimeout", "between 1000 and"),
        err("a huge handoffTimeout is rejected, not wrapped", json!({"handoffTimeout": 1e300}), "handoffTimeout", "must be between"),
        err("u64::MAX handoffMaxMs is rejected", json!({"handoffMaxMs": u64::MAX}), "handoffMaxMs", "got 18446744073709551615"),
        err("handoffMaxMs below a second is rejected", json!({"handoffMaxMs": 500}), "handoffMaxMs", "between 1000 and"),
        err("forgetAfterMs below a second is rejected", json!({"forgetAfterMs": 10}), "forgetAfterMs", "between 1000 and"),
        err("hostTimeoutMs below a second is rejected", json!({"hostTimeoutMs": 999}), "hostTimeoutMs", "between 1000 and 604800000, got 999"),
        ok("hostTimeoutMs of a minute is fine", json!({"hostTimeoutMs": 60000})),
        err("listen as a string is a type error", json!({"listen": "yes"}), "listen", "expected a boolean, got string"),
        row("a node that neither listens nor dials gets a warning", json!({"listen": false}), Expect::Warn("listen", "neither listens nor dials: it cannot join a mesh")),
        row("a node with agents but no link still gets the warning", json!({"listen": false, "agents": [{"id": "coder"}]}), Expect::Warn("listen", "cannot join a mesh")),
        ok("a node that only dials gets no warning", json!({"listen": false, "peers": dial})),
    ]
}

#[test]
fn validation_table() {
    let rows = validation_rows();
    assert!(rows.len() >= 30);
    let mut failures = Vec::new();
    for r in &rows {
        let input = merged(&r.patch);
        let got = Config::from_json(&input);
        let problem = match (&r.expect, &got) {
            (Expect::Ok, Ok(v)) if v.warnings.is_empty() => None,
            (Expect::Warn(path, reason), Ok(v))
                if v.warnings.len() == 1
                    && v.warnings[0].path == *path
                    && v.warnings[0].reason.contains(reason) =>
            {
                None
            }
            (Expect::Err(path, reason), Err(e))
                if e.issues.len() == 1
                    && e.issues[0].path == *path
                    && e.issues[0].reason.contains(reason) =>
            {
                None
            }
            _ => Some(format!("{}: got {got:?}", r.name)),
        };
        failures.extend(problem);
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn minimal_config_gets_every_documented_default() {
    let v = Config::from_json(&json!({"nodeId": "n1", "secret": SECRET})).unwrap();
    let c = v.config;
    assert_eq!(c.node_id, "n1");
    assert_eq!(c.secret, SECRET);
    assert!(!c.listen);
    assert_eq!(c.listen_host, "0.0.0.0");
    assert_eq!(c.listen_port, 19000);
    assert!(c.peers.is_empty() && c.agents.is_empty() && c.models.is_empty());
    assert!(c.proxy_models.is_empty() && c.tags.is_empty());
    assert_eq!(c.proxy_port, 19001);
    assert_eq!(c.handoff_timeout_ms, 600_000);
    assert_eq!(c.handoff_max_ms, 3_600_000);
    assert_eq!(c.heartbeat_interval_ms, 1_250);
    assert_eq!(c.heartbeat_misses, 3);
    assert_eq!(c.forget_after_ms, 600_000);
    assert_eq!(c.host_timeout_ms, 30_000);
    assert_eq!(
        c.tool_proxy,
        ToolProxyConfig {
            enabled: false,
            allow: vec![],
            deny: vec![],
            max_output_bytes: 1_048_576,
            root: None,
        }
    );
    // Not listening and no peers: accepted, with the isolation warning.
    assert_eq!(v.warnings.len(), 1);
    assert_eq!(v.warnings[0].path, "listen");
}

#[test]
fn model_metadata_defaults_follow_openclaw() {
    let v = Config::from_json(&merged(&json!({"models": [model(json!({}))]}))).unwrap();
    let m = &v.config.models[0];
    assert_eq!(m.api, ModelApi::OpenAiCompletions);
    assert_eq!(m.input, vec![ModelInput::Text]);
    assert_eq!(m.cost, ModelCost::default());
    assert_eq!((m.context_window, m.max_tokens), (128_000, 4096));
    assert!(!m.reasoning);
    assert_eq!(m.description, None);
}

#[test]
fn peer_url_is_parsed_once_and_serialized_as_written() {
    let input = merged(&json!({"peers": [peer("cloud-01", "WSS://Cloud.example.com")]}));
    let c = Config::from_json(&input).unwrap().config;
    assert_eq!(
        c.peers[0].parsed,
        PeerUrl {
            tls: true,
            host: "Cloud.example.com".into(),
            port: 443,
            path: "/".into()
        }
    );
    assert_eq!(c.to_json()["peers"][0]["url"], "WSS://Cloud.example.com");
}

#[test]
fn every_issue_is_collected_not_just_the_first() {
    let input = json!({
        "nodeId": "bad id",
        "listenPort": "x",
        "peers": [peer("a", "http://h")],
        "toolProxy": {"bogus": 1, "allow": ["a b"]},
        "tags": [""],
    });
    let e = Config::from_json(&input).unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "nodeId",
            "secret",
            "listenPort",
            "peers[0].url",
            "tags[0]",
            "toolProxy.bogus",
            "toolProxy.allow[0]"
        ]
    );
}

#[test]
fn error_display_joins_path_and_reason_lines() {
    let input = merged(&json!({"nodeId": "<absent>", "peers": [peer("a", "ftp://h")]}));
    let e = Config::from_json(&input).unwrap_err();
    assert_eq!(
        e.to_string(),
        "nodeId: is required; peers[0].url: expected ws:// or wss://"
    );
    let crate_err: crate::error::Error = e.into();
    assert_eq!(crate_err.code, crate::error::ErrorCode::ConfigInvalid);
}

#[test]
fn short_secret_is_never_echoed() {
    let secret = "hunter2-secret";
    let e = Config::from_json(&merged(&json!({"secret": secret}))).unwrap_err();
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(!format!("{e:?}").contains(secret));
}

#[test]
fn debug_and_redacted_json_hide_the_secret() {
    let c = Config::from_json(&base()).unwrap().config;
    assert!(!format!("{c:?}").contains(SECRET));
    assert_eq!(c.redacted_json()["secret"], "***");
    assert_eq!(c.to_json()["secret"], SECRET);
    let mut redacted = c.redacted_json();
    redacted["secret"] = json!(SECRET);
    assert_eq!(redacted, c.to_json());
}

#[test]
fn non_object_roots_are_rejected_with_the_root_path() {
    for v in [json!(null), json!([]), json!("x"), json!(1), json!(true)] {
        let e = Config::from_json(&v).unwrap_err();
        assert_eq!(e.issues.len(), 1, "{v}");
        assert_eq!(e.issues[0].path, "");
        assert!(e.issues[0].reason.starts_with("expected an object, got "));
    }
}

#[test]
fn invalid_json_text_is_a_config_error() {
    let e = Config::from_json_str("{\"nodeId\": ").unwrap_err();
    assert!(e.issues[0].reason.starts_with("invalid JSON"), "{e}");
    let deep = "[".repeat(10_000);
    assert!(Config::from_json_str(&deep).is_err());
    assert!(Config::from_json_str(&base().to_string()).is_ok());
}

#[test]
fn to_json_round_trips_a_full_config() {
    let input = json!({
        "nodeId": "office-01", "secret": SECRET, "listen": true, "listenHost": "::",
        "listenPort": 20000, "proxyPort": 20001,
        "peers": [peer("cloud-01", "wss://[2001:db8::1]:19000/mesh")],
        "agents": [{"id": "coder", "description": "writes code", "tags": ["coding", "rust"]}],
        "models": [{
            "id": "qwen2.5:7b", "provider": "ollama", "description": "local qwen",
            "api": "openai-responses", "reasoning": true, "input": ["text", "image"],
            "cost": {"input": 0.5, "output": 1.5, "cacheRead": 0.1, "cacheWrite": 0.2},
            "contextWindow": 32768, "maxTokens": 8192,
            "upstream": {"baseUrl": "http://127.0.0.1:11434/v1", "api": "openai-completions", "model": "qwen2.5:7b-instruct", "apiKeyEnv": "OLLAMA_KEY"}
        }],
        "proxyModels": [{"id": "claude-sonnet", "nodeId": "cloud-01", "description": "big"}],
        "tags": ["office", "gpu"], "handoffTimeout": 1000, "handoffMaxMs": 2000, "proxyTimeoutMs": 30000,
        "heartbeatIntervalMs": 100, "heartbeatMisses": 100, "forgetAfterMs": 5000,
        "hostTimeoutMs": 2000,
        "toolProxy": {"enabled": true, "allow": ["exec"], "deny": ["write"], "maxOutputBytes": 4096, "root": "/srv/agent"},
        "tls": {"certFile": "/etc/cm/cert.pem", "keyFile": "/etc/cm/key.pem", "caFile": "/etc/cm/ca.pem"},
        "access": {"default": "deny", "rules": [
            {"name": "home-read-only", "nodes": ["home-01"], "callerAgents": ["main"],
             "tools": ["read"], "models": ["*"], "agents": [], "effect": "allow"},
            {"nodes": ["*"], "tools": ["exec"], "models": [], "agents": ["coder"], "effect": "deny"}
        ]}
    });
    let c = Config::from_json(&input).unwrap().config;
    assert_eq!(c.to_json(), input);
    assert_eq!(Config::from_json(&c.to_json()).unwrap().config, c);
}

/// The three node roles of spec §2, as the 0.1.8 README wrote them, placeholders filled.
fn templates() -> [(&'static str, Value); 3] {
    [
        (
            "cloud",
            json!({
                "nodeId": "cloud-01", "secret": "your-shared-secret", "listen": true,
                "listenPort": 19000, "peers": [],
                "agents": [{"id": "reviewer", "description": "Reviews code and PRs", "tags": ["review"]}],
                "models": [], "tags": ["cloud"]
            }),
        ),
        (
            "office",
            json!({
                "nodeId": "office-01", "secret": "your-shared-secret", "listen": false,
                "peers": [{"nodeId": "cloud-01", "url": "wss://cloud-01.example.com:19000"}],
                "agents": [{"id": "coder", "description": "Writes and debugs code, has repo access", "tags": ["coding"]}],
                "models": [
                    {"id": "claude-sonnet", "provider": "anthropic"},
                    {"id": "deepseek-coder", "provider": "ollama"}
                ],
                "tags": ["office", "gpu"],
                "toolProxy": {
                    "enabled": true,
                    "allow": ["exec", "read", "write", "edit", "web_search"],
                    "deny": ["browser", "sessions_spawn"]
                }
            }),
        ),
        (
            "home",
            json!({
                "nodeId": "home-01", "secret": "your-shared-secret", "listen": false,
                "peers": [{"nodeId": "cloud-01", "url": "wss://cloud-01.example.com:19000"}],
                "agents": [{"id": "assistant", "description": "Personal assistant", "tags": ["general"]}],
                "models": [],
                "proxyModels": [{"id": "claude-sonnet", "nodeId": "office-01"}],
                "tags": ["home"]
            }),
        ),
    ]
}

#[test]
fn the_three_spec_templates_parse_with_only_the_placeholder_secret_warning() {
    // "your-shared-secret" is a placeholder made of common words: the check flags it.
    for (name, t) in templates() {
        match Config::from_json(&t) {
            Ok(v) => {
                assert_eq!(v.warnings.len(), 1, "{name}: {:?}", v.warnings);
                assert_eq!(v.warnings[0].path, "secret");
                assert!(v.warnings[0].reason.contains("looks low-entropy"));
                assert!(!v.warnings[0].reason.contains("your-shared-secret"));
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    let office = Config::from_json(&templates()[1].1).unwrap().config;
    assert!(office.tool_proxy.enabled);
    assert_eq!(office.peers[0].parsed.port, 19000);
    assert_eq!(office.models[1].provider, "ollama");
}

/// xorshift64: a deterministic generator, so the fuzz pass is reproducible without `rand`.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small; the modulo bias is irrelevant here.
        (self.next() % n as u64) as usize
    }
}

fn weird_values() -> Vec<Value> {
    let mut deep = json!([]);
    for _ in 0..64 {
        deep = json!([deep]);
    }
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!(-1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(19000),
        json!(65536),
        json!(""),
        json!("x"),
        json!(" "),
        json!("tags:x"),
        json!("*"),
        json!("ws://"),
        json!("wss://h:99999"),
        json!("wss://[::1]:1"),
        json!("é"),
        json!("\u{0}"),
        json!("z".repeat(1000)),
        json!([]),
        json!([null]),
        json!(["text", 1]),
        json!({}),
        json!({"a": 1}),
        json!({"nodeId": "x", "url": 5}),
        deep,
    ]
}

/// JSON pointers of every node under `v`.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

fn mutate(v: &mut Value, rng: &mut XorShift, weird: &[Value]) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = ps[rng.below(ps.len())].clone();
    let w = weird[rng.below(weird.len())].clone();
    let Some(target) = v.pointer_mut(&p) else {
        return;
    };
    match rng.below(4) {
        0 => *target = w,
        1 => {
            if let Some(m) = target.as_object_mut() {
                let keys: Vec<String> = m.keys().cloned().collect();
                if !keys.is_empty() {
                    m.remove(&keys[rng.below(keys.len())]);
                }
            } else if let Some(a) = target.as_array_mut() {
                a.clear();
            }
        }
        2 => {
            if let Some(m) = target.as_object_mut() {
                m.insert("extra".into(), w);
            } else if let Some(a) = target.as_array_mut() {
                a.push(w);
            }
        }
        _ => *target = json!([target.clone()]),
    }
}

#[test]
fn mutated_configs_never_panic_and_accepted_ones_round_trip() {
    let weird = weird_values();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let secret = "your-shared-secret";
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..240 {
        let mut v = templates()[case % 3].1.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut v, &mut rng, &weird);
        }
        match Config::from_json(&v) {
            Ok(ok) => {
                accepted += 1;
                let again = Config::from_json(&ok.config.to_json());
                assert_eq!(
                    again.map(|a| a.config).ok(),
                    Some(ok.config),
                    "case {case}: {v}"
                );
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.issues.is_empty(), "case {case}");
                assert!(!e.to_string().contains(secret), "case {case}: {e}");
            }
        }
        // The text path must not panic either.
        let _ = Config::from_json_str(&v.to_string());
    }
    assert!(
        accepted > 0 && rejected > 0,
        "{accepted} accepted, {rejected} rejected"
    );
}

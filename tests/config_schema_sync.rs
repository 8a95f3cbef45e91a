//! Keeps the manifest's `configSchema` (what the OpenClaw host validates and defaults) and the
//! Rust `Config` (what the node runs on) in step: same fields at every level, same defaults,
//! same required fields, same limits. Adding a field on one side only fails here.

use std::collections::BTreeSet;

use clawmatrix::config::{self, Config, ModelApi, ModelInput};
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef";
const FINGERPRINT: &str = "ed25519:00112233445566778899aabbccddeeff";
const REVOKED: &str = "ed25519:ffeeddccbbaa99887766554433221100";

fn manifest() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openclaw.plugin.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn schema() -> Value {
    manifest()["configSchema"].clone()
}

/// `Config::to_json()` of a config that sets every optional field and holds one element of
/// every array, so every key the Rust side can emit is present.
fn full_emitted() -> Value {
    let input = json!({
        "nodeId": "office-01", "secret": SECRET, "listen": true, "listenHost": "0.0.0.0",
        "listenPort": 19000, "proxyPort": 19001,
        "secretPrevious": "fedcba9876543210", "identity": {"keyFile": "/etc/cm/node.key", "pins": {"cloud-01": FINGERPRINT}, "revoked": [REVOKED]},
        "peers": [{"nodeId": "cloud-01", "url": "wss://cloud.example.com:19000"}],
        "agents": [{"id": "coder", "description": "writes code", "tags": ["coding"]}],
        "models": [{
            "id": "m1", "provider": "ollama", "description": "d", "api": "openai-completions",
            "reasoning": true, "input": ["text"],
            "cost": {"input": 1, "output": 2, "cacheRead": 3, "cacheWrite": 4},
            "contextWindow": 1000, "maxTokens": 100,
            "upstream": {"baseUrl": "https://api.example.com/v1", "api": "openai-completions", "model": "m1-upstream", "apiKeyEnv": "M1_KEY"}
        }],
        "proxyModels": [{"id": "m2", "nodeId": "cloud-01", "description": "d"}],
        "tags": ["office"], "handoffTimeout": 600000, "handoffMaxMs": 3600000, "proxyTimeoutMs": 600000,
        "heartbeatIntervalMs": 15000, "heartbeatMisses": 3, "forgetAfterMs": 600000,
        "toolProxy": {"enabled": true, "allow": ["exec"], "deny": ["write"], "maxOutputBytes": 2048, "root": "/srv/agent"},
        "tls": {"certFile": "/etc/cm/cert.pem", "keyFile": "/etc/cm/key.pem", "caFile": "/etc/cm/ca.pem"},
        "access": {"default": "deny", "rules": [{
            "name": "home-read-only", "nodes": ["home-01"], "callerAgents": ["main"],
            "tools": ["read"], "models": ["*"], "agents": ["coder"], "effect": "allow"
        }]}
    });
    match Config::from_json(&input) {
        Ok(v) => v.config.to_json(),
        Err(e) => panic!("the full test config must be valid: {e}"),
    }
}

fn schema_type(s: &Value) -> &str {
    s["type"].as_str().unwrap_or("")
}

fn property_names(s: &Value) -> BTreeSet<String> {
    s["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn value_matches_type(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        _ => false,
    }
}

/// Every place where the schema's property names differ from the keys Rust emits, or where an
/// emitted value does not have the schema's type. Walks objects and array items (the first
/// element) recursively.
fn key_mismatches(schema: &Value, emitted: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ty = schema_type(schema);
    if !value_matches_type(ty, emitted) {
        out.push(format!(
            "{path}: schema type {ty:?}, Rust emitted {emitted}"
        ));
        return out;
    }
    match ty {
        "object" if schema.get("properties").is_some() => {
            let in_schema = property_names(schema);
            let in_rust: BTreeSet<String> = emitted
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for k in in_schema.difference(&in_rust) {
                out.push(format!("{path}.{k}: in the schema, not emitted by Rust"));
            }
            for k in in_rust.difference(&in_schema) {
                out.push(format!("{path}.{k}: emitted by Rust, not in the schema"));
            }
            for k in in_schema.intersection(&in_rust) {
                out.extend(key_mismatches(
                    &schema["properties"][k],
                    &emitted[k],
                    &format!("{path}.{k}"),
                ));
            }
        }
        "array" => match emitted.as_array().and_then(|a| a.first()) {
            Some(first) => out.extend(key_mismatches(
                &schema["items"],
                first,
                &format!("{path}[]"),
            )),
            None if schema_type(&schema["items"]) == "object" => {
                out.push(format!("{path}: no element to compare its items with"))
            }
            None => {}
        },
        _ => {}
    }
    out
}

/// A schema default with the defaults of its inner properties applied, as the host does.
fn expand_default(schema: &Value, default: &Value) -> Value {
    match (default, schema["properties"].as_object()) {
        (Value::Object(d), Some(props)) => {
            let mut out = d.clone();
            for (k, p) in props {
                match (out.get(k).cloned(), p.get("default")) {
                    (Some(v), _) => {
                        out.insert(k.clone(), expand_default(p, &v));
                    }
                    (None, Some(inner)) => {
                        out.insert(k.clone(), expand_default(p, inner));
                    }
                    (None, None) => {}
                }
            }
            Value::Object(out)
        }
        _ => default.clone(),
    }
}

/// JSON equality where numbers compare by value (`0` == `0.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Compares the defaults of one object level (recursing into object-typed properties) with
/// what Rust emitted for a config that set none of them. A property without a default must be
/// required or absent from the emitted value (an optional field with no value).
fn default_mismatches(schema: &Value, emitted: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return vec![format!("{path}: not an object schema")];
    };
    for (k, p) in props {
        let here = format!("{path}.{k}");
        let got = emitted.get(k);
        match (p.get("default"), got) {
            (Some(d), Some(got)) => {
                let want = expand_default(p, d);
                if !json_eq(&want, got) {
                    out.push(format!("{here}: schema default {want}, Rust default {got}"));
                }
                if schema_type(p) == "object" && p.get("properties").is_some() {
                    out.extend(default_mismatches(p, got, &here));
                }
            }
            (Some(d), None) => out.push(format!("{here}: schema default {d}, Rust emits nothing")),
            (None, Some(got)) if !required.contains(k.as_str()) => out.push(format!(
                "{here}: Rust emits {got} by default, the schema has no default"
            )),
            (None, _) => {}
        }
    }
    out
}

/// Every object schema (root, items, nested) with its path.
fn object_schemas<'a>(s: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    if schema_type(s) == "object" {
        out.push((path.clone(), s));
        if let Some(props) = s["properties"].as_object() {
            for (k, p) in props {
                object_schemas(p, format!("{path}.{k}"), out);
            }
        }
    }
    if schema_type(s) == "array" {
        object_schemas(&s["items"], format!("{path}[]"), out);
    }
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn schema_and_rust_have_the_same_fields_at_every_level() {
    let m = key_mismatches(&schema(), &full_emitted(), "config");
    assert!(
        m.is_empty(),
        "schema/Rust field mismatch:\n{}",
        m.join("\n")
    );
}

#[test]
fn schema_defaults_equal_rust_defaults() {
    let s = schema();
    let minimal = Config::from_json(&json!({"nodeId": "n1", "secret": SECRET}))
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .to_json();
    let mut m = default_mismatches(&s, &minimal, "config");

    // Array items: one minimal element of each array.
    let with_items = Config::from_json(&json!({
        "nodeId": "n1", "secret": SECRET,
        "peers": [{"nodeId": "p1", "url": "ws://h:1"}],
        "agents": [{"id": "a1"}],
        "models": [{"id": "m1", "provider": "ollama"}],
        "proxyModels": [{"id": "m2"}],
        "access": {"rules": [{"nodes": ["*"], "tools": ["read"], "effect": "allow"}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
    .config
    .to_json();
    for key in ["peers", "agents", "models", "proxyModels"] {
        m.extend(default_mismatches(
            &s["properties"][key]["items"],
            &with_items[key][0],
            &format!("config.{key}[]"),
        ));
    }
    // A rule that sets only `tools` of the three lists: the others take their defaults.
    let mut rule = with_items["access"]["rules"][0].clone();
    rule["tools"] = json!([]);
    m.extend(default_mismatches(
        &s["properties"]["access"]["properties"]["rules"]["items"],
        &rule,
        "config.access.rules[]",
    ));
    assert!(m.is_empty(), "default mismatch:\n{}", m.join("\n"));
}

#[test]
fn schema_required_fields_equal_rust_required_fields() {
    let required_paths = |input: Value| -> BTreeSet<String> {
        match Config::from_json(&input) {
            Ok(_) => BTreeSet::new(),
            Err(e) => e
                .issues
                .into_iter()
                .filter(|i| i.reason == "is required")
                .map(|i| i.path)
                .collect(),
        }
    };
    let s = schema();
    let rust_root = required_paths(json!({}));
    let schema_root: BTreeSet<String> = sorted_strings(&s["required"]).into_iter().collect();
    assert_eq!(schema_root, rust_root);

    let rust_items = required_paths(json!({
        "nodeId": "n1", "secret": SECRET,
        "peers": [{}], "agents": [{}], "models": [{}], "proxyModels": [{}],
        "access": {"rules": [{}]},
    }));
    let mut schema_items = BTreeSet::new();
    for key in ["peers", "agents", "models", "proxyModels"] {
        for r in sorted_strings(&s["properties"][key]["items"]["required"]) {
            schema_items.insert(format!("{key}[0].{r}"));
        }
    }
    for r in sorted_strings(&s["properties"]["access"]["properties"]["rules"]["items"]["required"])
    {
        schema_items.insert(format!("access.rules[0].{r}"));
    }
    assert_eq!(schema_items, rust_items);
}

#[test]
fn schema_limits_equal_rust_constants() {
    let s = schema();
    let p = &s["properties"];
    assert_eq!(p["secret"]["minLength"], json!(config::SECRET_MIN_CHARS));
    let ranges: &[(&str, u64, u64)] = &[
        (
            "/properties/listenPort",
            config::PORT_MIN.into(),
            config::PORT_MAX.into(),
        ),
        (
            "/properties/proxyPort",
            config::PORT_MIN.into(),
            config::PORT_MAX.into(),
        ),
        (
            "/properties/handoffTimeout",
            config::HANDOFF_TIMEOUT_MIN_MS,
            config::DURATION_MAX_MS,
        ),
        (
            "/properties/handoffMaxMs",
            config::HANDOFF_MAX_MIN_MS,
            config::DURATION_MAX_MS,
        ),
        (
            "/properties/heartbeatIntervalMs",
            config::HEARTBEAT_INTERVAL_MIN_MS,
            config::HEARTBEAT_INTERVAL_MAX_MS,
        ),
        (
            "/properties/heartbeatMisses",
            config::HEARTBEAT_MISSES_MIN.into(),
            config::HEARTBEAT_MISSES_MAX.into(),
        ),
        (
            "/properties/forgetAfterMs",
            config::FORGET_AFTER_MIN_MS,
            config::DURATION_MAX_MS,
        ),
        (
            "/properties/toolProxy/properties/maxOutputBytes",
            config::MAX_OUTPUT_BYTES_MIN as u64,
            config::MAX_OUTPUT_BYTES_MAX as u64,
        ),
        (
            "/properties/models/items/properties/contextWindow",
            config::TOKENS_MIN.into(),
            u32::MAX.into(),
        ),
        (
            "/properties/models/items/properties/maxTokens",
            config::TOKENS_MIN.into(),
            u32::MAX.into(),
        ),
    ];
    for (ptr, min, max) in ranges {
        let field = s.pointer(ptr).unwrap_or_else(|| panic!("{ptr} missing"));
        assert_eq!(field["type"], "integer", "{ptr}");
        assert_eq!(field["minimum"], json!(min), "{ptr} minimum");
        assert_eq!(field["maximum"], json!(max), "{ptr} maximum");
    }
    for ptr in [
        "/properties/nodeId",
        "/properties/peers/items/properties/nodeId",
        "/properties/agents/items/properties/id",
        "/properties/proxyModels/items/properties/nodeId",
    ] {
        assert_eq!(
            s.pointer(ptr).map(|f| &f["pattern"]),
            Some(&json!(config::ID_PATTERN)),
            "{ptr}"
        );
    }
    let rules = &p["access"]["properties"]["rules"];
    assert_eq!(rules["maxItems"], json!(config::ACCESS_RULES_MAX));
    let id_or_wildcard = format!(
        "^(?:\\*|{})$",
        config::ID_PATTERN
            .trim_start_matches('^')
            .trim_end_matches('$')
    );
    for key in ["nodes", "callerAgents", "tools", "models", "agents"] {
        let list = &rules["items"]["properties"][key];
        assert_eq!(
            list["maxItems"],
            json!(config::ACCESS_LIST_MAX),
            "access rule {key}"
        );
        if key != "tools" && key != "models" {
            assert_eq!(
                list["items"]["pattern"],
                json!(id_or_wildcard),
                "access rule {key}"
            );
        }
    }
    assert_eq!(
        rules["items"]["properties"]["name"]["pattern"],
        json!(config::ID_PATTERN)
    );
    let effects = json!(["allow", "deny"]);
    assert_eq!(p["access"]["properties"]["default"]["enum"], effects);
    assert_eq!(rules["items"]["properties"]["effect"]["enum"], effects);
    let apis: Vec<&str> = ModelApi::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        p["models"]["items"]["properties"]["api"]["enum"],
        json!(apis)
    );
    let inputs: Vec<&str> = ModelInput::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        p["models"]["items"]["properties"]["input"]["items"]["enum"],
        json!(inputs)
    );
}

#[test]
fn every_schema_object_forbids_unknown_fields_and_every_field_is_documented() {
    let s = schema();
    let mut objects = Vec::new();
    object_schemas(&s, "config".into(), &mut objects);
    assert!(
        objects.len() >= 8,
        "root, 4 item kinds, cost, toolProxy, tls: {}",
        objects.len()
    );
    for (path, o) in objects {
        if o.get("properties").is_none() && o.get("propertyNames").is_some() {
            // A map (`identity.pins`): its keys have a pattern, its values a typed schema.
            assert!(o["propertyNames"]["pattern"].is_string(), "{path}");
            assert!(o["additionalProperties"]["type"].is_string(), "{path}");
            continue;
        }
        assert_eq!(o["additionalProperties"], json!(false), "{path}");
        for (k, p) in o["properties"].as_object().into_iter().flatten() {
            assert!(p["type"].is_string(), "{path}.{k} has no type");
            assert!(
                p["description"].is_string(),
                "{path}.{k} has no description"
            );
        }
    }
}

#[test]
fn every_schema_default_is_itself_valid_for_rust() {
    // The host applies the schema's defaults before handing us the config: a config made of
    // defaults only (plus the required fields) must be accepted.
    let s = schema();
    let mut input = json!({"nodeId": "n1", "secret": SECRET, "listen": true});
    for (k, p) in s["properties"].as_object().into_iter().flatten() {
        if let (Some(d), Some(obj)) = (p.get("default"), input.as_object_mut()) {
            obj.entry(k.clone()).or_insert_with(|| expand_default(p, d));
        }
    }
    if let Err(e) = Config::from_json(&input) {
        panic!("{e}");
    }
}

// The comparison functions themselves must catch a field added on one side only.

#[test]
fn a_property_added_to_the_schema_only_is_caught() {
    let mut s = schema();
    s["properties"]["toolProxy"]["properties"]["fake"] =
        json!({"type": "boolean", "description": "x", "default": false});
    let m = key_mismatches(&s, &full_emitted(), "config");
    assert_eq!(
        m,
        ["config.toolProxy.fake: in the schema, not emitted by Rust"]
    );

    let mut s = schema();
    s["properties"]["models"]["items"]["properties"]["fake"] = json!({"type": "string"});
    let m = key_mismatches(&s, &full_emitted(), "config");
    assert_eq!(
        m,
        ["config.models[].fake: in the schema, not emitted by Rust"]
    );
}

#[test]
fn a_field_emitted_by_rust_only_is_caught() {
    let mut emitted = full_emitted();
    emitted["newField"] = json!(1);
    emitted["models"][0]["cost"]["extra"] = json!(0);
    let m = key_mismatches(&schema(), &emitted, "config");
    assert_eq!(
        m,
        [
            "config.newField: emitted by Rust, not in the schema",
            "config.models[].cost.extra: emitted by Rust, not in the schema",
        ]
    );
    let mut minimal = Config::from_json(&json!({"nodeId": "n1", "secret": SECRET}))
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .to_json();
    minimal["newField"] = json!(1);
    let m = default_mismatches(&schema(), &minimal, "config");
    assert!(
        m.is_empty(),
        "default_mismatches walks schema keys only: {m:?}"
    );
}

#[test]
fn a_changed_or_missing_default_is_caught() {
    let minimal = Config::from_json(&json!({"nodeId": "n1", "secret": SECRET}))
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .to_json();
    let mut s = schema();
    s["properties"]["toolProxy"]["properties"]["maxOutputBytes"]["default"] = json!(1);
    s["properties"]["listenPort"]["default"] = json!(19999);
    let m = default_mismatches(&s, &minimal, "config");
    assert!(
        m.iter().any(|x| x.starts_with("config.listenPort:")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|x| x.starts_with("config.toolProxy.maxOutputBytes:")),
        "{m:?}"
    );

    let mut s = schema();
    if let Some(p) = s["properties"]["proxyPort"].as_object_mut() {
        p.remove("default");
    }
    let m = default_mismatches(&s, &minimal, "config");
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].contains("schema has no default"), "{m:?}");
}

#[test]
fn a_type_disagreement_is_caught() {
    let mut s = schema();
    s["properties"]["listenPort"]["type"] = json!("string");
    let m = key_mismatches(&s, &full_emitted(), "config");
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("config.listenPort: schema type"), "{m:?}");
}

#[test]
fn identity_schema_limits_equal_rust_constants() {
    use config::identity::{FINGERPRINT_PATTERN, MAX_PINS, MAX_REVOKED};
    let s = schema();
    let p = &s["properties"];
    assert_eq!(
        p["secretPrevious"]["minLength"],
        json!(config::SECRET_MIN_CHARS)
    );
    let pins = &p["identity"]["properties"]["pins"];
    assert_eq!(pins["maxProperties"], json!(MAX_PINS));
    assert_eq!(pins["propertyNames"]["pattern"], json!(config::ID_PATTERN));
    assert_eq!(
        pins["additionalProperties"]["pattern"],
        json!(FINGERPRINT_PATTERN)
    );
    let revoked = &p["identity"]["properties"]["revoked"];
    assert_eq!(revoked["maxItems"], json!(MAX_REVOKED));
    assert_eq!(revoked["items"]["pattern"], json!(FINGERPRINT_PATTERN));
}

//! The JSON reader behind [`Config::from_json`]: walks the value once, applies defaults, and
//! collects every issue with its full path instead of stopping at the first.
//!
//! Each reader returns the field's value, or its default when the field is absent or invalid
//! (having recorded the issue), so one bad field never hides the problems of the others.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Map, Number, Value};

use super::url::{is_valid_hostname, quote};
use super::*;
use crate::error::json_type_name as type_name;

/// The reason recorded for an absent required field.
pub(super) const REASON_REQUIRED: &str = "is required";
/// The warning raised for a node that can neither accept nor open a link.
pub(super) const REASON_ISOLATED: &str =
    "this node neither listens nor dials: it cannot join a mesh";

/// The warning for a secret estimated below `SECRET_MIN_BITS` (never quotes the secret).
pub(super) fn low_entropy_reason(bits: f64) -> String {
    format!(
        "looks low-entropy: about {bits:.0} bits estimated, want at least {min:.0} (short, few \
         kinds of characters, runs, repeats or common words); each connection may try one \
         guess, so use a long random value, e.g. from `openssl rand -base64 24`",
        min = secret_strength::SECRET_MIN_BITS
    )
}

const ROOT_KEYS: &[&str] = &[
    "nodeId",
    "secret",
    "secretPrevious",
    "identity",
    "listen",
    "listenHost",
    "listenPort",
    "peers",
    "agents",
    "models",
    "proxyModels",
    "tags",
    "proxyPort",
    "handoffTimeout",
    "handoffMaxMs",
    "proxyTimeoutMs",
    "heartbeatIntervalMs",
    "heartbeatMisses",
    "forgetAfterMs",
    "hostTimeoutMs",
    "toolProxy",
    "tls",
    "access",
];
const PEER_KEYS: &[&str] = &["nodeId", "url"];
const AGENT_KEYS: &[&str] = &["id", "description", "tags"];
const MODEL_KEYS: &[&str] = &[
    "id",
    "provider",
    "description",
    "api",
    "reasoning",
    "input",
    "cost",
    "contextWindow",
    "maxTokens",
    "upstream",
];
const UPSTREAM_KEYS: &[&str] = &["baseUrl", "api", "model", "apiKeyEnv"];
const COST_KEYS: &[&str] = &["input", "output", "cacheRead", "cacheWrite"];
const PROXY_MODEL_KEYS: &[&str] = &["id", "nodeId", "description"];
const TOOL_PROXY_KEYS: &[&str] = &["enabled", "allow", "deny", "maxOutputBytes", "root"];
const TLS_KEYS: &[&str] = &["certFile", "keyFile", "caFile"];

/// Entry point of [`Config::from_json`].
pub(super) fn parse(v: &Value) -> Result<Validated, ConfigError> {
    let mut r = Reader::default();
    let config = r.root(v);
    match config {
        Some(config) if r.errors.is_empty() => Ok(Validated {
            config,
            warnings: r.warnings,
        }),
        _ => Err(ConfigError { issues: r.errors }),
    }
}

/// `parent.key`, or `key` at the root.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// An integer value of a JSON number: exact for all `u64`/`i64`, and for floats with no
/// fractional part (some bridges turn every JS number into an `f64`); saturating beyond `i128`.
fn integer_of(n: &Number) -> Option<i128> {
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    match n.as_f64() {
        // `as` saturates, never panics; out-of-range values then fail the range check.
        Some(f) if f.is_finite() && f.fract() == 0.0 => Some(f as i128),
        _ => None,
    }
}

/// 1..=64 of `[A-Za-z0-9._-]`, starting with a letter or digit (see [`ID_PATTERN`]).
/// The wire checks the same rule ([`crate::proto::frame::valid_node_id`]), one definition.
pub fn is_valid_id(s: &str) -> bool {
    const _: () = assert!(ID_MAX_CHARS == crate::proto::frame::MAX_NODE_ID_BYTES);
    crate::proto::frame::valid_node_id(s)
}

/// Why a tag is invalid, if it is.
fn tag_problem(tag: &str) -> Option<String> {
    let why = if tag.is_empty() {
        "must not be empty".to_owned()
    } else if tag.chars().count() > TAG_MAX_CHARS {
        format!("longer than {TAG_MAX_CHARS} characters")
    } else if tag.chars().any(char::is_whitespace) {
        "must not contain whitespace".to_owned()
    } else if tag.contains(',') {
        "must not contain a comma".to_owned()
    } else if tag.starts_with(TAG_QUERY_PREFIX) {
        format!("must not start with {TAG_QUERY_PREFIX:?} (that prefix marks a tag query)")
    } else if tag.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return None;
    };
    Some(format!("invalid tag {}: {why}", quote(tag)))
}

/// Why a `toolProxy.allow` / `deny` entry is invalid, if it is.
pub(super) fn tool_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("tool name must not be empty".to_owned());
    }
    if name == "*" {
        return None;
    }
    if name.contains('*') {
        return Some(format!(
            "invalid tool name {}: \"*\" must stand alone (it means every tool)",
            quote(name)
        ));
    }
    if name.len() > TOOL_NAME_MAX_CHARS
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Some(format!(
            "invalid tool name {}: use 1-{TOOL_NAME_MAX_CHARS} characters of A-Z a-z 0-9 _ . -",
            quote(name)
        ));
    }
    None
}

/// Whether a listen host shares its port space with the proxy's loopback bind.
fn is_loopback_or_unspecified(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => false,
    }
}

/// Collects issues while reading.
#[derive(Default)]
struct Reader {
    errors: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
}

impl Reader {
    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigIssue::new(path, reason));
    }

    fn warn(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(ConfigIssue::new(path, reason));
    }

    fn type_error(&mut self, path: impl Into<String>, expected: &str, got: &Value) {
        self.error(path, format!("expected {expected}, got {}", type_name(got)));
    }

    /// The value as an object whose keys are all in `known`; unknown keys are errors.
    fn object<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Value::Object(map) = v else {
            self.type_error(path, "an object", v);
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.error(join(path, &quote_key(key)), "unknown field");
            }
        }
        Some(map)
    }

    /// A string field; `None` if absent (an error when `required`) or not a string.
    fn string(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        match map.get(key) {
            None => {
                if required {
                    self.error(join(path, key), REASON_REQUIRED);
                }
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.type_error(join(path, key), "a string", other);
                None
            }
        }
    }

    /// An id field (node id, agent id) checked against [`ID_PATTERN`].
    fn id(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        what: &str,
        required: bool,
    ) -> Option<String> {
        let s = self.string(map, path, key, required)?;
        if is_valid_id(&s) {
            Some(s)
        } else {
            self.error(
                join(path, key),
                format!(
                    "invalid {what} {}: use 1-{ID_MAX_CHARS} characters of A-Z a-z 0-9 . _ -, \
                     starting with a letter or digit",
                    quote(&s)
                ),
            );
            None
        }
    }

    /// A model id: 1..=256 characters, no whitespace or control characters.
    fn model_id(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        let s = self.string(map, path, "id", true)?;
        let ok = !s.is_empty()
            && s.chars().count() <= MODEL_ID_MAX_CHARS
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Some(s)
        } else {
            self.error(
                join(path, "id"),
                format!(
                    "invalid model id {}: use 1-{MODEL_ID_MAX_CHARS} characters without whitespace",
                    quote(&s)
                ),
            );
            None
        }
    }

    fn bool_or(&mut self, map: &Map<String, Value>, path: &str, key: &str, default: bool) -> bool {
        match map.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.type_error(join(path, key), "a boolean", other);
                default
            }
        }
    }

    /// An integer field within `min..=max`, or `default`.
    fn int_or<T>(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        default: T,
        min: T,
        max: T,
    ) -> T
    where
        T: Copy + Into<u64> + TryFrom<i128> + std::fmt::Display,
    {
        let Some(v) = map.get(key) else {
            return default;
        };
        let p = join(path, key);
        let Value::Number(n) = v else {
            self.type_error(p, "an integer", v);
            return default;
        };
        let Some(i) = integer_of(n) else {
            self.error(p, format!("expected an integer, got {n}"));
            return default;
        };
        let (lo, hi) = (i128::from(min.into()), i128::from(max.into()));
        match T::try_from(i) {
            Ok(t) if (lo..=hi).contains(&i) => t,
            _ => {
                self.error(p, format!("must be between {min} and {max}, got {n}"));
                default
            }
        }
    }

    /// A non-negative finite number, or `0`.
    fn price(&mut self, map: &Map<String, Value>, path: &str, key: &str) -> f64 {
        let Some(v) = map.get(key) else {
            return 0.0;
        };
        match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => f,
            Some(_) => {
                self.error(
                    join(path, key),
                    format!("must be a non-negative number, got {v}"),
                );
                0.0
            }
            None => {
                self.type_error(join(path, key), "a number", v);
                0.0
            }
        }
    }

    /// An array field (empty when absent or invalid) and its path.
    fn array<'a>(&mut self, map: &'a Map<String, Value>, path: &str, key: &str) -> &'a [Value] {
        match map.get(key) {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.type_error(join(path, key), "an array", other);
                &[]
            }
        }
    }

    /// An array of strings; each kept string passed `check` (which returns the problem).
    fn string_list(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        check: fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let list_path = join(path, key);
        let mut out = Vec::new();
        for (i, item) in self.array(map, path, key).iter().enumerate() {
            let p = index(&list_path, i);
            match item {
                Value::String(s) => match check(s) {
                    None => out.push(s.clone()),
                    Some(why) => self.error(p, why),
                },
                other => self.type_error(p, "a string", other),
            }
        }
        out
    }

    fn root(&mut self, v: &Value) -> Option<Config> {
        let map = self.object(v, "", ROOT_KEYS)?;

        let node_id = self.id(map, "", "nodeId", "node id", true);
        let secret = self.secret(map);
        let secret_previous = super::identity::read_secret_previous(
            map,
            secret.as_deref(),
            &mut self.errors,
            &mut self.warnings,
        );
        let identity = super::identity::read_identity(map, &mut self.errors, &mut self.warnings);
        let listen = self.bool_or(map, "", "listen", DEFAULT_LISTEN);
        let listen_host = self.listen_host(map);
        let listen_port = self.int_or(
            map,
            "",
            "listenPort",
            DEFAULT_LISTEN_PORT,
            PORT_MIN,
            PORT_MAX,
        );
        let peers = self.peers(map, node_id.as_deref());
        let agents = self.agents(map);
        let models = self.models(map);
        let proxy_models = self.proxy_models(map, node_id.as_deref());
        let tags = self.string_list(map, "", "tags", tag_problem);
        let proxy_port = self.int_or(map, "", "proxyPort", DEFAULT_PROXY_PORT, PORT_MIN, PORT_MAX);
        let Timing {
            handoff_timeout_ms,
            handoff_max_ms,
            proxy_timeout_ms,
            heartbeat_interval_ms,
            heartbeat_misses,
            forget_after_ms,
            host_timeout_ms,
        } = self.timing(map);
        let tool_proxy = match map.get("toolProxy") {
            None => ToolProxyConfig::default(),
            Some(v) => self.tool_proxy(v),
        };
        let tls = match map.get("tls") {
            None => TlsConfig::default(),
            Some(v) => self.tls(v),
        };
        let access = match map.get("access") {
            None => AccessConfig::default(),
            Some(v) => super::access::parse(v, &mut self.errors),
        };
        self.cross_checks(
            listen,
            &listen_host,
            listen_port,
            proxy_port,
            &tls,
            peers.is_empty(),
        );

        Some(Config {
            node_id: node_id?,
            secret: secret?,
            secret_previous,
            identity,
            listen,
            listen_host,
            listen_port,
            peers,
            agents,
            models,
            proxy_models,
            tags,
            proxy_port,
            handoff_timeout_ms,
            handoff_max_ms,
            proxy_timeout_ms,
            heartbeat_interval_ms,
            heartbeat_misses,
            forget_after_ms,
            host_timeout_ms,
            tool_proxy,
            tls,
            access,
        })
    }

    /// `secret`: required, long enough; a low-entropy one is a warning.
    fn secret(&mut self, map: &Map<String, Value>) -> Option<String> {
        let secret = self.string(map, "", "secret", true);
        if let Some(s) = &secret {
            if s.chars().count() < SECRET_MIN_CHARS {
                self.error(
                    "secret",
                    format!("must be at least {SECRET_MIN_CHARS} characters long"),
                );
            } else {
                let bits = secret_strength::estimated_bits(s);
                if bits < secret_strength::SECRET_MIN_BITS {
                    self.warn("secret", low_entropy_reason(bits));
                }
            }
        }
        secret
    }

    /// The timeouts and heartbeat settings, each within its bounds.
    fn timing(&mut self, map: &Map<String, Value>) -> Timing {
        let handoff_timeout_ms = self.int_or(
            map,
            "",
            "handoffTimeout",
            DEFAULT_HANDOFF_TIMEOUT_MS,
            HANDOFF_TIMEOUT_MIN_MS,
            DURATION_MAX_MS,
        );
        let handoff_max_ms = self.int_or(
            map,
            "",
            "handoffMaxMs",
            DEFAULT_HANDOFF_MAX_MS,
            HANDOFF_MAX_MIN_MS,
            DURATION_MAX_MS,
        );
        let proxy_timeout_ms = self.int_or(
            map,
            "",
            "proxyTimeoutMs",
            DEFAULT_PROXY_TIMEOUT_MS,
            PROXY_TIMEOUT_MIN_MS,
            DURATION_MAX_MS,
        );
        let heartbeat_interval_ms = self.int_or(
            map,
            "",
            "heartbeatIntervalMs",
            DEFAULT_HEARTBEAT_INTERVAL_MS,
            HEARTBEAT_INTERVAL_MIN_MS,
            HEARTBEAT_INTERVAL_MAX_MS,
        );
        let heartbeat_misses = self.int_or(
            map,
            "",
            "heartbeatMisses",
            DEFAULT_HEARTBEAT_MISSES,
            HEARTBEAT_MISSES_MIN,
            HEARTBEAT_MISSES_MAX,
        );
        let forget_after_ms = self.int_or(
            map,
            "",
            "forgetAfterMs",
            DEFAULT_FORGET_AFTER_MS,
            FORGET_AFTER_MIN_MS,
            DURATION_MAX_MS,
        );
        let host_timeout_ms = self.int_or(
            map,
            "",
            "hostTimeoutMs",
            DEFAULT_HOST_TIMEOUT_MS,
            HOST_TIMEOUT_MIN_MS,
            DURATION_MAX_MS,
        );
        Timing {
            handoff_timeout_ms,
            handoff_max_ms,
            proxy_timeout_ms,
            heartbeat_interval_ms,
            heartbeat_misses,
            forget_after_ms,
            host_timeout_ms,
        }
    }

    /// Rules across fields: TLS files on a node that does not listen, the proxy port against
    /// the listen port, a node with no way to reach anyone.
    fn cross_checks(
        &mut self,
        listen: bool,
        listen_host: &str,
        listen_port: u16,
        proxy_port: u16,
        tls: &TlsConfig,
        no_peers: bool,
    ) {
        if !listen && (tls.cert_file.is_some() || tls.key_file.is_some()) {
            self.warn(
                "tls.certFile",
                "ignored: this node does not listen (listen is false)",
            );
        }

        if listen && listen_port == proxy_port && is_loopback_or_unspecified(listen_host) {
            self.error(
                "proxyPort",
                format!(
                    "must differ from listenPort ({listen_port}) while listening on {}",
                    quote(listen_host)
                ),
            );
        }
        if !listen && no_peers {
            self.warn("listen", REASON_ISOLATED);
        }
    }

    fn listen_host(&mut self, map: &Map<String, Value>) -> String {
        let Some(host) = self.string(map, "", "listenHost", false) else {
            return DEFAULT_LISTEN_HOST.to_owned();
        };
        if host.is_empty() {
            self.error("listenHost", "must not be empty");
        } else if host.parse::<IpAddr>().is_err() && !is_valid_hostname(&host) {
            self.error(
                "listenHost",
                format!(
                    "invalid host {}: expected an IP address or a hostname",
                    quote(&host)
                ),
            );
        }
        host
    }

    fn peers(&mut self, map: &Map<String, Value>, own_id: Option<&str>) -> Vec<PeerConfig> {
        let mut out = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let mut by_url: HashMap<(bool, String, u16, String), usize> = HashMap::new();
        for (i, item) in self.array(map, "", "peers").iter().enumerate() {
            let path = index("peers", i);
            let Some(obj) = self.object(item, &path, PEER_KEYS) else {
                continue;
            };
            let node_id = self.id(obj, &path, "nodeId", "node id", true);
            let url = self.string(obj, &path, "url", true);
            let parsed = url.as_deref().and_then(|u| match PeerUrl::parse(u) {
                Ok(p) => Some(p),
                Err(why) => {
                    self.error(join(&path, "url"), why);
                    None
                }
            });
            if let Some(id) = &node_id {
                if Some(id.as_str()) == own_id {
                    self.error(join(&path, "nodeId"), "is this node's own nodeId");
                } else if let Some(first) = by_id.get(id) {
                    self.error(
                        join(&path, "nodeId"),
                        format!("duplicate peer nodeId {} (also peers[{first}])", quote(id)),
                    );
                } else {
                    by_id.insert(id.clone(), i);
                }
            }
            if let Some(p) = &parsed {
                let key = (p.tls, p.host.to_ascii_lowercase(), p.port, p.path.clone());
                if let Some(first) = by_url.get(&key) {
                    self.error(
                        join(&path, "url"),
                        format!("duplicate peer url (same as peers[{first}])"),
                    );
                } else {
                    by_url.insert(key, i);
                }
            }
            if let (Some(node_id), Some(url), Some(parsed)) = (node_id, url, parsed) {
                out.push(PeerConfig {
                    node_id,
                    url,
                    parsed,
                });
            }
        }
        out
    }

    fn agents(&mut self, map: &Map<String, Value>) -> Vec<AgentConfig> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.array(map, "", "agents").iter().enumerate() {
            let path = index("agents", i);
            let Some(obj) = self.object(item, &path, AGENT_KEYS) else {
                continue;
            };
            let id = self.id(obj, &path, "id", "agent id", true);
            let description = self
                .string(obj, &path, "description", false)
                .unwrap_or_default();
            let tags = self.string_list(obj, &path, "tags", tag_problem);
            let Some(id) = id else { continue };
            if let Some(first) = seen.get(&id) {
                self.error(
                    join(&path, "id"),
                    format!("duplicate agent id {} (also agents[{first}])", quote(&id)),
                );
                continue;
            }
            seen.insert(id.clone(), i);
            out.push(AgentConfig {
                id,
                description,
                tags,
            });
        }
        out
    }

    fn models(&mut self, map: &Map<String, Value>) -> Vec<ModelConfig> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.array(map, "", "models").iter().enumerate() {
            let path = index("models", i);
            let Some(obj) = self.object(item, &path, MODEL_KEYS) else {
                continue;
            };
            let id = self.model_id(obj, &path);
            let provider = self.string(obj, &path, "provider", true);
            if let Some(p) = &provider {
                if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    self.error(
                        join(&path, "provider"),
                        format!(
                            "invalid provider {}: must be non-empty without whitespace",
                            quote(p)
                        ),
                    );
                }
            }
            let description = self.string(obj, &path, "description", false);
            let api = match self.string(obj, &path, "api", false) {
                None => ModelApi::OpenAiCompletions,
                Some(s) => ModelApi::parse(&s).unwrap_or_else(|| {
                    self.error(
                        join(&path, "api"),
                        format!(
                            "expected one of \"openai-completions\", \"openai-responses\", \
                             \"anthropic-messages\", got {}",
                            quote(&s)
                        ),
                    );
                    ModelApi::OpenAiCompletions
                }),
            };
            let reasoning = self.bool_or(obj, &path, "reasoning", false);
            let input = self.model_input(obj, &path);
            let cost = match obj.get("cost") {
                None => ModelCost::default(),
                Some(v) => self.cost(v, &join(&path, "cost")),
            };
            let context_window = self.int_or(
                obj,
                &path,
                "contextWindow",
                DEFAULT_CONTEXT_WINDOW_TOKENS,
                TOKENS_MIN,
                u32::MAX,
            );
            let max_tokens = self.int_or(
                obj,
                &path,
                "maxTokens",
                DEFAULT_MAX_TOKENS,
                TOKENS_MIN,
                u32::MAX,
            );
            let upstream = obj
                .get("upstream")
                .and_then(|u| self.upstream(u, &join(&path, "upstream")));
            let (Some(id), Some(provider)) = (id, provider) else {
                continue;
            };
            if let Some(first) = seen.get(&id) {
                self.error(
                    join(&path, "id"),
                    format!("duplicate model id {} (also models[{first}])", quote(&id)),
                );
                continue;
            }
            seen.insert(id.clone(), i);
            out.push(ModelConfig {
                id,
                provider,
                description,
                api,
                reasoning,
                input,
                cost,
                context_window,
                max_tokens,
                upstream,
            });
        }
        out
    }

    fn upstream(&mut self, v: &Value, path: &str) -> Option<ModelUpstream> {
        let obj = self.object(v, path, UPSTREAM_KEYS)?;
        let base_url = self.string(obj, path, "baseUrl", true);
        if let Some(u) = &base_url {
            if let Err(reason) = super::url::UpstreamUrl::parse(u) {
                self.error(join(path, "baseUrl"), reason);
            }
        }
        let api = self.string(obj, path, "api", false).and_then(|s| {
            let parsed = ModelApi::parse(&s);
            if parsed.is_none() {
                self.error(
                    join(path, "api"),
                    format!(
                        "expected one of \"openai-completions\", \"openai-responses\", \
                         \"anthropic-messages\", got {}",
                        quote(&s)
                    ),
                );
            }
            parsed
        });
        let model = self.string(obj, path, "model", false);
        if let Some(m) = &model {
            if m.is_empty() || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    join(path, "model"),
                    format!(
                        "invalid model id {}: must be non-empty without whitespace",
                        quote(m)
                    ),
                );
            }
        }
        let api_key_env = self.string(obj, path, "apiKeyEnv", false);
        if let Some(e) = &api_key_env {
            let ok = !e.is_empty()
                && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !e.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                self.error(
                    join(path, "apiKeyEnv"),
                    format!(
                        "invalid environment variable name {}: letters, digits and _, not starting with a digit",
                        quote(e)
                    ),
                );
            }
        }
        Some(ModelUpstream {
            base_url: base_url?,
            api,
            model,
            api_key_env,
        })
    }

    fn model_input(&mut self, obj: &Map<String, Value>, path: &str) -> Vec<ModelInput> {
        if !obj.contains_key("input") {
            return vec![ModelInput::Text];
        }
        let list_path = join(path, "input");
        let items = self.array(obj, path, "input");
        if items.is_empty() && obj.get("input").is_some_and(Value::is_array) {
            self.error(list_path.clone(), "must list at least one input");
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = index(&list_path, i);
            match item {
                Value::String(s) => match ModelInput::parse(s) {
                    Some(m) if !out.contains(&m) => out.push(m),
                    Some(_) => self.error(p, format!("duplicate input {}", quote(s))),
                    None => self.error(
                        p,
                        format!("expected \"text\" or \"image\", got {}", quote(s)),
                    ),
                },
                other => self.type_error(p, "a string", other),
            }
        }
        if out.is_empty() {
            out.push(ModelInput::Text);
        }
        out
    }

    fn cost(&mut self, v: &Value, path: &str) -> ModelCost {
        let Some(obj) = self.object(v, path, COST_KEYS) else {
            return ModelCost::default();
        };
        ModelCost {
            input: self.price(obj, path, "input"),
            output: self.price(obj, path, "output"),
            cache_read: self.price(obj, path, "cacheRead"),
            cache_write: self.price(obj, path, "cacheWrite"),
        }
    }

    fn proxy_models(
        &mut self,
        map: &Map<String, Value>,
        own_id: Option<&str>,
    ) -> Vec<ProxyModelConfig> {
        let mut out = Vec::new();
        let mut seen: HashMap<(String, Option<String>), usize> = HashMap::new();
        for (i, item) in self.array(map, "", "proxyModels").iter().enumerate() {
            let path = index("proxyModels", i);
            let Some(obj) = self.object(item, &path, PROXY_MODEL_KEYS) else {
                continue;
            };
            let id = self.model_id(obj, &path);
            let node_id = self.id(obj, &path, "nodeId", "node id", false);
            if node_id.is_some() && node_id.as_deref() == own_id {
                self.error(
                    join(&path, "nodeId"),
                    "is this node's own nodeId: list local models under models, not proxyModels",
                );
            }
            let description = self.string(obj, &path, "description", false);
            let Some(id) = id else { continue };
            let key = (id.clone(), node_id.clone());
            if let Some(first) = seen.get(&key) {
                self.error(
                    join(&path, "id"),
                    format!(
                        "duplicate proxy model {} (also proxyModels[{first}])",
                        quote(&id)
                    ),
                );
                continue;
            }
            seen.insert(key, i);
            out.push(ProxyModelConfig {
                id,
                node_id,
                description,
            });
        }
        out
    }

    fn tool_proxy(&mut self, v: &Value) -> ToolProxyConfig {
        let path = "toolProxy";
        let Some(obj) = self.object(v, path, TOOL_PROXY_KEYS) else {
            return ToolProxyConfig::default();
        };
        ToolProxyConfig {
            enabled: self.bool_or(obj, path, "enabled", false),
            allow: self.string_list(obj, path, "allow", tool_name_problem),
            deny: self.string_list(obj, path, "deny", tool_name_problem),
            max_output_bytes: self.max_output_bytes(obj, path),
            root: self.tool_root(obj, path),
        }
    }

    /// `toolProxy.root`: an absolute path (no `~` expansion: the gateway may run as another
    /// user), without NUL, at most [`TOOL_ROOT_MAX_BYTES`]. Existence is checked per call.
    fn tool_root(&mut self, obj: &Map<String, Value>, path: &str) -> Option<String> {
        let root = self.string(obj, path, "root", false)?;
        let field = join(path, "root");
        let why = if root.is_empty() {
            "must not be empty (omit it to use the agent workspace)"
        } else if root.len() > TOOL_ROOT_MAX_BYTES {
            "is too long"
        } else if root.contains('\0') {
            "must not contain NUL"
        } else if !std::path::Path::new(&root).is_absolute() {
            "must be an absolute path (\"~\" is not expanded)"
        } else {
            return Some(root);
        };
        self.error(field, why);
        None
    }

    fn tls(&mut self, v: &Value) -> TlsConfig {
        let path = "tls";
        let Some(obj) = self.object(v, path, TLS_KEYS) else {
            return TlsConfig::default();
        };
        let mut file = |key: &str| {
            let s = self.string(obj, path, key, false)?;
            if s.is_empty() || s.chars().any(char::is_control) {
                self.error(
                    join(path, key),
                    "must be a non-empty file path without control characters",
                );
                return None;
            }
            Some(s)
        };
        let cert_file = file("certFile");
        let key_file = file("keyFile");
        let ca_file = file("caFile");
        match (
            &cert_file,
            &key_file,
            obj.get("certFile"),
            obj.get("keyFile"),
        ) {
            (Some(_), None, _, None) => self.error(
                "tls.keyFile",
                "is required when tls.certFile is set (set both or neither)",
            ),
            (None, Some(_), None, _) => self.error(
                "tls.certFile",
                "is required when tls.keyFile is set (set both or neither)",
            ),
            _ => {}
        }
        TlsConfig {
            cert_file,
            key_file,
            ca_file,
        }
    }

    fn max_output_bytes(&mut self, obj: &Map<String, Value>, path: &str) -> usize {
        let to_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let n = self.int_or(
            obj,
            path,
            "maxOutputBytes",
            to_u64(DEFAULT_MAX_OUTPUT_BYTES),
            to_u64(MAX_OUTPUT_BYTES_MIN),
            to_u64(MAX_OUTPUT_BYTES_MAX),
        );
        usize::try_from(n).unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
    }
}

/// An unknown key as it appears in a path: plain if it looks like an identifier, else quoted.
pub(super) fn quote_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().count() <= ID_MAX_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        key.to_owned()
    } else {
        quote(key)
    }
}
/// The timing fields of the root object, read together.
struct Timing {
    handoff_timeout_ms: u64,
    handoff_max_ms: u64,
    proxy_timeout_ms: u64,
    heartbeat_interval_ms: u64,
    heartbeat_misses: u32,
    forget_after_ms: u64,
    host_timeout_ms: u64,
}

//! The plugin configuration (`plugins.entries.clawmatrix.config`).
//!
//! This module owns the typed [`Config`], every documented default (spec §1 plus the limits added
//! since 0.1.8), and validation. The host hands us the JSON it validated against the manifest's
//! `configSchema` (with the schema's defaults applied); we validate again here because the
//! binding and the tests call us directly, and because some rules (duplicates, URL syntax,
//! cross-field checks) cannot be written in JSON Schema.
//!
//! Validation never stops at the first problem: [`Config::from_json`] collects every issue, each
//! naming the full field path (`peers[1].url`) and the reason, and never panics, whatever the
//! input. The manifest schema and this module are kept in step by `tests/config_schema_sync.rs`.
//!
//! # Layout
//! - `mod.rs`: the types, the defaults and limits (constants), serialization back to JSON.
//! - `parse`: the JSON reader that collects issues.
//! - [`identity`]: the `identity` section and `secretPrevious` (node keys, pins, revocation,
//!   secret rotation).
//! - `url`: the small `ws://` / `wss://` URL parser behind [`PeerUrl`].
//! - `access`: the `access` section ([`AccessConfig`]), read and validated.
//! - [`secret_strength`]: the entropy estimate behind the low-entropy secret warning.

mod access;
pub mod identity;
mod parse;
pub mod secret_strength;
mod url;

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{json, Value};

pub use access::{
    AccessConfig, AccessEffect, AccessRule, ACCESS_DEFAULT_LABEL, ACCESS_LIST_MAX,
    ACCESS_RULES_MAX, ACCESS_WILDCARD,
};
pub use identity::{check_own_pin, IdentityConfig};
pub use parse::is_valid_id;
pub use url::{PeerUrl, UpstreamUrl};

/// Minimum length of the mesh secret, in characters (Unicode scalar values): shorter secrets
/// are guessable; 0.1.8 documented the same minimum. Length alone is not strength: the config
/// check also warns below [`secret_strength::SECRET_MIN_BITS`] estimated bits.
pub const SECRET_MIN_CHARS: usize = 16;
/// Maximum length of node ids and agent ids, in characters.
pub const ID_MAX_CHARS: usize = 64;
/// The JSON Schema `pattern` for node ids and agent ids: 1..=64 of `[A-Za-z0-9._-]`, starting
/// with a letter or digit. Kept identical to the manifest by `tests/config_schema_sync.rs`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// Maximum length of a model id, in characters.
pub const MODEL_ID_MAX_CHARS: usize = 256;
/// Maximum length of a tag, in characters.
pub const TAG_MAX_CHARS: usize = 64;
/// Maximum length of a tool name in `toolProxy.allow` / `toolProxy.deny`, in characters.
pub const TOOL_NAME_MAX_CHARS: usize = 128;
/// Prefix that marks a tag query in tool targets (`"tags:coding"`), hence forbidden in tags.
pub const TAG_QUERY_PREFIX: &str = "tags:";

/// Lowest valid TCP port.
pub const PORT_MIN: u16 = 1;
/// Highest valid TCP port.
pub const PORT_MAX: u16 = 65535;

/// Default `listen`: nodes dial out unless told to accept peers (home and office nodes).
pub const DEFAULT_LISTEN: bool = false;
/// Default `listenHost`: every interface, as in 0.1.8.
pub const DEFAULT_LISTEN_HOST: &str = "0.0.0.0";
/// Default `listenPort` (TCP), as in 0.1.8.
pub const DEFAULT_LISTEN_PORT: u16 = 19000;
/// Default `proxyPort` (TCP, bound on loopback), as in 0.1.8.
pub const DEFAULT_PROXY_PORT: u16 = 19001;

/// Upper bound of every millisecond duration except the heartbeat interval: 7 days. Longer
/// values are mistakes, and the cap keeps `Instant + Duration` far from overflowing.
pub const DURATION_MAX_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Default `handoffTimeout`, in ms: 10 minutes of inactivity, as in 0.1.8.
pub const DEFAULT_HANDOFF_TIMEOUT_MS: u64 = 600_000;
/// Minimum `handoffTimeout`, in ms: below a second every handoff would time out.
pub const HANDOFF_TIMEOUT_MIN_MS: u64 = 1_000;
/// Default `handoffMaxMs`, in ms: a handoff ends after one hour even if it keeps streaming.
pub const DEFAULT_HANDOFF_MAX_MS: u64 = 3_600_000;
/// Minimum `handoffMaxMs`, in ms.
pub const HANDOFF_MAX_MIN_MS: u64 = 1_000;
/// Default `proxyTimeoutMs`, in ms: one model request through the proxy may take 10 minutes
/// in all (long generations stream for minutes), from the request to the last byte.
pub const DEFAULT_PROXY_TIMEOUT_MS: u64 = 600_000;
/// Minimum `proxyTimeoutMs`, in ms.
pub const PROXY_TIMEOUT_MIN_MS: u64 = 1_000;
/// Default `heartbeatIntervalMs`, in ms: 1.25 s (0.1.8: 15 s). With 0.1.8's 3 misses a silent
/// peer is dead after 3.75 s of silence, inside the 5 s detection bound, while a ping per link
/// every 1.25 s costs under 100 bytes/s each way. A lossy path's late frames (hundreds of ms)
/// stay far from it. A 0.1.8 config that sets 15000 keeps its 45 s.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1_250;
/// Minimum `heartbeatIntervalMs`, in ms: faster pings only add load.
pub const HEARTBEAT_INTERVAL_MIN_MS: u64 = 100;
/// Maximum `heartbeatIntervalMs`, in ms: 10 minutes; NATs drop idle flows long before that.
pub const HEARTBEAT_INTERVAL_MAX_MS: u64 = 600_000;
/// Default `heartbeatMisses`: a link is dead after 3 intervals of silence, as in 0.1.8.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 3;
/// Minimum `heartbeatMisses`.
pub const HEARTBEAT_MISSES_MIN: u32 = 1;
/// Maximum `heartbeatMisses`.
pub const HEARTBEAT_MISSES_MAX: u32 = 100;
/// Default `forgetAfterMs`, in ms: an unreachable node is forgotten after 10 minutes.
pub const DEFAULT_FORGET_AFTER_MS: u64 = 600_000;
/// Minimum `forgetAfterMs`, in ms.
pub const FORGET_AFTER_MIN_MS: u64 = 1_000;
/// Default `hostTimeoutMs`, in ms: 30 s for OpenClaw to answer a host request that serves no
/// mesh call (write the providers, confirm an abort); a gateway under load has had its event
/// loop blocked for more than 10 s.
pub const DEFAULT_HOST_TIMEOUT_MS: u64 = 30_000;
/// Minimum `hostTimeoutMs`, in ms.
pub const HOST_TIMEOUT_MIN_MS: u64 = 1_000;

/// Default `toolProxy.maxOutputBytes`: 1 MiB, as in 0.1.8.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1_048_576;
/// Minimum `toolProxy.maxOutputBytes`: 1 KiB, enough for an error message.
pub const MAX_OUTPUT_BYTES_MIN: usize = 1024;
/// Maximum length of `toolProxy.root`, in bytes (Linux `PATH_MAX`).
pub const TOOL_ROOT_MAX_BYTES: usize = 4096;
/// Maximum `toolProxy.maxOutputBytes`: 64 MiB; a bigger response belongs in a file, not a frame.
pub const MAX_OUTPUT_BYTES_MAX: usize = 67_108_864;

/// Default model `contextWindow`, in tokens (OpenClaw's default for unknown models).
pub const DEFAULT_CONTEXT_WINDOW_TOKENS: u32 = 128_000;
/// Default model `maxTokens`, in tokens.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Minimum model `contextWindow` / `maxTokens`, in tokens.
pub const TOKENS_MIN: u32 = 1;

/// The validated plugin configuration. Build it with [`Config::from_json`].
///
/// `Debug` prints the secret as `***`.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// This node's unique name in the mesh (`cloud-01`). Required.
    pub node_id: String,
    /// The mesh-wide shared secret (the handshake's SPAKE2 password), at least
    /// [`SECRET_MIN_CHARS`]. Required.
    pub secret: String,
    /// The previous mesh secret during a rotation (JSON `secretPrevious`): a listener accepts
    /// it besides `secret`; dialers try `secret` first. Same rules as `secret`, never equal.
    pub secret_previous: Option<String>,
    /// Node identity settings (JSON `identity`): key file, pinned keys, revoked keys.
    pub identity: IdentityConfig,
    /// Accept inbound WebSocket peers.
    pub listen: bool,
    /// Address the mesh listener binds (an IP literal or a hostname).
    pub listen_host: String,
    /// TCP port the mesh listener binds.
    pub listen_port: u16,
    /// Outbound peers this node dials.
    pub peers: Vec<PeerConfig>,
    /// Agents this node offers to the mesh.
    pub agents: Vec<AgentConfig>,
    /// Models this node serves to the mesh (configured and working locally).
    pub models: Vec<ModelConfig>,
    /// Remote models this node consumes through its local proxy.
    pub proxy_models: Vec<ProxyModelConfig>,
    /// Free tags for capability routing.
    pub tags: Vec<String>,
    /// TCP port of the local OpenAI-compatible model proxy (bound on loopback).
    pub proxy_port: u16,
    /// Handoff inactivity timeout in ms (JSON `handoffTimeout`), reset by every stream chunk.
    pub handoff_timeout_ms: u64,
    /// Hard cap on one handoff's total duration in ms (JSON `handoffMaxMs`).
    pub handoff_max_ms: u64,
    /// Overall deadline of one model request through the proxy, in ms (JSON `proxyTimeoutMs`),
    /// retries on other nodes included.
    pub proxy_timeout_ms: u64,
    /// Interval between heartbeats on a link, in ms (JSON `heartbeatIntervalMs`).
    pub heartbeat_interval_ms: u64,
    /// Heartbeat intervals of silence after which a link is declared down (JSON
    /// `heartbeatMisses`).
    pub heartbeat_misses: u32,
    /// Time after which an unreachable node is forgotten, in ms (JSON `forgetAfterMs`).
    pub forget_after_ms: u64,
    /// How long OpenClaw may take to answer a host request that serves no mesh call (the
    /// provider sync, the abort of a run the caller gave up on), in ms (JSON `hostTimeoutMs`).
    /// Host requests that serve a call wait as long as that call's own timeout allows
    /// (see [`crate::host`]).
    pub host_timeout_ms: u64,
    /// Policy for tool calls that remote nodes make on this node.
    pub tool_proxy: ToolProxyConfig,
    /// TLS for mesh links (JSON `tls`): a server certificate for the listener (`wss://`), and
    /// the CA bundle `wss://` peers are verified against. Default: none of it.
    pub tls: TlsConfig,
    /// Per-caller rules on what this node serves (JSON `access`); default: everyone may use
    /// everything, as in 0.1.8.
    pub access: AccessConfig,
}

/// TLS settings (`tls`). Paths are checked for existence and parsed when the node starts, not
/// here, so a config can be validated on another machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM certificate chain the listener serves (`tls.certFile`); set together with `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file` (`tls.keyFile`).
    pub key_file: Option<String>,
    /// PEM CA bundle: when set, `wss://` peers must present a chain to exactly these CAs
    /// (pinned); when unset, the system roots are used (`tls.caFile`).
    pub ca_file: Option<String>,
}

/// One outbound peer (`peers[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node id, checked against the id it proves during the handshake.
    pub node_id: String,
    /// The URL as written in the config (what [`Config::to_json`] emits).
    pub url: String,
    /// The URL parsed once at validation.
    pub parsed: PeerUrl,
}

/// One agent this node offers (`agents[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The agent id (`coder`), unique on this node; same syntax as node ids.
    pub id: String,
    /// What the agent is good at, shown to remote callers. Default empty.
    pub description: String,
    /// Tags for capability routing (`tags:coding`). Default empty.
    pub tags: Vec<String>,
}

/// The API dialect of a served model (OpenClaw model metadata `api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelApi {
    /// `openai-completions` (the default).
    OpenAiCompletions,
    /// `openai-responses`.
    OpenAiResponses,
    /// `anthropic-messages`.
    AnthropicMessages,
}

impl ModelApi {
    /// Every value, in schema `enum` order.
    pub const ALL: [ModelApi; 3] = [
        ModelApi::OpenAiCompletions,
        ModelApi::OpenAiResponses,
        ModelApi::AnthropicMessages,
    ];

    /// The JSON spelling (`openai-completions`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelApi::OpenAiCompletions => "openai-completions",
            ModelApi::OpenAiResponses => "openai-responses",
            ModelApi::AnthropicMessages => "anthropic-messages",
        }
    }

    /// Parses the JSON spelling.
    pub fn parse(s: &str) -> Option<ModelApi> {
        ModelApi::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An input modality a model accepts (OpenClaw model metadata `input[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelInput {
    /// `text`.
    Text,
    /// `image`.
    Image,
}

impl ModelInput {
    /// Every value, in schema `enum` order.
    pub const ALL: [ModelInput; 2] = [ModelInput::Text, ModelInput::Image];

    /// The JSON spelling (`text`, `image`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelInput::Text => "text",
            ModelInput::Image => "image",
        }
    }

    /// Parses the JSON spelling.
    pub fn parse(s: &str) -> Option<ModelInput> {
        ModelInput::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Model prices as OpenClaw's catalog carries them (USD per million tokens); all 0 by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelCost {
    /// Price of input tokens.
    pub input: f64,
    /// Price of output tokens.
    pub output: f64,
    /// Price of cache-read tokens (JSON `cacheRead`).
    pub cache_read: f64,
    /// Price of cache-write tokens (JSON `cacheWrite`).
    pub cache_write: f64,
}

/// One model this node serves (`models[]`), with its OpenClaw metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model id as the local provider knows it (`claude-sonnet`). Unique on this node.
    pub id: String,
    /// The local OpenClaw provider serving it (`anthropic`, `ollama`). Required.
    pub provider: String,
    /// Optional human description, given to the model as a `[Model: …]` system line.
    pub description: Option<String>,
    /// API dialect. Default `openai-completions`.
    pub api: ModelApi,
    /// Whether the model reasons. Default `false`.
    pub reasoning: bool,
    /// Accepted inputs. Default `["text"]`.
    pub input: Vec<ModelInput>,
    /// Prices. Default all 0.
    pub cost: ModelCost,
    /// Context window in tokens. Default [`DEFAULT_CONTEXT_WINDOW_TOKENS`].
    pub context_window: u32,
    /// Output token cap. Default [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: u32,
    /// Where to send requests for this model when OpenClaw's config cannot say (JSON
    /// `upstream`); `None` = resolve the provider's base URL and key through OpenClaw.
    pub upstream: Option<ModelUpstream>,
}

/// A per-model upstream override (`models[].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUpstream {
    /// Base URL of the upstream API, `http://` or `https://` (`https://api.example.com/v1`).
    pub base_url: String,
    /// The upstream's API dialect; default: the model's `api`.
    pub api: Option<ModelApi>,
    /// The model id the upstream expects; default: the model's `id`.
    pub model: Option<String>,
    /// Name of an environment variable of the gateway holding the API key; default: the key
    /// OpenClaw resolves for `provider` (none when it has none).
    pub api_key_env: Option<String>,
}

impl ModelUpstream {
    fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("baseUrl".to_owned(), Value::from(self.base_url.as_str()));
        if let Some(a) = self.api {
            obj.insert("api".to_owned(), Value::from(a.as_str()));
        }
        if let Some(m) = &self.model {
            obj.insert("model".to_owned(), Value::from(m.as_str()));
        }
        if let Some(e) = &self.api_key_env {
            obj.insert("apiKeyEnv".to_owned(), Value::from(e.as_str()));
        }
        Value::Object(obj)
    }
}

/// One remote model this node consumes (`proxyModels[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyModelConfig {
    /// The model id as declared by the serving node.
    pub id: String,
    /// Pins the serving node; `None` = discovered through the mesh.
    pub node_id: Option<String>,
    /// Optional human description, given to the model as a `[Model: …]` system line.
    pub description: Option<String>,
}

/// Policy for tool calls from remote nodes (`toolProxy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolProxyConfig {
    /// Accept remote tool calls at all. Default `false`.
    pub enabled: bool,
    /// Allowed tool names; empty or `["*"]` allows all.
    pub allow: Vec<String>,
    /// Denied tool names; deny wins over allow.
    pub deny: Vec<String>,
    /// Cap on one tool response, in bytes.
    pub max_output_bytes: usize,
    /// Filesystem root for remote `read` / `write` / `edit` and exec workdirs (JSON
    /// `toolProxy.root`, an absolute path). `None` = the OpenClaw agent workspace the shim passes
    /// at start; see [`crate::tools::paths`] for the rules.
    pub root: Option<String>,
}

impl Default for ToolProxyConfig {
    fn default() -> Self {
        ToolProxyConfig {
            enabled: false,
            allow: Vec::new(),
            deny: Vec::new(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            root: None,
        }
    }
}

/// One configuration problem: the field path (`peers[1].url`, empty for the root) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Full path of the field, e.g. `toolProxy.allow[2]`; empty for the document itself.
    pub path: String,
    /// Why the value is rejected or suspicious. Never contains the secret.
    pub reason: String,
}

impl ConfigIssue {
    /// Builds an issue.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// An invalid configuration: every issue found, in document order.
///
/// Displays as `path: reason` lines joined with `"; "`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_issues(.issues))]
pub struct ConfigError {
    /// All errors found (never empty).
    pub issues: Vec<ConfigIssue>,
}

impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> Self {
        crate::error::Error::new(crate::error::ErrorCode::ConfigInvalid, e.to_string())
    }
}

fn join_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A configuration that passed validation, with the warnings it raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The typed configuration.
    pub config: Config,
    /// Suspicious but accepted settings, to be logged.
    pub warnings: Vec<ConfigIssue>,
}

impl Config {
    /// Parses and validates the plugin config JSON (camelCase keys, spec §1), applying every
    /// default. Collects all issues; never panics.
    pub fn from_json(v: &Value) -> Result<Validated, ConfigError> {
        parse::parse(v)
    }

    /// Like [`Config::from_json`], from JSON text.
    pub fn from_json_str(s: &str) -> Result<Validated, ConfigError> {
        match serde_json::from_str::<Value>(s) {
            Ok(v) => Config::from_json(&v),
            Err(e) => Err(ConfigError {
                issues: vec![ConfigIssue::new("", format!("invalid JSON: {e}"))],
            }),
        }
    }

    /// The configuration as plugin config JSON (camelCase, every field including defaults and
    /// the secret). `from_json(&c.to_json())` gives `c` back.
    pub fn to_json(&self) -> Value {
        let mut v = self.base_json();
        // Optional sections are emitted only when set, so a 0.1.8 config comes back unchanged.
        if let Some(obj) = v.as_object_mut() {
            if let Some(p) = &self.secret_previous {
                obj.insert("secretPrevious".to_owned(), Value::from(p.as_str()));
            }
            if !self.identity.is_default() {
                obj.insert("identity".to_owned(), self.identity.to_json());
            }
        }
        v
    }

    /// [`Config::to_json`] without the optional sections.
    fn base_json(&self) -> Value {
        json!({
            "nodeId": self.node_id,
            "secret": self.secret,
            "listen": self.listen,
            "listenHost": self.listen_host,
            "listenPort": self.listen_port,
            "peers": self.peers.iter().map(PeerConfig::to_json).collect::<Vec<_>>(),
            "agents": self.agents.iter().map(AgentConfig::to_json).collect::<Vec<_>>(),
            "models": self.models.iter().map(ModelConfig::to_json).collect::<Vec<_>>(),
            "proxyModels": self.proxy_models.iter().map(ProxyModelConfig::to_json).collect::<Vec<_>>(),
            "tags": self.tags,
            "proxyPort": self.proxy_port,
            "handoffTimeout": self.handoff_timeout_ms,
            "handoffMaxMs": self.handoff_max_ms,
            "proxyTimeoutMs": self.proxy_timeout_ms,
            "heartbeatIntervalMs": self.heartbeat_interval_ms,
            "heartbeatMisses": self.heartbeat_misses,
            "forgetAfterMs": self.forget_after_ms,
            "hostTimeoutMs": self.host_timeout_ms,
            "toolProxy": self.tool_proxy.to_json(),
            "tls": self.tls.to_json(),
            "access": self.access.to_json(),
        })
    }

    /// [`Config::to_json`] with the secret replaced by `"***"`, safe to log or show.
    pub fn redacted_json(&self) -> Value {
        let mut v = self.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("secret".to_owned(), Value::from("***"));
            if obj.contains_key("secretPrevious") {
                obj.insert("secretPrevious".to_owned(), Value::from("***"));
            }
        }
        v
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("secret", &"***")
            .field(
                "secret_previous",
                &self.secret_previous.as_ref().map(|_| "***"),
            )
            .field("identity", &self.identity)
            .field("listen", &self.listen)
            .field("listen_host", &self.listen_host)
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers)
            .field("agents", &self.agents)
            .field("models", &self.models)
            .field("proxy_models", &self.proxy_models)
            .field("tags", &self.tags)
            .field("proxy_port", &self.proxy_port)
            .field("handoff_timeout_ms", &self.handoff_timeout_ms)
            .field("handoff_max_ms", &self.handoff_max_ms)
            .field("proxy_timeout_ms", &self.proxy_timeout_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("heartbeat_misses", &self.heartbeat_misses)
            .field("forget_after_ms", &self.forget_after_ms)
            .field("host_timeout_ms", &self.host_timeout_ms)
            .field("tool_proxy", &self.tool_proxy)
            .field("tls", &self.tls)
            .field("access", &self.access)
            .finish()
    }
}

impl PeerConfig {
    fn to_json(&self) -> Value {
        json!({ "nodeId": self.node_id, "url": self.url })
    }
}

impl AgentConfig {
    fn to_json(&self) -> Value {
        json!({ "id": self.id, "description": self.description, "tags": self.tags })
    }
}

impl ModelCost {
    fn to_json(self) -> Value {
        json!({
            "input": self.input,
            "output": self.output,
            "cacheRead": self.cache_read,
            "cacheWrite": self.cache_write,
        })
    }
}

impl ModelConfig {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "provider": self.provider,
            "api": self.api.as_str(),
            "reasoning": self.reasoning,
            "input": self.input.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
            "cost": self.cost.to_json(),
            "contextWindow": self.context_window,
            "maxTokens": self.max_tokens,
        });
        if let (Some(d), Some(obj)) = (&self.description, v.as_object_mut()) {
            obj.insert("description".to_owned(), Value::from(d.as_str()));
        }
        if let (Some(u), Some(obj)) = (&self.upstream, v.as_object_mut()) {
            obj.insert("upstream".to_owned(), u.to_json());
        }
        v
    }
}

impl ProxyModelConfig {
    fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("id".to_owned(), Value::from(self.id.as_str()));
        if let Some(n) = &self.node_id {
            obj.insert("nodeId".to_owned(), Value::from(n.as_str()));
        }
        if let Some(d) = &self.description {
            obj.insert("description".to_owned(), Value::from(d.as_str()));
        }
        Value::Object(obj)
    }
}

impl TlsConfig {
    fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        let fields = [
            ("certFile", &self.cert_file),
            ("keyFile", &self.key_file),
            ("caFile", &self.ca_file),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                obj.insert(key.to_owned(), Value::from(v.as_str()));
            }
        }
        Value::Object(obj)
    }
}

impl ToolProxyConfig {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "enabled": self.enabled,
            "allow": self.allow,
            "deny": self.deny,
            "maxOutputBytes": self.max_output_bytes,
        });
        if let (Some(root), Some(obj)) = (&self.root, v.as_object_mut()) {
            obj.insert("root".to_owned(), Value::from(root.as_str()));
        }
        v
    }
}

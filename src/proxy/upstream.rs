//! The serving side: the `model.http` mesh method. For a model in this node's `models[]` that
//! the access rules let the calling node use (kind `model`; a refusal is answered with HTTP 403,
//! cause `access_denied`, and `retry: true`: another node serving the model has its own rules),
//! find its upstream (base URL, API dialect, key), forward the consumer's body with only the
//! credentials and the upstream model id substituted, and stream the upstream's bytes back.
//!
//! Upstream resolution, per model: `models[].upstream` when set (key from `apiKeyEnv`, else from
//! OpenClaw); otherwise the host resolves the model's `provider` (`model.upstream` host request:
//! OpenClaw's `models.providers.<provider>` for `baseUrl`/`api`/`headers`, and
//! `runtime.modelAuth.resolveApiKeyForProvider` for the key). Results are cached for
//! [`RESOLVE_TTL`] so a burst of requests costs one host round trip; failures are not cached.
//! The host may take as long as the model request allows ([`resolve_deadline`]): a gateway whose
//! event loop stalls for a while delays the request instead of failing it.
//! The key never leaves this node: it is put on the upstream request here and nowhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;

use super::client::{self, Conn, Gathered, SendError};
use super::tunnel::{self, TunnelEnd, TunnelHead, TunnelRequest};
use crate::access::{Access, Kind};
use crate::config::{Config, ModelApi, ModelConfig, UpstreamUrl};
use crate::error::Result;
use crate::host::{fmt_secs, HostBridge, HostDeadline};
use crate::rpc::{BoxFuture, CallCtx, Service};

/// How long a resolved upstream is reused.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// Non-secret placeholder keys OpenClaw returns for keyless local providers: not sent upstream.
const NON_SECRET_KEYS: &[&str] = &["custom-local", "ollama-local", "lmstudio-local"];

/// Where and how to call the upstream for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub url: UpstreamUrl,
    pub api: ModelApi,
    /// The model id the upstream expects.
    pub model: String,
    pub key: Option<String>,
    /// Extra headers from the provider config (string values only).
    pub headers: Vec<(String, String)>,
}

impl Upstream {
    /// The request path on the upstream for this dialect.
    pub fn request_path(&self) -> String {
        let base = &self.url.path;
        match self.api {
            ModelApi::OpenAiCompletions => format!("{base}/chat/completions"),
            ModelApi::OpenAiResponses => format!("{base}/responses"),
            // Anthropic base URLs usually omit /v1 (OpenClaw's and the SDK's convention).
            ModelApi::AnthropicMessages if base.ends_with("/v1") => format!("{base}/messages"),
            ModelApi::AnthropicMessages => format!("{base}/v1/messages"),
        }
    }
}

/// The `model.http` service (cheap to clone: the state is shared).
#[derive(Clone)]
pub struct ModelService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    access: Arc<Access>,
    host: Arc<HostBridge>,
    cache: Mutex<HashMap<String, (Instant, Upstream)>>,
    pool: client::Pool,
}

impl ModelService {
    pub fn new(config: Arc<Config>, host: Arc<HostBridge>) -> Self {
        ModelService {
            inner: Arc::new(Inner {
                access: Access::new(&config.access),
                config,
                host,
                cache: Mutex::new(HashMap::new()),
                pool: client::Pool::default(),
            }),
        }
    }

    fn cached(&self, model: &str) -> Option<Upstream> {
        let g = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        g.get(model)
            .filter(|(at, _)| at.elapsed() < RESOLVE_TTL)
            .map(|(_, u)| u.clone())
    }

    async fn resolve(
        &self,
        m: &ModelConfig,
        deadline: &HostDeadline,
    ) -> std::result::Result<Upstream, String> {
        if let Some(u) = self.cached(&m.id) {
            return Ok(u);
        }
        let u = resolve_with_host(m, &self.inner.host, deadline).await?;
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.id.clone(), (Instant::now(), u.clone()));
        Ok(u)
    }
}

/// How long the host may take to resolve an upstream for a model request from `from`: the
/// time the consumer has left (its mesh deadline less the [`tunnel::MESH_DEADLINE_SLACK`] it
/// added), at most this node's `proxyTimeoutMs`, less the answer's way back.
pub fn resolve_deadline(
    caller: Option<Duration>,
    proxy_timeout_ms: u64,
    from: &str,
) -> HostDeadline {
    let left = caller.map(|d| {
        let left = d.saturating_sub(tunnel::MESH_DEADLINE_SLACK).max(d / 2);
        (
            left,
            format!(
                "the model request's proxyTimeoutMs ({} left, sent by {from})",
                fmt_secs(left)
            ),
        )
    });
    let cap = Duration::from_millis(proxy_timeout_ms);
    let cap = (
        cap,
        format!("proxyTimeoutMs on this node ({})", fmt_secs(cap)),
    );
    HostDeadline::serving([left, Some(cap)])
}

/// Ask the host (unless the override says everything) by `deadline` and combine with the
/// override.
async fn resolve_with_host(
    m: &ModelConfig,
    host: &Arc<HostBridge>,
    deadline: &HostDeadline,
) -> std::result::Result<Upstream, String> {
    let o = m.upstream.as_ref();
    let needs_host = o.is_none_or(|o| o.api_key_env.is_none());
    let reply = if needs_host {
        let call = host
            .call(
                crate::host::HostKind::ModelUpstream,
                serde_json::json!({ "provider": m.provider, "model": m.id }),
            )
            .map_err(|e| {
                format!(
                    "cannot ask OpenClaw for provider {:?}: {}",
                    m.provider, e.message
                )
            })?;
        match call.result_by(deadline).await {
            Ok(v) => v,
            Err(e) if e.code == crate::error::ErrorCode::Timeout => {
                return Err(format!(
                    "OpenClaw did not resolve provider {:?}: {}",
                    m.provider, e.message
                ))
            }
            Err(e) => {
                return Err(format!(
                    "OpenClaw could not resolve provider {:?}: {}",
                    m.provider, e.message
                ))
            }
        }
    } else {
        Value::Null
    };
    from_parts(m, &reply, |name| std::env::var(name).ok())
}

/// Combine `models[i]`, its override and the host's reply (`{providerConfig, apiKey}`) into an
/// upstream. Pure, for tests.
pub fn from_parts(
    m: &ModelConfig,
    host: &Value,
    env: impl Fn(&str) -> Option<String>,
) -> std::result::Result<Upstream, String> {
    let pc = &host["providerConfig"];
    let o = m.upstream.as_ref();
    let base = match (o.map(|o| o.base_url.as_str()), pc["baseUrl"].as_str()) {
        (Some(b), _) => b.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => {
            return Err(format!(
                "no base URL for provider {:?}: OpenClaw has no models.providers.{} entry with a baseUrl \
                 (built-in providers are not exposed to plugins); set models[].upstream.baseUrl for model {:?}",
                m.provider, m.provider, m.id
            ))
        }
    };
    let url = UpstreamUrl::parse(&base).map_err(|e| format!("upstream base URL {base:?}: {e}"))?;
    let api = o
        .and_then(|o| o.api)
        .or_else(|| pc["api"].as_str().and_then(ModelApi::parse))
        .unwrap_or(m.api);
    let model = o
        .and_then(|o| o.model.clone())
        .unwrap_or_else(|| m.id.clone());
    let key = match o.and_then(|o| o.api_key_env.as_deref()) {
        Some(var) => Some(env(var).filter(|k| !k.is_empty()).ok_or_else(|| {
            format!("models[].upstream.apiKeyEnv: environment variable {var} is not set on this gateway")
        })?),
        None => host["apiKey"].as_str().map(String::from),
    }
    .filter(|k| !NON_SECRET_KEYS.contains(&k.as_str()));
    let headers = pc["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.to_ascii_lowercase(), v.to_string())))
                .filter(|(k, _)| k != "host" && k != "content-length")
                .collect()
        })
        .unwrap_or_default();
    Ok(Upstream {
        url,
        api,
        model,
        key,
        headers,
    })
}

impl Service for ModelService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let svc = self.clone();
        Box::pin(async move { Ok(serve(&svc, ctx, &payload).await.to_bytes()) })
    }
}

async fn serve(svc: &ModelService, mut ctx: CallCtx, payload: &[u8]) -> TunnelEnd {
    let (req, body) = match tunnel::decode_request(payload) {
        Ok(x) => x,
        Err(e) => return TunnelEnd::fail(400, "bad_request", e, false),
    };
    let deadline = resolve_deadline(ctx.deadline, svc.inner.config.proxy_timeout_ms, &ctx.from);
    // Resolving may wait long for a busy OpenClaw: a consumer that leaves meanwhile ends it.
    let up = tokio::select! {
        biased;
        _ = ctx.cancel.wait_for(|c| *c) => return cancelled(),
        r = svc.upstream_for(&ctx.from, &req, &deadline) => match r {
            Ok(u) => u,
            Err(end) => return end,
        },
    };
    let body = if up.model != req.model {
        rename_model(body, &up.model)
    } else {
        Bytes::copy_from_slice(body)
    };
    let request = match upstream_request(&req, &up, body) {
        Ok(r) => r,
        Err(e) => {
            return TunnelEnd::fail(
                502,
                "upstream_request",
                format!("cannot build the upstream request: {e}"),
                false,
            )
        }
    };
    let sent = tokio::select! {
        biased;
        _ = ctx.cancel.wait_for(|c| *c) => return cancelled(),
        r = client::send(&svc.inner.pool, &up.url, request) => r,
    };
    let (resp, conn) = match sent {
        Ok(r) => r,
        Err(SendError::Connect(e)) => return TunnelEnd::fail(502, "upstream_connect", e, true),
        Err(SendError::Exchange(e)) => return TunnelEnd::fail(502, "upstream_exchange", e, false),
    };
    let head = response_head(&resp);
    if ctx
        .sink
        .send(serde_json::to_vec(&head).unwrap_or_default())
        .await
        .is_err()
    {
        return cancelled();
    }
    svc.relay(&mut ctx, &up.url, resp.into_body(), conn).await
}

impl ModelService {
    /// The upstream of the model `req` asks for: the access rules must let `from` use it, it
    /// must be in this node's `models[]`, resolve, and speak the dialect of the path the
    /// consumer used.
    async fn upstream_for(
        &self,
        from: &str,
        req: &TunnelRequest,
        deadline: &HostDeadline,
    ) -> std::result::Result<Upstream, TunnelEnd> {
        // model.http names no calling agent: rules with callerAgents never match it.
        if let Err(r) = self
            .inner
            .access
            .decide(from, None, Kind::Model, &req.model)
        {
            return Err(TunnelEnd::fail(403, "access_denied", r.message, true));
        }
        let Some(m) = self.inner.config.models.iter().find(|m| m.id == req.model) else {
            return Err(TunnelEnd::fail(
                404,
                "model_not_served",
                format!("model {:?} is not in this node's models[]", req.model),
                true,
            ));
        };
        let up = match self.resolve(m, deadline).await {
            Ok(u) => u,
            Err(e) => return Err(TunnelEnd::fail(502, "upstream_unresolved", e, true)),
        };
        let asked = tunnel::api_for_path(&req.path);
        if asked != Some(up.api) {
            return Err(TunnelEnd::fail(
                400,
                "wrong_api",
                format!(
                    "model {:?} speaks {}: send POST {} instead of {}",
                    m.id,
                    up.api.as_str(),
                    tunnel::path_for_api(up.api),
                    req.path
                ),
                false,
            ));
        }
        Ok(up)
    }

    /// Streams the upstream's body back as mesh chunks until it ends (the connection goes back
    /// to the pool), breaks off, or the consumer cancels.
    async fn relay(
        &self,
        ctx: &mut CallCtx,
        url: &UpstreamUrl,
        mut body: Incoming,
        mut conn: Conn,
    ) -> TunnelEnd {
        loop {
            // Wait for body bytes, then take every frame that has already arrived (never wait
            // for more): fewer, larger mesh chunks when the upstream is fast, the same latency
            // when it is slow. `conn` is driven here, so frames the socket already holds count
            // as arrived.
            let mut out = Vec::new();
            let got = tokio::select! {
                biased;
                _ = ctx.cancel.wait_for(|c| *c) => return cancelled(),
                g = conn.gather(&mut body, &mut out, COALESCE_BYTES) => g,
            };
            if !out.is_empty() && ctx.sink.send(out).await.is_err() {
                return cancelled();
            }
            match got {
                Gathered::More => {}
                Gathered::End => {
                    self.inner.pool.put(url, conn);
                    return TunnelEnd::ok();
                }
                Gathered::Failed(e) => return broken(e),
            }
        }
    }
}

/// The request to the upstream: the consumer's body and forwarded headers, the provider's
/// headers, and the key in the dialect's header.
fn upstream_request(
    req: &TunnelRequest,
    up: &Upstream,
    body: Bytes,
) -> hyper::http::Result<Request<Full<Bytes>>> {
    let mut b = Request::post(up.request_path())
        .header("host", up.url.authority())
        .header("content-type", "application/json")
        .header("accept-encoding", "identity")
        .header(
            "user-agent",
            concat!("clawmatrix/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &req.headers {
        if tunnel::FORWARDED_REQUEST_HEADERS.contains(&k.as_str()) {
            b = b.header(k.as_str(), v.as_str());
        }
    }
    for (k, v) in &up.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(key) = &up.key {
        b = match up.api {
            ModelApi::AnthropicMessages => b.header("x-api-key", key.as_str()),
            _ => b.header("authorization", format!("Bearer {key}")),
        };
        if up.api == ModelApi::AnthropicMessages
            && !req.headers.iter().any(|(k, _)| k == "anthropic-version")
        {
            b = b.header("anthropic-version", "2023-06-01");
        }
    }
    b.body(Full::new(body))
}

/// The upstream's status and headers as the consumer gets them (hop-by-hop headers dropped).
fn response_head(resp: &Response<Incoming>) -> TunnelHead {
    TunnelHead {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .filter(|(k, _)| !tunnel::DROPPED_RESPONSE_HEADERS.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
    }
}

/// Most bytes gathered into one mesh chunk from upstream frames that are already there.
const COALESCE_BYTES: usize = 64 * 1024;

fn broken(e: hyper::Error) -> TunnelEnd {
    TunnelEnd::fail(
        502,
        "upstream_body",
        format!("the upstream response broke off: {e}"),
        false,
    )
}

fn cancelled() -> TunnelEnd {
    TunnelEnd::fail(
        499,
        "cancelled",
        "the consumer cancelled the request",
        false,
    )
}

/// The body with `model` set to `id` (the rest kept; key order may change).
fn rename_model(body: &[u8], id: &str) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".into(), id.into());
            serde_json::to_vec(&Value::Object(o))
                .map(Bytes::from)
                .unwrap_or_else(|_| Bytes::copy_from_slice(body))
        }
        _ => Bytes::copy_from_slice(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(extra: Value) -> ModelConfig {
        let mut m = json!({"id": "m1", "provider": "mock"});
        if let (Some(o), Value::Object(e)) = (m.as_object_mut(), extra) {
            o.extend(e);
        }
        let c = Config::from_json(&json!({"nodeId": "office", "secret": "0123456789abcdef", "listen": true, "models": [m]})).unwrap();
        c.config.models[0].clone()
    }

    #[test]
    fn the_host_config_supplies_url_api_key_and_headers() {
        let host = json!({"providerConfig": {"baseUrl": "http://127.0.0.1:9/v1/", "api": "openai-completions", "headers": {"X-Org": "o1", "n": 3}}, "apiKey": "sk-office"});
        let u = from_parts(&model(json!({})), &host, |_| None).unwrap();
        assert_eq!(u.request_path(), "/v1/chat/completions");
        assert_eq!(u.key.as_deref(), Some("sk-office"));
        assert_eq!(u.headers, vec![("x-org".to_string(), "o1".to_string())]);
        assert_eq!(u.model, "m1");
    }

    #[test]
    fn the_override_wins_and_its_env_key_must_exist() {
        let m = model(
            json!({"upstream": {"baseUrl": "https://api.example.com", "api": "anthropic-messages", "model": "claude-x", "apiKeyEnv": "K"}}),
        );
        let u = from_parts(&m, &Value::Null, |v| {
            (v == "K").then(|| "sk-env".to_string())
        })
        .unwrap();
        assert_eq!(
            (u.api, u.model.as_str(), u.key.as_deref()),
            (ModelApi::AnthropicMessages, "claude-x", Some("sk-env"))
        );
        assert_eq!(u.request_path(), "/v1/messages");
        let e = from_parts(&m, &Value::Null, |_| None).unwrap_err();
        assert!(e.contains("apiKeyEnv") && e.contains("K"), "{e}");
    }

    #[test]
    fn no_base_url_says_how_to_fix_it_and_local_markers_are_not_keys() {
        let e = from_parts(&model(json!({})), &json!({"providerConfig": null}), |_| {
            None
        })
        .unwrap_err();
        assert!(e.contains("models[].upstream.baseUrl"), "{e}");
        let host =
            json!({"providerConfig": {"baseUrl": "http://127.0.0.1:9"}, "apiKey": "custom-local"});
        assert_eq!(
            from_parts(&model(json!({})), &host, |_| None).unwrap().key,
            None
        );
        let bad = json!({"providerConfig": {"baseUrl": "ftp://x"}});
        assert!(from_parts(&model(json!({})), &bad, |_| None)
            .unwrap_err()
            .contains("http://"));
    }

    /// A stalled OpenClaw: answers `model.upstream` after `delay`.
    async fn late_host(delay: Duration) -> Arc<HostBridge> {
        let bridge = HostBridge::new();
        let b = Arc::clone(&bridge);
        tokio::spawn(async move {
            while let Some(req) = b.next_request().await {
                if req.kind != crate::host::HostKind::ModelUpstream {
                    continue;
                }
                tokio::time::sleep(delay).await;
                let v =
                    json!({"providerConfig": {"baseUrl": "http://127.0.0.1:9/v1"}, "apiKey": "sk"});
                b.reply(req.id, Ok(crate::host::HostReply::Result(v)));
            }
        });
        while !bridge.attached() {
            tokio::task::yield_now().await;
        }
        bridge
    }

    /// The model request's mesh deadline as the consumer sends it: its time left + the slack.
    fn sent(left: Duration) -> Option<Duration> {
        Some(left + tunnel::MESH_DEADLINE_SLACK)
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_resolved_after_12_s_serves_a_model_request_with_60_s_left() {
        let host = late_host(Duration::from_secs(12)).await;
        let d = resolve_deadline(sent(Duration::from_secs(60)), 600_000, "home");
        let u = resolve_with_host(&model(json!({})), &host, &d)
            .await
            .unwrap();
        assert_eq!(u.key.as_deref(), Some("sk"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_slower_than_the_model_requests_time_left_fails_it_clearly() {
        let host = late_host(Duration::from_secs(12)).await;
        let d = resolve_deadline(sent(Duration::from_secs(10)), 600_000, "home");
        let t0 = tokio::time::Instant::now();
        let e = resolve_with_host(&model(json!({})), &host, &d)
            .await
            .unwrap_err();
        assert!(
            e.contains("host model.upstream: no answer from OpenClaw within 9.0 s"),
            "{e}"
        );
        assert!(
            e.contains("proxyTimeoutMs (10.0 s left, sent by home)"),
            "{e}"
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(9));
        // This node's own proxyTimeoutMs bounds a consumer that allows more.
        let d = resolve_deadline(sent(Duration::from_secs(600)), 5_000, "home");
        assert!(
            d.why().contains("proxyTimeoutMs on this node (5.0 s)"),
            "{}",
            d.why()
        );
    }

    #[test]
    fn renaming_keeps_everything_else() {
        let out = rename_model(br#"{"model":"a","stream":true,"x":[1]}"#, "b");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"model": "b", "stream": true, "x": [1]}));
        assert_eq!(&rename_model(b"not json", "b")[..], b"not json");
    }
}

//! The only `#[napi]` code: the `ClawMatrixNode` handle class, plain-data objects, and the
//! mapping of [`crate::error::Error`] to JS errors whose `code` is the stable [`ErrorCode`].
//!
//! Threading: `start`/`stop` bind and release sockets and may wait for tasks to drain, so they
//! run as `AsyncTask`s on the libuv pool (short, bounded). Waiting calls (`nextEvent`,
//! `ToolCall.next`) are `async` on napi's tokio runtime, so they never occupy a libuv thread.
//!
//! # Errors
//! Every error a method reports reaches JS in one shape: an `Error` whose `code` is a stable
//! `CLAWMATRIX_*` string ([`ErrorCode`]) and whose `message` is the core's message.
//! - synchronous methods and getters throw it ([`guarded`]). Those that can fail:
//!   `ClawMatrixNode.create` (`CONFIG_INVALID`), `hostReply`, `renderStatusText` and
//!   `planProviders` (`INVALID_ARGUMENT`), `status` (`INTERNAL`, if a JSON section of the
//!   report no longer fits its type); the others only on a panic;
//! - async methods reject with it ([`guarded_async`] and [`Outcome`]): `meshPing`, `nextEvent`,
//!   `nextHostRequest`, and `ToolCall.next` (a failed tool call rejects `next()`);
//! - tasks on the libuv pool reject with it ([`caught`], built on the JS thread in `resolve`):
//!   `start` (`CONFIG_INVALID`, `BIND_FAILED`, ...), `stop`.
//!
//! A panic in any entry point is caught there and becomes `CLAWMATRIX_INTERNAL` (with the panic
//! message) instead of unwinding into Node, which would abort the host process. Arguments of the
//! wrong JS type (which the typings rule out) are refused by napi's generated conversion before
//! a method runs, with napi's own code.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::app::{Node, StartOptions as CoreStartOptions};
use crate::config::Config;
use crate::error::{Error as CoreError, ErrorCode};

mod status;
pub use status::{PeerView, StatusReport, TrustReset};

fn js_err(e: CoreError) -> napi::Error<ErrorCode> {
    napi::Error::new(e.code, e.message)
}

/// The core error for a panic caught in binding method `what`.
fn panicked(what: &str, payload: Box<dyn Any + Send>) -> CoreError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    CoreError::new(ErrorCode::Internal, format!("{what}: panicked: {message}"))
}

/// Run synchronous method `what`: its error, or a panic as `CLAWMATRIX_INTERNAL`, is thrown as
/// a coded JS error.
fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> crate::error::Result<T>,
) -> napi::Result<T, ErrorCode> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(js_err),
        Err(payload) => Err(js_err(panicked(what, payload))),
    }
}

/// Run async method `what`: a panic while it is polled becomes `CLAWMATRIX_INTERNAL`.
async fn guarded_async<T>(
    what: &str,
    f: impl Future<Output = crate::error::Result<T>>,
) -> Outcome<T> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => Outcome(r),
        Err(payload) => Outcome(Err(panicked(what, payload))),
    }
}

/// What an async method settles with: its value, or the same coded error a synchronous method
/// throws. (A napi future's own error can only carry napi's `Status` as its `code`, so the
/// error is built here, on the JS thread, when the promise settles.)
pub struct Outcome<T>(crate::error::Result<T>);

impl<T: ToNapiValue> ToNapiValue for Outcome<T> {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> Result<napi::sys::napi_value> {
        match val.0 {
            // SAFETY: forwarded with the env we were given.
            Ok(v) => unsafe { T::to_napi_value(env, v) },
            Err(e) => Err(coded_js_error(env, e)),
        }
    }
}

/// A JS `Error` with `code` and `message` of `e`, wrapped so that napi rejects (or throws) with
/// that very object. Must run on the JS thread.
fn coded_js_error(env: napi::sys::napi_env, e: CoreError) -> napi::Error {
    let fallback = napi::Error::new(Status::GenericFailure, e.message.clone());
    // SAFETY: `env` is the live env of the JS thread this is called on.
    let value = unsafe { JsError::from(js_err(e)).into_value(env) };
    if value.is_null() {
        // The env is tearing down: nothing will see the error anyway.
        return fallback;
    }
    // SAFETY: `value` was just created in `env`.
    napi::Error::from(unsafe { Unknown::from_raw_unchecked(env, value) })
}

/// A config problem: the field path and the reason.
#[napi(object)]
pub struct ConfigIssue {
    pub path: String,
    pub reason: String,
}

/// The result of [`validate_config`].
#[napi(object)]
pub struct ConfigCheck {
    pub ok: bool,
    pub errors: Vec<ConfigIssue>,
    pub warnings: Vec<ConfigIssue>,
}

/// Validate a plugin config without starting anything.
#[napi(ts_args_type = "config: unknown")]
pub fn validate_config(config: serde_json::Value) -> napi::Result<ConfigCheck, ErrorCode> {
    guarded("validateConfig", || Ok(check_config(&config)))
}

fn check_config(config: &serde_json::Value) -> ConfigCheck {
    let conv = |issues: Vec<crate::config::ConfigIssue>| {
        issues
            .into_iter()
            .map(|i| ConfigIssue {
                path: i.path,
                reason: i.reason,
            })
            .collect()
    };
    match Config::from_json(config) {
        Ok(v) => ConfigCheck {
            ok: true,
            errors: Vec::new(),
            warnings: conv(v.warnings),
        },
        Err(e) => ConfigCheck {
            ok: false,
            errors: conv(e.issues),
            warnings: Vec::new(),
        },
    }
}

/// One agent tool as OpenClaw registers it.
#[napi(object)]
pub struct ToolDefinition {
    pub name: String,
    pub label: String,
    pub description: String,
    /// The JSON Schema of the tool's arguments.
    #[napi(ts_type = "Record<string, unknown>")]
    pub parameters: serde_json::Value,
    /// Changes state on the remote node (exec, write, handoff, ...).
    pub side_effecting: bool,
}

/// The seven tool definitions, in registration order.
#[napi]
pub fn tool_definitions() -> napi::Result<Vec<ToolDefinition>, ErrorCode> {
    guarded("toolDefinitions", || {
        Ok(crate::tools::catalog::TOOLS
            .iter()
            .map(|t| ToolDefinition {
                name: t.name.to_string(),
                label: t.label.to_string(),
                description: t.description.to_string(),
                parameters: crate::tools::catalog::parameters_schema(t),
                side_effecting: t.side_effecting,
            })
            .collect())
    })
}

/// Render a status report (as returned by `clawmatrix.status`; checked here) as the readable
/// CLI summary.
#[napi(ts_args_type = "status: unknown")]
pub fn render_status_text(status: serde_json::Value) -> napi::Result<String, ErrorCode> {
    guarded("renderStatusText", || crate::status::render_value(&status))
}

/// What [`plan_providers`] decided.
#[napi(object)]
pub struct ProviderPlan {
    /// Our entries added.
    pub added: Vec<String>,
    /// Whether `providers` differs from the current object.
    pub changed: bool,
    /// Ids the user's own entries hold (ours are not written there).
    pub conflicts: Vec<String>,
    /// The new `models.providers` object.
    #[napi(ts_type = "Record<string, unknown>")]
    pub providers: serde_json::Map<String, serde_json::Value>,
    /// Our entries removed (no longer offered by the mesh).
    pub removed: Vec<String>,
    /// Our entries changed.
    pub updated: Vec<String>,
}

/// Merge the mesh's providers (`desired`, from a `providers.sync` host request) into the current
/// `models.providers` object of OpenClaw's config (`null` for none). Entries the user wrote are
/// never changed. Throws `CLAWMATRIX_INVALID_ARGUMENT` when either is not an object.
#[napi(ts_args_type = "current: unknown, desired: unknown")]
pub fn plan_providers(
    current: serde_json::Value,
    desired: serde_json::Value,
) -> napi::Result<ProviderPlan, ErrorCode> {
    guarded("planProviders", || {
        let empty = serde_json::Map::new();
        let not_object = |what: &str, v: &serde_json::Value| {
            CoreError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "planProviders: {what}: expected an object, got {}",
                    crate::error::json_type_name(v)
                ),
            )
        };
        let current = match &current {
            serde_json::Value::Null => &empty,
            serde_json::Value::Object(m) => m,
            other => return Err(not_object("current", other)),
        };
        let serde_json::Value::Object(desired) = &desired else {
            return Err(not_object("desired", &desired));
        };
        let plan = crate::proxy::providers::plan(current, desired);
        Ok(ProviderPlan {
            added: plan.added,
            changed: plan.changed,
            conflicts: plan.conflicts,
            providers: plan.providers,
            removed: plan.removed,
            updated: plan.updated,
        })
    })
}

/// The core's version.
#[napi]
pub fn core_version() -> napi::Result<String, ErrorCode> {
    guarded("coreVersion", || Ok(env!("CARGO_PKG_VERSION").to_string()))
}

/// Options for `start()`.
#[napi(object)]
pub struct StartOptions {
    /// Plugin state directory (the service context's `stateDir`); the tool audit log lives here.
    pub state_dir: Option<String>,
    /// The agent workspace: the remote tools' filesystem root when `toolProxy.root` is unset.
    pub workspace_dir: Option<String>,
    /// This gateway's port (`gateway.port`), for tools run through `POST /tools/invoke`.
    pub gateway_port: Option<u32>,
    /// This gateway's token (`gateway.auth.token` or `OPENCLAW_GATEWAY_TOKEN`).
    pub gateway_token: Option<String>,
}

/// Who invoked a tool on this gateway (forwarded to the serving node's audit).
#[napi(object)]
pub struct ToolCaller {
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
}

/// What `start()` bound.
#[napi(object)]
pub struct StartInfo {
    /// The mesh listener address `host:port`, when listening.
    pub listen_addr: Option<String>,
    /// The model proxy address `127.0.0.1:port`.
    pub proxy_addr: String,
}

/// Severity of a [`NodeEvent`].
#[napi(string_enum = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// A log line or event for the host logger.
#[napi(object)]
pub struct NodeEvent {
    pub level: LogLevel,
    pub message: String,
}

/// What a [`ToolStep`] is.
#[napi(string_enum = "lowercase")]
pub enum ToolStepKind {
    /// Partial output; more steps follow.
    Progress,
    /// The final result; the next `next()` resolves `null`.
    Result,
}

/// One step of a tool call: `progress` (partial output) or `result` (final). A failed call
/// rejects `next()` instead.
#[napi(object)]
pub struct ToolStep {
    pub kind: ToolStepKind,
    /// Text for the model.
    #[napi(ts_type = "string")]
    pub text: JsText,
    /// Structured details (the tool's own shape).
    #[napi(ts_type = "unknown")]
    pub details: serde_json::Value,
}

/// A tool step's text on its way to JS.
///
/// A large ASCII text (a file read, command output) becomes an *external* one-byte JS string:
/// V8 keeps pointing at this buffer (freed when the string is collected) instead of allocating
/// fresh pages for a copy and decoding it as UTF-8, which was a quarter of the CPU of a 1 MiB
/// `cluster_read` in perf. Anything else, or a Node without the call, is an ordinary string.
pub struct JsText(pub String);

/// Texts from this size on are handed over as external strings (smaller ones copy cheaply).
const EXTERNAL_TEXT_MIN: usize = 64 * 1024;

/// `node_api_create_external_string_latin1` (Node-API 10, exported by Node ≥ 20.4), looked up
/// at run time so that the addon keeps loading on a Node without it.
type CreateExternalLatin1 = unsafe extern "C" fn(
    napi::sys::napi_env,
    *mut std::os::raw::c_char,
    isize,
    napi::sys::napi_finalize,
    *mut std::ffi::c_void,
    *mut napi::sys::napi_value,
    *mut bool,
) -> napi::sys::napi_status;

fn external_latin1() -> Option<CreateExternalLatin1> {
    static FOUND: std::sync::OnceLock<Option<CreateExternalLatin1>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; a non-null result is the exported function
        // of that name, whose C signature is the one above (Node-API headers).
        unsafe {
            let f = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"node_api_create_external_string_latin1".as_ptr(),
            );
            (!f.is_null())
                .then(|| std::mem::transmute::<*mut libc::c_void, CreateExternalLatin1>(f))
        }
    })
}

/// Frees an external text's buffer: `hint` is the `Box<Vec<u8>>` handed over with it.
unsafe extern "C" fn drop_external_text(
    _env: napi::sys::napi_env,
    _data: *mut std::ffi::c_void,
    hint: *mut std::ffi::c_void,
) {
    if !hint.is_null() {
        // SAFETY: `hint` came from Box::into_raw in `JsText::to_napi_value`, and Node calls the
        // finalizer once (at collection, or at once when it copied the bytes).
        drop(unsafe { Box::from_raw(hint.cast::<Vec<u8>>()) });
    }
}

impl ToNapiValue for JsText {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> Result<napi::sys::napi_value> {
        let text = val.0;
        let create = match external_latin1() {
            Some(f) if text.len() >= EXTERNAL_TEXT_MIN && text.is_ascii() => f,
            // SAFETY: forwarded with the env we were given.
            _ => return unsafe { String::to_napi_value(env, text) },
        };
        // Node owns the buffer from here on and frees it through the finalizer, unless the
        // call fails (then the finalizer is never called and the buffer comes back to us).
        let boxed = Box::new(text.into_bytes());
        let (ptr, len) = (boxed.as_ptr(), boxed.len());
        let hint = Box::into_raw(boxed);
        let mut out = std::ptr::null_mut();
        let mut copied = false;
        // SAFETY: ptr/len describe the boxed Vec, alive until the finalizer runs; ASCII is
        // valid Latin-1 with the same bytes.
        let status = unsafe {
            create(
                env,
                ptr.cast_mut().cast(),
                len as isize,
                Some(drop_external_text),
                hint.cast(),
                &mut out,
                &mut copied,
            )
        };
        if status == napi::sys::Status::napi_ok {
            return Ok(out);
        }
        // SAFETY: the call failed, so Node did not take the buffer; it is ours again, and it
        // was a String's bytes.
        let bytes = unsafe { Box::from_raw(hint) };
        let text = unsafe { String::from_utf8_unchecked(*bytes) };
        unsafe { String::to_napi_value(env, text) }
    }
}

impl FromNapiValue for JsText {
    unsafe fn from_napi_value(
        env: napi::sys::napi_env,
        value: napi::sys::napi_value,
    ) -> Result<Self> {
        // SAFETY: forwarded as given.
        Ok(JsText(unsafe { String::from_napi_value(env, value) }?))
    }
}

/// A request from the core to the host (see `src/host.rs`).
#[napi(object)]
pub struct HostRequest {
    /// The call id to answer with `hostReply`.
    pub id: i64,
    /// What to do.
    pub kind: HostRequestKind,
    /// The request's parameters (their shape depends on `kind`).
    #[napi(ts_type = "unknown")]
    pub params: serde_json::Value,
}

/// What a host request asks for (the core's `HostKind`; `cancel` = the core gave up on call
/// `params.id`).
#[napi(string_enum)]
pub enum HostRequestKind {
    #[napi(value = "agents.list")]
    AgentsList,
    #[napi(value = "agent.run")]
    AgentRun,
    #[napi(value = "agent.abort")]
    AgentAbort,
    #[napi(value = "agent.send")]
    AgentSend,
    #[napi(value = "providers.sync")]
    ProvidersSync,
    #[napi(value = "model.upstream")]
    ModelUpstream,
    #[napi(value = "cancel")]
    Cancel,
}

impl From<crate::host::HostKind> for HostRequestKind {
    fn from(k: crate::host::HostKind) -> Self {
        use crate::host::HostKind as K;
        match k {
            K::AgentsList => HostRequestKind::AgentsList,
            K::AgentRun => HostRequestKind::AgentRun,
            K::AgentAbort => HostRequestKind::AgentAbort,
            K::AgentSend => HostRequestKind::AgentSend,
            K::ProvidersSync => HostRequestKind::ProvidersSync,
            K::ModelUpstream => HostRequestKind::ModelUpstream,
            K::Cancel => HostRequestKind::Cancel,
        }
    }
}

/// How `hostReply` answers a host request.
#[napi(string_enum = "lowercase")]
pub enum HostReplyKind {
    /// An event; more follow.
    Event,
    /// The final result.
    Result,
    /// The final error.
    Error,
}

/// The handle OpenClaw's service drives: created from the plugin config, started and stopped
/// by the service, queried by tools, gateway methods and the CLI.
#[napi]
pub struct ClawMatrixNode {
    node: Arc<Node>,
    warnings: Vec<crate::config::ConfigIssue>,
}

#[napi]
impl ClawMatrixNode {
    /// Validate `config` and create a stopped node. Throws `CLAWMATRIX_CONFIG_INVALID` naming
    /// every bad field.
    #[napi(factory, ts_args_type = "config: unknown")]
    pub fn create(config: serde_json::Value) -> napi::Result<Self, ErrorCode> {
        guarded("create", || {
            let validated = Config::from_json(&config).map_err(CoreError::from)?;
            Ok(ClawMatrixNode {
                node: Arc::new(Node::new(validated.config)),
                warnings: validated.warnings,
            })
        })
    }

    /// Config warnings (valid but probably not what the user meant).
    #[napi]
    pub fn warnings(&self) -> napi::Result<Vec<ConfigIssue>, ErrorCode> {
        guarded("warnings", || {
            Ok(self
                .warnings
                .iter()
                .map(|i| ConfigIssue {
                    path: i.path.clone(),
                    reason: i.reason.clone(),
                })
                .collect())
        })
    }

    /// This node's id.
    #[napi(getter)]
    pub fn node_id(&self) -> napi::Result<String, ErrorCode> {
        guarded("nodeId", || Ok(self.node.config().node_id.clone()))
    }

    /// Bind the sockets and start. Idempotent; restartable after `stop()`.
    #[napi(ts_return_type = "Promise<StartInfo>")]
    pub fn start(&self, opts: Option<StartOptions>) -> AsyncTask<StartTask> {
        AsyncTask::new(StartTask {
            node: self.node.clone(),
            opts: match opts {
                Some(o) => CoreStartOptions {
                    state_dir: o.state_dir.map(Into::into),
                    workspace_dir: o.workspace_dir.map(Into::into),
                    gateway_port: o.gateway_port.and_then(|p| u16::try_from(p).ok()),
                    gateway_token: o.gateway_token,
                    handshake_timeout: None,
                    listener: None,
                    proxy_listener: None,
                },
                None => CoreStartOptions::default(),
            },
        })
    }

    /// Stop and release every socket. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop(&self) -> AsyncTask<StopTask> {
        AsyncTask::new(StopTask {
            node: self.node.clone(),
        })
    }

    /// Whether the node is started.
    #[napi(getter)]
    pub fn running(&self) -> napi::Result<bool, ErrorCode> {
        guarded("running", || Ok(self.node.is_running()))
    }

    /// The status report (0.1.8 shape plus diagnostics).
    #[napi]
    pub fn status(&self) -> napi::Result<StatusReport, ErrorCode> {
        guarded("status", || StatusReport::from_core(self.node.status()))
    }

    /// The peer list (the `peers` of the status report).
    #[napi]
    pub fn peers(&self) -> napi::Result<Vec<PeerView>, ErrorCode> {
        guarded("peers", || {
            Ok(self.node.peers().into_iter().map(Into::into).collect())
        })
    }

    /// The next log line or event; `null` once the node is dropped. Bounded queue, drained by
    /// pull so the core never waits for JS.
    #[napi(ts_return_type = "Promise<NodeEvent | null>")]
    pub async fn next_event(&self) -> Outcome<Option<NodeEvent>> {
        guarded_async("nextEvent", async {
            let events = self.node.events();
            Ok(events.next().await.map(|e| NodeEvent {
                level: match e.level {
                    crate::events::Level::Debug => LogLevel::Debug,
                    crate::events::Level::Info => LogLevel::Info,
                    crate::events::Level::Warn => LogLevel::Warn,
                    crate::events::Level::Error => LogLevel::Error,
                },
                message: e.message,
            }))
        })
        .await
    }

    /// End the streams the shim pulls: `nextEvent()` resolves `null` once drained, and
    /// `nextHostRequest()` resolves `null` (pending host calls fail).
    #[napi]
    pub fn close_events(&self) -> napi::Result<(), ErrorCode> {
        guarded("closeEvents", || {
            self.node.events().close();
            self.node.host().close();
            Ok(())
        })
    }

    /// The next request for the host; `null` once the node stopped. The first call attaches
    /// the host (before that, core features that need the host fail with `NOT_RUNNING`).
    #[napi(ts_return_type = "Promise<HostRequest | null>")]
    pub async fn next_host_request(&self) -> Outcome<Option<HostRequest>> {
        guarded_async("nextHostRequest", async {
            let bridge = self.node.host();
            Ok(bridge.next_request().await.map(|r| HostRequest {
                id: i64::try_from(r.id).unwrap_or(i64::MAX),
                kind: r.kind.into(),
                params: r.params,
            }))
        })
        .await
    }

    /// Answer host request `id`: `kind` is `event` (more follow), `result` (final) or `error`
    /// (final; `code` is a stable `CLAWMATRIX_*` code or the host's own, `data` the message).
    /// Returns `false` when the call is gone (cancelled or answered before).
    #[napi(
        ts_args_type = "id: number, kind: HostReplyKind, data: unknown, code?: string | undefined | null"
    )]
    pub fn host_reply(
        &self,
        id: i64,
        kind: String,
        data: serde_json::Value,
        code: Option<String>,
    ) -> napi::Result<bool, ErrorCode> {
        use crate::host::HostReply;
        guarded("hostReply", || {
            let kind = match kind.as_str() {
                "event" => HostReplyKind::Event,
                "result" => HostReplyKind::Result,
                "error" => HostReplyKind::Error,
                other => {
                    return Err(CoreError::new(
                        ErrorCode::InvalidArgument,
                        format!("hostReply: kind: expected event, result or error, got {other:?}"),
                    ))
                }
            };
            let reply = match kind {
                HostReplyKind::Event => Ok(HostReply::Event(data)),
                HostReplyKind::Result => Ok(HostReply::Result(data)),
                HostReplyKind::Error => Err(CoreError::new(
                    code.as_deref()
                        .and_then(ErrorCode::parse)
                        .unwrap_or(ErrorCode::Remote),
                    match data {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    },
                )),
            };
            let Ok(id) = u64::try_from(id) else {
                return Ok(false);
            };
            Ok(self.node.host().reply(id, reply))
        })
    }

    /// Round-trip time in ms of one `mesh.echo` request with a 64-byte payload to `nodeId`
    /// (for benchmarks and diagnostics). `timeoutMs` defaults to 5000. Rejects with the core's
    /// coded error (`CLAWMATRIX_NOT_RUNNING`, `_UNREACHABLE`, `_TIMEOUT`, ...).
    #[napi(ts_return_type = "Promise<number>")]
    pub async fn mesh_ping(&self, node_id: String, timeout_ms: Option<u32>) -> Outcome<f64> {
        guarded_async("meshPing", async {
            let timeout = std::time::Duration::from_millis(u64::from(timeout_ms.unwrap_or(5000)));
            let t0 = std::time::Instant::now();
            self.node
                .request(&node_id, crate::rpc::METHOD_ECHO, vec![0x5a; 64], timeout)
                .await?;
            Ok(t0.elapsed().as_secs_f64() * 1000.0)
        })
        .await
    }

    /// Forget the key this node trusts for `nodeId` (after checking with its operator that it
    /// was reinstalled with a new key): its next key is trusted on first use. Resolves to what
    /// happened (`reset`: whether a key was trusted, `message` for the operator); rejects with
    /// `CLAWMATRIX_INVALID_ARGUMENT` (not a node id) or `CLAWMATRIX_NOT_RUNNING`.
    #[napi(ts_return_type = "Promise<TrustReset>")]
    pub async fn trust_reset(&self, node_id: String) -> Outcome<status::TrustReset> {
        guarded_async("trustReset", async {
            let reset = self.node.reset_trust(&node_id).await?;
            let message = if reset {
                format!(
                    "trust of {node_id} reset: its next key is trusted on first use (a pin in \
                     identity.pins still applies)"
                )
            } else {
                format!("no key was trusted for {node_id}; nothing to reset")
            };
            Ok(status::TrustReset {
                message,
                node_id,
                reset,
            })
        })
        .await
    }

    /// Start one of the seven tools. Arguments are validated first; pull the steps with
    /// `ToolCall.next()`: zero or more `progress`, then one `result` (or a rejection with the
    /// call's coded error), then `null`.
    #[napi(ts_args_type = "name: string, args: unknown, caller?: ToolCaller | undefined | null")]
    pub fn invoke_tool(
        &self,
        name: String,
        args: serde_json::Value,
        caller: Option<ToolCaller>,
    ) -> napi::Result<ToolCall, ErrorCode> {
        guarded("invokeTool", || {
            let caller = caller
                .map(|c| crate::tools::remote::ToolCaller {
                    agent_id: c.agent_id,
                    session_key: c.session_key,
                })
                .unwrap_or_default();
            Ok(ToolCall {
                inner: self.node.start_tool(&name, &args, caller),
            })
        })
    }
}

/// A running tool call.
#[napi]
pub struct ToolCall {
    inner: crate::tools::remote::ToolCall,
}

#[napi]
impl ToolCall {
    /// The next step, or `null` after the last one. Rejects with the call's coded error when
    /// the tool failed (argument, policy, route, remote error...).
    #[napi(ts_return_type = "Promise<ToolStep | null>")]
    pub async fn next(&self) -> Outcome<Option<ToolStep>> {
        use crate::tools::remote::ToolEvent;
        guarded_async("ToolCall.next", async {
            Ok(match self.inner.next().await {
                None => None,
                Some(Ok(ToolEvent::Progress { text, details })) => Some(ToolStep {
                    kind: ToolStepKind::Progress,
                    text: JsText(text),
                    details,
                }),
                Some(Ok(ToolEvent::Result(out))) => Some(ToolStep {
                    kind: ToolStepKind::Result,
                    text: JsText(out.text),
                    details: out.details,
                }),
                Some(Err(e)) => return Err(e),
            })
        })
        .await
    }

    /// Cancel the call (a remote exec's whole process tree is killed). Idempotent.
    #[napi]
    pub fn cancel(&self) -> napi::Result<(), ErrorCode> {
        guarded("ToolCall.cancel", || {
            self.inner.cancel();
            Ok(())
        })
    }
}

/// `start()` on the libuv pool.
pub struct StartTask {
    node: Arc<Node>,
    opts: CoreStartOptions,
}

impl Task for StartTask {
    /// The core's result travels to [`Task::resolve`], which builds the coded error on the JS
    /// thread.
    type Output = crate::error::Result<crate::app::StartInfo>;
    type JsValue = StartInfo;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(caught("start", || {
            self.node.events().reopen();
            self.node.start(&self.opts)
        }))
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<StartInfo> {
        match out {
            Ok(out) => Ok(StartInfo {
                listen_addr: out.listen_addr.map(|a| a.to_string()),
                proxy_addr: out.proxy_addr.to_string(),
            }),
            Err(e) => Err(coded_js_error(env.raw(), e)),
        }
    }
}

/// `stop()` on the libuv pool.
pub struct StopTask {
    node: Arc<Node>,
}

impl Task for StopTask {
    type Output = crate::error::Result<()>;
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(caught("stop", || {
            self.node.stop();
            Ok(())
        }))
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<()> {
        out.map_err(|e| coded_js_error(env.raw(), e))
    }
}

/// `f`'s result, or a panic in it as `CLAWMATRIX_INTERNAL` (for work off the JS thread, whose
/// error is built into a JS error later).
fn caught<T>(what: &str, f: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panicked(what, p)))
}

/// Entry points that panic, for the tests that prove a panic reaches JS as
/// `CLAWMATRIX_INTERNAL` instead of aborting the process. Debug builds only (the test suite's
/// build): a release build has none of them, and they are not in the typings.
#[cfg(debug_assertions)]
pub mod debug_panic {
    use super::*;

    /// Throws: a panic in a synchronous method.
    #[napi(js_name = "__debugPanic", skip_typescript)]
    pub fn debug_panic(message: String) -> napi::Result<(), ErrorCode> {
        guarded("__debugPanic", || panic!("{message}"))
    }

    /// Rejects: a panic while an async method is polled (after its first await).
    #[napi(js_name = "__debugPanicAsync", skip_typescript)]
    pub async fn debug_panic_async(message: String) -> Outcome<()> {
        guarded_async("__debugPanicAsync", async {
            tokio::task::yield_now().await;
            if !message.is_empty() {
                panic!("{message}");
            }
            Ok(())
        })
        .await
    }

    /// Rejects: a panic in a task on the libuv pool.
    #[napi(js_name = "__debugPanicTask", skip_typescript)]
    pub fn debug_panic_task(message: String) -> AsyncTask<PanicTask> {
        AsyncTask::new(PanicTask(message))
    }

    pub struct PanicTask(String);

    impl Task for PanicTask {
        type Output = crate::error::Result<()>;
        type JsValue = ();

        fn compute(&mut self) -> napi::Result<Self::Output> {
            Ok(caught("__debugPanicTask", || panic!("{}", self.0)))
        }

        fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<()> {
            out.map_err(|e| coded_js_error(env.raw(), e))
        }
    }
}

#[cfg(test)]
mod tests {
    /// The JS union of host request kinds (generated from [`super::HostRequestKind`]'s values
    /// into `native/index.d.ts`, whose drift `npm test` checks) names exactly the core's kinds.
    #[test]
    fn the_typed_host_request_kinds_are_the_core_s_kinds() {
        let dts = include_str!("../native/index.d.ts");
        let line = dts
            .lines()
            .find(|l| l.starts_with("export type HostRequestKind ="))
            .unwrap_or_default();
        let mut typed: Vec<&str> = line.split('\'').skip(1).step_by(2).collect::<Vec<_>>();
        let mut core: Vec<&str> = crate::host::HostKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        typed.sort_unstable();
        core.sort_unstable();
        assert_eq!(typed, core, "{line}");
    }
}

//! The only `#[napi]` code: the `ClawMatrixNode` handle class, plain-data objects, and the
//! mapping of [`crate::error::Error`] to JS errors whose `code` is the stable [`ErrorCode`].
//!
//! Threading: `start`/`stop` bind and release sockets and may wait for tasks to drain, so they
//! run as `AsyncTask`s on the libuv pool (short, bounded). Waiting calls (`nextEvent`,
//! `ToolCall.next`) are `async` on napi's tokio runtime, so they never occupy a libuv thread.
//! Errors from async waits are delivered as `{ kind: "error", code, message }` steps, because a
//! rejected napi future cannot carry a custom `code`; the shim turns that step into a thrown
//! error with the same code.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::app::{Node, StartOptions as CoreStartOptions};
use crate::config::Config;
use crate::error::{Error as CoreError, ErrorCode};

fn js_err(e: CoreError) -> napi::Error<ErrorCode> {
    napi::Error::new(e.code, e.message)
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
#[napi]
pub fn validate_config(config: serde_json::Value) -> ConfigCheck {
    let conv = |issues: Vec<crate::config::ConfigIssue>| {
        issues
            .into_iter()
            .map(|i| ConfigIssue {
                path: i.path,
                reason: i.reason,
            })
            .collect()
    };
    match Config::from_json(&config) {
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

/// The seven tool definitions: `[{ name, label, description, parameters, sideEffecting }]`.
#[napi]
pub fn tool_definitions() -> serde_json::Value {
    crate::tools::catalog::definitions_json()
}

/// Render a status report (as returned by `clawmatrix.status`) as the readable CLI summary.
#[napi]
pub fn render_status_text(status: serde_json::Value) -> napi::Result<String, ErrorCode> {
    crate::status::render_value(&status).map_err(js_err)
}

/// Merge the mesh's providers (`desired`, from a `providers.sync` host request) into the current
/// `models.providers` object of OpenClaw's config: `{ providers, changed, added, updated,
/// removed, conflicts }`. Entries the user wrote are never changed.
#[napi]
pub fn plan_providers(
    current: serde_json::Value,
    desired: serde_json::Value,
) -> napi::Result<serde_json::Value, ErrorCode> {
    let empty = serde_json::Map::new();
    let current = match &current {
        serde_json::Value::Null => &empty,
        serde_json::Value::Object(m) => m,
        other => {
            return Err(napi::Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "planProviders: current: expected an object, got {}",
                    crate::error::json_type_name(other)
                ),
            ))
        }
    };
    let serde_json::Value::Object(desired) = &desired else {
        return Err(napi::Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "planProviders: desired: expected an object, got {}",
                crate::error::json_type_name(&desired)
            ),
        ));
    };
    Ok(crate::proxy::providers::plan(current, desired).to_json())
}

/// The core's version.
#[napi]
pub fn core_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
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

/// A log line or event for the host logger.
#[napi(object)]
pub struct NodeEvent {
    /// `debug` | `info` | `warn` | `error`
    pub level: String,
    pub message: String,
}

/// One step of a tool call: `progress` (partial output), `result` (final), or `error`.
#[napi(object)]
pub struct ToolStep {
    /// `progress` | `result` | `error`
    pub kind: String,
    /// Text for the model (progress/result) or the error message.
    #[napi(ts_type = "string")]
    pub text: JsText,
    /// Structured details (progress/result).
    pub details: serde_json::Value,
    /// The stable error code when `kind` is `error`.
    pub code: Option<String>,
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
    /// What to do (`model.upstream`, `providers.sync`, `cancel`, …).
    pub kind: String,
    pub params: serde_json::Value,
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
    #[napi(factory)]
    pub fn create(config: serde_json::Value) -> napi::Result<Self, ErrorCode> {
        let validated = Config::from_json(&config).map_err(|e| js_err(e.into()))?;
        Ok(ClawMatrixNode {
            node: Arc::new(Node::new(validated.config)),
            warnings: validated.warnings,
        })
    }

    /// Config warnings (valid but probably not what the user meant).
    #[napi]
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        self.warnings
            .iter()
            .map(|i| ConfigIssue {
                path: i.path.clone(),
                reason: i.reason.clone(),
            })
            .collect()
    }

    /// This node's id.
    #[napi(getter)]
    pub fn node_id(&self) -> String {
        self.node.config().node_id.clone()
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
    pub fn running(&self) -> bool {
        self.node.is_running()
    }

    /// The status report (0.1.8 shape plus diagnostics).
    #[napi]
    pub fn status(&self) -> napi::Result<serde_json::Value, ErrorCode> {
        serde_json::to_value(self.node.status())
            .map_err(|e| napi::Error::new(ErrorCode::Internal, e.to_string()))
    }

    /// The peer list (the `peers` of the status report).
    #[napi]
    pub fn peers(&self) -> napi::Result<serde_json::Value, ErrorCode> {
        serde_json::to_value(self.node.status().peers)
            .map_err(|e| napi::Error::new(ErrorCode::Internal, e.to_string()))
    }

    /// The next log line or event; `null` once the node is dropped. Bounded queue, drained by
    /// pull so the core never waits for JS.
    #[napi]
    pub async fn next_event(&self) -> Option<NodeEvent> {
        let events = self.node.events();
        events.next().await.map(|e| NodeEvent {
            level: e.level.as_str().to_string(),
            message: e.message,
        })
    }

    /// End the streams the shim pulls: `nextEvent()` resolves `null` once drained, and
    /// `nextHostRequest()` resolves `null` (pending host calls fail).
    #[napi]
    pub fn close_events(&self) {
        self.node.events().close();
        self.node.host().close();
    }

    /// The next request for the host; `null` once the node stopped. The first call attaches
    /// the host (before that, core features that need the host fail with `NOT_RUNNING`).
    #[napi]
    pub async fn next_host_request(&self) -> Option<HostRequest> {
        let bridge = self.node.host();
        bridge.next_request().await.map(|r| HostRequest {
            id: i64::try_from(r.id).unwrap_or(i64::MAX),
            kind: r.kind,
            params: r.params,
        })
    }

    /// Answer host request `id`: `kind` is `event` (more follow), `result` (final) or `error`
    /// (final; `code` is a stable `CLAWMATRIX_*` code or the host's own, `message` the reason).
    /// Returns `false` when the call is gone (cancelled or answered before).
    #[napi]
    pub fn host_reply(
        &self,
        id: i64,
        kind: String,
        data: serde_json::Value,
        code: Option<String>,
    ) -> napi::Result<bool, ErrorCode> {
        use crate::host::HostReply;
        let reply = match kind.as_str() {
            "event" => Ok(HostReply::Event(data)),
            "result" => Ok(HostReply::Result(data)),
            "error" => Err(CoreError::new(
                code.as_deref()
                    .and_then(ErrorCode::parse)
                    .unwrap_or(ErrorCode::Remote),
                match data {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                },
            )),
            other => {
                return Err(napi::Error::new(
                    ErrorCode::InvalidArgument,
                    format!("hostReply: kind: expected event, result or error, got {other:?}"),
                ))
            }
        };
        let Ok(id) = u64::try_from(id) else {
            return Ok(false);
        };
        Ok(self.node.host().reply(id, reply))
    }

    /// Round-trip time in ms of one `mesh.echo` request with a 64-byte payload to `nodeId`
    /// (for benchmarks and diagnostics). `timeoutMs` defaults to 5000. Rejects with an Error
    /// whose message is `CODE: message` of the core error (not running, unreachable, timeout).
    #[napi]
    pub async fn mesh_ping(&self, node_id: String, timeout_ms: Option<u32>) -> napi::Result<f64> {
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms.unwrap_or(5000)));
        let t0 = std::time::Instant::now();
        self.node
            .request(&node_id, crate::rpc::METHOD_ECHO, vec![0x5a; 64], timeout)
            .await
            .map_err(|e| napi::Error::from_reason(format!("{}: {}", e.code, e.message)))?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// Start one of the seven tools. Arguments are validated first; pull the steps with
    /// `ToolCall.next()`: zero or more `progress`, then one `result` or `error`, then `null`.
    #[napi]
    pub fn invoke_tool(
        &self,
        name: String,
        args: serde_json::Value,
        caller: Option<ToolCaller>,
    ) -> ToolCall {
        let caller = caller
            .map(|c| crate::tools::remote::ToolCaller {
                agent_id: c.agent_id,
                session_key: c.session_key,
            })
            .unwrap_or_default();
        ToolCall {
            inner: self.node.start_tool(&name, &args, caller),
        }
    }
}

/// A running tool call.
#[napi]
pub struct ToolCall {
    inner: crate::tools::remote::ToolCall,
}

#[napi]
impl ToolCall {
    /// The next step, or `null` after the last one.
    #[napi]
    pub async fn next(&self) -> Option<ToolStep> {
        use crate::tools::remote::ToolEvent;
        Some(match self.inner.next().await? {
            Ok(ToolEvent::Progress { text, details }) => ToolStep {
                kind: "progress".into(),
                text: JsText(text),
                details,
                code: None,
            },
            Ok(ToolEvent::Result(out)) => ToolStep {
                kind: "result".into(),
                text: JsText(out.text),
                details: out.details,
                code: None,
            },
            Err(e) => ToolStep {
                kind: "error".into(),
                text: JsText(e.message),
                details: serde_json::Value::Null,
                code: Some(e.code.as_str().to_string()),
            },
        })
    }

    /// Cancel the call (a remote exec's whole process tree is killed). Idempotent.
    #[napi]
    pub fn cancel(&self) {
        self.inner.cancel();
    }
}

/// `start()` on the libuv pool.
pub struct StartTask {
    node: Arc<Node>,
    opts: CoreStartOptions,
}

impl Task for StartTask {
    type Output = crate::app::StartInfo;
    type JsValue = StartInfo;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        self.node.events().reopen();
        self.node.start(&self.opts).map_err(encode)
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> napi::Result<StartInfo> {
        Ok(StartInfo {
            listen_addr: out.listen_addr.map(|a| a.to_string()),
            proxy_addr: out.proxy_addr.to_string(),
        })
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<StartInfo> {
        Err(decode(&env, err))
    }
}

/// `stop()` on the libuv pool.
pub struct StopTask {
    node: Arc<Node>,
}

impl Task for StopTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.node.stop();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _out: ()) -> napi::Result<()> {
        Ok(())
    }
}

/// Carry a core error through napi's `Status`-typed task error: the code travels in front of
/// the message and [`decode`] rebuilds a JS error with a proper `code` on the JS thread.
fn encode(e: CoreError) -> napi::Error {
    napi::Error::new(
        Status::GenericFailure,
        format!("{}\u{0}{}", e.code, e.message),
    )
}

fn decode(env: &Env, err: napi::Error) -> napi::Error {
    let (code, message) = match err.reason.split_once('\u{0}') {
        Some((c, m)) => (c.to_string(), m.to_string()),
        None => (ErrorCode::Internal.as_str().to_string(), err.reason.clone()),
    };
    let built = env
        .create_error(napi::Error::new(Status::GenericFailure, message.clone()))
        .and_then(|mut obj| {
            obj.set_named_property("code", code.as_str())?;
            obj.into_unknown(env)
        });
    match built {
        Ok(unknown) => napi::Error::from(unknown),
        Err(_) => napi::Error::new(Status::GenericFailure, message),
    }
}

//! Remote tools end to end: the `tool.call` service on the serving node and the caller side of
//! `cluster_exec` / `cluster_read` / `cluster_write` / `cluster_tool`.
//!
//! ```text
//! caller (home)                                   server (office)
//! Node::start_tool(name, args, caller)
//!   validate (catalog) → resolve `node` (id or tags:)
//!   call_stream(dst, "tool.call", {tool, args, callerAgent?}) ──▶ ToolService
//!                                                      ToolServer::call (policy, args, audit)
//!   ToolEvent::Progress ◀── chunk {"stream":"stdout","text":…} ◀── exec output (bounded)
//!                                                      Dispatch::Gateway → POST /tools/invoke
//!   (result parts, reassembled) ◀── chunk 0x00 + ≤ 256 KiB piece of the result ◀── result > 256 KiB
//!                                        (raw: 0x01, sizes, head JSON, text bytes; or JSON)
//!   ToolEvent::Result / error ◀── end {"ok":true,"text","details"} | {"ok":false,"code","message"}
//! ToolCall::cancel() / drop ──────── cancel ─────────▶ cancel watch → every process exec started is killed
//! ```
//! A result larger than one chunk is streamed: its bytes are cut into pieces that travel as
//! chunks marked with a leading 0x00 byte (progress chunks are JSON objects), under the caller's
//! credit, and the last piece is the `end` payload; the caller reassembles at most
//! `tool_result::MAX_RESULT_BYTES`. So the hops pipeline, and other frames on the same links (a
//! heartbeat, another call) wait for at most one piece instead of the whole result. This
//! version's callers ask for the raw form (`rawResult`), which carries the text's bytes without
//! JSON escaping ([`crate::proto::tool_result`]); JSON results of 64 KiB and more are encoded and parsed
//! on the blocking pool, not on the node's worker.
//!
//! Tool outcomes (including refusals) travel inside a successful `end`, so a tool's own error
//! code (`CLAWMATRIX_DENIED`, …) reaches the caller unchanged; transport failures
//! (unreachable, timeout, busy) are mesh errors.
//!
//! # Other tools: which gateway interface
//! OpenClaw offers two ways to run a tool by name: the WS RPC `tools.invoke` and HTTP
//! `POST /tools/invoke`. Both resolve tools the same way (surface `"http"`: web_*, sessions_*,
//! memory_*, plugin tools, never the coding tools, hence the native executors). A plugin service
//! cannot use `api.runtime.gateway.request` (refused for third-party plugins), and the WS RPC
//! needs the full `connect` handshake; the HTTP endpoint is always enabled and takes the
//! gateway's shared token as `Authorization: Bearer`, so the core calls
//! `POST http://127.0.0.1:<gateway.port>/tools/invoke` with body `{"tool", "args"}` itself
//! (hyper client, answer limited to 16 MiB, 110 s timeout, cancelled with the call). HTTP 200
//! `{ok:true,result:{content,details}}` → the result; 404 → `NotFound`, 401/403 → `Denied`,
//! 400 → `InvalidArgument`, other → `Remote`, each with the gateway's own message. Without a
//! known port or token the call fails with `ConfigInvalid` naming what is missing.
//!
//! A `node` equal to this node's id is refused (`InvalidArgument`): the agent has its own
//! local tools, and the tool policy is about remote callers.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use super::exec::ExecChunk;
use super::serve::{Caller, Dispatch, ToolReply, ToolServer};
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Target;
use crate::proto::tool_result::{Assembled, Assembler, AssemblyError, RESULT_PART};
use crate::rpc::{BoxFuture, CallCtx, CallOptions, MeshClient, Service, StreamItem};
use crate::wake::{Wakes, WrappedWaker};

/// The method remote tool calls use.
pub const METHOD_TOOL_CALL: &str = "tool.call";
/// Inactivity deadline of non-exec tool calls: 120 s covers a large file over a slow link and
/// a gateway tool such as `web_fetch`.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// Slack added to an exec's own timeout for the call deadline (process start, transfer).
pub const EXEC_DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// exec's default timeout when the caller gives none (seconds; matches the executor's).
const EXEC_DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// How long the serving gateway may take to answer `POST /tools/invoke`.
pub const GATEWAY_TIMEOUT: Duration = Duration::from_secs(110);
/// Largest `POST /tools/invoke` answer read, in bytes (the reply is capped further by
/// `toolProxy.maxOutputBytes`).
pub const MAX_GATEWAY_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Progress events buffered between the exec and the stream (dropped beyond, never blocking).
const PROGRESS_QUEUE: usize = 64;
/// Steps buffered between the caller task and the consumer of a [`ToolCall`].
const STEP_QUEUE: usize = 16;

/// How this node reaches its own gateway's tool-invoke interface.
#[derive(Debug, Clone, Default)]
pub struct GatewayTarget {
    pub port: Option<u16>,
    pub token: Option<String>,
}

/// The `tool.call` service.
pub struct ToolService {
    pub server: Arc<ToolServer>,
    pub gateway: GatewayTarget,
    pub node_id: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolRequest {
    tool: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    caller_agent: Option<String>,
    /// The caller reads the raw result form ([`tool_result`]); older callers omit it.
    #[serde(default)]
    raw_result: bool,
}

impl Service for ToolService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let server = Arc::clone(&self.server);
        let gateway = self.gateway.clone();
        let node_id = self.node_id.clone();
        Box::pin(async move {
            let req: ToolRequest = serde_json::from_slice(&payload).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("tool.call: bad request: {e}"),
                )
            })?;
            let caller = Caller {
                node: ctx.from.clone(),
                agent: req.caller_agent,
            };
            let cancel = ctx.cancel.clone();
            let mut sink = ctx.sink;
            let (ptx, mut prx) = mpsc::channel::<ExecChunk>(PROGRESS_QUEUE);
            let call = server.call(&caller, &req.tool, req.args, Some(ptx), cancel.clone());
            let forward = async {
                let mut open = true;
                while let Some(c) = prx.recv().await {
                    if !open {
                        continue;
                    }
                    let line = json!({
                        "stream": c.stream.as_str(),
                        "text": String::from_utf8_lossy(&c.bytes),
                    });
                    open = sink.send(line.to_string().into_bytes()).await.is_ok();
                }
            };
            let (result, ()) = tokio::join!(call, forward);
            let result = match result {
                Ok(Dispatch::Native(reply)) => Ok(reply),
                Ok(Dispatch::Gateway(g)) => {
                    let r = gateway_invoke(&gateway, &node_id, &g.tool, &g.args, cancel).await;
                    g.finish(r)
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => super::result::send_ok(&mut sink, r.text, r.details, req.raw_result).await,
                Err(e) => super::result::send_err(&mut sink, e.code.as_str(), &e.message).await,
            }
        })
    }
}

/// Run `tool` through this node's gateway: `POST http://127.0.0.1:<port>/tools/invoke` with
/// `Authorization: Bearer <token>`.
async fn gateway_invoke(
    gw: &GatewayTarget,
    node: &str,
    tool: &str,
    args: &Value,
    mut cancel: watch::Receiver<bool>,
) -> Result<ToolReply> {
    let missing = |what: &str| {
        Error::new(
            ErrorCode::ConfigInvalid,
            format!(
                "{node} cannot run {tool} through its gateway: {what} is unknown (the gateway \
                 must expose gateway.port and gateway.auth.token, or OPENCLAW_GATEWAY_TOKEN)"
            ),
        )
    };
    let port = gw.port.ok_or_else(|| missing("the gateway port"))?;
    let token = gw
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("the gateway token"))?;
    let work = async {
        let io_err = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorCode::Io,
                format!("{node}: gateway tools.invoke on 127.0.0.1:{port}: {e}"),
            )
        };
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| io_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| io_err(&e))?;
        let conn = tokio::spawn(conn);
        let body = json!({"tool": tool, "args": args}).to_string();
        let req = Request::post("/tools/invoke")
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io_err(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_GATEWAY_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| io_err(&e))?
            .to_bytes();
        conn.abort();
        Ok::<_, Error>(gateway_reply(node, tool, status, &bytes))
    };
    tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => Err(Error::new(
            ErrorCode::Cancelled,
            format!("{tool}: cancelled by the caller"),
        )),
        r = tokio::time::timeout(GATEWAY_TIMEOUT, work) => match r {
            Ok(r) => r?,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!("{node}: the gateway did not answer {tool} within {} s", GATEWAY_TIMEOUT.as_secs()),
            )),
        },
    }
}

/// Turn the gateway's answer into the tool's reply or error, as the tool returned it.
fn gateway_reply(node: &str, tool: &str, status: StatusCode, bytes: &[u8]) -> Result<ToolReply> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_else(
        |_| json!({"ok": false, "error": {"message": String::from_utf8_lossy(bytes)}}),
    );
    if status.is_success() && v["ok"].as_bool() != Some(false) {
        let result = v.get("result").cloned().unwrap_or(Value::Null);
        let text = match result.get("content").and_then(Value::as_array) {
            Some(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            None => match &result {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        };
        let details = result.get("details").cloned().unwrap_or(Value::Null);
        return Ok(ToolReply { text, details });
    }
    let message = v["error"]["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string());
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorCode::Denied,
        StatusCode::BAD_REQUEST => ErrorCode::InvalidArgument,
        _ => ErrorCode::Remote,
    };
    Err(Error::new(
        code,
        format!(
            "{tool} on {node}'s gateway (HTTP {}): {message}",
            status.as_u16()
        ),
    ))
}

// ----- caller side ---------------------------------------------------------------------------

/// Who asked for a tool call on this node (forwarded to the serving node's audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCaller {
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
}

/// One step of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolEvent {
    /// Partial output (exec's stdout/stderr as it comes).
    Progress { text: String, details: Value },
    /// The final result.
    Result(super::ToolOutput),
}

/// A running tool call: pull its steps with [`ToolCall::next`]; [`ToolCall::cancel`] (or
/// dropping it) cancels the remote call.
pub struct ToolCall {
    rx: tokio::sync::Mutex<(mpsc::Receiver<Result<ToolEvent>>, WrappedWaker)>,
    cancel: watch::Sender<bool>,
    /// A result or an error was handed out.
    finished: std::sync::atomic::AtomicBool,
    /// How the node's steps wake the consumer (`None`: directly).
    wakes: Option<Arc<Wakes>>,
}

impl ToolCall {
    /// A call that is already over.
    pub fn ready(r: Result<ToolEvent>) -> ToolCall {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(r);
        let (cancel, _) = watch::channel(false);
        ToolCall::new(rx, cancel)
    }

    pub(crate) fn new(
        rx: mpsc::Receiver<Result<ToolEvent>>,
        cancel: watch::Sender<bool>,
    ) -> ToolCall {
        ToolCall {
            rx: tokio::sync::Mutex::new((rx, WrappedWaker::default())),
            cancel,
            finished: std::sync::atomic::AtomicBool::new(false),
            wakes: None,
        }
    }

    /// Wake the consumer through `wakes` (the node's tool-step boundary, `super::wake`).
    pub(crate) fn with_wakes(mut self, wakes: Arc<Wakes>) -> ToolCall {
        self.wakes = Some(wakes);
        self
    }

    /// The next step; `None` after the result or an error. A call whose task vanished without
    /// a result (the node stopped) ends with a `Cancelled` error.
    pub async fn next(&self) -> Option<Result<ToolEvent>> {
        use std::sync::atomic::Ordering;
        if self.finished.load(Ordering::Acquire) {
            return None;
        }
        let mut guard = self.rx.lock().await;
        let (rx, waker) = &mut *guard;
        let wakes = self.wakes.as_ref();
        let step = std::future::poll_fn(|cx| waker.poll(wakes, cx, |cx| rx.poll_recv(cx))).await;
        drop(guard);
        let step = step.unwrap_or_else(|| {
            Err(Error::new(
                ErrorCode::Cancelled,
                "the tool call ended without a result (the clawmatrix service stopped)",
            ))
        });
        if !matches!(step, Ok(ToolEvent::Progress { .. })) {
            self.finished.store(true, Ordering::Release);
        }
        Some(step)
    }

    /// Cancel the call (for exec, every process the command started is killed). Idempotent.
    pub fn cancel(&self) {
        let _ = self.cancel.send(true);
    }
}

impl Drop for ToolCall {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// What a `cluster_*` tool asks the serving node to run.
struct RemoteRequest {
    node: String,
    tool: String,
    args: Value,
    deadline: Duration,
}

/// Map a validated `cluster_*` call to its remote tool.
fn remote_request(name: &str, a: &Map<String, Value>) -> Option<RemoteRequest> {
    let s = |k: &str| a.get(k).and_then(Value::as_str).map(String::from);
    let node = s("node")?;
    let (tool, args, deadline) = match name {
        "cluster_exec" => {
            let timeout = a.get("timeout").and_then(Value::as_u64);
            let mut args = Map::new();
            for k in ["command", "workdir", "timeout"] {
                if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
                    args.insert(k.to_string(), v.clone());
                }
            }
            let secs = timeout.unwrap_or(EXEC_DEFAULT_TIMEOUT_SECS);
            let deadline = Duration::from_secs(secs) + EXEC_DEADLINE_SLACK;
            ("exec".to_string(), Value::Object(args), deadline)
        }
        "cluster_read" => ("read".into(), json!({"path": s("path")?}), TOOL_DEADLINE),
        "cluster_write" => (
            "write".into(),
            json!({"path": s("path")?, "content": s("content")?}),
            TOOL_DEADLINE,
        ),
        "cluster_tool" => {
            let tool = s("tool")?;
            let args = a.get("args").cloned().unwrap_or_else(|| json!({}));
            let deadline = if tool == "exec" {
                let secs = args
                    .get("timeout")
                    .or_else(|| args.get("timeoutSeconds"))
                    .and_then(Value::as_u64)
                    .unwrap_or(EXEC_DEFAULT_TIMEOUT_SECS);
                Duration::from_secs(secs) + EXEC_DEADLINE_SLACK
            } else {
                TOOL_DEADLINE
            };
            (tool, args, deadline)
        }
        _ => return None,
    };
    Some(RemoteRequest {
        node,
        tool,
        args,
        deadline,
    })
}

/// Start a remote `cluster_*` call on the node's runtime.
pub(crate) fn start_remote(
    runtime: &tokio::runtime::Handle,
    mesh: MeshClient,
    self_id: String,
    name: &str,
    args: &Map<String, Value>,
    caller: ToolCaller,
) -> ToolCall {
    let Some(req) = remote_request(name, args) else {
        return ToolCall::ready(Err(Error::new(
            ErrorCode::Internal,
            format!("{name}: not a remote tool"),
        )));
    };
    let (tx, rx) = mpsc::channel(STEP_QUEUE);
    let (cancel, cancel_rx) = watch::channel(false);
    let name = name.to_string();
    runtime.spawn(async move {
        let r = run_remote(&mesh, &self_id, &name, req, caller, &tx, cancel_rx).await;
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    });
    ToolCall::new(rx, cancel)
}

async fn run_remote(
    mesh: &MeshClient,
    self_id: &str,
    name: &str,
    req: RemoteRequest,
    caller: ToolCaller,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    mut cancel: watch::Receiver<bool>,
) -> Result<()> {
    let target = Target::parse(&req.node).map_err(|e| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("{name}.node: {e} (give a node id or tags:a,b)"),
        )
    })?;
    let candidates: Vec<String> = match &target {
        Target::Name(n) if n == self_id => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{name}.node: {n} is this node; use the local tools here (remote tools run \
                     on other mesh nodes)"
                ),
            ))
        }
        Target::Name(n) => vec![n.clone()],
        Target::Tags(tags) => {
            let mut nodes: Vec<String> = Vec::new();
            for c in mesh.resolve(target.clone(), Vec::new()).await {
                if !nodes.contains(&c.node) {
                    nodes.push(c.node);
                }
            }
            if nodes.is_empty() {
                return Err(Error::new(
                    ErrorCode::Unreachable,
                    format!(
                        "{name}: no reachable node matches tags:{} from {self_id}",
                        tags.join(",")
                    ),
                ));
            }
            nodes
        }
    };
    let mut payload = json!({"tool": req.tool, "args": req.args, "rawResult": true});
    if let Some(agent) = &caller.agent_id {
        payload["callerAgent"] = Value::String(agent.clone());
    }
    let payload = payload.to_string().into_bytes();
    let opts = CallOptions {
        deadline: req.deadline,
    };
    // Only a node that was unreachable before anything was sent is skipped for the next one:
    // a call that reached a node may have run there.
    let mut last_err = None;
    let mut opened = None;
    for node in &candidates {
        match mesh
            .open_stream(node, METHOD_TOOL_CALL, payload.clone(), opts.deadline)
            .await
        {
            Ok(s) => {
                opened = Some((node.clone(), s));
                break;
            }
            Err(e) if e.code == ErrorCode::Unreachable => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    let Some((node, mut stream)) = opened else {
        let e = last_err.map(|e| e.message).unwrap_or_default();
        return Err(Error::new(
            ErrorCode::Unreachable,
            format!(
                "{name}: node {} is not reachable from {self_id} (unknown or cut off): {e}",
                req.node
            ),
        ));
    };
    // Pieces of a streamed result (see `tool_result`), bounded by MAX_RESULT_BYTES; a raw text
    // is assembled behind the line that names where the tool ran.
    let mut result = Assembler::new(format!("[{} ran on {node}]\n", req.tool));
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => {
                stream.cancel();
                return Err(Error::new(
                    ErrorCode::Cancelled,
                    format!("{name} on {node}: cancelled"),
                ));
            }
            item = stream.next() => item,
        };
        match item {
            None => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("{name} on {node}: the stream ended without a result"),
                ))
            }
            Some(Err(e)) => {
                return Err(Error::new(
                    e.code,
                    format!("{name} on {node}: {}", e.message),
                ))
            }
            Some(Ok(StreamItem::Chunk(bytes))) if bytes.first() == Some(&RESULT_PART) => {
                if let Err(e) = result.push(&bytes[1..]) {
                    stream.cancel();
                    return Err(assembly_error(name, &node, e));
                }
            }
            Some(Ok(StreamItem::Chunk(bytes))) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let text = v["text"].as_str().unwrap_or_default().to_string();
                let details = json!({
                    "node": node,
                    "tool": req.tool,
                    "stream": v["stream"],
                });
                // Backpressure: waiting here stops reading the stream, which stops the credit.
                if tx
                    .send(Ok(ToolEvent::Progress { text, details }))
                    .await
                    .is_err()
                {
                    stream.cancel();
                    return Ok(());
                }
            }
            Some(Ok(StreamItem::End(bytes))) => {
                let finished = match result.push(&bytes) {
                    Ok(()) => result.finish(),
                    Err(e) => Err(e),
                };
                let (details, text) = match finished {
                    Err(e) => return Err(assembly_error(name, &node, e)),
                    Ok(Assembled::Raw {
                        head,
                        text,
                        prefix_len,
                    }) => super::result::decode_raw(head, text, prefix_len)
                        .await
                        .map_err(|e| unreadable(name, &node, e))?,
                    Ok(Assembled::Json { bytes, prefix }) => {
                        let v = super::result::decode_json(bytes)
                            .await
                            .map_err(|e| unreadable(name, &node, e))?;
                        if v.ok != Some(true) {
                            let code = v
                                .code
                                .as_deref()
                                .and_then(ErrorCode::parse)
                                .unwrap_or(ErrorCode::Remote);
                            let msg = v.message.as_deref().unwrap_or("failed");
                            return Err(Error::new(code, format!("{name} on {node}: {msg}")));
                        }
                        let mut full = prefix;
                        full.push_str(v.text.as_deref().unwrap_or_default());
                        (v.details, full)
                    }
                };
                let mut d = Map::new();
                d.insert("node".into(), Value::String(node.clone()));
                d.insert("tool".into(), Value::String(req.tool.clone()));
                d.insert("result".into(), details);
                let out = super::ToolOutput {
                    text,
                    details: Value::Object(d),
                };
                let _ = tx.send(Ok(ToolEvent::Result(out))).await;
                return Ok(());
            }
        }
    }
}

fn unreadable(name: &str, node: &str, e: String) -> Error {
    Error::new(
        ErrorCode::Remote,
        format!("{name} on {node}: unreadable result: {e}"),
    )
}

/// A result that could not be put together: too large (refused, the call is cancelled) or
/// malformed.
fn assembly_error(name: &str, node: &str, e: AssemblyError) -> Error {
    match e {
        AssemblyError::TooLarge(m) => {
            Error::new(ErrorCode::TooLarge, format!("{name} on {node}: {m}"))
        }
        AssemblyError::Malformed(m) => unreadable(name, node, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps produced on the node faster than once per tick wake their consumer (on another
    /// runtime, as napi's is) through the boundary's pump, and none is lost or reordered.
    #[test]
    fn a_busy_tool_call_wakes_its_consumer_through_the_pump_and_loses_nothing() {
        const STEPS: usize = 500;
        let node_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let consumer_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let wakes = Wakes::new();
        let pump = node_rt.spawn(Arc::clone(&wakes).pump());
        let (tx, rx) = mpsc::channel(STEP_QUEUE);
        let (cancel, _) = watch::channel(false);
        let call = ToolCall::new(rx, cancel).with_wakes(Arc::clone(&wakes));
        let producer = node_rt.spawn(async move {
            for i in 0..STEPS {
                let step = ToolEvent::Progress {
                    text: i.to_string(),
                    details: Value::Null,
                };
                tx.send(Ok(step)).await.unwrap();
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let done = ToolEvent::Result(super::super::ToolOutput {
                text: "done".into(),
                details: Value::Null,
            });
            tx.send(Ok(done)).await.unwrap();
        });
        let got = consumer_rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut got = Vec::new();
                while let Some(step) = call.next().await {
                    match step.unwrap() {
                        ToolEvent::Progress { text, .. } => {
                            got.push(text.parse::<usize>().unwrap())
                        }
                        ToolEvent::Result(_) => break,
                    }
                }
                got
            })
            .await
            .expect("every step within 10 s")
        });
        assert_eq!(got, (0..STEPS).collect::<Vec<_>>());
        node_rt.block_on(producer).unwrap();
        let (direct, coalesced) = wakes.counts();
        assert!(coalesced > 0, "no wake was coalesced ({direct} direct)");
        pump.abort();
    }
}

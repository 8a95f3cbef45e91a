//! The calling side of `cluster_exec` / `cluster_read` / `cluster_write` / `cluster_tool`: map
//! the agent's call to a remote tool, resolve its `node` (an id or `tags:`), open `tool.call` on
//! the first reachable candidate (fail-over only before the call reached a node), then turn the
//! streamed steps into [`ToolEvent`]s.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use super::steps::{ToolCall, ToolEvent};
use super::{EXEC_DEADLINE_SLACK, METHOD_TOOL_CALL, STEP_QUEUE, TOOL_DEADLINE};
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Target;
use crate::proto::tool_result::{Assembled, Assembler, AssemblyError, RESULT_PART};
use crate::rpc::{CallOptions, CallStream, MeshClient, StreamItem};
use crate::tools::ToolOutput;

/// Who asked for a tool call on this node (forwarded to the serving node's audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCaller {
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
}

/// What a `cluster_*` tool asks the serving node to run.
struct RemoteRequest {
    node: String,
    tool: String,
    args: Value,
    deadline: Duration,
}

/// The call deadline of a remote exec: its own timeout (`timeout` or `timeoutSeconds`, the
/// executor's default when absent) plus slack. Capped at the executor's maximum, which the
/// serving node enforces anyway: a caller's `timeout` near `u64::MAX` must neither overflow the
/// addition (a panic on the tool call's path) nor hold the call open for centuries.
fn exec_deadline(args: &Value) -> Duration {
    let secs = args
        .get("timeout")
        .or_else(|| args.get("timeoutSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(crate::tools::exec::DEFAULT_TIMEOUT_SECS)
        .min(crate::tools::exec::MAX_TIMEOUT_SECS);
    Duration::from_secs(secs) + EXEC_DEADLINE_SLACK
}

/// Map a validated `cluster_*` call to its remote tool.
fn remote_request(name: &str, a: &Map<String, Value>) -> Option<RemoteRequest> {
    let s = |k: &str| a.get(k).and_then(Value::as_str).map(String::from);
    let node = s("node")?;
    let (tool, args, deadline) = match name {
        "cluster_exec" => {
            let mut args = Map::new();
            for k in ["command", "workdir", "timeout"] {
                if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
                    args.insert(k.to_string(), v.clone());
                }
            }
            let args = Value::Object(args);
            let deadline = exec_deadline(&args);
            ("exec".to_string(), args, deadline)
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
                exec_deadline(&args)
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
        // The caller's cancel wins at every step, not only while a stream is open: when it
        // comes first the call is dropped wherever it is (resolving, opening: a stream already
        // open is cancelled on the server by its drop), and nothing is started remotely after.
        let mut cancelled = cancel_rx.clone();
        let r = tokio::select! {
            biased;
            Ok(_) = cancelled.wait_for(|c| *c) => Err(Error::new(
                ErrorCode::Cancelled,
                format!("{name}: cancelled by the caller"),
            )),
            r = run_remote(&mesh, &self_id, &name, req, caller, &tx, cancel_rx) => r,
        };
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    });
    ToolCall::new(rx, cancel)
}

/// The caller task: resolve, open, relay. An `Err` is the call's last step.
async fn run_remote(
    mesh: &MeshClient,
    self_id: &str,
    name: &str,
    req: RemoteRequest,
    caller: ToolCaller,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    cancel: watch::Receiver<bool>,
) -> Result<()> {
    let candidates = candidates(mesh, self_id, name, &req.node).await?;
    let mut payload = json!({"tool": req.tool, "args": req.args, "rawResult": true});
    if let Some(agent) = &caller.agent_id {
        payload["callerAgent"] = Value::String(agent.clone());
    }
    let payload = payload.to_string().into_bytes();
    let (node, stream) = open_first(mesh, self_id, name, &req, &candidates, payload).await?;
    // Pieces of a streamed result (see `tool_result`), bounded by MAX_RESULT_BYTES; a raw text
    // is assembled behind the line that names where the tool ran.
    let result = Assembler::new(format!("[{} ran on {node}]\n", req.tool));
    let running = RunningCall {
        name,
        tool: &req.tool,
        node,
        stream,
        result,
    };
    running.relay(tx, cancel).await
}

/// The nodes `node` names, in the order they are tried: the node itself, or every reachable
/// node with the tags (best route first). This node is refused.
async fn candidates(
    mesh: &MeshClient,
    self_id: &str,
    name: &str,
    node: &str,
) -> Result<Vec<String>> {
    let target = Target::parse(node).map_err(|e| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("{name}.node: {e} (give a node id or tags:a,b)"),
        )
    })?;
    match &target {
        Target::Name(n) if n == self_id => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "{name}.node: {n} is this node; use the local tools here (remote tools run \
                 on other mesh nodes)"
            ),
        )),
        Target::Name(n) => Ok(vec![n.clone()]),
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
            Ok(nodes)
        }
    }
}

/// Opens `tool.call` on the first candidate that is reachable. Only a node that was
/// unreachable before anything was sent is skipped for the next one: a call that reached a
/// node may have run there.
async fn open_first(
    mesh: &MeshClient,
    self_id: &str,
    name: &str,
    req: &RemoteRequest,
    candidates: &[String],
    payload: Vec<u8>,
) -> Result<(String, CallStream)> {
    let opts = CallOptions {
        deadline: req.deadline,
    };
    let mut last_err = None;
    for node in candidates {
        match mesh
            .open_stream(node, METHOD_TOOL_CALL, payload.clone(), opts.deadline)
            .await
        {
            Ok(s) => return Ok((node.clone(), s)),
            Err(e) if e.code == ErrorCode::Unreachable => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    let e = last_err.map(|e| e.message).unwrap_or_default();
    Err(Error::new(
        ErrorCode::Unreachable,
        format!(
            "{name}: node {} is not reachable from {self_id} (unknown or cut off): {e}",
            req.node
        ),
    ))
}

/// A `tool.call` open on the node that runs it: its stream, and the result being put
/// together from the pieces that stream carries.
struct RunningCall<'a> {
    /// The `cluster_*` tool the agent called.
    name: &'a str,
    /// The tool that runs on the node.
    tool: &'a str,
    node: String,
    stream: CallStream,
    result: Assembler,
}

impl RunningCall<'_> {
    /// Hands progress to `tx` as it arrives and ends with the result (or an error); a cancel,
    /// or a consumer that went away, cancels the stream.
    async fn relay(
        mut self,
        tx: &mpsc::Sender<Result<ToolEvent>>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.wait_for(|c| *c) => {
                    self.stream.cancel();
                    return Err(Error::new(
                        ErrorCode::Cancelled,
                        format!("{} on {}: cancelled", self.name, self.node),
                    ));
                }
                item = self.stream.next() => item,
            };
            match item {
                None => {
                    return Err(Error::new(
                        ErrorCode::Internal,
                        format!(
                            "{} on {}: the stream ended without a result",
                            self.name, self.node
                        ),
                    ))
                }
                Some(Err(e)) => {
                    return Err(Error::new(
                        e.code,
                        format!("{} on {}: {}", self.name, self.node, e.message),
                    ))
                }
                Some(Ok(StreamItem::Chunk(bytes))) if bytes.first() == Some(&RESULT_PART) => {
                    if let Err(e) = self.result.push(&bytes[1..]) {
                        self.stream.cancel();
                        return Err(assembly_error(self.name, &self.node, e));
                    }
                }
                Some(Ok(StreamItem::Chunk(bytes))) => {
                    if !self.progress(tx, &bytes).await {
                        self.stream.cancel();
                        return Ok(());
                    }
                }
                Some(Ok(StreamItem::End(bytes))) => return self.finish(&bytes, tx).await,
            }
        }
    }

    /// Hands one progress chunk (`{"stream","text"}`) to the consumer; `false` when the
    /// consumer is gone. Backpressure: waiting here stops reading the stream, which stops the
    /// credit.
    async fn progress(&self, tx: &mpsc::Sender<Result<ToolEvent>>, bytes: &[u8]) -> bool {
        let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let text = v["text"].as_str().unwrap_or_default().to_string();
        let details = json!({
            "node": self.node,
            "tool": self.tool,
            "stream": v["stream"],
        });
        tx.send(Ok(ToolEvent::Progress { text, details }))
            .await
            .is_ok()
    }

    /// The `end` payload: the last piece of the result. The assembled result is decoded and
    /// handed to the consumer with where it ran.
    async fn finish(self, end: &[u8], tx: &mpsc::Sender<Result<ToolEvent>>) -> Result<()> {
        let (name, node) = (self.name, self.node.as_str());
        let mut result = self.result;
        let finished = match result.push(end) {
            Ok(()) => result.finish(),
            Err(e) => Err(e),
        };
        let (details, text) = match finished {
            Err(e) => return Err(assembly_error(name, node, e)),
            Ok(Assembled::Raw {
                head,
                text,
                prefix_len,
            }) => crate::tools::result::decode_raw(head, text, prefix_len)
                .await
                .map_err(|e| unreadable(name, node, e))?,
            Ok(Assembled::Json { bytes, prefix }) => json_result(name, node, bytes, prefix).await?,
        };
        let mut d = Map::new();
        d.insert("node".into(), Value::String(self.node.clone()));
        d.insert("tool".into(), Value::String(self.tool.to_string()));
        d.insert("result".into(), details);
        let out = ToolOutput {
            text,
            details: Value::Object(d),
        };
        let _ = tx.send(Ok(ToolEvent::Result(out))).await;
        Ok(())
    }
}

/// A result in the JSON form: `(details, text behind the prefix)`, or the tool's own error
/// with its code.
async fn json_result(
    name: &str,
    node: &str,
    bytes: Vec<u8>,
    prefix: String,
) -> Result<(Value, String)> {
    let v = crate::tools::result::decode_json(bytes)
        .await
        .map_err(|e| unreadable(name, node, e))?;
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
    Ok((v.details, full))
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

    #[test]
    fn an_exec_timeout_beyond_the_executor_s_maximum_caps_the_deadline_instead_of_panicking() {
        let max = Duration::from_secs(crate::tools::exec::MAX_TIMEOUT_SECS) + EXEC_DEADLINE_SLACK;
        for name in ["cluster_exec", "cluster_tool"] {
            let a = json!({
                "node": "office", "command": "true", "timeout": u64::MAX,
                "tool": "exec", "args": {"command": "true", "timeout": u64::MAX}
            });
            let a = a.as_object().cloned().unwrap_or_default();
            let req = remote_request(name, &a).expect("a remote tool");
            assert_eq!(req.deadline, max, "{name}");
        }
        let a = json!({"node": "office", "command": "true"});
        let req = remote_request("cluster_exec", a.as_object().expect("object")).expect("exec");
        let default = crate::tools::exec::DEFAULT_TIMEOUT_SECS;
        assert_eq!(
            req.deadline,
            Duration::from_secs(default) + EXEC_DEADLINE_SLACK
        );
    }
}

//! The serving side of `tool.call`: decode the request, run the tool through
//! [`ToolServer::call`] (exec output forwarded as progress chunks), hand gateway tools to
//! [`super::gateway`], and send the outcome as the call's `end`.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::gateway::{gateway_invoke, GatewayTarget};
use super::PROGRESS_QUEUE;
use crate::error::{Error, ErrorCode, Result};
use crate::rpc::{BoxFuture, CallCtx, ChunkSink, Service};
use crate::tools::exec::ExecChunk;
use crate::tools::serve::{Caller, Dispatch, ToolServer};

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
    /// The caller reads the raw result form ([`crate::proto::tool_result`]); older callers
    /// omit it.
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
            let (ptx, prx) = mpsc::channel::<ExecChunk>(PROGRESS_QUEUE);
            let call = server.call(&caller, &req.tool, req.args, Some(ptx), cancel.clone());
            let (result, ()) = tokio::join!(call, forward_progress(prx, &mut sink));
            let result = match result {
                Ok(Dispatch::Native(reply)) => Ok(reply),
                Ok(Dispatch::Gateway(g)) => {
                    let r = gateway_invoke(&gateway, &node_id, &g.tool, &g.args, cancel).await;
                    g.finish(r)
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => {
                    crate::tools::result::send_ok(&mut sink, r.text, r.details, req.raw_result)
                        .await
                }
                Err(e) => {
                    crate::tools::result::send_err(&mut sink, e.code.as_str(), &e.message).await
                }
            }
        })
    }
}

/// Sends each exec output chunk as a progress chunk `{"stream","text"}` until the tool is
/// done; once the stream is closed the rest is drained unsent.
async fn forward_progress(mut chunks: mpsc::Receiver<ExecChunk>, sink: &mut ChunkSink) {
    let mut open = true;
    while let Some(c) = chunks.recv().await {
        if !open {
            continue;
        }
        let line = json!({
            "stream": c.stream.as_str(),
            "text": String::from_utf8_lossy(&c.bytes),
        });
        open = sink.send(line.to_string().into_bytes()).await.is_ok();
    }
}

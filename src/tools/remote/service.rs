//! The serving side of `tool.call`: decode the request, run the tool through
//! [`ToolServer::call`] (exec output forwarded as progress chunks), hand gateway tools to
//! [`super::gateway`], and send the outcome as the call's `end`.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::gateway::{gateway_deadline, gateway_invoke, GatewayTarget};
use super::PROGRESS_QUEUE;
use crate::error::{Error, ErrorCode, Result};
use crate::rpc::{BoxFuture, CallCtx, ChunkSink, Service};
use crate::tools::exec::{ExecChunk, StreamKind};
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
                key: ctx.caller_key,
            };
            let cancel = ctx.cancel.clone();
            let mut sink = ctx.sink;
            let (ptx, prx) = mpsc::channel::<ExecChunk>(PROGRESS_QUEUE);
            let call = server.call(&caller, &req.tool, req.args, Some(ptx), cancel.clone());
            let (result, ()) = tokio::join!(call, forward_progress(prx, &mut sink));
            let result = match result {
                Ok(Dispatch::Native(reply)) => Ok(reply),
                Ok(Dispatch::Gateway(g)) => {
                    let deadline = gateway_deadline(ctx.deadline, &caller.node);
                    let r = gateway_invoke(&gateway, &node_id, &g.tool, &g.args, cancel, &deadline)
                        .await;
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
    let mut carry = Utf8Carry::default();
    while let Some(c) = chunks.recv().await {
        if !open {
            continue;
        }
        let text = carry.text(c.stream, &c.bytes);
        if text.is_empty() {
            continue;
        }
        let line = json!({"stream": c.stream.as_str(), "text": text});
        open = sink.send(line.to_string().into_bytes()).await.is_ok();
    }
}

/// Exec output arrives in reads of any length, so a multi-byte character can be cut between
/// two chunks; decoded chunk by chunk it would show as two U+FFFD. The last incomplete
/// sequence of a chunk (at most 3 bytes) waits here, per stream, for the next chunk. Bytes
/// that are not UTF-8 at all still become U+FFFD.
#[derive(Default)]
struct Utf8Carry {
    pending: [Vec<u8>; 2],
}

impl Utf8Carry {
    fn text(&mut self, stream: StreamKind, bytes: &[u8]) -> String {
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(bytes);
        let keep = incomplete_tail(pending);
        let rest = pending.split_off(pending.len() - keep);
        let text = String::from_utf8_lossy(pending).into_owned();
        *pending = rest;
        text
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `b`: a lead byte followed by fewer
/// continuation bytes than it announces (0 when `b` ends on a whole character or on a byte
/// that can start nothing).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for its lead
        }
        let need = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if back < need { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_two_reads_arrives_whole() {
        let mut c = Utf8Carry::default();
        let e = "é€😀".as_bytes(); // 2 + 3 + 4 bytes
                                   // Every cut of the stream into two reads gives the same text, never U+FFFD.
        for cut in 0..=e.len() {
            let mut c2 = Utf8Carry::default();
            let text =
                c2.text(StreamKind::Stdout, &e[..cut]) + &c2.text(StreamKind::Stdout, &e[cut..]);
            assert_eq!(text, "é€😀", "cut at {cut}");
        }
        // Streams carry apart: stderr's half character does not join stdout's.
        assert_eq!(c.text(StreamKind::Stdout, &e[..1]), "");
        assert_eq!(c.text(StreamKind::Stderr, b"x"), "x");
        assert_eq!(c.text(StreamKind::Stdout, &e[1..2]), "é");
        // Bytes that are not UTF-8 at all are still replaced, not held back.
        assert_eq!(c.text(StreamKind::Stdout, b"a\xffb"), "a\u{fffd}b");
        assert_eq!(c.text(StreamKind::Stdout, b"\xff"), "\u{fffd}");
    }
}

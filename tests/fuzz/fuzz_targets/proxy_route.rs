//! The model proxy's request routing (`proxy::http::handle`: path and node pin, method, token,
//! body limit and `model`/`stream` peek, then `proxy::route::candidates` over the mesh), fed
//! arbitrary bytes as an HTTP/1.1 connection (method, path, headers, body, pipelined requests)
//! through hyper over an in-memory pipe, against a fixed mesh (`clawmatrix_fuzz::proxy`).
//! Never panics or hangs, always answers; every model call it opens goes to a reachable node
//! that serves the model named in the call, with a well-formed tunnel request.

#![no_main]

use std::sync::Arc;

use clawmatrix::mesh::PeerState;
use clawmatrix::proxy::http::handle;
use clawmatrix::proxy::tunnel::{api_for_path, decode_request};
use clawmatrix::proxy::ProxyCtx;
use clawmatrix_fuzz::proxy::{ctx, peers, RecordingPort};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    ctx: Arc<ProxyCtx>,
    port: Arc<RecordingPort>,
}

thread_local! {
    static WORLD: World = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let (ctx, port) = ctx();
        World { rt, ctx, port }
    };
}

async fn serve(data: &[u8], ctx: Arc<ProxyCtx>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let svc = service_fn(move |req| handle(req, ctx.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(server), svc);
    let talk = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let (_, out) = tokio::join!(conn, talk);
    out
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        w.port.opened.lock().expect("lock").clear();
        let out = w.rt.block_on(serve(data, w.ctx.clone()));
        let opened = std::mem::take(&mut *w.port.opened.lock().expect("lock"));
        if !opened.is_empty() {
            assert!(out.starts_with(b"HTTP/1."), "calls opened, no answer");
        }
        let peers = peers();
        for (node, payload) in &opened {
            let (req, _body) = decode_request(payload).expect("a well-formed tunnel request");
            assert!(
                api_for_path(&req.path).is_some(),
                "tunnelled {:?}",
                req.path
            );
            let p = peers
                .iter()
                .find(|p| p.node == *node)
                .unwrap_or_else(|| panic!("a call to {node:?}, not in the mesh"));
            assert!(
                !matches!(p.state, PeerState::Unreachable { .. }),
                "a call to unreachable {node}"
            );
            assert!(
                p.models.iter().any(|m| m.id == req.model),
                "{node} asked for {:?}, which it does not serve",
                req.model
            );
        }
    });
});

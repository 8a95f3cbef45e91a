//! Helpers for the model proxy tests: a scripted upstream over raw TCP (so the tests control
//! every byte and see the exact moment a client goes away), a fake OpenClaw host answering the
//! core's host requests, and a hyper client for the consumer side.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use clawmatrix::host::HostReply;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does for a model id.
#[derive(Clone, Debug)]
pub enum Script {
    /// Answer with these raw body pieces (after the head), `gap` between them (no gap: all in
    /// one write), then close.
    Pieces {
        status: u16,
        headers: Vec<(String, String)>,
        pieces: Vec<Vec<u8>>,
        gap: Duration,
        /// Close the socket after the pieces without finishing the body (a broken stream).
        break_off: bool,
    },
    /// Read the request and never answer.
    Hang,
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
    pub at: Instant,
    /// When the client closed its side (EOF), if it did before we finished.
    pub client_gone: Option<Instant>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
}

impl Upstream {
    pub fn script(&self, model: &str, s: Script) {
        self.scripts.lock().unwrap().insert(model.to_string(), s);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// SSE pieces: each `data: <json>\n\n`, then `data: [DONE]\n\n`.
pub fn sse(events: &[Value]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = events
        .iter()
        .map(|e| format!("data: {e}\n\n").into_bytes())
        .collect();
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

pub fn sse_script(events: &[Value], gap: Duration) -> Script {
    Script::Pieces {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        pieces: sse(events),
        gap,
        break_off: false,
    }
}

pub fn json_script(status: u16, body: Value, headers: &[(&str, &str)]) -> Script {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.push(("content-type".into(), "application/json".into()));
    Script::Pieces {
        status,
        headers: h,
        pieces: vec![body.to_string().into_bytes()],
        gap: Duration::ZERO,
        break_off: false,
    }
}

async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some((head, body))
}

/// Start the scripted upstream (loopback only). Unknown models get a 404 JSON error.
pub async fn start_upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let scripts: Arc<Mutex<HashMap<String, Script>>> = Arc::default();
    let (seen2, scripts2) = (seen.clone(), scripts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let (seen, scripts) = (seen2.clone(), scripts2.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut sock).await else {
                    return;
                };
                let model = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["model"].as_str().map(String::from))
                    .unwrap_or_default();
                let idx = {
                    let mut s = seen.lock().unwrap();
                    s.push(Seen {
                        head,
                        body,
                        at: Instant::now(),
                        client_gone: None,
                    });
                    s.len() - 1
                };
                let script = scripts
                    .lock()
                    .unwrap()
                    .get(&model)
                    .cloned()
                    .unwrap_or_else(|| {
                        json_script(
                            404,
                            json!({"error": {"message": format!("upstream: no model {model}")}}),
                            &[],
                        )
                    });
                let (mut rd, mut wr) = sock.into_split();
                // Watch for the client's EOF while we answer.
                let seen_w = seen.clone();
                let watcher = tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    loop {
                        match rd.read(&mut b).await {
                            Ok(0) | Err(_) => {
                                seen_w.lock().unwrap()[idx].client_gone = Some(Instant::now());
                                return;
                            }
                            Ok(_) => {}
                        }
                    }
                });
                match script {
                    Script::Hang => {
                        let _ = tokio::time::timeout(Duration::from_secs(30), watcher).await;
                    }
                    Script::Pieces {
                        status,
                        headers,
                        pieces,
                        gap,
                        break_off,
                    } => {
                        let mut h = format!("HTTP/1.1 {status} X\r\n");
                        for (k, v) in &headers {
                            h.push_str(&format!("{k}: {v}\r\n"));
                        }
                        h.push_str("transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
                        if wr.write_all(h.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunked = |p: &[u8]| {
                            [format!("{:x}\r\n", p.len()).as_bytes(), p, b"\r\n"].concat()
                        };
                        if gap.is_zero() {
                            // No gap: every piece in one write, as a fast upstream's bytes
                            // arrive together.
                            let all: Vec<u8> = pieces.iter().flat_map(|p| chunked(p)).collect();
                            if wr.write_all(&all).await.is_err() {
                                return;
                            }
                        } else {
                            for (i, p) in pieces.iter().enumerate() {
                                if i > 0 {
                                    tokio::time::sleep(gap).await;
                                }
                                if wr.write_all(&chunked(p)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        if !break_off {
                            let _ = wr.write_all(b"0\r\n\r\n").await;
                            // Let the client read the end before we close.
                            let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
                        }
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        scripts,
    }
}

/// A fake OpenClaw host for `node`: answers `model.upstream` with `provider_config` (per
/// provider) and key `api_key`, records `providers.sync` params.
pub struct FakeHost {
    pub syncs: Arc<Mutex<Vec<Value>>>,
    pub upstream_calls: Arc<Mutex<u32>>,
}

pub fn fake_host(
    node: &Node,
    providers: HashMap<String, Value>,
    api_key: Option<&str>,
) -> FakeHost {
    let bridge = node.host();
    let syncs: Arc<Mutex<Vec<Value>>> = Arc::default();
    let upstream_calls: Arc<Mutex<u32>> = Arc::default();
    let (s2, u2) = (syncs.clone(), upstream_calls.clone());
    let key = api_key.map(String::from);
    let rt = node.runtime_handle().expect("node running");
    rt.spawn(async move {
        while let Some(req) = bridge.next_request().await {
            let reply = match req.kind {
                clawmatrix::host::HostKind::ModelUpstream => {
                    *u2.lock().unwrap() += 1;
                    let p = req.params["provider"].as_str().unwrap_or_default();
                    Ok(HostReply::Result(json!({
                        "providerConfig": providers.get(p).cloned().unwrap_or(Value::Null),
                        "apiKey": key,
                    })))
                }
                clawmatrix::host::HostKind::ProvidersSync => {
                    s2.lock().unwrap().push(req.params.clone());
                    Ok(HostReply::Result(json!({"changed": true, "added": [], "updated": [], "removed": [], "conflicts": []})))
                }
                clawmatrix::host::HostKind::Cancel => continue,
                other => Err(clawmatrix::error::Error::new(clawmatrix::error::ErrorCode::NotImplemented, format!("fake host: {other}"))),
            };
            bridge.reply(req.id, reply);
        }
    });
    FakeHost {
        syncs,
        upstream_calls,
    }
}

/// A response from the proxy with its body frames and when each arrived.
pub struct Got {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub frames: Vec<(Instant, Bytes)>,
    pub error: Option<String>,
}

impl Got {
    pub fn body(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap_or(Value::Null)
    }
}

pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    sender
        .send_request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap()
}

/// Send a request and read the whole response (bounded by `within`).
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    within: Duration,
) -> Got {
    tokio::time::timeout(within, async {
        let resp = open(addr, method, path, token, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut frames = Vec::new();
        let mut error = None;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        frames.push((Instant::now(), d));
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        Got {
            status,
            headers,
            frames,
            error,
        }
    })
    .await
    .expect("the proxy answered in time")
}

pub fn chat(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

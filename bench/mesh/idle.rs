//! Memory per idle authenticated link.
//!
//! A listening node runs alone in a child process (this binary with `--serve-node PORT`), so its
//! RSS is not mixed with the dialers'. Holding N links with N dialing `Node`s would cost N
//! runtimes here; instead a minimal raw dialer speaks the real handshake
//! (`clawmatrix::proto::Dialer`) over tokio-tungstenite, then sits idle and answers pings, so
//! one current-thread runtime holds all the links cheaply.
//!
//! Procedure: open [`WARM_LINKS`] links (first-use allocations: buffers, tables), settle, read
//! the child's `VmRSS`; open N more, settle, read it again. Result = (after − before) / links
//! that are still up. The listener's `max_links` caps N; links it refuses with `capacity` are
//! counted and reported, and the per-link figure uses only the accepted ones.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::proto::{self, Body, Dialer, FrameId, HandshakeConfig, Header, RejectCode, Step};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::report::{emit, status_field};
use super::topology::{free_port, node_config};
use super::BenchResult;

/// The listening child's node id.
const SERVER_ID: &str = "idle-server";
/// Links opened before the "before" reading, so one-time allocations are not billed per link.
const WARM_LINKS: usize = 4;
/// Pause after opening links, before reading RSS: gossip about the new links settles.
const SETTLE: Duration = Duration::from_millis(1_500);
/// Longest wait for the child to report ready.
const CHILD_READY: Duration = Duration::from_secs(20);
/// The child exits on its own after this long, even if the parent never closes its stdin.
const CHILD_MAX_LIFE: Duration = Duration::from_secs(180);
/// Bound on one link's connect + handshake.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(5);
/// Bound on opening all links.
const OPEN_ALL_BOUND: Duration = Duration::from_secs(60);

/// Child mode: run one listening node until stdin closes (or [`CHILD_MAX_LIFE`]).
pub fn serve_node(port: u16) -> BenchResult<()> {
    let node = Node::new(node_config(SERVER_ID, Some(port), &[])?);
    node.start(&StartOptions::default())
        .map_err(|e| format!("serve-node: start: {e}"))?;
    println!("ready {}", std::process::id());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(CHILD_MAX_LIFE);
    node.stop();
    Ok(())
}

/// Parent mode: measure and emit `{"bench":"idle_link_memory",...}`.
pub fn measure(links: usize) -> BenchResult<()> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let child = Command::new(exe)
        .args(["--serve-node", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn serve-node child: {e}"))?;
    let mut child = ChildGuard(child);
    let pid = wait_ready(&mut child.0)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let url = format!("ws://127.0.0.1:{port}");
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let alive = Arc::new(AtomicUsize::new(0));
        let mut pool = LinkPool::new(url, stop_rx, alive.clone());
        let warm = pool.open(WARM_LINKS).await?;
        if warm.accepted < WARM_LINKS {
            return Err(format!(
                "idle: only {} of {WARM_LINKS} warm-up links came up ({:?})",
                warm.accepted, warm.first_error
            ));
        }
        tokio::time::sleep(SETTLE).await;
        let before = rss_kib(&pid)?;
        let opened = pool.open(links).await?;
        tokio::time::sleep(SETTLE).await;
        let after = rss_kib(&pid)?;
        let up = alive.load(Ordering::Relaxed).saturating_sub(WARM_LINKS);
        let _ = stop_tx.send(true);
        Ok((before, after, opened, up))
    });
    let (before, after, opened, up) = result?;
    if up == 0 {
        return Err(format!(
            "idle: no link stayed up (first error: {:?})",
            opened.first_error
        ));
    }
    let per_link = (after as f64 - before as f64) * 1024.0 / up as f64;
    emit(json!({
        "bench": "idle_link_memory", "requested": links, "links": up,
        "refused": opened.refused, "refused_capacity": opened.capacity,
        "warm_links": WARM_LINKS, "rss_before_kib": before, "rss_after_kib": after,
        "bytes_per_link": per_link.round(),
    }));
    eprintln!(
        "idle links: {up} of {links} up ({} refused, {} for capacity), child RSS {before} → {after} KiB: {:.0} B per link",
        opened.refused, opened.capacity, per_link
    );
    Ok(())
}

fn rss_kib(pid: &str) -> BenchResult<u64> {
    status_field(pid, "VmRSS").ok_or_else(|| format!("cannot read VmRSS of pid {pid}"))
}

/// Kills the child if the parent bails out early; otherwise closes its stdin and reaps it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(child: &mut Child) -> BenchResult<String> {
    let stdout = child
        .stdout
        .take()
        .ok_or("serve-node child without stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(CHILD_READY)
        .map_err(|_| "serve-node child did not report ready".to_string())?;
    line.trim()
        .strip_prefix("ready ")
        .map(str::to_string)
        .ok_or_else(|| format!("serve-node child said {line:?}"))
}

#[derive(Debug, Default)]
struct Opened {
    accepted: usize,
    refused: usize,
    capacity: usize,
    first_error: Option<String>,
}

/// The raw dialers: each link is one task that answers pings until told to stop.
struct LinkPool {
    url: String,
    stop: watch::Receiver<bool>,
    alive: Arc<AtomicUsize>,
    next: usize,
}

impl LinkPool {
    fn new(url: String, stop: watch::Receiver<bool>, alive: Arc<AtomicUsize>) -> Self {
        LinkPool {
            url,
            stop,
            alive,
            next: 0,
        }
    }

    /// Open `n` links one after the other (bounded in total time).
    async fn open(&mut self, n: usize) -> BenchResult<Opened> {
        let mut out = Opened::default();
        let deadline = Instant::now() + OPEN_ALL_BOUND;
        for _ in 0..n {
            if Instant::now() > deadline {
                out.first_error
                    .get_or_insert_with(|| "opening links took too long".into());
                break;
            }
            self.next += 1;
            let id = format!("idle-{:04}", self.next);
            let r = tokio::time::timeout(HANDSHAKE_BOUND, dial(&self.url, &id)).await;
            match r {
                Ok(Ok(ws)) => {
                    out.accepted += 1;
                    self.alive.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(idle_link(ws, id, self.stop.clone(), self.alive.clone()));
                }
                Ok(Err(DialError::Rejected(code, reason))) => {
                    out.refused += 1;
                    if code == RejectCode::Capacity {
                        out.capacity += 1;
                    }
                    out.first_error
                        .get_or_insert_with(|| format!("{}: {reason}", code.as_str()));
                    // The listener is full; more attempts would only be refused too.
                    if code == RejectCode::Capacity {
                        break;
                    }
                }
                Ok(Err(DialError::Io(e))) => {
                    out.refused += 1;
                    out.first_error.get_or_insert(e);
                }
                Err(_) => {
                    out.refused += 1;
                    out.first_error
                        .get_or_insert_with(|| "handshake timed out".into());
                }
            }
        }
        Ok(out)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum DialError {
    Rejected(RejectCode, String),
    Io(String),
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connect and run the dialer side of the handshake (docs/PROTOCOL.md §3).
async fn dial(url: &str, id: &str) -> Result<Ws, DialError> {
    let io = |e: tokio_tungstenite::tungstenite::Error| DialError::Io(e.to_string());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(io)?;
    let key = std::sync::Arc::new(clawmatrix::identity::NodeKey::from_seed(&random32()));
    let cfg = HandshakeConfig::new(id, super::topology::SECRET.as_bytes().to_vec(), key);
    let (mut dialer, hello) = Dialer::new(cfg, Some(SERVER_ID.into()), random32(), now_ms());
    ws.send(Message::text(hello.encode())).await.map_err(io)?;
    loop {
        let msg = match ws.next().await {
            Some(m) => m.map_err(io)?,
            None => return Err(DialError::Io("closed during handshake".into())),
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => {
                return Err(DialError::Io(format!("closed during handshake: {c:?}")))
            }
            _ => continue,
        };
        match dialer.on_frame(&text, |_, _| Ok(())) {
            Step::Send(frame) => ws.send(Message::text(frame.encode())).await.map_err(io)?,
            Step::Done { send, .. } => {
                if let Some(f) = send {
                    ws.send(Message::text(f.encode())).await.map_err(io)?;
                }
                return Ok(ws);
            }
            Step::Rejected {
                send, code, reason, ..
            } => {
                if let Some(f) = send {
                    let _ = ws.send(Message::text(f.encode())).await;
                }
                return Err(DialError::Rejected(code, reason));
            }
        }
    }
}

/// An idle link: read and drop everything, answer heartbeats, end on close or stop.
async fn idle_link(
    mut ws: Ws,
    id: String,
    mut stop: watch::Receiver<bool>,
    alive: Arc<AtomicUsize>,
) {
    loop {
        tokio::select! {
            biased;
            // Stop first: the measurement is over.
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let Ok(frame) = proto::decode(&b) else { continue };
                    if let Body::Ping { seq, t } = frame.header.body {
                        let pong = Header {
                            v: 1,
                            id: FrameId(*uuid::Uuid::new_v4().as_bytes()),
                            src: id.clone(),
                            dst: None,
                            ttl: 1,
                            hops: 0,
                            ts: now_ms(),
                            body: Body::Pong { seq, t },
                        };
                        if let Ok(bytes) = proto::encode(&pong, &[]) {
                            if ws.send(Message::binary(bytes)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
    let _ = ws.close(None).await;
}

//! A fault-injecting TCP proxy for the network fault lab (issue 18): one listener on
//! 127.0.0.1, forwarding every accepted connection to one loopback target, both directions,
//! with a fault model that a loopback HTTP control port changes live, per direction.
//!
//! Directions: `up` is client → target (the dialer's bytes towards the listener), `down` is
//! target → client.
//!
//! Faults (each per direction; see [`Faults`]):
//! - `delay`: each forwarded chunk (one `read()` of up to [`CHUNK`] bytes) is, with probability
//!   `p`, held until `ms ± jitterMs` after it arrived. Chunks are written in order, so a held
//!   chunk holds back the ones behind it (what a retransmitted TCP segment does to the stream).
//! - `stall`: forward nothing for N ms; connections stay open, bytes wait (queue, then the
//!   sender's socket buffer: TCP flow control).
//! - `blackhole`: like a stall with no end, and new connections are accepted but not connected
//!   to the target until it is lifted (their bytes wait too): a partition whose healing
//!   delivers what TCP would have retransmitted. Endpoints that gave up meanwhile close their
//!   sockets; the proxy passes the close on after the heal.
//! - `rate`: a bytes/s cap, paced in [`PACKET`]-byte slices, behind a bounded queue of
//!   `queueBytes`. The queue models a bottleneck router's buffer: the proxy reads from the
//!   sender only while the bytes it holds fit, so the queueing delay of a byte is at most
//!   `queueBytes / bytesPerSec` plus the sockets' own buffers, which `--sockbuf` makes small
//!   (otherwise Linux autotunes them to several MiB and hides a deep buffer before the cap).
//! - `reset`: every current connection is closed with RST on both sides (SO_LINGER 0).
//!
//! Randomness (which chunk is delayed, the jitter) comes from one seeded generator; the seed is
//! printed at start so a run can be replayed.
//!
//! Control port (HTTP/1.1, one request per connection, JSON bodies):
//! - `GET /faults` → the current model; `POST /faults` with a partial model, e.g.
//!   `{"dir":"both","delay":{"p":0.02,"ms":300,"jitterMs":100}}`, `{"dir":"up","stall":{"ms":2000}}`,
//!   `{"blackhole":true}`, `{"rate":{"bytesPerSec":125000,"queueBytes":32768}}`,
//!   `{"clear":true}` (no faults); fields left out keep their value;
//! - `POST /reset` → RST every current connection;
//! - `GET /counters` → bytes, chunks, delayed chunks, connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// Largest chunk read from a socket at once.
pub const CHUNK: usize = 16 * 1024;
/// Slice size the rate cap paces (about one Ethernet segment's payload).
pub const PACKET: usize = 1460;
/// Default per-direction queue of held bytes (per connection).
pub const DEFAULT_QUEUE_BYTES: u64 = 1024 * 1024;
/// Largest accepted control request.
const MAX_CONTROL_REQUEST: usize = 64 * 1024;

/// The random delay of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Probability in [0, 1] that a chunk is delayed.
    pub p: f64,
    /// Base delay, ms.
    pub ms: u64,
    /// Uniform jitter, ± ms (clamped at 0).
    #[serde(default)]
    pub jitter_ms: u64,
}

/// The bandwidth cap of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    /// Bytes per second; 0 means no cap.
    pub bytes_per_sec: u64,
    /// The bottleneck queue, bytes (at least one [`PACKET`]).
    #[serde(default = "default_queue")]
    pub queue_bytes: u64,
}

fn default_queue() -> u64 {
    DEFAULT_QUEUE_BYTES
}

/// The fault model of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    pub delay: Delay,
    /// Forwarding is stopped until this instant (a stall); not serialized.
    #[serde(skip)]
    pub stalled_until: Option<Instant>,
    /// Remaining stall, ms (for `GET /faults`).
    pub stall_ms_left: u64,
    pub blackhole: bool,
    pub rate: Option<Rate>,
}

impl Faults {
    fn queue_bytes(&self) -> usize {
        let q = self.rate.map_or(DEFAULT_QUEUE_BYTES, |r| r.queue_bytes);
        usize::try_from(q.max(PACKET as u64)).unwrap_or(usize::MAX)
    }
    /// When forwarding may go on: `None` = now, `Some(None)` = not before a config change.
    fn gate(&self, now: Instant) -> Option<Option<Instant>> {
        if self.blackhole {
            return Some(None);
        }
        match self.stalled_until {
            Some(t) if t > now => Some(Some(t)),
            _ => None,
        }
    }
}

/// A control command: `dir` (default both) and the fields to change.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub clear: bool,
    #[serde(default)]
    pub delay: Option<Delay>,
    #[serde(default)]
    pub stall: Option<Stall>,
    #[serde(default)]
    pub blackhole: Option<bool>,
    /// `null` or `{"bytesPerSec":0}` removes the cap.
    #[serde(default, deserialize_with = "some_rate")]
    pub rate: Option<Option<Rate>>,
}

fn some_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Rate>>, D::Error> {
    Option::<Rate>::deserialize(d).map(Some)
}

/// `{"ms": N}`: stop forwarding for N ms from now.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub ms: u64,
}

/// The two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up = 0,
    Down = 1,
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirCounters {
    /// Bytes read from the sender (`bytesIn - bytes` is what the proxy holds).
    pub bytes_in: AtomicU64,
    /// Bytes written to the receiver.
    pub bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub chunks_delayed: AtomicU64,
}

/// Counters of the proxy.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: DirCounters,
    pub down: DirCounters,
    pub connections: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_reset: AtomicU64,
    pub resets: AtomicU64,
}

impl Counters {
    fn dir(&self, d: Dir) -> &DirCounters {
        match d {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }
    pub fn json(&self) -> serde_json::Value {
        let d = |c: &DirCounters| {
            serde_json::json!({
                "bytesIn": c.bytes_in.load(Ordering::Relaxed),
                "bytes": c.bytes.load(Ordering::Relaxed),
                "chunks": c.chunks.load(Ordering::Relaxed),
                "chunksDelayed": c.chunks_delayed.load(Ordering::Relaxed),
            })
        };
        serde_json::json!({
            "up": d(&self.up),
            "down": d(&self.down),
            "connections": self.connections.load(Ordering::Relaxed),
            "connectionsOpen": self.connections_open.load(Ordering::Relaxed),
            "connectionsReset": self.connections_reset.load(Ordering::Relaxed),
            "resets": self.resets.load(Ordering::Relaxed),
        })
    }
}

/// The seeded generator (splitmix64).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Shared state of one proxy.
pub struct Proxy {
    target: SocketAddr,
    sockbuf: Option<u32>,
    faults: [watch::Sender<Faults>; 2],
    pub counters: Counters,
    rng: Mutex<Rng>,
    pub seed: u64,
    conns: Mutex<HashMap<u64, watch::Sender<bool>>>,
    next_id: AtomicU64,
}

/// What `start` binds.
#[derive(Debug, Clone)]
pub struct Options {
    /// Listen port on 127.0.0.1 (0 = any).
    pub listen_port: u16,
    /// Control port on 127.0.0.1 (0 = any).
    pub control_port: u16,
    /// The target; must be a loopback address.
    pub target: SocketAddr,
    /// SO_RCVBUF / SO_SNDBUF for every socket of the proxy; `None` keeps the kernel's.
    pub sockbuf: Option<u32>,
    pub seed: u64,
}

/// A running proxy: its ports and state.
pub struct Running {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    pub proxy: Arc<Proxy>,
}

/// Parses `PORT` or `HOST:PORT` into a loopback address; anything else is refused.
pub fn loopback_target(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = match s.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => s
            .parse()
            .map_err(|e| format!("target {s:?}: not PORT or IP:PORT ({e})"))?,
    };
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback {
        return Err(format!(
            "target {s:?}: not a loopback address (only 127.0.0.0/8 and ::1 are allowed)"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("target {s:?}: port 0"));
    }
    Ok(addr)
}

fn set_sockopt_int(fd: RawFd, opt: libc::c_int, v: u32) {
    let v = libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: fd is an open socket owned by the caller; the option value is a c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is an open socket owned by the caller; the option value is a `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn set_bufs(fd: RawFd, sockbuf: Option<u32>) {
    if let Some(b) = sockbuf {
        set_sockopt_int(fd, libc::SO_RCVBUF, b);
        set_sockopt_int(fd, libc::SO_SNDBUF, b);
    }
}

/// Binds the listener and the control port and starts serving.
pub async fn start(opts: Options) -> std::io::Result<Running> {
    if loopback_target(&opts.target.to_string()).is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("target {}: not a loopback address", opts.target),
        ));
    }
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    // Set before listen() so accepted sockets inherit it (the window is fixed at the SYN).
    set_bufs(sock.as_raw_fd(), opts.sockbuf);
    sock.bind(SocketAddr::from(([127, 0, 0, 1], opts.listen_port)))?;
    let listener = sock.listen(128)?;
    let control = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], opts.control_port))).await?;
    let proxy = Arc::new(Proxy {
        target: opts.target,
        sockbuf: opts.sockbuf,
        faults: [
            watch::Sender::new(Faults::default()),
            watch::Sender::new(Faults::default()),
        ],
        counters: Counters::default(),
        rng: Mutex::new(Rng::new(opts.seed)),
        seed: opts.seed,
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    let running = Running {
        listen: listener.local_addr()?,
        control: control.local_addr()?,
        proxy: proxy.clone(),
    };
    let p = proxy.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(p.clone().serve(s));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let p = proxy;
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = control.accept().await {
                tokio::spawn(p.clone().control(s));
            }
        }
    });
    Ok(running)
}

/// Byte budget of one direction's queue: the reader takes, the writer gives back.
struct Budget {
    used: Mutex<usize>,
    notify: Notify,
}

impl Budget {
    async fn take(&self, n: usize, faults: &watch::Sender<Faults>) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
                let cap = faults.borrow().queue_bytes();
                if *used == 0 || *used + n <= cap {
                    *used += n;
                    return;
                }
            }
            notified.await;
        }
    }
    fn give(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(n);
        drop(used);
        self.notify.notify_waiters();
    }
}

enum Item {
    Data(Vec<u8>, Instant),
    Eof,
}

impl Proxy {
    pub fn faults(&self, d: Dir) -> Faults {
        *self.faults[d as usize].borrow()
    }

    /// Applies a control command; returns the new model or why it was refused.
    pub fn apply(&self, cmd: &Command) -> Result<serde_json::Value, String> {
        let dirs: &[Dir] = match cmd.dir.as_deref() {
            None | Some("both") => &[Dir::Up, Dir::Down],
            Some("up") => &[Dir::Up],
            Some("down") => &[Dir::Down],
            Some(other) => return Err(format!("dir: {other:?} is not up, down or both")),
        };
        if let Some(d) = &cmd.delay {
            if !(0.0..=1.0).contains(&d.p) {
                return Err(format!("delay.p: {} is not within [0, 1]", d.p));
            }
        }
        if let Some(Some(r)) = &cmd.rate {
            if r.queue_bytes < PACKET as u64 && r.bytes_per_sec > 0 {
                return Err(format!(
                    "rate.queueBytes: {} is below {PACKET}",
                    r.queue_bytes
                ));
            }
        }
        let now = Instant::now();
        for &d in dirs {
            self.faults[d as usize].send_modify(|f| {
                if cmd.clear {
                    *f = Faults::default();
                }
                if let Some(delay) = cmd.delay {
                    f.delay = delay;
                }
                if let Some(s) = cmd.stall {
                    f.stalled_until = Some(now + Duration::from_millis(s.ms));
                }
                if let Some(b) = cmd.blackhole {
                    f.blackhole = b;
                }
                if let Some(r) = cmd.rate {
                    f.rate = r.filter(|r| r.bytes_per_sec > 0);
                }
            });
        }
        Ok(self.model_json())
    }

    pub fn model_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let one = |d: Dir| {
            let mut f = self.faults(d);
            f.stall_ms_left = f.stalled_until.map_or(0, |t| {
                u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
            });
            serde_json::to_value(f).unwrap_or_default()
        };
        serde_json::json!({ "up": one(Dir::Up), "down": one(Dir::Down), "seed": self.seed })
    }

    /// RSTs every current connection; returns how many.
    pub fn reset_all(&self) -> usize {
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for tx in conns.values() {
            let _ = tx.send(true);
        }
        conns.len()
    }

    /// Waits while `d` is stalled or blackholed.
    async fn gate(&self, d: Dir) {
        let mut rx = self.faults[d as usize].subscribe();
        loop {
            let g = rx.borrow_and_update().gate(Instant::now());
            match g {
                None => return,
                Some(None) => {
                    let _ = rx.changed().await;
                }
                Some(Some(t)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = rx.changed() => {}
                    }
                }
            }
        }
    }

    /// The delay of one chunk, drawn now (None = not delayed).
    fn draw_delay(&self, d: Dir) -> Option<Duration> {
        let delay = self.faults(d).delay;
        if delay.p <= 0.0 || delay.ms == 0 && delay.jitter_ms == 0 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.unit() >= delay.p {
            return None;
        }
        let j = delay.jitter_ms as i64;
        let off = if j > 0 {
            (rng.next_u64() % (2 * j as u64 + 1)) as i64 - j
        } else {
            0
        };
        let ms = (delay.ms as i64 + off).max(0) as u64;
        Some(Duration::from_millis(ms))
    }

    async fn serve(self: Arc<Self>, client: TcpStream) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reset_tx, mut reset_rx) = watch::channel(false);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, reset_tx);
        let _ = client.set_nodelay(true);
        set_bufs(client.as_raw_fd(), self.sockbuf);
        let work = async {
            // A partition holds new connections too: the target sees nothing until the heal.
            tokio::select! {
                _ = self.gate(Dir::Up) => {}
                _ = reset_rx.wait_for(|r| *r) => {
                    set_linger_zero(client.as_raw_fd());
                    return Err(std::io::Error::other("reset"));
                }
            }
            let sock = TcpSocket::new_v4()?;
            set_bufs(sock.as_raw_fd(), self.sockbuf);
            let upstream = sock.connect(self.target).await?;
            let _ = upstream.set_nodelay(true);
            let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
            // io::split, not into_split: an OwnedWriteHalf sends FIN when dropped, ahead of the
            // RST a reset must be.
            let (cr, cw) = tokio::io::split(client);
            let (ur, uw) = tokio::io::split(upstream);
            tokio::try_join!(
                self.pump(Dir::Up, cr, uw, fds, reset_rx.clone()),
                self.pump(Dir::Down, ur, cw, fds, reset_rx.clone())
            )
            .map(|_| ())
        };
        if let Err(e) = work.await {
            if e.to_string() == "reset" {
                self.counters
                    .connections_reset
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// One direction: a reader fills the queue, a writer drains it through the faults.
    /// On an error or a reset both sockets (`fds`, alive while `r` and `w` are) close with RST:
    /// what a dead path does to the other side.
    async fn pump(
        &self,
        d: Dir,
        mut r: ReadHalf<TcpStream>,
        mut w: WriteHalf<TcpStream>,
        fds: [RawFd; 2],
        mut reset: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let budget = Budget {
            used: Mutex::new(0),
            notify: Notify::new(),
        };
        let faults = &self.faults[d as usize];
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let reader = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let max = CHUNK.min(faults.borrow().queue_bytes());
                budget.take(max, faults).await;
                let n = match r.read(&mut buf[..max]).await {
                    Ok(n) => n,
                    Err(e) => {
                        budget.give(max);
                        return Err(e);
                    }
                };
                budget.give(max - n);
                self.counters
                    .dir(d)
                    .bytes_in
                    .fetch_add(n as u64, Ordering::Relaxed);
                if n == 0 {
                    let _ = tx.send(Item::Eof);
                    return Ok(());
                }
                if tx
                    .send(Item::Data(buf[..n].to_vec(), Instant::now()))
                    .is_err()
                {
                    return Ok(());
                }
            }
        };
        let writer = async {
            let c = self.counters.dir(d);
            let mut next_free = Instant::now();
            while let Some(item) = rx.recv().await {
                let (data, arrived) = match item {
                    Item::Data(b, t) => (b, t),
                    Item::Eof => {
                        self.gate(d).await;
                        let _ = w.shutdown().await;
                        return Ok(());
                    }
                };
                if let Some(extra) = self.draw_delay(d) {
                    c.chunks_delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep_until(arrived + extra).await;
                }
                let mut off = 0;
                while off < data.len() {
                    self.gate(d).await;
                    let rate = faults.borrow().rate;
                    let end = match rate {
                        Some(_) => (off + PACKET).min(data.len()),
                        None => data.len(),
                    };
                    if let Some(rate) = rate {
                        let now = Instant::now();
                        if next_free > now {
                            tokio::time::sleep_until(next_free).await;
                        }
                        let secs = (end - off) as f64 / rate.bytes_per_sec as f64;
                        next_free = next_free.max(now) + Duration::from_secs_f64(secs);
                    }
                    w.write_all(&data[off..end]).await?;
                    c.bytes.fetch_add((end - off) as u64, Ordering::Relaxed);
                    off = end;
                }
                c.chunks.fetch_add(1, Ordering::Relaxed);
                budget.give(data.len());
            }
            Ok(())
        };
        let rst = || fds.iter().for_each(|&fd| set_linger_zero(fd));
        tokio::select! {
            res = async { tokio::try_join!(reader, writer) } => {
                if res.is_err() {
                    rst();
                }
                res.map(|_| ())
            }
            _ = reset.wait_for(|r| *r) => {
                rst();
                Err(std::io::Error::other("reset"))
            }
        }
    }

    /// One control request: `GET|POST /faults`, `POST /reset`, `GET /counters`.
    async fn control(self: Arc<Self>, mut s: TcpStream) {
        let mut buf = Vec::with_capacity(1024);
        let mut tmp = [0u8; 4096];
        let read = async {
            loop {
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
                if buf.len() > MAX_CONTROL_REQUEST {
                    return None;
                }
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        return Some((head, body));
                    }
                }
            }
        };
        let Ok(Some((head, body))) = tokio::time::timeout(Duration::from_secs(5), read).await
        else {
            return;
        };
        let line = head.lines().next().unwrap_or("");
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let (code, out) = match (method, path) {
            ("GET", "/faults") => (200, self.model_json()),
            ("GET", "/counters") => (200, self.counters.json()),
            ("POST", "/reset") => (200, serde_json::json!({ "reset": self.reset_all() })),
            ("POST", "/faults") => match serde_json::from_slice::<Command>(&body) {
                Ok(cmd) => match self.apply(&cmd) {
                    Ok(v) => (200, v),
                    Err(e) => (400, serde_json::json!({ "error": e })),
                },
                Err(e) => (400, serde_json::json!({ "error": format!("body: {e}") })),
            },
            _ => (
                404,
                serde_json::json!({ "error": format!("no route {method} {path}") }),
            ),
        };
        let body = out.to_string();
        let reason = match code {
            200 => "OK",
            400 => "Bad Request",
            _ => "Not Found",
        };
        let resp = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

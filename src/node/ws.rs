//! RFC 6455 framing for mesh links, once tungstenite has done the HTTP upgrade.
//!
//! Why our own: a link moves one WebSocket message per mesh frame, and tungstenite's buffers
//! cost what the benchmarks measure. Its reader zero-fills and reads at most `read_buffer_size`
//! per syscall (8 KiB kept idle links small but meant 128 reads per MiB), its writer copies
//! every payload into an output buffer that keeps its high-water capacity forever (gossip
//! bursts left tens of KiB on every idle link), and the stream wrapper copies every message
//! once more. Here:
//!
//! - [`WsReader`] reads up to [`READ_CHUNK`] per syscall into a buffer that is released
//!   whenever the socket has nothing more to give (an idle link holds no read buffer), copies
//!   small messages out of it, and reads a large message straight into its own `Vec`, which
//!   grows with the bytes that arrive, never ahead of them (an announced length reserves
//!   nothing). `poll_next` keeps all state in the struct, so it is cancel-safe.
//! - [`WsWriter`] writes a lone frame with one vectored write (header + payload, no copy),
//!   coalesces a burst of small frames into one buffer that is released after the burst, and
//!   masks client frames in place in the payload it owns.
//!
//! Limits: a message (after reassembly of fragments) is at most `max_message` bytes, control
//! frames at most 125 bytes and never fragmented, RSV bits must be 0 (no extension is
//! negotiated), frames from a client must be masked. Violations are [`WsError`]s, never panics.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked for per socket read: 64 KiB batches ~60 small frames per syscall.
pub const READ_CHUNK: usize = 64 * 1024;
/// Messages larger than this (and not yet buffered) are read straight into their own buffer.
const DIRECT_READ_MIN: usize = 16 * 1024;
/// Frames up to this size are coalesced with their neighbours in a burst; larger ones are
/// written from their own buffer.
const COALESCE_MAX: usize = 16 * 1024;
/// A burst's coalescing buffer is written out when it reaches this size.
const OUT_HIGH: usize = 64 * 1024;
/// Largest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// The 4 bytes ending a piece of a frame sent in pieces (docs/PROTOCOL.md §4.4): more pieces
/// follow. A whole frame never ends like this: its trailer is a header length, at most
/// `MAX_HEADER_BYTES` (64 KiB).
pub const PIECE_MORE: [u8; 4] = [0xFF; 4];
/// The 4 bytes ending the last piece of a frame.
pub const PIECE_LAST: [u8; 4] = [0xFF, 0xFF, 0xFF, 0xFE];
/// The time one piece may hold the wire (5 ms): a slow link's pieces are sized to it, so an
/// urgent frame waits for at most about that much of the frame being written.
const PIECE_TIME_US: u64 = 5_000;
/// Smallest piece: below it the per-piece cost (a syscall, 8 to 18 bytes of framing) is no
/// longer worth the latency.
const MIN_PIECE: usize = 1024;
/// How long after its last slow write a link is taken as fast again.
const SLOW_FORGET: std::time::Duration = std::time::Duration::from_secs(1);
/// A large write that took less than this (µs) says nothing about the link's rate.
const SLOW_WRITE_US: u64 = 1_000;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Which end of the WebSocket we are: clients mask what they send, servers require it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// One complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Binary(Vec<u8>),
    /// A TEXT message, checked to be UTF-8.
    Text(String),
    Ping(Vec<u8>),
    Pong,
    /// The peer's close frame: code and reason, if it sent any.
    Close(Option<(u16, String)>),
}

/// Why a link's framing failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("message too large: {size} bytes, limit {limit}")]
    TooLarge { size: u64, limit: usize },
}

/// A frame being read: its header, and its payload so far.
#[derive(Debug)]
struct Partial {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    payload: Vec<u8>,
}

/// The reading half of a link.
#[derive(Debug)]
pub struct WsReader<R> {
    io: R,
    /// Bytes read but not yet consumed: `buf[pos..]`. Empty (no allocation) when idle.
    buf: Vec<u8>,
    pos: usize,
    role: Role,
    max_message: usize,
    cur: Option<Partial>,
    /// A fragmented message being reassembled: its opcode and the bytes so far.
    frag: Option<(u8, Vec<u8>)>,
    eof: bool,
    /// The socket under `io` (TLS included), to ask the kernel how many bytes have arrived.
    socket: Option<SocketFd>,
}

/// A socket's file descriptor, only ever used for `FIONREAD`.
#[cfg(unix)]
pub type SocketFd = std::os::fd::RawFd;
/// A socket's file descriptor (no `FIONREAD` here).
#[cfg(not(unix))]
pub type SocketFd = i32;

impl<R: AsyncRead + Unpin> WsReader<R> {
    pub fn new(io: R, role: Role, max_message: usize) -> Self {
        WsReader {
            io,
            buf: Vec::new(),
            pos: 0,
            role,
            max_message,
            cur: None,
            frag: None,
            eof: false,
            socket: None,
        }
    }

    /// The socket the reader's bytes come from: a message larger than [`READ_CHUNK`] then
    /// grows by what has already arrived in the kernel's receive queue, usually in one step,
    /// instead of doubling from 64 KiB (each doubling copies what came so far and touches
    /// fresh pages: a fifth of the throughput of 1 MiB frames). The fd must outlive the
    /// reader (it is the socket the reader reads).
    pub fn set_socket(&mut self, fd: Option<SocketFd>) {
        self.socket = fd;
    }

    /// Change the message size limit (the handshake uses a small one).
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// Bytes held by the reader: its read buffer and the message being read (for tests of the
    /// idle footprint and of what a peer's announced lengths cost).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
            + self.cur.as_ref().map_or(0, |p| p.payload.capacity())
            + self.frag.as_ref().map_or(0, |(_, v)| v.capacity())
    }

    /// Bytes received towards messages not yet returned (the read buffer's unparsed part, the
    /// frame being read and the fragments so far): between two pending polls, a rise means the
    /// peer is sending even though no message is complete.
    pub fn pending_bytes(&self) -> usize {
        (self.buf.len() - self.pos.min(self.buf.len()))
            + self.cur.as_ref().map_or(0, |p| p.payload.len())
            + self.frag.as_ref().map_or(0, |(_, v)| v.len())
    }

    /// The next message; `Ok(None)` at a clean end of stream (between frames).
    pub async fn next(&mut self) -> Result<Option<WsMessage>, WsError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll for the next message (cancel-safe: all progress is kept in `self`).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, WsError>> {
        loop {
            if self.cur.is_none() {
                match self.parse_header()? {
                    Some(p) => self.cur = Some(p),
                    None => {
                        if ready!(self.poll_fill(cx))? == 0 {
                            return Poll::Ready(self.at_eof());
                        }
                        continue;
                    }
                }
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            let want = cur.len - cur.payload.len();
            let have = self.buf.len() - self.pos;
            let take = want.min(have);
            let socket = self.socket;
            if take > 0 {
                grow(&mut cur.payload, cur.len, take, || kernel_pending(socket));
                cur.payload
                    .extend_from_slice(&self.buf[self.pos..self.pos + take]);
                self.pos += take;
            }
            if cur.payload.len() < cur.len {
                let n = if cur.len - cur.payload.len() >= DIRECT_READ_MIN {
                    // Straight into the message's own buffer, as far as it has grown.
                    if self.pos >= self.buf.len() {
                        self.buf = Vec::new();
                        self.pos = 0;
                    }
                    if cur.payload.len() == cur.payload.capacity() {
                        grow(&mut cur.payload, cur.len, 1, || kernel_pending(socket));
                    }
                    let limit = cur.payload.capacity().min(cur.len);
                    ready!(poll_read_vec(&mut self.io, &mut cur.payload, cx, limit))?
                } else {
                    ready!(self.poll_fill(cx))?
                };
                if n == 0 {
                    return Poll::Ready(Err(closed_mid_frame()));
                }
                continue;
            }
            let done = self.cur.take();
            if let Some(msg) = done.map(|p| self.finish(p)).transpose()?.flatten() {
                return Poll::Ready(Ok(Some(msg)));
            }
        }
    }

    fn at_eof(&mut self) -> Result<Option<WsMessage>, WsError> {
        if self.pos < self.buf.len() || self.frag.is_some() {
            Err(closed_mid_frame())
        } else {
            Ok(None)
        }
    }

    /// Parse a frame header from the buffer; `None` if more bytes are needed.
    fn parse_header(&mut self) -> Result<Option<Partial>, WsError> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 => {
                let Some(l) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([l[0], l[1]])), 4)
            }
            127 => {
                let Some(l) = b.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(l);
                (u64::from_be_bytes(a), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(k) = b.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::Protocol("unmasked frame from a client")),
            (Role::Client, true) => return Err(WsError::Protocol("masked frame from a server")),
            _ => {}
        }
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(WsError::Protocol("fragmented or oversized control frame"));
                }
            }
            OP_CONT | OP_TEXT | OP_BINARY => {
                let so_far = self.frag.as_ref().map_or(0, |(_, v)| v.len() as u64);
                if len.saturating_add(so_far) > self.max_message as u64 {
                    return Err(WsError::TooLarge {
                        size: len.saturating_add(so_far),
                        limit: self.max_message,
                    });
                }
            }
            _ => return Err(WsError::Protocol("unknown opcode")),
        }
        // len ≤ max_message (a usize) here, or ≤ 125.
        let len = len as usize;
        self.pos += at;
        Ok(Some(Partial {
            fin,
            opcode,
            mask,
            len,
            // Nothing reserved for the announced length: the payload grows as bytes arrive.
            payload: Vec::new(),
        }))
    }

    /// A complete frame: unmask, then a message, or `None` for a non-final fragment.
    fn finish(&mut self, p: Partial) -> Result<Option<WsMessage>, WsError> {
        let mut payload = p.payload;
        if let Some(key) = p.mask {
            apply_mask(&mut payload, key);
        }
        let (opcode, data) = match p.opcode {
            OP_PING => return Ok(Some(WsMessage::Ping(payload))),
            OP_PONG => return Ok(Some(WsMessage::Pong)),
            OP_CLOSE => return Ok(Some(WsMessage::Close(parse_close(&payload)?))),
            OP_CONT => {
                let Some((op, mut so_far)) = self.frag.take() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                so_far.extend_from_slice(&payload);
                if !p.fin {
                    self.frag = Some((op, so_far));
                    return Ok(None);
                }
                (op, so_far)
            }
            op => {
                if self.frag.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if !p.fin {
                    self.frag = Some((op, payload));
                    return Ok(None);
                }
                (op, payload)
            }
        };
        Ok(Some(if opcode == OP_TEXT {
            let text =
                String::from_utf8(data).map_err(|_| WsError::Protocol("TEXT is not UTF-8"))?;
            WsMessage::Text(text)
        } else {
            WsMessage::Binary(data)
        }))
    }

    fn release_if_drained(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Read more into the buffer. Returns the bytes read (0 = end of stream). While the socket
    /// has nothing and the buffer holds nothing, the buffer is released.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.eof {
            return Poll::Ready(Ok(0));
        }
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let limit = self.buf.capacity();
        match poll_read_vec(&mut self.io, &mut self.buf, cx, limit) {
            Poll::Pending => {
                self.release_if_drained();
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                self.release_if_drained();
                Poll::Ready(Ok(0))
            }
            other => other,
        }
    }
}

/// The stream ended inside a frame: an I/O failure (a dropped connection), not a peer breaking
/// the framing rules.
fn closed_mid_frame() -> WsError {
    WsError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-frame",
    ))
}

/// Make room in `payload` for `more` bytes of a frame of `len` bytes. The capacity follows what
/// arrived, never the announced length: it covers what we hold plus what is already waiting in
/// the kernel's receive queue (`pending`, asked only for messages larger than [`READ_CHUNK`]),
/// at least doubles (so a large message costs one extra copy at most, amortised), starts at
/// [`READ_CHUNK`], and stops at `len` (a message that fits one step, as most do, gets exactly
/// its size). A peer announcing 16 MiB and sending 10 bytes therefore pins 64 KiB, not 16 MiB.
fn grow(payload: &mut Vec<u8>, len: usize, more: usize, pending: impl FnOnce() -> usize) {
    let need = payload.len().saturating_add(more);
    if need <= payload.capacity() {
        return;
    }
    let mut cap = need
        .max(payload.capacity().saturating_mul(2))
        .max(READ_CHUNK);
    if cap < len {
        cap = cap.max(need.saturating_add(pending()));
    }
    let cap = cap.min(len.max(need));
    payload.reserve_exact(cap - payload.len());
}

/// The fd of a TCP socket, for [`WsReader::set_socket`].
pub(crate) fn socket_fd(tcp: &tokio::net::TcpStream) -> Option<SocketFd> {
    #[cfg(unix)]
    return Some(std::os::fd::AsRawFd::as_raw_fd(tcp));
    #[cfg(not(unix))]
    return None;
}

/// The most a link socket keeps written but not yet sent (`TCP_NOTSENT_LOWAT`) until its
/// writer has seen how fast it drains: past it the socket stops accepting writes, so frames
/// wait in the link's writer queue, where urgent ones can overtake them, instead of in the
/// kernel, where nothing can. Linux otherwise autotunes the send buffer to megabytes: on a
/// 1 Mbit/s link a heartbeat queued behind them waited seconds. It bounds only what has not
/// been sent, never what is in flight, so a fast path's window is untouched; once a slow write
/// shows the rate, the writer lowers it to a piece's worth ([`WsWriter::piece_for`]).
pub const UNSENT_MAX: usize = 64 * 1024;
/// The least a slow link's socket keeps unsent.
const UNSENT_MIN: usize = 1024;

/// Set `TCP_NOTSENT_LOWAT` on a link socket (best effort: where the option is missing the
/// kernel keeps its default).
pub(crate) fn set_unsent_limit(socket: Option<SocketFd>, bytes: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(fd) = socket {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads one c_int through the pointer, which points at `v`, of the
        // length given; a bad fd or option makes it fail and leaves the socket as it was.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (socket, bytes);
}

/// Bytes waiting in the receive queue of `socket` (`FIONREAD`); 0 when unknown. For TLS these
/// are ciphertext bytes, a hair more than the plaintext they carry.
fn kernel_pending(socket: Option<SocketFd>) -> usize {
    #[cfg(unix)]
    if let Some(fd) = socket {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`; an fd
        // that is not a socket (or closed) makes it fail, and we then report 0.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
        if rc == 0 {
            return usize::try_from(n).unwrap_or(0);
        }
    }
    #[cfg(not(unix))]
    let _ = socket;
    0
}

/// Read into `v`'s spare capacity, never past `limit` bytes of length. No zero-filling.
fn poll_read_vec<R: AsyncRead + Unpin>(
    io: &mut R,
    v: &mut Vec<u8>,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<io::Result<usize>> {
    let want = limit.saturating_sub(v.len());
    if want == 0 {
        return Poll::Ready(Ok(0));
    }
    v.reserve(want);
    // `read_buf` reads into the spare capacity (tokio tracks initialisation for us); the future
    // borrows only `io` and `v` and holds no state of its own, so polling a fresh one each time
    // is the same as keeping it.
    let mut limited = (&mut *io).take(want as u64);
    let fut = limited.read_buf(v);
    let mut fut = std::pin::pin!(fut);
    fut.as_mut().poll(cx)
}

fn parse_close(p: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let reason = String::from_utf8_lossy(&p[2..]).into_owned();
            Ok(Some((code, reason)))
        }
    }
}

/// XOR `buf` with the 4-byte `key` (RFC 6455 §5.3), eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(a) ^ k8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Puts back together the frames a peer sends in pieces (docs/PROTOCOL.md §4.4). Every link
/// accepts them (a whole frame never ends with a piece marker, so nothing else is taken for a
/// piece); pieces are only sent to peers that offered the feature.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// The pieces so far of the frame being reassembled; `None` (8 bytes inline, nothing
    /// allocated) between frames, which is always on a fast link. Boxed on purpose: inline, a
    /// `Vec` would add 16 bytes to every idle link's task.
    #[allow(clippy::box_collection)]
    buf: Option<Box<Vec<u8>>>,
}

impl Reassembly {
    /// One BINARY message: the frame it is or completes, `None` while more pieces are due.
    /// A frame larger than `max` is refused ([`WsError::TooLarge`]) before it is held.
    pub fn push(&mut self, mut msg: Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, WsError> {
        let n = msg.len();
        let last = match msg.get(n.wrapping_sub(4)..) {
            Some(t) if t == PIECE_MORE => false,
            Some(t) if t == PIECE_LAST => true,
            _ => return Ok(Some(msg)),
        };
        let held = self.buf.as_ref().map_or(0, |b| b.len());
        let size = held + (n - 4);
        if size > max {
            return Err(WsError::TooLarge {
                size: size as u64,
                limit: max,
            });
        }
        msg.truncate(n - 4);
        match (self.buf.as_mut(), last) {
            (None, true) => Ok(Some(msg)),
            (None, false) => {
                self.buf = Some(Box::new(msg));
                Ok(None)
            }
            (Some(buf), false) => {
                buf.extend_from_slice(&msg);
                Ok(None)
            }
            (Some(buf), true) => {
                buf.extend_from_slice(&msg);
                let frame = std::mem::take(&mut **buf);
                self.buf = None;
                Ok(Some(frame))
            }
        }
    }

    /// Bytes held for a frame in pieces (for tests of the idle footprint).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.capacity())
    }
}

/// The writing half of a link.
#[derive(Debug)]
pub struct WsWriter<W> {
    io: W,
    role: Role,
    /// Coalesced small frames of the current burst; empty (no allocation) between bursts.
    out: Vec<u8>,
    /// Masking-key generator (client role): xorshift seeded from the OS.
    rng: u64,
    /// The peer reassembles pieces ([`WsWriter::set_pieces`]).
    pieces: bool,
    /// The TCP socket under `io` (-1: none), for its unsent limit.
    socket: SocketFd,
    /// What a slow link's writer learned; `None` (nothing allocated) on a fast link.
    slow: Option<Box<Slow>>,
}

/// A slow link's writer state (see [`WsWriter::piece_for`]).
#[derive(Debug)]
struct Slow {
    /// Frames larger than this go in pieces.
    piece: usize,
    /// When a large write was last slow.
    at: std::time::Instant,
    /// The socket's unsent limit as last set.
    unsent: usize,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// `seed` feeds the client's masking keys (any value but 0 works; pass OS randomness).
    pub fn new(io: W, role: Role, seed: u64) -> Self {
        WsWriter {
            io,
            role,
            out: Vec::new(),
            rng: seed | 1,
            pieces: false,
            socket: -1,
            slow: None,
        }
    }

    /// The TCP socket under the writer (TLS included): its unsent limit starts at
    /// [`UNSENT_MAX`] and follows the link's rate. The fd must outlive the writer.
    pub fn set_socket(&mut self, socket: Option<SocketFd>) {
        self.socket = socket.unwrap_or(-1);
        set_unsent_limit(socket, UNSENT_MAX);
    }

    /// The peer reassembles frames sent in pieces (it offered the feature).
    pub fn set_pieces(&mut self, on: bool) {
        self.pieces = on;
    }

    /// The size of the pieces a frame of `len` bytes should go in now, or `None` to write it
    /// whole: only once a large write was seen to be slow (on a fast link frames always go
    /// whole, with no extra copy anywhere).
    pub fn piece_for(&self, len: usize) -> Option<usize> {
        let piece = self.slow.as_ref()?.piece;
        (self.pieces && len > piece).then_some(piece)
    }

    /// A write of `bytes` took `us` µs: size the next pieces to [`PIECE_TIME_US`] of the rate
    /// a slow write showed. A write the socket took at once says little (it may just have fit
    /// under the unsent limit), so pieces grow back (twice the size per such write) only once
    /// no write was slow for [`SLOW_FORGET`].
    fn observe(&mut self, bytes: usize, us: u64) {
        if !self.pieces {
            return;
        }
        let now = std::time::Instant::now();
        let socket = (self.socket >= 0).then_some(self.socket);
        if us >= SLOW_WRITE_US {
            let fit = (bytes as u64).saturating_mul(PIECE_TIME_US) / us;
            let piece = usize::try_from(fit).unwrap_or(usize::MAX).max(MIN_PIECE);
            let slow = self.slow.get_or_insert_with(|| {
                Box::new(Slow {
                    piece,
                    at: now,
                    unsent: UNSENT_MAX,
                })
            });
            slow.piece = piece;
            slow.at = now;
            // The kernel keeps about a piece unsent; the option is set again only when that
            // moved by half or more (a syscall per change of rate, not per write).
            let unsent = piece.clamp(UNSENT_MIN, UNSENT_MAX);
            if unsent > slow.unsent * 2 || unsent * 2 < slow.unsent {
                slow.unsent = unsent;
                set_unsent_limit(socket, unsent);
            }
        } else if let Some(slow) = &mut self.slow {
            if now.duration_since(slow.at) >= SLOW_FORGET {
                slow.piece = slow.piece.saturating_mul(2);
                if slow.piece >= 4 * UNSENT_MAX {
                    // Fast again: whole frames, the first unsent limit, nothing held.
                    if slow.unsent != UNSENT_MAX {
                        set_unsent_limit(socket, UNSENT_MAX);
                    }
                    self.slow = None;
                }
            }
        }
    }

    /// One piece of a frame (`payload`, a slice of the frame; masked in place for clients)
    /// as its own BINARY message ending with [`PIECE_MORE`] or [`PIECE_LAST`], after anything
    /// coalesced, and flushed. Timed, like every large write, to size the next pieces.
    pub async fn write_piece(&mut self, payload: &mut [u8], last: bool) -> io::Result<()> {
        let (h, hl, key) = self.header_for(OP_BINARY, payload.len() + 4);
        let mut marker = if last { PIECE_LAST } else { PIECE_MORE };
        if let Some(key) = key {
            apply_mask(payload, key);
            let r = payload.len() % 4;
            let rotated = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
            apply_mask(&mut marker, rotated);
        }
        self.out.extend_from_slice(&h[..hl]);
        let head = std::mem::take(&mut self.out);
        let t0 = std::time::Instant::now();
        write_parts(&mut self.io, &[&head, payload, &marker]).await?;
        self.observe(payload.len(), elapsed_us(t0));
        self.io.flush().await
    }

    fn next_key(&mut self) -> Option<[u8; 4]> {
        if self.role == Role::Server {
            return None;
        }
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        Some(((x >> 16) as u32).to_ne_bytes())
    }

    /// Frame header for `len` payload bytes, and the masking key a client must apply.
    fn header_for(&mut self, opcode: u8, len: usize) -> ([u8; 14], usize, Option<[u8; 4]>) {
        let mut h = [0u8; 14];
        h[0] = 0x80 | opcode;
        let mut at = if len < 126 {
            h[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let key = self.next_key();
        if let Some(key) = key {
            h[1] |= 0x80;
            h[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        (h, at, key)
    }

    /// Frame header for `payload`, masking it in place for clients.
    fn header(&mut self, opcode: u8, payload: &mut [u8]) -> ([u8; 14], usize) {
        let (h, hl, key) = self.header_for(opcode, payload.len());
        if let Some(key) = key {
            apply_mask(payload, key);
        }
        (h, hl)
    }

    /// Write one frame now (after anything coalesced), with no copy of the payload. A large
    /// one is timed (see [`WsWriter::piece_for`]).
    pub async fn write_frame(&mut self, opcode: u8, mut payload: Vec<u8>) -> io::Result<()> {
        let (h, hl) = self.header(opcode, &mut payload);
        let t0 = (payload.len() > COALESCE_MAX).then(std::time::Instant::now);
        if self.out.is_empty() {
            write_two(&mut self.io, &h[..hl], &payload).await?;
        } else {
            self.out.extend_from_slice(&h[..hl]);
            let out = std::mem::take(&mut self.out);
            write_two(&mut self.io, &out, &payload).await?;
        }
        if let Some(t0) = t0 {
            self.observe(payload.len(), elapsed_us(t0));
        }
        Ok(())
    }

    /// Add one frame to the current burst: small frames are coalesced (written once the burst
    /// buffer reaches [`OUT_HIGH`]), large ones written at once. Call [`WsWriter::flush`] at
    /// the end of the burst.
    pub async fn feed(&mut self, opcode: u8, mut payload: Vec<u8>) -> io::Result<()> {
        if payload.len() > COALESCE_MAX {
            return self.write_frame(opcode, payload).await;
        }
        let (h, hl) = self.header(opcode, &mut payload);
        if self.out.capacity() == 0 {
            self.out.reserve(OUT_HIGH + COALESCE_MAX + 14);
        }
        self.out.extend_from_slice(&h[..hl]);
        self.out.extend_from_slice(&payload);
        if self.out.len() >= OUT_HIGH {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// [`WsWriter::feed`] for a BINARY payload borrowed from a shared buffer: a server writes
    /// it as it is; a client needs its own copy to mask.
    pub async fn feed_binary_slice(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.role == Role::Client || payload.len() <= COALESCE_MAX {
            return self.feed(OP_BINARY, payload.to_vec()).await;
        }
        // Server role: no mask.
        let (h, hl, _) = self.header_for(OP_BINARY, payload.len());
        self.out.extend_from_slice(&h[..hl]);
        let out = std::mem::take(&mut self.out);
        write_two(&mut self.io, &out, payload).await
    }

    /// Write what the burst coalesced, flush the stream, release the burst buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.io.write_all(&self.out).await;
            self.out = Vec::new();
            r?;
        } else if self.out.capacity() > 0 {
            self.out = Vec::new();
        }
        self.io.flush().await
    }

    /// One BINARY message, written and flushed.
    pub async fn send_binary(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.write_frame(OP_BINARY, payload).await?;
        self.io.flush().await
    }

    /// One TEXT message, written and flushed.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.write_frame(OP_TEXT, text.as_bytes().to_vec()).await?;
        self.io.flush().await
    }

    /// A PONG answering a ping's payload (≤ 125 bytes), coalesced with the burst.
    pub async fn feed_pong(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.feed(OP_PONG, payload).await
    }

    /// A BINARY frame, coalesced with the burst.
    pub async fn feed_binary(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.feed(OP_BINARY, payload).await
    }

    /// Send a close frame (code, reason cut to fit 125 bytes) and flush.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut p = code.to_be_bytes().to_vec();
        let mut r = reason;
        while r.len() > MAX_CONTROL - 2 {
            let mut end = MAX_CONTROL - 2;
            while !r.is_char_boundary(end) {
                end -= 1;
            }
            r = &r[..end];
        }
        p.extend_from_slice(r.as_bytes());
        self.write_frame(OP_CLOSE, p).await?;
        self.io.flush().await
    }

    /// Shut down the write side of the stream (TCP FIN / TLS close_notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

fn elapsed_us(t0: std::time::Instant) -> u64 {
    u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Write `parts` in order, completely, with vectored writes.
async fn write_parts<W: AsyncWrite + Unpin>(io: &mut W, parts: &[&[u8]; 3]) -> io::Result<()> {
    let (mut i, mut off) = (0, 0);
    while i < parts.len() {
        if off == parts[i].len() {
            (i, off) = (i + 1, 0);
            continue;
        }
        let bufs = [
            IoSlice::new(&parts[i][off..]),
            IoSlice::new(parts.get(i + 1).copied().unwrap_or_default()),
            IoSlice::new(parts.get(i + 2).copied().unwrap_or_default()),
        ];
        let mut n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < parts.len() {
            let take = n.min(parts[i].len() - off);
            (n, off) = (n - take, off + take);
            if off == parts[i].len() {
                (i, off) = (i + 1, 0);
            }
        }
    }
    Ok(())
}

/// Write `a` then `b` completely, with vectored writes where the stream supports them.
async fn write_two<W: AsyncWrite + Unpin>(io: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut ai, mut bi) = (0, 0);
    while ai < a.len() || bi < b.len() {
        let n = if ai < a.len() && bi < b.len() {
            let bufs = [IoSlice::new(&a[ai..]), IoSlice::new(&b[bi..])];
            poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &bufs)).await?
        } else if ai < a.len() {
            io.write(&a[ai..]).await?
        } else {
            io.write(&b[bi..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len() - ai);
        ai += from_a;
        bi += n - from_a;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Duplex = tokio::io::DuplexStream;

    /// (client writer, server reader, server writer, client reader) over two pipes.
    fn pair(
        max: usize,
    ) -> (
        WsWriter<Duplex>,
        WsReader<Duplex>,
        WsWriter<Duplex>,
        WsReader<Duplex>,
    ) {
        let (c2s_w, c2s_r) = tokio::io::duplex(256 * 1024);
        let (s2c_w, s2c_r) = tokio::io::duplex(256 * 1024);
        (
            WsWriter::new(c2s_w, Role::Client, 42),
            WsReader::new(c2s_r, Role::Server, max),
            WsWriter::new(s2c_w, Role::Server, 0),
            WsReader::new(s2c_r, Role::Client, max),
        )
    }

    #[tokio::test]
    async fn masked_and_unmasked_messages_of_every_size_round_trip() {
        let (mut cw, mut sr, mut sw, mut cr) = pair(4 << 20);
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 100_000, 3 << 20];
        let writer = tokio::spawn(async move {
            for (i, &n) in sizes.iter().enumerate() {
                let p: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
                cw.feed_binary(p.clone()).await.unwrap();
                sw.feed_binary(p).await.unwrap();
            }
            // Shared (borrowed) payloads, small and large, both roles.
            for n in [300usize, 100_000] {
                let p = vec![9u8; n];
                cw.feed_binary_slice(&p).await.unwrap();
                sw.feed_binary_slice(&p).await.unwrap();
            }
            cw.flush().await.unwrap();
            sw.flush().await.unwrap();
            cw.send_text("héllo").await.unwrap();
            cw.close(4003, "bye").await.unwrap();
            (cw, sw)
        });
        for (i, &n) in sizes.iter().enumerate() {
            let want: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
            assert_eq!(
                sr.next().await.unwrap(),
                Some(WsMessage::Binary(want.clone()))
            );
            assert_eq!(cr.next().await.unwrap(), Some(WsMessage::Binary(want)));
        }
        for n in [300usize, 100_000] {
            assert_eq!(
                sr.next().await.unwrap(),
                Some(WsMessage::Binary(vec![9u8; n]))
            );
            assert_eq!(
                cr.next().await.unwrap(),
                Some(WsMessage::Binary(vec![9u8; n]))
            );
        }
        assert_eq!(
            sr.next().await.unwrap(),
            Some(WsMessage::Text("héllo".into()))
        );
        assert_eq!(
            sr.next().await.unwrap(),
            Some(WsMessage::Close(Some((4003, "bye".into()))))
        );
        let _ = writer.await.unwrap();
    }

    #[tokio::test]
    async fn fragments_are_reassembled_and_control_frames_interleave() {
        let (a, b) = tokio::io::duplex(1024);
        let mut r = WsReader::new(b, Role::Client, 1024);
        let mut raw = a;
        // "ab" + ping("x") + "cd" (final)
        raw.write_all(&[0x02, 2, b'a', b'b', 0x89, 1, b'x', 0x80, 2, b'c', b'd'])
            .await
            .unwrap();
        assert_eq!(
            r.next().await.unwrap(),
            Some(WsMessage::Ping(b"x".to_vec()))
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(WsMessage::Binary(b"abcd".to_vec()))
        );
        // Nothing more to read: an idle reader holds no buffer.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(idle.is_err());
        assert_eq!(r.buffered_capacity(), 0);
        drop(raw);
        assert_eq!(r.next().await.unwrap(), None);
        assert_eq!(r.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        for bytes in [
            vec![0x82u8, 5, 1, 2, 3, 4, 5],           // unmasked from a client
            vec![0xC2, 0x80, 0, 0, 0, 0],             // RSV1
            vec![0x83, 0x80, 0, 0, 0, 0],             // unknown opcode
            vec![0x09, 0x80, 0, 0, 0, 0],             // fragmented ping
            vec![0x80, 0x80, 0, 0, 0, 0],             // continuation without a message
            vec![0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0], // 16 MiB > limit
            vec![0x82, 0x85, 1, 2],                   // truncated
        ] {
            let (mut a, b) = tokio::io::duplex(1024);
            let mut r = WsReader::new(b, Role::Server, 1024);
            a.write_all(&bytes).await.unwrap();
            drop(a);
            assert!(r.next().await.is_err(), "{bytes:?} accepted");
        }
    }

    #[test]
    fn a_large_message_grows_by_what_has_arrived_in_the_kernel_never_past_its_length() {
        let len = 1 << 20;
        let mut v = Vec::new();
        grow(&mut v, len, 1_000, || 900_000);
        assert_eq!(
            v.capacity(),
            901_000,
            "held + waiting in the kernel, one step"
        );
        let mut v = Vec::new();
        grow(&mut v, len, 1_000, || 0);
        assert_eq!(v.capacity(), READ_CHUNK, "nothing waiting: the first step");
        let mut v = Vec::new();
        grow(&mut v, len, 1_000, || usize::MAX);
        assert_eq!(v.capacity(), len, "never past the message");
        let mut v = Vec::new();
        grow(&mut v, 1_000, 1_000, || {
            panic!("small messages never ask the kernel")
        });
        assert_eq!(v.capacity(), 1_000);
    }

    #[tokio::test]
    async fn an_announced_length_reserves_nothing_before_its_bytes_arrive() {
        const ANNOUNCED: usize = 16 << 20;
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut r = WsReader::new(b, Role::Server, 32 << 20);
        // A masked BINARY header announcing 16 MiB, then 10 bytes of it.
        let mut head = vec![0x82u8, 0x80 | 127];
        head.extend_from_slice(&(ANNOUNCED as u64).to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, 0]);
        head.extend_from_slice(&[7u8; 10]);
        a.write_all(&head).await.unwrap();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(
            pending.is_err(),
            "a 10-byte prefix completed a 16 MiB message"
        );
        let held = r.buffered_capacity();
        assert!(
            held <= 2 * READ_CHUNK,
            "the reader holds {held} bytes for 10 received (announced {ANNOUNCED})"
        );
        // The rest arrives in pieces: the buffer grows with it, and the message is whole.
        let writer = tokio::spawn(async move {
            let rest = vec![7u8; ANNOUNCED - 10];
            for piece in rest.chunks(1 << 20) {
                a.write_all(piece).await.unwrap();
            }
            a
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), r.next())
            .await
            .expect("the message within 10 s")
            .unwrap();
        match got {
            Some(WsMessage::Binary(v)) => {
                assert_eq!(v.len(), ANNOUNCED);
                assert!(v.iter().all(|&x| x == 7));
                assert!(v.capacity() <= ANNOUNCED, "capacity {}", v.capacity());
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(writer.await.unwrap());
    }

    /// A frame written in pieces by a client (masked) and a server, with whole frames between
    /// the pieces, comes out of the reader and [`Reassembly`] as it went in.
    #[tokio::test]
    async fn a_frame_in_pieces_with_frames_between_them_is_put_back_together() {
        let (mut cw, mut sr, mut sw, mut cr) = pair(1 << 20);
        let frame: Vec<u8> = (0..10_003u32).map(|i| (i * 31) as u8).collect();
        for (w, r) in [(&mut cw, &mut sr), (&mut sw, &mut cr)] {
            let mut bytes = frame.clone();
            let mut re = Reassembly::default();
            let pieces = [0..4_000, 4_000..4_001, 4_001..10_003];
            for (k, range) in pieces.iter().enumerate() {
                let last = k == pieces.len() - 1;
                w.write_piece(&mut bytes[range.clone()], last)
                    .await
                    .unwrap();
                if !last {
                    w.feed_binary(vec![7u8; 5]).await.unwrap();
                    w.flush().await.unwrap();
                }
            }
            let mut got = Vec::new();
            while got.len() < 3 {
                let Some(WsMessage::Binary(m)) = r.next().await.unwrap() else {
                    panic!("a binary message")
                };
                if let Some(f) = re.push(m, 1 << 20).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, [vec![7u8; 5], vec![7u8; 5], frame.clone()]);
            assert_eq!(re.buffered_capacity(), 0);
        }
    }

    #[test]
    fn reassembly_bounds_the_frame_and_passes_whole_frames_through() {
        let piece = |n: usize, end: [u8; 4]| {
            let mut v = vec![1u8; n];
            v.extend_from_slice(&end);
            v
        };
        let mut re = Reassembly::default();
        assert_eq!(re.push(piece(60, PIECE_MORE), 100).unwrap(), None);
        assert!(matches!(
            re.push(piece(41, PIECE_LAST), 100),
            Err(WsError::TooLarge { size: 101, .. })
        ));
        // A single last piece is a whole frame; short messages are frames as they are.
        let mut re = Reassembly::default();
        assert_eq!(
            re.push(piece(3, PIECE_LAST), 100).unwrap(),
            Some(vec![1u8; 3])
        );
        assert_eq!(re.push(vec![0xFF; 3], 100).unwrap(), Some(vec![0xFF; 3]));
    }

    #[test]
    fn pieces_start_only_after_a_slow_write_and_grow_back_once_writes_are_fast() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WsWriter::new(a, Role::Server, 0);
        w.observe(256 * 1024, 2_000_000);
        assert_eq!(w.piece_for(1 << 20), None, "no pieces without the feature");
        w.set_pieces(true);
        w.observe(256 * 1024, 50);
        assert_eq!(w.piece_for(1 << 20), None, "a fast write: whole frames");
        // 256 KiB in 2 s: 5 ms of that rate is 655 bytes, so the smallest piece.
        w.observe(256 * 1024, 2_000_000);
        assert_eq!(w.piece_for(1 << 20), Some(MIN_PIECE));
        assert_eq!(w.piece_for(MIN_PIECE), None);
        // Fast writes right after a slow one change nothing; a second later they double it.
        w.observe(MIN_PIECE, 10);
        assert_eq!(w.piece_for(1 << 20), Some(MIN_PIECE));
        if let Some(slow) = &mut w.slow {
            slow.at -= SLOW_FORGET;
        }
        w.observe(MIN_PIECE, 10);
        assert_eq!(w.piece_for(1 << 20), Some(2 * MIN_PIECE));
    }

    #[test]
    fn masking_twice_is_the_identity() {
        let mut v: Vec<u8> = (0..1001).map(|i| i as u8).collect();
        let orig = v.clone();
        apply_mask(&mut v, [1, 2, 3, 4]);
        assert_eq!(v[0], 1);
        assert_eq!(v[5], 5 ^ 2);
        apply_mask(&mut v, [1, 2, 3, 4]);
        assert_eq!(v, orig);
    }
}

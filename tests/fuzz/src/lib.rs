//! What the fuzz targets share: a reader of the fuzzer's bytes, a byte stream that hands its
//! data out in fuzzer-chosen pieces, the fixed handshake parties and the proxy's fixed mesh.
//! The seed generator (`examples/seeds.rs`) builds its inputs with the same pieces, so the
//! committed corpus stays valid when the formats change.

pub mod handshake;
pub mod proxy;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Reads the fuzzer's bytes front to back; past the end every read gives zeros / empty.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// A u16-length-prefixed byte string.
    pub fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Appends a u16-length-prefixed byte string (the inverse of [`Input::bytes`]).
pub fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(n)]);
}

/// A byte stream that gives its data out in pieces whose sizes follow `seed` (0: as much as
/// asked), both as a std `Read` (tungstenite) and a tokio `AsyncRead` (our reader); always
/// ready, so an async reader that returns `Pending` on it has stalled. Writes are discarded
/// (tungstenite answers pings and closes).
pub struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
    rng: u32,
}

impl<'a> Pieces<'a> {
    pub fn new(data: &'a [u8], seed: u8) -> Self {
        Pieces {
            data,
            pos: 0,
            rng: u32::from(seed),
        }
    }

    fn next_len(&mut self, want: usize) -> usize {
        if self.rng == 0 {
            return want;
        }
        // xorshift32: piece sizes 1..=64, sometimes the whole request.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        if x % 8 == 0 {
            want
        } else {
            want.min(1 + (x as usize >> 8) % 64)
        }
    }
}

impl io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.next_len(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl io::Write for Pieces<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .next_len(buf.remaining())
            .min(self.data.len() - self.pos);
        buf.put_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

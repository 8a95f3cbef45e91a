//! The hand-written header JSON (`proto::header_json`) against serde_json, differentially: the
//! writer must produce serde's exact bytes, and whatever the fast reader accepts serde must read
//! to the same header (the reader defers everything else to serde).

use clawmatrix::proto::header_json::{read, write};
use clawmatrix::proto::{Body, CallId, FrameId, Header};

/// splitmix64: a seeded, dependency-free generator (the cases are reproducible).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        b
    }
    /// Numbers at the edges as often as in the middle.
    fn num(&mut self) -> u64 {
        match self.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(10),
            _ => self.next() >> self.below(64),
        }
    }
    /// Mostly plain ids, sometimes strings that need escaping or are not ASCII.
    fn text(&mut self) -> String {
        const PLAIN: &[&str] = &["office-01", "home", "cloud.eu_1", "A", "model.http", ""];
        const ODD: &[&str] = &[
            "quo\"te",
            "back\\slash",
            "tab\tnl\n",
            "é😀",
            "\u{1}",
            "sp ace",
            "\u{7f}/",
        ];
        if self.below(4) == 0 {
            let mut s = String::new();
            for _ in 0..=self.below(3) {
                s.push_str(ODD[self.below(ODD.len() as u64) as usize]);
            }
            s
        } else {
            PLAIN[self.below(PLAIN.len() as u64) as usize].to_string()
        }
    }
    fn opt_text(&mut self) -> Option<String> {
        (self.below(2) == 0).then(|| self.text())
    }
}

fn body(r: &mut Rng) -> Body {
    let call_id = CallId(r.bytes16());
    match r.below(13) {
        0 => Body::Ping {
            seq: r.num(),
            t: r.num(),
        },
        1 => Body::Pong {
            seq: r.num(),
            t: r.num(),
        },
        2 => Body::Digest {
            entries: vec![(r.text(), r.num(), r.num())],
            sum: None,
            ask: r.below(2) == 0,
        },
        3 => Body::Gossip {
            records: r.num() as u32,
        },
        4 => Body::Leave {
            node: r.text(),
            incarnation: r.num(),
            sig: clawmatrix::proto::Sig64({
                let mut s = [0u8; 64];
                for c in s.chunks_mut(16) {
                    c.copy_from_slice(&r.bytes16());
                }
                s
            }),
        },
        5 => Body::Call {
            call_id,
            method: r.text(),
            deadline_ms: (r.below(2) == 0).then(|| r.num()),
        },
        6 => Body::Reply {
            call_id,
            ok: r.below(2) == 0,
            code: r.opt_text(),
            message: r.opt_text(),
        },
        7 => Body::Chunk {
            call_id,
            seq: r.num(),
        },
        8 => Body::End {
            call_id,
            ok: r.below(2) == 0,
            code: r.opt_text(),
            message: r.opt_text(),
        },
        9 => Body::Cancel {
            call_id,
            reason: r.text(),
        },
        10 => Body::Credit {
            call_id,
            chunks: r.num(),
        },
        11 => Body::Sealed {
            call_id,
            ctr: r.num(),
        },
        _ => Body::Unreachable {
            call_id,
            node: r.text(),
        },
    }
}

fn header(r: &mut Rng) -> Header {
    Header {
        v: r.num() as u8,
        id: FrameId(r.bytes16()),
        src: r.text(),
        dst: r.opt_text(),
        ttl: r.num() as u8,
        hops: r.num() as u8,
        ts: r.num(),
        body: body(r),
    }
}

fn written(h: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, h).expect("writes");
    out
}

#[test]
fn the_writer_produces_serdes_exact_bytes_for_every_body_kind() {
    let mut r = Rng(1);
    for _ in 0..20_000 {
        let h = header(&mut r);
        assert_eq!(
            String::from_utf8(written(&h)).expect("utf-8"),
            serde_json::to_string(&h).expect("serde writes"),
            "{h:?}"
        );
    }
}

#[test]
fn the_reader_reads_canonical_headers_itself_and_leaves_the_rest_to_serde() {
    let mut r = Rng(2);
    let (mut fast, mut deferred) = (0, 0);
    for _ in 0..20_000 {
        let h = header(&mut r);
        let bytes = written(&h);
        match read(&bytes) {
            Some(back) => {
                assert_eq!(back, h);
                fast += 1;
            }
            None => {
                // Only what needs serde: escapes in a string, or a digest body.
                let escaped = String::from_utf8_lossy(&bytes).contains('\\');
                let nested = matches!(h.body, Body::Digest { .. });
                assert!(
                    escaped || nested,
                    "fast path refused a canonical header: {h:?}"
                );
                deferred += 1;
            }
        }
    }
    // Both paths are exercised; most traffic is on the fast one.
    assert!(
        fast > 10_000 && deferred > 1_000,
        "fast {fast}, deferred {deferred}"
    );
}

#[test]
fn whatever_the_reader_accepts_serde_reads_to_the_same_header() {
    let mut r = Rng(3);
    let mut accepted = 0;
    for _ in 0..100_000 {
        let h = header(&mut r);
        let mut m = written(&h);
        // One to three edits: overwrite, insert or delete a byte, or truncate.
        for _ in 0..=r.below(3) {
            let at = r.below(m.len() as u64 + 1) as usize;
            const BYTES: &[u8] = b"0123456789abcdefA{}[]\":, \\nulltruefalse-.eE\x00\xff";
            let b = BYTES[r.below(BYTES.len() as u64) as usize];
            match r.below(4) {
                0 if at < m.len() => m[at] = b,
                1 => m.insert(at, b),
                2 if at < m.len() => {
                    m.remove(at);
                }
                _ => m.truncate(at),
            }
        }
        if let Some(fast) = read(&m) {
            accepted += 1;
            let slow: Header = serde_json::from_slice(&m).unwrap_or_else(|e| {
                panic!(
                    "fast path accepted what serde rejects ({e}): {}",
                    String::from_utf8_lossy(&m)
                )
            });
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(&m));
        }
    }
    // Some edits keep the form canonical (a digit for a digit): the check above did run.
    assert!(accepted > 1_000, "{accepted}");
}

#[test]
fn a_literal_call_header_is_read_by_the_fast_path() {
    let json = br#"{"v":1,"id":"000102030405060708090a0b0c0d0e0f","src":"home-01","dst":"office-01","ttl":8,"hops":0,"ts":1234,"body":{"type":"call","call_id":"ffeeddccbbaa99887766554433221100","method":"mesh.echo","deadline_ms":5000}}"#;
    let h = read(json).expect("canonical");
    assert_eq!(h.src, "home-01");
    assert_eq!(h.dst.as_deref(), Some("office-01"));
    assert_eq!(
        h.body,
        Body::Call {
            call_id: CallId::from_hex("ffeeddccbbaa99887766554433221100").expect("hex"),
            method: "mesh.echo".into(),
            deadline_ms: Some(5000),
        }
    );
    assert_eq!(written(&h), json.to_vec());
    // The same header with a space or keys in another order is left to serde.
    assert!(read(br#"{"v":1, "id":"000102030405060708090a0b0c0d0e0f"}"#).is_none());
    assert!(read(br#"{"id":"000102030405060708090a0b0c0d0e0f","v":1}"#).is_none());
}

#[test]
fn a_body_alone_is_written_as_serde_writes_it_and_read_back_the_same() {
    use clawmatrix::proto::header_json::{read_body_only, write_body_only};
    let mut r = Rng(0x5EA1);
    let (mut fast, mut deferred) = (0, 0);
    for _ in 0..20_000 {
        let b = body(&mut r);
        let mut ours = Vec::new();
        write_body_only(&mut ours, &b).expect("writes");
        assert_eq!(ours, serde_json::to_vec(&b).expect("serde"), "{b:?}");
        match read_body_only(&ours) {
            Some(back) => {
                assert_eq!(back, b);
                fast += 1;
            }
            None => {
                let escaped = ours.contains(&b'\\');
                assert!(escaped || matches!(b, Body::Digest { .. }), "{b:?}");
                deferred += 1;
            }
        }
    }
    assert!(fast > deferred, "{fast} fast, {deferred} deferred");
    // The codec's body-only frame round trips, and never panics on any truncation.
    let b = Body::Chunk {
        call_id: CallId([7; 16]),
        seq: 9,
    };
    let bytes = clawmatrix::proto::codec::encode_body_owned(&b, b"payload".to_vec()).expect("enc");
    let (back, payload) =
        clawmatrix::proto::codec::decode_body_owned(bytes.clone()).expect("decodes");
    assert_eq!((back, payload.as_slice()), (b, &b"payload"[..]));
    for cut in 0..bytes.len() {
        let _ = clawmatrix::proto::codec::decode_body_owned(bytes[..cut].to_vec());
    }
}

//! The mesh frame codec (`proto::codec`), its hand-written header reader (`proto::header_json`)
//! and the signed gossip payload (`proto::signed`): arbitrary bytes decode or are refused with
//! an error, never a panic; whatever decodes re-encodes, and decodes again to the same value.
//! The hand-written reader is also checked against serde on the same JSON: when it accepts a
//! header, serde reads the same one.

#![no_main]

use clawmatrix::proto::codec::{decode_body_owned, decode_header, encode_body_owned};
use clawmatrix::proto::frame::{Header, NodeRecord};
use clawmatrix::proto::{decode, decode_owned, encode, header_json, signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The binary frame: `payload | header JSON | u32 BE length`.
    let frame = decode(data);
    assert_eq!(
        frame,
        decode_owned(data.to_vec()),
        "borrowed and owned decode differ"
    );
    if let Ok(frame) = frame {
        let wire = encode(&frame.header, &frame.payload).expect("a decoded frame re-encodes");
        let again = decode(&wire).expect("a re-encoded frame decodes");
        assert_eq!(again, frame, "round trip changed the frame");
        // The canonical header, when the fast path reads it (no escapes), reads the same.
        let hlen = wire.len() - frame.payload.len() - 4;
        let canonical = &wire[frame.payload.len()..frame.payload.len() + hlen];
        if let Some(h) = header_json::read(canonical) {
            assert_eq!(h, frame.header, "the fast path misreads a canonical header");
        }
    }

    // The header JSON on its own, and the fast reader against serde.
    if let Some(h) = header_json::read(data) {
        let serde: Header =
            serde_json::from_slice(data).expect("fast path accepted, serde refused");
        assert_eq!(h, serde, "fast path and serde read different headers");
    }
    if let Ok(h) = decode_header(data) {
        let mut out = Vec::new();
        header_json::write(&mut out, &h).expect("a decoded header writes");
        assert_eq!(decode_header(&out).expect("a written header reads"), h);
    }

    // A sealed frame's inner body: `payload | body JSON | u32 BE length`.
    if let Ok((body, payload)) = decode_body_owned(data.to_vec()) {
        let wire = encode_body_owned(&body, payload.clone()).expect("a decoded body re-encodes");
        let (b2, p2) = decode_body_owned(wire).expect("a re-encoded body decodes");
        assert_eq!((b2, p2), (body, payload), "body round trip");
    }

    // The signed gossip payload: records split back to exactly the bytes, and each record's
    // JSON, when it parses, round-trips.
    let count = u32::from(data.first().copied().unwrap_or(0) % 8);
    if let Ok(records) = signed::split(data, count) {
        assert_eq!(records.len(), count as usize);
        let joined: Vec<u8> = records
            .iter()
            .flat_map(|r| r.wire.iter().copied())
            .collect();
        assert_eq!(joined, data, "split records do not cover the payload");
        for r in &records {
            assert_eq!(r.wire.len(), 4 + r.json.len() + 64);
            if let Ok(rec) = serde_json::from_slice::<NodeRecord>(r.json) {
                let json = serde_json::to_vec(&rec).expect("a record serializes");
                let back: NodeRecord = serde_json::from_slice(&json).expect("and parses");
                assert_eq!(back, rec, "record round trip");
            }
        }
    }
});

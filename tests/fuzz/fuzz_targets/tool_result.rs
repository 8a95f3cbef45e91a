//! The caller's tool-result assembler (`proto::tool_result::Assembler`): arbitrary sequences of
//! result parts (JSON or raw form, any announced lengths) never panic, never make it hold more
//! than `MAX_RESULT_BYTES` (plus its prefix) at any point, and what it finishes is exactly the
//! bytes that were pushed.
//!
//! Input: `[prefix len][prefix][ops…]`, an op being `0` + u16-prefixed part, or `1` + u16 count:
//! the last part pushed `count` more times (how a few bytes of input reach the 16 MiB limit).

#![no_main]

use clawmatrix::proto::tool_result::{
    Assembled, Assembler, AssemblyError, MAX_RESULT_BYTES, RAW_FIXED, RAW_RESULT,
};
use clawmatrix_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let plen = usize::from(input.u8() % 65);
    let prefix = String::from_utf8_lossy(input.take(plen)).into_owned();
    let bound = MAX_RESULT_BYTES + prefix.len();
    let mut asm = Assembler::new(prefix.clone());
    let mut pushed: Vec<u8> = Vec::new();
    let mut last: &[u8] = &[];
    let mut failed = None;
    'ops: while !input.is_empty() {
        let (part, times) = match input.u8() % 2 {
            0 => {
                last = input.bytes();
                (last, 1)
            }
            _ => (last, usize::from(input.u16())),
        };
        for _ in 0..times {
            let r = asm.push(part);
            assert!(
                asm.held_bytes() <= bound,
                "the assembler holds {} bytes (limit {bound}) after {} pushed",
                asm.held_bytes(),
                pushed.len() + part.len()
            );
            match r {
                Ok(()) => pushed.extend_from_slice(part),
                Err(e) => {
                    // The form is the first byte sent, this refused part's if it was the first.
                    if pushed.is_empty() {
                        pushed.extend_from_slice(&part[..part.len().min(1)]);
                    }
                    failed = Some(e);
                    break 'ops;
                }
            }
        }
    }
    if let Some(e) = failed {
        // Too large only past the limit (sent or announced); malformed only for the raw form.
        match e {
            AssemblyError::TooLarge(_) => {}
            AssemblyError::Malformed(m) => {
                assert_eq!(
                    pushed.first(),
                    Some(&RAW_RESULT),
                    "malformed JSON form: {m}"
                )
            }
        }
        return;
    }
    match asm.finish() {
        Ok(Assembled::Json { bytes, prefix: p }) => {
            assert_eq!(bytes, pushed, "JSON form: not the bytes pushed");
            assert_eq!(p, prefix);
        }
        Ok(Assembled::Raw {
            head,
            text,
            prefix_len,
        }) => {
            assert_eq!(prefix_len, prefix.len());
            assert_eq!(&text[..prefix_len], prefix.as_bytes());
            let mut body = head.clone();
            body.extend_from_slice(&text[prefix_len..]);
            assert_eq!(pushed.first(), Some(&RAW_RESULT));
            assert_eq!(body, pushed[RAW_FIXED..], "raw form: not the bytes pushed");
            let text_len = u64::from_be_bytes(pushed[1..9].try_into().expect("8 bytes"));
            let head_len = u32::from_be_bytes(pushed[9..13].try_into().expect("4 bytes"));
            assert_eq!((text.len() - prefix_len) as u64, text_len);
            assert_eq!(head.len() as u64, u64::from(head_len));
        }
        Err(AssemblyError::Malformed(_)) => {
            assert_eq!(pushed.first(), Some(&RAW_RESULT), "JSON form refused")
        }
        Err(AssemblyError::TooLarge(m)) => panic!("too large at finish: {m}"),
    }
});

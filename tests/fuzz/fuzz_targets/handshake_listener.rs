//! The listening side of the handshake (`proto::handshake::Acceptor`) against a fuzzer-played
//! dialer: at each step the honest dialer's frame, a replayed one, the fuzzer's own text, or
//! time passing (`clawmatrix_fuzz::handshake`). Never panics; reaches "authenticated" only when
//! everything it relies on in what it was fed says what an honest dialer holding an accepted secret said (and
//! admission allowed it), naming that dialer and its key; and does reach it for an honest,
//! allowed exchange.
//!
//! Input: `[flags][ops…]` (flags: `handshake::ListenerCase`, ops: `handshake::next_op`).

#![no_main]

use clawmatrix::proto::handshake_frame::RejectCode;
use clawmatrix::proto::{HandshakeFrame, NonceCache, Step, FEATURES};
use clawmatrix_fuzz::handshake::{dialer_key, next_op, relied_on, ListenerCase, Op, PREVIOUS};
use clawmatrix_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let case = ListenerCase { flags: input.u8() };
    let honest = case.honest();
    let mut acc = case.ours();
    let mut nonces = NonceCache::new(8);
    let mut frames = 0usize;
    let mut faithful = true;
    let mut all_honest = true;
    let mut done = false;
    let mut finished = false;
    for _ in 0..6 {
        let Some(op) = next_op(&mut input) else {
            break;
        };
        let text = match op {
            Op::Honest => match honest.get(frames) {
                Some(f) => f.encode(),
                None => break,
            },
            Op::Replay(i) => {
                all_honest = false;
                honest[i % honest.len()].encode()
            }
            Op::Text(t) => {
                all_honest = false;
                t
            }
            Op::Tick(now) => {
                all_honest = false;
                if let Some(step) = acc.on_tick(now) {
                    assert!(
                        now >= acc.deadline() && !finished,
                        "timed out early or twice"
                    );
                    assert!(matches!(
                        step,
                        Step::Rejected {
                            code: RejectCode::Timeout,
                            ..
                        }
                    ));
                    finished = true;
                }
                continue;
            }
        };
        let relied = |f: HandshakeFrame| relied_on(f, case.dialer_secret() == PREVIOUS);
        faithful &= HandshakeFrame::decode(&text).ok().map(relied)
            == honest.get(frames).cloned().map(relied);
        frames += 1;
        let admit_ok = case.admit_ok();
        let step = acc.on_frame(&text, &mut nonces, |_, _| {
            if admit_ok {
                Ok(())
            } else {
                Err(RejectCode::DuplicateNode)
            }
        });
        match step {
            Step::Done {
                send,
                peer,
                peer_key,
                features,
            } => {
                assert!(
                    !done && !finished,
                    "authenticated after the handshake ended"
                );
                assert!(
                    faithful,
                    "authenticated a dialer that did not say what an honest one said"
                );
                assert!(
                    case.accepts(),
                    "authenticated a dialer without an accepted secret"
                );
                assert!(admit_ok, "authenticated a dialer admission refused");
                assert_eq!(peer, case.dialer_id());
                assert_eq!(peer_key, dialer_key().public());
                assert!(matches!(send, Some(HandshakeFrame::Welcome { .. })));
                assert_eq!(features, FEATURES, "negotiated features");
                done = true;
                finished = true;
            }
            Step::Send(f) => {
                assert!(!finished, "answered after the handshake ended");
                assert!(matches!(f, HandshakeFrame::Challenge { .. }), "sent {f:?}");
            }
            Step::Rejected { .. } => finished = true,
        }
    }
    if all_honest && frames == 2 && honest.len() == 2 && case.accepts() && case.admit_ok() {
        assert!(done, "an honest, allowed exchange did not authenticate");
    }
});

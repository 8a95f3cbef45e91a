//! The dialing side of the handshake (`proto::handshake::Dialer`) against a fuzzer-played
//! listener: at each step the honest listener's frame, a replayed one, the fuzzer's own text,
//! or time passing (`clawmatrix_fuzz::handshake`). Never panics; reaches "authenticated" only
//! when everything it relies on in what it was fed says what an honest listener holding our secret said (the one we
//! expect, not ourselves, admitted), naming that listener and its key; and does reach it for
//! an honest, allowed exchange.
//!
//! Input: `[flags][ops…]` (flags: `handshake::DialerCase`, ops: `handshake::next_op`).

#![no_main]

use clawmatrix::proto::handshake_frame::RejectCode;
use clawmatrix::proto::{HandshakeFrame, Step, FEATURES};
use clawmatrix_fuzz::handshake::{listener_key, next_op, relied_on, DialerCase, Op};
use clawmatrix_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let case = DialerCase { flags: input.u8() };
    let honest = case.honest();
    let (mut dialer, hello) = case.ours();
    assert!(matches!(hello, HandshakeFrame::Hello { .. }));
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
                match honest.get(i % honest.len().max(1)) {
                    Some(f) => f.encode(),
                    None => continue,
                }
            }
            Op::Text(t) => {
                all_honest = false;
                t
            }
            Op::Tick(now) => {
                all_honest = false;
                if let Some(step) = dialer.on_tick(now) {
                    assert!(
                        now >= dialer.deadline() && !finished,
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
        let relied = |f: HandshakeFrame| relied_on(f, false);
        faithful &= HandshakeFrame::decode(&text).ok().map(relied)
            == honest.get(frames).cloned().map(relied);
        frames += 1;
        let admit_ok = case.admit_ok();
        let step = dialer.on_frame(&text, |_, _| {
            if admit_ok {
                Ok(())
            } else {
                Err(RejectCode::KeyChanged)
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
                    "authenticated a listener that did not say what an honest one said"
                );
                assert!(
                    case.accepts(),
                    "authenticated a listener without our secret"
                );
                assert!(admit_ok, "authenticated a listener admission refused");
                assert_eq!(peer, case.listener_id());
                assert_eq!(peer_key, listener_key().public());
                assert!(send.is_none());
                assert_eq!(features, FEATURES, "negotiated features");
                done = true;
                finished = true;
            }
            Step::Send(f) => {
                assert!(!finished, "answered after the handshake ended");
                assert!(matches!(f, HandshakeFrame::Auth { .. }), "sent {f:?}");
            }
            Step::Rejected { .. } => finished = true,
        }
    }
    if all_honest && frames == 2 && honest.len() == 2 && case.accepts() && case.admit_ok() {
        assert!(done, "an honest, allowed exchange did not authenticate");
    }
});

//! `cargo run --example faultproxy -- --target PORT [--listen PORT] [--control PORT]
//! [--sockbuf BYTES] [--seed N]`: the lab's fault-injecting TCP proxy (see `mod.rs`). Prints
//! one JSON line `{"listen":P,"control":C,"target":"127.0.0.1:T","seed":S}` once both ports
//! are bound, then serves until killed (or until stdin closes, with `--exit-on-stdin-close`,
//! so a crashed parent does not leave proxies behind).

#[path = "mod.rs"]
#[allow(dead_code)] // the tests read more of it than the binary does
mod faultproxy;

use faultproxy::{loopback_target, start, Options};

fn usage(msg: &str) -> ! {
    eprintln!("faultproxy: {msg}");
    eprintln!("usage: faultproxy --target PORT|IP:PORT [--listen PORT] [--control PORT] [--sockbuf BYTES] [--seed N] [--exit-on-stdin-close]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut target = None;
    let mut listen_port = 0u16;
    let mut control_port = 0u16;
    let mut sockbuf = None;
    let mut seed = None;
    let mut stdin_watch = false;
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name}: missing value")))
        };
        match a.as_str() {
            "--target" => {
                target = Some(loopback_target(&val("--target")).unwrap_or_else(|e| usage(&e)))
            }
            "--listen" => {
                listen_port = val("--listen")
                    .parse()
                    .unwrap_or_else(|_| usage("--listen: not a port"))
            }
            "--control" => {
                control_port = val("--control")
                    .parse()
                    .unwrap_or_else(|_| usage("--control: not a port"))
            }
            "--sockbuf" => {
                sockbuf = Some(
                    val("--sockbuf")
                        .parse()
                        .unwrap_or_else(|_| usage("--sockbuf: not a byte count")),
                )
            }
            "--seed" => {
                seed = Some(
                    val("--seed")
                        .parse()
                        .unwrap_or_else(|_| usage("--seed: not a u64")),
                )
            }
            "--exit-on-stdin-close" => stdin_watch = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(target) = target else {
        usage("--target is required")
    };
    let seed = seed.unwrap_or_else(|| getrandom::u64().unwrap_or(0x5EED));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("runtime: {e}")));
    rt.block_on(async move {
        let opts = Options {
            listen_port,
            control_port,
            target,
            sockbuf,
            seed,
        };
        let running = start(opts)
            .await
            .unwrap_or_else(|e| usage(&format!("bind: {e}")));
        println!(
            "{}",
            serde_json::json!({
                "listen": running.listen.port(),
                "control": running.control.port(),
                "target": target.to_string(),
                "seed": seed.to_string(),
            })
        );
        if stdin_watch {
            // A blocking thread: tokio's stdin needs a feature the crate does not enable.
            std::thread::spawn(|| {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while stdin.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                std::process::exit(0);
            });
        }
        std::future::pending::<()>().await;
    });
}

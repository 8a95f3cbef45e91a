//! Loopback ports for tests: each call asks the OS for a free port and never hands out the same
//! port twice in this process. A port is only reserved until the node binds it, so two calls made
//! before either node starts could otherwise return the same number (seen in CI: a listen port
//! equal to another node's proxy port).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let seen = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if seen.insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port after 1000 tries");
}

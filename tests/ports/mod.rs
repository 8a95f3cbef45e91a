//! Loopback ports for tests, bound once and never released before the node serves on them.
//!
//! [`reserve_port`] binds a listening socket on `127.0.0.1:0` and keeps it; [`handover`] puts the
//! sockets reserved for a config's `listenPort` and `proxyPort` into `StartOptions`, so the node
//! serves on the very socket the test bound (no bind-release-rebind window in which a parallel
//! test, or anything else on the machine, could take the port).
//!
//! A node that must bind the port itself (the lifecycle tests check exactly that bind, and a
//! node restarted on the same port after `stop()` has no socket left to be handed) gets a
//! [`PortHold`] instead: a socket bound to the port with `SO_REUSEADDR` but not listening. Linux
//! lets the node (which binds with `SO_REUSEADDR` too) bind and listen on the port meanwhile,
//! while `bind(0)`, outgoing connects and plain binds elsewhere never get it; and since the hold
//! does not listen, a connect while no node serves is refused, as on a free port.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use clawmatrix::app::StartOptions;
use clawmatrix::config::Config;
use clawmatrix::node::listener::{PreBound, LISTEN_BACKLOG};

/// Ports reserved and not yet handed to a node, with their sockets.
static RESERVED: Mutex<Option<HashMap<u16, TcpListener>>> = Mutex::new(None);
/// Every port this process reserved or held, so none is handed out twice (a port a stopped node
/// released may otherwise come back from `bind(0)` while a test still names it).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn fresh(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(port)
}

/// A loopback port with a listening socket bound to it and kept until [`handover`] gives it to
/// a node (which then accepts what queued meanwhile). The backlog is the node's own.
pub fn reserve_port() -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        // std listens with a short backlog; listen() again sets the node's (a flood test needs it).
        // SAFETY: a valid listening socket's fd, borrowed for one call.
        let rc = unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG as libc::c_int) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        let port = l.local_addr().expect("local addr").port();
        if fresh(port) {
            let mut guard = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
            guard.get_or_insert_with(HashMap::new).insert(port, l);
            return port;
        }
    }
    panic!("no fresh loopback port after 1000 tries");
}

fn take(port: u16) -> Option<PreBound> {
    let mut guard = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_mut()?.remove(&port).map(PreBound::new)
}

/// `opts` with the sockets reserved for `c`'s listen and proxy ports (those that are reserved:
/// a port the test chose otherwise is left for the node to bind).
pub fn handover(c: &Config, opts: StartOptions) -> StartOptions {
    StartOptions {
        listener: if c.listen { take(c.listen_port) } else { None },
        proxy_listener: take(c.proxy_port),
        ..opts
    }
}

/// A port held by a bound, not listening socket (see the module docs); released on drop.
pub struct PortHold {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

/// Hold a fresh loopback port for a node that binds it itself, or for an address where nobody
/// listens (connects are refused).
pub fn hold_port() -> PortHold {
    for _ in 0..1000 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.set_reuseaddr(true).expect("SO_REUSEADDR");
        s.bind(([127, 0, 0, 1], 0).into())
            .expect("bind 127.0.0.1:0");
        let port = s.local_addr().expect("local addr").port();
        if fresh(port) {
            return PortHold { port, _socket: s };
        }
    }
    panic!("no fresh loopback port after 1000 tries");
}

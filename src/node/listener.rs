//! The mesh listener: accepts inbound TCP connections on `listenHost:listenPort`.
//!
//! Until the mesh protocol lands (docs/PROTOCOL.md), accepted sockets are closed at once and
//! counted; the listener exists so the port is owned, reported and released correctly.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::events::EventQueue;

/// Accept until shutdown. Dropping the listener on return releases the port.
pub async fn serve(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    events: Arc<EventQueue>,
) {
    loop {
        tokio::select! {
            biased;
            // Shutdown first: a stop must never wait behind a flood of connections.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    events.push(
                        super::events::Level::Debug,
                        format!("mesh listener: connection from {peer} closed (mesh links not built yet)"),
                    );
                    drop(sock);
                }
                Err(e) => {
                    events.warn(format!("mesh listener: accept failed: {e}"));
                    // Back off briefly on errors like EMFILE instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

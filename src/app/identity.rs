//! The node's identity at start: its Ed25519 key (the key file under the state dir, created on
//! first start) and the trust it remembers (first-seen bindings), plus the per-core X25519 key
//! drawn fresh for every mesh core.

use crate::error::{Error, ErrorCode, Result};
use crate::identity::{ExchangeKey, NodeKey};
use std::sync::Arc;

/// 32 bytes of OS randomness, or an error naming what needed them.
pub(super) fn os_random(what: &str) -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("OS randomness unavailable for the {what}: {e}"),
        )
    })?;
    Ok(b)
}

/// A fresh exchange key for one mesh core (never reused: its sessions' nonces restart at 1).
pub(super) fn fresh_exchange_key() -> Result<Arc<ExchangeKey>> {
    Ok(Arc::new(ExchangeKey::from_secret(os_random(
        "end-to-end exchange key",
    )?)))
}

/// A node key that lives only as long as this process (no state dir to keep one in).
pub(super) fn ephemeral_node_key() -> Result<Arc<NodeKey>> {
    Ok(Arc::new(NodeKey::from_seed(&os_random("node key")?)))
}

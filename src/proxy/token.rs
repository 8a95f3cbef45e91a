//! The local proxy token: the API key OpenClaw (and any local client) presents to this node's
//! model proxy. Derived from the mesh secret and the node id, so it is stable across restarts
//! and reloads without storing anything, differs per node, and reveals nothing about the secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Prefix that makes the token recognisable in configs and logs.
pub const TOKEN_PREFIX: &str = "cmx-";

/// `cmx-` + hex(HMAC-SHA256(secret, "clawmatrix proxy token v1|" + node_id)).
pub fn derive(secret: &str, node_id: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC accepts keys of any length; keep a total function anyway.
        Err(_) => return format!("{TOKEN_PREFIX}invalid"),
    };
    mac.update(b"clawmatrix proxy token v1|");
    mac.update(node_id.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{TOKEN_PREFIX}{}", crate::proto::hex::encode(&tag))
}

/// Compare in time independent of where the inputs differ.
pub fn matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_node_and_secret() {
        let a = derive("0123456789abcdef", "home");
        assert_eq!(a, derive("0123456789abcdef", "home"));
        assert_ne!(a, derive("0123456789abcdef", "office"));
        assert_ne!(a, derive("0123456789abcdeX", "home"));
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(!a.contains("0123456789abcdef"));
        assert!(matches(a.as_bytes(), a.as_bytes()));
        assert!(!matches(b"cmx-", a.as_bytes()));
    }
}

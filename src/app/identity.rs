//! The node's identity at start: its Ed25519 key (the key file, `<stateDir>/node.key` unless
//! `identity.keyFile` says otherwise, created with mode 0600 on first start), the keys it
//! learned to trust on earlier runs (`<stateDir>/trust.json`), and the per-core X25519 key drawn
//! fresh for every mesh core. Without a state dir the key lives as long as the process and
//! nothing is remembered.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{check_own_pin, Config};
use crate::error::{Error, ErrorCode, Result};
use crate::events::EventQueue;
use crate::identity::trust_file::{self, TrustFile, Upsert};
use crate::identity::{keyfile, ExchangeKey, Fingerprint, NodeKey, PublicKey};
use crate::node::actor::TrustChange;
use crate::proto::NodeId;

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

/// The node's key, where it lives, and its trust store.
pub(super) struct Identity {
    pub key: Arc<NodeKey>,
    pub key_file: Option<PathBuf>,
    pub created: bool,
    pub trust: Arc<TrustStore>,
}

/// Load (or on first start create) the node key and load the trust store. A key file or trust
/// store that exists but cannot be used stops the start with the file and the fix named; the
/// key is never replaced silently (a new key would be refused by every node that knew this one).
pub(super) fn load(config: &Config, state_dir: Option<&Path>) -> Result<Identity> {
    let key_file = config.identity.key_path(state_dir);
    // A seed for a key that may have to be created: 32 bytes of OS randomness are cheap, and
    // drawing them first keeps the OS error a plain `?` (the key file only uses them when it
    // creates the key).
    let seed = os_random("node key")?;
    let (key, created) = match &key_file {
        Some(path) => keyfile::load_or_create(path, || seed)?,
        None => (NodeKey::from_seed(&seed), true),
    };
    check_own_pin(config, &key.fingerprint())?;
    let trust_path = state_dir.map(trust_file::default_path);
    let file = match &trust_path {
        Some(p) => TrustFile::load(p)?,
        None => TrustFile::new(),
    };
    Ok(Identity {
        key: Arc::new(key),
        key_file,
        created,
        trust: Arc::new(TrustStore {
            path: trust_path,
            file: Mutex::new(file),
        }),
    })
}

/// The trust store on disk and in memory: what the mesh core is seeded with at every (re)start,
/// and what its trust changes are written to.
pub(crate) struct TrustStore {
    path: Option<PathBuf>,
    file: Mutex<TrustFile>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TrustStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrustFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every remembered first-seen binding.
    pub fn remembered(&self) -> Vec<(NodeId, PublicKey)> {
        self.lock()
            .entries()
            .iter()
            .map(|(n, e)| (n.clone(), e.key))
            .collect()
    }

    /// Record `changes`, in order, and save the store once if any changed it. Blocking file I/O:
    /// called off the actor's thread. A save that fails is logged (the bindings stay in memory
    /// for this run).
    pub fn apply(&self, changes: Vec<TrustChange>, events: &EventQueue) {
        let now = unix_ms();
        let mut file = self.lock();
        let mut changed = false;
        for change in changes {
            changed |= Self::apply_one(&mut file, change, now, events);
        }
        if let (true, Some(path)) = (changed, &self.path) {
            if let Err(e) = file.save(path) {
                events.warn(format!("clawmatrix: {e}"));
            }
        }
    }

    /// One change to the in-memory store; `true` if it changed it.
    fn apply_one(file: &mut TrustFile, change: TrustChange, now: u64, events: &EventQueue) -> bool {
        match change {
            TrustChange::Learned { node, key } => match file.upsert(&node, key, now) {
                Ok(Upsert::Unchanged) => false,
                Ok(_) => true,
                Err(e) => {
                    events.warn(format!("clawmatrix: trust store: {node}: {e}"));
                    false
                }
            },
            TrustChange::Refused { node, offered } => file.mark_changed(&node, offered, now),
            TrustChange::Reset { node } => file.remove(&node),
        }
    }
}

/// The log line of a node key at start.
pub(super) fn started_line(id: &Identity) -> String {
    let fp: Fingerprint = id.key.fingerprint();
    match (&id.key_file, id.created) {
        (Some(p), true) => format!(
            "clawmatrix: created node key {fp} in {} (other nodes pin or first-trust it)",
            p.display()
        ),
        (Some(p), false) => format!("clawmatrix: node key {fp} ({})", p.display()),
        (None, _) => format!(
            "clawmatrix: node key {fp} lasts only for this process (no state dir): other nodes \
             will refuse this node id's next key until its trust is reset there"
        ),
    }
}

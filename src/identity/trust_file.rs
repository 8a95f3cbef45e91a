//! The trust store: which key each node id was first seen with (trust on first use), persisted
//! at `<stateDir>/trust.json` ([`default_path`]).
//!
//! Pins come from the config (`identity.pins`), not from this file: this file only holds what
//! the node learned by itself (`source: "tofu"`), plus, for status, the last different key a
//! known node offered and was refused with (`changed`).
//!
//! # Format
//! ```json
//! {
//!   "version": 1,
//!   "nodes": {
//!     "cloud-01": {
//!       "key": "<64 hex digits: the Ed25519 public key>",
//!       "firstSeen": 1733580000000,
//!       "source": "tofu",
//!       "changed": { "key": "<64 hex digits>", "at": 1733590000000 }
//!     }
//!   }
//! }
//! ```
//! Times are Unix milliseconds; `changed` is optional. Fields this version does not know are
//! ignored (and not written back). At most [`MAX_TRUST_ENTRIES`] nodes and
//! [`TRUST_FILE_MAX_BYTES`] bytes.
//!
//! # Safety rules
//! - A missing file is an empty store. A file that exists but is malformed, oversized, not a
//!   regular file or writable by group or others is an error naming the path and the fix
//!   (remove the file to forget every learned key, or remove one node's entry): trust is never
//!   dropped silently, since that would accept any key for every known node.
//! - [`TrustFile::save`] writes atomically (temporary file, fsync, rename, mode `0600`).
//! - Mutators return whether they changed anything, so the caller saves only then (a node that
//!   keeps offering the same refused key does not rewrite the file on every attempt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{self, Exposure};
use super::PublicKey;
use crate::error::{Error, ErrorCode, Result};
use crate::proto::frame::valid_node_id;

/// File name of the trust store inside the plugin state directory.
pub const TRUST_FILE_NAME: &str = "trust.json";
/// The format version this build reads and writes.
pub const TRUST_FILE_VERSION: u32 = 1;
/// Most nodes the store holds: twice the mesh's default node bound (4096), since nodes that
/// were forgotten by the mesh stay trusted; a store past this is refused rather than evicted.
pub const MAX_TRUST_ENTRIES: usize = 8192;
/// Largest trust store read, in bytes: a full store of long node ids with `changed` set is
/// about 3 MiB pretty-printed.
pub const TRUST_FILE_MAX_BYTES: u64 = 4 << 20;

/// What errors call the file.
const WHAT: &str = "trust store";

/// `<stateDir>/trust.json`.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TRUST_FILE_NAME)
}

/// How a key came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustSource {
    /// Learned on first contact (trust on first use).
    Tofu,
}

/// A different key a trusted node offered, refused (kept for status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// The key offered.
    pub key: PublicKey,
    /// When it was first offered, Unix ms.
    pub at: u64,
}

/// One trusted node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustEntry {
    /// The node's trusted public key.
    pub key: PublicKey,
    /// When that key was first seen, Unix ms.
    pub first_seen: u64,
    /// How it came to be trusted.
    pub source: TrustSource,
    /// The last different key the node offered (refused), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<KeyChange>,
}

/// What [`TrustFile::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The node was new: its key is now trusted.
    Added,
    /// The node was trusted with this key already; nothing changed.
    Unchanged,
    /// The node was trusted with another key, now replaced (first seen now, `changed`
    /// cleared): for an operator who accepted the new key.
    Replaced {
        /// The key trusted before.
        previous: PublicKey,
    },
}

/// The file's JSON document.
#[derive(Serialize, Deserialize)]
struct Doc {
    version: u32,
    nodes: BTreeMap<String, TrustEntry>,
}

/// The trust-on-first-use store: node id → trusted key. Load with [`TrustFile::load`], change,
/// then [`TrustFile::save`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFile {
    entries: BTreeMap<String, TrustEntry>,
}

impl TrustFile {
    /// An empty store.
    pub fn new() -> TrustFile {
        TrustFile::default()
    }

    /// The store at `path`; empty when nothing exists there. Errors name the path and how to
    /// reset: [`ErrorCode::Identity`] for a malformed, oversized, foreign-writable or non-regular
    /// file, [`ErrorCode::Io`] when it cannot be read.
    pub fn load(path: &Path) -> Result<TrustFile> {
        match files::read_checked(path, WHAT, Exposure::NoForeignWrite, TRUST_FILE_MAX_BYTES)? {
            None => Ok(TrustFile::new()),
            Some(bytes) => TrustFile::from_bytes(&bytes).map_err(|problem| {
                files::identity_error(
                    WHAT,
                    path,
                    &format!(
                        "is malformed: {problem}. Trust is never dropped silently: fix the file, \
                         remove one node's entry from \"nodes\" to reset that node's trust, or \
                         remove the file to forget every learned key (each node is then trusted \
                         again on first contact)"
                    ),
                )
            }),
        }
    }

    /// Parses the JSON document, or says what is wrong.
    fn from_bytes(bytes: &[u8]) -> std::result::Result<TrustFile, String> {
        // serde would also take a JSON array for a struct; the format is an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("it is not a JSON object".to_owned());
        }
        let doc: Doc = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if doc.version != TRUST_FILE_VERSION {
            return Err(format!(
                "version {} (this build reads version {TRUST_FILE_VERSION})",
                doc.version
            ));
        }
        if doc.nodes.len() > MAX_TRUST_ENTRIES {
            return Err(format!(
                "{} nodes, at most {MAX_TRUST_ENTRIES}",
                doc.nodes.len()
            ));
        }
        if let Some(bad) = doc.nodes.keys().find(|id| !valid_node_id(id)) {
            return Err(format!(
                "invalid node id {:?} in \"nodes\"",
                bad.chars().take(80).collect::<String>()
            ));
        }
        Ok(TrustFile { entries: doc.nodes })
    }

    /// Every trusted node, by node id.
    pub fn entries(&self) -> &BTreeMap<String, TrustEntry> {
        &self.entries
    }

    /// The entry of `node`, if trusted.
    pub fn get(&self, node: &str) -> Option<&TrustEntry> {
        self.entries.get(node)
    }

    /// How many nodes are trusted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is trusted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Trusts `key` for `node` from `now_ms` on. A node trusted with another key gets the new
    /// one ([`Upsert::Replaced`]): call this for a first contact, or when an operator accepted a
    /// new key; a refused key goes to [`TrustFile::mark_changed`] instead.
    ///
    /// Errors: [`ErrorCode::InvalidArgument`] for an invalid node id, [`ErrorCode::TooLarge`]
    /// when a new node would pass [`MAX_TRUST_ENTRIES`] (nothing is evicted).
    pub fn upsert(&mut self, node: &str, key: PublicKey, now_ms: u64) -> Result<Upsert> {
        if !valid_node_id(node) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "invalid node id {:?}",
                    node.chars().take(80).collect::<String>()
                ),
            ));
        }
        let fresh = TrustEntry {
            key,
            first_seen: now_ms,
            source: TrustSource::Tofu,
            changed: None,
        };
        let full = self.entries.len() >= MAX_TRUST_ENTRIES;
        match self.entries.get_mut(node) {
            Some(e) if e.key == key => Ok(Upsert::Unchanged),
            Some(e) => {
                let previous = e.key;
                *e = fresh;
                Ok(Upsert::Replaced { previous })
            }
            None if full => Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "the trust store holds {MAX_TRUST_ENTRIES} nodes, its limit: remove the \
                     entries of retired nodes to trust {node}"
                ),
            )),
            None => {
                self.entries.insert(node.to_owned(), fresh);
                Ok(Upsert::Added)
            }
        }
    }

    /// Records that `node` offered `offered`, a key other than its trusted one, at `now_ms`
    /// (refused). Returns whether anything changed: `false` for an unknown node, for its trusted
    /// key, and for the key already recorded (whose first time is kept).
    pub fn mark_changed(&mut self, node: &str, offered: PublicKey, now_ms: u64) -> bool {
        let Some(e) = self.entries.get_mut(node) else {
            return false;
        };
        if e.key == offered || e.changed.is_some_and(|c| c.key == offered) {
            return false;
        }
        e.changed = Some(KeyChange {
            key: offered,
            at: now_ms,
        });
        true
    }

    /// Forgets `node` (trust reset: its next key is trusted on first use). Returns whether it
    /// was trusted.
    pub fn remove(&mut self, node: &str) -> bool {
        self.entries.remove(node).is_some()
    }

    /// The JSON text [`TrustFile::save`] writes.
    pub fn to_json_string(&self) -> String {
        let doc = Doc {
            version: TRUST_FILE_VERSION,
            nodes: self.entries.clone(),
        };
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Writes the store to `path` atomically (temporary file, fsync, rename; mode `0600`).
    /// Errors ([`ErrorCode::Io`]) name the path.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::write_atomic(path, WHAT, self.to_json_string().as_bytes(), true).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::test_dir::TestDir;
    use super::*;
    use crate::proto::hex::Bytes32;

    fn k(b: u8) -> PublicKey {
        Bytes32([b; 32])
    }

    /// Writes `bytes` with mode 0600 whatever the umask.
    fn write_private(p: &Path, bytes: &[u8]) {
        std::fs::write(p, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn a_missing_file_is_an_empty_store_and_a_saved_store_loads_back_equal() {
        let dir = TestDir::new("trust-roundtrip");
        let p = default_path(dir.path());
        let mut t = TrustFile::load(&p).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.upsert("cloud-01", k(1), 1000), Ok(Upsert::Added));
        assert_eq!(t.upsert("office.eu_2", k(2), 2000), Ok(Upsert::Added));
        assert!(t.mark_changed("cloud-01", k(9), 3000));
        t.save(&p).unwrap();
        assert_eq!(dir.listing(), vec![TRUST_FILE_NAME.to_string()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = TrustFile::load(&p).unwrap();
        assert_eq!(back, t);
        let e = back.get("cloud-01").unwrap();
        assert_eq!(e.first_seen, 1000);
        assert_eq!(e.source, TrustSource::Tofu);
        assert_eq!(
            e.changed,
            Some(KeyChange {
                key: k(9),
                at: 3000
            })
        );
        assert_eq!(back.get("office.eu_2").unwrap().changed, None);
    }

    #[test]
    fn the_file_format_is_the_documented_json() {
        let mut t = TrustFile::new();
        t.upsert("cloud-01", k(0xab), 1733580000000).unwrap();
        t.mark_changed("cloud-01", k(0xcd), 1733590000000);
        let v: serde_json::Value = serde_json::from_str(&t.to_json_string()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": 1,
                "nodes": {"cloud-01": {
                    "key": "ab".repeat(32),
                    "firstSeen": 1733580000000u64,
                    "source": "tofu",
                    "changed": {"key": "cd".repeat(32), "at": 1733590000000u64}
                }}
            })
        );
        // Unknown fields are ignored; `changed` is optional.
        let text = format!(
            r#"{{"version":1,"nodes":{{"n1":{{"key":"{}","firstSeen":5,"source":"tofu","note":"x"}}}},"extra":true}}"#,
            "01".repeat(32)
        );
        let t = TrustFile::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(t.get("n1").unwrap().key, k(1));
    }

    #[test]
    fn upsert_and_mark_changed_report_whether_anything_changed() {
        let mut t = TrustFile::new();
        assert_eq!(t.upsert("n1", k(1), 10), Ok(Upsert::Added));
        assert_eq!(t.upsert("n1", k(1), 20), Ok(Upsert::Unchanged));
        assert_eq!(t.get("n1").unwrap().first_seen, 10);
        assert!(!t.mark_changed("n1", k(1), 30), "its own key is no change");
        assert!(
            !t.mark_changed("n2", k(2), 30),
            "an unknown node is not recorded"
        );
        assert!(t.mark_changed("n1", k(2), 40));
        assert!(
            !t.mark_changed("n1", k(2), 50),
            "the same offer again keeps its first time"
        );
        assert_eq!(t.get("n1").unwrap().changed.unwrap().at, 40);
        assert!(t.mark_changed("n1", k(3), 60));
        assert_eq!(
            t.get("n1").unwrap().changed,
            Some(KeyChange { key: k(3), at: 60 })
        );
        assert_eq!(
            t.upsert("n1", k(3), 70),
            Ok(Upsert::Replaced { previous: k(1) })
        );
        let e = t.get("n1").unwrap();
        assert_eq!((e.key, e.first_seen, e.changed), (k(3), 70, None));
        assert!(t.remove("n1"));
        assert!(!t.remove("n1"));
        assert_eq!(t.upsert("n1", k(4), 80), Ok(Upsert::Added));
        let e = t.upsert("bad id", k(1), 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn the_store_is_bounded_and_never_evicts() {
        let mut t = TrustFile::new();
        for i in 0..MAX_TRUST_ENTRIES {
            t.upsert(&format!("n{i}"), k(1), 1).unwrap();
        }
        let e = t.upsert("one-more", k(1), 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("8192"), "{e}");
        assert_eq!(t.len(), MAX_TRUST_ENTRIES);
        // Known nodes can still be updated.
        assert_eq!(
            t.upsert("n0", k(2), 2),
            Ok(Upsert::Replaced { previous: k(1) })
        );
        // A full store saves under the size limit, and one more entry is refused on load.
        let text = t.to_json_string();
        assert!((text.len() as u64) < TRUST_FILE_MAX_BYTES, "{}", text.len());
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["nodes"]["one-more"] = v["nodes"]["n0"].clone();
        let e = TrustFile::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("8193 nodes, at most 8192"), "{e}");
    }

    #[test]
    fn a_malformed_store_is_refused_naming_the_path_and_the_reset_and_left_alone() {
        let dir = TestDir::new("trust-bad");
        let p = default_path(dir.path());
        let key = "01".repeat(32);
        let cases = [
            ("{".to_string(), "EOF"),
            ("[1, {}]".to_string(), "not a JSON object"),
            (String::new(), "not a JSON object"),
            (
                r#"{"version":2,"nodes":{}}"#.to_string(),
                "version 2 (this build reads version 1)",
            ),
            (r#"{"nodes":{}}"#.to_string(), "missing field `version`"),
            (
                format!(
                    r#"{{"version":1,"nodes":{{"a b":{{"key":"{key}","firstSeen":1,"source":"tofu"}}}}}}"#
                ),
                "invalid node id \"a b\"",
            ),
            (
                r#"{"version":1,"nodes":{"n1":{"key":"0102","firstSeen":1,"source":"tofu"}}}"#
                    .to_string(),
                "expected 32 bytes as hex",
            ),
            (
                format!(
                    r#"{{"version":1,"nodes":{{"n1":{{"key":"{key}","firstSeen":1,"source":"pinned"}}}}}}"#
                ),
                "unknown variant `pinned`",
            ),
            (
                format!(r#"{{"version":1,"nodes":{{"n1":{{"key":"{key}","source":"tofu"}}}}}}"#),
                "missing field `firstSeen`",
            ),
        ];
        for (text, want) in cases {
            write_private(&p, text.as_bytes());
            let e = TrustFile::load(&p).unwrap_err();
            assert_eq!(e.code, ErrorCode::Identity, "{text}");
            assert!(
                e.message
                    .starts_with(&format!("trust store {}", p.display())),
                "{e}"
            );
            assert!(e.message.contains(want), "want {want:?}: {e}");
            assert!(e.message.contains("remove the file"), "{e}");
            assert!(e.message.contains("remove one node's entry"), "{e}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "left alone");
        }
    }

    #[test]
    fn an_oversized_or_foreign_writable_store_is_refused() {
        let dir = TestDir::new("trust-limits");
        let p = default_path(dir.path());
        let big = vec![b' '; TRUST_FILE_MAX_BYTES as usize + 1];
        write_private(&p, &big);
        let e = TrustFile::load(&p).unwrap_err();
        assert_eq!(e.code, ErrorCode::Identity);
        assert!(e.message.contains("too large"), "{e}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            TrustFile::new().save(&p).unwrap();
            let set = |m| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
            set(0o644);
            assert!(TrustFile::load(&p).unwrap().is_empty(), "readable is fine");
            for m in [0o664, 0o646] {
                set(m);
                let e = TrustFile::load(&p).unwrap_err();
                assert!(e.message.contains("writable by group or others"), "{e}");
                assert!(
                    e.message.contains(&format!("chmod 600 {}", p.display())),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn save_replaces_the_previous_store_whole() {
        let dir = TestDir::new("trust-replace");
        let p = default_path(dir.path());
        let mut t = TrustFile::new();
        t.upsert("a", k(1), 1).unwrap();
        t.save(&p).unwrap();
        t.remove("a");
        t.upsert("b", k(2), 2).unwrap();
        t.save(&p).unwrap();
        let back = TrustFile::load(&p).unwrap();
        assert_eq!(back.entries().keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(dir.listing(), vec![TRUST_FILE_NAME.to_string()]);
    }
}

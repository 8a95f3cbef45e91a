//! The node key file: where a node keeps its Ed25519 seed between starts.
//!
//! Default path `<stateDir>/node.key` ([`default_path`]), next to the audit log; config
//! `identity.keyFile` overrides it. [`load_or_create`] reads it, or creates it when (and only
//! when) nothing exists at the path.
//!
//! # Format
//! A small ASCII text file:
//! ```text
//! clawmatrix-node-key v1
//! # fingerprint ed25519:3f2a9c0d5e6b7a8f1e2d3c4b5a697887 (for people; ignored when read)
//! 4b1f…                        (the 32-byte Ed25519 seed: 64 hex digits, the whole secret)
//! ```
//! The first line is the header [`KEY_FILE_HEADER`] exactly. After it, blank lines and lines
//! starting with `#` are ignored, and exactly one line holds the seed (hex, either case).
//! Line ends may be `\n` or `\r\n`; surrounding spaces are ignored.
//!
//! # Safety rules
//! - Created with mode `0600` atomically: a new temporary file in the same directory (`O_EXCL`,
//!   `0600`), fsync, then hard-linked into place, which fails rather than replace a file another
//!   process created meanwhile (that key is then loaded instead). A crash never leaves a
//!   half-written key at the path.
//! - Refused, like ssh refuses a private key: a file readable or writable by group or others
//!   (the error says `chmod 600 <path>`), anything but a regular file (a symlink to one is
//!   fine), a dangling symlink, more than [`KEY_FILE_MAX_BYTES`], a malformed file.
//! - Never regenerated over: a file that exists but cannot be read or parsed is an error, never
//!   a reason to write a new key. Other nodes remember this node's key (trust on first use), so
//!   a silently new key would get the node refused mesh-wide.

use std::path::{Path, PathBuf};

use super::files::{self, Exposure, Placed};
use super::NodeKey;
use crate::error::{Error, ErrorCode, Result};
use crate::proto::hex;

/// File name of the node key inside the plugin state directory.
pub const KEY_FILE_NAME: &str = "node.key";
/// First line of every key file (format version 1).
pub const KEY_FILE_HEADER: &str = "clawmatrix-node-key v1";
/// Largest key file read, in bytes: a v1 file is about 130 bytes; 4 KiB leaves room for
/// comments and refuses anything that is plainly not a key file.
pub const KEY_FILE_MAX_BYTES: u64 = 4096;

/// What errors call the file.
const WHAT: &str = "node key file";

/// Advice appended to every refusal of an existing file.
const KEEP_ADVICE: &str = "the node does not replace it with a new key (other nodes would \
    refuse a new key for this node id): fix or restore the file; to start over with a new key, \
    remove it and reset this node's trust on the other nodes";

/// `<stateDir>/node.key`.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE_NAME)
}

/// The key in `path`, or a new one when nothing exists at `path`: then `fresh_seed` (32 bytes of
/// OS randomness) is called once and written to a new `0600` file. Returns the key and whether
/// it was created.
///
/// Errors: [`ErrorCode::Identity`] for a file that exists but is not a usable key file (the
/// message names the path and the problem; see the module docs), [`ErrorCode::Io`] for
/// operating-system failures (unreadable file, missing directory, disk full), naming the path.
/// An existing file is never overwritten.
pub fn load_or_create(
    path: &Path,
    fresh_seed: impl FnOnce() -> [u8; 32],
) -> Result<(NodeKey, bool)> {
    if let Some(key) = load(path)? {
        return Ok((key, false));
    }
    let mut seed = fresh_seed();
    if seed.iter().all(|&b| b == 0) {
        return Err(Error::new(
            ErrorCode::Internal,
            "the random source returned an all-zero key seed; refusing to create a node key",
        ));
    }
    let mut text = render(&seed);
    let key = NodeKey::from_seed(&seed);
    wipe(&mut seed);
    let placed = files::write_atomic(path, WHAT, text.as_bytes(), false);
    wipe_string(&mut text);
    match placed? {
        Placed::Written => Ok((key, true)),
        // Another process created the file between our look and our link: use its key.
        Placed::Exists => match load(path)? {
            Some(key) => Ok((key, false)),
            None => Err(Error::new(
                ErrorCode::Io,
                format!(
                    "{WHAT} {} appeared and vanished while it was being created; start again",
                    path.display()
                ),
            )),
        },
    }
}

/// The key in `path`, `None` when nothing exists there; never creates anything (for a status
/// command that must not invent a key). Same checks and errors as [`load_or_create`].
pub fn load(path: &Path) -> Result<Option<NodeKey>> {
    let Some(mut bytes) = files::read_checked(path, WHAT, Exposure::Secret, KEY_FILE_MAX_BYTES)?
    else {
        return Ok(None);
    };
    let parsed = parse(&bytes);
    wipe(&mut bytes);
    match parsed {
        Ok(mut seed) => {
            let key = NodeKey::from_seed(&seed);
            wipe(&mut seed);
            Ok(Some(key))
        }
        Err(problem) => Err(files::identity_error(
            WHAT,
            path,
            &format!("is malformed: {problem}; {KEEP_ADVICE}"),
        )),
    }
}

/// The v1 text of a key file holding `seed`.
fn render(seed: &[u8; 32]) -> String {
    let fp = NodeKey::from_seed(seed).fingerprint();
    format!(
        "{KEY_FILE_HEADER}\n# fingerprint {fp} (for people; ignored when read). The line below is \
         this node's secret key: keep this file private (mode 0600) and backed up.\n{}\n",
        hex::encode(seed)
    )
}

/// The seed in a key file's bytes, or what is wrong with them (never quoting the secret).
fn parse(bytes: &[u8]) -> std::result::Result<[u8; 32], String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let mut lines = text.split('\n').map(str::trim).enumerate();
    match lines.next() {
        Some((_, KEY_FILE_HEADER)) => {}
        Some((_, first)) if first.starts_with("clawmatrix-node-key ") => {
            return Err(format!(
                "its header says {:?}; this version reads {KEY_FILE_HEADER:?}",
                first.chars().take(40).collect::<String>()
            ))
        }
        _ => {
            return Err(format!(
                "the first line must be {KEY_FILE_HEADER:?} (it is not a clawmatrix node key file)"
            ))
        }
    }
    let mut seed = None;
    for (i, line) in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        if seed.is_some() {
            return Err(format!("line {n}: a second key line (one key per file)"));
        }
        match hex::from_hex::<32>(line) {
            Some(s) => seed = Some(s),
            None => {
                return Err(format!(
                    "line {n}: the key line must be 64 hex digits (the 32-byte seed), got {} \
                     characters",
                    line.chars().count()
                ))
            }
        }
    }
    seed.ok_or_else(|| "it has no key line (64 hex digits after the header)".to_string())
}

/// Best-effort erasure of secret bytes before their buffer is freed.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

fn wipe_string(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    wipe(&mut bytes);
}

#[cfg(test)]
mod tests {
    use super::super::files::test_dir::TestDir;
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn chmod(p: &Path, m: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn a_missing_file_creates_a_0600_key_that_the_next_start_loads() {
        let dir = TestDir::new("key-create");
        let p = default_path(dir.path());
        let (a, created) = load_or_create(&p, || [9; 32]).unwrap();
        assert!(created);
        assert_eq!(a.public(), NodeKey::from_seed(&[9; 32]).public());
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("clawmatrix-node-key v1\n# fingerprint "),
            "{text}"
        );
        assert!(text.contains(&a.fingerprint().to_string()), "{text}");
        // Only the key file is left in the directory (no temporary file).
        assert_eq!(dir.listing(), vec![KEY_FILE_NAME.to_string()]);

        let (b, created) =
            load_or_create(&p, || panic!("an existing key is never regenerated")).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        assert_eq!(load(&p).unwrap().map(|k| k.public()), Some(a.public()));
    }

    #[test]
    fn load_never_creates_a_key() {
        let dir = TestDir::new("key-load");
        let p = default_path(dir.path());
        assert!(load(&p).unwrap().is_none());
        assert!(dir.listing().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_group_or_world_readable_key_file_is_refused_with_the_chmod_fix() {
        let dir = TestDir::new("key-mode");
        let p = default_path(dir.path());
        load_or_create(&p, || [1; 32]).unwrap();
        let before = std::fs::read(&p).unwrap();
        for m in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610] {
            chmod(&p, m);
            let e = load_or_create(&p, || [2; 32]).unwrap_err();
            assert_eq!(e.code, ErrorCode::Identity, "{m:o}");
            let shown = p.display().to_string();
            assert!(e.message.contains(&format!("has mode {m:04o}")), "{e}");
            assert!(e.message.contains(&format!("chmod 600 {shown}")), "{e}");
            assert!(
                e.message.starts_with(&format!("node key file {shown}")),
                "{e}"
            );
            assert_eq!(std::fs::read(&p).unwrap(), before, "never rewritten");
        }
        chmod(&p, 0o400);
        assert!(!load_or_create(&p, || [2; 32]).unwrap().1);
    }

    #[test]
    fn a_corrupt_key_file_is_refused_and_never_overwritten() {
        let dir = TestDir::new("key-corrupt");
        let p = default_path(dir.path());
        let cases: &[(&[u8], &str)] = &[
            (b"", "first line must be"),
            (b"hello\n", "first line must be"),
            (b"clawmatrix-node-key v2\nab\n", "this version reads"),
            (b"clawmatrix-node-key v1\n", "no key line"),
            (
                b"clawmatrix-node-key v1\n# only a comment\n\n",
                "no key line",
            ),
            (
                b"clawmatrix-node-key v1\n0123\n",
                "line 2: the key line must be 64 hex",
            ),
            (&[0xff, 0xfe, 0x00], "not UTF-8"),
        ];
        let good = hex::encode(&[5u8; 32]);
        let two = format!("{KEY_FILE_HEADER}\n{good}\n{good}\n");
        let half = format!("{KEY_FILE_HEADER}\n{}", &good[..40]);
        let mut all: Vec<(Vec<u8>, &str)> = cases.iter().map(|(b, w)| (b.to_vec(), *w)).collect();
        all.push((two.into_bytes(), "line 3: a second key line"));
        all.push((half.into_bytes(), "line 2: the key line must be 64 hex"));
        for (bytes, want) in all {
            std::fs::write(&p, &bytes).unwrap();
            #[cfg(unix)]
            chmod(&p, 0o600);
            let e = load_or_create(&p, || [2; 32]).unwrap_err();
            assert_eq!(e.code, ErrorCode::Identity);
            assert!(e.message.contains(&p.display().to_string()), "{e}");
            assert!(e.message.contains("is malformed"), "{e}");
            assert!(e.message.contains(want), "want {want:?}: {e}");
            assert!(e.message.contains("does not replace it"), "{e}");
            assert!(!e.message.contains(&good), "never quotes the secret: {e}");
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "never overwritten");
        }
    }

    #[test]
    fn comments_blank_lines_crlf_and_uppercase_hex_are_accepted() {
        let dir = TestDir::new("key-lenient");
        let p = default_path(dir.path());
        let text = format!(
            "{KEY_FILE_HEADER}\r\n\r\n# a comment\r\n  {}  \r\n# trailing\r\n",
            hex::encode(&[7u8; 32]).to_uppercase()
        );
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        chmod(&p, 0o600);
        let (k, created) = load_or_create(&p, || [1; 32]).unwrap();
        assert!(!created);
        assert_eq!(k.public(), NodeKey::from_seed(&[7; 32]).public());
    }

    #[test]
    fn directories_oversized_files_and_missing_directories_are_errors_not_new_keys() {
        let dir = TestDir::new("key-kinds");
        let e = load_or_create(dir.path(), || [1; 32]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Identity);
        assert!(e.message.contains("not a regular file"), "{e}");

        let p = default_path(dir.path());
        let mut big = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(&[3u8; 32]));
        big.push_str(&"#".repeat(5000));
        std::fs::write(&p, &big).unwrap();
        #[cfg(unix)]
        chmod(&p, 0o600);
        let e = load_or_create(&p, || [1; 32]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Identity);
        assert!(e.message.contains("too large"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), big);

        let nowhere = dir.path().join("missing-dir").join(KEY_FILE_NAME);
        let e = load_or_create(&nowhere, || [1; 32]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);
        assert!(e.message.contains(&nowhere.display().to_string()), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_symlink_is_refused_and_a_symlink_to_a_key_is_followed() {
        let dir = TestDir::new("key-link");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(dir.path().join("real.key"), &link).unwrap();
        let e = load_or_create(&link, || [1; 32]).unwrap_err();
        assert!(e.message.contains("symbolic link to a missing file"), "{e}");
        assert!(std::fs::symlink_metadata(dir.path().join("real.key")).is_err());

        load_or_create(&dir.path().join("real.key"), || [4; 32]).unwrap();
        let (k, created) = load_or_create(&link, || [1; 32]).unwrap();
        assert!(!created);
        assert_eq!(k.public(), NodeKey::from_seed(&[4; 32]).public());
    }

    #[test]
    fn an_all_zero_seed_is_refused() {
        let dir = TestDir::new("key-zero");
        let p = default_path(dir.path());
        let e = load_or_create(&p, || [0; 32]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(dir.listing().is_empty());
    }

    #[test]
    fn concurrent_creators_end_with_one_key() {
        let dir = TestDir::new("key-race");
        let p = default_path(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 1..=8u8 {
            let (p, tx) = (p.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(load_or_create(&p, move || [i; 32]).map(|(k, c)| (k.public(), c)));
            });
        }
        let got: Vec<_> = (0..8)
            .map(|_| {
                rx.recv_timeout(std::time::Duration::from_secs(10))
                    .expect("creator finished")
                    .expect("no error")
            })
            .collect();
        assert_eq!(got.iter().filter(|(_, created)| *created).count(), 1);
        assert!(got.iter().all(|(k, _)| *k == got[0].0));
        assert_eq!(dir.listing(), vec![KEY_FILE_NAME.to_string()]);
    }
}

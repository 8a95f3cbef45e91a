//! The filesystem root that bounds remote `read` / `write` / `edit` and exec workdirs.
//!
//! # Which root
//! `toolProxy.root` when it is set (an absolute path); otherwise the OpenClaw agent workspace
//! directory the shim passes when the node starts. With neither, file tools and exec refuse
//! every call with "no filesystem root". The root must exist; it is canonicalized (symlinks
//! resolved) when a call opens it.
//!
//! # How a path is checked
//! - A relative path is relative to the root; an absolute path is accepted only if it lies
//!   inside the root. A path with a `..` component is refused outright, even one that would
//!   stay inside: the rule is simpler to state and to audit.
//! - The path is resolved like `realpath`: the deepest existing ancestor is canonicalized and
//!   the missing components are appended. Every symlink on the way is followed, including a
//!   final one and one whose target does not exist yet (its target is resolved by the same rule,
//!   up to [`MAX_SYMLINK_HOPS`]). The resolved path must be inside the root, so a symlink inside
//!   the root that points out of it is refused, whether its target exists or not.
//! - A regular file with more than one hard link is refused: another name of the same file may
//!   live outside the root (an `ln /etc/shadow root/x` by someone with access), and a link
//!   count cannot tell where the other names are. Files with several links inside the root are
//!   refused too; that is the price of the rule.
//! - Writes create missing parent directories inside the root, then re-resolve the parent to
//!   catch a symlink swapped in meanwhile.
//!
//! This bounds the file tools only. `exec` runs a command with this user's rights; its workdir
//! is checked against the root, but the command itself can reach anything the user can.
//!
//! Names are handled as bytes (`OsStr`), so non-UTF-8 file names work; messages show them
//! lossily.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorCode};

/// How many symlinks one resolution may follow before giving up (Linux's `ELOOP` limit).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// What the caller intends to do with a resolved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Read an existing file.
    Read,
    /// Create or replace a file (missing parent directories are created).
    Write,
}

/// A canonical, existing directory that bounds every path the file tools touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Canonical (all symlinks resolved).
    path: PathBuf,
    /// As configured; absolute caller paths may use this spelling too (macOS `/tmp`).
    configured: PathBuf,
}

impl Root {
    /// Opens `path` as the root: it must be an existing directory; it is canonicalized once.
    pub fn open(path: impl AsRef<Path>) -> Result<Root, Error> {
        let path = path.as_ref();
        let shown = path.display();
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            Error::new(
                ErrorCode::Denied,
                format!("the filesystem root {shown} is unusable: {}", io_reason(&e)),
            )
        })?;
        if !canonical.is_dir() {
            return Err(Error::new(
                ErrorCode::Denied,
                format!("the filesystem root {shown} is not a directory"),
            ));
        }
        Ok(Root {
            path: canonical,
            configured: path.to_path_buf(),
        })
    }

    /// The canonical root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an absolute, normalized path is the root or below it.
    pub fn contains(&self, path: &Path) -> bool {
        path.starts_with(&self.path)
    }

    /// Resolves a caller's path (see the module docs) to a real path inside the root.
    ///
    /// For [`Intent::Read`] the path need not exist (the caller reports "not found"); for
    /// [`Intent::Write`] missing parents are created. Either way an existing regular file with
    /// several hard links is refused.
    pub fn resolve(&self, user_path: &str, intent: Intent) -> Result<PathBuf, Error> {
        let real = self.resolve_lexical_then_real(user_path)?;
        if let Ok(meta) = std::fs::metadata(&real) {
            if meta.is_file() && meta.nlink() > 1 {
                return Err(denied(
                    user_path,
                    &format!(
                        "the file has {} hard links, and another name may lie outside the \
                         filesystem root",
                        meta.nlink()
                    ),
                ));
            }
        }
        if intent == Intent::Write {
            if let Some(parent) = real.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(user_path, &e))?;
                // Re-resolve: a symlink swapped in while the parents were created must not
                // lead the write out of the root.
                let again = std::fs::canonicalize(parent).map_err(|e| io_error(user_path, &e))?;
                if again != parent {
                    return Err(denied(
                        user_path,
                        "the parent directory changed while it was being created",
                    ));
                }
            }
        }
        Ok(real)
    }

    /// Resolves an exec workdir: `None` is the root itself; otherwise like [`Root::resolve`],
    /// and the result must be an existing directory.
    pub fn resolve_dir(&self, user_path: Option<&str>) -> Result<PathBuf, Error> {
        let Some(user_path) = user_path else {
            return Ok(self.path.clone());
        };
        let real = self.resolve_lexical_then_real(user_path)?;
        match std::fs::metadata(&real) {
            Ok(m) if m.is_dir() => Ok(real),
            Ok(_) => Err(Error::new(
                ErrorCode::NotAFile,
                format!("{user_path:?} is not a directory"),
            )),
            Err(e) => Err(io_error(user_path, &e)),
        }
    }

    fn resolve_lexical_then_real(&self, user_path: &str) -> Result<PathBuf, Error> {
        if user_path.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the path must not be empty",
            ));
        }
        if user_path.contains('\0') {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the path must not contain NUL",
            ));
        }
        let user = Path::new(user_path);
        if user.components().any(|c| c == Component::ParentDir) {
            return Err(denied(
                user_path,
                "\"..\" is not allowed in paths (use a path inside the filesystem root)",
            ));
        }
        // An absolute path is rebased onto the canonical root before touching the filesystem,
        // so paths outside the root are refused without a single stat (no existence probing).
        let joined = if user.is_absolute() {
            let rest = user
                .strip_prefix(&self.path)
                .or_else(|_| user.strip_prefix(&self.configured))
                .map_err(|_| denied(user_path, "it is outside the filesystem root"))?;
            self.path.join(rest)
        } else {
            self.path.join(user)
        };
        let real = real_path(&joined, MAX_SYMLINK_HOPS).map_err(|e| io_error(user_path, &e))?;
        if !self.contains(&real) {
            return Err(denied(
                user_path,
                "it resolves (through a symlink) outside the filesystem root",
            ));
        }
        Ok(real)
    }
}

/// `realpath` that accepts a path whose tail does not exist yet: canonicalizes the deepest
/// existing ancestor (following a dangling symlink to its target, by the same rule) and
/// appends the missing components, which must be plain names.
fn real_path(path: &Path, hops_left: usize) -> io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut missing: Vec<OsString> = Vec::new();
    loop {
        match std::fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(e);
                };
                missing.push(name);
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut base = match std::fs::canonicalize(&existing) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // `existing` is a dangling symlink (or leads through one): resolve its target.
            if hops_left == 0 {
                return Err(io::Error::other("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&existing)?;
            let parent = existing.parent().unwrap_or(Path::new("/"));
            real_path(&parent.join(target), hops_left - 1)?
        }
        Err(e) => return Err(e),
    };
    for name in missing.into_iter().rev() {
        match Path::new(&name).components().next() {
            Some(Component::Normal(_)) => base.push(name),
            Some(Component::CurDir) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "\"..\" after a missing directory",
                ))
            }
        }
    }
    Ok(base)
}

fn denied(user_path: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::Denied,
        format!("path {user_path:?} is refused: {why}"),
    )
}

/// Maps an I/O error on `user_path` to a coded error naming the path.
pub(crate) fn io_error(user_path: &str, e: &io::Error) -> Error {
    let code = match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => ErrorCode::NotAFile,
        io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
        _ => ErrorCode::Io,
    };
    Error::new(code, format!("{user_path:?}: {}", io_reason(e)))
}

/// The OS reason without Rust's " (os error N)" suffix.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not found".to_owned(),
        io::ErrorKind::NotADirectory => "a path component is not a directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_owned(),
                None => s,
            }
        }
    }
}

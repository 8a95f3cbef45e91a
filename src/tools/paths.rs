//! The filesystem root that bounds remote `read` / `write` / `edit` and exec workdirs.
//!
//! # Which root
//! `toolProxy.root` when it is set (an absolute path); otherwise the OpenClaw agent workspace
//! directory the shim passes when the node starts. With neither, file tools and exec refuse
//! every call with "no filesystem root". The root must exist; it is canonicalized (symlinks
//! resolved) and opened as a directory handle when a call opens it.
//!
//! # How a path is checked
//! - A relative path is relative to the root; an absolute path is accepted only if it lies
//!   inside the root. A path with a `..` component is refused outright, even one that would
//!   stay inside: the rule is simpler to state and to audit.
//! - Symlinks are followed, including a final one and one whose target does not exist yet, as
//!   long as every step stays inside the root: a relative target is resolved from the link's
//!   directory (its `..` may climb, but not above the root), an absolute target must name a
//!   path inside the root. A symlink that leads out is refused, whether its target exists or
//!   not; at most [`MAX_SYMLINK_HOPS`] links are followed.
//! - A regular file with more than one hard link is refused: another name of the same file may
//!   live outside the root (an `ln /etc/shadow root/x` by someone with access), and a link
//!   count cannot tell where the other names are. Files with several links inside the root are
//!   refused too; that is the price of the rule.
//! - Writes create missing parent directories inside the root.
//!
//! # The check is the open
//! Files change under a running call: a directory inside the root may be swapped for a symlink
//! out of it between a check and an open. So no path is ever checked and then opened by name.
//! Every lookup starts at a directory handle on the root:
//! - `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+) opens a file, or the
//!   parent directory of a write, in one call that fails instead of leaving the root;
//! - where it answers "that left the root", or is missing (`ENOSYS`), a per-component walk
//!   decides: each component is opened with `openat(O_NOFOLLOW)` relative to the handle of the
//!   directory before it, a symlink is read with `readlinkat` on that same handle and its
//!   target walked by the rules above, and a `..` in a target steps back to a handle already
//!   held. The walk is also what accepts absolute symlinks into the root, which `openat2`
//!   refuses.
//!
//! Writes, `mkdir -p`, the temporary file and the rename of an atomic replace all go through
//! `mkdirat` / `openat` / `renameat` on the parent's handle. What stays possible: a directory
//! the call holds may be *moved* out of the root by someone with write access outside it; the
//! call then finishes in that directory. Such a person could copy the files out anyway.
//!
//! This bounds the file tools only. `exec` runs a command with this user's rights; its workdir
//! is checked against the root, but the command itself can reach anything the user can.
//!
//! Names are handled as bytes (`OsStr`), so non-UTF-8 file names work; messages show them
//! lossily.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, ErrorCode};

/// How many symlinks one resolution may follow before giving up (Linux's `ELOOP` limit). A
/// component that changes kind between two calls of the walk counts as one hop too, so a
/// name swapped back and forth cannot keep a call busy.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Most directories one write may create: a path of 4096 bytes has at most 2048 names; more
/// means someone removes them as fast as they are made.
const MAX_CREATED_DIRS: usize = 2048;

/// Set once `openat2` answered `ENOSYS`: the kernel is older than 5.6, use the walk.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

const ESCAPES: &str = "it resolves (through a symlink) outside the filesystem root";

/// What the caller intends to do with a resolved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Read an existing file.
    Read,
    /// Create or replace a file (missing parent directories are created).
    Write,
}

/// A canonical, existing directory that bounds every path the file tools touch, with a handle
/// on it that every lookup starts from.
#[derive(Clone)]
pub struct Root {
    /// Canonical (all symlinks resolved).
    path: PathBuf,
    /// As configured; absolute caller paths may use this spelling too (macOS `/tmp`).
    configured: PathBuf,
    /// The root directory, opened once.
    fd: Arc<OwnedFd>,
    /// Try `openat2` first (cleared by [`Root::without_openat2`] in tests).
    openat2: bool,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("path", &self.path)
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Root {
    fn eq(&self, other: &Root) -> bool {
        self.path == other.path && self.configured == other.configured
    }
}

impl Eq for Root {}

/// What kind of object a name holds (symlinks are followed or refused before this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    /// FIFO, socket, device.
    Special,
}

/// The facts about an existing file that the tools act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub kind: Kind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub nlink: u64,
}

/// Where a write lands: a directory handle inside the root and a plain name in it.
#[derive(Debug)]
pub(crate) struct Target {
    pub dir: OwnedFd,
    pub name: OsString,
    /// What the name holds now (`None`: nothing).
    pub existing: Option<Facts>,
}

/// What the walk is asked for at the last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Open it for reading.
    File,
    /// Its directory and name; `create` makes missing parents, otherwise a missing parent
    /// still yields the path (for [`Root::resolve`]).
    Entry { create: bool },
    /// It must be a directory.
    Dir,
}

enum Found {
    File(OwnedFd),
    Entry {
        path: PathBuf,
        /// `None` below a missing directory (only when not creating).
        dir: Option<OwnedFd>,
        name: OsString,
        existing: Option<Facts>,
    },
    Dir(PathBuf),
}

/// One step of the walk that did not end it.
enum Step {
    /// The name is a symlink with this target: walk the target instead.
    Link(OsString),
    /// The name changed kind between two calls: look at it again.
    Again,
}

impl Root {
    /// Opens `path` as the root: it must be an existing directory; it is canonicalized once.
    pub fn open(path: impl AsRef<Path>) -> Result<Root, Error> {
        let path = path.as_ref();
        let shown = path.display();
        let unusable = |e: &io::Error| {
            Error::new(
                ErrorCode::Denied,
                format!("the filesystem root {shown} is unusable: {}", io_reason(e)),
            )
        };
        let canonical = std::fs::canonicalize(path).map_err(|e| unusable(&e))?;
        let fd = sys::open_root(&canonical).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => Error::new(
                ErrorCode::Denied,
                format!("the filesystem root {shown} is not a directory"),
            ),
            _ => unusable(&e),
        })?;
        Ok(Root {
            path: canonical,
            configured: path.to_path_buf(),
            fd: Arc::new(fd),
            openat2: true,
        })
    }

    /// The same root, resolving every path with the per-component walk only, as on kernels
    /// without `openat2`. For tests of that fallback.
    #[doc(hidden)]
    pub fn without_openat2(mut self) -> Root {
        self.openat2 = false;
        self
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
    /// several hard links is refused. The path is a report: the file tools never reopen it by
    /// name; they work on the handles of [`Root::open_file`] and [`Root::open_target`].
    pub fn resolve(&self, user_path: &str, intent: Intent) -> Result<PathBuf, Error> {
        let rel = self.relative(user_path)?;
        let create = intent == Intent::Write;
        match self.walk(user_path, &rel, Want::Entry { create })? {
            Found::Entry { path, existing, .. } => {
                check_links(user_path, existing)?;
                Ok(path)
            }
            Found::File(_) | Found::Dir(_) => Err(wrong_result(user_path)),
        }
    }

    /// Resolves an exec workdir: `None` is the root itself; otherwise like [`Root::resolve`],
    /// and the result must be an existing directory.
    pub fn resolve_dir(&self, user_path: Option<&str>) -> Result<PathBuf, Error> {
        let Some(user_path) = user_path else {
            return Ok(self.path.clone());
        };
        let rel = self.relative(user_path)?;
        match self.walk(user_path, &rel, Want::Dir) {
            Ok(Found::Dir(path)) => Ok(path),
            Ok(_) => Err(wrong_result(user_path)),
            Err(e) if e.code == ErrorCode::NotAFile => Err(Error::new(
                ErrorCode::NotAFile,
                format!("{user_path:?} is not a directory"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Opens a caller's path for reading (without blocking on a FIFO), following symlinks
    /// only inside the root. The caller checks what it got (`fstat`).
    pub(crate) fn open_file(&self, user_path: &str) -> Result<File, Error> {
        let rel = self.relative(user_path)?;
        if self.use_openat2() {
            match sys::openat2(self.fd.as_fd(), &rel, sys::READ_FLAGS) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(e) if !walk_decides(&e) => return Err(io_error(user_path, &e)),
                Err(_) => {}
            }
        }
        match self.walk(user_path, &rel, Want::File)? {
            Found::File(fd) => Ok(File::from(fd)),
            _ => Err(wrong_result(user_path)),
        }
    }

    /// Finds where a write to a caller's path lands, creating missing parent directories: the
    /// parent's handle and the final name (a final symlink inside the root is followed, so the
    /// write replaces its target, not the link). An existing file with several hard links is
    /// refused; other kinds are for the caller to judge.
    pub(crate) fn open_target(&self, user_path: &str) -> Result<Target, Error> {
        let rel = self.relative(user_path)?;
        if self.use_openat2() {
            if let Some(target) = self.target_by_openat2(user_path, &rel)? {
                check_links(user_path, target.existing)?;
                return Ok(target);
            }
        }
        match self.walk(user_path, &rel, Want::Entry { create: true })? {
            Found::Entry {
                dir: Some(dir),
                name,
                existing,
                ..
            } => {
                check_links(user_path, existing)?;
                Ok(Target {
                    dir,
                    name,
                    existing,
                })
            }
            _ => Err(wrong_result(user_path)),
        }
    }

    fn use_openat2(&self) -> bool {
        self.openat2 && !OPENAT2_MISSING.load(Ordering::Relaxed)
    }

    /// The fast path of [`Root::open_target`]: the parent by `openat2`, the final name by
    /// `fstatat` without following. `None` when the walk must decide (a missing parent, a
    /// symlink that leaves or is absolute, a final symlink).
    fn target_by_openat2(&self, user_path: &str, rel: &Path) -> Result<Option<Target>, Error> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Ok(None);
        };
        let name = name.to_os_string();
        let dir = if parent.as_os_str().is_empty() {
            self.fd.try_clone().map_err(|e| io_error(user_path, &e))?
        } else {
            match sys::openat2(self.fd.as_fd(), parent, sys::DIR_FLAGS) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) || walk_decides(&e) => {
                    return Ok(None)
                }
                Err(e) => return Err(io_error(user_path, &e)),
            }
        };
        let existing = match sys::lstat_at(dir.as_fd(), &name) {
            Ok(st) if sys::is_symlink(&st) => return Ok(None),
            Ok(st) => Some(sys::facts(&st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(io_error(user_path, &e)),
        };
        Ok(Some(Target {
            dir,
            name,
            existing,
        }))
    }

    /// The caller's path made relative to the root, checked lexically: not empty, no NUL, no
    /// `..`, and an absolute path must lie inside the root (refused without a single stat, so
    /// no existence probing outside). Only plain names remain; none at all is the root.
    fn relative(&self, user_path: &str) -> Result<PathBuf, Error> {
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
        let rest = if user.is_absolute() {
            user.strip_prefix(&self.path)
                .or_else(|_| user.strip_prefix(&self.configured))
                .map_err(|_| denied(user_path, "it is outside the filesystem root"))?
        } else {
            user
        };
        Ok(rest
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect())
    }

    /// The per-component walk (see the module docs): every step opens one name with
    /// `O_NOFOLLOW` relative to the handle of the directory before it, so what is checked is
    /// what is opened.
    fn walk(&self, shown: &str, rel: &Path, want: Want) -> Result<Found, Error> {
        Walk::new(self, shown, rel, want).run()
    }

    /// The handle of the innermost directory entered (the root's, duplicated, if none).
    fn take_top(
        &self,
        shown: &str,
        stack: &mut Vec<(OwnedFd, OsString)>,
    ) -> Result<OwnedFd, Error> {
        match stack.pop() {
            Some((fd, _)) => Ok(fd),
            None => self.fd.try_clone().map_err(|e| io_error(shown, &e)),
        }
    }

    fn path_of(&self, stack: &[(OwnedFd, OsString)], tail: &[&OsStr]) -> PathBuf {
        let mut p = self.path.clone();
        p.extend(stack.iter().map(|(_, n)| n.as_os_str()));
        p.extend(tail);
        p
    }
}

/// One per-component walk ([`Root::walk`]): the names still to look at, the directories
/// entered, and the counters that bound it.
struct Walk<'a> {
    root: &'a Root,
    shown: &'a str,
    want: Want,
    /// Names still to look at, in order.
    pending: VecDeque<OsString>,
    /// Directories entered below the root, with their names.
    stack: Vec<(OwnedFd, OsString)>,
    /// Names below a directory that does not exist (a lookup without creating only).
    missing: Vec<OsString>,
    /// Symlinks followed and names looked at again.
    hops: usize,
    /// Directories created.
    made: usize,
}

/// What looking at one name led to.
enum Seen {
    /// A directory, now open.
    Dir(OwnedFd),
    /// A missing directory, just created: look at the name again.
    Created,
    /// A missing directory where none is created: the rest of the path is only reported.
    Missing,
    /// The last name of an entry lookup, holding this (`None`: nothing).
    Entry(Option<Facts>),
    /// The walk is over.
    Found(Found),
    /// A symlink to follow, or a name that changed kind.
    Step(Step),
}

impl<'a> Walk<'a> {
    fn new(root: &'a Root, shown: &'a str, rel: &Path, want: Want) -> Walk<'a> {
        Walk {
            root,
            shown,
            want,
            pending: rel
                .components()
                .map(|c| c.as_os_str().to_os_string())
                .collect(),
            stack: Vec::new(),
            missing: Vec::new(),
            hops: 0,
            made: 0,
        }
    }

    fn run(mut self) -> Result<Found, Error> {
        while let Some(name) = self.pending.pop_front() {
            if name == ".." {
                self.up()?;
                continue;
            }
            if !self.missing.is_empty() {
                self.missing.push(name);
                continue;
            }
            let seen = if !self.pending.is_empty() || self.want == Want::Dir {
                self.through_dir(&name)?
            } else if self.want == Want::File {
                self.open_file(&name)?
            } else {
                self.last_entry(&name)?
            };
            let step = match seen {
                Seen::Dir(fd) => {
                    self.stack.push((fd, name));
                    continue;
                }
                Seen::Created => {
                    self.pending.push_front(name);
                    continue;
                }
                Seen::Missing => {
                    self.missing.push(name);
                    continue;
                }
                Seen::Entry(existing) => return self.entry(name, existing),
                Seen::Found(found) => return Ok(found),
                Seen::Step(step) => step,
            };
            self.hops += 1;
            if self.hops > MAX_SYMLINK_HOPS {
                let e = io::Error::other("too many levels of symbolic links");
                return Err(io_error(self.shown, &e));
            }
            match step {
                Step::Again => self.pending.push_front(name),
                Step::Link(link) => self.follow(PathBuf::from(link))?,
            }
        }
        self.end()
    }

    /// The handle of the directory the next name is looked up in.
    fn dir(&self) -> BorrowedFd<'_> {
        self.stack
            .last()
            .map_or(self.root.fd.as_fd(), |(fd, _)| fd.as_fd())
    }

    /// A `..`: back to the directory before, never above the root.
    fn up(&mut self) -> Result<(), Error> {
        if !self.missing.is_empty() {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "\"..\" after a missing directory",
            );
            return Err(io_error(self.shown, &e));
        }
        if self.stack.pop().is_none() {
            return Err(denied(self.shown, ESCAPES));
        }
        Ok(())
    }

    /// A name that must be a directory (one with names after it, or the last one of
    /// [`Want::Dir`]): opened, created, noted missing, or a symlink.
    fn through_dir(&mut self, name: &OsStr) -> Result<Seen, Error> {
        let shown = self.shown;
        // Not `self.dir()`: the fields are borrowed apart so `made` can count.
        let dir = self
            .stack
            .last()
            .map_or(self.root.fd.as_fd(), |(fd, _)| fd.as_fd());
        match sys::open_dir(dir, name) {
            Ok(fd) => Ok(Seen::Dir(fd)),
            Err(e) if errno(&e) == libc::ENOENT => match self.want {
                Want::Entry { create: true } => {
                    sys::mkdir(dir, name).map_err(|e| io_error(shown, &e))?;
                    self.made += 1;
                    if self.made > MAX_CREATED_DIRS {
                        let e = io::Error::other("directories keep disappearing");
                        return Err(io_error(shown, &e));
                    }
                    Ok(Seen::Created)
                }
                Want::Entry { create: false } => Ok(Seen::Missing),
                Want::File | Want::Dir => Err(io_error(shown, &e)),
            },
            Err(e) if matches!(errno(&e), libc::ELOOP | libc::ENOTDIR) => {
                match sys::readlink(dir, name) {
                    Ok(target) => Ok(Seen::Step(Step::Link(target))),
                    // Not a symlink (any more): a file where a directory is needed, or a
                    // directory again after a swap.
                    Err(l) if errno(&l) == libc::EINVAL => match sys::lstat_at(dir, name) {
                        Ok(st) if sys::facts(&st).kind == Kind::Dir => Ok(Seen::Step(Step::Again)),
                        Ok(st) if sys::is_symlink(&st) => Ok(Seen::Step(Step::Again)),
                        Ok(_) => {
                            let e = io::Error::from_raw_os_error(libc::ENOTDIR);
                            Err(io_error(shown, &e))
                        }
                        Err(l) => changed(shown, &l).map(Seen::Step),
                    },
                    Err(l) => changed(shown, &l).map(Seen::Step),
                }
            }
            Err(e) => Err(io_error(shown, &e)),
        }
    }

    /// The last name of [`Want::File`]: opened for reading, or a symlink.
    fn open_file(&self, name: &OsStr) -> Result<Seen, Error> {
        let dir = self.dir();
        match sys::open_file(dir, name) {
            Ok(fd) => Ok(Seen::Found(Found::File(fd))),
            Err(e) if errno(&e) == libc::ELOOP => match sys::readlink(dir, name) {
                Ok(target) => Ok(Seen::Step(Step::Link(target))),
                Err(l) => changed(self.shown, &l).map(Seen::Step),
            },
            Err(e) => Err(io_error(self.shown, &e)),
        }
    }

    /// The last name of [`Want::Entry`]: what it holds, or a symlink.
    fn last_entry(&self, name: &OsStr) -> Result<Seen, Error> {
        let dir = self.dir();
        match sys::lstat_at(dir, name) {
            Ok(st) if sys::is_symlink(&st) => match sys::readlink(dir, name) {
                Ok(target) => Ok(Seen::Step(Step::Link(target))),
                Err(l) => changed(self.shown, &l).map(Seen::Step),
            },
            Ok(st) => Ok(Seen::Entry(Some(sys::facts(&st)))),
            Err(e) if errno(&e) == libc::ENOENT => Ok(Seen::Entry(None)),
            Err(e) => Err(io_error(self.shown, &e)),
        }
    }

    /// The entry found at the last name, in the innermost directory entered.
    fn entry(mut self, name: OsString, existing: Option<Facts>) -> Result<Found, Error> {
        let path = self.root.path_of(&self.stack, &[&name]);
        let dir = self.root.take_top(self.shown, &mut self.stack)?;
        Ok(Found::Entry {
            path,
            dir: Some(dir),
            name,
            existing,
        })
    }

    /// The name just looked at is a symlink to `link`: walk its target in its place.
    fn follow(&mut self, link: PathBuf) -> Result<(), Error> {
        let rest = if link.is_absolute() {
            self.stack.clear();
            link.strip_prefix(&self.root.path)
                .or_else(|_| link.strip_prefix(&self.root.configured))
                .map_err(|_| denied(self.shown, ESCAPES))?
                .to_path_buf()
        } else if link.as_os_str().is_empty() {
            return Err(io_error(
                self.shown,
                &io::Error::from(io::ErrorKind::NotFound),
            ));
        } else {
            link
        };
        for c in rest.components().rev() {
            match c {
                Component::Normal(n) => self.pending.push_front(n.to_os_string()),
                Component::ParentDir => self.pending.push_front("..".into()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        Ok(())
    }

    /// The names ran out on a directory: the root, or one reached by a final `..`, or a path
    /// below a missing directory.
    fn end(mut self) -> Result<Found, Error> {
        let tail: Vec<&OsStr> = self.missing.iter().map(|m| m.as_os_str()).collect();
        let path = self.root.path_of(&self.stack, &tail);
        match self.want {
            Want::Dir => Ok(Found::Dir(path)),
            Want::File => sys::open_file(self.dir(), OsStr::new("."))
                .map(Found::File)
                .map_err(|e| io_error(self.shown, &e)),
            Want::Entry { .. } if !self.missing.is_empty() => Ok(Found::Entry {
                path,
                dir: None,
                name: OsString::new(),
                existing: None,
            }),
            Want::Entry { .. } => Ok(Found::Entry {
                path,
                dir: Some(self.root.take_top(self.shown, &mut self.stack)?),
                name: ".".into(),
                existing: Some(Facts {
                    kind: Kind::Dir,
                    mode: 0,
                    nlink: 1,
                }),
            }),
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A `readlinkat` that failed right after an open said "symlink": `EINVAL` (no longer a link)
/// or `ENOENT` (gone) mean the name changed in between, so look again; anything else is an
/// error of the call.
fn changed(shown: &str, e: &io::Error) -> Result<Step, Error> {
    match errno(e) {
        libc::EINVAL | libc::ENOENT => Ok(Step::Again),
        _ => Err(io_error(shown, e)),
    }
}

/// Whether an `openat2` failure is for the walk to judge: `EXDEV` (the path left the root, or
/// went through an absolute symlink the walk may accept), `ELOOP`, `EAGAIN` (a rename raced a
/// `..`), or `openat2` itself unusable (`ENOSYS`, remembered; `EPERM` from a seccomp filter;
/// `EINVAL` from a kernel without these flags).
fn walk_decides(e: &io::Error) -> bool {
    match errno(e) {
        libc::ENOSYS => {
            OPENAT2_MISSING.store(true, Ordering::Relaxed);
            true
        }
        libc::EXDEV | libc::ELOOP | libc::EAGAIN | libc::EPERM | libc::EINVAL => true,
        _ => false,
    }
}

fn check_links(user_path: &str, existing: Option<Facts>) -> Result<(), Error> {
    match existing {
        Some(f) if f.kind == Kind::File && f.nlink > 1 => Err(denied(
            user_path,
            &format!(
                "the file has {} hard links, and another name may lie outside the filesystem \
                 root",
                f.nlink
            ),
        )),
        _ => Ok(()),
    }
}

fn wrong_result(user_path: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("{user_path:?}: the path walk returned the wrong kind of result"),
    )
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

/// The `*at()` system calls the walk and the writes are made of, on directory handles.
pub(crate) mod sys {
    use std::ffi::{CString, OsStr, OsString};
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::Path;

    use super::{Facts, Kind};

    /// For reading: no controlling tty, and no blocking open of a FIFO.
    pub const READ_FLAGS: libc::c_int =
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    /// A directory handle that can be walked from and `fsync`ed.
    pub const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

    fn cstr(name: &OsStr) -> io::Result<CString> {
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// Runs a call returning a descriptor or -1, retrying `EINTR`.
    fn fd_result(mut call: impl FnMut() -> libc::c_int) -> io::Result<OwnedFd> {
        loop {
            let fd = call();
            if fd >= 0 {
                // SAFETY: the call just returned this descriptor, which nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn unit_result(r: libc::c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The root itself, by its canonical absolute path.
    pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        fd_result(|| unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })
    }

    /// One name in `dir` as a directory, never following a symlink (`ELOOP` or `ENOTDIR`).
    pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
        let c = cstr(name)?;
        // SAFETY: `dir` is an open descriptor and `c` a valid C string for the call.
        fd_result(|| unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), DIR_FLAGS | libc::O_NOFOLLOW)
        })
    }

    /// One name in `dir` for reading, never following a symlink (`ELOOP`).
    pub fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
        let c = cstr(name)?;
        // SAFETY: as in `open_dir`.
        fd_result(|| unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), READ_FLAGS | libc::O_NOFOLLOW)
        })
    }

    /// A new file `name` in `dir` for writing (`O_EXCL`: never an existing file, never through
    /// a symlink).
    pub fn create_new(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
        let c = cstr(name)?;
        let flags = libc::O_WRONLY
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOFOLLOW
            | libc::O_NOCTTY
            | libc::O_CLOEXEC;
        // SAFETY: as in `open_dir`; the mode is the variadic third argument.
        fd_result(|| unsafe {
            libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint)
        })
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)`: what `name` in `dir` is, a symlink included.
    pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
        let c = cstr(name)?;
        // SAFETY: `stat` is plain old data; all-zero is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and out-pointer for the call.
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        unit_result(r).map(|()| st)
    }

    pub fn is_symlink(st: &libc::stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }

    pub fn facts(st: &libc::stat) -> Facts {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            _ => Kind::Special,
        };
        // `mode_t` and `nlink_t` differ in width between targets.
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        Facts {
            kind,
            mode: (st.st_mode as u32) & 0o7777,
            nlink: u64::from(st.st_nlink),
        }
    }

    /// The target of the symlink `name` in `dir` (`EINVAL`: not a symlink).
    pub fn readlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
        let c = cstr(name)?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: `buf` is writable for `buf.len()` bytes; valid descriptor and C string.
            let n = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            if n < buf.len() {
                buf.truncate(n);
                return Ok(OsString::from_vec(buf));
            }
            if buf.len() >= 1 << 16 {
                return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
            }
            let grown = buf.len() * 4;
            buf.resize(grown, 0);
        }
    }

    /// `mkdirat(name)` in `dir`; one that appeared meanwhile is fine.
    pub fn mkdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string for the call.
        match unit_result(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) }) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// `renameat(from, to)`, both in `dir`: replaces the name `to` itself, never a symlink's
    /// target.
    pub fn rename(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let fd = dir.as_raw_fd();
        // SAFETY: valid descriptor and C strings for the call.
        unit_result(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) })
    }

    /// `unlinkat(name)` in `dir`.
    pub fn unlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid descriptor and C string for the call.
        unit_result(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// `fsync` on a directory handle: makes a rename in it durable.
    pub fn sync(dir: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: fsync on an open descriptor has no memory-safety preconditions.
        unit_result(unsafe { libc::fsync(dir.as_raw_fd()) })
    }

    /// `openat2(path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to `dir`: symlinks
    /// are followed, but no step may leave `dir` (`EXDEV`), and absolute ones are refused.
    #[cfg(target_os = "linux")]
    pub fn openat2(dir: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let c = cstr(path.as_os_str())?;
        // SAFETY: `open_how` is plain old data; zero is "nothing asked" in every field.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::try_from(flags).unwrap_or(0);
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        fd_result(|| {
            // SAFETY: valid descriptor, C string and `open_how` with its exact size for the
            // call; the kernel keeps none of the pointers.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            libc::c_int::try_from(r).unwrap_or(-1)
        })
    }

    /// No `openat2` outside Linux: the walk does everything.
    #[cfg(not(target_os = "linux"))]
    pub fn openat2(_dir: BorrowedFd<'_>, _path: &Path, _flags: libc::c_int) -> io::Result<OwnedFd> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

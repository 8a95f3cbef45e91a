//! The file plumbing shared by [`super::keyfile`] and [`super::trust_file`]: a bounded read that
//! checks the file it opened (regular file, permissions, size) and an atomic write (a fresh
//! `0600` temporary file in the same directory, fsync, then rename or hard link into place), so
//! a crash never leaves a half-written key or trust store behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, ErrorCode, Result};

/// Who besides the owner a file may be open to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exposure {
    /// A secret (the node key): no permission bit for group or others, like an ssh key.
    Secret,
    /// Integrity-critical but not secret (the trust store): group and others may read it, never
    /// write it (whoever can write it can re-pin node keys).
    NoForeignWrite,
}

impl Exposure {
    /// The permission bits that must be clear.
    #[cfg(unix)]
    fn forbidden_bits(self) -> u32 {
        match self {
            Exposure::Secret => 0o077,
            Exposure::NoForeignWrite => 0o022,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Exposure::Secret => "accessible by group or others",
            Exposure::NoForeignWrite => "writable by group or others",
        }
    }
}

/// The contents of `path`, or `None` when nothing exists there (no file, no symlink).
///
/// Refuses (code [`ErrorCode::Identity`], message starting with `what` and the path): a dangling
/// symlink, anything but a regular file, permissions `exposure` forbids, more than `max_bytes`.
/// The checks run on the opened file itself (`fstat`), not on a second lookup of the path.
pub(super) fn read_checked(
    path: &Path,
    what: &str,
    exposure: Exposure,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>> {
    // Only "nothing at all at this path" counts as missing: a dangling symlink is an error, so a
    // file that went away behind a link is never silently replaced.
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(what, path, "cannot inspect", &e)),
    }
    let file = match open_for_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(identity_error(
                what,
                path,
                "is a symbolic link to a missing file",
            ))
        }
        Err(e) => return Err(io_error(what, path, "cannot open", &e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_error(what, path, "cannot inspect", &e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(identity_error(
            what,
            path,
            &format!("is not a regular file (it is {kind})"),
        ));
    }
    check_mode(&meta, path, what, exposure)?;
    if meta.len() > max_bytes {
        return Err(identity_error(
            what,
            path,
            &format!(
                "is too large ({} bytes, at most {max_bytes} expected)",
                meta.len()
            ),
        ));
    }
    // Bounded even if the file grows after the fstat.
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_error(what, path, "cannot read", &e))?;
    if buf.len() as u64 > max_bytes {
        return Err(identity_error(
            what,
            path,
            &format!("is too large (more than {max_bytes} bytes)"),
        ));
    }
    Ok(Some(buf))
}

/// Opens for reading without blocking on a FIFO (the type check comes after the open).
fn open_for_read(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    opts.open(path)
}

#[cfg(unix)]
fn check_mode(meta: &fs::Metadata, path: &Path, what: &str, exposure: Exposure) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & exposure.forbidden_bits() != 0 {
        return Err(Error::new(
            ErrorCode::Identity,
            format!(
                "{what} {} has mode {mode:04o}: it must not be {} (like an ssh key); run \
                 `chmod 600 {}`",
                path.display(),
                exposure.what(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &fs::Metadata, _: &Path, _: &str, _: Exposure) -> Result<()> {
    Ok(())
}

/// What [`write_atomic`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placed {
    /// The new contents are at the path.
    Written,
    /// `replace` was false and something already exists at the path; it was left alone.
    Exists,
}

/// Tells temporary files of concurrent writers in one process apart (the pid does across
/// processes).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Attempts at a fresh temporary file name before giving up (names collide only with stale
/// files of a crashed process that had the same pid).
const TMP_ATTEMPTS: u32 = 16;

/// Writes `bytes` to `path` atomically with mode `0600`: a new temporary file in the same
/// directory (`O_EXCL`), `fsync`, then into place. With `replace`, a rename (an existing file is
/// replaced); without, a hard link, which fails rather than replace anything, so two processes
/// creating the same file never overwrite each other ([`Placed::Exists`] for the loser). The
/// temporary file is removed on every path. The directory is fsynced afterwards, best effort.
pub(super) fn write_atomic(path: &Path, what: &str, bytes: &[u8], replace: bool) -> Result<Placed> {
    let (tmp, mut file) = create_tmp(path, what)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(what, path, "cannot write a temporary file for", &e));
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let placed = if replace {
        fs::rename(&tmp, path)
            .map(|()| Placed::Written)
            .map_err(|e| io_error(what, path, "cannot rename a temporary file onto", &e))
    } else {
        link_no_replace(&tmp, path, what)
    };
    // After a rename the temporary name is gone already; after a link (or a failure) it is not.
    let _ = fs::remove_file(&tmp);
    if placed == Ok(Placed::Written) {
        sync_dir(path);
    }
    placed
}

/// Puts `tmp` at `path` unless something is there already.
fn link_no_replace(tmp: &Path, path: &Path, what: &str) -> Result<Placed> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(Placed::Written),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Placed::Exists),
        // A filesystem without hard links: a rename after checking the path is still free (a
        // race with another creator is possible only there).
        Err(_) => match fs::symlink_metadata(path) {
            Ok(_) => Ok(Placed::Exists),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(tmp, path)
                .map(|()| Placed::Written)
                .map_err(|e| io_error(what, path, "cannot rename a temporary file onto", &e)),
            Err(e) => Err(io_error(what, path, "cannot inspect", &e)),
        },
    }
}

/// A new `0600` file next to `path` (`.<name>.tmp-<pid>-<n>`).
fn create_tmp(path: &Path, what: &str) -> Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .ok_or_else(|| identity_error(what, path, "is not a file path"))?
        .to_string_lossy()
        .into_owned();
    let dir = parent_dir(path);
    let mut last = None;
    for _ in 0..TMP_ATTEMPTS {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        match opts.open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io_error(
                    what,
                    path,
                    "cannot create a temporary file for",
                    &e,
                ))
            }
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(io_error(
        what,
        path,
        "cannot create a temporary file for",
        &e,
    ))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the new directory entry durable. Best effort: some filesystems refuse to fsync a
/// directory, and the file itself is complete either way.
fn sync_dir(path: &Path) {
    if let Ok(d) = File::open(parent_dir(path)) {
        let _ = d.sync_all();
    }
}

/// `<what> <path> <problem>` with code [`ErrorCode::Identity`].
pub(super) fn identity_error(what: &str, path: &Path, problem: &str) -> Error {
    Error::new(
        ErrorCode::Identity,
        format!("{what} {} {problem}", path.display()),
    )
}

/// `<what>: <doing> <path>: <os error>` with code [`ErrorCode::Io`].
fn io_error(what: &str, path: &Path, doing: &str, e: &io::Error) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("{what}: {doing} {}: {e}", path.display()),
    )
}

#[cfg(test)]
pub(super) mod test_dir {
    //! Unique scratch directories under the system temp dir, removed on drop.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    static N: AtomicU64 = AtomicU64::new(0);

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(tag: &str) -> TestDir {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir().join(format!(
                "clawmatrix-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TestDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Names of the entries in the directory, sorted.
        pub fn listing(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_dir::TestDir;
    use super::*;

    #[test]
    fn an_atomic_write_replaces_or_refuses_to_and_leaves_no_temporary_file() {
        let dir = TestDir::new("atomic");
        let p = dir.path().join("f");
        assert_eq!(write_atomic(&p, "f", b"one", false), Ok(Placed::Written));
        assert_eq!(write_atomic(&p, "f", b"two", false), Ok(Placed::Exists));
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(write_atomic(&p, "f", b"three", true), Ok(Placed::Written));
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(dir.listing(), vec!["f".to_string()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_naming_the_path() {
        let dir = TestDir::new("atomic-missing");
        let p = dir.path().join("no/such/f");
        let e = write_atomic(&p, "thing", b"x", true).unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);
        assert!(e.message.contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn reads_refuse_directories_dangling_links_and_oversized_files() {
        let dir = TestDir::new("read");
        assert_eq!(
            read_checked(&dir.path().join("none"), "f", Exposure::Secret, 10),
            Ok(None)
        );
        let e = read_checked(dir.path(), "f", Exposure::Secret, 10).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let big = dir.path().join("big");
        write_atomic(&big, "f", &[b'x'; 11], true).unwrap();
        let e = read_checked(&big, "f", Exposure::Secret, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::Identity);
        assert!(e.message.contains("too large (11 bytes, at most 10"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
            let e = read_checked(&link, "f", Exposure::Secret, 10).unwrap_err();
            assert!(e.message.contains("symbolic link to a missing file"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = TestDir::new("fifo");
        let p = dir.path().join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Bounded: a blocking open would hang the reader thread, not the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_checked(&p, "f", Exposure::Secret, 10));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO must not block");
        let e = got.unwrap_err();
        assert!(e.message.contains("special file"), "{e}");
    }
}

//! Remote `read`, `write` and `edit`, bounded by the filesystem [`Root`] and by size caps.
//!
//! - `read` returns UTF-8 text as is, anything else base64-encoded (`encoding: "base64"`); it
//!   refuses directories and special files (a FIFO would block forever) and files over the cap,
//!   stating the size and the limit.
//! - `write` is atomic: the content goes to a uniquely named temporary file in the same
//!   directory, is flushed to disk, renamed over the target, and the directory is flushed.
//!   Readers see the old file or the new one, never a mix; on any failure the temporary file
//!   is removed and the target is untouched. An existing file keeps its permission bits.
//!   Missing parent directories are created (inside the root only). Every step works on a
//!   directory handle from the [`Root`] (`openat` / `renameat` / `fsync` on it), never on a
//!   path that could be swapped for a symlink meanwhile.
//! - `edit` replaces exact text (no fuzzy matching): each `oldText` must occur exactly once,
//!   or, with `replace_all`, at least once; then the file is rewritten atomically like `write`.
//!
//! These functions block; the server runs them on the blocking thread pool.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, ErrorCode};
use crate::tools::paths::{io_error, sys, Kind, Root, Target};

/// Largest file `write` and `edit` accept, in bytes: the largest string argument the tools
/// take ([`crate::tools::catalog::MAX_STRING_ARG_BYTES`], 16 MiB).
pub const MAX_WRITE_BYTES: usize = crate::tools::catalog::MAX_STRING_ARG_BYTES;

/// How `ReadResult::content` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The file is valid UTF-8 and `content` is its text.
    Utf8,
    /// The file is not UTF-8; `content` is standard base64 with padding.
    Base64,
}

impl Encoding {
    /// `"utf8"` or `"base64"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf8",
            Encoding::Base64 => "base64",
        }
    }
}

/// A file read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The content, as `encoding` says.
    pub content: String,
    /// How `content` is encoded.
    pub encoding: Encoding,
    /// The file size in bytes.
    pub size: u64,
}

/// A file written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// Bytes written.
    pub size: u64,
    /// The file did not exist before.
    pub created: bool,
}

/// One exact replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The exact text to find (non-empty).
    pub old_text: String,
    /// Its replacement.
    pub new_text: String,
}

/// A file edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditResult {
    /// Occurrences replaced, over all replacements.
    pub replacements: usize,
    /// The new file size in bytes.
    pub size: u64,
}

/// Reads `path` (inside `root`). The returned content, after encoding, is at most `max_bytes`.
pub fn read(root: &Root, path: &str, max_bytes: usize) -> Result<ReadResult, Error> {
    // Checked on the size and the bytes read, and once more after base64 (which grows by 4/3).
    let data = read_bounded(root, path, max_bytes)?;
    let size = data.len() as u64;
    match String::from_utf8(data) {
        Ok(text) => Ok(ReadResult {
            content: text,
            encoding: Encoding::Utf8,
            size,
        }),
        Err(e) => {
            let encoded = base64(e.as_bytes());
            if encoded.len() > max_bytes {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!(
                        "{path:?} is binary ({size} bytes, {} as base64), over the \
                         {max_bytes}-byte limit",
                        encoded.len()
                    ),
                ));
            }
            Ok(ReadResult {
                content: encoded,
                encoding: Encoding::Base64,
                size,
            })
        }
    }
}

/// Writes `content` to `path` (inside `root`) atomically, creating parent directories.
pub fn write(
    root: &Root,
    path: &str,
    content: &[u8],
    max_bytes: usize,
) -> Result<WriteResult, Error> {
    if content.len() > max_bytes {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "content for {path:?} is {} bytes, over the {max_bytes}-byte limit",
                content.len()
            ),
        ));
    }
    let target = root.open_target(path)?;
    let mode = existing_mode(&target, path)?;
    write_atomic(target.dir.as_fd(), &target.name, content, mode, || Ok(()))
        .map_err(|e| io_error(path, &e))?;
    Ok(WriteResult {
        size: content.len() as u64,
        created: mode.is_none(),
    })
}

/// Applies exact replacements to the UTF-8 file `path` (inside `root`) and rewrites it
/// atomically. All replacements are matched against the original content and must not
/// overlap. Without `replace_all` each `old_text` must occur exactly once.
pub fn edit(
    root: &Root,
    path: &str,
    replacements: &[Replacement],
    replace_all: bool,
    max_bytes: usize,
) -> Result<EditResult, Error> {
    if replacements.is_empty() {
        return Err(invalid("edit: no replacement given".into()));
    }
    if let Some(i) = replacements.iter().position(|r| r.old_text.is_empty()) {
        return Err(invalid(format!("edit: oldText #{} is empty", i + 1)));
    }
    let original = read_text(root, path, max_bytes)?;
    let spans = find_spans(&original, path, replacements, replace_all)?;
    let mut out = String::with_capacity(original.len());
    let mut cursor = 0;
    for &(start, end, i) in &spans {
        out.push_str(&original[cursor..start]);
        out.push_str(&replacements[i].new_text);
        cursor = end;
    }
    out.push_str(&original[cursor..]);
    if out.len() > max_bytes {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "{path:?} would be {} bytes after the edit, over the {max_bytes}-byte limit",
                out.len()
            ),
        ));
    }
    // Looked up again by the same rules: the file read may have been replaced meanwhile, and
    // the new content goes wherever the path leads now (inside the root, or nowhere).
    let target = root.open_target(path)?;
    let mode = existing_mode(&target, path)?;
    write_atomic(
        target.dir.as_fd(),
        &target.name,
        out.as_bytes(),
        mode,
        || Ok(()),
    )
    .map_err(|e| io_error(path, &e))?;
    Ok(EditResult {
        replacements: spans.len(),
        size: out.len() as u64,
    })
}

/// The bytes of the regular file `path`: refused when it is larger than `max_bytes`, by its
/// size or by what was read (`take` bounds the read even if the file grows meanwhile).
fn read_bounded(root: &Root, path: &str, max_bytes: usize) -> Result<Vec<u8>, Error> {
    let (file, size) = open_regular(root, path)?;
    if size > max_bytes as u64 {
        return Err(too_large(path, size, max_bytes));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_error(path, &e))?;
    if data.len() > max_bytes {
        return Err(too_large(path, data.len() as u64, max_bytes));
    }
    Ok(data)
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, message)
}

/// The text of the file `edit` works on: a regular file of at most `max_bytes`, in UTF-8.
fn read_text(root: &Root, path: &str, max_bytes: usize) -> Result<String, Error> {
    String::from_utf8(read_bounded(root, path, max_bytes)?).map_err(|_| {
        invalid(format!(
            "{path:?} is not UTF-8 text; edit works on text files"
        ))
    })
}

/// `(start, end, replacement index)` of every match in `original`, in order: each `oldText`
/// found exactly once (at least once with `replace_all`), and no two matches overlapping.
fn find_spans(
    original: &str,
    path: &str,
    replacements: &[Replacement],
    replace_all: bool,
) -> Result<Vec<(usize, usize, usize)>, Error> {
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for (i, r) in replacements.iter().enumerate() {
        let found: Vec<usize> = original
            .match_indices(r.old_text.as_str())
            .map(|(at, _)| at)
            .collect();
        let which = if replacements.len() == 1 {
            "oldText".to_owned()
        } else {
            format!("oldText #{}", i + 1)
        };
        match found.len() {
            0 => {
                return Err(invalid(format!(
                    "{which} was not found in {path:?} (the match is exact: whitespace and line \
                     endings count)"
                )))
            }
            1 => {}
            n if !replace_all => {
                return Err(invalid(format!(
                    "{which} occurs {n} times in {path:?}; add surrounding text to make it \
                     unique, or set replaceAll"
                )))
            }
            _ => {}
        }
        spans.extend(found.into_iter().map(|at| (at, at + r.old_text.len(), i)));
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(invalid(format!(
            "replacements overlap in {path:?} (oldText #{} and #{}); merge them",
            w[0].2 + 1,
            w[1].2 + 1
        )));
    }
    Ok(spans)
}

/// Opens `shown` inside `root` for reading: a regular file with one link (the open itself
/// stays inside the root and does not block on a FIFO).
fn open_regular(root: &Root, shown: &str) -> Result<(File, u64), Error> {
    let file = root.open_file(shown)?;
    let meta = file.metadata().map_err(|e| io_error(shown, &e))?;
    if meta.is_dir() {
        return Err(not_a_file(shown, "a directory"));
    }
    if !meta.is_file() {
        return Err(not_a_file(shown, "a special file"));
    }
    if meta.nlink() > 1 {
        return Err(Error::new(
            ErrorCode::Denied,
            format!(
                "path {shown:?} is refused: the file has {} hard links",
                meta.nlink()
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// The permission bits of the regular file a write replaces (`None`: a new file); anything
/// else at that name is refused.
fn existing_mode(target: &Target, shown: &str) -> Result<Option<u32>, Error> {
    match target.existing {
        None => Ok(None),
        Some(f) => match f.kind {
            Kind::File => Ok(Some(f.mode)),
            Kind::Dir => Err(not_a_file(shown, "a directory")),
            Kind::Special => Err(not_a_file(shown, "a special file")),
        },
    }
}

/// Distinguishes temporary files of concurrent writes within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp file + fsync + rename + directory fsync, all in the directory handle `dir`.
/// `before_rename` lets tests inject a failure at the last moment; the temporary file is
/// removed on every error.
pub(crate) fn write_atomic(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    content: &[u8],
    mode: Option<u32>,
    before_rename: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let (mut file, tmp) = create_temp(dir, name, mode)?;
    let result = (|| {
        file.write_all(content)?;
        if let Some(mode) = mode {
            // The umask may have narrowed the creation mode: restore the original bits.
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.sync_all()?;
        drop(file);
        before_rename()?;
        sys::rename(dir, &tmp, name)
    })();
    if let Err(e) = result {
        let _ = sys::unlink(dir, &tmp);
        return Err(e);
    }
    // The rename is durable once the directory entry is.
    sys::sync(dir)
}

fn create_temp(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: Option<u32>,
) -> io::Result<(File, OsString)> {
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".clawmatrix-{}-{n}-{}.tmp",
            std::process::id(),
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        match sys::create_new(dir, &tmp, mode.unwrap_or(0o644)) {
            Ok(fd) => return Ok((File::from(fd), tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a unique temporary file"))
}

fn too_large(path: &str, size: u64, max: usize) -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!("{path:?} is {size} bytes, over the {max}-byte limit"),
    )
}

fn not_a_file(path: &str, what: &str) -> Error {
    Error::new(
        ErrorCode::NotAFile,
        format!("{path:?} is {what}, not a regular file"),
    )
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let rows = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in rows {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn a_failed_write_leaves_the_original_and_no_temp_file() {
        let dir = std::env::temp_dir().join(format!(
            "clawmatrix-fs-unit-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("f.txt");
        std::fs::write(&target, "original").unwrap();
        let handle = File::open(&dir).unwrap();
        let err = write_atomic(
            handle.as_fd(),
            OsStr::new("f.txt"),
            b"new content",
            None,
            || Err(io::Error::other("injected failure")),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "injected failure");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.txt")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

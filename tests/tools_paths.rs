//! Path resolution against the filesystem root: escapes by `..`, absolute paths, symlinks
//! (existing and dangling targets, final and intermediate components), hard links, non-UTF-8
//! names.

#![cfg(unix)]

mod tools_support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;

use clawmatrix::error::ErrorCode;
use clawmatrix::tools::paths::{Intent, Root};
use tools_support::TempDir;

struct Fixture {
    _tmp: TempDir,
    root: Root,
    outside: std::path::PathBuf,
}

/// `<tmp>/root` (the root) and `<tmp>/outside/secret.txt`.
fn fixture() -> Fixture {
    let tmp = TempDir::new("paths");
    let root_dir = tmp.join("root");
    let outside = tmp.join("outside");
    std::fs::create_dir_all(&root_dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::fs::write(root_dir.join("a.txt"), "a").unwrap();
    let root = Root::open(&root_dir).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

fn denied(f: &Fixture, path: &str, intent: Intent) -> String {
    match f.root.resolve(path, intent) {
        Ok(p) => panic!(
            "{path:?} resolved to {} instead of being refused",
            p.display()
        ),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Denied, "{path:?}: {}", e.message);
            e.message
        }
    }
}

#[test]
fn relative_paths_resolve_inside_the_root() {
    let f = fixture();
    let p = f.root.resolve("a.txt", Intent::Read).unwrap();
    assert_eq!(p, f.root.path().join("a.txt"));
    let p = f.root.resolve("./new/dir/b.txt", Intent::Read).unwrap();
    assert_eq!(p, f.root.path().join("new/dir/b.txt"));
}

#[test]
fn absolute_paths_inside_the_root_are_accepted() {
    let f = fixture();
    let abs = f.root.path().join("a.txt");
    let p = f.root.resolve(abs.to_str().unwrap(), Intent::Read).unwrap();
    assert_eq!(p, abs);
}

#[test]
fn absolute_paths_outside_the_root_are_refused() {
    let f = fixture();
    let msg = denied(&f, "/etc/passwd", Intent::Read);
    assert!(msg.contains("outside the filesystem root"), "{msg}");
    let secret = f.outside.join("secret.txt");
    denied(&f, secret.to_str().unwrap(), Intent::Write);
    // A sibling whose name starts with the root's name is outside too.
    let sibling = format!("{}-evil/x", f.root.path().display());
    denied(&f, &sibling, Intent::Write);
}

#[test]
fn dot_dot_is_refused_even_when_it_would_stay_inside() {
    let f = fixture();
    for p in [
        "../outside/secret.txt",
        "a/../a.txt",
        "x/../../outside",
        "..",
    ] {
        let msg = denied(&f, p, Intent::Read);
        assert!(msg.contains("\"..\" is not allowed"), "{p}: {msg}");
    }
}

#[test]
fn a_symlink_out_of_the_root_is_refused() {
    let f = fixture();
    symlink(f.outside.join("secret.txt"), f.root.path().join("link.txt")).unwrap();
    symlink(&f.outside, f.root.path().join("linkdir")).unwrap();
    for intent in [Intent::Read, Intent::Write] {
        let msg = denied(&f, "link.txt", intent);
        assert!(msg.contains("outside the filesystem root"), "{msg}");
        denied(&f, "linkdir/secret.txt", intent);
        denied(&f, "linkdir/new/file.txt", intent);
    }
    assert!(
        !f.outside.join("new").exists(),
        "no directory created outside"
    );
}

#[test]
fn a_symlink_to_a_not_yet_existing_target_outside_is_refused() {
    let f = fixture();
    let target = f.outside.join("created-later.txt");
    symlink(&target, f.root.path().join("dangling")).unwrap();
    denied(&f, "dangling", Intent::Write);
    denied(&f, "dangling", Intent::Read);
    // A dangling directory link, used as an intermediate component.
    symlink(f.outside.join("nodir"), f.root.path().join("dangling-dir")).unwrap();
    denied(&f, "dangling-dir/x.txt", Intent::Write);
    assert!(!target.exists());
    assert!(!f.outside.join("nodir").exists());
}

#[test]
fn a_symlink_to_a_not_yet_existing_target_inside_resolves_to_the_target() {
    let f = fixture();
    symlink("sub/later.txt", f.root.path().join("rel-dangling")).unwrap();
    let p = f.root.resolve("rel-dangling", Intent::Write).unwrap();
    assert_eq!(p, f.root.path().join("sub/later.txt"));
    assert!(f.root.path().join("sub").is_dir(), "parents created");
}

#[test]
fn a_relative_symlink_climbing_out_is_refused() {
    let f = fixture();
    symlink("../outside/secret.txt", f.root.path().join("climb")).unwrap();
    denied(&f, "climb", Intent::Read);
}

#[test]
fn symlinks_that_stay_inside_are_followed() {
    let f = fixture();
    std::fs::create_dir(f.root.path().join("real")).unwrap();
    symlink("real", f.root.path().join("alias")).unwrap();
    let p = f.root.resolve("alias/x.txt", Intent::Write).unwrap();
    assert_eq!(p, f.root.path().join("real/x.txt"));
}

#[test]
fn a_symlink_loop_is_an_error_not_a_hang() {
    let f = fixture();
    symlink("loop2", f.root.path().join("loop1")).unwrap();
    symlink("loop1", f.root.path().join("loop2")).unwrap();
    let err = f.root.resolve("loop1", Intent::Write).unwrap_err();
    assert_ne!(err.code, ErrorCode::Internal, "{}", err.message);
}

#[test]
fn a_hard_linked_file_is_refused() {
    let f = fixture();
    // Another name of a file outside the root, made inside it.
    std::fs::hard_link(f.outside.join("secret.txt"), f.root.path().join("hard.txt")).unwrap();
    for intent in [Intent::Read, Intent::Write] {
        let msg = denied(&f, "hard.txt", intent);
        assert!(msg.contains("2 hard links"), "{msg}");
    }
}

#[test]
fn non_utf8_names_on_disk_work() {
    let f = fixture();
    let name = OsStr::from_bytes(b"caf\xe9-dir");
    let dir = f.root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), "x").unwrap();
    symlink(name, f.root.path().join("latin1")).unwrap();
    let p = f.root.resolve("latin1/f.txt", Intent::Read).unwrap();
    assert_eq!(p, dir.join("f.txt"));
}

#[test]
fn bad_paths_are_invalid_arguments() {
    let f = fixture();
    for p in ["", "a\0b"] {
        let err = f.root.resolve(p, Intent::Read).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{p:?}");
    }
}

#[test]
fn a_path_through_a_file_is_not_a_directory() {
    let f = fixture();
    let err = f.root.resolve("a.txt/x", Intent::Write).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotAFile, "{}", err.message);
}

#[test]
fn workdirs_default_to_the_root_and_stay_inside() {
    let f = fixture();
    assert_eq!(f.root.resolve_dir(None).unwrap(), f.root.path());
    std::fs::create_dir(f.root.path().join("w")).unwrap();
    assert_eq!(
        f.root.resolve_dir(Some("w")).unwrap(),
        f.root.path().join("w")
    );
    assert_eq!(
        f.root.resolve_dir(Some("/tmp")).unwrap_err().code,
        ErrorCode::Denied
    );
    assert_eq!(
        f.root.resolve_dir(Some("a.txt")).unwrap_err().code,
        ErrorCode::NotAFile
    );
    assert_eq!(
        f.root.resolve_dir(Some("missing")).unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn a_missing_root_is_refused_clearly() {
    let tmp = TempDir::new("paths-missing");
    let err = Root::open(tmp.join("nope")).unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(
        err.message.contains("is unusable: not found"),
        "{}",
        err.message
    );
}

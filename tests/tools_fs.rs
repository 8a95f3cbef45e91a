//! Remote read / write / edit: content and encodings, each error (not found, not a file,
//! denied, too large), atomic replacement, symlinks out of the root, non-UTF-8 names.

#![cfg(unix)]

mod tools_support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clawmatrix::error::ErrorCode;
use clawmatrix::tools::fs::{self, Encoding, Replacement};
use clawmatrix::tools::paths::Root;
use tools_support::TempDir;

const MAX: usize = 1 << 20;

fn setup() -> (TempDir, Root) {
    let tmp = TempDir::new("fs");
    std::fs::create_dir(tmp.join("root")).unwrap();
    std::fs::create_dir(tmp.join("outside")).unwrap();
    let root = Root::open(tmp.join("root")).unwrap();
    (tmp, root)
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn rep(old: &str, new: &str) -> Replacement {
    Replacement {
        old_text: old.into(),
        new_text: new.into(),
    }
}

#[test]
fn read_returns_text_as_is_and_binary_as_base64() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("t.txt"), "héllo\n").unwrap();
    std::fs::write(root.path().join("b.bin"), [0xff, 0xfe, 0x00]).unwrap();
    let r = fs::read(&root, "t.txt", MAX).unwrap();
    assert_eq!(
        (r.content.as_str(), r.encoding, r.size),
        ("héllo\n", Encoding::Utf8, 7)
    );
    let r = fs::read(&root, "b.bin", MAX).unwrap();
    assert_eq!(
        (r.content.as_str(), r.encoding, r.size),
        ("//4A", Encoding::Base64, 3)
    );
}

#[test]
fn read_errors_are_clear() {
    let (_tmp, root) = setup();
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join("big.txt"), "x".repeat(2000)).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.path().join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());

    let rows: &[(&str, ErrorCode, &str)] = &[
        (
            "missing.txt",
            ErrorCode::NotFound,
            "\"missing.txt\": not found",
        ),
        (
            "d",
            ErrorCode::NotAFile,
            "\"d\" is a directory, not a regular file",
        ),
        // A FIFO would block a plain open forever.
        ("fifo", ErrorCode::NotAFile, "\"fifo\" is a special file"),
        (
            "big.txt",
            ErrorCode::TooLarge,
            "\"big.txt\" is 2000 bytes, over the 1024-byte limit",
        ),
        (
            "/etc/passwd",
            ErrorCode::Denied,
            "outside the filesystem root",
        ),
    ];
    for (path, code, msg) in rows {
        let err = fs::read(&root, path, 1024).unwrap_err();
        assert_eq!(err.code, *code, "{path}: {}", err.message);
        assert!(err.message.contains(msg), "{path}: {}", err.message);
    }
}

#[test]
fn binary_files_must_fit_once_base64_encoded() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("b.bin"), vec![0xffu8; 900]).unwrap();
    let err = fs::read(&root, "b.bin", 1024).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(err.message.contains("1200 as base64"), "{}", err.message);
}

#[test]
fn write_creates_parents_and_leaves_no_temp_file() {
    let (_tmp, root) = setup();
    let r = fs::write(&root, "a/b/c.txt", b"hello", MAX).unwrap();
    assert!(r.created);
    assert_eq!(r.size, 5);
    assert_eq!(
        std::fs::read_to_string(root.path().join("a/b/c.txt")).unwrap(),
        "hello"
    );
    let r = fs::write(&root, "a/b/c.txt", b"", MAX).unwrap();
    assert!(!r.created, "replaced");
    assert_eq!(std::fs::read(root.path().join("a/b/c.txt")).unwrap(), b"");
    assert_eq!(dir_names(&root.path().join("a/b")), ["c.txt"]);
}

#[test]
fn write_keeps_the_permission_bits_of_the_file_it_replaces() {
    let (_tmp, root) = setup();
    let p = root.path().join("run.sh");
    std::fs::write(&p, "old").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o751)).unwrap();
    fs::write(&root, "run.sh", b"new", MAX).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o751);
}

#[test]
fn write_errors_are_clear_and_leave_the_original() {
    let (tmp, root) = setup();
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join("keep.txt"), "original").unwrap();
    std::fs::write(tmp.join("outside/target.txt"), "outside").unwrap();
    symlink(tmp.join("outside/target.txt"), root.path().join("out-link")).unwrap();
    symlink(
        tmp.join("outside/new.txt"),
        root.path().join("out-dangling"),
    )
    .unwrap();

    let err = fs::write(&root, "keep.txt", &[b'x'; 2000], 1024).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(
        err.message.contains("2000 bytes, over the 1024-byte limit"),
        "{}",
        err.message
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("keep.txt")).unwrap(),
        "original"
    );

    let err = fs::write(&root, "d", b"x", MAX).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotAFile);

    for link in ["out-link", "out-dangling"] {
        let err = fs::write(&root, link, b"pwned", MAX).unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied, "{link}: {}", err.message);
    }
    assert_eq!(
        std::fs::read_to_string(tmp.join("outside/target.txt")).unwrap(),
        "outside"
    );
    assert!(!tmp.join("outside/new.txt").exists());
    assert_eq!(dir_names(&tmp.join("outside")), ["target.txt"]);
}

#[test]
fn write_through_a_symlink_inside_the_root_replaces_the_target_not_the_link() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("real.txt"), "old").unwrap();
    symlink("real.txt", root.path().join("alias.txt")).unwrap();
    fs::write(&root, "alias.txt", b"new", MAX).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.path().join("real.txt")).unwrap(),
        "new"
    );
    let meta = std::fs::symlink_metadata(root.path().join("alias.txt")).unwrap();
    assert!(meta.file_type().is_symlink(), "the link is still a link");
}

#[test]
fn concurrent_readers_see_the_old_or_the_new_file_never_a_mix() {
    let (_tmp, root) = setup();
    let a = "a".repeat(256 * 1024);
    let b = "b".repeat(256 * 1024);
    std::fs::write(root.path().join("f.txt"), &a).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let path = root.path().join("f.txt");
    let reader = {
        let stop = Arc::clone(&stop);
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = std::fs::read_to_string(&path).unwrap();
                assert!(got == a || got == b, "torn read of {} bytes", got.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..30 {
        let content = if i % 2 == 0 { &b } else { &a };
        fs::write(&root, "f.txt", content.as_bytes(), MAX).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(dir_names(root.path()), ["f.txt"], "no temp file left");
}

#[test]
fn edit_replaces_exact_text_once() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("m.rs"), "fn a() {}\nfn b() {}\n").unwrap();
    let r = fs::edit(&root, "m.rs", &[rep("fn b()", "fn c()")], false, MAX).unwrap();
    assert_eq!(r.replacements, 1);
    assert_eq!(
        std::fs::read_to_string(root.path().join("m.rs")).unwrap(),
        "fn a() {}\nfn c() {}\n"
    );
    assert_eq!(dir_names(root.path()), ["m.rs"]);
}

#[test]
fn edit_errors_say_what_is_wrong() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("t.txt"), "x x x y").unwrap();
    std::fs::write(root.path().join("b.bin"), [0xffu8, 0x00]).unwrap();
    let rows: Vec<(&str, Vec<Replacement>, ErrorCode, &str)> = vec![
        (
            "t.txt",
            vec![rep("zz", "q")],
            ErrorCode::InvalidArgument,
            "oldText was not found in \"t.txt\"",
        ),
        (
            "t.txt",
            vec![rep("x", "q")],
            ErrorCode::InvalidArgument,
            "oldText occurs 3 times in \"t.txt\"",
        ),
        (
            "t.txt",
            vec![rep("x x x", "q"), rep("x y", "r")],
            ErrorCode::InvalidArgument,
            "replacements overlap",
        ),
        (
            "t.txt",
            vec![rep("", "q")],
            ErrorCode::InvalidArgument,
            "oldText #1 is empty",
        ),
        (
            "t.txt",
            vec![],
            ErrorCode::InvalidArgument,
            "no replacement given",
        ),
        (
            "b.bin",
            vec![rep("a", "b")],
            ErrorCode::InvalidArgument,
            "is not UTF-8 text",
        ),
        (
            "missing",
            vec![rep("a", "b")],
            ErrorCode::NotFound,
            "not found",
        ),
    ];
    for (path, reps, code, msg) in rows {
        let err = fs::edit(&root, path, &reps, false, MAX).unwrap_err();
        assert_eq!(err.code, code, "{msg}: {}", err.message);
        assert!(err.message.contains(msg), "{msg}: {}", err.message);
    }
    assert_eq!(
        std::fs::read_to_string(root.path().join("t.txt")).unwrap(),
        "x x x y"
    );
}

#[test]
fn edit_with_replace_all_and_several_edits() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("t.txt"), "x x x y").unwrap();
    let r = fs::edit(&root, "t.txt", &[rep("x", "ab")], true, MAX).unwrap();
    assert_eq!(r.replacements, 3);
    assert_eq!(
        std::fs::read_to_string(root.path().join("t.txt")).unwrap(),
        "ab ab ab y"
    );
    // Several edits are matched against the original, not against each other's output.
    let r = fs::edit(
        &root,
        "t.txt",
        &[rep("y", "ab"), rep("ab ab ab", "z")],
        false,
        MAX,
    );
    assert_eq!(r.unwrap().replacements, 2);
    assert_eq!(
        std::fs::read_to_string(root.path().join("t.txt")).unwrap(),
        "z ab"
    );
}

#[test]
fn edit_refuses_a_result_over_the_size_cap() {
    let (_tmp, root) = setup();
    std::fs::write(root.path().join("t.txt"), "x").unwrap();
    let err = fs::edit(&root, "t.txt", &[rep("x", &"y".repeat(2000))], false, 1024).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(
        err.message.contains("would be 2000 bytes"),
        "{}",
        err.message
    );
}

#[test]
fn files_under_non_utf8_names_can_be_written_and_read() {
    let (_tmp, root) = setup();
    let name = OsStr::from_bytes(b"d\xff\xfe");
    std::fs::create_dir(root.path().join(name)).unwrap();
    symlink(name, root.path().join("alias")).unwrap();
    fs::write(&root, "alias/f.txt", b"ok", MAX).unwrap();
    assert_eq!(
        std::fs::read(root.path().join(name).join("f.txt")).unwrap(),
        b"ok"
    );
    assert_eq!(fs::read(&root, "alias/f.txt", MAX).unwrap().content, "ok");
}

//! The allocator: mimalloc, tuned for a library that lives inside a Node process.
//!
//! Why not glibc's malloc: a handoff stream allocates each chunk's frame, event and step on one
//! thread (the link reader, the host bridge) and frees it on another (the node actor, the tool
//! caller). glibc returns a chunk freed on a foreign thread to the arena it came from under that
//! arena's lock, so at 50k chunks/s the allocating and the freeing thread contended on it: 122k
//! futex calls in a 6 s `cargo bench --bench handoff` run, against about 300 with mimalloc, whose
//! cross-thread frees are a lock-free push onto the owning page. Node CPU in that run went from
//! 0.96-1.15 to 0.82-0.84 cores (three alternating runs each, same build otherwise).
//!
//! Two settings make it fit a dlopen()ed addon:
//! - `local_dynamic_tls` (Cargo feature): the addon is loaded with dlopen(), and OpenClaw can load
//!   a second copy on reload; the initial-exec TLS model would take static TLS space that a late
//!   dlopen() may not find.
//! - arenas are committed on demand: mimalloc's default on Linux commits each 1 GiB arena
//!   eagerly, which took an idle node's RSS from 7.5 MiB to 26 MiB. The option has to be in place
//!   before mimalloc's first allocation, which happens before any Rust code of ours runs, so it is
//!   a compile-time default (`-DMI_DEFAULT_ARENA_EAGER_COMMIT=0` in `.cargo/config.toml`);
//!   setting it at run time is too late for the first arena. [`arena_eager_commit`] reads it back
//!   and a test checks the build picked the define up.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mi_option_e` (v3 and v2 alike: the fifth
/// entry). libmimalloc-sys does not export this constant.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// The arena eager-commit option as this copy of the library was built with it (0 = on demand).
pub fn arena_eager_commit() -> i64 {
    // SAFETY: mi_option_get only reads an option value; any option id is accepted.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arenas_are_committed_on_demand() {
        assert_eq!(
            arena_eager_commit(),
            0,
            "mimalloc was built without -DMI_DEFAULT_ARENA_EAGER_COMMIT=0 (.cargo/config.toml); \
             a CFLAGS set in the environment replaces it"
        );
    }

    #[test]
    fn memory_freed_on_another_thread_is_reusable() {
        // The pattern the allocator was chosen for: allocate here, free there, many times.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
        let freer = std::thread::spawn(move || {
            let mut n = 0usize;
            while let Ok(v) = rx.recv() {
                n += v.len();
            }
            n
        });
        for i in 0..10_000usize {
            tx.send(vec![(i % 251) as u8; 1 + i % 4096]).unwrap();
        }
        drop(tx);
        let total: usize = (0..10_000usize).map(|i| 1 + i % 4096).sum();
        assert_eq!(freer.join().unwrap(), total);
    }
}

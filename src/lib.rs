//! clawmatrix: links several OpenClaw gateways into one decentralized mesh.
//!
//! The crate is a napi-rs native addon loaded by a thin TypeScript shim (`js/`), and a plain
//! Rust library (`rlib`) that the integration tests and benchmarks drive directly.
//!
//! # Layout
//!
//! - [`alloc`]: the global allocator (mimalloc) and why.
//! - [`config`]: the plugin configuration (`plugins.entries.clawmatrix.config`) with its
//!   documented defaults, validated once into typed structs; errors name the field path.
//! - [`error`]: typed errors with stable string codes (`err.code` in JS).
//! - [`proto`]: wire frames, the codec with its size limits, and the SPAKE2 handshake. Sans-IO.
//! - [`mesh`]: the sans-IO mesh core: links and heartbeats, gossip and routes, relay (TTL and
//!   dedup). Fed `handle_*(now, input)` calls; never reads the clock or the network.
//! - [`node`]: the I/O shell: the node actor that owns the core, sockets and timers.
//! - [`status`]: the status/peers report shapes shared by the binding and the CLI.
//! - `binding`: the only `#[napi]` code (the handle class and its plain-data objects).

pub mod alloc;
pub mod config;
pub mod error;
pub mod mesh;
pub mod node;
pub mod proto;
pub mod proxy;
pub mod status;
pub mod tools;

pub mod binding;

//! clawmatrix: links several OpenClaw gateways into one decentralized mesh.
//!
//! The crate is a napi-rs native addon loaded by a thin TypeScript shim (`js/`), and a plain
//! Rust library (`rlib`) that the integration tests and benchmarks drive directly.
//!
//! # Layout
//!
//! - [`access`]: per-caller access rules (`access`) the serving node checks before it runs a
//!   tool, a model request or an agent.
//! - [`alloc`]: the global allocator (mimalloc) and why.
//! - [`config`]: the plugin configuration (`plugins.entries.clawmatrix.config`) with its
//!   documented defaults, validated once into typed structs; errors name the field path.
//! - [`error`]: typed errors with stable string codes (`err.code` in JS).
//! - [`proto`]: wire frames, the codec with its size limits, and the SPAKE2 handshake. Sans-IO.
//! - [`mesh`]: the sans-IO mesh core: links and heartbeats, gossip and routes, relay (TTL and
//!   dedup). Fed `handle_*(now, input)` calls; never reads the clock or the network.
//! - [`node`]: the I/O shell (runtime): the actor that owns the core, links, WebSocket framing,
//!   writer queues, listener, dialers, TLS. Knows nothing of the features.
//! - [`rpc`]: the narrow mesh API the features are written against: calls and streams to a
//!   node, route resolution, serving a method, the mesh snapshot.
//! - [`handoff`]: `agent.handoff` / `agent.send`, both sides (`cluster_handoff`, `cluster_send`).
//! - [`tools`]: the agent tools' catalog, the serving side of remote tools (policy, executors,
//!   audit) and their calling side ([`tools::remote`]).
//! - [`proxy`]: the local OpenAI-compatible model proxy and the serving side of shared models.
//! - [`host`]: requests from the core to the OpenClaw host (pulled by the shim); [`events`]:
//!   the log/event queue the shim drains; [`wake`]: coalesced cross-thread wakes; [`tls`]:
//!   rustls configs (the mesh listener and dialers, the proxy's upstream client).
//! - [`app`]: the composition root: [`app::Node`] (start = bind, build services, spawn; stop;
//!   status assembly).
//! - [`status`]: the status/peers report shapes shared by the binding and the CLI.
//! - `binding`: the only `#[napi]` code (the handle class and its plain-data objects).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod alloc;
pub mod app;
pub mod config;
pub mod error;
pub mod events;
#[cfg(unix)]
pub mod handoff;
pub mod host;
pub mod identity;
pub mod mesh;
pub mod node;
pub mod proto;
pub mod proxy;
pub mod rpc;
pub mod status;
pub mod tls;
pub mod tools;
pub mod wake;

pub mod binding;

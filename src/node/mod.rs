//! The I/O shell: the runtime that moves mesh frames between sockets and the sans-IO core.
//! It knows nothing of the features: they reach it only through [`crate::rpc`] (the actor
//! implements [`crate::rpc::Port`]), and the composition root ([`crate::app`]) wires the two.
//!
//! # Layout
//! - [`actor`]: the task that owns the sans-IO [`crate::mesh::Mesh`] (links, routes, calls,
//!   snapshot) and runs served calls as tasks.
//! - [`supervisor`]: the actor's failures (a panic) and its bounded restarts, for status.
//! - [`link`]: one task per WebSocket: handshake, then the pump between socket and actor;
//!   [`queue`] is its writer queue (which also carries the actor's close request); [`ws`] is
//!   the WebSocket framing.
//! - [`listener`]: the mesh listener socket (optional TLS), spawning inbound link tasks;
//!   [`admission`] limits unauthenticated connections (globally, per source) and keeps the
//!   hostile-input counters.
//! - [`dialer`] + [`backoff`]: one task per configured peer, reconnecting with backoff (TLS
//!   configs come from [`crate::tls`], shared with the proxy's upstream client).
//!
//! Edges into the actor await (a link reader that waits just stops reading); edges out of it
//! never await, so a slow peer can neither stall the actor nor other links.

pub mod actor;
pub mod admission;
pub mod backoff;
pub mod dialer;
pub mod link;
pub mod listener;
pub(crate) mod queue;
pub mod supervisor;
pub mod ws;

pub(crate) use actor::ActorHandle;

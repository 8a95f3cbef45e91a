//! The agent tools: their public definitions ([`catalog`]) and argument validation.
//!
//! The remote executors (exec, read, write, edit) and their policy live here too as they are
//! built; the shim registers whatever [`catalog::TOOLS`] lists and forwards calls unchanged.

pub mod catalog;

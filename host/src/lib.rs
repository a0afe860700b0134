//! Granary: a silo that runs sandboxed, stateful WebAssembly grains (virtual actors).
//!
//! A grain is a wasm component of the `granary:grain` world (see `wit/`), addressed by a
//! [`GrainId`]. The silo activates a grain on its first message, runs one turn at a time
//! per activation, commits each successful turn's effects atomically and durably before
//! replying, and drains cleanly on SIGTERM.
//!
//! # Layout
//!
//! - [`grain_id`]: `GrainId {kind, key}` and name validation.
//! - [`config`]: defaults, TOML file, `GRANARY_*` environment overrides.
//! - [`runtime`]: the wasmtime engine, kinds (components) and the grain host interfaces.
//! - [`catalog`]: the activation directory; placement, LRU eviction, overload refusal.
//! - [`activation`]: one grain's turn loop; commit-then-reply, discard-on-failure.
//! - [`message`]: mailbox messages, call chains and `CallError`.
//! - [`storage`]: the `Storage` trait and the sled engine with group commit.
//! - [`outbox`]: delivery of committed one-way sends, exactly once in effect.
//! - [`timers`]: volatile per-activation timers.
//! - [`reminders`]: durable reminders, their schedules and the reminder service.
//! - [`drain`]: the silo lifecycle and the shutdown sequence.
//! - [`gateway`]: the HTTP API (axum).
//! - [`metrics`]: Prometheus metrics.
//! - [`silo`]: wiring, and the entry point for calls.
//! - [`cli`]: the `granary` command line.
//! - [`scaffold`]: `granary new`, a grain crate that builds and runs as is.
//! - [`dev`]: `granary dev`, build, serve and redeploy a grain crate on every change.

pub mod activation;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dev;
pub mod drain;
pub mod gateway;
pub mod grain_id;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod reminders;
pub mod runtime;
pub mod scaffold;
pub mod silo;
pub mod storage;
pub mod timers;

pub use config::Config;
pub use grain_id::GrainId;
pub use message::CallError;
pub use silo::{RunningSilo, Silo};

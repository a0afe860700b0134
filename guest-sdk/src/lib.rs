//! Write Granary grains in Rust.
//!
//! A grain is a virtual actor: addressed by a [`GrainId`] (`kind/key`), activated by the silo
//! on its first message, running one turn at a time, with its state persisted by the silo.
//! With this crate a grain is a struct that is `Serialize + Deserialize + Default` and an
//! `impl` block marked [`#[grain]`](grain). You never touch WIT, bytes or bindings.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use granary_sdk::{grain, Ctx, DeactivationReason, GrainId, ReminderTick};
//! use serde::{Deserialize, Serialize};
//!
//! /// The grain's state: persisted as JSON after every successful `&mut self` method.
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     value: u64,
//! }
//!
//! #[derive(Deserialize)]
//! pub struct CopyArgs {
//!     to: String,
//! }
//!
//! #[grain]
//! impl Counter {
//!     /// Adds `by` (1 when the payload is empty) and returns the new value.
//!     pub fn increment(&mut self, by: Option<u64>) -> u64 {
//!         self.value += by.unwrap_or(1);
//!         self.value
//!     }
//!
//!     /// `&self`: never writes state.
//!     pub fn get(&self) -> u64 {
//!         self.value
//!     }
//!
//!     /// An `Err` fails the turn: nothing it staged is committed, the caller gets the text.
//!     pub fn reset(&mut self, ctx: &mut Ctx) -> Result<u64, String> {
//!         if ctx.cancelled() {
//!             return Err("the silo is draining".into());
//!         }
//!         self.value = 0;
//!         ctx.info("reset");
//!         Ok(0)
//!     }
//!
//!     /// Calls another grain and waits for its reply.
//!     pub fn copy_to(&mut self, ctx: &mut Ctx, args: CopyArgs) -> Result<u64, String> {
//!         let target = GrainId::new("counter", args.to);
//!         let _old: u64 = ctx.call(&target, "get", &()).map_err(|e| e.to_string())?;
//!         ctx.send(&target, "increment", &self.value).map_err(|e| e.to_string())?;
//!         Ok(self.value)
//!     }
//!
//!     /// Not `pub`: a helper, not a message.
//!     fn double(&self) -> u64 {
//!         self.value * 2
//!     }
//!
//!     // Hooks, recognised by name; all optional.
//!     fn on_activate(&mut self, ctx: &mut Ctx) -> Result<(), String> {
//!         ctx.register_reminder("tick", Duration::from_secs(60), Duration::from_secs(60))
//!     }
//!
//!     fn on_deactivate(&mut self, ctx: &mut Ctx, reason: DeactivationReason) {
//!         ctx.info(format!("deactivating ({reason:?}) at {}", self.double()));
//!     }
//!
//!     fn on_timer(&mut self, _ctx: &mut Ctx, _name: &str) {}
//!
//!     fn on_reminder(&mut self, _ctx: &mut Ctx, _name: &str, tick: ReminderTick) {
//!         self.value += 1 + u64::from(tick.missed);
//!     }
//! }
//! ```
//!
//! Then `granary call counter/alice increment 5` answers `5`, and
//! `granary call counter/alice get` answers `5` too.
//!
//! # Messages
//!
//! Every `pub fn` of the `#[grain]` impl is a message whose name is the function's name
//! (`increment`). It takes:
//! - `&self` or `&mut self`;
//! - optionally `ctx: &mut Ctx` (recognised by its type; any name, any position);
//! - at most one more argument of any `Deserialize` type, decoded from the JSON payload. An
//!   empty payload decodes as JSON `null`, so an `Option<T>` argument can be left out. Put
//!   several values in a struct. A method without an argument accepts an empty payload or
//!   `null`.
//!
//! It returns any `T: Serialize` (the JSON reply; `()` is `null`) or `Result<T, E>` with
//! `E: Display` (a type whose path ends in `Result`, so `anyhow::Result<T>` works too).
//!
//! The silo sees these outcomes:
//!
//! | what happened | `handle` returns | over HTTP |
//! | --- | --- | --- |
//! | no `pub fn` of that name | `unknown-method(name)` | 404 |
//! | the payload does not decode | `bad-payload(reason)` | 400 |
//! | the method returned `Err(e)` | `app(e.to_string())` | 422 |
//! | the state could not be written | `app(reason)` | 422 |
//! | the method panicked | a trap | 500 |
//!
//! After a `&mut self` method succeeds the SDK serializes the struct as JSON and stages it
//! as the grain's state; the silo commits it with the turn. `&self` methods never write. A
//! failed turn commits nothing, and the silo discards the instance, so the next message
//! starts again from the committed state. Functions that are not `pub` (including
//! `pub(crate)`) are left alone, as helpers.
//!
//! # Hooks
//!
//! Recognised by name in the same impl, whatever their visibility; never messages. `ctx` is
//! optional in each; each may return `()` or `Result<(), E: Display>`; after a successful
//! `&mut self` hook the state is written as after a method.
//!
//! - `on_activate(&mut self, ctx: &mut Ctx)`: after the state is loaded (or defaulted for a
//!   new grain). An `Err` fails the activation.
//! - `on_deactivate(&mut self, ctx: &mut Ctx, reason: DeactivationReason)`: a last chance
//!   to stage state before the activation ends.
//! - `on_timer(&mut self, ctx: &mut Ctx, name: &str)`: a timer registered with
//!   [`Ctx::register_timer`] fired.
//! - `on_reminder(&mut self, ctx: &mut Ctx, name: &str, tick: ReminderTick)`: a reminder
//!   registered with [`Ctx::register_reminder`] (or its siblings) fired.
//!
//! A grain without `on_timer` or `on_reminder` ignores ticks.
//!
//! # State
//!
//! The state is the struct itself, stored as JSON. A new grain starts from `Default`; a
//! stored state that no longer decodes fails the activation with a clear message, so add new
//! fields with `#[serde(default)]`. [`Ctx::clear_state`] removes the stored state.
//!
//! # Building
//!
//! A grain crate is a `cdylib` built for `wasm32-wasip2`; the workspace defines a size- and
//! speed-tuned profile for it:
//!
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest
//! ```
//!
//! The result, `target/wasm32-wasip2/guest/<name>.wasm`, is a component whose file name is
//! the grain's kind. In this repository `cargo xtask build` builds every example.
//!
//! A crate holds exactly one `#[grain]` impl: the macro emits the component's exports, and
//! a second impl fails to compile for `wasm32` with "symbol `activate` is already defined".
//! On other targets no exports are emitted, so grain crates also build natively (for
//! `cargo clippy` and tests); there any call into [`Ctx`] panics, because no silo is there
//! to answer.

#![deny(missing_docs)]

// Lets the `#[grain]` expansion, which names `::granary_sdk`, work inside this crate's tests.
extern crate self as granary_sdk;

#[doc(hidden)]
pub mod bindings;
mod ctx;
mod host;
mod runtime;
mod types;

#[cfg(test)]
mod tests;

pub use ctx::Ctx;
/// Turns an inherent `impl` block into a grain; see the [crate documentation](crate) for the
/// rules, and [the messages section](crate#messages) in particular.
///
/// ```no_run
/// use granary_sdk::{Ctx, grain};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Echo {
///     calls: u64,
/// }
///
/// #[grain]
/// impl Echo {
///     /// The message `echo`: counts the call and replies with its argument.
///     pub fn echo(&mut self, ctx: &mut Ctx, text: String) -> String {
///         self.calls += 1;
///         ctx.info(format!("echo #{}", self.calls));
///         text
///     }
/// }
/// ```
///
/// Misuse is a compile error pointing at the mistake: `#[grain]` on anything but an inherent
/// impl, a generic impl, a `pub fn` that is `async`, `unsafe` or generic, takes no receiver
/// or `self` by value, takes `&Ctx` instead of `&mut Ctx`, takes a borrowed payload type, or
/// takes two payload arguments; and a hook with the wrong inputs or return type.
pub use granary_sdk_macros::grain;
pub use types::{
    CallError, DeactivationReason, GrainId, LogLevel, MissedPolicy, ReminderInfo, ReminderTick,
    Schedule,
};

/// Used by the `#[grain]` expansion; not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{
        Export, Grain, GrainError, Handled, decode_arg, hook_fallible, no_arg, reply,
        reply_fallible, unknown_method,
    };
}

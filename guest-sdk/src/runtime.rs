//! The runtime behind `#[grain]`: the activation's instance, turn dispatch and persistence.
//!
//! Not public API: the `#[grain]` macro expands to code that uses these items, and their
//! shape may change in any release.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Display;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings;
use crate::ctx::Ctx;
use crate::host::{Host, WitHost};
use crate::types::{
    DeactivationReason, ReminderTick, deactivation_reason_from_wit, reminder_tick_from_wit,
};

pub use crate::bindings::GrainError;

/// A grain type, implemented by `#[grain]` for the struct of the annotated impl.
///
/// The `hook_*` methods return whether the state must be persisted (the hook exists and takes
/// `&mut self`); the defaults stand for a hook the grain does not define.
pub trait Grain: Serialize + DeserializeOwned + Default + 'static {
    /// Runs the message `method` with the JSON `payload`.
    fn dispatch(
        &mut self,
        ctx: &mut Ctx,
        method: &str,
        payload: &[u8],
    ) -> Result<Handled, GrainError>;

    /// Runs `on_activate`.
    fn hook_activate(&mut self, ctx: &mut Ctx) -> Result<bool, String> {
        let _ = ctx;
        Ok(false)
    }

    /// Runs `on_deactivate`.
    fn hook_deactivate(
        &mut self,
        ctx: &mut Ctx,
        reason: DeactivationReason,
    ) -> Result<bool, String> {
        let _ = (ctx, reason);
        Ok(false)
    }

    /// Runs `on_timer`.
    fn hook_timer(&mut self, ctx: &mut Ctx, name: &str) -> Result<bool, String> {
        let _ = (ctx, name);
        Ok(false)
    }

    /// Runs `on_reminder`.
    fn hook_reminder(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        tick: ReminderTick,
    ) -> Result<bool, String> {
        let _ = (ctx, name, tick);
        Ok(false)
    }
}

/// What a successful message produced.
pub struct Handled {
    /// The JSON reply.
    pub reply: Vec<u8>,
    /// Whether the method took `&mut self`, so the state must be written.
    pub persist: bool,
}

/// The component's exports for the grain type `G`; `#[grain]` passes it to `export!`.
pub struct Export<G>(PhantomData<G>);

impl<G: Grain> bindings::Guest for Export<G> {
    fn activate(state: Option<Vec<u8>>) -> Result<(), String> {
        activate::<G>(Box::new(WitHost), state)
    }

    fn handle(method: String, payload: Vec<u8>) -> Result<Vec<u8>, GrainError> {
        handle::<G>(Box::new(WitHost), &method, &payload)
    }

    fn on_timer(name: String) -> Result<(), String> {
        on_timer::<G>(Box::new(WitHost), &name)
    }

    fn on_reminder(name: String, tick: bindings::ReminderTick) -> Result<(), String> {
        on_reminder::<G>(Box::new(WitHost), &name, reminder_tick_from_wit(tick))
    }

    fn deactivate(reason: bindings::DeactivationReason) -> Result<(), String> {
        deactivate::<G>(Box::new(WitHost), deactivation_reason_from_wit(reason))
    }
}

thread_local! {
    /// The activation's grain: set by `activate`, taken out for each turn and put back.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn take<G: Grain>(export: &str) -> Box<G> {
    INSTANCE
        .with(|slot| slot.borrow_mut().take())
        .and_then(|grain| grain.downcast::<G>().ok())
        .unwrap_or_else(|| panic!("granary-sdk: `{export}` was called before `activate`"))
}

fn put<G: Grain>(grain: Box<G>) {
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(grain));
}

/// Ends a successful turn: resets the grain after `clear_state`, else writes it if `persist`.
fn finish<G: Grain>(grain: &mut G, ctx: &Ctx, persist: bool) -> Result<(), String> {
    if ctx.state_cleared() {
        *grain = G::default();
        return Ok(());
    }
    if !persist {
        return Ok(());
    }
    let bytes = serde_json::to_vec(grain)
        .map_err(|e| format!("cannot encode the grain's state as JSON: {e}"))?;
    ctx.host()
        .state_write(&bytes)
        .map_err(|e| format!("cannot write the grain's state: {e}"))
}

pub(crate) fn activate<G: Grain>(
    host: Box<dyn Host>,
    state: Option<Vec<u8>>,
) -> Result<(), String> {
    let mut grain = match state {
        Some(bytes) if !bytes.is_empty() => serde_json::from_slice::<G>(&bytes).map_err(|e| {
            format!(
                "cannot decode the stored state of `{}` as JSON: {e}",
                std::any::type_name::<G>()
            )
        })?,
        _ => G::default(),
    };
    let mut ctx = Ctx::new(host);
    let persist = grain.hook_activate(&mut ctx)?;
    finish(&mut grain, &ctx, persist)?;
    put(Box::new(grain));
    Ok(())
}

pub(crate) fn handle<G: Grain>(
    host: Box<dyn Host>,
    method: &str,
    payload: &[u8],
) -> Result<Vec<u8>, GrainError> {
    let mut grain = take::<G>("handle");
    let mut ctx = Ctx::new(host);
    let result = grain
        .dispatch(&mut ctx, method, payload)
        .and_then(|handled| {
            finish(&mut *grain, &ctx, handled.persist).map_err(GrainError::App)?;
            Ok(handled.reply)
        });
    put(grain);
    result
}

/// Runs one hook as a turn.
fn run_hook<G: Grain>(
    host: Box<dyn Host>,
    export: &str,
    hook: impl FnOnce(&mut G, &mut Ctx) -> Result<bool, String>,
) -> Result<(), String> {
    let mut grain = take::<G>(export);
    let mut ctx = Ctx::new(host);
    let result = hook(&mut grain, &mut ctx).and_then(|persist| finish(&mut *grain, &ctx, persist));
    put(grain);
    result
}

pub(crate) fn on_timer<G: Grain>(host: Box<dyn Host>, name: &str) -> Result<(), String> {
    run_hook::<G>(host, "on-timer", |grain, ctx| grain.hook_timer(ctx, name))
}

pub(crate) fn on_reminder<G: Grain>(
    host: Box<dyn Host>,
    name: &str,
    tick: ReminderTick,
) -> Result<(), String> {
    run_hook::<G>(host, "on-reminder", |grain, ctx| {
        grain.hook_reminder(ctx, name, tick)
    })
}

pub(crate) fn deactivate<G: Grain>(
    host: Box<dyn Host>,
    reason: DeactivationReason,
) -> Result<(), String> {
    run_hook::<G>(host, "deactivate", |grain, ctx| {
        grain.hook_deactivate(ctx, reason)
    })
}

fn is_blank(payload: &[u8]) -> bool {
    payload.iter().all(u8::is_ascii_whitespace)
}

/// Decodes a message's argument; an empty payload decodes as JSON `null`.
pub fn decode_arg<T: DeserializeOwned>(method: &str, payload: &[u8]) -> Result<T, GrainError> {
    let payload = if is_blank(payload) { b"null" } else { payload };
    serde_json::from_slice(payload)
        .map_err(|e| GrainError::BadPayload(format!("invalid argument for `{method}`: {e}")))
}

/// Checks the payload of a message without an argument: empty or JSON `null`.
pub fn no_arg(method: &str, payload: &[u8]) -> Result<(), GrainError> {
    if is_blank(payload) || serde_json::from_slice::<()>(payload).is_ok() {
        return Ok(());
    }
    Err(GrainError::BadPayload(format!(
        "`{method}` takes no argument: send an empty payload or `null`"
    )))
}

/// Encodes the value a message returned.
pub fn reply<T: Serialize>(out: T) -> Result<Vec<u8>, GrainError> {
    serde_json::to_vec(&out)
        .map_err(|e| GrainError::App(format!("cannot encode the reply as JSON: {e}")))
}

/// Encodes the `Ok` a message returned, or turns its `Err` into an application error.
pub fn reply_fallible<T: Serialize, E: Display>(out: Result<T, E>) -> Result<Vec<u8>, GrainError> {
    match out {
        Ok(value) => reply(value),
        Err(e) => Err(GrainError::App(e.to_string())),
    }
}

/// Turns the `Err` of a hook into the export's error text.
pub fn hook_fallible<E: Display>(out: Result<(), E>) -> Result<(), String> {
    out.map_err(|e| e.to_string())
}

/// The error for a method the grain does not have.
pub fn unknown_method(method: &str) -> GrainError {
    GrainError::UnknownMethod(method.to_owned())
}

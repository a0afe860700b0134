//! [`Ctx`]: what a grain's methods and hooks can ask of the silo during a turn.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host::Host;
use crate::types::{CallError, GrainId, LogLevel, MissedPolicy, ReminderInfo, Schedule, millis};

/// The grain's view of the silo during one turn.
///
/// A method or hook receives it by declaring a parameter of type `&mut Ctx` (any name, any
/// position after the receiver). Everything a turn stages through it — reminder changes,
/// one-way [`send`](Ctx::send)s, [`clear_state`](Ctx::clear_state) — is committed by the silo
/// together with the grain's state when the turn succeeds, and discarded when it fails.
/// Timers are volatile and belong to the activation.
///
/// ```no_run
/// use granary_sdk::{grain, Ctx, GrainId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Greeter {
///     greeted: u64,
/// }
///
/// #[grain]
/// impl Greeter {
///     /// Greets `name` and tells the `audit/log` grain about it.
///     pub fn greet(&mut self, ctx: &mut Ctx, name: String) -> Result<String, String> {
///         self.greeted += 1;
///         ctx.info(format!("greeting {name}"));
///         ctx.send(&GrainId::new("audit", "log"), "record", &name)
///             .map_err(|e| e.to_string())?;
///         Ok(format!("hello {name}, from {}", ctx.self_id()))
///     }
/// }
/// ```
pub struct Ctx {
    host: Box<dyn Host>,
    state_cleared: bool,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("state_cleared", &self.state_cleared)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) fn new(host: Box<dyn Host>) -> Self {
        Ctx {
            host,
            state_cleared: false,
        }
    }

    /// Whether [`clear_state`](Ctx::clear_state) was called in this turn.
    pub(crate) fn state_cleared(&self) -> bool {
        self.state_cleared
    }

    pub(crate) fn host(&self) -> &dyn Host {
        &*self.host
    }

    /// This grain's identity.
    pub fn self_id(&self) -> GrainId {
        self.host.self_id()
    }

    /// The silo's wall-clock time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }

    /// The silo's wall-clock time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }

    /// True once the silo drains or the turn's deadline nears. Long work should poll it and
    /// return early; a turn that runs past its deadline is interrupted and fails.
    pub fn cancelled(&self) -> bool {
        self.host.cancelled()
    }

    /// Writes a line to the silo's log, tagged with this grain's id. (`println!` and
    /// `eprintln!` also reach the silo's log.)
    pub fn log(&self, level: LogLevel, message: impl AsRef<str>) {
        self.host.log(level, message.as_ref())
    }

    /// Logs at [`LogLevel::Debug`].
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Debug, message)
    }

    /// Logs at [`LogLevel::Info`].
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Info, message)
    }

    /// Logs at [`LogLevel::Warn`].
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Warn, message)
    }

    /// Logs at [`LogLevel::Error`].
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(LogLevel::Error, message)
    }

    /// Calls `method` on `target` with `arg` encoded as JSON, waits for the reply and decodes
    /// it as `R`.
    ///
    /// Pass `&()` for a method that takes no argument. Turns are not reentrant: a call that
    /// would come back to a grain already waiting in this call chain (including this one)
    /// fails at once with [`CallError::Cycle`]. A reply that does not decode as `R` is
    /// [`CallError::BadPayload`].
    pub fn call<R: DeserializeOwned>(
        &mut self,
        target: &GrainId,
        method: &str,
        arg: &impl Serialize,
    ) -> Result<R, CallError> {
        let payload = encode_arg(arg)?;
        let reply = self.host.call(target, method, &payload)?;
        let reply: &[u8] = if reply.is_empty() { b"null" } else { &reply };
        serde_json::from_slice(reply).map_err(|e| {
            CallError::BadPayload(format!(
                "cannot decode the reply of {target} `{method}`: {e}"
            ))
        })
    }

    /// Sends `method` with `arg` (encoded as JSON) to `target` without waiting for a reply.
    ///
    /// The message is staged: it is committed with this turn and delivered exactly once in
    /// effect after the commit. If the turn fails, nothing is sent.
    pub fn send(
        &mut self,
        target: &GrainId,
        method: &str,
        arg: &impl Serialize,
    ) -> Result<(), CallError> {
        let payload = encode_arg(arg)?;
        self.host.send(target, method, &payload)
    }

    /// Registers (or replaces) the volatile timer `name`: the `on_timer` hook runs first after
    /// `due`, then every `period` (`Duration::ZERO` means once). Timers end with the
    /// activation; use a reminder for anything that must survive it.
    pub fn register_timer(
        &mut self,
        name: &str,
        due: Duration,
        period: Duration,
    ) -> Result<(), String> {
        self.host.timer_register(name, millis(due), millis(period))
    }

    /// Cancels the timer `name`; cancelling an unknown timer does nothing.
    pub fn cancel_timer(&mut self, name: &str) {
        self.host.timer_cancel(name)
    }

    /// Registers (or replaces) the durable reminder `name`: the `on_reminder` hook runs first
    /// after `due`, then every `period`, across deactivations and silo restarts. Missed ticks
    /// fire once ([`MissedPolicy::FireOnce`]). Committed with the turn.
    pub fn register_reminder(
        &mut self,
        name: &str,
        due: Duration,
        period: Duration,
    ) -> Result<(), String> {
        self.register_reminder_with(
            name,
            Schedule::Every { due, period },
            MissedPolicy::FireOnce,
        )
    }

    /// Registers (or replaces) the durable reminder `name` on a cron schedule with seconds
    /// (`sec min hour day-of-month month day-of-week`, UTC), e.g. `"0 */5 * * * *"`.
    pub fn register_reminder_cron(&mut self, name: &str, expr: &str) -> Result<(), String> {
        self.register_reminder_with(
            name,
            Schedule::Cron(expr.to_owned()),
            MissedPolicy::FireOnce,
        )
    }

    /// Registers (or replaces) the durable reminder `name` with any schedule and missed-tick
    /// policy. Fails for a period below the silo's minimum, an invalid cron expression, or
    /// beyond the per-grain reminder quota.
    pub fn register_reminder_with(
        &mut self,
        name: &str,
        schedule: Schedule,
        missed: MissedPolicy,
    ) -> Result<(), String> {
        self.host.reminder_register(name, &schedule, missed)
    }

    /// Cancels the reminder `name` (committed with the turn); cancelling an unknown reminder
    /// does nothing.
    pub fn cancel_reminder(&mut self, name: &str) {
        self.host.reminder_cancel(name)
    }

    /// The grain's reminders, including the changes staged by this turn.
    pub fn reminders(&self) -> Vec<ReminderInfo> {
        self.host.reminder_list()
    }

    /// Stages the removal of the grain's stored state (committed with the turn).
    ///
    /// The SDK then does not write the state at the end of this turn, even from a `&mut self`
    /// method, and when the turn succeeds it resets the in-memory grain to `Default`, so the
    /// next message sees what a new activation would.
    pub fn clear_state(&mut self) {
        self.state_cleared = true;
        self.host.state_clear()
    }
}

fn encode_arg(arg: &impl Serialize) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(arg)
        .map_err(|e| CallError::BadPayload(format!("cannot encode the argument as JSON: {e}")))
}

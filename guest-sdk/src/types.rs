//! The SDK's own versions of the WIT types, plus plain conversions to and from the bindings.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bindings::granary::grain::types as wit;

/// The identity of a grain: its kind (the component's name) and a key within the kind.
///
/// Displayed as `kind/key`, the form the CLI and the HTTP gateway use.
///
/// ```
/// use granary_sdk::GrainId;
///
/// let id = GrainId::new("counter", "alice");
/// assert_eq!(id.to_string(), "counter/alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GrainId {
    /// The component's name, e.g. `counter`.
    pub kind: String,
    /// The grain's key within its kind, e.g. `alice`.
    pub key: String,
}

impl GrainId {
    /// The grain `key` of kind `kind`. The host checks the names when the id is used.
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Self {
        GrainId {
            kind: kind.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for GrainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// Why a [`Ctx::call`](crate::Ctx::call) or [`Ctx::send`](crate::Ctx::send) failed.
///
/// The `Display` text is meant for people and for error messages passed on to callers; the
/// [`Cycle`](CallError::Cycle) variant's text always contains the word "cycle".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No component of this kind is deployed; carries the kind.
    UnknownKind(String),
    /// The kind or key is not a valid name; carries the reason.
    BadId(String),
    /// The target has no such method; carries the method name.
    UnknownMethod(String),
    /// A payload could not be encoded or decoded; carries the reason. Returned by the target
    /// when it could not decode the argument, and by the SDK when it could not encode the
    /// argument or decode the reply.
    BadPayload(String),
    /// The target's method returned an application error; carries its message.
    App(String),
    /// The target trapped (a bug, or a resource limit); carries the incident id.
    Trapped(String),
    /// The call did not finish before its deadline.
    Deadline,
    /// The silo or the target's mailbox is full; retrying later can succeed.
    Overloaded,
    /// The silo is draining and takes no new work.
    Draining,
    /// The call would re-enter a grain already waiting in this call chain; carries the chain.
    Cycle(String),
    /// The payload is larger than the silo's cap; carries the cap in bytes.
    TooLarge(u64),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::UnknownKind(kind) => write!(f, "unknown grain kind `{kind}`"),
            CallError::BadId(reason) => write!(f, "bad grain id: {reason}"),
            CallError::UnknownMethod(method) => write!(f, "unknown method `{method}`"),
            CallError::BadPayload(reason) => write!(f, "bad payload: {reason}"),
            CallError::App(message) => write!(f, "the target refused: {message}"),
            CallError::Trapped(incident) => write!(f, "the target trapped (incident {incident})"),
            CallError::Deadline => write!(f, "the call missed its deadline"),
            CallError::Overloaded => write!(f, "overloaded; retry later"),
            CallError::Draining => write!(f, "the silo is draining"),
            CallError::Cycle(chain) => write!(f, "call cycle (turns are not reentrant): {chain}"),
            CallError::TooLarge(cap) => write!(f, "payload too large (the cap is {cap} bytes)"),
        }
    }
}

impl std::error::Error for CallError {}

/// Why an activation ends; passed to the `on_deactivate` hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeactivationReason {
    /// No message arrived for the silo's idle timeout.
    Idle,
    /// The silo needed room for other activations (least recently used goes first).
    Evicted,
    /// The silo is draining (shutting down).
    Drain,
    /// A new version of the grain's kind was deployed.
    Upgrade,
}

/// One firing of a durable reminder; passed to the `on_reminder` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderTick {
    /// When this tick was scheduled, in milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
    /// When it fired, in milliseconds since the Unix epoch.
    pub fired_ms: u64,
    /// How many periods were missed before this tick (0 when on time).
    pub missed: u32,
    /// A key unique to this tick (name and scheduled time), for idempotent effects.
    pub idempotency_key: String,
}

impl ReminderTick {
    /// When this tick was scheduled.
    pub fn scheduled(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.scheduled_ms)
    }

    /// When this tick fired.
    pub fn fired(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.fired_ms)
    }
}

/// When a durable reminder fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// First after `due`, then every `period` (at least the silo's minimum reminder period).
    Every {
        /// Time from registration to the first tick.
        due: Duration,
        /// Time between ticks.
        period: Duration,
    },
    /// A cron expression with seconds (`sec min hour day-of-month month day-of-week`), in UTC.
    Cron(String),
}

/// What to do with reminder ticks missed while the silo was down or the grain unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedPolicy {
    /// Fire once, reporting how many periods were missed (the default).
    #[default]
    FireOnce,
    /// Skip missed ticks and wait for the next period.
    Skip,
    /// Fire each missed tick, at most this many.
    CatchUp(u32),
}

/// A registered reminder as stored by the silo; see [`Ctx::reminders`](crate::Ctx::reminders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderInfo {
    /// The reminder's name, unique within the grain.
    pub name: String,
    /// When it fires.
    pub schedule: Schedule,
    /// What happens to missed ticks.
    pub missed: MissedPolicy,
    /// When it fires next, in milliseconds since the Unix epoch.
    pub next_due_ms: u64,
}

/// Severity of a log line written with [`Ctx::log`](crate::Ctx::log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the grain handled.
    Warn,
    /// Something failed.
    Error,
}

/// Milliseconds in `d`, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn grain_id_to_wit(id: &GrainId) -> wit::GrainId {
    wit::GrainId {
        kind: id.kind.clone(),
        key: id.key.clone(),
    }
}

pub(crate) fn grain_id_from_wit(id: wit::GrainId) -> GrainId {
    GrainId {
        kind: id.kind,
        key: id.key,
    }
}

pub(crate) fn call_error_from_wit(e: wit::CallError) -> CallError {
    match e {
        wit::CallError::UnknownKind(s) => CallError::UnknownKind(s),
        wit::CallError::BadId(s) => CallError::BadId(s),
        wit::CallError::UnknownMethod(s) => CallError::UnknownMethod(s),
        wit::CallError::BadPayload(s) => CallError::BadPayload(s),
        wit::CallError::App(s) => CallError::App(s),
        wit::CallError::Trapped(s) => CallError::Trapped(s),
        wit::CallError::Deadline => CallError::Deadline,
        wit::CallError::Overloaded => CallError::Overloaded,
        wit::CallError::Draining => CallError::Draining,
        wit::CallError::Cycle(s) => CallError::Cycle(s),
        wit::CallError::TooLarge(n) => CallError::TooLarge(n),
    }
}

pub(crate) fn deactivation_reason_from_wit(r: wit::DeactivationReason) -> DeactivationReason {
    match r {
        wit::DeactivationReason::Idle => DeactivationReason::Idle,
        wit::DeactivationReason::Evicted => DeactivationReason::Evicted,
        wit::DeactivationReason::Drain => DeactivationReason::Drain,
        wit::DeactivationReason::Upgrade => DeactivationReason::Upgrade,
    }
}

pub(crate) fn reminder_tick_from_wit(t: wit::ReminderTick) -> ReminderTick {
    ReminderTick {
        scheduled_ms: t.scheduled_ms,
        fired_ms: t.fired_ms,
        missed: t.missed,
        idempotency_key: t.idempotency_key,
    }
}

pub(crate) fn schedule_to_wit(s: &Schedule) -> wit::Schedule {
    match s {
        Schedule::Every { due, period } => wit::Schedule::Every(wit::EverySchedule {
            due_ms: millis(*due),
            period_ms: millis(*period),
        }),
        Schedule::Cron(expr) => wit::Schedule::Cron(expr.clone()),
    }
}

pub(crate) fn schedule_from_wit(s: wit::Schedule) -> Schedule {
    match s {
        wit::Schedule::Every(every) => Schedule::Every {
            due: Duration::from_millis(every.due_ms),
            period: Duration::from_millis(every.period_ms),
        },
        wit::Schedule::Cron(expr) => Schedule::Cron(expr),
    }
}

pub(crate) fn missed_policy_to_wit(m: MissedPolicy) -> wit::MissedPolicy {
    match m {
        MissedPolicy::FireOnce => wit::MissedPolicy::FireOnce,
        MissedPolicy::Skip => wit::MissedPolicy::Skip,
        MissedPolicy::CatchUp(n) => wit::MissedPolicy::CatchUp(n),
    }
}

pub(crate) fn missed_policy_from_wit(m: wit::MissedPolicy) -> MissedPolicy {
    match m {
        wit::MissedPolicy::FireOnce => MissedPolicy::FireOnce,
        wit::MissedPolicy::Skip => MissedPolicy::Skip,
        wit::MissedPolicy::CatchUp(n) => MissedPolicy::CatchUp(n),
    }
}

pub(crate) fn reminder_info_from_wit(r: wit::ReminderInfo) -> ReminderInfo {
    ReminderInfo {
        name: r.name,
        schedule: schedule_from_wit(r.schedule),
        missed: missed_policy_from_wit(r.missed),
        next_due_ms: r.next_due_ms,
    }
}

pub(crate) fn log_level_to_wit(l: LogLevel) -> wit::LogLevel {
    match l {
        LogLevel::Trace => wit::LogLevel::Trace,
        LogLevel::Debug => wit::LogLevel::Debug,
        LogLevel::Info => wit::LogLevel::Info,
        LogLevel::Warn => wit::LogLevel::Warn,
        LogLevel::Error => wit::LogLevel::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grain_id_displays_as_kind_slash_key() {
        assert_eq!(GrainId::new("ledger", "bob").to_string(), "ledger/bob");
    }

    #[test]
    fn cycle_error_mentions_cycle() {
        let e = CallError::Cycle("probe/a -> probe/a".into());
        assert!(e.to_string().contains("cycle"), "{e}");
        assert!(e.to_string().contains("probe/a -> probe/a"), "{e}");
    }

    #[test]
    fn millis_saturates() {
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}

//! The seam between [`Ctx`](crate::Ctx) and the silo: one trait, implemented by [`WitHost`]
//! with the component's imports, and by a fake in the unit tests.

use crate::bindings::granary::grain::{calls, context, reminders, state, timers};
use crate::types::{
    CallError, GrainId, LogLevel, MissedPolicy, ReminderInfo, Schedule, call_error_from_wit,
    grain_id_from_wit, grain_id_to_wit, log_level_to_wit, missed_policy_to_wit,
    reminder_info_from_wit, schedule_to_wit,
};

/// The host's services, one method per WIT import, in the SDK's own types.
pub(crate) trait Host {
    fn state_write(&self, bytes: &[u8]) -> Result<(), String>;
    fn state_clear(&self);
    fn timer_register(&self, name: &str, due_ms: u64, period_ms: u64) -> Result<(), String>;
    fn timer_cancel(&self, name: &str);
    fn reminder_register(
        &self,
        name: &str,
        schedule: &Schedule,
        missed: MissedPolicy,
    ) -> Result<(), String>;
    fn reminder_cancel(&self, name: &str);
    fn reminder_list(&self) -> Vec<ReminderInfo>;
    fn call(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<Vec<u8>, CallError>;
    fn send(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<(), CallError>;
    fn self_id(&self) -> GrainId;
    fn now_ms(&self) -> u64;
    fn cancelled(&self) -> bool;
    fn log(&self, level: LogLevel, message: &str);
}

/// The real host: the component's WIT imports. Calling it outside a silo panics.
pub(crate) struct WitHost;

impl Host for WitHost {
    fn state_write(&self, bytes: &[u8]) -> Result<(), String> {
        state::state_write(bytes)
    }

    fn state_clear(&self) {
        state::state_clear()
    }

    fn timer_register(&self, name: &str, due_ms: u64, period_ms: u64) -> Result<(), String> {
        timers::timer_register(name, due_ms, period_ms)
    }

    fn timer_cancel(&self, name: &str) {
        timers::timer_cancel(name)
    }

    fn reminder_register(
        &self,
        name: &str,
        schedule: &Schedule,
        missed: MissedPolicy,
    ) -> Result<(), String> {
        reminders::reminder_register(
            name,
            &schedule_to_wit(schedule),
            missed_policy_to_wit(missed),
        )
    }

    fn reminder_cancel(&self, name: &str) {
        reminders::reminder_cancel(name)
    }

    fn reminder_list(&self) -> Vec<ReminderInfo> {
        reminders::reminder_list()
            .into_iter()
            .map(reminder_info_from_wit)
            .collect()
    }

    fn call(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        calls::call(&grain_id_to_wit(target), method, payload).map_err(call_error_from_wit)
    }

    fn send(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<(), CallError> {
        calls::send(&grain_id_to_wit(target), method, payload).map_err(call_error_from_wit)
    }

    fn self_id(&self) -> GrainId {
        grain_id_from_wit(context::self_id())
    }

    fn now_ms(&self) -> u64 {
        context::now_ms()
    }

    fn cancelled(&self) -> bool {
        context::cancelled()
    }

    fn log(&self, level: LogLevel, message: &str) {
        context::log(log_level_to_wit(level), message)
    }
}

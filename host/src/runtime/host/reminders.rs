//! `granary:grain/reminders`: durable reminders, staged and committed with the turn.

use super::GrainHost;
use crate::runtime::bindings::granary::grain::reminders::Host;
use crate::runtime::bindings::types::{MissedPolicy, ReminderInfo, Schedule};

const NOT_YET: &str = "reminders are not supported by this silo version yet";

impl Host for GrainHost {
    fn reminder_register(
        &mut self,
        _name: String,
        _schedule: Schedule,
        _missed: MissedPolicy,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(Err(NOT_YET.into()))
    }

    fn reminder_cancel(&mut self, _name: String) -> wasmtime::Result<()> {
        Ok(())
    }

    fn reminder_list(&mut self) -> wasmtime::Result<Vec<ReminderInfo>> {
        Ok(Vec::new())
    }
}

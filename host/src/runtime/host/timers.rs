//! `granary:grain/timers`: registrations are staged and take effect when the turn commits.

use std::time::Duration;

use super::GrainHost;
use crate::runtime::bindings::granary::grain::timers::Host;
use crate::timers::TimerChange;

impl Host for GrainHost {
    fn timer_register(
        &mut self,
        name: String,
        due_ms: u64,
        period_ms: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.timers.check(&self.turn.timers, &name, period_ms) {
            return Ok(Err(e));
        }
        self.turn.timers.push(TimerChange::Register {
            name,
            due: Duration::from_millis(due_ms),
            period: (period_ms > 0).then(|| Duration::from_millis(period_ms)),
        });
        Ok(Ok(()))
    }

    fn timer_cancel(&mut self, name: String) -> wasmtime::Result<()> {
        self.turn.timers.push(TimerChange::Cancel(name));
        Ok(())
    }
}

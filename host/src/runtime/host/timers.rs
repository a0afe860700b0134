//! `granary:grain/timers`: volatile per-activation timers.

use super::GrainHost;
use crate::runtime::bindings::granary::grain::timers::Host;

const NOT_YET: &str = "timers are not supported by this silo version yet";

impl Host for GrainHost {
    fn timer_register(
        &mut self,
        _name: String,
        _due_ms: u64,
        _period_ms: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(Err(NOT_YET.into()))
    }

    fn timer_cancel(&mut self, _name: String) -> wasmtime::Result<()> {
        Ok(())
    }
}

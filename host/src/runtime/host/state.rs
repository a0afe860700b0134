//! `granary:grain/state`: state writes are staged in the turn and committed with it.

use super::GrainHost;
use crate::runtime::bindings::granary::grain::state::Host;
use crate::storage::StateChange;

impl Host for GrainHost {
    fn state_write(&mut self, bytes: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let cap = self.silo.config.max_state_bytes;
        if bytes.len() > cap {
            return Ok(Err(format!(
                "state of {} bytes exceeds the limit of {cap} bytes",
                bytes.len()
            )));
        }
        self.turn.state = Some(StateChange::Write(bytes));
        Ok(Ok(()))
    }

    fn state_clear(&mut self) -> wasmtime::Result<()> {
        self.turn.state = Some(StateChange::Clear);
        Ok(())
    }
}

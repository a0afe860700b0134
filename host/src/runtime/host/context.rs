//! `granary:grain/context`: identity, clock, cancellation and logging.

use std::time::{Duration, Instant, SystemTime};

use super::GrainHost;
use super::output::emit;
use crate::runtime::bindings::granary::grain::context::Host;
use crate::runtime::bindings::types::{GrainId, LogLevel};

/// `cancelled()` turns true this long before the turn's deadline, so a polling handler
/// can still return (and commit) in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

impl Host for GrainHost {
    fn self_id(&mut self) -> wasmtime::Result<GrainId> {
        Ok(GrainId {
            kind: self.id.kind.clone(),
            key: self.id.key.clone(),
        })
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(now_ms())
    }

    fn cancelled(&mut self) -> wasmtime::Result<bool> {
        let near_deadline = Instant::now() + DEADLINE_MARGIN >= self.turn.deadline;
        Ok(near_deadline || !self.silo.lifecycle.is_admitting())
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let grain = &self.id;
        emit(&self.log_budget, grain, &message, |message| match level {
            LogLevel::Trace => tracing::trace!(target: "grain", %grain, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "grain", %grain, "{message}"),
            LogLevel::Info => tracing::info!(target: "grain", %grain, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "grain", %grain, "{message}"),
            LogLevel::Error => tracing::error!(target: "grain", %grain, "{message}"),
        });
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

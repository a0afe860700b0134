//! Durable reminders: stored in sled with an index by next due time, fired across
//! restarts, each tick a turn of the grain (activating it if needed) whose next-due update
//! commits in the same batch as the turn's effects.
//!
//! The [`ReminderService`] keeps only a window of the near future in memory (at most
//! [`MAX_WINDOW`] entries, [`WINDOW`] ahead), so a million stored reminders cost disk, not
//! RAM. Ticks that fail for a transient reason (overloaded, activation failed, deadline)
//! are retried with exponential backoff and jitter, then recorded as failed and moved to
//! their next period.

mod record;
pub mod schedule;
mod service;

pub use record::{HISTORY_LEN, ReminderAdvance, ReminderChange, ReminderRecord, TickOutcome};
pub use schedule::{MissedPolicy, Schedule};
pub use service::{MAX_WINDOW, ReminderService, WINDOW};

/// Longest reminder (and timer) name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a reminder or timer name: it becomes part of a storage key.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(format!(
            "invalid name {name:?}: use 1..={MAX_NAME_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

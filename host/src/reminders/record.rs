//! What a silo stores of a reminder: its schedule, its next due time, and the outcomes of
//! its last ticks ("why didn't my reminder fire?").

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::schedule::{MissedPolicy, Schedule};

/// Outcomes kept per reminder.
pub const HISTORY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderRecord {
    pub name: String,
    pub schedule: Schedule,
    pub missed: MissedPolicy,
    pub next_due_ms: u64,
    pub history: VecDeque<TickOutcome>,
}

/// How one tick went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickOutcome {
    pub scheduled_ms: u64,
    pub fired_ms: u64,
    pub attempts: u32,
    /// `None` when the grain's `on-reminder` returned `ok`.
    pub error: Option<String>,
}

impl ReminderRecord {
    pub fn record(&mut self, outcome: TickOutcome) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(outcome);
    }
}

/// Moves a reminder to its next due time, if it is still due at `expected_due_ms` (a
/// concurrent re-registration or cancellation wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderAdvance {
    pub name: String,
    pub expected_due_ms: u64,
    pub next_due_ms: u64,
    pub outcome: TickOutcome,
}

/// A change a turn stages to its grain's reminders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReminderChange {
    Put(ReminderRecord),
    Delete(String),
}

//! `granary:grain/reminders`: registrations and cancellations are staged in the turn and
//! committed with it; a failed turn registers nothing.

use std::collections::VecDeque;

use super::GrainHost;
use super::context::now_ms;
use crate::reminders::{self, MissedPolicy, ReminderChange, ReminderRecord, Schedule};
use crate::runtime::bindings::granary::grain::reminders::Host;
use crate::runtime::bindings::types;

impl Host for GrainHost {
    fn reminder_register(
        &mut self,
        name: String,
        schedule: types::Schedule,
        missed: types::MissedPolicy,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.stage_reminder(name, schedule, missed))
    }

    fn reminder_cancel(&mut self, name: String) -> wasmtime::Result<()> {
        self.turn
            .reminders
            .insert(name.clone(), ReminderChange::Delete(name));
        Ok(())
    }

    fn reminder_list(&mut self) -> wasmtime::Result<Vec<types::ReminderInfo>> {
        Ok(self
            .reminders_with_staged()
            .unwrap_or_default()
            .iter()
            .map(info)
            .collect())
    }
}

impl GrainHost {
    fn stage_reminder(
        &mut self,
        name: String,
        schedule: types::Schedule,
        missed: types::MissedPolicy,
    ) -> Result<(), String> {
        reminders::validate_name(&name)?;
        let now = now_ms();
        let (schedule, first_due) = match schedule {
            types::Schedule::Every(e) => (
                Schedule::Every {
                    period_ms: e.period_ms,
                },
                now.saturating_add(e.due_ms),
            ),
            types::Schedule::Cron(expr) => {
                let s = Schedule::Cron(expr);
                let first = s.next_after(now, now);
                (s, first)
            }
        };
        schedule.validate(self.silo.config.min_reminder_period_ms)?;
        let existing = self
            .reminders_with_staged()
            .map_err(|e| format!("reading reminders: {e}"))?;
        let quota = self.silo.config.max_reminders_per_grain;
        if !existing.iter().any(|r| r.name == name) && existing.len() >= quota {
            return Err(format!(
                "at most {quota} reminders per grain; cancel one first"
            ));
        }
        let history = existing
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.history)
            .unwrap_or_else(VecDeque::new);
        let record = ReminderRecord {
            name: name.clone(),
            schedule,
            missed: policy(missed),
            next_due_ms: first_due,
            history,
        };
        self.turn
            .reminders
            .insert(name, ReminderChange::Put(record));
        Ok(())
    }

    /// Stored reminders with this turn's staged changes applied.
    fn reminders_with_staged(&self) -> Result<Vec<ReminderRecord>, crate::storage::StorageError> {
        let mut records = self.silo.storage.reminders_of(&self.id)?;
        for (name, change) in &self.turn.reminders {
            records.retain(|r| &r.name != name);
            if let ReminderChange::Put(record) = change {
                records.push(record.clone());
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

fn policy(missed: types::MissedPolicy) -> MissedPolicy {
    match missed {
        types::MissedPolicy::FireOnce => MissedPolicy::FireOnce,
        types::MissedPolicy::Skip => MissedPolicy::Skip,
        types::MissedPolicy::CatchUp(n) => MissedPolicy::CatchUp(n),
    }
}

fn info(record: &ReminderRecord) -> types::ReminderInfo {
    let schedule = match &record.schedule {
        Schedule::Every { period_ms } => types::Schedule::Every(types::EverySchedule {
            due_ms: 0,
            period_ms: *period_ms,
        }),
        Schedule::Cron(expr) => types::Schedule::Cron(expr.clone()),
    };
    let missed = match record.missed {
        MissedPolicy::FireOnce => types::MissedPolicy::FireOnce,
        MissedPolicy::Skip => types::MissedPolicy::Skip,
        MissedPolicy::CatchUp(n) => types::MissedPolicy::CatchUp(n),
    };
    types::ReminderInfo {
        name: record.name.clone(),
        schedule,
        missed,
        next_due_ms: record.next_due_ms,
    }
}

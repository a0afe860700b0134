//! The reminder service: one task that keeps the near future of the reminder index in
//! memory (a `BTreeSet` ordered by due time), sleeps until the first entry is due or an
//! earlier one arrives, and fires due reminders as turns of their grains.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::{ReminderAdvance, TickOutcome};
use crate::grain_id::GrainId;
use crate::message::CallError;
use crate::runtime::host::now_ms;
use crate::silo::Silo;
use crate::storage::DueReminder;

/// How far ahead the window reaches.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most reminders held in memory at once, whatever is stored.
pub const MAX_WINDOW: usize = 10_000;
/// Ticks fired at once.
const MAX_IN_FLIGHT: usize = 1024;
/// Attempts of a tick that fails for a transient reason before it is recorded as failed.
pub const MAX_ATTEMPTS: u32 = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Window {
    due: BTreeSet<DueReminder>,
    /// The window holds every stored reminder due at or before this time.
    horizon_ms: u64,
    /// Reminders being fired: a refill must not load them again.
    in_flight: HashSet<(GrainId, String)>,
}

#[derive(Default)]
pub struct ReminderService {
    window: Mutex<Window>,
    wake: Notify,
}

impl ReminderService {
    /// Entries held in memory (the test of the bound looks at this).
    pub fn window_len(&self) -> usize {
        self.lock().due.len()
    }

    /// Called after a commit registered or moved a reminder.
    pub fn scheduled(&self, due: DueReminder) {
        let mut w = self.lock();
        if due.due_ms <= w.horizon_ms
            && !w.in_flight.contains(&(due.grain.clone(), due.name.clone()))
        {
            let earliest = w.due.first().is_none_or(|first| due < *first);
            w.due.insert(due);
            trim(&mut w);
            drop(w);
            if earliest {
                self.wake.notify_one();
            }
        }
    }

    pub async fn run(silo: Arc<Silo>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            if let Err(e) = silo.reminders.refill_if_needed(&silo) {
                tracing::error!(error = %e, "reading the reminder index failed");
            }
            for due in silo.reminders.take_due(now_ms()) {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let task_silo = silo.clone();
                silo.tasks.spawn(async move {
                    fire(&task_silo, due).await;
                    drop(permit);
                });
            }
            let sleep = silo.reminders.next_wake(now_ms());
            tokio::select! {
                _ = silo.lifecycle.stopping.cancelled() => return,
                _ = silo.reminders.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    fn refill_if_needed(&self, silo: &Silo) -> Result<(), crate::storage::StorageError> {
        let now = now_ms();
        let refill_at = self
            .lock()
            .horizon_ms
            .saturating_sub(WINDOW.as_millis() as u64 / 2);
        if now < refill_at {
            return Ok(());
        }
        let until = now + WINDOW.as_millis() as u64;
        let loaded = silo.storage.due_reminders(until, MAX_WINDOW)?;
        let mut w = self.lock();
        w.horizon_ms = if loaded.len() >= MAX_WINDOW {
            loaded.last().map_or(until, |d| d.due_ms)
        } else {
            until
        };
        for due in loaded {
            if !w.in_flight.contains(&(due.grain.clone(), due.name.clone())) {
                w.due.insert(due);
            }
        }
        trim(&mut w);
        Ok(())
    }

    fn take_due(&self, now: u64) -> Vec<DueReminder> {
        let mut w = self.lock();
        let mut out = Vec::new();
        while let Some(first) = w.due.first() {
            if first.due_ms > now {
                break;
            }
            let due = w.due.pop_first().expect("checked above");
            if w.in_flight.insert((due.grain.clone(), due.name.clone())) {
                out.push(due);
            }
        }
        out
    }

    fn next_wake(&self, now: u64) -> Duration {
        let w = self.lock();
        let refill_at = w.horizon_ms.saturating_sub(WINDOW.as_millis() as u64 / 2);
        let first = w.due.first().map_or(u64::MAX, |d| d.due_ms);
        Duration::from_millis(first.min(refill_at).saturating_sub(now).max(1))
    }

    fn finished(&self, due: &DueReminder) {
        self.lock()
            .in_flight
            .remove(&(due.grain.clone(), due.name.clone()));
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Nothing panics while holding the window lock.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps the window within `MAX_WINDOW` by dropping its latest entries (a later refill
/// loads them again).
fn trim(w: &mut Window) {
    while w.due.len() > MAX_WINDOW {
        if let Some(last) = w.due.pop_last() {
            w.horizon_ms = w.horizon_ms.min(last.due_ms.saturating_sub(1));
        }
    }
}

/// Fires one reminder tick, retrying transient failures with backoff and jitter.
async fn fire(silo: &Arc<Silo>, due: DueReminder) {
    let mut attempt = 1;
    let mut backoff = BACKOFF_BASE;
    let outcome = loop {
        let deadline = Instant::now() + silo.config.call_timeout();
        match silo.fire_reminder(&due, attempt, deadline).await {
            Ok(()) => break Ok(()),
            Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                silo.metrics.reminder_ticks("retried").inc();
                let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
                tokio::select! {
                    _ = silo.lifecycle.stopping.cancelled() => break Err(None),
                    _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
                }
                backoff *= 2;
                attempt += 1;
            }
            Err(CallError::Draining) => break Err(None),
            Err(e) => break Err(Some(e)),
        }
    };
    match outcome {
        Ok(()) => {}
        // Draining: the tick stays due and fires after the restart.
        Err(None) => {}
        Err(Some(e)) => give_up(silo, &due, attempt, &e).await,
    }
    silo.reminders.finished(&due);
    reschedule(silo, &due);
}

/// Records a failed tick and moves the reminder to its next period.
async fn give_up(silo: &Silo, due: &DueReminder, attempts: u32, e: &CallError) {
    silo.metrics.reminder_ticks("failed").inc();
    tracing::warn!(grain = %due.grain, reminder = %due.name, attempts, error = %e, "reminder tick failed");
    let Ok(Some(record)) = silo.storage.load_reminder(&due.grain, &due.name) else {
        return;
    };
    let now = now_ms();
    let advance = ReminderAdvance {
        name: due.name.clone(),
        expected_due_ms: due.due_ms,
        next_due_ms: record.schedule.next_after(due.due_ms, now),
        outcome: TickOutcome {
            scheduled_ms: due.due_ms,
            fired_ms: now,
            attempts,
            error: Some(format!("not delivered: {e}")),
        },
    };
    if let Err(e) = silo
        .storage
        .advance_reminder(&due.grain, advance)
        .wait()
        .await
    {
        tracing::error!(error = %e, "recording a failed reminder tick");
    }
}

/// Puts the reminder back in the window at its (possibly new) due time, or drops a stale
/// index entry.
fn reschedule(silo: &Silo, due: &DueReminder) {
    match silo.storage.load_reminder(&due.grain, &due.name) {
        Ok(Some(record)) if record.next_due_ms == due.due_ms => {
            // Not advanced (drain): it stays due and fires after the restart.
        }
        // Advanced: the commit that moved it also replaced its index entry.
        Ok(Some(record)) => {
            silo.reminders.scheduled(DueReminder {
                due_ms: record.next_due_ms,
                grain: due.grain.clone(),
                name: due.name.clone(),
            });
        }
        Ok(None) => {
            let _ = silo.storage.drop_stale_index(due);
        }
        Err(e) => tracing::error!(error = %e, "reading a reminder"),
    }
}

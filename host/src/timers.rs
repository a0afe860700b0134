//! Grain timers: volatile, owned by one activation's instance, never persisted.
//!
//! A tick is a turn of the activation, so it never overlaps another turn of the grain.
//! Ticks missed while a turn ran coalesce: the next tick is the next period boundary
//! after now, never a burst. All timers end with the instance (deactivation, a failed
//! turn, drain); a tick is never delivered after deactivation starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timers one activation may hold.
pub const MAX_TIMERS: usize = 64;
/// Shortest period of a repeating timer.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GrainTimer {
    next: Instant,
    /// `None` for a one-shot timer.
    period: Option<Duration>,
}

/// A change a turn stages; applied when the turn commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    Register {
        name: String,
        due: Duration,
        period: Option<Duration>,
    },
    Cancel(String),
}

#[derive(Debug, Default)]
pub struct GrainTimers {
    /// Shared names: a tick hands its timer's name to the guest without copying it.
    timers: BTreeMap<Arc<str>, GrainTimer>,
}

impl GrainTimers {
    /// Validates a registration against the limits, counting what the turn already staged.
    pub fn check(&self, staged: &[TimerChange], name: &str, period_ms: u64) -> Result<(), String> {
        crate::reminders::validate_name(name)?;
        if period_ms != 0 && Duration::from_millis(period_ms) < MIN_PERIOD {
            return Err("timer period must be at least 1 ms".into());
        }
        let mut names: std::collections::BTreeSet<&str> =
            self.timers.keys().map(|k| &**k).collect();
        for change in staged {
            match change {
                TimerChange::Register { name, .. } => names.insert(name),
                TimerChange::Cancel(name) => names.remove(name.as_str()),
            };
        }
        if !names.contains(name) && names.len() >= MAX_TIMERS {
            return Err(format!(
                "at most {MAX_TIMERS} timers per activation; cancel one first"
            ));
        }
        Ok(())
    }

    pub fn apply(&mut self, changes: Vec<TimerChange>, now: Instant) {
        for change in changes {
            match change {
                TimerChange::Register { name, due, period } => {
                    self.timers.insert(
                        name.into(),
                        GrainTimer {
                            next: now + due,
                            period,
                        },
                    );
                }
                TimerChange::Cancel(name) => {
                    self.timers.remove(name.as_str());
                }
            }
        }
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.values().map(|t| t.next).min()
    }

    /// The earliest due timer, rescheduled (or removed if one-shot) before its tick runs,
    /// so a tick that ends later than a period coalesces instead of piling up.
    pub fn take_due(&mut self, now: Instant) -> Option<Arc<str>> {
        let (name, timer) = self
            .timers
            .iter()
            .filter(|(_, t)| t.next <= now)
            .min_by_key(|(_, t)| t.next)
            .map(|(n, t)| (n.clone(), *t))?;
        match timer.period {
            Some(period) => {
                let mut next = timer.next + period;
                if next <= now {
                    // Missed ticks coalesce: skip to the next boundary after now.
                    let behind = now.duration_since(timer.next).as_nanos() / period.as_nanos();
                    next = timer.next + period * (behind as u32 + 1);
                }
                if let Some(t) = self.timers.get_mut(&name) {
                    t.next = next;
                }
            }
            None => {
                self.timers.remove(&*name);
            }
        }
        Some(name)
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(name: &str, due_ms: u64, period_ms: u64) -> TimerChange {
        TimerChange::Register {
            name: name.into(),
            due: Duration::from_millis(due_ms),
            period: (period_ms > 0).then(|| Duration::from_millis(period_ms)),
        }
    }

    #[test]
    fn missed_ticks_coalesce() {
        let t0 = Instant::now();
        let mut timers = GrainTimers::default();
        timers.apply(vec![register("work", 10, 10)], t0);
        assert_eq!(timers.take_due(t0), None);
        // A turn held the activation for 55 ms: one tick now, the next at 70 ms.
        let late = t0 + Duration::from_millis(55);
        assert_eq!(timers.take_due(late).as_deref(), Some("work"));
        assert_eq!(timers.take_due(late), None);
        assert_eq!(timers.next_due(), Some(t0 + Duration::from_millis(60)));
    }

    #[test]
    fn one_shot_timers_fire_once_and_reregistering_replaces() {
        let t0 = Instant::now();
        let mut timers = GrainTimers::default();
        timers.apply(vec![register("once", 5, 0), register("once", 20, 0)], t0);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.take_due(t0 + Duration::from_millis(10)), None);
        let at = t0 + Duration::from_millis(20);
        assert_eq!(timers.take_due(at).as_deref(), Some("once"));
        assert!(timers.is_empty());
    }

    #[test]
    fn limits() {
        let mut timers = GrainTimers::default();
        let full: Vec<_> = (0..MAX_TIMERS)
            .map(|i| register(&format!("t{i}"), 1, 1))
            .collect();
        timers.apply(full, Instant::now());
        let err = timers.check(&[], "one-more", 1).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
        assert!(timers.check(&[], "t3", 5).is_ok(), "replacing is allowed");
        assert!(
            timers
                .check(&[TimerChange::Cancel("t1".into())], "new", 1)
                .is_ok()
        );
        assert!(timers.check(&[], "", 1).is_err());
    }
}

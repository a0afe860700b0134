//! Reminder schedules and the missed-tick math: when a reminder fires next, and what a
//! firing looks like after downtime under each missed-tick policy.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Occurrences counted one by one (cron) before giving up; beyond it a reminder that was
/// down for longer just fires once.
const MAX_COUNTED: usize = 10_000;

/// When a reminder fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Every `period_ms` after the first due time.
    Every { period_ms: u64 },
    /// A cron expression with seconds, evaluated in UTC.
    Cron(String),
}

/// What happens to ticks missed while the silo was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissedPolicy {
    /// Fire once, reporting how many periods were missed.
    FireOnce,
    /// Fire nothing for the missed periods; wait for the next one.
    Skip,
    /// Fire each missed tick, at most this many.
    CatchUp(u32),
}

/// What to do with a reminder whose due time has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    /// Whether the grain is called (false when a `Skip` policy skips missed ticks).
    pub fire: bool,
    /// The scheduled time the tick reports.
    pub scheduled_ms: u64,
    /// Periods missed before this tick.
    pub missed: u32,
    /// The reminder's next due time once this firing is committed.
    pub next_due_ms: u64,
}

impl Schedule {
    /// Checks the schedule against the silo's minimum period.
    pub fn validate(&self, min_period_ms: u64) -> Result<(), String> {
        match self {
            Schedule::Every { period_ms } if *period_ms < min_period_ms => Err(format!(
                "reminder period {period_ms} ms is below this silo's minimum of {min_period_ms} ms \
                 (use a timer for faster work)"
            )),
            Schedule::Every { .. } => Ok(()),
            Schedule::Cron(expr) => {
                let cron = parse_cron(expr)?;
                let now = Utc::now();
                let mut upcoming = cron.after(&now).take(2);
                match (upcoming.next(), upcoming.next()) {
                    (Some(a), Some(b)) => {
                        let gap = (b - a).num_milliseconds().max(0) as u64;
                        if gap < min_period_ms {
                            return Err(format!(
                                "cron {expr:?} fires every {gap} ms, below this silo's minimum of {min_period_ms} ms"
                            ));
                        }
                        Ok(())
                    }
                    (None, _) => Err(format!("cron {expr:?} never fires")),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The first occurrence strictly after `t_ms`, counting from an occurrence at `due_ms`.
    pub fn next_after(&self, due_ms: u64, t_ms: u64) -> u64 {
        match self {
            Schedule::Every { period_ms } => {
                let period = (*period_ms).max(1);
                if t_ms < due_ms {
                    return due_ms;
                }
                due_ms + ((t_ms - due_ms) / period + 1) * period
            }
            Schedule::Cron(expr) => parse_cron(expr)
                .ok()
                .and_then(|c| c.after(&to_datetime(t_ms)).next())
                .map(|d| d.timestamp_millis().max(0) as u64)
                // A cron with no future occurrence effectively stops firing.
                .unwrap_or(u64::MAX),
        }
    }

    /// Occurrences after `due_ms` up to and including `now_ms` (ticks missed while the
    /// one due at `due_ms` was waiting).
    fn missed_between(&self, due_ms: u64, now_ms: u64) -> u64 {
        if now_ms <= due_ms {
            return 0;
        }
        match self {
            Schedule::Every { period_ms } => (now_ms - due_ms) / (*period_ms).max(1),
            Schedule::Cron(_) => {
                let mut count = 0;
                let mut t = due_ms;
                while count < MAX_COUNTED as u64 {
                    t = self.next_after(due_ms, t);
                    if t > now_ms {
                        break;
                    }
                    count += 1;
                }
                count
            }
        }
    }

    /// The `n`-th occurrence after `due_ms` (n = 0 is `due_ms` itself).
    fn nth_after(&self, due_ms: u64, n: u64) -> u64 {
        match self {
            Schedule::Every { period_ms } => due_ms + n * (*period_ms).max(1),
            Schedule::Cron(_) => (0..n).fold(due_ms, |t, _| self.next_after(due_ms, t)),
        }
    }
}

/// Plans the firing of a reminder due at `due_ms`, at `now_ms`.
pub fn plan(schedule: &Schedule, policy: MissedPolicy, due_ms: u64, now_ms: u64) -> Firing {
    let missed = schedule.missed_between(due_ms, now_ms);
    let on_time = Firing {
        fire: true,
        scheduled_ms: due_ms,
        missed: 0,
        next_due_ms: schedule.next_after(due_ms, due_ms),
    };
    if missed == 0 {
        return on_time;
    }
    let after_now = schedule.next_after(due_ms, now_ms);
    match policy {
        MissedPolicy::FireOnce => Firing {
            fire: true,
            scheduled_ms: due_ms,
            missed: saturate(missed),
            next_due_ms: after_now,
        },
        MissedPolicy::Skip => Firing {
            fire: false,
            scheduled_ms: due_ms,
            missed: saturate(missed),
            next_due_ms: after_now,
        },
        MissedPolicy::CatchUp(limit) => {
            // Of the `missed + 1` ticks due by now, fire the last `limit` one by one.
            let due_ticks = missed + 1;
            let limit = u64::from(limit.max(1));
            if due_ticks <= limit {
                return on_time;
            }
            let dropped = due_ticks - limit;
            let first = schedule.nth_after(due_ms, dropped);
            Firing {
                fire: true,
                scheduled_ms: first,
                missed: saturate(dropped),
                next_due_ms: schedule.next_after(due_ms, first),
            }
        }
    }
}

fn saturate(n: u64) -> u32 {
    n.min(u32::MAX as u64) as u32
}

fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| {
        format!("invalid cron expression {expr:?}: {e} (use 6 or 7 fields: sec min hour day month weekday [year])")
    })
}

fn to_datetime(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms.min(i64::MAX as u64) as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn every(s: u64) -> Schedule {
        Schedule::Every { period_ms: s * S }
    }

    #[test]
    fn on_time_ticks_advance_by_one_period() {
        let f = plan(&every(10), MissedPolicy::FireOnce, 100 * S, 100 * S + 5);
        assert_eq!(
            f,
            Firing {
                fire: true,
                scheduled_ms: 100 * S,
                missed: 0,
                next_due_ms: 110 * S
            }
        );
    }

    #[test]
    fn fire_once_after_downtime_reports_missed_and_lands_in_the_future() {
        // Due at 100 s, silo back at 135 s: ticks at 110, 120, 130 were missed.
        let f = plan(&every(10), MissedPolicy::FireOnce, 100 * S, 135 * S);
        assert!(f.fire);
        assert_eq!(
            (f.scheduled_ms, f.missed, f.next_due_ms),
            (100 * S, 3, 140 * S)
        );
    }

    #[test]
    fn skip_fires_nothing_and_waits_for_the_next_period() {
        let f = plan(&every(10), MissedPolicy::Skip, 100 * S, 135 * S);
        assert!(!f.fire);
        assert_eq!(f.next_due_ms, 140 * S);
    }

    #[test]
    fn catch_up_fires_at_most_n_ticks() {
        // Ticks 100,110,120,130 are due; with at most 2, fire 120 then 130.
        let f = plan(&every(10), MissedPolicy::CatchUp(2), 100 * S, 135 * S);
        assert_eq!(
            (f.fire, f.scheduled_ms, f.missed, f.next_due_ms),
            (true, 120 * S, 2, 130 * S)
        );
        let g = plan(&every(10), MissedPolicy::CatchUp(2), 130 * S, 135 * S);
        assert_eq!(
            (g.scheduled_ms, g.missed, g.next_due_ms),
            (130 * S, 0, 140 * S)
        );
        // Within the limit, every missed tick fires in turn.
        let h = plan(&every(10), MissedPolicy::CatchUp(10), 100 * S, 135 * S);
        assert_eq!(
            (h.scheduled_ms, h.missed, h.next_due_ms),
            (100 * S, 0, 110 * S)
        );
    }

    #[test]
    fn long_downtime_is_counted_without_iterating() {
        let f = plan(&every(1), MissedPolicy::FireOnce, 0, 10 * 86_400 * S);
        assert_eq!(f.missed, 864_000);
    }

    #[test]
    fn cron_schedules() {
        let every_5s = Schedule::Cron("*/5 * * * * *".into());
        assert_eq!(every_5s.next_after(0, 12 * S), 15 * S);
        let f = plan(&every_5s, MissedPolicy::FireOnce, 15 * S, 32 * S);
        assert_eq!((f.missed, f.next_due_ms), (3, 35 * S));
        assert!(every_5s.validate(1000).is_ok());
        assert!(every_5s.validate(10_000).unwrap_err().contains("minimum"));
        let bad = Schedule::Cron("every tuesday".into())
            .validate(1000)
            .unwrap_err();
        assert!(bad.contains("invalid cron"), "{bad}");
    }

    #[test]
    fn minimum_period() {
        assert!(every(1).validate(1000).is_ok());
        let err = Schedule::Every { period_ms: 999 }
            .validate(1000)
            .unwrap_err();
        assert!(err.contains("minimum") && err.contains("timer"), "{err}");
    }
}

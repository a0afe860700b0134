//! `sync-worker`: periodic work that outlives evictions and restarts. It keeps a durable
//! reminder for keep-alive and a volatile timer for the work.
//!
//! Reminders are durable. The silo stores them, fires them across deactivations and
//! restarts, and activates the grain to deliver a tick. They are meant for coarse periods,
//! though, and the silo enforces a minimum. Timers can be fast, but they belong to one
//! activation and stop with it. So this grain uses both. The `keepalive` reminder, every
//! minute by default, only brings the grain back. The `work` timer, every 2 s by default,
//! does the job while the grain is active. On drain, eviction or an idle timeout the timer
//! stops cleanly with the activation. After a restart, the next `keepalive` tick re-activates
//! the grain, `on_activate` arms the timer again, and the work resumes without anyone calling
//! the grain. Never run a loop inside `on_reminder`: it blocks the grain's turns, drain cannot
//! see it, and nothing restarts it after an eviction (see `README.md`).
//!
//! Build every example and serve them on 127.0.0.1:8080:
//!
//! ```text
//! cargo xtask demo
//! ```
//!
//! Then, in another terminal (`alias granary=target/release/granary`):
//!
//! ```text
//! granary call sync-worker/reports start '{"every_ms":2000,"keepalive_secs":60}'
//! granary call sync-worker/reports status
//! granary call sync-worker/reports stop
//! granary reminders sync-worker/reports
//! ```
//!
//! `start` takes an optional argument (an empty payload means every 2000 ms, keep-alive
//! every 60 s). `status` shows `runs` growing every `every_ms`. Stop the demo with Ctrl-C,
//! then start it again without calling the grain. Within one keep-alive period `status`
//! shows a new activation, and `runs` is growing again.
//!
//! The component is `target/wasm32-wasip2/guest/sync_worker.wasm`
//! (`cargo build --target wasm32-wasip2 --profile guest -p sync-worker`); `cargo xtask build`
//! copies it to `target/grains/sync-worker.wasm`, so the grain's kind is `sync-worker`.

use std::time::Duration;

use granary_sdk::{Ctx, DeactivationReason, ReminderTick, grain};
use serde::{Deserialize, Serialize};

/// The name of the durable keep-alive reminder.
pub const KEEPALIVE_REMINDER: &str = "keepalive";
/// The name of the volatile timer that does the work.
pub const WORK_TIMER: &str = "work";
/// The period of the work when `start` does not give `every_ms`.
pub const DEFAULT_EVERY_MS: u64 = 2_000;
/// The keep-alive period when `start` does not give `keepalive_secs`.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 60;

/// The worker's state, persisted as JSON after every `&mut self` method and hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncWorker {
    /// Whether the worker is started. It stays set across deactivations and restarts.
    running: bool,
    /// Milliseconds between runs of the work.
    every_ms: u64,
    /// Seconds between keep-alive reminder ticks.
    keepalive_secs: u64,
    /// How many times the work ran, over the grain's whole life.
    runs: u64,
    /// When the work last ran (ms since the Unix epoch).
    last_run_ms: Option<u64>,
    /// When the running worker was started; `None` while stopped.
    started_ms: Option<u64>,
    /// How many activations this grain has had.
    activations: u64,
    /// How many keep-alive ticks arrived while running.
    keepalive_ticks: u64,
    /// When the last keep-alive tick fired (ms since the Unix epoch).
    last_keepalive_ms: Option<u64>,
}

impl Default for SyncWorker {
    fn default() -> Self {
        SyncWorker {
            running: false,
            every_ms: DEFAULT_EVERY_MS,
            keepalive_secs: DEFAULT_KEEPALIVE_SECS,
            runs: 0,
            last_run_ms: None,
            started_ms: None,
            activations: 0,
            keepalive_ticks: 0,
            last_keepalive_ms: None,
        }
    }
}

/// The optional argument of `start`, e.g. `{"every_ms":2000,"keepalive_secs":60}`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// Milliseconds between runs of the work (at least 1; default 2000).
    pub every_ms: Option<u64>,
    /// Seconds between keep-alive ticks (at least 1, and at least the silo's minimum
    /// reminder period; default 60).
    pub keepalive_secs: Option<u64>,
}

/// The validated settings of `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Milliseconds between runs of the work.
    pub every_ms: u64,
    /// Seconds between keep-alive ticks.
    pub keepalive_secs: u64,
}

impl Settings {
    /// Fills in the defaults and checks the bounds.
    pub fn from_args(args: Option<StartArgs>) -> Result<Settings, String> {
        let args = args.unwrap_or_default();
        let every_ms = args.every_ms.unwrap_or(DEFAULT_EVERY_MS);
        let keepalive_secs = args.keepalive_secs.unwrap_or(DEFAULT_KEEPALIVE_SECS);
        if every_ms < 1 {
            return Err(format!(
                "every_ms must be at least 1 (milliseconds between runs), got {every_ms}"
            ));
        }
        if keepalive_secs < 1 {
            return Err(format!(
                "keepalive_secs must be at least 1 (seconds between keep-alive ticks), got \
                 {keepalive_secs}"
            ));
        }
        Ok(Settings {
            every_ms,
            keepalive_secs,
        })
    }
}

/// The reply of `start`, `status` and `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the worker is started.
    pub running: bool,
    /// Milliseconds between runs of the work.
    pub every_ms: u64,
    /// Seconds between keep-alive ticks.
    pub keepalive_secs: u64,
    /// How many times the work ran.
    pub runs: u64,
    /// When the work last ran (ms since the Unix epoch).
    pub last_run_ms: Option<u64>,
    /// When the running worker was started; `null` while stopped.
    pub started_ms: Option<u64>,
    /// How many activations the grain has had.
    pub activations: u64,
    /// How many keep-alive ticks arrived while running.
    pub keepalive_ticks: u64,
    /// When the last keep-alive tick fired.
    pub last_keepalive_ms: Option<u64>,
    /// When the silo fires the `keepalive` reminder next, as the silo reports it (this turn's
    /// changes included); `null` when it is not registered.
    pub keepalive_next_due_ms: Option<u64>,
}

impl SyncWorker {
    fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }

    /// How long until the next run, keeping the phase of the previous runs. It is counted
    /// from the last run (or the start) and is at most `every`. When a run is overdue
    /// (after a restart, say) it is zero, so the work catches up at once.
    ///
    /// Re-arming the timer with a full `every` on each keep-alive tick would push the next
    /// run back each time. With `every_ms` above the keep-alive period the work would then
    /// never run.
    pub fn next_due(&self, now_ms: u64) -> Duration {
        let every = self.every();
        match self.last_run_ms.or(self.started_ms) {
            Some(anchor) => {
                let next = anchor.saturating_add(self.every_ms);
                Duration::from_millis(next.saturating_sub(now_ms)).min(every)
            }
            None => every,
        }
    }

    /// The reply of `start`, `status` and `stop`, given the reminder's next due time.
    pub fn status_with(&self, keepalive_next_due_ms: Option<u64>) -> Status {
        Status {
            running: self.running,
            every_ms: self.every_ms,
            keepalive_secs: self.keepalive_secs,
            runs: self.runs,
            last_run_ms: self.last_run_ms,
            started_ms: self.started_ms,
            activations: self.activations,
            keepalive_ticks: self.keepalive_ticks,
            last_keepalive_ms: self.last_keepalive_ms,
            keepalive_next_due_ms,
        }
    }

    fn status_of(&self, ctx: &Ctx) -> Status {
        let next_due = ctx
            .reminders()
            .into_iter()
            .find(|r| r.name == KEEPALIVE_REMINDER)
            .map(|r| r.next_due_ms);
        self.status_with(next_due)
    }

    /// (Re-)arms the `work` timer in phase with the previous runs.
    fn arm_work_timer(&self, ctx: &mut Ctx) -> Result<(), String> {
        let due = self.next_due(ctx.now_ms());
        ctx.register_timer(WORK_TIMER, due, self.every())
            .map_err(|e| format!("cannot register the `{WORK_TIMER}` timer: {e}"))
    }
}

#[grain]
impl SyncWorker {
    /// Starts the worker (or, if it is already running, applies the new settings). It
    /// registers the durable `keepalive` reminder and the volatile `work` timer, and returns
    /// the status. An empty payload means `{"every_ms":2000,"keepalive_secs":60}`. If the
    /// silo refuses either registration (e.g. a keep-alive below its minimum reminder
    /// period), the turn fails and nothing changes.
    pub fn start(&mut self, ctx: &mut Ctx, args: Option<StartArgs>) -> Result<Status, String> {
        let settings = Settings::from_args(args)?;
        let keepalive = Duration::from_secs(settings.keepalive_secs);
        let every = Duration::from_millis(settings.every_ms);
        ctx.register_reminder(KEEPALIVE_REMINDER, keepalive, keepalive)
            .map_err(|e| format!("cannot register the `{KEEPALIVE_REMINDER}` reminder: {e}"))?;
        ctx.register_timer(WORK_TIMER, every, every)
            .map_err(|e| format!("cannot register the `{WORK_TIMER}` timer: {e}"))?;
        if !self.running {
            self.started_ms = Some(ctx.now_ms());
        }
        self.running = true;
        self.every_ms = settings.every_ms;
        self.keepalive_secs = settings.keepalive_secs;
        ctx.info(format!(
            "started: work every {} ms, keep-alive every {} s",
            self.every_ms, self.keepalive_secs
        ));
        Ok(self.status_of(ctx))
    }

    /// The worker's status.
    pub fn status(&self, ctx: &mut Ctx) -> Status {
        self.status_of(ctx)
    }

    /// Stops the worker: cancels the `work` timer and the `keepalive` reminder and returns the
    /// status. Stopping a stopped worker changes nothing.
    pub fn stop(&mut self, ctx: &mut Ctx) -> Status {
        ctx.cancel_timer(WORK_TIMER);
        ctx.cancel_reminder(KEEPALIVE_REMINDER);
        if self.running {
            ctx.info(format!("stopped after {} runs", self.runs));
        }
        self.running = false;
        self.started_ms = None;
        self.status_of(ctx)
    }

    /// Timers die with the activation, so a running worker arms `work` again here. That
    /// happens whether a call or a `keepalive` tick activated the grain. A failure is only
    /// logged. Failing the activation would also refuse `status` and `stop`, and the next
    /// keep-alive tick tries again.
    fn on_activate(&mut self, ctx: &mut Ctx) {
        self.activations += 1;
        if !self.running {
            return;
        }
        match self.arm_work_timer(ctx) {
            Ok(()) => ctx.info(format!(
                "activation #{}: worker resumed (every {} ms, {} runs so far)",
                self.activations, self.every_ms, self.runs
            )),
            Err(e) => ctx.warn(format!(
                "activation #{}: {e}; the next `{KEEPALIVE_REMINDER}` tick retries",
                self.activations
            )),
        }
    }

    /// One run of the work. The state is persisted after this hook, like after any
    /// `&mut self` method. Real work goes here. Keep each run short: a run is one turn,
    /// bounded by the silo's turn timeout, and it holds up every message to this grain
    /// until it ends.
    fn on_timer(&mut self, ctx: &mut Ctx, name: &str) {
        if name != WORK_TIMER {
            return;
        }
        if !self.running {
            // A leftover timer from before a `stop` (it should not happen): end it.
            ctx.cancel_timer(WORK_TIMER);
            return;
        }
        self.runs += 1;
        self.last_run_ms = Some(ctx.now_ms());
        ctx.debug(format!("run #{}", self.runs));
    }

    /// The keep-alive. If the grain was not active, this tick activated it, and `on_activate`
    /// has already armed the timer. Arming it again here, in phase, does no harm. It also
    /// repairs a timer that `on_activate` could not register. A tick for a stopped worker
    /// (say, a leftover registration) cancels the reminder.
    fn on_reminder(&mut self, ctx: &mut Ctx, name: &str, tick: ReminderTick) -> Result<(), String> {
        if name != KEEPALIVE_REMINDER {
            return Ok(());
        }
        ctx.info(format!(
            "`{KEEPALIVE_REMINDER}` tick: missed {}, running {}, {} runs",
            tick.missed, self.running, self.runs
        ));
        if !self.running {
            ctx.cancel_reminder(KEEPALIVE_REMINDER);
            return Ok(());
        }
        self.keepalive_ticks += 1;
        self.last_keepalive_ms = Some(tick.fired_ms);
        self.arm_work_timer(ctx)
    }

    /// The silo cancels the activation's timers itself. The reminder stays registered and
    /// brings a running worker back.
    fn on_deactivate(&self, ctx: &mut Ctx, reason: DeactivationReason) {
        if self.running {
            ctx.info(format!(
                "deactivating ({reason:?}) after {} runs; the `work` timer stops, the \
                 `{KEEPALIVE_REMINDER}` reminder brings the worker back within {} s",
                self.runs, self.keepalive_secs
            ));
        } else {
            ctx.info(format!("deactivating ({reason:?}); the worker is stopped"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_args_default_to_2000_ms_and_60_s() {
        let expected = Settings {
            every_ms: 2000,
            keepalive_secs: 60,
        };
        assert_eq!(Settings::from_args(None), Ok(expected));
        assert_eq!(
            Settings::from_args(Some(StartArgs::default())),
            Ok(expected)
        );
        let args: StartArgs = serde_json::from_str(r#"{"every_ms":500}"#).unwrap();
        assert_eq!(
            Settings::from_args(Some(args)),
            Ok(Settings {
                every_ms: 500,
                keepalive_secs: 60
            })
        );
    }

    #[test]
    fn start_args_are_validated() {
        let zero_every = StartArgs {
            every_ms: Some(0),
            keepalive_secs: None,
        };
        let e = Settings::from_args(Some(zero_every)).unwrap_err();
        assert!(e.contains("every_ms must be at least 1"), "{e}");
        let zero_keepalive = StartArgs {
            every_ms: Some(2000),
            keepalive_secs: Some(0),
        };
        let e = Settings::from_args(Some(zero_keepalive)).unwrap_err();
        assert!(e.contains("keepalive_secs must be at least 1"), "{e}");
    }

    #[test]
    fn start_args_refuse_unknown_fields() {
        let typo = serde_json::from_str::<StartArgs>(r#"{"every":2000}"#);
        assert!(typo.is_err());
    }

    #[test]
    fn a_new_grain_is_stopped() {
        let worker = SyncWorker::default();
        let status = worker.status_with(None);
        assert!(!status.running);
        assert_eq!((status.every_ms, status.keepalive_secs), (2000, 60));
        assert_eq!(status.runs, 0);
        assert_eq!(status.last_run_ms, None);
    }

    #[test]
    fn state_round_trips_and_tolerates_missing_fields() {
        let worker = SyncWorker {
            running: true,
            runs: 7,
            last_run_ms: Some(1_000),
            started_ms: Some(10),
            activations: 2,
            ..SyncWorker::default()
        };
        let json = serde_json::to_string(&worker).unwrap();
        assert_eq!(serde_json::from_str::<SyncWorker>(&json).unwrap(), worker);
        let old: SyncWorker = serde_json::from_str(r#"{"running":true,"runs":3}"#).unwrap();
        assert!(old.running);
        assert_eq!(old.runs, 3);
        assert_eq!(old.every_ms, DEFAULT_EVERY_MS);
    }

    #[test]
    fn status_has_the_documented_fields() {
        let status = SyncWorker::default().status_with(Some(42));
        let json = serde_json::to_value(status).unwrap();
        for field in [
            "running",
            "runs",
            "last_run_ms",
            "every_ms",
            "keepalive_secs",
            "started_ms",
            "activations",
            "keepalive_ticks",
            "last_keepalive_ms",
            "keepalive_next_due_ms",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["keepalive_next_due_ms"], 42);
    }

    #[test]
    fn next_due_keeps_the_phase_and_catches_up() {
        let mut worker = SyncWorker {
            running: true,
            every_ms: 2_000,
            started_ms: Some(10_000),
            ..SyncWorker::default()
        };
        // Never ran: counted from the start.
        assert_eq!(worker.next_due(10_500), Duration::from_millis(1_500));
        // Counted from the last run.
        worker.last_run_ms = Some(20_000);
        assert_eq!(worker.next_due(20_300), Duration::from_millis(1_700));
        // Overdue (the grain was away): run at once.
        assert_eq!(worker.next_due(90_000), Duration::ZERO);
        // A clock that went backwards never delays a run by more than one period.
        assert_eq!(worker.next_due(5_000), Duration::from_millis(2_000));
        // Stopped and never started: a full period.
        assert_eq!(
            SyncWorker::default().next_due(1),
            Duration::from_millis(2_000)
        );
    }

    #[test]
    fn a_slow_worker_is_not_starved_by_keepalive_ticks() {
        // Work every 5 minutes, keep-alive every minute: each tick re-arms the timer, and the
        // due time still shrinks towards the run instead of starting over.
        let worker = SyncWorker {
            running: true,
            every_ms: 300_000,
            keepalive_secs: 60,
            started_ms: Some(0),
            ..SyncWorker::default()
        };
        let dues: Vec<u64> = [60_000, 120_000, 180_000, 240_000]
            .into_iter()
            .map(|now| u64::try_from(worker.next_due(now).as_millis()).unwrap())
            .collect();
        assert_eq!(dues, [240_000, 180_000, 120_000, 60_000]);
    }
}

//! The silo lifecycle (`starting → serving → draining → stopped`) and the drain that walks
//! it on SIGTERM, SIGINT or `POST /v1/admin/drain`:
//!
//! 1. readiness drops at once (`/readyz` 503), `/healthz` stays 200;
//! 2. the silo keeps serving for `readiness_delay_ms` (endpoints still route to it);
//! 3. admission stops: new calls get 503 `draining`, the reminder service and the outbox
//!    stop, no timer fires again, running turns see `cancelled() == true`;
//! 4. running turns get `turn_grace_ms` to finish; what still runs is interrupted and its
//!    staged changes are discarded, as for any failed turn;
//! 5. every activation is deactivated (`deactivate(drain)`, with a deadline), in waves of
//!    bounded size, committing what it writes;
//! 6. storage is flushed.
//!
//! Each step has its own timeout and logs its start, end and duration; a step that fails
//! or times out never stops the ones after it. The whole drain is bounded by `grace_ms`:
//! past it, the silo logs what was left, flushes and reports failure (exit code 1).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::activation::DeactivationReason;
use crate::silo::Silo;

/// Activations asked to deactivate at once during a drain.
const DEACTIVATION_WAVE: usize = 512;
/// Kept for the final flush whatever the earlier steps used.
const FLUSH_RESERVE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum SiloState {
    Starting = 0,
    Serving = 1,
    Draining = 2,
    Stopped = 3,
}

/// Shared view of where the silo is in its life.
pub struct Lifecycle {
    state: AtomicU8,
    /// True until drain step 3; separate from the state because a draining silo keeps
    /// serving through `readiness_delay_ms`.
    admitting: AtomicBool,
    /// Cancelled at drain step 3: timers, the reminder service and the outbox stop.
    pub stopping: CancellationToken,
    /// Cancelled at drain step 4 once `turn_grace_ms` is over: running turns are dropped.
    pub interrupt: CancellationToken,
    /// Set just before `interrupt` is cancelled: a turn checks this flag instead of the
    /// token, whose every check takes a mutex shared by all activations.
    interrupted: AtomicBool,
    /// Cancelled by `POST /v1/admin/drain`; `serve` treats it like SIGTERM.
    pub drain_requested: CancellationToken,
    /// Turns running right now, so the drain can wait for them.
    running_turns: AtomicUsize,
    turns_done: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(SiloState::Starting as u8),
            admitting: AtomicBool::new(true),
            stopping: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            interrupted: AtomicBool::new(false),
            drain_requested: CancellationToken::new(),
            running_turns: AtomicUsize::new(0),
            turns_done: Notify::new(),
        }
    }
}

/// Counts a running turn until dropped.
pub struct RunningTurn<'a>(&'a Lifecycle);

impl Drop for RunningTurn<'_> {
    fn drop(&mut self) {
        if self.0.running_turns.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.turns_done.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn state(&self) -> SiloState {
        match self.state.load(Ordering::Acquire) {
            0 => SiloState::Starting,
            1 => SiloState::Serving,
            2 => SiloState::Draining,
            _ => SiloState::Stopped,
        }
    }

    pub fn set(&self, state: SiloState) {
        self.state.store(state as u8, Ordering::Release);
        tracing::info!(state = ?state, "silo state");
    }

    pub fn is_ready(&self) -> bool {
        self.state() == SiloState::Serving
    }

    /// Whether new work (calls, activations, timer and reminder ticks) is taken.
    pub fn is_admitting(&self) -> bool {
        self.admitting.load(Ordering::Acquire)
    }

    fn stop_admitting(&self) {
        self.admitting.store(false, Ordering::Release);
        self.stopping.cancel();
    }

    /// Whether running turns are being interrupted (drain step 4).
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    fn interrupt_turns(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.interrupt.cancel();
    }

    pub fn turn_started(&self) -> RunningTurn<'_> {
        self.running_turns.fetch_add(1, Ordering::AcqRel);
        RunningTurn(self)
    }

    pub fn running_turns(&self) -> usize {
        self.running_turns.load(Ordering::Acquire)
    }

    async fn turns_finished(&self) -> bool {
        loop {
            let done = self.turns_done.notified();
            if self.running_turns() == 0 {
                return true;
            }
            done.await;
        }
    }
}

/// Timeouts of the drain, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    pub grace: Duration,
    pub readiness_delay: Duration,
    pub turn_grace: Duration,
}

impl DrainPlan {
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            grace: Duration::from_millis(config.grace_ms),
            readiness_delay: Duration::from_millis(config.readiness_delay_ms),
            turn_grace: Duration::from_millis(config.turn_grace_ms),
        }
    }
}

/// Runs the drain. Returns whether every step finished within the grace period.
pub async fn drain(silo: &Arc<Silo>, plan: DrainPlan) -> bool {
    let started = Instant::now();
    let deadline = started + plan.grace;
    let remaining = |reserve: Duration| {
        deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(reserve)
    };
    let life = &silo.lifecycle;
    life.set(SiloState::Draining);
    tracing::info!(
        activations = silo.catalog.len(),
        running_turns = life.running_turns(),
        "drain started: readiness dropped"
    );
    let mut ok = true;
    let delay = plan.readiness_delay.min(remaining(FLUSH_RESERVE));
    ok &= step("readiness delay", delay, async {
        tokio::time::sleep(delay).await;
        true
    })
    .await;

    life.stop_admitting();
    tracing::info!("drain: admission stopped; timers, reminders and the outbox stopped");

    let grace = plan.turn_grace.min(remaining(FLUSH_RESERVE));
    if !step("wait for running turns", grace, life.turns_finished()).await {
        tracing::warn!(
            running_turns = life.running_turns(),
            "interrupting turns still running after turn_grace"
        );
        life.interrupt_turns();
        let unwind = Duration::from_secs(1).min(remaining(FLUSH_RESERVE));
        ok &= step("interrupt running turns", unwind, life.turns_finished()).await;
    }

    let budget = remaining(FLUSH_RESERVE);
    ok &= step("deactivate activations", budget, deactivate_all(silo)).await;
    let left = silo.catalog.len();
    if left > 0 {
        tracing::error!(
            activations_left = left,
            "drain: activations not deactivated in time"
        );
    }

    let storage = silo.storage.clone();
    let flush_budget = remaining(Duration::ZERO).max(Duration::from_millis(500));
    ok &= step("flush storage", flush_budget, async move {
        match tokio::task::spawn_blocking(move || storage.flush()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "flush failed");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "flush task failed");
                false
            }
        }
    })
    .await;
    life.set(SiloState::Stopped);
    let elapsed = started.elapsed();
    ok &= elapsed <= plan.grace;
    silo.metrics.observe_drain(elapsed.as_secs_f64(), ok);
    tracing::info!(ok, ms = elapsed.as_millis() as u64, "drain finished");
    ok
}

/// Asks activations to deactivate in waves and waits for each wave.
async fn deactivate_all(silo: &Arc<Silo>) -> bool {
    let infos = silo.catalog.begin_drain();
    let total = infos.len();
    for (i, wave) in infos.chunks(DEACTIVATION_WAVE).enumerate() {
        for info in wave {
            info.request_deactivation(DeactivationReason::Drain);
        }
        for info in wave {
            info.stopped.cancelled().await;
        }
        tracing::debug!(
            done = (i * DEACTIVATION_WAVE + wave.len()).min(total),
            total,
            "deactivated"
        );
    }
    true
}

/// Runs one step under its timeout; the step's future yields whether it succeeded.
async fn step(name: &str, timeout: Duration, work: impl Future<Output = bool>) -> bool {
    let started = Instant::now();
    tracing::info!(
        step = name,
        timeout_ms = timeout.as_millis() as u64,
        "drain step started"
    );
    let result = tokio::time::timeout(timeout, work).await;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(true) => {
            tracing::info!(step = name, ms, "drain step finished");
            true
        }
        Ok(false) => {
            tracing::error!(step = name, ms, "drain step failed; continuing");
            false
        }
        Err(_) => {
            tracing::error!(step = name, ms, "drain step timed out; continuing");
            false
        }
    }
}

//! The silo lifecycle (`starting → serving → draining → stopped`) and the shutdown
//! sequence that walks it: readiness drops first, then admission stops, then every
//! activation is deactivated (committing what it writes), then storage is flushed.
//! Each step is bounded by its own timeout and logged; a step that fails or times out
//! never stops the ones after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::activation::DeactivationReason;
use crate::silo::Silo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// Cancelled when draining begins: stops admission, the outbox and background loops.
    pub draining: CancellationToken,
    /// Cancelled by `POST /v1/admin/drain`; `serve` treats it like SIGTERM.
    pub drain_requested: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(SiloState::Starting as u8),
            draining: CancellationToken::new(),
            drain_requested: CancellationToken::new(),
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
        if state >= SiloState::Draining {
            self.draining.cancel();
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == SiloState::Serving
    }

    /// New work is taken while starting (kinds may activate during start-up) and serving.
    pub fn is_admitting(&self) -> bool {
        self.state() <= SiloState::Serving
    }
}

impl PartialOrd for SiloState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SiloState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Timeouts of the drain steps.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    pub deactivate: Duration,
    pub flush: Duration,
}

impl Default for DrainPlan {
    fn default() -> Self {
        Self {
            deactivate: Duration::from_secs(15),
            flush: Duration::from_secs(5),
        }
    }
}

/// Runs the shutdown sequence. Returns whether every step finished in time.
pub async fn drain(silo: &Arc<Silo>, plan: DrainPlan) -> bool {
    let started = Instant::now();
    silo.lifecycle.set(SiloState::Draining);
    let deactivated = step("deactivate activations", plan.deactivate, async {
        let infos = silo
            .catalog
            .deactivate_where(DeactivationReason::Drain, |_| true);
        for info in infos {
            info.stopped.cancelled().await;
        }
    })
    .await;
    let storage = silo.storage.clone();
    let flushed = step("flush storage", plan.flush, async move {
        match tokio::task::spawn_blocking(move || storage.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "flush failed"),
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
    })
    .await;
    silo.lifecycle.set(SiloState::Stopped);
    let ok = deactivated && flushed;
    tracing::info!(
        ok,
        ms = started.elapsed().as_millis() as u64,
        "drain finished"
    );
    ok
}

async fn step(name: &str, timeout: Duration, work: impl Future<Output = ()>) -> bool {
    let started = Instant::now();
    tracing::info!(step = name, "drain step started");
    let finished = tokio::time::timeout(timeout, work).await.is_ok();
    let ms = started.elapsed().as_millis() as u64;
    if finished {
        tracing::info!(step = name, ms, "drain step finished");
    } else {
        tracing::error!(step = name, ms, "drain step timed out; continuing");
    }
    finished
}

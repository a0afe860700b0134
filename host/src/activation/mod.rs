//! One grain's activation: its `Store` behind a turn lock, and the task that runs its
//! timer ticks, queued messages and deactivation.
//!
//! One turn runs at a time: whoever holds the lock runs it. A call from outside the
//! guests (the gateway, the outbox, the reminder service) that finds the activation idle
//! runs its turn in its own task (`inline`); otherwise it waits in the mailbox for the
//! activation's task (`task`). Calls made by a guest always go through the mailbox: the
//! caller's task is then inside that guest's fiber, whose small stack is not the place to
//! instantiate another grain.
//!
//! A turn that returns `ok` has its staged effects committed in one batch, and its caller
//! is answered only once that batch is durable. A turn that returns `err`, traps or
//! overruns its deadline commits nothing, and the instance is dropped (its memory may no
//! longer match committed state); the next message reactivates from committed state.
//!
//! - `turns`: [`Activation`], one turn of each kind, commit and discard.
//! - `task`: the activation's task: timer ticks, mailbox, idle timeout, deactivation.
//! - `inline`: a turn run by its caller, finished even when the caller goes away.

mod inline;
mod task;
mod turns;

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::grain_id::GrainId;
use crate::runtime::bindings::types::DeactivationReason as WitReason;

pub use inline::run_inline;
pub use task::spawn;
pub use turns::{Activation, SharedActivation};

/// Why an activation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DeactivationReason {
    Idle = 0,
    Evicted = 1,
    Drain = 2,
    Upgrade = 3,
}

impl DeactivationReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Evicted,
            2 => Self::Drain,
            3 => Self::Upgrade,
            _ => Self::Idle,
        }
    }

    pub(super) fn to_wit(self) -> WitReason {
        match self {
            Self::Idle => WitReason::Idle,
            Self::Evicted => WitReason::Evicted,
            Self::Drain => WitReason::Drain,
            Self::Upgrade => WitReason::Upgrade,
        }
    }
}

/// What the catalog knows about an activation; shared with its task.
pub struct ActivationInfo {
    pub id: GrainId,
    /// Tells this activation from a later one of the same grain.
    pub generation: u64,
    pub version: String,
    /// Milliseconds since the catalog started; orders least-recently-used eviction.
    pub last_active: AtomicU64,
    /// Messages enqueued and not yet finished: an activation with none is idle.
    pub pending: AtomicUsize,
    /// Set (with `reason`) to ask the activation to deactivate after its current turn.
    pub deactivate: CancellationToken,
    reason: AtomicU8,
    /// Cancelled once the activation has committed its last turn and left the catalog;
    /// callers that found its mailbox closed wait on it before activating a successor.
    pub stopped: CancellationToken,
    /// Woken when a turn changed the instance's timers, so the activation's task re-arms
    /// its tick timer even when the turn ran in a caller's task.
    pub timers_changed: Notify,
}

impl ActivationInfo {
    pub fn new(id: GrainId, generation: u64, version: String, now_ms: u64) -> Self {
        Self {
            id,
            generation,
            version,
            last_active: AtomicU64::new(now_ms),
            pending: AtomicUsize::new(0),
            deactivate: CancellationToken::new(),
            reason: AtomicU8::new(DeactivationReason::Idle as u8),
            stopped: CancellationToken::new(),
            timers_changed: Notify::new(),
        }
    }

    pub fn request_deactivation(&self, reason: DeactivationReason) {
        self.reason.store(reason as u8, Ordering::Relaxed);
        self.deactivate.cancel();
    }

    pub(super) fn reason(&self) -> DeactivationReason {
        DeactivationReason::from_u8(self.reason.load(Ordering::Relaxed))
    }
}

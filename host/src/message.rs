//! What travels to an activation: a [`Message`] in its mailbox, and the [`CallError`]
//! every caller (gateway, grain, outbox, CLI) gets back when a call fails.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::grain_id::GrainId;
use crate::storage::{DueReminder, MessageId};

/// One unit of work for an activation; each is one turn. Boxed, because a mailbox
/// allocates room for 32 messages up front and most activations hold one at a time.
pub enum Message {
    Call(Box<Call>),
    /// A durable reminder is due; the reply comes once the tick's turn committed.
    Reminder(Box<ReminderDue>),
}

impl Message {
    /// A call made by a running guest (its chain names the caller).
    pub fn is_from_guest(&self) -> bool {
        match self {
            Message::Call(call) => !call.chain.is_empty(),
            Message::Reminder(_) => false,
        }
    }
}

/// A reminder tick to run.
pub struct ReminderDue {
    pub due: DueReminder,
    pub attempt: u32,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<(), CallError>>,
}

/// A request for `method` on the activation's grain.
pub struct Call {
    pub method: String,
    pub payload: Vec<u8>,
    /// The grains waiting on this call, outermost first: a target found here is a cycle.
    pub chain: CallChain,
    pub deadline: Instant,
    /// Set when the outbox delivers a committed `send`: the id the receiving turn records.
    pub delivery: Option<MessageId>,
    pub reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

/// The grains a call passed through. Shared, because every nested call extends it;
/// `None` for a call from outside, so most turns allocate no chain.
#[derive(Debug, Clone, Default)]
pub struct CallChain(Option<Arc<Vec<GrainId>>>);

impl CallChain {
    fn ids(&self) -> &[GrainId] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    pub fn contains(&self, id: &GrainId) -> bool {
        self.ids().contains(id)
    }

    pub fn extended(&self, id: &GrainId) -> Self {
        let mut chain = self.ids().to_vec();
        chain.push(id.clone());
        Self(Some(Arc::new(chain)))
    }

    /// `a/1 -> b/2 -> a/1`, for the cycle error.
    pub fn describe_cycle(&self, target: &GrainId) -> String {
        let mut parts: Vec<String> = self.ids().iter().map(ToString::to_string).collect();
        parts.push(target.to_string());
        parts.join(" -> ")
    }
}

/// Why a call failed. The same variants as the WIT `call-error`; the gateway maps each to
/// one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("bad grain id: {0}")]
    BadId(String),
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    #[error("bad payload: {0}")]
    BadPayload(String),
    #[error("{0}")]
    App(String),
    #[error("the grain trapped (incident {0}; search the silo log for it)")]
    Trapped(String),
    /// A trap from exceeding the activation's memory limit; carries the incident id.
    #[error("the grain exceeded its memory limit (incident {0})")]
    MemoryLimit(String),
    #[error("deadline exceeded")]
    Deadline,
    #[error("overloaded; retry later")]
    Overloaded,
    #[error("the silo is draining; retry on another silo or later")]
    Draining,
    #[error("call cycle: {0}")]
    Cycle(String),
    #[error("payload too large (limit {0} bytes)")]
    TooLarge(u64),
}

impl CallError {
    /// Short machine-readable name, used in JSON bodies and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::UnknownKind(_) => "unknown-kind",
            CallError::BadId(_) => "bad-id",
            CallError::UnknownMethod(_) => "unknown-method",
            CallError::BadPayload(_) => "bad-payload",
            CallError::App(_) => "app",
            CallError::Trapped(_) => "trapped",
            CallError::MemoryLimit(_) => "memory",
            CallError::Deadline => "deadline",
            CallError::Overloaded => "overloaded",
            CallError::Draining => "draining",
            CallError::Cycle(_) => "cycle",
            CallError::TooLarge(_) => "too-large",
        }
    }

    /// Whether the same call can succeed later without anything changing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::Deadline | CallError::Overloaded | CallError::Draining
        )
    }
}

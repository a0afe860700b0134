//! Storage: everything a silo persists, behind the narrow [`Storage`] trait.
//!
//! A turn's effects (state, one-way sends, the delivery marker of the message it consumed)
//! arrive as one [`TurnCommit`] and are written in one atomic batch; the returned
//! [`Durable`] resolves only once that batch is on disk. The sled engine shares one flush
//! among every batch that arrived while the previous flush ran (group commit).
//!
//! Keys are derived here from host-side identities only (a `GrainId` the host validated,
//! message ids the host assigned), never from guest-provided bytes.

mod format;
mod keys;
mod open_copy;
mod sled_store;
mod watermark;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::grain_id::GrainId;
use crate::reminders::{ReminderAdvance, ReminderChange, ReminderRecord};

pub use format::FORMAT_VERSION;
pub use sled_store::SledStorage;

/// Identifies a one-way message from commit to delivery; unique for the life of the data.
pub type MessageId = u64;

/// The single-silo fencing token: sled ignores it, a networked store (cluster mode) will
/// refuse commits carrying a stale one.
pub type FencingToken = u64;

/// A one-way message staged by a turn, committed in that turn's batch, delivered afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub sender: GrainId,
    pub target: GrainId,
    pub method: String,
    pub payload: Vec<u8>,
}

/// An entry of the reminder index: which reminder is due when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueReminder {
    pub due_ms: u64,
    pub grain: GrainId,
    pub name: String,
}

/// What a turn does to the grain's state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    Write(Vec<u8>),
    Clear,
}

/// Everything one successful turn changes, committed atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnCommit {
    pub grain: GrainId,
    pub fencing: FencingToken,
    pub state: Option<StateChange>,
    pub sends: Vec<OutboxEntry>,
    /// The delivered message this turn consumed: recorded so a redelivery is dropped.
    pub delivered: Option<MessageId>,
    /// Reminders the turn registered or cancelled (at most one change per name).
    pub reminders: Vec<ReminderChange>,
    /// The reminder tick this turn ran: its next due time commits with the turn.
    pub advance: Option<ReminderAdvance>,
}

impl TurnCommit {
    pub fn new(grain: GrainId) -> Self {
        Self {
            grain,
            fencing: 0,
            state: None,
            sends: Vec::new(),
            delivered: None,
            reminders: Vec::new(),
            advance: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.sends.is_empty()
            && self.delivered.is_none()
            && self.reminders.is_empty()
            && self.advance.is_none()
    }
}

/// Errors say whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The write may succeed later (I/O error, disk full): the turn fails unacknowledged.
    #[error("storage temporarily unavailable: {0}")]
    Transient(String),
    /// Another process holds the store: worth waiting for at start-up (a previous silo
    /// may still be draining), unlike any other error opening it.
    #[error("storage temporarily unavailable: {0}")]
    Locked(String),
    /// The data cannot be used as it is (corruption, newer format, foreign files).
    #[error("storage unusable: {0}")]
    Fatal(String),
}

/// Whether the store takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Healthy = 0,
    /// A write failed for lack of space: calls are refused until the store reopens itself,
    /// which it does once space returns.
    Stalled = 1,
    /// A write failed otherwise. sled's I/O errors are sticky, so only a restart recovers.
    Failed = 2,
}

/// Resolves when a commit is durable (or has failed).
pub struct Durable(oneshot::Receiver<Result<(), StorageError>>);

impl Durable {
    pub async fn wait(self) -> Result<(), StorageError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StorageError::Transient("storage closed".into())))
    }

    fn pair() -> (oneshot::Sender<Result<(), StorageError>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(rx))
    }
}

/// The persistence a silo needs. Small on purpose: a second engine implements these.
pub trait Storage: Send + Sync + 'static {
    /// The grain's last committed state.
    fn load_state(&self, grain: &GrainId) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes the turn's effects in one atomic batch; resolves once durable.
    fn commit(&self, commit: TurnCommit) -> Durable;
    /// Whether `receiver` already consumed message `id`.
    fn was_delivered(&self, receiver: &GrainId, id: MessageId) -> Result<bool, StorageError>;
    /// Up to `limit` undelivered messages with ids above `after`, oldest first.
    fn pending_sends(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StorageError>;
    /// Whether message `id` is still waiting for delivery (not yet acknowledged).
    fn is_pending(&self, id: MessageId) -> Result<bool, StorageError>;
    /// Removes a delivered message and its receiver's marker together, once both are moot.
    fn ack_send(&self, id: MessageId, receiver: &GrainId) -> Durable;
    /// One stored reminder of `grain`.
    fn load_reminder(
        &self,
        grain: &GrainId,
        name: &str,
    ) -> Result<Option<ReminderRecord>, StorageError>;
    /// Every stored reminder of `grain`, by name.
    fn reminders_of(&self, grain: &GrainId) -> Result<Vec<ReminderRecord>, StorageError>;
    /// Up to `limit` reminders due at or before `until_ms`, earliest first.
    fn due_reminders(&self, until_ms: u64, limit: usize) -> Result<Vec<DueReminder>, StorageError>;
    /// Advances a reminder unless it changed since it was due (see [`ReminderAdvance`]).
    fn advance_reminder(&self, grain: &GrainId, advance: ReminderAdvance) -> Durable;
    /// Removes an index entry that no longer matches its reminder.
    fn drop_stale_index(&self, due: &DueReminder) -> Durable;
    /// Reminders stored in all.
    fn reminder_count(&self) -> u64;
    /// Not `Healthy` once a write failed: nothing may be served from a store holding
    /// refused writes until it is reopened (after a full disk) or the silo restarts.
    fn health(&self) -> Health;
    /// Blocks until everything committed so far is durable.
    fn flush(&self) -> Result<(), StorageError>;
}

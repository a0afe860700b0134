//! The catalog: the directory of activations. It places each message onto the grain's
//! activation (creating one on first use): run by the caller when the activation is idle,
//! else queued in its mailbox. It bounds the number of live activations (least
//! recently used idle ones are evicted; if none can go the call is refused as overloaded),
//! and keeps a deactivating activation registered until its last commit, so its successor
//! never starts from stale state.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::activation::{self, Activation, ActivationInfo, DeactivationReason, SharedActivation};
use crate::grain_id::GrainId;
use crate::message::{CallError, Message};
use crate::silo::Silo;

#[derive(Clone)]
struct Entry {
    mailbox: mpsc::Sender<Message>,
    /// The activation behind its turn lock: a caller that takes the lock runs its turn
    /// itself.
    activation: SharedActivation,
    info: Arc<ActivationInfo>,
    /// Set once deactivation was requested or begun; such an entry takes no new messages
    /// and does not count against `max_activations`.
    deactivating: bool,
}

#[derive(Default)]
struct Directory {
    entries: HashMap<GrainId, Entry>,
    deactivating: usize,
    next_generation: u64,
}

pub struct Catalog {
    /// Read-locked by every call that finds its grain active (the common case), so calls
    /// to different grains do not queue on one another; changes take the write lock.
    directory: RwLock<Directory>,
    started: Instant,
    max_activations: usize,
    /// Hard bound including deactivating activations: the instance pool's size.
    max_entries: usize,
    mailbox_capacity: usize,
    /// `granary_activations`, kept equal to the directory's size.
    gauge: Gauge,
}

/// What `GET /v1/grains` shows of one activation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActivationSummary {
    pub kind: String,
    pub key: String,
    pub version: String,
    pub idle_ms: u64,
    pub pending: usize,
    pub deactivating: bool,
}

impl Catalog {
    pub fn new(
        max_activations: u32,
        max_entries: u32,
        mailbox_capacity: usize,
        gauge: Gauge,
    ) -> Self {
        Self {
            gauge,
            directory: RwLock::new(Directory::default()),
            started: Instant::now(),
            max_activations: max_activations as usize,
            max_entries: max_entries as usize,
            mailbox_capacity,
        }
    }

    /// Runs `message` as a turn of the grain, activating the grain if needed: in the
    /// caller's task when the activation is idle and the message comes from outside the
    /// guests, otherwise through the activation's mailbox. When the grain is still
    /// deactivating, waits (until `deadline`) for it to finish first. Either way the
    /// answer goes to the message's reply channel.
    pub async fn place(
        &self,
        silo: &Arc<Silo>,
        target: &GrainId,
        mut message: Message,
        deadline: Instant,
    ) -> Result<(), CallError> {
        loop {
            let entry = self.entry_for(silo, target)?;
            if let Some(activation) = idle_activation(&entry, &message) {
                activation::run_inline(silo.clone(), activation, message).await;
                return Ok(());
            }
            match entry.mailbox.try_send(message) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => {
                    entry.info.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(CallError::Overloaded);
                }
                Err(TrySendError::Closed(m)) => {
                    entry.info.pending.fetch_sub(1, Ordering::AcqRel);
                    message = m;
                    tokio::time::timeout_at(deadline.into(), entry.info.stopped.cancelled())
                        .await
                        .map_err(|_| CallError::Deadline)?;
                }
            }
        }
    }

    /// The grain's entry with `pending` already counted, so it cannot be judged idle
    /// between lookup and enqueue.
    fn entry_for(&self, silo: &Arc<Silo>, target: &GrainId) -> Result<Entry, CallError> {
        let now = self.now_ms();
        // `pending` is counted under a lock, so an activation deciding under the write
        // lock that it is idle (`begin_idle_deactivation`) sees every call that found it.
        if let Some(entry) = self.read().entries.get(target) {
            return Ok(claim(entry, now));
        }
        let mut dir = self.write();
        if let Some(entry) = dir.entries.get(target) {
            return Ok(claim(entry, now));
        }
        let kind = silo
            .kinds
            .get(&target.kind)
            .ok_or_else(|| CallError::UnknownKind(target.kind.clone()))?;
        if !silo.lifecycle.is_admitting() {
            return Err(CallError::Draining);
        }
        self.make_room(&mut dir)?;
        dir.next_generation += 1;
        let info = Arc::new(ActivationInfo::new(
            target.clone(),
            dir.next_generation,
            kind.version.clone(),
            now,
        ));
        info.pending.fetch_add(1, Ordering::AcqRel);
        let (mailbox, rx) = mpsc::channel(self.mailbox_capacity);
        let entry = Entry {
            mailbox,
            activation: Activation::new(silo.clone(), info.clone(), kind),
            info: info.clone(),
            deactivating: false,
        };
        dir.entries.insert(target.clone(), entry.clone());
        self.gauge.set(dir.entries.len() as i64);
        drop(dir);
        activation::spawn(silo.clone(), entry.activation.clone(), info, rx);
        Ok(entry)
    }

    /// At `max_activations`, asks the least recently used idle activations to go (1% at a
    /// time, so a full silo does not scan the directory on every new grain).
    fn make_room(&self, dir: &mut Directory) -> Result<(), CallError> {
        if dir.entries.len() >= self.max_entries {
            return Err(CallError::Overloaded);
        }
        let live = dir.entries.len() - dir.deactivating;
        if live < self.max_activations {
            return Ok(());
        }
        let mut idle: Vec<(u64, GrainId)> = dir
            .entries
            .iter()
            .filter(|(_, e)| !e.deactivating && e.info.pending.load(Ordering::Acquire) == 0)
            .map(|(id, e)| (e.info.last_active.load(Ordering::Relaxed), id.clone()))
            .collect();
        if idle.is_empty() {
            return Err(CallError::Overloaded);
        }
        let batch = (self.max_activations / 100).max(1).min(idle.len());
        idle.select_nth_unstable(batch - 1);
        for (_, id) in idle.into_iter().take(batch) {
            Self::mark_deactivating(dir, &id, DeactivationReason::Evicted);
        }
        Ok(())
    }

    fn mark_deactivating(dir: &mut Directory, id: &GrainId, reason: DeactivationReason) {
        if let Some(entry) = dir.entries.get_mut(id)
            && !entry.deactivating
        {
            entry.deactivating = true;
            dir.deactivating += 1;
            entry.info.request_deactivation(reason);
        }
    }

    /// Called by an activation whose idle timeout expired: it may go only if nothing was
    /// enqueued meanwhile.
    pub fn begin_idle_deactivation(&self, info: &ActivationInfo) -> bool {
        let mut dir = self.write();
        if info.pending.load(Ordering::Acquire) != 0 {
            return false;
        }
        let Some(entry) = dir.entries.get_mut(&info.id) else {
            return true;
        };
        if entry.info.generation == info.generation && !entry.deactivating {
            entry.deactivating = true;
            dir.deactivating += 1;
        }
        true
    }

    /// Asks the activations of `kind` that run another version than `version` to
    /// deactivate (`upgrade`); their next message activates the new version. Returns how
    /// many were asked.
    pub fn upgrade(&self, kind: &str, version: &str) -> usize {
        let mut dir = self.write();
        let ids: Vec<GrainId> = dir
            .entries
            .values()
            .filter(|e| e.info.id.kind == kind && e.info.version != version && !e.deactivating)
            .map(|e| e.info.id.clone())
            .collect();
        for id in &ids {
            Self::mark_deactivating(&mut dir, id, DeactivationReason::Upgrade);
        }
        ids.len()
    }

    /// Marks every activation as deactivating and returns them, so the drain can ask them
    /// to go in waves of bounded size.
    pub fn begin_drain(&self) -> Vec<Arc<ActivationInfo>> {
        let mut dir = self.write();
        let dir = &mut *dir;
        let mut infos = Vec::with_capacity(dir.entries.len());
        for entry in dir.entries.values_mut() {
            if !entry.deactivating {
                entry.deactivating = true;
                dir.deactivating += 1;
            }
            infos.push(entry.info.clone());
        }
        infos
    }

    /// Unregisters a finished activation (only if it is still the registered one).
    pub fn remove(&self, info: &ActivationInfo) -> usize {
        let mut dir = self.write();
        let registered = dir
            .entries
            .get(&info.id)
            .is_some_and(|e| e.info.generation == info.generation);
        if registered
            && let Some(entry) = dir.entries.remove(&info.id)
            && entry.deactivating
        {
            dir.deactivating -= 1;
        }
        self.gauge.set(dir.entries.len() as i64);
        dir.entries.len()
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn summaries(&self) -> Vec<ActivationSummary> {
        let now = self.now_ms();
        let dir = self.read();
        let mut out: Vec<_> = dir
            .entries
            .values()
            .map(|e| ActivationSummary {
                kind: e.info.id.kind.clone(),
                key: e.info.id.key.clone(),
                version: e.info.version.clone(),
                idle_ms: now.saturating_sub(e.info.last_active.load(Ordering::Relaxed)),
                pending: e.info.pending.load(Ordering::Relaxed),
                deactivating: e.deactivating,
            })
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.key).cmp(&(&b.kind, &b.key)));
        out
    }

    /// When a call last found the activation (its turn may have run in the caller's task).
    pub fn last_active_at(&self, info: &ActivationInfo) -> Instant {
        self.started + Duration::from_millis(info.last_active.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    // Nothing panics while holding the directory lock, so poisoning cannot happen;
    // recover the data regardless rather than cascading a panic.
    fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The activation's turn lock, when the caller may run `message` itself: it comes from
/// outside the guests (a guest's call runs on its fiber's small stack), nothing is queued
/// ahead of it, and the activation's task has not closed it.
fn idle_activation(
    entry: &Entry,
    message: &Message,
) -> Option<tokio::sync::OwnedMutexGuard<Activation>> {
    if message.is_from_guest() || entry.mailbox.capacity() < entry.mailbox.max_capacity() {
        return None;
    }
    let activation = entry.activation.clone().try_lock_owned().ok()?;
    activation.is_open().then_some(activation)
}

/// The entry of an active grain, with the call that found it counted as pending.
fn claim(entry: &Entry, now_ms: u64) -> Entry {
    entry.info.pending.fetch_add(1, Ordering::AcqRel);
    entry.info.last_active.store(now_ms, Ordering::Relaxed);
    entry.clone()
}

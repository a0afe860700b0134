//! The outbox: delivers one-way messages after the turn that sent them committed.
//!
//! Messages are read from storage (so a restart resumes delivery), delivered as calls
//! carrying their message id, and removed, together with the receiver's delivery marker,
//! once the receiving turn committed. Transient failures are retried with capped
//! exponential backoff; permanent ones (unknown method, application error) are logged,
//! counted and dropped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use crate::message::{CallChain, CallError};
use crate::silo::Silo;
use crate::storage::{MessageId, OutboxEntry};

/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 256;
/// Undelivered messages read per scan.
const SCAN_BATCH: usize = 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A grain that traps on a message is given this many tries before the message is dropped.
const MAX_TRAPPED_ATTEMPTS: u32 = 5;
/// Pending messages are rescanned this often even without a wake-up.
const RESCAN: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Outbox {
    wake: Notify,
    /// Ids being delivered, so a rescan does not start a second delivery of one message.
    in_flight: Mutex<HashSet<MessageId>>,
}

impl Outbox {
    /// Called after a commit that staged sends.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn run(silo: Arc<Silo>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let pending = match silo.storage.pending_sends(None, SCAN_BATCH) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    Vec::new()
                }
            };
            for (id, entry) in pending {
                if !silo.outbox.claim(id) {
                    continue;
                }
                // The scan may predate the acknowledgement of a delivery that finished
                // since; delivering again would hit a receiver whose marker is gone.
                if !matches!(silo.storage.is_pending(id), Ok(true)) {
                    silo.outbox.release(id);
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let silo = silo.clone();
                silo.tasks.clone().spawn(async move {
                    deliver(&silo, id, entry).await;
                    silo.outbox.release(id);
                    drop(permit);
                });
            }
            tokio::select! {
                _ = silo.lifecycle.stopping.cancelled() => return,
                _ = silo.outbox.wake.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    fn claim(&self, id: MessageId) -> bool {
        self.lock().insert(id)
    }

    fn release(&self, id: MessageId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
        // No code panics while holding this lock.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn deliver(silo: &Arc<Silo>, id: MessageId, entry: OutboxEntry) {
    let mut trapped = 0;
    let mut backoff = BACKOFF_BASE;
    loop {
        if !silo.lifecycle.is_admitting() {
            return; // delivery resumes from storage after restart
        }
        let deadline = Instant::now() + silo.config.call_timeout();
        let result = silo
            .deliver(&entry, id, CallChain::default(), deadline)
            .await;
        let give_up = match &result {
            Ok(_) => false,
            Err(CallError::Trapped(_)) => {
                trapped += 1;
                trapped >= MAX_TRAPPED_ATTEMPTS
            }
            Err(e) => !e.is_transient(),
        };
        match result {
            Ok(_) => {
                silo.metrics.sends_delivered.inc();
            }
            Err(e) if give_up => {
                silo.metrics.sends_dropped.inc();
                tracing::error!(
                    id, from = %entry.sender, to = %entry.target, method = %entry.method,
                    error = %e, "dropping one-way message after a permanent error"
                );
            }
            Err(e) => {
                tracing::debug!(id, to = %entry.target, error = %e, "delivery failed; retrying");
                tokio::select! {
                    _ = silo.lifecycle.stopping.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        if let Err(e) = silo.storage.ack_send(id, &entry.target).wait().await {
            tracing::warn!(id, error = %e, "could not remove a delivered message; it will be redelivered and dropped as a duplicate");
        }
        return;
    }
}

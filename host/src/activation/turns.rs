//! [`Activation`]: a grain's live instance and one turn of each kind (call, reminder
//! tick, timer tick, deactivation), with commit-then-reply and discard-on-failure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::{Store, UpdateDeadline};

use super::{ActivationInfo, DeactivationReason};
use crate::drain::Lifecycle;
use crate::grain_id::GrainId;
use crate::message::{Call, CallChain, CallError, Message};
use crate::reminders::{self, ReminderAdvance, ReminderChange, TickOutcome};
use crate::runtime::bindings::Grain;
use crate::runtime::bindings::types::ReminderTick as WitTick;
use crate::runtime::host::now_ms;
use crate::runtime::limits::MemoryLimitExceeded;
use crate::runtime::{GrainHost, GrainKind, Turn, out_of_memory};
use crate::silo::Silo;
use crate::storage::{DueReminder, MessageId, TurnCommit};

/// A live instance: the store and the bindings to its exports.
struct Live {
    store: Store<GrainHost>,
    grain: Grain,
}

pub struct Activation {
    silo: Arc<Silo>,
    info: Arc<ActivationInfo>,
    kind: Arc<GrainKind>,
    live: Option<Live>,
    turn_timeout: Duration,
    /// Set by the activation's task, under the lock, before it closes the mailbox and
    /// deactivates: a caller that takes the lock afterwards must not run a turn here.
    closed: bool,
}

/// An activation behind its turn lock. Whoever holds the lock runs the next turn: the
/// activation's own task (timer ticks, queued messages, deactivation) or, when the
/// activation is idle, the caller itself, which saves two task switches per call.
pub type SharedActivation = Arc<tokio::sync::Mutex<Activation>>;

/// A trap raised by the epoch callback when a turn overruns its deadline.
#[derive(Debug)]
struct TurnDeadline;

impl std::fmt::Display for TurnDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("turn deadline exceeded")
    }
}

impl std::error::Error for TurnDeadline {}

impl Activation {
    pub fn new(
        silo: Arc<Silo>,
        info: Arc<ActivationInfo>,
        kind: Arc<GrainKind>,
    ) -> SharedActivation {
        let turn_timeout = silo.config.turn_timeout(&kind.name);
        Arc::new(tokio::sync::Mutex::new(Self {
            silo,
            info,
            kind,
            live: None,
            turn_timeout,
            closed: false,
        }))
    }

    /// Whether a caller holding the lock may run a turn (the task has not closed it).
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// Called by the task, holding the lock, before it stops taking messages.
    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    /// When the live instance's next timer is due; none while draining, so no tick starts
    /// once the drain began.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        if !self.silo.lifecycle.is_admitting() {
            return None;
        }
        self.live.as_ref()?.store.data().timers.next_due()
    }

    pub(super) async fn timer_turn(&mut self, silo: &Silo) {
        if !silo.lifecycle.is_admitting() {
            return;
        }
        let _running = silo.lifecycle.turn_started();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some(name) = live.store.data_mut().timers.take_due(Instant::now()) else {
            return;
        };
        silo.metrics.timer_ticks.inc();
        let deadline = Instant::now() + self.turn_timeout;
        begin_turn(&mut live.store, CallChain::default(), deadline);
        let outcome = guest(
            &silo.lifecycle,
            deadline,
            live.grain.call_on_timer(&mut live.store, &name),
        )
        .await;
        let result = match outcome {
            Ok(Ok(Ok(()))) => self.commit(None, None).await,
            Ok(Ok(Err(message))) => {
                self.live = None;
                Err(CallError::App(message))
            }
            Ok(Err(trap)) => Err(self.trapped("on-timer", trap)),
            Err(stopped) => Err(self.stopped(stopped)),
        };
        if let Err(e) = result {
            // The instance (and with it every timer) is gone; the next message reactivates.
            tracing::warn!(grain = %self.info.id, timer = %name, error = %e, "timer tick failed; the activation's timers are cancelled");
        }
    }

    pub(super) async fn turn(&mut self, silo: &Silo, message: Message) {
        let _running = silo.lifecycle.turn_started();
        match message {
            Message::Call(call) => {
                let Call {
                    method,
                    payload,
                    chain,
                    deadline,
                    delivery,
                    reply,
                } = *call;
                let started = Instant::now();
                let deadline = deadline.min(started + self.turn_timeout);
                let span = turn_span(&self.info.id, &method);
                let result = if started >= deadline {
                    Err(CallError::Deadline)
                } else {
                    self.call_turn(silo, &method, &payload, chain, deadline, delivery)
                        .instrument(span.clone())
                        .await
                };
                record_turn(&span, started, &result);
                let _ = reply.send(result);
            }
            Message::Reminder(tick) => {
                let started = Instant::now();
                let span = turn_span(&self.info.id, "on-reminder");
                let result = if started >= tick.deadline {
                    Err(CallError::Deadline)
                } else {
                    self.reminder_turn(silo, &tick.due, tick.attempt)
                        .instrument(span.clone())
                        .await
                };
                record_turn(&span, started, &result);
                let _ = tick.reply.send(result);
            }
        }
        self.info.pending.fetch_sub(1, Ordering::AcqRel);
    }

    async fn call_turn(
        &mut self,
        silo: &Silo,
        method: &str,
        payload: &[u8],
        chain: CallChain,
        deadline: Instant,
        delivery: Option<MessageId>,
    ) -> Result<Vec<u8>, CallError> {
        if let Some(id) = delivery {
            let seen = self.silo.storage.was_delivered(&self.info.id, id);
            if seen.map_err(|e| self.storage_failed(e))? {
                tracing::debug!(grain = %self.info.id, id, "duplicate delivery dropped");
                return Ok(Vec::new());
            }
            tracing::debug!(grain = %self.info.id, id, method, "delivery");
        }
        let live = self.live().await?;
        begin_turn(&mut live.store, chain, deadline);
        let outcome = guest(
            &silo.lifecycle,
            deadline,
            live.grain.call_handle(&mut live.store, method, payload),
        )
        .await;
        match outcome {
            Ok(Ok(Ok(reply))) if reply.len() > self.silo.config.max_payload_bytes => {
                // A reply nobody may receive fails the turn like any error: nothing commits.
                self.live = None;
                tracing::warn!(grain = %self.info.id, method, bytes = reply.len(), "reply over max_payload_bytes");
                Err(CallError::TooLarge(
                    self.silo.config.max_payload_bytes as u64,
                ))
            }
            Ok(Ok(Ok(reply))) => {
                self.commit(delivery, None).await?;
                Ok(reply)
            }
            Ok(Ok(Err(grain_error))) => {
                self.live = None;
                Err(grain_error.into())
            }
            Ok(Err(trap)) => Err(self.trapped(method, trap)),
            Err(stopped) => Err(self.stopped(stopped)),
        }
    }

    /// The live instance, activating one (instantiate, load state, `activate`) if needed.
    async fn live(&mut self) -> Result<&mut Live, CallError> {
        if self.live.is_none() {
            // Boxed: instantiation is the largest future of a turn and runs once, so it
            // should not size the task every idle activation keeps.
            let live = Box::pin(self.activate()).await?;
            self.live = Some(live);
        }
        // Set just above when it was empty.
        Ok(self.live.as_mut().expect("live instance"))
    }

    async fn activate(&mut self) -> Result<Live, CallError> {
        let id = self.info.id.clone();
        let state = self
            .silo
            .storage
            .load_state(&id)
            .map_err(|e| self.storage_failed(e))?;
        let memory_limit = self.silo.config.memory_limit(&id.kind);
        let host = GrainHost::new(self.silo.clone(), id, memory_limit);
        let mut store = Store::new(&self.silo.runtime.engine, host);
        store.limiter(|host| &mut host.limits);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().turn.deadline {
                Err(wasmtime::Error::new(TurnDeadline))
            } else {
                // tokio's yield_now defers the task until the I/O driver and other tasks ran;
                // a plain wake would let busy guests starve the listener.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        let deadline = Instant::now() + self.turn_timeout;
        begin_turn(&mut store, CallChain::default(), deadline);
        let grain = match self.kind.pre.instantiate_async(&mut store).await {
            Ok(grain) => grain,
            Err(e) => return Err(self.instantiate_failed(e)),
        };
        let activated = guest(
            &self.silo.lifecycle,
            deadline,
            grain.call_activate(&mut store, state.as_deref()),
        )
        .await;
        match activated {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(message))) => {
                let incident = incident_id();
                tracing::error!(incident, grain = %self.info.id, %message, "activate returned an error");
                return Err(CallError::Trapped(incident));
            }
            Ok(Err(trap)) => return Err(self.trapped("activate", trap)),
            Err(stopped) => return Err(self.stopped(stopped)),
        }
        self.live = Some(Live { store, grain });
        self.commit(None, None).await?;
        Ok(self.live.take().expect("set just above"))
    }

    /// Commits what the turn staged (with the delivery marker or reminder advance that
    /// belongs to it) and waits until it is durable; then applies its timer changes.
    async fn commit(
        &mut self,
        delivery: Option<MessageId>,
        advance: Option<ReminderAdvance>,
    ) -> Result<(), CallError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let host = live.store.data_mut();
        let placeholder = Turn::new(CallChain::default(), host.turn.deadline);
        let turn = std::mem::replace(&mut host.turn, placeholder);
        if !turn.timers.is_empty() {
            host.timers.apply(turn.timers, Instant::now());
            self.info.timers_changed.notify_one();
        }
        let read_only = turn.state.is_none()
            && turn.sends.is_empty()
            && turn.reminders.is_empty()
            && delivery.is_none()
            && advance.is_none();
        if read_only {
            return Ok(());
        }
        let mut commit = TurnCommit::new(self.info.id.clone());
        commit.state = turn.state;
        commit.sends = turn.sends;
        commit.delivered = delivery;
        commit.reminders = turn.reminders.into_values().collect();
        commit.advance = advance;
        self.write(commit).await
    }

    /// Writes a commit and waits until it is durable, then wakes whoever acts on it.
    async fn write(&mut self, commit: TurnCommit) -> Result<(), CallError> {
        if commit.is_empty() {
            return Ok(());
        }
        let sends = !commit.sends.is_empty();
        let scheduled: Vec<DueReminder> = commit
            .reminders
            .iter()
            .filter_map(|c| match c {
                ReminderChange::Put(r) => Some(DueReminder {
                    due_ms: r.next_due_ms,
                    grain: self.info.id.clone(),
                    name: r.name.clone(),
                }),
                ReminderChange::Delete(_) => None,
            })
            .collect();
        match self.silo.storage.commit(commit).wait().await {
            Ok(()) => {
                if sends {
                    self.silo.outbox.wake();
                }
                for due in scheduled {
                    self.silo.reminders.scheduled(due);
                }
                Ok(())
            }
            Err(e) => Err(self.storage_failed(e)),
        }
    }

    /// Runs one reminder tick. Errors returned here are about reaching the grain
    /// (retried by the reminder service); what the grain does with the tick, including
    /// failing or trapping, is recorded in the reminder and answered `Ok`.
    async fn reminder_turn(
        &mut self,
        silo: &Silo,
        due: &DueReminder,
        attempt: u32,
    ) -> Result<(), CallError> {
        let record = self
            .silo
            .storage
            .load_reminder(&self.info.id, &due.name)
            .map_err(|e| self.storage_failed(e))?;
        let Some(record) = record.filter(|r| r.next_due_ms == due.due_ms) else {
            return Ok(()); // cancelled or moved since it was loaded: a stale tick
        };
        let now = now_ms();
        let firing = reminders::schedule::plan(&record.schedule, record.missed, due.due_ms, now);
        let mut advance = ReminderAdvance {
            name: due.name.clone(),
            expected_due_ms: due.due_ms,
            next_due_ms: firing.next_due_ms,
            outcome: TickOutcome {
                scheduled_ms: firing.scheduled_ms,
                fired_ms: now,
                attempts: attempt,
                error: None,
            },
        };
        if !firing.fire {
            advance.outcome.error = Some(format!("skipped {} missed ticks", firing.missed));
            return self.write_advance(advance).await;
        }
        let deadline = Instant::now() + self.turn_timeout;
        self.silo
            .metrics
            .observe_reminder_lag(now.saturating_sub(firing.scheduled_ms));
        let live = self.live().await?;
        begin_turn(&mut live.store, CallChain::default(), deadline);
        let tick = WitTick {
            scheduled_ms: firing.scheduled_ms,
            fired_ms: now,
            missed: firing.missed,
            idempotency_key: format!("{}@{}", due.name, firing.scheduled_ms),
        };
        let outcome = guest(
            &silo.lifecycle,
            deadline,
            live.grain
                .call_on_reminder(&mut live.store, &due.name, &tick),
        )
        .await;
        match outcome {
            Ok(Ok(Ok(()))) => {
                self.commit(None, Some(advance)).await?;
                self.silo.metrics.reminder_ticks("fired").inc();
                Ok(())
            }
            Ok(Ok(Err(message))) => {
                self.live = None;
                advance.outcome.error = Some(message);
                self.write_advance(advance).await
            }
            Ok(Err(trap)) => {
                let e = self.trapped("on-reminder", trap);
                advance.outcome.error = Some(e.to_string());
                self.write_advance(advance).await
            }
            Err(stopped) => Err(self.stopped(stopped)),
        }
    }

    /// Records a tick whose turn committed nothing else (skipped, or the grain failed).
    async fn write_advance(&mut self, advance: ReminderAdvance) -> Result<(), CallError> {
        self.silo.metrics.reminder_ticks("fired").inc();
        let mut commit = TurnCommit::new(self.info.id.clone());
        commit.advance = Some(advance);
        self.write(commit).await
    }

    pub(super) async fn deactivate(&mut self, reason: DeactivationReason) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let deadline = Instant::now() + self.turn_timeout;
        begin_turn(&mut live.store, CallChain::default(), deadline);
        let outcome = tokio::time::timeout_at(
            deadline.into(),
            live.grain.call_deactivate(&mut live.store, reason.to_wit()),
        )
        .await;
        match outcome {
            Ok(Ok(Ok(()))) => {
                if let Err(e) = self.commit(None, None).await {
                    tracing::warn!(grain = %self.info.id, error = %e, "deactivate commit failed");
                }
            }
            Ok(Ok(Err(message))) => {
                tracing::warn!(grain = %self.info.id, %message, "deactivate returned an error");
            }
            Ok(Err(trap)) => {
                self.trapped("deactivate", trap);
            }
            Err(_) => {
                tracing::warn!(grain = %self.info.id, "deactivate overran its deadline; its writes are discarded")
            }
        }
        self.live = None;
        tracing::debug!(grain = %self.info.id, ?reason, "deactivated");
    }

    /// Drops an instance whose call was cut short; its staged changes go with it.
    fn stopped(&mut self, stopped: Stopped) -> CallError {
        self.live = None;
        match stopped {
            Stopped::Deadline => CallError::Deadline,
            Stopped::Interrupted => {
                tracing::warn!(grain = %self.info.id, "turn interrupted by the drain");
                CallError::Draining
            }
        }
    }

    /// Logs a trap under a fresh incident id and drops the poisoned instance.
    fn trapped(&mut self, export: &str, trap: wasmtime::Error) -> CallError {
        self.live = None;
        if trap.downcast_ref::<TurnDeadline>().is_some() {
            return CallError::Deadline;
        }
        let incident = incident_id();
        if let Some(memory) = trap.downcast_ref::<MemoryLimitExceeded>() {
            tracing::error!(incident, grain = %self.info.id, export, "{memory}");
            return CallError::MemoryLimit(incident);
        }
        tracing::error!(incident, grain = %self.info.id, export, error = ?trap, "grain trapped");
        CallError::Trapped(incident)
    }

    fn instantiate_failed(&self, e: wasmtime::Error) -> CallError {
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            tracing::warn!(grain = %self.info.id, error = %e, "instance pool exhausted");
            return CallError::Overloaded;
        }
        if out_of_memory(&e) {
            tracing::error!(grain = %self.info.id, error = %e, "instantiation failed: the process is out of memory or memory mappings (was vm.max_map_count lowered after start-up?)");
            return CallError::Overloaded;
        }
        let incident = incident_id();
        tracing::error!(incident, grain = %self.info.id, error = ?e, "instantiation failed");
        CallError::Trapped(incident)
    }

    /// Storage failures are retryable from the caller's side; the instance is dropped
    /// because its memory may hold effects that never became durable.
    fn storage_failed(&mut self, e: crate::storage::StorageError) -> CallError {
        self.live = None;
        tracing::error!(grain = %self.info.id, error = %e, "storage failed; turn not acknowledged");
        CallError::Overloaded
    }
}

/// Stages a fresh turn and re-arms the epoch deadline from now: an armed deadline that
/// lapsed while the activation sat idle would make the turn's first epoch check run the
/// callback and yield to tokio before doing any work.
fn begin_turn(store: &mut Store<GrainHost>, chain: CallChain, deadline: Instant) {
    store.data_mut().turn = Turn::new(chain, deadline);
    store.set_epoch_deadline(1);
}

/// The span of one turn: guest log lines inside it carry the grain and method, and
/// `RUST_LOG=granary::turn=debug` prints one line per turn with its outcome and duration.
fn turn_span(id: &GrainId, method: &str) -> tracing::Span {
    tracing::debug_span!(
        target: "granary::turn",
        "turn",
        kind = %id.kind,
        key = %id.key,
        method,
    )
}

fn record_turn<T>(span: &tracing::Span, started: Instant, result: &Result<T, CallError>) {
    // Clock reads are a measurable share of a short turn: none for a line nobody logs.
    if span.is_disabled() {
        return;
    }
    let outcome = result.as_ref().map_or_else(CallError::code, |_| "ok");
    let micros = started.elapsed().as_micros() as u64;
    span.in_scope(|| tracing::debug!(target: "granary::turn", outcome, micros, "turn"));
}

/// Why a guest call did not return.
enum Stopped {
    Deadline,
    Interrupted,
}

/// Runs a guest export under the turn's deadline and the drain's interrupt. Dropping the
/// call future abandons the instance mid-call; callers discard it.
async fn guest<T>(
    lifecycle: &Lifecycle,
    deadline: Instant,
    call: impl Future<Output = T>,
) -> Result<T, Stopped> {
    let call = tokio::time::timeout_at(deadline.into(), call);
    // Only a call that has to wait registers with the shared token (under its mutex);
    // the flag is checked first on every poll, as the token was with `biased`.
    let interrupt = lifecycle.interrupt.cancelled();
    tokio::pin!(call, interrupt);
    std::future::poll_fn(|cx| {
        if lifecycle.is_interrupted() {
            return Poll::Ready(Err(Stopped::Interrupted));
        }
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(|_| Stopped::Deadline));
        }
        interrupt
            .as_mut()
            .poll(cx)
            .map(|()| Err(Stopped::Interrupted))
    })
    .await
}

fn incident_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

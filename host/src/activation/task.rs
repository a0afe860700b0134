//! The activation's task: it runs timer ticks and the messages that found the activation
//! busy, watches the idle timeout, and deactivates the activation when asked. It takes the
//! turn lock only for a turn, so an idle activation can be run by its callers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{ActivationInfo, DeactivationReason, SharedActivation};
use crate::message::Message;
use crate::silo::Silo;

pub fn spawn(
    silo: Arc<Silo>,
    activation: SharedActivation,
    info: Arc<ActivationInfo>,
    mailbox: mpsc::Receiver<Message>,
) {
    let tasks = silo.tasks.clone();
    tasks.spawn(run(silo, activation, info, mailbox));
}

async fn run(
    silo: Arc<Silo>,
    activation: SharedActivation,
    info: Arc<ActivationInfo>,
    mut mailbox: mpsc::Receiver<Message>,
) {
    let idle = silo.config.idle_timeout();
    // Pinned once: a fresh `cancelled()` per iteration would register and unregister
    // a waiter on every turn.
    let deactivate = info.deactivate.cancelled();
    // Two timers for the life of the activation, moved rather than recreated: the idle
    // timer is only re-armed when it fires early (a turn ran since it was set).
    let idle_timer = tokio::time::sleep(idle);
    let tick_timer = tokio::time::sleep(Duration::ZERO);
    // Registered with the `Notify` once, not once per iteration.
    let changed = info.timers_changed.notified();
    tokio::pin!(deactivate, idle_timer, tick_timer, changed);
    let mut last_turn = Instant::now();
    // When the next timer is due, as of the last turn this task ran or the last change a
    // caller's turn announced. None once admission stopped: a tick already armed then
    // runs no turn.
    let mut timer_due = activation.lock().await.next_timer();
    let reason = loop {
        // A tick already due runs without a trip through the timer wheel (deactivation
        // still goes first).
        if let Some(due) = timer_due
            && due <= Instant::now()
            && !info.deactivate.is_cancelled()
        {
            timer_due = run_tick(&activation, &silo).await;
            last_turn = Instant::now();
            continue;
        }
        if let Some(due) = timer_due
            && tick_timer.deadline() != due.into()
        {
            tick_timer.as_mut().reset(due.into());
        }
        tokio::select! {
            biased;
            _ = &mut deactivate => break info.reason(),
            _ = &mut tick_timer, if timer_due.is_some() => {
                timer_due = run_tick(&activation, &silo).await;
                last_turn = Instant::now();
            }
            message = mailbox.recv() => match message {
                Some(message) => {
                    let mut turns = activation.lock().await;
                    turns.turn(&silo, message).await;
                    timer_due = turns.next_timer();
                    last_turn = Instant::now();
                }
                // The catalog holds a sender while the activation is registered.
                None => break DeactivationReason::Drain,
            },
            // A turn run by a caller changed the timers: re-arm from them.
            () = &mut changed => {
                changed.set(info.timers_changed.notified());
                timer_due = activation.lock().await.next_timer();
            }
            _ = &mut idle_timer => {
                // Turns run by callers do not pass through this task; the catalog saw them.
                let quiet_until = last_turn.max(silo.catalog.last_active_at(&info)) + idle;
                if Instant::now() < quiet_until {
                    idle_timer.as_mut().reset(quiet_until.into());
                } else if silo.catalog.begin_idle_deactivation(&info) {
                    break DeactivationReason::Idle;
                } else {
                    idle_timer.as_mut().reset((Instant::now() + idle).into());
                }
            }
        }
    };
    // Held to the end: no caller runs a turn here any more, and those that take the lock
    // after it is released find the activation closed.
    let mut activation = activation.lock().await;
    activation.close();
    // No new messages from here on; those already queued still get their turn.
    mailbox.close();
    while let Some(message) = mailbox.recv().await {
        activation.turn(&silo, message).await;
    }
    activation.deactivate(reason).await;
    drop(activation);
    silo.catalog.remove(&info);
    info.stopped.cancel();
}

/// Runs one timer tick (if one is still due) and returns when the next is due, under one
/// hold of the turn lock.
async fn run_tick(activation: &SharedActivation, silo: &Silo) -> Option<Instant> {
    let mut turns = activation.lock().await;
    turns.timer_turn(silo).await;
    turns.next_timer()
}

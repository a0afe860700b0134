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
    let timers_changed = activation.lock().await.timers_changed();
    // Pinned once: a fresh `cancelled()` per iteration would register and unregister
    // a waiter on every turn.
    let deactivate = info.deactivate.cancelled();
    // Two timers for the life of the activation, moved rather than recreated: the idle
    // timer is only re-armed when it fires early (a turn ran since it was set).
    let idle_timer = tokio::time::sleep(idle);
    let tick_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deactivate, idle_timer, tick_timer);
    let mut last_turn = Instant::now();
    let reason = loop {
        // None once admission stopped; a tick already armed then runs no turn.
        let timer_due = activation.lock().await.next_timer();
        // A tick already due runs without a trip through the timer wheel (the branch
        // order of the select below, deactivation first, still holds).
        if let Some(due) = timer_due
            && due <= Instant::now()
            && !info.deactivate.is_cancelled()
        {
            activation.lock().await.timer_turn(&silo).await;
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
                activation.lock().await.timer_turn(&silo).await;
                last_turn = Instant::now();
            }
            message = mailbox.recv() => match message {
                Some(message) => {
                    activation.lock().await.turn(&silo, message).await;
                    last_turn = Instant::now();
                }
                // The catalog holds a sender while the activation is registered.
                None => break DeactivationReason::Drain,
            },
            // A turn run by a caller changed the timers: re-arm from them.
            () = timers_changed.notified() => {}
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

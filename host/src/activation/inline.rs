//! A turn run by its caller. The caller holds the activation's turn lock, so the turn
//! costs no trip through the activation's task; but a caller may go away mid-turn (an
//! HTTP client disconnects, a timeout fires), and a turn must never be abandoned
//! half-run: its guest call would be cut short and the work after its commit (timers,
//! outbox, reminder index) skipped. So the turn lives on the heap, and if the caller drops
//! it unfinished it is handed to a task of its own that finishes it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OwnedMutexGuard;

use super::Activation;
use crate::message::Message;
use crate::silo::Silo;

/// Runs `message` as a turn of the activation whose lock the caller holds. The reply goes
/// to the message's reply channel, as for a queued message.
pub async fn run_inline(
    silo: Arc<Silo>,
    mut activation: OwnedMutexGuard<Activation>,
    message: Message,
) {
    FinishOnDrop(Some(Box::pin(async move {
        activation.turn(&silo, message).await;
    })))
    .await;
}

type Turn = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A future that, dropped before it completed, finishes in a task of its own.
struct FinishOnDrop(Option<Turn>);

impl Future for FinishOnDrop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(turn) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        let done = turn.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) nothing can finish the turn; its
        // staged changes are then discarded with it, as for a crash.
        if let Some(turn) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(turn);
        }
    }
}

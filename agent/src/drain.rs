//! The shutdown signal shared by the daemon's tasks: a `watch` channel that turns `true` once.

use tokio::sync::watch;

/// Makes the shutdown pair: the sender stops everything, each task holds a receiver.
pub fn channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Resolves once shutdown has been signalled (or its sender is gone).
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

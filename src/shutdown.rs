//! Graceful shutdown as a small value passed to each background task (no global flag).

use tokio::sync::watch;

/// Fires once, when the process is asked to stop.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A task's view of the shutdown signal; clone one per task.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves when shutdown was triggered (or the trigger was dropped).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

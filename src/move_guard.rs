//! In-process coordination between group moves and pushes proxied by this gateway.
//!
//! The danger: the rebalancer lists the owner, decides the owner lacks a group, and `PUT`s an older copy there,
//! just after a client's push of that group reached the owner. The copy would overwrite the newer push.
//!
//! The cure, for pushes through this replica:
//! - Outside a pass that moves groups, a push costs two atomic increments and one atomic load (the fast path).
//! - A moving pass first switches every new push to the slow path, then waits until no fast-path push is still in
//!   flight, and only then lists the nodes it plans from. From then on every push registers its group here; the
//!   rebalancer neither copies nor deletes a group that saw a push during the pass (the next pass re-plans it
//!   from fresh listings), and a push waits while its group is being copied or deleted, so it lands after the
//!   copy and wins.
//!
//! Pushes through other replicas, or straight to a Pushgateway, are not seen here (see the README).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Shared between the push handler and the rebalancer. Cheap to clone.
#[derive(Clone, Default)]
pub struct MoveCoordinator {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A moving pass is running: pushes take the slow path.
    pass_active: AtomicBool,
    /// Pushes on the fast path right now.
    unguarded_in_flight: AtomicUsize,
    /// Groups touched during the pass, by ring key.
    groups: Mutex<HashMap<Vec<u8>, GroupState>>,
    /// Woken when a group stops being moved.
    move_finished: Notify,
}

#[derive(Debug, Default)]
struct GroupState {
    pushes_in_flight: usize,
    /// A push of this group went through this replica since the pass began (or was in flight when it began).
    pushed_during_pass: bool,
    /// The rebalancer is copying or deleting this group right now.
    moving: bool,
}

/// Held by a push while it is forwarded.
pub struct PushPermit<'c> {
    coordinator: &'c Inner,
    /// `None` on the fast path.
    ring_key: Option<Vec<u8>>,
}

/// Held by the rebalancer while it copies or deletes one group.
pub struct MoveLock<'c> {
    coordinator: &'c Inner,
    ring_key: Vec<u8>,
}

/// The fast-path pushes did not finish in time, so the pass cannot safely start.
#[derive(Debug, thiserror::Error)]
#[error(
    "{in_flight} pushes were still being forwarded after {waited:?}; not moving groups this pass"
)]
pub struct DrainTimeout {
    pub in_flight: usize,
    pub waited: Duration,
}

impl Inner {
    fn groups(&self) -> MutexGuard<'_, HashMap<Vec<u8>, GroupState>> {
        // The map stays consistent even if a holder panicked: every update is a single field change.
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MoveCoordinator {
    pub fn new() -> MoveCoordinator {
        MoveCoordinator::default()
    }

    /// Called by the push handler right before forwarding; hold the permit until the node answered.
    /// `ring_key` is only computed when a pass is running.
    pub async fn push_permit(&self, ring_key: impl FnOnce() -> Vec<u8>) -> PushPermit<'_> {
        let inner = &*self.inner;
        // SeqCst on both sides (here and in `begin_pass`): either this push sees the pass, or the pass sees this
        // push in the counter and waits for it.
        inner.unguarded_in_flight.fetch_add(1, Ordering::SeqCst);
        if !inner.pass_active.load(Ordering::SeqCst) {
            return PushPermit {
                coordinator: inner,
                ring_key: None,
            };
        }
        inner.unguarded_in_flight.fetch_sub(1, Ordering::SeqCst);
        let ring_key = ring_key();
        loop {
            let finished = inner.move_finished.notified();
            let mut finished = std::pin::pin!(finished);
            // Register for the wake-up before looking, so a move that ends in between is not missed.
            finished.as_mut().enable();
            {
                let mut groups = inner.groups();
                let state = groups.entry(ring_key.clone()).or_default();
                state.pushed_during_pass = true;
                if !state.moving {
                    state.pushes_in_flight += 1;
                    return PushPermit {
                        coordinator: inner,
                        ring_key: Some(ring_key),
                    };
                }
            }
            finished.await;
        }
    }

    /// Starts a moving pass: every later push registers its group; waits until the pushes already on the fast
    /// path are done, at most `max_wait`. On error the pass is over again.
    pub async fn begin_pass(&self, max_wait: Duration) -> Result<(), DrainTimeout> {
        let inner = &*self.inner;
        inner.pass_active.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        loop {
            let in_flight = inner.unguarded_in_flight.load(Ordering::SeqCst);
            if in_flight == 0 {
                return Ok(());
            }
            if started.elapsed() >= max_wait {
                self.end_pass();
                return Err(DrainTimeout {
                    in_flight,
                    waited: max_wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Ends a moving pass: pushes go back to the fast path. Groups with a push still in flight stay marked, so
    /// the next pass leaves them alone too.
    pub fn end_pass(&self) {
        let inner = &*self.inner;
        inner.pass_active.store(false, Ordering::SeqCst);
        inner.groups().retain(|_, state| state.pushes_in_flight > 0);
    }

    /// Locks one group for a copy or delete; `None` when a push of it went through this replica during the pass
    /// (the owner then holds a client's value that the listing did not show, so the move must be re-planned).
    pub fn lock_group(&self, ring_key: Vec<u8>) -> Option<MoveLock<'_>> {
        let inner = &*self.inner;
        let mut groups = inner.groups();
        let state = groups.entry(ring_key.clone()).or_default();
        // A push in flight always set `pushed_during_pass`, so this also never waits for one.
        if state.pushed_during_pass || state.moving {
            return None;
        }
        state.moving = true;
        Some(MoveLock {
            coordinator: inner,
            ring_key,
        })
    }

    /// Whether a push of this group went through this replica during the pass.
    pub fn pushed_during_pass(&self, ring_key: &[u8]) -> bool {
        self.inner
            .groups()
            .get(ring_key)
            .is_some_and(|state| state.pushed_during_pass)
    }
}

impl Drop for PushPermit<'_> {
    fn drop(&mut self) {
        match self.ring_key.take() {
            None => {
                self.coordinator
                    .unguarded_in_flight
                    .fetch_sub(1, Ordering::SeqCst);
            }
            Some(ring_key) => {
                let pass_active = self.coordinator.pass_active.load(Ordering::SeqCst);
                let mut groups = self.coordinator.groups();
                if let Some(state) = groups.get_mut(&ring_key) {
                    state.pushes_in_flight = state.pushes_in_flight.saturating_sub(1);
                    if !pass_active && state.pushes_in_flight == 0 {
                        groups.remove(&ring_key);
                    }
                }
            }
        }
    }
}

impl Drop for MoveLock<'_> {
    fn drop(&mut self) {
        {
            let mut groups = self.coordinator.groups();
            if let Some(state) = groups.get_mut(&self.ring_key) {
                state.moving = false;
            }
        }
        self.coordinator.move_finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pushes_take_the_fast_path_outside_a_pass() {
        let coordinator = MoveCoordinator::new();
        let permit = coordinator
            .push_permit(|| unreachable!("no key needed"))
            .await;
        assert!(permit.ring_key.is_none());
        drop(permit);
        assert_eq!(
            coordinator.inner.unguarded_in_flight.load(Ordering::SeqCst),
            0
        );
    }

    #[tokio::test]
    async fn a_pass_waits_for_fast_path_pushes_and_times_out_if_they_hang() {
        let coordinator = MoveCoordinator::new();
        let permit = coordinator.push_permit(Vec::new).await;
        let err = coordinator
            .begin_pass(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err.in_flight, 1);
        assert!(!coordinator.inner.pass_active.load(Ordering::SeqCst));
        drop(permit);
        coordinator
            .begin_pass(Duration::from_millis(20))
            .await
            .unwrap();
        coordinator.end_pass();
    }

    #[tokio::test]
    async fn a_group_pushed_during_the_pass_is_not_moved() {
        let coordinator = MoveCoordinator::new();
        coordinator
            .begin_pass(Duration::from_secs(1))
            .await
            .unwrap();
        let permit = coordinator.push_permit(|| b"g".to_vec()).await;
        assert!(coordinator.lock_group(b"g".to_vec()).is_none());
        drop(permit);
        assert!(
            coordinator.lock_group(b"g".to_vec()).is_none(),
            "still pushed during the pass"
        );
        assert!(coordinator.lock_group(b"other".to_vec()).is_some());
        coordinator.end_pass();
        assert!(coordinator.inner.groups().is_empty());
    }

    #[tokio::test]
    async fn a_push_waits_while_its_group_is_moved() {
        let coordinator = MoveCoordinator::new();
        coordinator
            .begin_pass(Duration::from_secs(1))
            .await
            .unwrap();
        let lock = coordinator.lock_group(b"g".to_vec()).unwrap();
        let waiting = coordinator.clone();
        let push = tokio::spawn(async move {
            let _permit = waiting.push_permit(|| b"g".to_vec()).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!push.is_finished(), "the push must wait for the move");
        drop(lock);
        tokio::time::timeout(Duration::from_secs(5), push)
            .await
            .unwrap()
            .unwrap();
        assert!(coordinator.pushed_during_pass(b"g"));
        coordinator.end_pass();
    }

    #[tokio::test]
    async fn a_push_in_flight_when_a_pass_ends_keeps_its_group_marked_for_the_next_pass() {
        let coordinator = MoveCoordinator::new();
        coordinator
            .begin_pass(Duration::from_secs(1))
            .await
            .unwrap();
        let permit = coordinator.push_permit(|| b"g".to_vec()).await;
        coordinator.end_pass();
        coordinator
            .begin_pass(Duration::from_secs(1))
            .await
            .unwrap();
        assert!(coordinator.lock_group(b"g".to_vec()).is_none());
        drop(permit);
        coordinator.end_pass();
        assert!(coordinator.inner.groups().is_empty());
    }
}

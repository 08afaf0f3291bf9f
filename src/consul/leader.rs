//! One leader among gateway replicas, by Consul's lock recipe: a session with a TTL, renewed every TTL/3, that
//! acquires a KV key; every replica watches the key with blocking reads and tries again when it is free.
//!
//! The result is a `watch::Receiver<bool>` ("this replica is the leader"). It turns false on any error or when
//! the session is lost, before anything else happens, so a consumer never acts as leader on stale belief. On
//! shutdown (or when every receiver is dropped) the lock is released and the session destroyed, so another
//! replica takes over at once instead of after the TTL.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::index::{backoff, next_index, pause_before_next};
use super::{ConsulClient, ConsulError, SessionRequest};
use crate::shutdown::Shutdown;

/// Consul invalidates a session that was not renewed for this long (up to twice as long in practice), so a crashed
/// leader is replaced after 10-20 s. 10 s is the shortest TTL Consul accepts.
pub const SESSION_TTL: Duration = Duration::from_secs(10);
/// After a session is invalidated, Consul refuses the lock to everyone for this long, so an old leader that
/// has not noticed yet stops before a new one starts.
pub const LOCK_DELAY: Duration = Duration::from_secs(1);
/// Longest blocking read of the key; renewals interrupt it without losing the index.
const KV_WAIT: Duration = Duration::from_secs(60);

/// Why a campaign (the life of one session) ended.
enum Ended {
    Stopped,
    SessionLost,
    Failed(ConsulError),
}

/// Starts electing a leader on `key`. The receiver reads `true` while this process holds the lock.
pub fn spawn_leader_election(
    client: ConsulClient,
    key: String,
    shutdown: Shutdown,
) -> watch::Receiver<bool> {
    let (leader_tx, leader_rx) = watch::channel(false);
    tokio::spawn(run(client, key, leader_tx, shutdown));
    leader_rx
}

async fn run(
    client: ConsulClient,
    key: String,
    leader: watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    let session_request = SessionRequest {
        name: "dynamic-sharding".to_string(),
        ttl: format!("{}s", SESSION_TTL.as_secs()),
        behavior: "release".to_string(),
        lock_delay: format!("{}s", LOCK_DELAY.as_secs()),
    };
    let mut failures: u32 = 0;
    loop {
        leader.send_if_modified(|is_leader| std::mem::replace(is_leader, false));
        let created = tokio::select! {
            created = client.create_session(&session_request) => created,
            _ = shutdown.recv() => return,
            _ = leader.closed() => return,
        };
        let ended = match created {
            Ok(session) => {
                tracing::debug!(%key, %session, "created Consul session for leader election");
                let ended = campaign(
                    &client,
                    &key,
                    &session,
                    &leader,
                    &mut shutdown,
                    &mut failures,
                )
                .await;
                let was_leader = leader.send_replace(false);
                if was_leader {
                    tracing::info!(%key, "no longer the leader");
                }
                // Destroying the session releases the lock too; on errors it is best effort (the TTL cleans up).
                if was_leader && matches!(ended, Ended::Stopped) {
                    if let Err(error) = client.release_lock(&key, &session).await {
                        tracing::warn!(%key, %error, "cannot release the leader lock; it expires with the session");
                    }
                }
                if !matches!(ended, Ended::SessionLost) {
                    let _ = client.destroy_session(&session).await;
                }
                ended
            }
            Err(error) => Ended::Failed(error),
        };
        match ended {
            Ended::Stopped => return,
            Ended::SessionLost => {
                tracing::warn!(%key, "Consul session expired; starting a new one");
                failures = 0;
            }
            Ended::Failed(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(%key, %error, "leader election failed; retrying with backoff");
                } else {
                    tracing::debug!(%key, %error, failures, "leader election still failing");
                }
                let wait = backoff(failures, rand::random::<f64>());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.recv() => return,
                    _ = leader.closed() => return,
                }
            }
        }
    }
}

/// Holds one session: renews it, watches the key, acquires it whenever it is free.
async fn campaign(
    client: &ConsulClient,
    key: &str,
    session: &str,
    leader: &watch::Sender<bool>,
    shutdown: &mut Shutdown,
    failures: &mut u32,
) -> Ended {
    let renew_every = SESSION_TTL / 3;
    let mut renew = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
    let mut index: u64 = 0;
    let mut holder: Option<String> = None;
    let mut pause = Duration::ZERO;
    loop {
        let mut wait = KV_WAIT;
        if holder.is_none() {
            match client.acquire_lock(key, session).await {
                Ok(true) => {
                    if !leader.send_replace(true) {
                        tracing::info!(%key, "became the leader");
                    }
                }
                // Free but refused: the lock delay of a lost session is running. Look again once it is over
                // instead of blocking on a key that will not change.
                Ok(false) => wait = LOCK_DELAY * 2,
                Err(error) => return Ended::Failed(error),
            }
        }
        let sent = index;
        let delay = pause;
        let query = async move {
            tokio::time::sleep(delay).await;
            client.kv_entry(key, sent, wait).await
        };
        tokio::pin!(query);
        let answer = loop {
            tokio::select! {
                answer = &mut query => break answer,
                _ = renew.tick() => match client.renew_session(session).await {
                    Ok(true) => {}
                    Ok(false) => return Ended::SessionLost,
                    Err(error) => return Ended::Failed(error),
                },
                _ = shutdown.recv() => return Ended::Stopped,
                _ = leader.closed() => return Ended::Stopped,
            }
        };
        match answer {
            Ok(answer) => {
                *failures = 0;
                index = next_index(sent, answer.index);
                pause = pause_before_next(sent, index);
                holder = answer.value.and_then(|entry| entry.session);
                let is_leader = holder.as_deref() == Some(session);
                if leader.send_replace(is_leader) && !is_leader {
                    tracing::warn!(%key, holder = ?holder, "lost the leader lock");
                }
            }
            Err(error) => return Ended::Failed(error),
        }
    }
}

//! The repair task: once a group's suspect nodes answer again and have settled, write the group's acknowledged
//! value again to its owner (with replication: to every node of its owner set) and delete it from suspects
//! outside that set (see the module above).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Method;

use super::{Journal, PendingRepair};
use crate::config::Config;
use crate::move_guard::MoveCoordinator;
use crate::pushgateway::{api, HttpClient, NodeError, RequestError};
use crate::routing::RingHandle;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// How often pending repairs are looked at (only while there are any).
const TICK: Duration = Duration::from_millis(250);

/// What the repair task needs.
pub struct Dependencies {
    pub journal: Journal,
    pub ring: RingHandle,
    pub client: HttpClient,
    pub config: Arc<ArcSwap<Config>>,
    pub coordinator: MoveCoordinator,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
}

/// Why one repair attempt did not finish.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the ring is empty")]
    NoOwner,
}

pub fn spawn(dependencies: Dependencies) {
    tokio::spawn(run(dependencies));
}

async fn run(mut deps: Dependencies) {
    // Node -> since when it has answered every probe, once it answered after its last ambiguous write.
    let mut answering: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = deps.shutdown.recv() => return,
        }
        if deps.journal.is_empty() {
            answering.clear();
            continue;
        }
        let config = deps.config.load_full();
        let pending = deps.journal.pending();
        let mut last_failure: HashMap<&str, Instant> = HashMap::new();
        for repair in &pending {
            for (node, suspect) in &repair.suspects {
                let latest = last_failure
                    .entry(node.as_str())
                    .or_insert(suspect.failed_at);
                *latest = (*latest).max(suspect.failed_at);
            }
        }
        answering.retain(|node, _| last_failure.contains_key(node.as_str()));
        for (node, failed) in &last_failure {
            let probe = api::healthy(&deps.client, node, config.health_check.timeout).await;
            let now = Instant::now();
            match probe {
                Ok(()) => {
                    let since = answering.entry(node.to_string()).or_insert(now);
                    if *since < *failed {
                        *since = now;
                    }
                }
                _ => {
                    answering.remove(*node);
                }
            }
        }
        let settle = config.ambiguous_writes.settle_time;
        let now = Instant::now();
        for repair in pending {
            let settled = repair.suspects.iter().all(|(node, suspect)| {
                suspect.is_settled(answering.get(node).copied(), now, settle)
            });
            if !settled {
                continue;
            }
            if repair.writes.is_empty() {
                // No push of the group was acknowledged after the ambiguous one: nothing to restore.
                tracing::debug!(grouping_key = %repair.key, "ambiguous write without a later acknowledged push; nothing to repair");
                deps.journal
                    .forget(&repair.ring_key, "no_acknowledged_write");
                continue;
            }
            match repair_group(&deps, &config, &repair).await {
                Ok(Some(owner)) => {
                    deps.metrics.faults.ambiguous_repaired.inc();
                    tracing::info!(
                        grouping_key = %repair.key,
                        %owner,
                        suspects = %repair.suspects.keys().cloned().collect::<Vec<_>>().join(","),
                        writes = repair.writes.len(),
                        "ambiguous write repaired: the acknowledged value is on the owner again"
                    );
                }
                Ok(None) => {}
                Err(RepairError::Request(error))
                    if error
                        .status()
                        .is_some_and(|status| status.is_client_error()) =>
                {
                    tracing::warn!(grouping_key = %repair.key, %error, "the owner refused the repaired value; forgetting the ambiguous write");
                    deps.journal.forget(&repair.ring_key, "rejected");
                }
                Err(error) => {
                    tracing::debug!(grouping_key = %repair.key, %error, "ambiguous write not repaired yet; retrying");
                }
            }
        }
    }
}

/// Writes the acknowledged value again and deletes suspect copies. `Ok(None)`: the group changed meanwhile (a
/// newer push, or a new ambiguous write); the next tick looks again.
async fn repair_group(
    deps: &Dependencies,
    config: &Config,
    repair: &PendingRepair,
) -> Result<Option<String>, RepairError> {
    let _group = repair.lock.lock().await;
    if deps.journal.version(&repair.ring_key) != Some(repair.version) {
        return Ok(None);
    }
    let _permit = deps
        .coordinator
        .push_permit(|| repair.ring_key.clone())
        .await;
    // With replication the acknowledged value goes to every node of the owner set, and only suspects outside it
    // lose their copy; without, the owner set is the owner alone.
    let table = deps.ring.load_full();
    let owners: Vec<String> = table
        .ring
        .owner_set(&repair.ring_key, config.replication_factor)
        .iter()
        .map(|node| node.to_string())
        .collect();
    let owner = owners.first().cloned().ok_or(RepairError::NoOwner)?;
    let timeout = config.proxy.upstream_timeout;
    for node in &owners {
        for write in &repair.writes {
            let group_write = api::GroupWrite {
                method: write.method.clone(),
                path_and_query: &write.path_and_query,
                content_type: write.headers.content_type.clone(),
                content_encoding: write.headers.content_encoding.clone(),
                body: write.body.clone(),
            };
            let result = api::write_group(&deps.client, node, group_write, timeout).await;
            refused_or_unreachable(result, &write.method, node, &write.path_and_query)?;
        }
    }
    let path = repair.key.to_push_path();
    for suspect in repair.suspects.keys().filter(|node| !owners.contains(node)) {
        let result = api::delete_group(&deps.client, suspect, &path, timeout).await;
        refused_or_unreachable(result, &Method::DELETE, suspect, &path)?;
    }
    Ok(deps
        .journal
        .remove_if_unchanged(&repair.ring_key, repair.version)
        .then_some(owner))
}

/// A node's answer to one repair request, with the request named in the error.
fn refused_or_unreachable(
    result: Result<(), NodeError>,
    method: &Method,
    node: &str,
    path: &str,
) -> Result<(), RepairError> {
    result.map_err(|error| RequestError::new(method.clone(), node, path, error).into())
}

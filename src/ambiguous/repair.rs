//! The repair task: once a group's suspect nodes answer again and have settled, write the group's acknowledged
//! value again to its owner and delete it from suspects that are not the owner (see the module above).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;

use super::{Journal, PendingRepair};
use crate::config::Config;
use crate::rebalance::MoveCoordinator;
use crate::routing::RingHandle;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use crate::upstream::{self, HttpClient, UpstreamError};

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
    #[error("{method} {node}{path}: {source}")]
    Unreachable {
        method: Method,
        node: String,
        path: String,
        source: UpstreamError,
    },
    #[error("{method} {node}{path} answered {status}")]
    Refused {
        method: Method,
        node: String,
        path: String,
        status: StatusCode,
    },
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
            let probe = upstream::get(
                &deps.client,
                node,
                "/-/healthy",
                config.health_check.timeout,
            )
            .await;
            let now = Instant::now();
            match probe {
                Ok(response) if response.status().is_success() => {
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
                Err(RepairError::Refused { status, .. }) if status.is_client_error() => {
                    tracing::warn!(grouping_key = %repair.key, %status, "the owner refused the repaired value; forgetting the ambiguous write");
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
    let owner = deps
        .ring
        .load()
        .ring
        .owner(&repair.ring_key)
        .map(str::to_string)
        .ok_or(RepairError::NoOwner)?;
    let timeout = config.proxy.upstream_timeout;
    for write in &repair.writes {
        let mut request = Request::new(Full::new(write.body.clone()));
        *request.method_mut() = write.method.clone();
        *request.uri_mut() = uri(&deps.client, &owner, &write.path_and_query)?;
        let headers = request.headers_mut();
        if let Some(value) = &write.headers.content_type {
            headers.insert(header::CONTENT_TYPE, value.clone());
        }
        if let Some(value) = &write.headers.content_encoding {
            headers.insert(header::CONTENT_ENCODING, value.clone());
        }
        send(deps, request, &owner, &write.path_and_query, timeout).await?;
    }
    let path = repair.key.to_push_path();
    for suspect in repair.suspects.keys().filter(|node| **node != owner) {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::DELETE;
        *request.uri_mut() = uri(&deps.client, suspect, &path)?;
        send(deps, request, suspect, &path, timeout).await?;
    }
    Ok(deps
        .journal
        .remove_if_unchanged(&repair.ring_key, repair.version)
        .then_some(owner))
}

fn uri(client: &HttpClient, node: &str, path: &str) -> Result<http::Uri, RepairError> {
    client
        .node_url(node, path)
        .parse()
        .map_err(|e: http::uri::InvalidUri| RepairError::Unreachable {
            method: Method::PUT,
            node: node.to_string(),
            path: path.to_string(),
            source: UpstreamError::Request(e.to_string()),
        })
}

async fn send(
    deps: &Dependencies,
    request: Request<Full<Bytes>>,
    node: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), RepairError> {
    let method = request.method().clone();
    let response = upstream::send(&deps.client, request, timeout)
        .await
        .map_err(|source| RepairError::Unreachable {
            method: method.clone(),
            node: node.to_string(),
            path: path.to_string(),
            source,
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(RepairError::Refused {
            method,
            node: node.to_string(),
            path: path.to_string(),
            status: response.status(),
        })
    }
}

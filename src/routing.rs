//! The current ring snapshot: built from membership snapshots, read lock-free by request handlers.
//!
//! One task owns the rebuild: it watches the membership channel (and the config, for the algorithm) and builds
//! a new immutable [`RoutingTable`] only when the healthy node set or the algorithm actually changed. Handlers
//! `load()` the current table from an `ArcSwap`; the rebalancer subscribes to the same changes on a watch channel.
//!
//! The ring holds the healthy nodes minus those passive failure detection ejected ([`crate::outlier`]); should
//! ejections ever leave no node, they are ignored rather than answer every push with 503. Ejection is about
//! pushes only: reads and discovery use every healthy node ([`RoutingTable::readable`]), so the groups an
//! ejected node holds stay visible while its health check passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::membership::Membership;
use crate::node_route::{NodeRoute, RequestCounters};
use crate::outlier::OutlierDetector;
use crate::ring::{Algorithm, Ring};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// An immutable ring plus what it was built from.
pub struct RoutingTable {
    pub ring: Ring,
    /// Per-node push-path data, parallel to `ring.nodes()` (index with `ring.owner_index`).
    pub routes: Vec<Arc<NodeRoute>>,
    /// Request counters for answers no node served (rejected input, redirects, no healthy node).
    pub unserved: RequestCounters,
    /// The nodes reads and `/-/sd` use: every healthy node, ejected ones included (an ejected node's pushes
    /// fail or hang, but it still holds its groups), sorted. The ring's nodes are a subset.
    pub readable: Vec<String>,
    /// Incremented on every rebuild.
    pub generation: u64,
    pub built_at: SystemTime,
}

impl RoutingTable {
    /// The table for `nodes`. With `previous`, the ring is derived from the previous one (same result as a
    /// fresh build, less work after a small membership change), and the previous table lends its nodes'
    /// connection pools to the same nodes in the new one.
    fn new(
        algorithm: Algorithm,
        nodes: &[String],
        readable: Vec<String>,
        generation: u64,
        previous: Option<&RoutingTable>,
        detector: &OutlierDetector,
    ) -> RoutingTable {
        let ring = match previous {
            Some(previous) => previous.ring.rebuild(algorithm, nodes),
            None => Ring::build(algorithm, nodes),
        };
        // `routes` is parallel to `ring.nodes()`, which is sorted: a binary search finds a node's old route.
        let previous_pool = |node: &String| {
            let previous = previous?;
            let index = previous.ring.nodes().binary_search(node).ok()?;
            previous.routes.get(index)?.pool.clone()
        };
        RoutingTable {
            routes: ring
                .nodes()
                .iter()
                .map(|node| {
                    Arc::new(NodeRoute::new(
                        node,
                        previous_pool(node),
                        detector.counters(node),
                    ))
                })
                .collect(),
            unserved: RequestCounters::new(Arc::from("")),
            ring,
            readable,
            generation,
            built_at: SystemTime::now(),
        }
    }
}

/// Lock-free access to the current table for request handlers.
#[derive(Clone)]
pub struct RingHandle(Arc<ArcSwap<RoutingTable>>);

impl RingHandle {
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }
}

/// Starts the ring builder. The returned watch receiver sees every new table (for the rebalancer).
pub fn spawn(
    mut membership: watch::Receiver<Arc<Membership>>,
    mut config: watch::Receiver<Arc<Config>>,
    detector: OutlierDetector,
    metrics: Metrics,
    mut shutdown: Shutdown,
) -> (RingHandle, watch::Receiver<Arc<RoutingTable>>) {
    let mut ejected = detector.subscribe();
    let algorithm = config.borrow_and_update().ring_algorithm;
    let healthy = membership.borrow_and_update().healthy_nodes();
    let initial = Arc::new(RoutingTable::new(
        algorithm,
        &healthy,
        healthy.clone(),
        0,
        None,
        &detector,
    ));
    // The first table may already hold nodes (probes can finish before the builder starts).
    metrics.ring_nodes.set(initial.ring.nodes().len() as i64);
    let handle = RingHandle(Arc::new(ArcSwap::new(initial.clone())));
    let (table_tx, table_rx) = watch::channel(initial);
    let task_handle = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = membership.changed() => if changed.is_err() { return },
                changed = config.changed() => if changed.is_err() { return },
                changed = ejected.changed() => if changed.is_err() { return },
                _ = shutdown.recv() => return,
            }
            let algorithm = config.borrow_and_update().ring_algorithm;
            let readable = membership.borrow_and_update().healthy_nodes();
            let healthy = ring_nodes(readable.clone(), &ejected.borrow_and_update());
            let current = task_handle.load_full();
            if current.ring.algorithm() == algorithm
                && current.ring.nodes() == healthy.as_slice()
                && current.readable == readable
            {
                continue;
            }
            let started = Instant::now();
            let table = Arc::new(RoutingTable::new(
                algorithm,
                &healthy,
                readable,
                current.generation + 1,
                Some(&current),
                &detector,
            ));
            let elapsed = started.elapsed();
            if current.ring.algorithm() != algorithm {
                tracing::info!(from = ?current.ring.algorithm(), to = ?algorithm, "ring algorithm changed");
            }
            if current.ring.nodes() != healthy.as_slice() {
                metrics.membership_changes.inc();
                tracing::info!(
                    old = %current.ring.nodes().join(","),
                    new = %healthy.join(","),
                    generation = table.generation,
                    rebuild_us = elapsed.as_micros() as u64,
                    "ring node set changed, ring rebuilt"
                );
            }
            metrics.ring_nodes.set(healthy.len() as i64);
            metrics.ring_rebuild_seconds.set(elapsed.as_secs_f64());
            task_handle.0.store(table.clone());
            table_tx.send_replace(table);
        }
    });
    (handle, table_rx)
}

/// The healthy nodes that are not ejected; all healthy nodes if ejections would leave none.
fn ring_nodes(healthy: Vec<String>, ejected: &BTreeSet<String>) -> Vec<String> {
    if ejected.is_empty() {
        return healthy;
    }
    let kept: Vec<String> = healthy
        .iter()
        .filter(|node| !ejected.contains(*node))
        .cloned()
        .collect();
    if kept.is_empty() {
        healthy
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_nodes_leave_the_ring_unless_none_would_remain() {
        let healthy = || vec!["a".to_string(), "b".to_string()];
        let ejected = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            ring_nodes(healthy(), &ejected(&["a"])),
            vec!["b".to_string()]
        );
        assert_eq!(ring_nodes(healthy(), &ejected(&[])), healthy());
        assert_eq!(ring_nodes(healthy(), &ejected(&["a", "b"])), healthy());
    }
}

//! Consistent-hash rings: which node owns a push, and which node takes over if the owner is unreachable.
//!
//! A [`Ring`] is an immutable snapshot built once per membership change from the set of healthy nodes
//! (`host:port` strings) and shared behind an `Arc`; lookups take `&self` and allocate nothing. Two algorithms:
//! - [`Algorithm::Rendezvous`] (default, `rendezvous`): a 2^16-slot table, each slot owned by its
//!   highest-random-weight node. Exact minimal movement on membership change, near-even load, O(1) lookup.
//!   The caller passes the canonical grouping-key bytes. Design notes in `ring/rendezvous.rs`.
//! - [`Algorithm::GoCompatible`] (`go-compatible`): the original Go tool's murmur3 token ring, reproduced bit for
//!   bit so that a mixed fleet (or a migration) routes every push to the same node. The caller passes the
//!   request's percent-decoded path. The original's rules, as read from its source, in `ring/go_compatible.rs`.
//!
//! Both are deterministic across processes and platforms and depend only on the set of nodes, not on the order
//! they are listed in. Pure logic: no I/O.

mod go_compatible;
mod murmur3;
mod rendezvous;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use go_compatible::GoRing;
use rendezvous::RendezvousTable;

/// Which consistent-hash algorithm a [`Ring`] uses; configured as `rendezvous` or `go-compatible`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Highest-random-weight slot table over the canonical grouping key (this project's design).
    #[default]
    Rendezvous,
    /// The original Go `dynamic-sharding` tool's murmur3 ring over the request path.
    GoCompatible,
}

impl Algorithm {
    /// Every algorithm, in the order they are documented.
    pub const ALL: [Algorithm; 2] = [Algorithm::Rendezvous, Algorithm::GoCompatible];

    /// The configuration name (`rendezvous`, `go-compatible`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rendezvous => "rendezvous",
            Algorithm::GoCompatible => "go-compatible",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An algorithm name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash ring algorithm {given:?}: use \"rendezvous\" or \"go-compatible\"")]
pub struct UnknownAlgorithm {
    /// The name that was given.
    pub given: String,
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(name: &str) -> Result<Algorithm, UnknownAlgorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == name)
            .ok_or_else(|| UnknownAlgorithm {
                given: name.to_string(),
            })
    }
}

/// An immutable ring snapshot over a node set ("host:port" strings). Build once per membership change, share
/// via `Arc`.
pub struct Ring {
    algorithm: Algorithm,
    /// `rendezvous`: each node's name hash, parallel to `nodes`, for owner sets beyond the table's top two.
    node_hashes: Vec<u64>,
    /// Sorted and deduplicated; the tables refer to nodes by index into this list.
    nodes: Vec<String>,
    table: Table,
}

enum Table {
    Rendezvous(RendezvousTable),
    GoCompatible(GoRing),
}

impl Ring {
    /// Builds the ring for `nodes`. Duplicates are dropped and the order of `nodes` does not matter: the same
    /// set always yields the same ring.
    pub fn build(algorithm: Algorithm, nodes: &[String]) -> Ring {
        let sorted_nodes = sorted_unique(nodes);
        let table = match algorithm {
            Algorithm::Rendezvous => Table::Rendezvous(RendezvousTable::build(&sorted_nodes)),
            Algorithm::GoCompatible => Table::GoCompatible(GoRing::build(&sorted_nodes)),
        };
        Ring {
            algorithm,
            node_hashes: node_hashes(algorithm, &sorted_nodes),
            nodes: sorted_nodes,
            table,
        }
    }

    /// The ring for `nodes`, exactly what [`Ring::build`] returns, derived from this ring where that is
    /// cheaper: a [`Algorithm::Rendezvous`] ring after a small membership change rescoring only the slots the
    /// change can affect (see `ring/rendezvous.rs`). Other cases build from scratch.
    pub fn rebuild(&self, algorithm: Algorithm, nodes: &[String]) -> Ring {
        let sorted_nodes = sorted_unique(nodes);
        let table = match (&self.table, algorithm) {
            (Table::Rendezvous(previous), Algorithm::Rendezvous) => Table::Rendezvous(
                RendezvousTable::rebuild(&self.nodes, previous, &sorted_nodes),
            ),
            _ => return Ring::build(algorithm, &sorted_nodes),
        };
        Ring {
            algorithm,
            node_hashes: node_hashes(algorithm, &sorted_nodes),
            nodes: sorted_nodes,
            table,
        }
    }

    /// The algorithm this ring was built with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The nodes on the ring, sorted and deduplicated.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// True when the ring has no nodes (every lookup answers `None`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node owning `key`; `None` only when the ring has no nodes.
    ///
    /// `key` is the canonical grouping-key bytes for [`Algorithm::Rendezvous`] and the percent-decoded request
    /// path (e.g. `b"/metrics/job/a"`) for [`Algorithm::GoCompatible`].
    #[inline]
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        let index = match &self.table {
            Table::Rendezvous(table) => table.owner_index(key),
            Table::GoCompatible(ring) => ring.owner_index(key),
        }?;
        self.node(index)
    }

    /// The next distinct node after the owner in ring order: the node that would own `key` if the owner left
    /// (exactly so for [`Algorithm::Rendezvous`]; for [`Algorithm::GoCompatible`] it is the next token's node
    /// clockwise that differs from the owner). `None` with fewer than 2 nodes. Used for one retry when the
    /// owner is unreachable.
    #[inline]
    pub fn successor(&self, key: &[u8]) -> Option<&str> {
        let index = match &self.table {
            Table::Rendezvous(table) => table.successor_index(key),
            Table::GoCompatible(ring) => ring.successor_index(key),
        }?;
        self.node(index)
    }

    /// Like [`Ring::owner`], as an index into [`Ring::nodes`], so callers can keep per-node data in a parallel
    /// slice instead of looking the name up again.
    #[inline]
    pub fn owner_index(&self, key: &[u8]) -> Option<usize> {
        match &self.table {
            Table::Rendezvous(table) => table.owner_index(key),
            Table::GoCompatible(ring) => ring.owner_index(key),
        }
    }

    /// Like [`Ring::successor`], as an index into [`Ring::nodes`].
    #[inline]
    pub fn successor_index(&self, key: &[u8]) -> Option<usize> {
        match &self.table {
            Table::Rendezvous(table) => table.successor_index(key),
            Table::GoCompatible(ring) => ring.successor_index(key),
        }
    }

    /// The owner set of `key` for replication factor `factor`: its owner followed by the next `factor - 1`
    /// distinct nodes in ring order (fewer when the ring has fewer nodes; empty without nodes), as indices into
    /// [`Ring::nodes`]. The first is [`Ring::owner_index`], the second [`Ring::successor_index`]; the rest are
    /// the nodes that would become owner and successor as the earlier ones leave (`rendezvous`: the slot's
    /// highest-random-weight order; `go-compatible`: the next distinct nodes clockwise). Like routing, it depends
    /// only on the node set.
    pub fn owner_set_indices(&self, key: &[u8], factor: usize) -> Vec<usize> {
        let count = factor.min(self.nodes.len());
        let mut indices = Vec::with_capacity(count);
        match (&self.table, count) {
            (_, 0) => {}
            (_, 1) => indices.extend(self.owner_index(key)),
            (Table::Rendezvous(_), _) => {
                rendezvous::ranked_indices(&self.node_hashes, key, count, &mut indices)
            }
            (Table::GoCompatible(ring), _) => ring.ranked_indices(key, count, &mut indices),
        }
        indices
    }

    /// [`Ring::owner_set_indices`] as node names.
    pub fn owner_set(&self, key: &[u8], factor: usize) -> Vec<&str> {
        self.owner_set_indices(key, factor)
            .into_iter()
            .filter_map(|index| self.node(index))
            .collect()
    }

    /// Each node's share of the key space, parallel to [`Ring::nodes`], summing to 1 (empty without nodes): the
    /// fraction of slots it owns (`rendezvous`), or of the 32-bit hash circle its tokens own (`go-compatible`).
    /// For the status page; O(slots) or O(tokens), so computed per page view, not per push.
    pub fn shares(&self) -> Vec<f64> {
        let counts = match &self.table {
            Table::Rendezvous(table) => table.slots_per_node(self.nodes.len()),
            Table::GoCompatible(ring) => ring.arc_per_node(self.nodes.len()),
        };
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return vec![0.0; counts.len()];
        }
        counts
            .iter()
            .map(|&count| count as f64 / total as f64)
            .collect()
    }

    fn node(&self, index: usize) -> Option<&str> {
        self.nodes.get(index).map(String::as_str)
    }
}

/// The name hashes owner sets are ranked by (`rendezvous` only; `go-compatible` walks its tokens).
fn node_hashes(algorithm: Algorithm, sorted_nodes: &[String]) -> Vec<u64> {
    match algorithm {
        Algorithm::Rendezvous => sorted_nodes
            .iter()
            .map(|node| rendezvous::node_hash(node))
            .collect(),
        Algorithm::GoCompatible => Vec::new(),
    }
}

/// The ring's node list: sorted (index order is name order, which tie-breaks rely on) and deduplicated.
fn sorted_unique(nodes: &[String]) -> Vec<String> {
    let mut sorted_nodes = nodes.to_vec();
    sorted_nodes.sort_unstable();
    sorted_nodes.dedup();
    sorted_nodes
}

impl fmt::Debug for Ring {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tables are large and meaningless to a reader; the algorithm and node set identify the ring.
        formatter
            .debug_struct("Ring")
            .field("algorithm", &self.algorithm)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

//! The `go-compatible` algorithm: the token ring of the original Go `dynamic-sharding` tool, reproduced exactly.
//!
//! The original (`pkg/consistent`, a fork of `stathat/consistent`, used by `pkg/sd/rings.go`) works like this:
//! - every node `host:port` gets [`POINTS_PER_NODE`] tokens, token `i` being murmur3-32 (seed 0) of the decimal
//!   `i` followed by the node name, e.g. `"0" + "10.0.0.1:9091"`;
//! - nodes are added one after the other in sorted order, and tokens live in a map, so when two nodes produce
//!   the same token the node added later (the one sorting last) keeps it;
//! - a key (the request's decoded URL path) goes to the node of the first token strictly greater than the key's
//!   murmur3-32 hash, wrapping around to the smallest token.
//!
//! The successor of a key is the node of the next token clockwise (after the owner's token) that belongs to a
//! different node, as the original's `GetTwo` defines it.

use super::murmur3::murmur3_x86_32;

/// Tokens per node (`numberOfReplicas` in the original's `pkg/sd/rings.go`).
pub(crate) const POINTS_PER_NODE: u32 = 500;

/// Marks "no other node" in [`GoRing::next_distinct`].
const NO_NODE: u32 = u32::MAX;

/// The sorted token ring.
pub(crate) struct GoRing {
    /// Token values, ascending and unique.
    tokens: Box<[u32]>,
    /// The node index owning each token.
    owners: Box<[u32]>,
    /// For each token, the first node clockwise after it that differs from its owner ([`NO_NODE`] if none).
    /// Precomputed so that `successor` is O(1) instead of a scan.
    next_distinct: Box<[u32]>,
}

/// The key hash the ring is searched with: murmur3-32, seed 0, of the key bytes.
#[inline]
pub(crate) fn key_hash(key: &[u8]) -> u32 {
    murmur3_x86_32(key, 0)
}

/// The token of point `point` of `node`: murmur3-32 of `decimal(point) + node` (for tests; `build` reuses a
/// buffer instead).
#[cfg(test)]
pub(crate) fn token(point: u32, node: &str) -> u32 {
    let mut buffer = point.to_string().into_bytes();
    buffer.extend_from_slice(node.as_bytes());
    murmur3_x86_32(&buffer, 0)
}

impl GoRing {
    /// Builds the ring for `sorted_nodes`, which must be sorted and deduplicated: insertion in sorted order is
    /// what decides token collisions in the original.
    pub(crate) fn build(sorted_nodes: &[String]) -> GoRing {
        let prefixes: Vec<String> = (0..POINTS_PER_NODE)
            .map(|point| point.to_string())
            .collect();
        // Token in the high half, node index in the low half.
        let mut entries: Vec<u64> =
            Vec::with_capacity(sorted_nodes.len() * POINTS_PER_NODE as usize);
        let mut buffer = Vec::new();
        for (index, node) in sorted_nodes.iter().enumerate() {
            for prefix in &prefixes {
                buffer.clear();
                buffer.extend_from_slice(prefix.as_bytes());
                buffer.extend_from_slice(node.as_bytes());
                let token = murmur3_x86_32(&buffer, 0);
                entries.push((u64::from(token) << 32) | index as u64);
            }
        }
        GoRing::from_entries(entries)
    }

    /// Builds the ring from `(token << 32) | node_index` entries listed in insertion order.
    fn from_entries(mut entries: Vec<u64>) -> GoRing {
        // Sorting orders by token, then by node index, which is insertion order.
        entries.sort_unstable();
        let mut tokens: Vec<u32> = Vec::with_capacity(entries.len());
        let mut owners: Vec<u32> = Vec::with_capacity(entries.len());
        for entry in entries {
            let token = (entry >> 32) as u32;
            let owner = entry as u32;
            // Equal tokens arrive in insertion order; the last one wins, as with the original's map writes.
            if tokens.last() == Some(&token) {
                if let Some(last_owner) = owners.last_mut() {
                    *last_owner = owner;
                }
            } else {
                tokens.push(token);
                owners.push(owner);
            }
        }
        let next_distinct = next_distinct_owners(&owners);
        GoRing {
            tokens: tokens.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
            next_distinct: next_distinct.into_boxed_slice(),
        }
    }

    /// Position of the first token strictly greater than the key's hash, wrapping to 0; `None` if empty.
    #[inline]
    fn position(&self, key: &[u8]) -> Option<usize> {
        if self.tokens.is_empty() {
            return None;
        }
        let hash = key_hash(key);
        let position = self.tokens.partition_point(|&token| token <= hash);
        Some(if position == self.tokens.len() {
            0
        } else {
            position
        })
    }

    /// Index of the node owning `key`; `None` when there are no nodes.
    #[inline]
    pub(crate) fn owner_index(&self, key: &[u8]) -> Option<usize> {
        let position = self.position(key)?;
        self.owners.get(position).map(|&index| index as usize)
    }

    /// Index of the next distinct node clockwise after the owner; `None` with fewer than two nodes on the ring.
    #[inline]
    pub(crate) fn successor_index(&self, key: &[u8]) -> Option<usize> {
        let position = self.position(key)?;
        match self.next_distinct.get(position) {
            Some(&index) if index != NO_NODE => Some(index as usize),
            _ => None,
        }
    }

    /// Token values with their owner indices, in ring order (for tests).
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.tokens
            .iter()
            .zip(self.owners.iter())
            .map(|(&token, &owner)| (token, owner as usize))
    }
}

/// For each position, the owner of the first later position (cyclically) whose owner differs.
fn next_distinct_owners(owners: &[u32]) -> Vec<u32> {
    let count = owners.len();
    let mut next_distinct = vec![NO_NODE; count];
    // A boundary is a position whose clockwise neighbour has another owner; without one there is one node only.
    let Some(boundary) =
        (0..count).find(|&position| owners[position] != owners[(position + 1) % count])
    else {
        return next_distinct;
    };
    next_distinct[boundary] = owners[(boundary + 1) % count];
    // Walk counter-clockwise from the boundary once around, each position taking its neighbour's answer.
    let mut position = boundary;
    for _ in 1..count {
        let previous = (position + count - 1) % count;
        next_distinct[previous] = if owners[previous] != owners[position] {
            owners[position]
        } else {
            next_distinct[position]
        };
        position = previous;
    }
    next_distinct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_distinct_wraps_around_the_ring() {
        assert_eq!(next_distinct_owners(&[0, 0, 1, 1, 0]), vec![1, 1, 0, 0, 1]);
        assert_eq!(next_distinct_owners(&[2, 2, 2]), vec![NO_NODE; 3]);
        assert_eq!(next_distinct_owners(&[]), Vec::<u32>::new());
        assert_eq!(next_distinct_owners(&[0, 1, 2]), vec![1, 2, 0]);
    }

    #[test]
    fn each_node_gets_its_points_in_sorted_token_order() {
        let nodes = vec!["10.0.0.1:9091".to_string(), "10.0.0.2:9091".to_string()];
        let ring = GoRing::build(&nodes);
        let tokens: Vec<(u32, usize)> = ring.tokens().collect();
        assert_eq!(
            tokens.len(),
            2 * POINTS_PER_NODE as usize,
            "no collisions expected here"
        );
        assert!(tokens.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert!(tokens.contains(&(token(0, "10.0.0.1:9091"), 0)));
        assert!(tokens.contains(&(token(499, "10.0.0.2:9091"), 1)));
    }

    #[test]
    fn token_collision_goes_to_the_node_inserted_last() {
        // Node 1 and node 0 both claim token 7; node 1 was inserted later (it sorts after node 0).
        let ring = GoRing::from_entries(vec![
            (7u64 << 32) | 1,
            (3u64 << 32) | 1,
            7u64 << 32,
            9u64 << 32,
        ]);
        let tokens: Vec<(u32, usize)> = ring.tokens().collect();
        assert_eq!(tokens, vec![(3, 1), (7, 1), (9, 0)]);
    }
}

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

/// One token on the ring and the node owning it, side by side so that a lookup's search and owner read touch
/// the same cache line.
#[derive(Clone, Copy)]
struct Point {
    token: u32,
    owner: u32,
}

/// The sorted token ring.
pub(crate) struct GoRing {
    /// Ascending by token; tokens are unique.
    points: Box<[Point]>,
    /// For each token, the first node clockwise after it that differs from its owner ([`NO_NODE`] if none).
    /// Precomputed so that `successor` is O(1) instead of a scan.
    next_distinct: Box<[u32]>,
    /// `bucket_starts[b]` is the position of the first token whose top bits (`token >> bucket_shift`) are at
    /// least `b` (one extra entry at the end). A lookup binary-searches one bucket of a few tokens instead of the
    /// whole ring: at 1000 nodes that is two cache misses instead of about nineteen.
    bucket_starts: Box<[u32]>,
    bucket_shift: u32,
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
        // Two to four tokens per bucket (one cache line), at most 2^16 buckets (a 256 KiB index).
        let bucket_bits = (usize::BITS - tokens.len().leading_zeros())
            .saturating_sub(2)
            .clamp(1, 16);
        let bucket_shift = u32::BITS - bucket_bits;
        let bucket_starts = bucket_starts(&tokens, bucket_shift);
        GoRing {
            points: tokens
                .iter()
                .zip(&owners)
                .map(|(&token, &owner)| Point { token, owner })
                .collect(),
            next_distinct: next_distinct.into_boxed_slice(),
            bucket_starts: bucket_starts.into_boxed_slice(),
            bucket_shift,
        }
    }

    /// Position of the first token strictly greater than the key's hash, wrapping to 0; `None` if empty.
    #[inline]
    fn position(&self, key: &[u8]) -> Option<usize> {
        self.position_of_hash(key_hash(key))
    }

    #[inline]
    fn position_of_hash(&self, hash: u32) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        // Tokens in earlier buckets are below `hash` and tokens in later buckets above it, so the first token
        // greater than `hash` is inside this bucket or is the first token after it.
        let bucket = (hash >> self.bucket_shift) as usize;
        let start = self
            .bucket_starts
            .get(bucket)
            .map_or(0, |&start| start as usize);
        let end = self
            .bucket_starts
            .get(bucket + 1)
            .map_or(self.points.len(), |&end| end as usize);
        let in_bucket = self.points.get(start..end).unwrap_or_default();
        let position = start + in_bucket.partition_point(|point| point.token <= hash);
        Some(if position == self.points.len() {
            0
        } else {
            position
        })
    }

    /// Index of the node owning `key`; `None` when there are no nodes.
    #[inline]
    pub(crate) fn owner_index(&self, key: &[u8]) -> Option<usize> {
        let position = self.position(key)?;
        self.points.get(position).map(|point| point.owner as usize)
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

    /// Appends to `out` the first `count` distinct nodes met walking clockwise from `key`'s token: the owner, the
    /// successor, then the next distinct nodes (fewer when the ring has fewer nodes).
    pub(crate) fn ranked_indices(&self, key: &[u8], count: usize, out: &mut Vec<usize>) {
        let Some(start) = self.position(key) else {
            return;
        };
        let total = self.points.len();
        let first = out.len();
        for step in 0..total {
            if out.len() - first >= count {
                break;
            }
            let Some(point) = self.points.get((start + step) % total) else {
                break;
            };
            let node = point.owner as usize;
            if !out[first..].contains(&node) {
                out.push(node);
            }
        }
    }

    /// How much of the 32-bit hash circle each of `node_count` nodes owns: a token owns the hashes from the
    /// previous token up to (not including) its own, the first token also those past the last one.
    pub(crate) fn arc_per_node(&self, node_count: usize) -> Vec<u64> {
        let mut arcs = vec![0u64; node_count];
        let Some(last) = self.points.last() else {
            return arcs;
        };
        let mut previous = u64::from(last.token);
        for (position, point) in self.points.iter().enumerate() {
            let token = u64::from(point.token);
            let arc = if position == 0 {
                token + (1u64 << 32) - previous
            } else {
                token - previous
            };
            if let Some(total) = arcs.get_mut(point.owner as usize) {
                *total += arc;
            }
            previous = token;
        }
        arcs
    }

    /// Token values with their owner indices, in ring order (for tests).
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.points
            .iter()
            .map(|point| (point.token, point.owner as usize))
    }
}

/// `starts[b]` = the position of the first token whose bucket (`token >> shift`) is `b` or later, for every
/// bucket `b` and one past the last.
fn bucket_starts(tokens: &[u32], shift: u32) -> Vec<u32> {
    let bucket_count = (u32::MAX >> shift) as usize + 1;
    let mut starts = Vec::with_capacity(bucket_count + 1);
    let mut position = 0usize;
    for bucket in 0..=bucket_count {
        while tokens
            .get(position)
            .is_some_and(|&token| ((token >> shift) as usize) < bucket)
        {
            position += 1;
        }
        starts.push(position as u32);
    }
    starts
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
    fn bucket_starts_point_at_first_token_of_each_bucket() {
        // shift 30: four buckets of 2^30 each.
        let tokens = [5, 1 << 30, (1 << 30) + 1, u32::MAX];
        assert_eq!(bucket_starts(&tokens, 30), vec![0, 1, 3, 3, 4]);
        assert_eq!(bucket_starts(&[], 31), vec![0, 0, 0]);
    }

    /// The bucketed search must agree with a plain search of the whole ring, including at bucket edges and
    /// past the last token (wrap-around).
    #[test]
    fn bucketed_position_equals_whole_ring_search() {
        let nodes: Vec<String> = (0..7).map(|index| format!("10.0.0.{index}:9091")).collect();
        let ring = GoRing::build(&nodes);
        let mut probes: Vec<u32> = vec![0, 1, u32::MAX, u32::MAX - 1];
        let tokens: Vec<u32> = ring.tokens().map(|(token, _)| token).collect();
        for &token in tokens.iter().step_by(7) {
            probes.extend([token.wrapping_sub(1), token, token.wrapping_add(1)]);
        }
        for hash in probes {
            let whole = tokens.partition_point(|&token| token <= hash) % tokens.len();
            let bucketed = ring.position_of_hash(hash);
            assert_eq!(bucketed, Some(whole), "hash {hash}");
        }
    }

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

//! The `rendezvous` algorithm: a fixed table of slots, each owned by its highest-random-weight node.
//!
//! A key maps to one of [`SLOT_COUNT`] slots by the top bits of its xxh3 hash. Each slot is owned by the node with
//! the highest score `mix64(node_hash ^ slot_salt(slot))`, ties going to the node whose name sorts first; the
//! runner-up is stored too, as the successor. Why this shape:
//! - Highest-random-weight per slot makes movement exact: a node's score for a slot does not depend on the other
//!   nodes, so removing a node changes only the slots it won (they pass to their runner-up), and adding a node
//!   changes only the slots it now wins.
//! - A slot table of 2^16 entries makes lookup one hash and one array read, and keeps the per-node share of
//!   slots within about 1% (binomial spread) of the mean at 10 nodes.
//! - Everything is derived from fixed hash functions and seeds and from node names, never from the order they
//!   are listed in, so every process with the same node set builds the same table.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// log2 of the number of slots.
const SLOT_BITS: u32 = 16;
/// Number of slots: enough that slot-level imbalance stays near 1% at 10 nodes, small enough that the build
/// (slots x nodes score computations) stays in milliseconds at 100 nodes.
pub(crate) const SLOT_COUNT: usize = 1 << SLOT_BITS;

/// Seed for node-name hashing, kept apart from key hashing (seed 0) so a node name used as a key is not special.
const NODE_SEED: u64 = 0x6e6f_6465_5f73_6565; // "node_see"
/// Multiplier spreading slot numbers before mixing (the 64-bit golden ratio).
const SLOT_SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The slot table: owner and runner-up per slot, as indices into the ring's sorted node list.
pub(crate) struct RendezvousTable {
    owners: Box<[u32]>,
    /// Empty when there are fewer than two nodes.
    runners_up: Box<[u32]>,
}

impl RendezvousTable {
    /// Builds the table for `sorted_nodes`, which must be sorted and deduplicated (so that index order is name
    /// order, which the tie-break relies on).
    pub(crate) fn build(sorted_nodes: &[String]) -> RendezvousTable {
        let node_hashes: Vec<u64> = sorted_nodes.iter().map(|node| node_hash(node)).collect();
        match node_hashes.len() {
            0 => RendezvousTable {
                owners: Box::default(),
                runners_up: Box::default(),
            },
            1 => RendezvousTable {
                owners: vec![0; SLOT_COUNT].into_boxed_slice(),
                runners_up: Box::default(),
            },
            _ => build_top_two(&node_hashes),
        }
    }

    /// Index of the node owning `key`; `None` when there are no nodes.
    #[inline]
    pub(crate) fn owner_index(&self, key: &[u8]) -> Option<usize> {
        self.owners.get(slot_of(key)).map(|&index| index as usize)
    }

    /// Index of the runner-up for `key`'s slot; `None` with fewer than two nodes.
    #[inline]
    pub(crate) fn successor_index(&self, key: &[u8]) -> Option<usize> {
        self.runners_up
            .get(slot_of(key))
            .map(|&index| index as usize)
    }

    /// Index of the node owning `slot` (for tests).
    #[cfg(test)]
    pub(crate) fn owner_of_slot(&self, slot: usize) -> Option<usize> {
        self.owners.get(slot).map(|&index| index as usize)
    }
}

/// The slot a key falls in: the top bits of its hash (the best-mixed bits of xxh3).
#[inline]
pub(crate) fn slot_of(key: &[u8]) -> usize {
    (xxh3_64(key) >> (64 - SLOT_BITS)) as usize
}

/// The score of a node (by its name hash) for a slot. Public to the crate so tests can check the table
/// against a direct evaluation. The table builder computes the same value inline, so only tests call it.
#[cfg(test)]
#[inline]
pub(crate) fn score(node_hash: u64, slot: usize) -> u64 {
    mix64(node_hash ^ slot_salt(slot))
}

/// A per-slot constant that decorrelates slots from each other.
#[inline]
fn slot_salt(slot: usize) -> u64 {
    mix64((slot as u64 + 1).wrapping_mul(SLOT_SPREAD))
}

/// The node-name hash the scores are computed from.
#[inline]
pub(crate) fn node_hash(node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), NODE_SEED)
}

/// A bijective 64-bit finalizer (the SplitMix64 / Stafford "mix13" constants): every input bit affects every
/// output bit, so scores of different nodes for one slot behave like independent random numbers.
#[inline]
fn mix64(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Packs a score with its node index so one integer comparison orders by score, then by name (a smaller index,
/// i.e. a name sorting first, wins a tie). Keeping the comparison a plain `max`/`min` keeps the build loop free
/// of unpredictable branches.
#[inline]
fn rank(score: u64, index: usize) -> u128 {
    (u128::from(score) << 32) | u128::from(u32::MAX - index as u32)
}

#[inline]
fn index_of(rank: u128) -> u32 {
    u32::MAX - (rank as u32)
}

fn build_top_two(node_hashes: &[u64]) -> RendezvousTable {
    let mut owners = Vec::with_capacity(SLOT_COUNT);
    let mut runners_up = Vec::with_capacity(SLOT_COUNT);
    for slot in 0..SLOT_COUNT {
        let salt = slot_salt(slot);
        let mut best = 0u128;
        let mut second = 0u128;
        for (index, &hash) in node_hashes.iter().enumerate() {
            // Every real rank is non-zero (the low word is u32::MAX - index > 0 for any realistic index), so
            // the zero start values lose to any node.
            let candidate = rank(mix64(hash ^ salt), index);
            second = second.max(best.min(candidate));
            best = best.max(candidate);
        }
        owners.push(index_of(best));
        runners_up.push(index_of(second));
    }
    RendezvousTable {
        owners: owners.into_boxed_slice(),
        runners_up: runners_up.into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        let mut nodes: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        nodes.sort();
        nodes
    }

    /// The table must agree with evaluating the definition directly (argmax of score, ties to the first name).
    #[test]
    fn table_matches_direct_highest_random_weight() {
        let nodes = nodes(&[
            "10.0.0.1:9091",
            "10.0.0.2:9091",
            "10.0.0.3:9091",
            "pgw-4:9092",
        ]);
        let hashes: Vec<u64> = nodes.iter().map(|node| node_hash(node)).collect();
        let table = RendezvousTable::build(&nodes);
        for slot in (0..SLOT_COUNT).step_by(97) {
            let mut ranked: Vec<usize> = (0..nodes.len()).collect();
            ranked.sort_by(|&a, &b| {
                score(hashes[b], slot)
                    .cmp(&score(hashes[a], slot))
                    .then(a.cmp(&b))
            });
            assert_eq!(
                table.owners[slot] as usize, ranked[0],
                "owner of slot {slot}"
            );
            assert_eq!(
                table.runners_up[slot] as usize, ranked[1],
                "runner-up of slot {slot}"
            );
        }
    }

    #[test]
    fn slot_uses_top_bits_of_key_hash() {
        let key = b"job=a";
        assert_eq!(slot_of(key), (xxh3_64(key) >> 48) as usize);
        assert!(slot_of(key) < SLOT_COUNT);
    }
}

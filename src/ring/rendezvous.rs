//! The `rendezvous` algorithm: a fixed table of slots, each owned by its highest-random-weight node.
//!
//! A key maps to one of [`SLOT_COUNT`] slots by the top 16 bits of its xxh3-64 hash. Each slot is owned by the
//! node with the highest score for that slot, `fmix32(lo ^ salt) ^ hi` where `lo`/`hi` are the
//! halves of the node name's seeded xxh3-64 and `salt` is a fixed per-slot constant; ties go to the node whose
//! name sorts first. The runner-up is stored too, as the successor. Why this shape:
//! - Highest-random-weight per slot makes movement exact: a node's score for a slot does not depend on the other
//!   nodes, so removing a node changes only the slots it won (they pass to their runner-up), and adding a node
//!   changes only the slots it now wins.
//! - A slot table of 2^16 entries makes lookup one hash and one array read, and keeps each node's share of
//!   slots close to the mean (binomial spread: 1.2% standard deviation at 10 nodes).
//! - Everything is derived from fixed hash functions and seeds and from node names, never from the order they
//!   are listed in, so every process with the same node set builds the same table.
//! - Building costs slots x nodes score evaluations (6.5 million at 100 nodes). Scores are 32-bit so the build
//!   loop vectorizes (8 lanes with AVX2, picked at run time on x86_64); integer arithmetic makes every code path
//!   produce the same table.
//! - A membership change usually adds or removes one node, so [`RendezvousTable::rebuild`] derives the new table
//!   from the previous one and yields exactly the table a full build would. Per slot: when neither the owner nor
//!   the runner-up was removed, the new top two are the top two of {old owner, old runner-up, added nodes}; that
//!   is exact because every other old node scored below both and a node's score does not depend on the others.
//!   Only slots that lost their owner or runner-up are scored over all nodes. Indices are remapped to the new
//!   sorted list. At 100 nodes with one node out and one in, that is about 3 scores per slot instead of 100
//!   (4.5x faster than the full build; 46x at 1000 nodes, see `bench/RESULTS.md`). Large changes (more than a quarter of the nodes), small
//!   rings (fewer than 16 nodes, where the vectorized full build is as fast) and a previous ring without
//!   runners-up (fewer than 2 nodes) take the full build. Tests check the update against the full build.

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

    /// The table for `new_nodes` (sorted and deduplicated), identical to `build(new_nodes)`, derived from
    /// `previous`, the table built for `previous_nodes`, when the change is small enough for that to be cheaper.
    pub(crate) fn rebuild(
        previous_nodes: &[String],
        previous: &RendezvousTable,
        new_nodes: &[String],
    ) -> RendezvousTable {
        let delta = NodeDelta::between(previous_nodes, new_nodes);
        let changed_nodes = delta.added.len() + delta.removed_count;
        // The update costs a fixed few scalar scores per slot plus a full rescoring of the slots that lost a
        // top-two node; the full build costs one vectorized score per slot and node. Measured, the update wins
        // from about 15 nodes on, and only while the change is small: past a quarter of the nodes changed, the
        // rescored slots alone approach the full build's cost.
        let worth_it =
            new_nodes.len() >= MIN_NODES_FOR_UPDATE && changed_nodes * 4 <= new_nodes.len();
        if worth_it {
            if let Some(table) = update_top_two(previous, &delta, new_nodes) {
                return table;
            }
        }
        RendezvousTable::build(new_nodes)
    }

    /// [`RendezvousTable::rebuild`] without the size rule: always the incremental update, so tests can check it
    /// on any change. `None` when either table has fewer than two nodes.
    #[cfg(test)]
    pub(crate) fn rebuild_incrementally(
        previous_nodes: &[String],
        previous: &RendezvousTable,
        new_nodes: &[String],
    ) -> Option<RendezvousTable> {
        update_top_two(
            previous,
            &NodeDelta::between(previous_nodes, new_nodes),
            new_nodes,
        )
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

    /// How many slots each of `node_count` nodes owns.
    pub(crate) fn slots_per_node(&self, node_count: usize) -> Vec<u64> {
        let mut counts = vec![0u64; node_count];
        for &owner in self.owners.iter() {
            if let Some(count) = counts.get_mut(owner as usize) {
                *count += 1;
            }
        }
        counts
    }

    /// Index of the node owning `slot` (for tests).
    #[cfg(test)]
    pub(crate) fn owner_of_slot(&self, slot: usize) -> Option<usize> {
        self.owners.get(slot).map(|&index| index as usize)
    }

    /// The whole table, owners then runners-up (for tests comparing tables slot for slot).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> (&[u32], &[u32]) {
        (&self.owners, &self.runners_up)
    }
}

/// Below this many nodes [`RendezvousTable::rebuild`] takes the full build: the update's cost barely depends on
/// the node count, the vectorized full build's grows with it, and they cross at about 15 nodes (at 10 nodes the
/// update took 1.51 ms and the full build 1.13 ms in one run, see `bench/RESULTS.md`).
const MIN_NODES_FOR_UPDATE: usize = 16;

/// How the sorted node list changed between two rings.
struct NodeDelta {
    /// For each previous node (by previous index), its index in the new list; `None` when it was removed.
    new_index_of_previous: Vec<Option<u32>>,
    /// Indices in the new list of the nodes that were not in the previous one, ascending.
    added: Vec<u32>,
    removed_count: usize,
}

impl NodeDelta {
    /// Both lists must be sorted and deduplicated; one merge walk pairs them up.
    fn between(previous_nodes: &[String], new_nodes: &[String]) -> NodeDelta {
        let mut new_index_of_previous = Vec::with_capacity(previous_nodes.len());
        let mut added = Vec::new();
        let mut new_index = 0;
        for previous_node in previous_nodes {
            while new_index < new_nodes.len() && new_nodes[new_index] < *previous_node {
                added.push(new_index as u32);
                new_index += 1;
            }
            if new_nodes.get(new_index) == Some(previous_node) {
                new_index_of_previous.push(Some(new_index as u32));
                new_index += 1;
            } else {
                new_index_of_previous.push(None);
            }
        }
        added.extend((new_index..new_nodes.len()).map(|index| index as u32));
        let removed_count = new_index_of_previous
            .iter()
            .filter(|index| index.is_none())
            .count();
        NodeDelta {
            new_index_of_previous,
            added,
            removed_count,
        }
    }
}

/// A node's standing in one slot as a single comparable number: the score in the high half and the inverted
/// index in the low half, so a higher rank means a higher score, or an equal score and a name sorting first,
/// which is the full build's tie-break.
#[inline(always)]
fn rank(score: u32, index: u32) -> u64 {
    (u64::from(score) << 32) | u64::from(!index)
}

/// The node index a [`rank`] was made from.
#[inline(always)]
fn index_of_rank(rank: u64) -> u32 {
    !(rank as u32)
}

/// The two highest ranks offered so far.
struct TopTwo {
    best: u64,
    runner_up: u64,
}

impl TopTwo {
    #[inline(always)]
    fn of(first: u64, second: u64) -> TopTwo {
        TopTwo {
            best: first.max(second),
            runner_up: first.min(second),
        }
    }

    #[inline(always)]
    fn offer(&mut self, rank: u64) {
        if rank > self.best {
            self.runner_up = self.best;
            self.best = rank;
        } else if rank > self.runner_up {
            self.runner_up = rank;
        }
    }
}

/// The new table from `previous` and how the nodes changed (see the module doc for why this is exact). `None`
/// when either table has fewer than two nodes, where there is no runner-up to carry over.
fn update_top_two(
    previous: &RendezvousTable,
    delta: &NodeDelta,
    new_nodes: &[String],
) -> Option<RendezvousTable> {
    let (previous_owners, previous_runners_up) = (&previous.owners, &previous.runners_up);
    if new_nodes.len() < 2
        || previous_owners.len() != SLOT_COUNT
        || previous_runners_up.len() != SLOT_COUNT
    {
        return None;
    }
    // The new index of a previous node; an index the delta does not know (a table not built from the delta's
    // previous list) counts as removed, which costs a full rescoring of the slot but keeps the result exact.
    let kept = |previous_index: u32| {
        delta
            .new_index_of_previous
            .get(previous_index as usize)
            .copied()
            .flatten()
    };
    let keys: Vec<NodeKey> = new_nodes
        .iter()
        .map(|node| NodeKey::from(node_hash(node)))
        .collect();
    let added: Vec<(u32, NodeKey)> = delta
        .added
        .iter()
        .map(|&index| (index, keys[index as usize]))
        .collect();
    let mut owners = vec![0u32; SLOT_COUNT];
    let mut runners_up = vec![0u32; SLOT_COUNT];
    for slot in 0..SLOT_COUNT {
        let salt = slot_salt(slot);
        let top = match (kept(previous_owners[slot]), kept(previous_runners_up[slot])) {
            (Some(owner), Some(runner_up)) => {
                let mut top = TopTwo::of(
                    rank(score_with_salt(keys[owner as usize], salt), owner),
                    rank(score_with_salt(keys[runner_up as usize], salt), runner_up),
                );
                for &(index, key) in &added {
                    top.offer(rank(score_with_salt(key, salt), index));
                }
                top
            }
            // The slot lost a top-two node: the next best could be any node, so score them all.
            _ => top_two_of_all(&keys, salt),
        };
        owners[slot] = index_of_rank(top.best);
        runners_up[slot] = index_of_rank(top.runner_up);
    }
    Some(RendezvousTable {
        owners: owners.into_boxed_slice(),
        runners_up: runners_up.into_boxed_slice(),
    })
}

/// The top two of all nodes for one slot; `keys` must hold at least two nodes. Nodes are offered in index order
/// and every real rank exceeds the zero seed (its low half is the inverted index, never zero).
#[inline]
fn top_two_of_all(keys: &[NodeKey], salt: u32) -> TopTwo {
    let ranks = keys
        .iter()
        .zip(0u32..)
        .map(|(key, index)| rank(score_with_salt(*key, salt), index));
    let mut top = TopTwo::of(0, 0);
    for node_rank in ranks {
        top.offer(node_rank);
    }
    top
}

/// Appends to `out` the indices of the first `count` nodes for `key`'s slot by rank, highest first: the owner,
/// the runner-up, then the rest in the order they would take over. `node_hashes` are [`node_hash`] of the sorted
/// node list, so the first two agree with the table's owner and runner-up. O(nodes) per call: only replicated
/// writes and reads ask for more than the table's two.
pub(crate) fn ranked_indices(node_hashes: &[u64], key: &[u8], count: usize, out: &mut Vec<usize>) {
    let salt = slot_salt(slot_of(key));
    let mut ranks: Vec<u64> = node_hashes
        .iter()
        .zip(0u32..)
        .map(|(&hash, index)| rank(score_with_salt(NodeKey::from(hash), salt), index))
        .collect();
    ranks.sort_unstable_by(|a, b| b.cmp(a));
    out.extend(
        ranks
            .into_iter()
            .take(count)
            .map(|node_rank| index_of_rank(node_rank) as usize),
    );
}

/// The slot a key falls in: the top bits of its hash (the best-mixed bits of xxh3).
#[inline]
pub(crate) fn slot_of(key: &[u8]) -> usize {
    (xxh3_64(key) >> (64 - SLOT_BITS)) as usize
}

/// The score of a node (by its name hash) for a slot: murmur3's 32-bit finalizer over the slot salt and the
/// hash's low half, XOR the high half (so two names must agree on all 64 hash bits to score alike everywhere).
/// The build loop computes the same thing from precomputed salts; tests check the two agree.
#[cfg(test)]
pub(crate) fn score(node_hash: u64, slot: usize) -> u32 {
    score_with_salt(NodeKey::from(node_hash), slot_salt(slot))
}

/// A node hash split into the halves the score mixes in.
#[derive(Clone, Copy)]
struct NodeKey {
    low: u32,
    high: u32,
}

impl From<u64> for NodeKey {
    fn from(hash: u64) -> NodeKey {
        NodeKey {
            low: hash as u32,
            high: (hash >> 32) as u32,
        }
    }
}

#[inline(always)]
fn score_with_salt(node: NodeKey, salt: u32) -> u32 {
    // Two multiplies per score (inside fmix32): the build does 6.5 million of these at 100 nodes. XOR-ing the
    // high half afterwards keeps names whose low halves collide from scoring identically.
    fmix32(node.low ^ salt) ^ node.high
}

/// A per-slot constant that decorrelates slots from each other.
#[inline]
fn slot_salt(slot: usize) -> u32 {
    mix64((slot as u64 + 1).wrapping_mul(SLOT_SPREAD)) as u32
}

/// The node-name hash the scores are computed from.
#[inline]
pub(crate) fn node_hash(node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), NODE_SEED)
}

/// The SplitMix64 finalizer: a bijection in which every input bit affects every output bit.
#[inline]
fn mix64(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// MurmurHash3's 32-bit finalizer: a bijection with full avalanche, cheap in 32-bit vector lanes.
#[inline(always)]
fn fmix32(mut value: u32) -> u32 {
    value ^= value >> 16;
    value = value.wrapping_mul(0x85eb_ca6b);
    value ^= value >> 13;
    value = value.wrapping_mul(0xc2b2_ae35);
    value ^ (value >> 16)
}

/// Slots handled together: the block's working arrays (five of `BLOCK` u32) stay in L1 while every node is
/// scored against it, and the inner loop runs over contiguous arrays, which is what lets it vectorize.
const BLOCK: usize = 512;
const _: () = assert!(SLOT_COUNT.is_multiple_of(BLOCK));

fn build_top_two(node_hashes: &[u64]) -> RendezvousTable {
    let nodes: Vec<NodeKey> = node_hashes
        .iter()
        .map(|&hash| NodeKey::from(hash))
        .collect();
    let mut owners = vec![0u32; SLOT_COUNT];
    let mut runners_up = vec![0u32; SLOT_COUNT];
    fill_top_two(&nodes, &mut owners, &mut runners_up);
    RendezvousTable {
        owners: owners.into_boxed_slice(),
        runners_up: runners_up.into_boxed_slice(),
    }
}

/// Fills owner and runner-up for every slot, with the fastest code path this CPU supports.
fn fill_top_two(nodes: &[NodeKey], owners: &mut [u32], runners_up: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `fill_top_two_avx2` only requires AVX2, and the CPU was just found to support it.
        unsafe { fill_top_two_avx2(nodes, owners, runners_up) };
        return;
    }
    fill_top_two_portable(nodes, owners, runners_up);
}

/// The portable loop compiled with AVX2 enabled, so that its 32-bit lanes vectorize eight wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_top_two_avx2(nodes: &[NodeKey], owners: &mut [u32], runners_up: &mut [u32]) {
    fill_top_two_portable(nodes, owners, runners_up);
}

#[inline(always)]
fn fill_top_two_portable(nodes: &[NodeKey], owners: &mut [u32], runners_up: &mut [u32]) {
    let owner_blocks = owners.as_chunks_mut::<BLOCK>().0;
    let runner_blocks = runners_up.as_chunks_mut::<BLOCK>().0;
    for (block, (owner_block, runner_block)) in
        owner_blocks.iter_mut().zip(runner_blocks).enumerate()
    {
        top_two_in_block(nodes, block * BLOCK, owner_block, runner_block);
    }
}

/// Owner and runner-up for the slots `first_slot..first_slot + BLOCK`. Nodes are visited in index (= name)
/// order and only a strictly higher score displaces a kept one, so ties go to the name sorting first.
#[inline(always)]
fn top_two_in_block(
    nodes: &[NodeKey],
    first_slot: usize,
    owners: &mut [u32; BLOCK],
    runners_up: &mut [u32; BLOCK],
) {
    let [first, second, rest @ ..] = nodes else {
        return;
    };
    let mut salts = [0u32; BLOCK];
    for (offset, salt) in salts.iter_mut().enumerate() {
        *salt = slot_salt(first_slot + offset);
    }
    // Seed the top two with the first two nodes so no sentinel score is needed.
    let mut best = [0u32; BLOCK];
    let mut runner_up = [0u32; BLOCK];
    for slot in 0..BLOCK {
        let first_score = score_with_salt(*first, salts[slot]);
        let second_score = score_with_salt(*second, salts[slot]);
        let second_wins = second_score > first_score;
        best[slot] = first_score.max(second_score);
        runner_up[slot] = first_score.min(second_score);
        owners[slot] = u32::from(second_wins);
        runners_up[slot] = u32::from(!second_wins);
    }
    for (offset, node) in rest.iter().enumerate() {
        let index = (offset + 2) as u32;
        for slot in 0..BLOCK {
            let score = score_with_salt(*node, salts[slot]);
            let beats_best = score > best[slot];
            let beats_runner_up = score > runner_up[slot];
            // Branch-free selects: which node wins a slot is unpredictable, and selects vectorize.
            let kept_runner_up = if beats_runner_up {
                score
            } else {
                runner_up[slot]
            };
            let kept_runner_up_index = if beats_runner_up {
                index
            } else {
                runners_up[slot]
            };
            runner_up[slot] = if beats_best {
                best[slot]
            } else {
                kept_runner_up
            };
            runners_up[slot] = if beats_best {
                owners[slot]
            } else {
                kept_runner_up_index
            };
            best[slot] = if beats_best { score } else { best[slot] };
            owners[slot] = if beats_best { index } else { owners[slot] };
        }
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

    /// Whatever code path the CPU takes, the table must be the same (routing must agree across machines).
    #[test]
    fn dispatched_build_equals_portable_build() {
        let names: Vec<String> = (0..37)
            .map(|index| format!("pgw-{index}.example:{}", 9000 + index))
            .collect();
        let nodes = nodes(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let keys: Vec<NodeKey> = nodes
            .iter()
            .map(|node| NodeKey::from(node_hash(node)))
            .collect();
        let (mut owners, mut runners_up) = (vec![0; SLOT_COUNT], vec![0; SLOT_COUNT]);
        fill_top_two_portable(&keys, &mut owners, &mut runners_up);
        let table = RendezvousTable::build(&nodes);
        assert!(owners == *table.owners, "owners differ between code paths");
        assert!(
            runners_up == *table.runners_up,
            "runners-up differ between code paths"
        );
    }

    #[test]
    fn slot_uses_top_bits_of_key_hash() {
        let key = b"job=a";
        assert_eq!(slot_of(key), (xxh3_64(key) >> 48) as usize);
        assert!(slot_of(key) < SLOT_COUNT);
    }
}

//! With replication a group has a copy on each node of its owner set (and, while the rebalancer catches up, maybe
//! on others). A read shows each group once, from one node: the first node of its owner set that answered and
//! holds it, so a read prefers the copy whose write the client was answered for, and a dead owner's groups are
//! shown from the next owner at the very next read. A group no owner holds (a stray, or a group the rebalancer
//! has not copied yet) is shown from the holder with the newest push, ties to the node name sorting first.
//! The choice depends only on the copies, not on the order they are given in. Pure, no I/O.

use std::collections::HashMap;

/// One node's copy of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCopy<'a> {
    pub node: &'a str,
    /// The group's identity (its ring key); equal for every copy of one group.
    pub group: &'a [u8],
    pub push_time_seconds: f64,
}

/// Which copies to show: a mask parallel to `copies`, exactly one `true` per distinct group.
/// `owner_rank(group, node)` is the node's position in the group's owner set, `None` outside it.
pub fn shown_copies(
    copies: &[GroupCopy<'_>],
    owner_rank: impl Fn(&[u8], &str) -> Option<usize>,
) -> Vec<bool> {
    // group -> index of the best copy so far, with its rank.
    let mut best: HashMap<&[u8], (usize, Option<usize>)> = HashMap::with_capacity(copies.len());
    for (index, copy) in copies.iter().enumerate() {
        let rank = owner_rank(copy.group, copy.node);
        match best.get_mut(copy.group) {
            None => {
                best.insert(copy.group, (index, rank));
            }
            Some(entry) => {
                if better(copy, rank, &copies[entry.0], entry.1) {
                    *entry = (index, rank);
                }
            }
        }
    }
    let mut shown = vec![false; copies.len()];
    for (index, _) in best.values() {
        shown[*index] = true;
    }
    shown
}

/// Whether `copy` (with owner rank `rank`) beats `current`: an earlier owner, any owner over a non-owner, else
/// the newer push, else the node name sorting first.
fn better(
    copy: &GroupCopy<'_>,
    rank: Option<usize>,
    current: &GroupCopy<'_>,
    current_rank: Option<usize>,
) -> bool {
    match (rank, current_rank) {
        (Some(rank), Some(current_rank)) if rank != current_rank => rank < current_rank,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        _ => match copy.push_time_seconds.total_cmp(&current.push_time_seconds) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => copy.node < current.node,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn copy<'a>(node: &'a str, group: &'a [u8], push_time_seconds: f64) -> GroupCopy<'a> {
        GroupCopy {
            node,
            group,
            push_time_seconds,
        }
    }

    /// Owner sets: group "g1" -> [b, c], "g2" -> [c, a]; nothing else has owners.
    fn rank(group: &[u8], node: &str) -> Option<usize> {
        let owners: &[&str] = match group {
            b"g1" => &["b", "c"],
            b"g2" => &["c", "a"],
            _ => &[],
        };
        owners.iter().position(|owner| *owner == node)
    }

    #[test]
    fn the_first_owner_holding_a_group_shows_it_and_strays_go_by_newest_push() {
        let copies = [
            copy("a", b"g1", 9.0),
            copy("b", b"g1", 1.0),
            copy("c", b"g1", 2.0),
            // g2's first owner (c) has no copy: the second owner shows it, not the newer stray on b.
            copy("a", b"g2", 1.0),
            copy("b", b"g2", 5.0),
            // No owner: the newest, then the first name.
            copy("c", b"g3", 1.0),
            copy("b", b"g3", 3.0),
            copy("a", b"g3", 3.0),
        ];
        assert_eq!(
            shown_copies(&copies, rank),
            [false, true, false, true, false, false, false, true]
        );
    }

    proptest! {
        /// Exactly one copy per group, the same one whatever the order of the copies, and it is the first owner's
        /// copy when any owner holds one.
        #[test]
        fn each_group_is_shown_once_from_its_first_owner_holding_it(
            holdings in proptest::collection::btree_set((0u8..6, 0u8..5), 0..30),
            times in proptest::collection::vec(0u8..4, 30),
            rotation in 0usize..30,
        ) {
            let nodes = ["a", "b", "c", "d", "e"];
            let groups: Vec<[u8; 1]> = (0u8..6).map(|g| [g]).collect();
            // Owner set of group g: nodes g%5 and (g+1)%5.
            let owner_rank = |group: &[u8], node: &str| {
                let g = usize::from(group[0]);
                [nodes[g % 5], nodes[(g + 1) % 5]].iter().position(|owner| *owner == node)
            };
            let copies: Vec<GroupCopy<'_>> = holdings.iter().zip(&times)
                .map(|(&(g, n), &t)| copy(nodes[usize::from(n)], &groups[usize::from(g)], f64::from(t)))
                .collect();
            let shown = shown_copies(&copies, owner_rank);
            let mut per_group: BTreeMap<&[u8], Vec<&GroupCopy<'_>>> = BTreeMap::new();
            for (copy, shown) in copies.iter().zip(&shown) {
                if *shown {
                    per_group.entry(copy.group).or_default().push(copy);
                }
            }
            let distinct: std::collections::BTreeSet<&[u8]> = copies.iter().map(|c| c.group).collect();
            prop_assert_eq!(per_group.len(), distinct.len());
            for (group, chosen) in &per_group {
                prop_assert_eq!(chosen.len(), 1);
                let best_owner = copies.iter().filter(|c| c.group == *group)
                    .filter_map(|c| owner_rank(group, c.node)).min();
                if let Some(best_owner) = best_owner {
                    prop_assert_eq!(owner_rank(group, chosen[0].node), Some(best_owner));
                }
            }
            let mut rotated = copies.clone();
            rotated.rotate_left(rotation % copies.len().max(1));
            let shown_rotated = shown_copies(&rotated, owner_rank);
            let pick = |copies: &[GroupCopy<'_>], shown: &[bool]| -> Vec<(String, Vec<u8>)> {
                let mut picked: Vec<(String, Vec<u8>)> = copies.iter().zip(shown).filter(|(_, s)| **s)
                    .map(|(c, _)| (c.node.to_string(), c.group.to_vec())).collect();
                picked.sort();
                picked
            };
            prop_assert_eq!(pick(&copies, &shown), pick(&rotated, &shown_rotated));
        }
    }
}

//! Pure planning: given what every reachable node holds and the current ring, decide which groups to copy to
//! their owner and which copies to delete. No I/O, no clock: the caller passes `now`.
//!
//! For each group held by at least one node that is not its owner:
//! - the owner's copy is at least as new as every wrong copy (`push_time_seconds`): delete the wrong copies
//!   ([`Action::DeleteStale`]);
//! - else, with `max_age` set and the newest wrong copy older than that: delete the wrong copies without copying
//!   ([`Action::DropExpired`]), so a dead job does not look alive on its new owner;
//! - else copy the newest wrong copy to the owner, then delete every wrong copy ([`Action::Move`]).
//!
//! Groups whose owner was not listed (unreachable, or the ring is empty) are left alone: without the owner's
//! copy there is nothing to compare with, and deleting could leave the group on zero nodes.

use std::collections::HashMap;
use std::time::Duration;

use crate::exposition::pushgateway_json::MovedMarker;
use crate::grouping::GroupingKey;
use crate::ring::Ring;

/// For this long after a move, a copy's own `push_time_seconds` is taken to be the move's, not a client's push:
/// it covers the copy's own latency and a difference between the gateway's and the node's clocks.
pub const MOVE_SLACK_SECONDS: f64 = 60.0;

/// When the client last pushed a group, as far as one node's copy tells: its `push_time_seconds`, unless the
/// rebalancer copied it there and no client pushed since (the Pushgateway stamps the copy with the time of the
/// copy; the marker the copy carries keeps the client's time).
pub fn last_client_push(push_time_seconds: f64, moved: Option<MovedMarker>) -> f64 {
    match moved {
        Some(marker) if push_time_seconds <= marker.moved_at + MOVE_SLACK_SECONDS => {
            marker.last_push
        }
        _ => push_time_seconds,
    }
}

/// One group as one node listed it.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedGroup {
    pub key: GroupingKey,
    /// Unix seconds of the last successful push on that node; 0 when none succeeded.
    pub push_time_seconds: f64,
    /// Unix seconds of the client's last push ([`last_client_push`]): differs from `push_time_seconds` on a
    /// copy the rebalancer made.
    pub last_client_push: f64,
    /// The group's metrics as a text-format `PUT` body; `None` when the listing did not render it because the
    /// node owned the group (a copy on its owner is never a source).
    pub body: Option<String>,
}

/// Everything one node holds, as listed at the start of a pass.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeListing {
    pub node: String,
    pub groups: Vec<ListedGroup>,
}

/// What to do about one misplaced group.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `PUT` `body` (from `source`) to `owner`, then delete the group from every node in `delete_from`.
    Move {
        key: GroupingKey,
        owner: String,
        source: String,
        source_push_time: f64,
        /// The client's last push of the copied group, carried by the copy ([`MovedMarker`]).
        last_client_push: f64,
        body: String,
        delete_from: Vec<String>,
    },
    /// The owner already holds a copy at least as new: delete the others.
    DeleteStale {
        key: GroupingKey,
        owner: String,
        delete_from: Vec<String>,
    },
    /// Every wrong copy is older than `max_age` and the owner has none newer: delete them without copying.
    DropExpired {
        key: GroupingKey,
        newest_push_time: f64,
        delete_from: Vec<String>,
    },
    /// No client pushed the group for longer than its `groups.expire_after`: delete every copy.
    Expire {
        key: GroupingKey,
        last_client_push: f64,
        delete_from: Vec<String>,
    },
}

impl Action {
    pub fn key(&self) -> &GroupingKey {
        match self {
            Action::Move { key, .. }
            | Action::DeleteStale { key, .. }
            | Action::DropExpired { key, .. }
            | Action::Expire { key, .. } => key,
        }
    }

    pub fn delete_from(&self) -> &[String] {
        match self {
            Action::Move { delete_from, .. }
            | Action::DeleteStale { delete_from, .. }
            | Action::DropExpired { delete_from, .. }
            | Action::Expire { delete_from, .. } => delete_from,
        }
    }
}

/// The outcome of planning one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Distinct groups over all listed nodes.
    pub groups_seen: usize,
    /// Misplaced groups left alone because their owner was not listed.
    pub owner_not_listed: usize,
}

/// Plans the moves that put every listed group on exactly its owner in `ring`, with its newest value.
///
/// `now_seconds` is the current Unix time; `max_age` enables [`Action::DropExpired`]. Ties in push time keep the
/// owner's copy. Actions come sorted by grouping key, so a plan is reproducible.
pub fn plan(
    listings: Vec<NodeListing>,
    ring: &Ring,
    now_seconds: f64,
    max_age: Option<Duration>,
) -> Plan {
    let listed_nodes: Vec<String> = listings.iter().map(|l| l.node.clone()).collect();
    // ring key -> every copy of that group, with the node holding it.
    let mut copies: HashMap<Vec<u8>, Vec<(String, ListedGroup)>> = HashMap::new();
    for listing in listings {
        for group in listing.groups {
            copies
                .entry(group.key.ring_key())
                .or_default()
                .push((listing.node.clone(), group));
        }
    }
    let mut result = Plan {
        groups_seen: copies.len(),
        ..Plan::default()
    };
    for (ring_key, holders) in copies {
        let Some(owner) = ring.owner(&ring_key) else {
            result.owner_not_listed += 1;
            continue;
        };
        let owner_push_time = holders
            .iter()
            .find(|(node, _)| node == owner)
            .map(|(_, group)| group.push_time_seconds);
        let mut wrong: Vec<(String, ListedGroup)> = holders
            .into_iter()
            .filter(|(node, _)| node != owner)
            .collect();
        if wrong.is_empty() {
            continue;
        }
        if !listed_nodes.iter().any(|node| node == owner) {
            result.owner_not_listed += 1;
            continue;
        }
        // Newest wrong copy last; equal times fall back to the node name so the choice is deterministic.
        wrong.sort_by(|(node_a, a), (node_b, b)| {
            a.push_time_seconds
                .total_cmp(&b.push_time_seconds)
                .then_with(|| node_b.cmp(node_a))
        });
        let delete_from: Vec<String> = wrong.iter().map(|(node, _)| node.clone()).collect();
        let Some((source, newest)) = wrong.pop() else {
            continue;
        };
        let owner = owner.to_string();
        let action = match owner_push_time {
            Some(owner_time) if owner_time >= newest.push_time_seconds => Action::DeleteStale {
                key: newest.key,
                owner,
                delete_from,
            },
            _ if is_expired(newest.last_client_push, now_seconds, max_age) => Action::DropExpired {
                key: newest.key,
                newest_push_time: newest.last_client_push,
                delete_from,
            },
            // A wrong copy always has its body (only owners' copies are listed without); should the ring used for
            // listing ever differ from this one, leave the group alone rather than copy an empty body.
            _ => match newest.body {
                Some(body) => Action::Move {
                    key: newest.key,
                    owner,
                    source,
                    source_push_time: newest.push_time_seconds,
                    last_client_push: newest.last_client_push,
                    body,
                    delete_from,
                },
                None => {
                    result.owner_not_listed += 1;
                    continue;
                }
            },
        };
        result.actions.push(action);
    }
    result
        .actions
        .sort_by_cached_key(|action| action.key().to_string());
    result
}

/// Groups a pass deletes because no client pushed them for longer than their limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expiry {
    /// One [`Action::Expire`] per expired group, sorted by grouping key.
    pub actions: Vec<Action>,
    /// Groups past 90% of their limit, not yet expired.
    pub expiring_soon: usize,
}

/// Takes every group whose newest client push (over all its copies) is older than `limit(key)` out of
/// `listings` and returns the deletes for it. `limit` is `None` for groups that never expire.
pub fn expire(
    listings: &mut [NodeListing],
    now_seconds: f64,
    limit: impl Fn(&GroupingKey) -> Option<Duration>,
) -> Expiry {
    // ring key -> (key, newest client push, holders)
    let mut groups: HashMap<Vec<u8>, (GroupingKey, f64, Vec<String>)> = HashMap::new();
    for listing in listings.iter() {
        for group in &listing.groups {
            let entry = groups
                .entry(group.key.ring_key())
                .or_insert_with(|| (group.key.clone(), f64::MIN, Vec::new()));
            entry.1 = entry.1.max(group.last_client_push);
            entry.2.push(listing.node.clone());
        }
    }
    let mut expiry = Expiry::default();
    let mut expired = std::collections::HashSet::new();
    for (ring_key, (key, last_push, holders)) in groups {
        let Some(limit) = limit(&key) else {
            continue;
        };
        let age = now_seconds - last_push;
        if age > limit.as_secs_f64() {
            expiry.actions.push(Action::Expire {
                key,
                last_client_push: last_push,
                delete_from: holders,
            });
            expired.insert(ring_key);
        } else if age > limit.as_secs_f64() * 0.9 {
            expiry.expiring_soon += 1;
        }
    }
    if !expired.is_empty() {
        for listing in listings.iter_mut() {
            listing
                .groups
                .retain(|group| !expired.contains(&group.key.ring_key()));
        }
    }
    expiry
        .actions
        .sort_by_cached_key(|action| action.key().to_string());
    expiry
}

fn is_expired(push_time_seconds: f64, now_seconds: f64, max_age: Option<Duration>) -> bool {
    match max_age {
        Some(max_age) => now_seconds - push_time_seconds > max_age.as_secs_f64(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::ring::Algorithm;

    fn key(job: &str, instance: &str) -> GroupingKey {
        let mut labels = BTreeMap::new();
        labels.insert("job".to_string(), job.to_string());
        labels.insert("instance".to_string(), instance.to_string());
        GroupingKey::from_labels(labels).unwrap()
    }

    fn group(key: &GroupingKey, push_time: f64, body: &str) -> ListedGroup {
        ListedGroup {
            key: key.clone(),
            push_time_seconds: push_time,
            last_client_push: push_time,
            body: Some(body.to_string()),
        }
    }

    #[test]
    fn a_moved_copy_keeps_the_clients_push_time_until_a_client_pushes_again() {
        let marker = MovedMarker {
            last_push: 100.0,
            moved_at: 1000.0,
        };
        assert_eq!(last_client_push(500.0, None), 500.0);
        // The copy's own stamp, the moment of the move (within the slack for clocks and latency).
        assert_eq!(last_client_push(1000.5, Some(marker)), 100.0);
        assert_eq!(
            last_client_push(1000.0 + MOVE_SLACK_SECONDS, Some(marker)),
            100.0
        );
        // A push-add after the move leaves the marker in place but is a client's push.
        assert_eq!(last_client_push(1100.0, Some(marker)), 1100.0);
    }

    #[test]
    fn groups_expire_by_their_newest_client_push_over_every_copy_and_per_job_limits() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let old = key("old", "1");
        let fresh = key("fresh", "1");
        let forever = key("forever", "1");
        let soon = key("soon", "1");
        let moved_old = ListedGroup {
            // Copied at 990 (its own stamp), last pushed by a client at 100.
            push_time_seconds: 990.0,
            last_client_push: 100.0,
            ..group(&old, 990.0, "x 1\n")
        };
        let mut listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![
                    moved_old,
                    group(&fresh, 950.0, "x 1\n"),
                    group(&forever, 1.0, "x 1\n"),
                ],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&old, 200.0, "x 1\n"), group(&soon, 905.0, "x 1\n")],
            },
        ];
        let limit = |key: &GroupingKey| match key.job() {
            "forever" => None,
            _ => Some(Duration::from_secs(100)),
        };
        let expiry = expire(&mut listings, 1000.0, limit);
        assert_eq!(
            expiry.actions,
            vec![Action::Expire {
                key: old.clone(),
                last_client_push: 200.0,
                delete_from: nodes(&["a", "b"]),
            }]
        );
        assert_eq!(expiry.expiring_soon, 1, "soon: 95 s of 100");
        // The expired group is out of the listings, so the move planner never copies it.
        assert!(listings
            .iter()
            .all(|l| l.groups.iter().all(|g| g.key != old)));
        assert!(plan(listings, &ring, 1000.0, None)
            .actions
            .iter()
            .all(|a| *a.key() != old));
    }

    #[test]
    fn a_wrong_copy_without_its_body_is_never_copied_but_stale_ones_are_still_deleted() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let unrendered = |time: f64| ListedGroup {
            body: None,
            ..group(&k, time, "")
        };
        let listings = |on_a: Vec<ListedGroup>, on_b: Vec<ListedGroup>| {
            vec![
                NodeListing {
                    node: "a".into(),
                    groups: on_a,
                },
                NodeListing {
                    node: "b".into(),
                    groups: on_b,
                },
            ]
        };
        // Owned by "a", newer on "b", but "b" listed it without its body: nothing may be copied.
        let newer_elsewhere = plan(
            listings(vec![group(&k, 1.0, "x 1\n")], vec![unrendered(2.0)]),
            &ring,
            100.0,
            None,
        );
        assert_eq!(newer_elsewhere.actions, vec![]);
        assert_eq!(newer_elsewhere.owner_not_listed, 1);
        // Older on the wrong node: deleting it needs no body.
        let stale_elsewhere = plan(
            listings(vec![group(&k, 5.0, "x 5\n")], vec![unrendered(1.0)]),
            &ring,
            100.0,
            None,
        );
        assert_eq!(
            stale_elsewhere.actions,
            vec![Action::DeleteStale {
                key: k.clone(),
                owner: "a".into(),
                delete_from: nodes(&["b"]),
            }]
        );
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// A key owned by `owner` in `ring` (searching instance names).
    fn key_owned_by(ring: &Ring, owner: &str) -> GroupingKey {
        (0..10_000)
            .map(|i| key("j", &format!("i{i}")))
            .find(|k| ring.owner(&k.ring_key()) == Some(owner))
            .unwrap()
    }

    #[test]
    fn a_group_on_its_owner_needs_nothing() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![group(&k, 10.0, "x 1\n")],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![],
            },
        ];
        let plan = plan(listings, &ring, 100.0, None);
        assert_eq!(plan.actions, vec![]);
        assert_eq!(plan.groups_seen, 1);
    }

    #[test]
    fn a_group_missing_on_its_owner_is_moved_there_and_deleted_from_the_wrong_node() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&k, 10.0, "x 1\n")],
            },
        ];
        let plan = plan(listings, &ring, 100.0, None);
        assert_eq!(
            plan.actions,
            vec![Action::Move {
                key: k,
                owner: "a".into(),
                source: "b".into(),
                source_push_time: 10.0,
                last_client_push: 10.0,
                body: "x 1\n".into(),
                delete_from: nodes(&["b"]),
            }]
        );
    }

    #[test]
    fn the_owners_newer_or_equal_copy_wins_and_wrong_copies_are_deleted() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b", "c"]));
        let k = key_owned_by(&ring, "a");
        for owner_time in [20.0, 15.0] {
            let listings = vec![
                NodeListing {
                    node: "a".into(),
                    groups: vec![group(&k, owner_time, "x 2\n")],
                },
                NodeListing {
                    node: "b".into(),
                    groups: vec![group(&k, 15.0, "x 1\n")],
                },
                NodeListing {
                    node: "c".into(),
                    groups: vec![group(&k, 5.0, "x 0\n")],
                },
            ];
            let plan = plan(listings, &ring, 100.0, None);
            assert_eq!(
                plan.actions,
                vec![Action::DeleteStale {
                    key: k.clone(),
                    owner: "a".into(),
                    delete_from: nodes(&["c", "b"]),
                }]
            );
        }
    }

    #[test]
    fn the_newest_wrong_copy_replaces_an_older_copy_on_the_owner() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b", "c"]));
        let k = key_owned_by(&ring, "a");
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![group(&k, 1.0, "x 0\n")],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&k, 30.0, "x 3\n")],
            },
            NodeListing {
                node: "c".into(),
                groups: vec![group(&k, 20.0, "x 2\n")],
            },
        ];
        let plan = plan(listings, &ring, 100.0, None);
        let [Action::Move {
            source,
            body,
            delete_from,
            ..
        }] = plan.actions.as_slice()
        else {
            panic!("expected one move, got {:?}", plan.actions)
        };
        assert_eq!(source, "b");
        assert_eq!(body, "x 3\n");
        assert_eq!(delete_from, &nodes(&["c", "b"]));
    }

    #[test]
    fn a_draining_node_not_on_the_ring_has_all_its_groups_moved() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let groups: Vec<ListedGroup> = (0..50)
            .map(|i| group(&key("j", &format!("i{i}")), 10.0, "x 1\n"))
            .collect();
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![],
            },
            NodeListing {
                node: "gone".into(),
                groups,
            },
        ];
        let plan = plan(listings, &ring, 100.0, None);
        assert_eq!(plan.actions.len(), 50);
        assert!(plan.actions.iter().all(|a| matches!(a,
            Action::Move { source, delete_from, .. } if source == "gone" && delete_from == &nodes(&["gone"]))));
    }

    #[test]
    fn old_groups_are_dropped_instead_of_copied_with_max_age() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let old = key_owned_by(&ring, "a");
        let fresh = key("fresh", "x");
        let fresh_owner = ring.owner(&fresh.ring_key()).unwrap().to_string();
        let other = if fresh_owner == "a" { "b" } else { "a" };
        let mut listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&old, 1000.0, "x 1\n")],
            },
        ];
        let index = usize::from(other == "b");
        listings[index].groups.push(group(&fresh, 9000.0, "y 1\n"));
        let plan = plan(listings, &ring, 10_000.0, Some(Duration::from_secs(3600)));
        assert_eq!(plan.actions.len(), 2, "{:?}", plan.actions);
        assert!(plan.actions.iter().any(|a| matches!(a,
            Action::DropExpired { key, delete_from, .. } if *key == old && delete_from == &nodes(&["b"]))));
        assert!(plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Move { key, .. } if *key == fresh)));
    }

    #[test]
    fn an_unlisted_owner_leaves_the_group_alone() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let listings = vec![NodeListing {
            node: "b".into(),
            groups: vec![group(&k, 10.0, "x 1\n")],
        }];
        let plan = plan(listings, &ring, 100.0, None);
        assert_eq!(plan.actions, vec![]);
        assert_eq!(plan.owner_not_listed, 1);
        let empty = Ring::build(Algorithm::Rendezvous, &[]);
        let listings = vec![NodeListing {
            node: "b".into(),
            groups: vec![group(&k, 10.0, "x 1\n")],
        }];
        assert_eq!(plan_len(listings, &empty), 0);
    }

    fn plan_len(listings: Vec<NodeListing>, ring: &Ring) -> usize {
        plan(listings, ring, 0.0, None).actions.len()
    }

    /// A node's holdings in the simulation: ring key -> (push time, body).
    type World = BTreeMap<String, BTreeMap<String, (f64, String)>>;

    /// Applies a plan the way the executor does: every copy first (the target stamps `now` as the push time),
    /// then every delete.
    fn apply(world: &mut World, plan: &Plan, now: f64) {
        for action in &plan.actions {
            if let Action::Move {
                key, owner, body, ..
            } = action
            {
                world
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.to_string(), (now, body.clone()));
            }
        }
        for action in &plan.actions {
            for node in action.delete_from() {
                if let Some(groups) = world.get_mut(node) {
                    groups.remove(&action.key().to_string());
                }
            }
        }
    }

    fn listings_of(world: &World, keys: &BTreeMap<String, GroupingKey>) -> Vec<NodeListing> {
        world
            .iter()
            .map(|(node, groups)| NodeListing {
                node: node.clone(),
                groups: groups
                    .iter()
                    .map(|(name, (time, body))| group(&keys[name], *time, body))
                    .collect(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the holdings, after one pass every group is on exactly its owner with the newest value among
        /// its copies (the owner's on a tie), except groups dropped because they were older than `max_age`; a
        /// second pass has nothing to do.
        #[test]
        fn one_pass_leaves_every_group_once_on_its_owner_with_its_newest_value(
            ring_size in 1usize..5,
            draining in 0usize..3,
            copies in proptest::collection::vec((0usize..12, 0usize..7, 0u32..6), 0..60),
            max_age in proptest::option::of(1u32..6),
        ) {
            let ring_nodes: Vec<String> = (0..ring_size).map(|n| format!("n{n}")).collect();
            let ring = Ring::build(Algorithm::Rendezvous, &ring_nodes);
            let all_nodes: Vec<String> = (0..ring_size + draining).map(|n| format!("n{n}")).collect();
            let mut keys = BTreeMap::new();
            let mut world: World = all_nodes.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
            for (group_index, node_index, time) in copies {
                let k = key("j", &format!("g{group_index}"));
                let node = &all_nodes[node_index % all_nodes.len()];
                let name = k.to_string();
                keys.insert(name.clone(), k);
                world.get_mut(node).unwrap().insert(name, (f64::from(time), format!("{node}@{time}")));
            }
            let now = 10.0;
            let max_age = max_age.map(|s| Duration::from_secs(u64::from(s)));
            // Expected: for each group, the owner's value if it is the newest (ties to the owner), else the
            // newest wrong copy, or nothing if that copy is expired.
            let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
            for (name, k) in &keys {
                let owner = ring.owner(&k.ring_key()).unwrap().to_string();
                let holders: Vec<(&String, &(f64, String))> = world.iter()
                    .filter_map(|(node, groups)| groups.get(name).map(|v| (node, v))).collect();
                let owner_copy = holders.iter().find(|(n, _)| **n == owner).map(|(_, v)| (*v).clone());
                // Among equally new wrong copies the planner takes the first node by name.
                let newest_wrong = holders.iter().filter(|(n, _)| **n != owner)
                    .max_by(|(node_a, a), (node_b, b)| a.0.total_cmp(&b.0).then_with(|| node_b.cmp(node_a)))
                    .map(|(_, v)| (*v).clone());
                let value = match (owner_copy, newest_wrong) {
                    (Some(o), None) => Some(o.1),
                    (Some(o), Some(w)) if o.0 >= w.0 => Some(o.1),
                    // An expired wrong copy is dropped; an (even older) owner copy is not the rebalancer's to delete.
                    (o, Some(w)) if is_expired(w.0, now, max_age) => o.map(|o| o.1),
                    (_, Some(w)) => Some(w.1),
                    (None, None) => unreachable!(),
                };
                expected.insert(name.clone(), value);
            }
            let first = plan(listings_of(&world, &keys), &ring, now, max_age);
            apply(&mut world, &first, now);
            for (name, k) in &keys {
                let owner = ring.owner(&k.ring_key()).unwrap();
                let holders: BTreeSet<&String> = world.iter()
                    .filter(|(_, groups)| groups.contains_key(name)).map(|(n, _)| n).collect();
                match &expected[name] {
                    Some(value) => {
                        prop_assert_eq!(holders.iter().map(|s| s.as_str()).collect::<Vec<_>>(), vec![owner]);
                        prop_assert_eq!(&world[owner][name].1, value);
                    }
                    None => prop_assert!(holders.is_empty(), "{} expired but still on {:?}", name, holders),
                }
            }
            let second = plan(listings_of(&world, &keys), &ring, now, max_age);
            prop_assert_eq!(second.actions, vec![]);
        }
    }
}

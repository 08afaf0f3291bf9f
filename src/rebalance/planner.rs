//! Pure planning: given what every reachable node holds and the current ring, decide which groups to copy to
//! their owners and which copies to delete. No I/O, no clock: the caller passes `now`.
//!
//! A group's *owner set* is its owner and the next `factor - 1` distinct nodes in ring order
//! ([`Ring::owner_set`]); with `factor` 1 it is the owner alone. Copies are compared by the client's last push
//! ([`last_client_push`]), not by `push_time_seconds`: the Pushgateway stamps a copy the rebalancer made with the
//! time of the copy, and that stamp must not beat a client's later push to another node (through a replica with
//! an older ring, or straight to the node). An owner's copy is *current* when its client push is at least as new
//! as the newest copy's anywhere, or it has the same metrics (every node stamps its own push time, so two copies
//! of one push differ by milliseconds). For each group:
//! - every owner current and no copy elsewhere: nothing to do;
//! - every owner current, copies elsewhere: delete those ([`Action::DeleteStale`]);
//! - the newest copy is on a non-owner and, with `max_age` set, older than that: delete the non-owners' copies
//!   without copying ([`Action::DropExpired`]), so a dead job does not look alive on its new owner;
//! - else copy the newest copy to every owner that is not current, then delete every non-owner's copy
//!   ([`Action::Move`]); the executor deletes only once every copy succeeded, so every owner then holds a copy
//!   at least as new as the ones deleted.
//!
//! Groups with an owner that was not listed (unreachable, or the ring is empty) are left alone: without that
//! owner's copy there is nothing to compare with, and deleting could leave the group on zero nodes.

use std::collections::{HashMap, HashSet};
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

/// What to do about one misplaced or under-replicated group.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `PUT` `body` (from `source`) to every node in `to` (owners without a current copy), then delete the group
    /// from every node in `delete_from` (non-owners).
    Move {
        key: GroupingKey,
        to: Vec<String>,
        source: String,
        source_push_time: f64,
        /// The client's last push of the copied group, carried by the copy ([`MovedMarker`]).
        last_client_push: f64,
        body: String,
        delete_from: Vec<String>,
    },
    /// Every owner already holds a copy at least as new (by the client's last push): delete the others.
    DeleteStale {
        key: GroupingKey,
        owners: Vec<String>,
        delete_from: Vec<String>,
    },
    /// Every wrong copy is older than `max_age` and no owner has one newer: delete them without copying.
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
    /// Misplaced or under-replicated groups left alone because an owner was not listed.
    pub owner_not_listed: usize,
    /// Groups with fewer current copies on their owners than owners (`min(factor, ring nodes)`) when planned.
    pub under_replicated: usize,
}

/// Plans the copies and deletes that put every listed group on exactly its owner set in `ring` (the owner and
/// the next `factor - 1` nodes), each with the newest value among its copies.
///
/// `now_seconds` is the current Unix time; `max_age` enables [`Action::DropExpired`]. "Newest" is by the client's
/// last push ([`ListedGroup::last_client_push`]); ties keep an owner's copy. Actions come sorted by grouping key, so a plan is reproducible.
pub fn plan(
    listings: Vec<NodeListing>,
    ring: &Ring,
    factor: usize,
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
        let owners = ring.owner_set(&ring_key, factor);
        if owners.is_empty() {
            result.owner_not_listed += 1;
            continue;
        }
        let (mut on_owners, mut wrong): (Vec<(String, ListedGroup)>, Vec<_>) = holders
            .into_iter()
            .partition(|(node, _)| owners.contains(&node.as_str()));
        // Owner copies in owner-set order, so the first of equally new ones is the earliest owner's.
        on_owners.sort_by_key(|(node, _)| owners.iter().position(|owner| owner == node));
        // Newest wrong copy last; equal times fall back to the node name so the choice is deterministic.
        wrong.sort_by(|(node_a, a), (node_b, b)| {
            a.last_client_push
                .total_cmp(&b.last_client_push)
                .then_with(|| node_b.cmp(node_a))
        });
        let newest_on_owner = on_owners.iter().fold(
            None,
            |best: Option<&(String, ListedGroup)>, copy| match best {
                Some(best) if best.1.last_client_push >= copy.1.last_client_push => Some(best),
                _ => Some(copy),
            },
        );
        let newest_wrong = wrong.last();
        // The source: an owner's copy unless a wrong copy's client push is strictly newer.
        let (source, source_is_owner) = match (newest_on_owner, newest_wrong) {
            (Some(owner_copy), Some(wrong_copy))
                if wrong_copy.1.last_client_push > owner_copy.1.last_client_push =>
            {
                (wrong_copy, false)
            }
            (Some(owner_copy), _) => (owner_copy, true),
            (None, Some(wrong_copy)) => (wrong_copy, false),
            (None, None) => continue,
        };
        let is_current = |copy: &ListedGroup| {
            copy.last_client_push >= source.1.last_client_push
                || (copy.body.is_some() && copy.body == source.1.body)
        };
        let missing: Vec<String> = owners
            .iter()
            .filter(|owner| {
                !on_owners
                    .iter()
                    .any(|(node, copy)| node == *owner && is_current(copy))
            })
            .map(|owner| owner.to_string())
            .collect();
        if !missing.is_empty() {
            result.under_replicated += 1;
        }
        if missing.is_empty() && wrong.is_empty() {
            continue;
        }
        if !owners
            .iter()
            .all(|owner| listed_nodes.iter().any(|node| node == owner))
        {
            result.owner_not_listed += 1;
            continue;
        }
        let delete_from: Vec<String> = wrong.iter().map(|(node, _)| node.clone()).collect();
        let key = source.1.key.clone();
        let action = if missing.is_empty() {
            Action::DeleteStale {
                key,
                owners: owners.iter().map(|owner| owner.to_string()).collect(),
                delete_from,
            }
        } else if !source_is_owner && is_expired(source.1.last_client_push, now_seconds, max_age) {
            Action::DropExpired {
                key,
                newest_push_time: source.1.last_client_push,
                delete_from,
            }
        } else {
            // A copy on a node its listing took to be its owner is listed without a body; should the ring used
            // for listing ever differ from this one, leave the group alone rather than copy an empty body.
            let Some(body) = source.1.body.clone() else {
                result.owner_not_listed += 1;
                continue;
            };
            Action::Move {
                key,
                to: missing,
                source: source.0.clone(),
                source_push_time: source.1.push_time_seconds,
                last_client_push: source.1.last_client_push,
                body,
                delete_from,
            }
        };
        result.actions.push(action);
    }
    result
        .actions
        .sort_by_cached_key(|action| action.key().to_string());
    result
}

/// The `push_time_seconds` of each copy a pass is to delete, as the pass listed it. Before deleting, the executor
/// lists those nodes again and deletes only copies still stamped as listed: a copy that changed was pushed since
/// (through another gateway replica or straight to the node), and deleting it would lose an acknowledged push.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListedPushTimes {
    /// node -> ring key -> `push_time_seconds` when listed.
    by_node: HashMap<String, HashMap<Vec<u8>, f64>>,
}

impl ListedPushTimes {
    /// The push time of every copy in `listings`.
    pub fn of_listings(listings: &[NodeListing]) -> ListedPushTimes {
        let by_node = listings
            .iter()
            .map(|listing| {
                let times = listing
                    .groups
                    .iter()
                    .map(|group| (group.key.ring_key(), group.push_time_seconds))
                    .collect();
                (listing.node.clone(), times)
            })
            .collect();
        ListedPushTimes { by_node }
    }

    /// Keeps only the copies `actions` delete.
    pub fn retain_deletes(&mut self, actions: &[Action]) {
        let mut wanted: HashMap<&str, HashSet<Vec<u8>>> = HashMap::new();
        for action in actions {
            for node in action.delete_from() {
                wanted
                    .entry(node.as_str())
                    .or_default()
                    .insert(action.key().ring_key());
            }
        }
        self.by_node.retain(|node, times| {
            let Some(keys) = wanted.get(node.as_str()) else {
                return false;
            };
            times.retain(|ring_key, _| keys.contains(ring_key));
            true
        });
    }

    /// Whether the copy of `ring_key` on `node` may still be deleted: it is there and stamped with the push time
    /// the pass listed (`relisted`: its push time now, `None` when the node no longer holds it).
    pub fn unchanged(&self, node: &str, ring_key: &[u8], relisted: Option<f64>) -> bool {
        let listed = self.by_node.get(node).and_then(|times| times.get(ring_key));
        matches!((listed, relisted), (Some(listed), Some(now)) if listed.to_bits() == now.to_bits())
    }
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
    let mut expired = HashSet::new();
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
        assert!(plan(listings, &ring, 1, 1000.0, None)
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
            1,
            100.0,
            None,
        );
        assert_eq!(newer_elsewhere.actions, vec![]);
        assert_eq!(newer_elsewhere.owner_not_listed, 1);
        // Older on the wrong node: deleting it needs no body.
        let stale_elsewhere = plan(
            listings(vec![group(&k, 5.0, "x 5\n")], vec![unrendered(1.0)]),
            &ring,
            1,
            100.0,
            None,
        );
        assert_eq!(
            stale_elsewhere.actions,
            vec![Action::DeleteStale {
                key: k.clone(),
                owners: nodes(&["a"]),
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
        let plan = plan(listings, &ring, 1, 100.0, None);
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
        let plan = plan(listings, &ring, 1, 100.0, None);
        assert_eq!(
            plan.actions,
            vec![Action::Move {
                key: k,
                to: nodes(&["a"]),
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
            let plan = plan(listings, &ring, 1, 100.0, None);
            assert_eq!(
                plan.actions,
                vec![Action::DeleteStale {
                    key: k.clone(),
                    owners: nodes(&["a"]),
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
        let plan = plan(listings, &ring, 1, 100.0, None);
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

    /// A copy the rebalancer made, stamped by its node at `moved_at`, carrying the client's push at `client_push`.
    fn moved(key: &GroupingKey, moved_at: f64, client_push: f64, body: &str) -> ListedGroup {
        ListedGroup {
            last_client_push: client_push,
            ..group(key, moved_at, body)
        }
    }

    #[test]
    fn a_later_direct_push_to_the_old_owner_beats_a_moved_copy_stamped_after_it() {
        // The new owner "a" got v1 (pushed at 10) by a move at 50; meanwhile a replica with the old ring sent v2
        // to "b" at 40. v2 is the client's last push: it goes to "a", and "b" loses its copy only then.
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![moved(&k, 50.0, 10.0, "x 1\n")],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&k, 40.0, "x 2\n")],
            },
        ];
        let planned = plan(listings.clone(), &ring, 1, 100.0, None);
        assert_eq!(
            planned.actions,
            vec![Action::Move {
                key: k.clone(),
                to: nodes(&["a"]),
                source: "b".into(),
                source_push_time: 40.0,
                last_client_push: 40.0,
                body: "x 2\n".into(),
                delete_from: nodes(&["b"]),
            }]
        );
        // The moved copy of the very push "b" holds (its delete failed last pass) is current: a tie keeps the owner's.
        let same_push = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![moved(&k, 50.0, 40.0, "x 2\n")],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&k, 40.0, "x 2\n")],
            },
        ];
        assert_eq!(
            plan(same_push, &ring, 1, 100.0, None).actions,
            vec![Action::DeleteStale {
                key: k.clone(),
                owners: nodes(&["a"]),
                delete_from: nodes(&["b"]),
            }]
        );
        // With max_age, the direct push's age counts, not the move's: v2 at 40 is 60 s old at 100.
        let aged = plan(listings, &ring, 1, 100.0, Some(Duration::from_secs(30)));
        assert!(
            matches!(aged.actions.as_slice(), [Action::DropExpired { newest_push_time, .. }] if *newest_push_time == 40.0),
            "{:?}",
            aged.actions
        );
    }

    #[test]
    fn with_replication_an_owners_moved_copy_is_not_current_against_a_later_direct_push() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b", "c"]));
        let k = key("j", "1");
        let owners: Vec<String> = ring
            .owner_set(&k.ring_key(), 2)
            .iter()
            .map(|n| n.to_string())
            .collect();
        let outsider = ["a", "b", "c"]
            .into_iter()
            .find(|n| !owners.contains(&n.to_string()))
            .unwrap();
        // The first owner got v1 by a move at 50 (the client pushed it at 10); the second owner got v2 at 40
        // straight from a client. v2 goes to the first owner; the outsider's v1 goes.
        let listings = vec![
            NodeListing {
                node: owners[0].clone(),
                groups: vec![moved(&k, 50.0, 10.0, "x 1\n")],
            },
            NodeListing {
                node: owners[1].clone(),
                groups: vec![group(&k, 40.0, "x 2\n")],
            },
            NodeListing {
                node: outsider.into(),
                groups: vec![group(&k, 10.0, "x 1\n")],
            },
        ];
        let planned = plan(listings, &ring, 2, 100.0, None);
        assert_eq!(
            planned.actions,
            vec![Action::Move {
                key: k.clone(),
                to: vec![owners[0].clone()],
                source: owners[1].clone(),
                source_push_time: 40.0,
                last_client_push: 40.0,
                body: "x 2\n".into(),
                delete_from: vec![outsider.to_string()],
            }]
        );
        assert_eq!(planned.under_replicated, 1);
    }

    #[test]
    fn a_copy_may_be_deleted_only_while_its_push_time_is_the_one_listed() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b"]));
        let k = key_owned_by(&ring, "a");
        let kept = key_owned_by(&ring, "b");
        let listings = vec![
            NodeListing {
                node: "a".into(),
                groups: vec![group(&kept, 5.0, "y 1\n")],
            },
            NodeListing {
                node: "b".into(),
                groups: vec![group(&k, 10.0, "x 1\n"), group(&kept, 7.0, "y 1\n")],
            },
        ];
        let mut times = ListedPushTimes::of_listings(&listings);
        let planned = plan(listings, &ring, 1, 100.0, None);
        times.retain_deletes(&planned.actions);
        // "b" loses `k` (moved), "a" loses `kept` (stale): deletable while stamped as listed.
        assert!(times.unchanged("b", &k.ring_key(), Some(10.0)));
        assert!(times.unchanged("a", &kept.ring_key(), Some(5.0)));
        // Pushed since the listing, or gone: not deleted.
        assert!(!times.unchanged("b", &k.ring_key(), Some(10.5)));
        assert!(!times.unchanged("b", &k.ring_key(), None));
        // A copy the plan does not delete is never deletable.
        assert!(!times.unchanged("b", &kept.ring_key(), Some(7.0)));
        assert!(!times.unchanged("c", &k.ring_key(), Some(10.0)));
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
        let plan = plan(listings, &ring, 1, 100.0, None);
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
        let plan = plan(
            listings,
            &ring,
            1,
            10_000.0,
            Some(Duration::from_secs(3600)),
        );
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
        let plan = plan(listings, &ring, 1, 100.0, None);
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
        plan(listings, ring, 1, 0.0, None).actions.len()
    }

    /// One copy in the simulation: the node's own stamp, the client's last push it carries, and its metrics.
    #[derive(Clone, Debug, PartialEq)]
    struct Held {
        push_time: f64,
        client_push: f64,
        body: String,
    }

    impl Held {
        /// A copy as the client's push at `client_push` left it; `moved_after` seconds later when the rebalancer
        /// copied it here (the node then stamped the copy with the time of the copy).
        fn pushed(client_push: u32, moved_after: Option<u32>, body: String) -> Held {
            Held {
                push_time: f64::from(client_push + moved_after.unwrap_or(0)),
                client_push: f64::from(client_push),
                body,
            }
        }
    }

    /// A node's holdings in the simulation: ring key -> copy.
    type World = BTreeMap<String, BTreeMap<String, Held>>;

    /// The copy a `Move`'s `PUT` leaves on an owner at `now`: the node stamps `now`, the marker keeps the client's
    /// push.
    fn copy_made_by(action: &Action, now: f64) -> Option<Held> {
        match action {
            Action::Move {
                body,
                last_client_push,
                ..
            } => Some(Held {
                push_time: now,
                client_push: *last_client_push,
                body: body.clone(),
            }),
            _ => None,
        }
    }

    /// The copy the planner must keep: the newest client push (ties: the first owner holding it, then the first
    /// node by name).
    fn newest_by_client_push<'a>(
        holders: impl Iterator<Item = (&'a String, &'a Held)>,
        owners: &[&str],
    ) -> Option<&'a Held> {
        holders
            .max_by(|(node_a, a), (node_b, b)| {
                let rank = |node: &String| {
                    owners
                        .iter()
                        .position(|owner| owner == node)
                        .map_or(0, |p| usize::MAX - p)
                };
                a.client_push
                    .total_cmp(&b.client_push)
                    .then_with(|| rank(node_a).cmp(&rank(node_b)))
                    .then_with(|| node_b.cmp(node_a))
            })
            .map(|(_, held)| held)
    }

    /// Applies a plan the way the executor does: every copy first, then every delete.
    fn apply(world: &mut World, plan: &Plan, now: f64) {
        for action in &plan.actions {
            if let (Action::Move { key, to, .. }, Some(copy)) = (action, copy_made_by(action, now))
            {
                for owner in to {
                    world
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.to_string(), copy.clone());
                }
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
                    .map(|(name, held)| ListedGroup {
                        key: keys[name].clone(),
                        push_time_seconds: held.push_time,
                        last_client_push: held.client_push,
                        body: Some(held.body.clone()),
                    })
                    .collect(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the holdings (copies pushed by clients, and copies the rebalancer made, which the node stamped
        /// later than the client's push they carry), after one pass every group is on exactly its owner with the
        /// value of its newest *client* push among its copies (the owner's on a tie), except groups dropped because
        /// that push is older than `max_age`; a second pass has nothing to do.
        #[test]
        fn one_pass_leaves_every_group_once_on_its_owner_with_its_newest_value(
            ring_size in 1usize..5,
            draining in 0usize..3,
            copies in proptest::collection::vec(
                (0usize..12, 0usize..7, 0u32..6, proptest::option::of(1u32..6)), 0..60),
            max_age in proptest::option::of(1u32..6),
        ) {
            let ring_nodes: Vec<String> = (0..ring_size).map(|n| format!("n{n}")).collect();
            let ring = Ring::build(Algorithm::Rendezvous, &ring_nodes);
            let all_nodes: Vec<String> = (0..ring_size + draining).map(|n| format!("n{n}")).collect();
            let mut keys = BTreeMap::new();
            let mut world: World = all_nodes.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
            for (group_index, node_index, time, moved_after) in copies {
                let k = key("j", &format!("g{group_index}"));
                let node = &all_nodes[node_index % all_nodes.len()];
                let name = k.to_string();
                keys.insert(name.clone(), k);
                let held = Held::pushed(time, moved_after, format!("{node}@{time}"));
                world.get_mut(node).unwrap().insert(name, held);
            }
            let now = 10.0;
            let max_age = max_age.map(|s| Duration::from_secs(u64::from(s)));
            // Expected: the newest client push's value; if it is on a wrong node and expired, it is dropped and
            // the owner keeps whatever (older) copy it has.
            let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
            for (name, k) in &keys {
                let owner = ring.owner(&k.ring_key()).unwrap().to_string();
                let holders = world.iter().filter_map(|(node, groups)| groups.get(name).map(|v| (node, v)));
                let newest = newest_by_client_push(holders, &[owner.as_str()]).unwrap().clone();
                let owner_copy = world[&owner].get(name);
                let newest_is_owners = owner_copy == Some(&newest);
                let value = if !newest_is_owners && is_expired(newest.client_push, now, max_age) {
                    owner_copy.map(|o| o.body.clone())
                } else {
                    Some(newest.body)
                };
                expected.insert(name.clone(), value);
            }
            let first = plan(listings_of(&world, &keys), &ring, 1, now, max_age);
            apply(&mut world, &first, now);
            for (name, k) in &keys {
                let owner = ring.owner(&k.ring_key()).unwrap();
                let holders: BTreeSet<&String> = world.iter()
                    .filter(|(_, groups)| groups.contains_key(name)).map(|(n, _)| n).collect();
                match &expected[name] {
                    Some(value) => {
                        prop_assert_eq!(holders.iter().map(|s| s.as_str()).collect::<Vec<_>>(), vec![owner]);
                        prop_assert_eq!(&world[owner][name].body, value);
                    }
                    None => prop_assert!(holders.is_empty(), "{} expired but still on {:?}", name, holders),
                }
            }
            let second = plan(listings_of(&world, &keys), &ring, 1, now, max_age);
            prop_assert_eq!(second.actions, vec![]);
        }
    }

    /// Applies a plan like the executor, with failures: a `Move` whose copy to any owner failed deletes nothing,
    /// and a failed delete leaves that copy.
    fn apply_with_failures(world: &mut World, plan: &Plan, now: f64, fails: &[bool]) {
        let mut fail = fails.iter().copied().cycle();
        let mut deletable = Vec::new();
        for action in &plan.actions {
            let mut copied_everywhere = true;
            if let (Action::Move { key, to, .. }, Some(copy)) = (action, copy_made_by(action, now))
            {
                for owner in to {
                    if fail.next().unwrap_or(false) {
                        copied_everywhere = false;
                    } else {
                        world
                            .entry(owner.clone())
                            .or_default()
                            .insert(key.to_string(), copy.clone());
                    }
                }
            }
            deletable.push(copied_everywhere);
        }
        for (action, deletable) in plan.actions.iter().zip(deletable) {
            if !deletable {
                continue;
            }
            for node in action.delete_from() {
                if fail.next().unwrap_or(false) {
                    continue;
                }
                if let Some(groups) = world.get_mut(node) {
                    groups.remove(&action.key().to_string());
                }
            }
        }
    }

    fn holders_of(world: &World, name: &str) -> BTreeSet<String> {
        world
            .iter()
            .filter(|(_, groups)| groups.contains_key(name))
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// A replicated world: `copies` of groups on nodes, some made by the rebalancer (`moved_after`); copies of one
    /// client push have the same body.
    fn replicated_world(
        all_nodes: &[String],
        copies: Vec<(usize, usize, u32, Option<u32>)>,
    ) -> (World, BTreeMap<String, GroupingKey>) {
        let mut keys = BTreeMap::new();
        let mut world: World = all_nodes
            .iter()
            .map(|n| (n.clone(), BTreeMap::new()))
            .collect();
        for (group_index, node_index, time, moved_after) in copies {
            let k = key("j", &format!("g{group_index}"));
            let node = &all_nodes[node_index % all_nodes.len()];
            let name = k.to_string();
            keys.insert(name.clone(), k);
            world.get_mut(node).unwrap().insert(
                name.clone(),
                Held::pushed(time, moved_after, format!("{name}@{time}")),
            );
        }
        (world, keys)
    }
    #[test]
    fn a_group_is_copied_to_every_owner_without_a_current_copy_and_counted_under_replicated() {
        let ring = Ring::build(Algorithm::Rendezvous, &nodes(&["a", "b", "c", "d"]));
        let k = key("j", "1");
        let owners: Vec<String> = ring
            .owner_set(&k.ring_key(), 3)
            .iter()
            .map(|n| n.to_string())
            .collect();
        let outsider = ["a", "b", "c", "d"]
            .into_iter()
            .find(|n| !owners.iter().any(|o| o == n))
            .unwrap();
        // The first owner holds the newest copy, the second an older one, the third none, the outsider a stale one.
        let listings = vec![
            NodeListing {
                node: owners[0].clone(),
                groups: vec![group(&k, 30.0, "x 3\n")],
            },
            NodeListing {
                node: owners[1].clone(),
                groups: vec![group(&k, 20.0, "x 2\n")],
            },
            NodeListing {
                node: owners[2].clone(),
                groups: vec![],
            },
            NodeListing {
                node: outsider.into(),
                groups: vec![group(&k, 10.0, "x 1\n")],
            },
        ];
        let planned = plan(listings.clone(), &ring, 3, 100.0, None);
        assert_eq!(planned.under_replicated, 1);
        assert_eq!(
            planned.actions,
            vec![Action::Move {
                key: k.clone(),
                to: vec![owners[1].clone(), owners[2].clone()],
                source: owners[0].clone(),
                source_push_time: 30.0,
                last_client_push: 30.0,
                body: "x 3\n".into(),
                delete_from: vec![outsider.to_string()],
            }]
        );
        // Two copies of one push differ only in the time each node stamped: both are current.
        let in_sync = vec![
            NodeListing {
                node: owners[0].clone(),
                groups: vec![group(&k, 30.0, "x 3\n")],
            },
            NodeListing {
                node: owners[1].clone(),
                groups: vec![group(&k, 30.2, "x 3\n")],
            },
        ];
        let planned = plan(in_sync, &ring, 2, 100.0, None);
        assert_eq!((planned.actions.len(), planned.under_replicated), (0, 0));
        // An owner that was not listed: nothing is copied or deleted.
        let planned = plan(listings[..2].to_vec(), &ring, 3, 100.0, None);
        assert_eq!(planned.actions, vec![]);
        assert_eq!(planned.owner_not_listed, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// With every request succeeding, one pass leaves every group on exactly its owner set (min(R, ring
        /// nodes) nodes), each owner with the value of the newest client push among the group's copies (a copy
        /// the rebalancer made is as new as the push it carries, not as its own stamp); a second pass does
        /// nothing.
        #[test]
        fn one_pass_leaves_every_group_on_exactly_its_owner_set_with_its_newest_value(
            ring_size in 1usize..6,
            draining in 0usize..3,
            factor in 1usize..4,
            copies in proptest::collection::vec(
                (0usize..10, 0usize..8, 0u32..6, proptest::option::of(1u32..6)), 0..60),
        ) {
            let ring_nodes: Vec<String> = (0..ring_size).map(|n| format!("n{n}")).collect();
            let ring = Ring::build(Algorithm::Rendezvous, &ring_nodes);
            let all_nodes: Vec<String> = (0..ring_size + draining).map(|n| format!("n{n}")).collect();
            let (mut world, keys) = replicated_world(&all_nodes, copies);
            let newest: BTreeMap<String, String> = keys.keys().map(|name| {
                let holders = world.iter().filter_map(|(node, groups)| groups.get(name).map(|v| (node, v)));
                (name.clone(), newest_by_client_push(holders, &[]).unwrap().body.clone())
            }).collect();
            let now = 10.0;
            let first = plan(listings_of(&world, &keys), &ring, factor, now, None);
            apply(&mut world, &first, now);
            for (name, k) in &keys {
                let owners: BTreeSet<String> =
                    ring.owner_set(&k.ring_key(), factor).iter().map(|n| n.to_string()).collect();
                prop_assert_eq!(owners.len(), factor.min(ring_size));
                prop_assert_eq!(&holders_of(&world, name), &owners);
                for owner in &owners {
                    prop_assert_eq!(&world[owner][name].body, &newest[name]);
                }
            }
            let second = plan(listings_of(&world, &keys), &ring, factor, now, None);
            prop_assert_eq!(second.actions, vec![]);
            prop_assert_eq!(second.under_replicated, 0);
        }

        /// Whatever fails (any copy, any delete), no group is ever left on zero nodes, and the value of its newest
        /// client push is never lost: some node still holds it (or a copy made from it).
        #[test]
        fn a_failure_never_leaves_a_group_on_zero_nodes(
            ring_size in 1usize..6,
            draining in 0usize..3,
            factor in 1usize..4,
            copies in proptest::collection::vec(
                (0usize..10, 0usize..8, 0u32..6, proptest::option::of(1u32..6)), 0..60),
            fails in proptest::collection::vec(any::<bool>(), 1..16),
        ) {
            let ring_nodes: Vec<String> = (0..ring_size).map(|n| format!("n{n}")).collect();
            let ring = Ring::build(Algorithm::Rendezvous, &ring_nodes);
            let all_nodes: Vec<String> = (0..ring_size + draining).map(|n| format!("n{n}")).collect();
            let (mut world, keys) = replicated_world(&all_nodes, copies);
            let now = 10.0;
            for pass in 0..3 {
                let before = world.clone();
                let planned = plan(listings_of(&world, &keys), &ring, factor, now + f64::from(pass), None);
                apply_with_failures(&mut world, &planned, now + f64::from(pass), &fails);
                for name in keys.keys() {
                    let holders = before.iter().filter_map(|(node, groups)| groups.get(name).map(|v| (node, v)));
                    let Some(newest) = newest_by_client_push(holders, &[]) else { continue };
                    let still_held = world.values().filter_map(|g| g.get(name)).any(|c| c.body == newest.body);
                    prop_assert!(still_held, "{} lost its newest value {} in pass {}", name, newest.body, pass);
                }
            }
        }
    }
}

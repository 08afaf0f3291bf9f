//! Ambiguous writes: pushes whose outcome on a node is unknown, and the repair that makes the client's last
//! acknowledged value win anyway.
//!
//! A push that timed out, or whose connection broke after the request was sent, may still be applied by that
//! node later (a SIGSTOPped Pushgateway applies it on SIGCONT, a slow one when it gets to it), stamped with a
//! newer `push_time_seconds` than the push the client was acknowledged for on the next node. Timestamps cannot
//! settle it (they are the late node's clock, taken when it applied the stale write), so this replica remembers:
//!
//! - On an ambiguous failure, the group gets a [`Journal`] entry naming the *suspect* node.
//! - Every push of that group this replica acknowledges from then on (2xx) is recorded with its body, from the
//!   last `PUT`/`DELETE` on (a `PUT` or `DELETE` replaces what came before; `POST`s after it are kept in order).
//! - A push that timed out is not dropped: its exchange is polled to the end in the background (at most
//!   `ambiguous_writes.linger`), so the gateway sees when the node answers it, that is, when it applied it.
//! - The [`repair`] task waits until every suspect node is *settled*: each timed-out exchange was answered, and
//!   where one ended without an answer (a broken connection, or given up after `linger`), the node has been
//!   answering probes for `ambiguous_writes.settle_time` since (a late write sitting in a stopped node's socket
//!   is applied at once when it runs again). Then it sends the recorded writes again to the group's current
//!   owner and deletes the group from suspects that are not the owner (a delete queues behind anything the
//!   node is still applying). Pushes of a group wait while it is repaired, and the repair takes the
//!   rebalancer's push permit like any push.
//!
//! Bounded: at most `ambiguous_writes.max_groups` entries and `max_bytes` of bodies; beyond that the oldest
//! entry is forgotten (counted, logged). In memory only: a replica that restarts forgets its pending repairs.

pub mod repair;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

use crate::config::Config;
use crate::grouping::GroupingKey;
use crate::telemetry::{FaultMetrics, ForgottenLabels, NodeLabels};

/// One push this replica acknowledged, as it was forwarded.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub method: Method,
    /// The path and query the push was forwarded with.
    pub path_and_query: String,
    pub headers: WriteHeaders,
    pub body: Bytes,
}

/// The request headers that change what a node stores.
#[derive(Clone, Debug, Default)]
pub struct WriteHeaders {
    pub content_type: Option<HeaderValue>,
    pub content_encoding: Option<HeaderValue>,
}

impl WriteHeaders {
    pub fn from_headers(headers: &HeaderMap) -> WriteHeaders {
        WriteHeaders {
            content_type: headers.get(header::CONTENT_TYPE).cloned(),
            content_encoding: headers.get(header::CONTENT_ENCODING).cloned(),
        }
    }
}

/// A node that may still apply an ambiguous write of a group.
#[derive(Clone, Copy, Debug)]
pub struct Suspect {
    /// When its last ambiguous write of the group failed.
    pub failed_at: Instant,
    /// Timed-out exchanges still open: the node has not answered them yet.
    pub awaiting_answer: u32,
    /// Some ambiguous write ended without the node's answer (a broken connection, or one given up after
    /// `ambiguous_writes.linger`): only time can tell that it will not be applied any more.
    pub unanswered: bool,
}

impl Suspect {
    /// Whether no late write from this node can land any more. `answering_since`: since when the node has been
    /// answering probes without a break.
    pub fn is_settled(
        &self,
        answering_since: Option<Instant>,
        now: Instant,
        settle: Duration,
    ) -> bool {
        if self.awaiting_answer > 0 {
            return false;
        }
        !self.unanswered
            || answering_since.is_some_and(|since| {
                since >= self.failed_at && now.saturating_duration_since(since) >= settle
            })
    }
}

/// What the journal remembers about one group.
#[derive(Debug)]
struct Entry {
    key: GroupingKey,
    suspects: BTreeMap<String, Suspect>,
    writes: Vec<AckedWrite>,
    bytes: usize,
    /// Changes whenever the entry does, so a repair only removes what it repaired.
    version: u64,
    /// Insertion order, for forgetting the oldest entry first.
    order: u64,
    /// Held by pushes of this group while they are forwarded and by its repair.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// A copy of one entry, for the repair task.
#[derive(Clone, Debug)]
pub struct PendingRepair {
    pub ring_key: Vec<u8>,
    pub key: GroupingKey,
    pub suspects: BTreeMap<String, Suspect>,
    pub writes: Vec<AckedWrite>,
    pub version: u64,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Vec<u8>, Entry>,
    /// `Entry::order` -> ring key.
    by_age: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    next: u64,
}

/// The ambiguous-write journal of this replica. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Entries, readable without the lock: pushes of groups without an entry only look at this.
    len: AtomicUsize,
    config: Arc<ArcSwap<Config>>,
    metrics: FaultMetrics,
}

impl Journal {
    pub fn new(config: Arc<ArcSwap<Config>>, metrics: FaultMetrics) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                len: AtomicUsize::new(0),
                config,
                metrics,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update completes before the guard drops, so a panicked holder leaves consistent state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// No group has an entry: the push path skips everything else.
    pub fn is_empty(&self) -> bool {
        self.inner.len.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// The lock a push of this group must hold while it is forwarded, if the group has an entry.
    pub fn group_lock(&self, ring_key: &[u8]) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.state().entries.get(ring_key).map(|e| e.lock.clone())
    }

    /// A write of `key` to `node` failed in a way that may still apply it later. `awaiting_answer`: its exchange
    /// is still open and will be reported to [`Journal::note_answered`].
    pub fn note_ambiguous(
        &self,
        key: &GroupingKey,
        ring_key: &[u8],
        node: &str,
        awaiting_answer: bool,
    ) {
        self.inner
            .metrics
            .ambiguous_writes
            .get_or_create(&NodeLabels { node: node.into() })
            .inc();
        let mut state = self.state();
        let state = &mut *state;
        let entry = match state.entries.get_mut(ring_key) {
            Some(entry) => entry,
            None => {
                let order = state.next;
                state.next += 1;
                state.by_age.insert(order, ring_key.to_vec());
                state.entries.entry(ring_key.to_vec()).or_insert(Entry {
                    key: key.clone(),
                    suspects: BTreeMap::new(),
                    writes: Vec::new(),
                    bytes: 0,
                    version: 0,
                    order,
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                })
            }
        };
        let now = Instant::now();
        let suspect = entry.suspects.entry(node.to_string()).or_insert(Suspect {
            failed_at: now,
            awaiting_answer: 0,
            unanswered: false,
        });
        suspect.failed_at = now;
        if awaiting_answer {
            suspect.awaiting_answer += 1;
        } else {
            suspect.unanswered = true;
        }
        entry.version += 1;
        self.after_change(state);
    }

    /// A timed-out exchange with `node` ended: `answered` when the node answered it (so it applied it, and
    /// nothing of it can land later).
    pub fn note_answered(&self, ring_key: &[u8], node: &str, answered: bool) {
        let mut state = self.state();
        let Some(suspect) = state
            .entries
            .get_mut(ring_key)
            .and_then(|entry| entry.suspects.get_mut(node))
        else {
            return;
        };
        suspect.awaiting_answer = suspect.awaiting_answer.saturating_sub(1);
        if !answered {
            suspect.unanswered = true;
        }
    }

    /// Polls a timed-out exchange to its end (at most `ambiguous_writes.linger`) and reports it.
    pub fn await_late_answer(
        &self,
        ring_key: Vec<u8>,
        node: String,
        late: Pin<Box<dyn Future<Output = bool> + Send>>,
    ) {
        let journal = self.clone();
        let linger = self.inner.config.load().ambiguous_writes.linger;
        tokio::spawn(async move {
            let answered = tokio::time::timeout(linger, late).await.unwrap_or(false);
            if answered {
                tracing::debug!(%node, "a timed-out push was answered late: the node applied it now");
            }
            journal.note_answered(&ring_key, &node, answered);
        });
    }

    /// A push of the group was acknowledged; recorded only if the group has an entry.
    pub fn note_acked(&self, ring_key: &[u8], write: AckedWrite) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(entry) = state.entries.get_mut(ring_key) else {
            return;
        };
        if write.method != Method::POST {
            state.bytes -= entry.bytes;
            entry.bytes = 0;
            entry.writes.clear();
        }
        entry.bytes += write.body.len();
        state.bytes += write.body.len();
        entry.writes.push(write);
        entry.version += 1;
        self.after_change(state);
    }

    /// Copies of every entry, oldest first.
    pub fn pending(&self) -> Vec<PendingRepair> {
        let state = self.state();
        state
            .by_age
            .values()
            .filter_map(|ring_key| {
                let entry = state.entries.get(ring_key)?;
                Some(PendingRepair {
                    ring_key: ring_key.clone(),
                    key: entry.key.clone(),
                    suspects: entry.suspects.clone(),
                    writes: entry.writes.clone(),
                    version: entry.version,
                    lock: entry.lock.clone(),
                })
            })
            .collect()
    }

    /// The entry's current version, `None` once it is gone.
    pub fn version(&self, ring_key: &[u8]) -> Option<u64> {
        self.state().entries.get(ring_key).map(|e| e.version)
    }

    /// Removes the entry if it is still at `version` (nothing happened to the group since the repair read it).
    pub fn remove_if_unchanged(&self, ring_key: &[u8], version: u64) -> bool {
        let mut state = self.state();
        if state.entries.get(ring_key).map(|e| e.version) != Some(version) {
            return false;
        }
        Self::remove(&mut state, ring_key);
        self.inner.len.store(state.entries.len(), Ordering::Release);
        self.inner
            .metrics
            .ambiguous_pending
            .set(state.entries.len() as i64);
        true
    }

    /// Forgets an entry without repairing it.
    pub fn forget(&self, ring_key: &[u8], reason: &'static str) {
        let mut state = self.state();
        if Self::remove(&mut state, ring_key) {
            self.count_forgotten(reason);
        }
        self.inner.len.store(state.entries.len(), Ordering::Release);
        self.inner
            .metrics
            .ambiguous_pending
            .set(state.entries.len() as i64);
    }

    fn remove(state: &mut State, ring_key: &[u8]) -> bool {
        let Some(entry) = state.entries.remove(ring_key) else {
            return false;
        };
        state.by_age.remove(&entry.order);
        state.bytes -= entry.bytes;
        true
    }

    fn count_forgotten(&self, reason: &'static str) {
        self.inner
            .metrics
            .ambiguous_forgotten
            .get_or_create(&ForgottenLabels { reason })
            .inc();
    }

    /// Enforces the bounds (oldest entries go first) and publishes the size.
    fn after_change(&self, state: &mut State) {
        let limits = self.inner.config.load().ambiguous_writes;
        let max_bytes = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
        while state.entries.len() > limits.max_groups || state.bytes > max_bytes {
            let Some((_, oldest)) = state.by_age.pop_first() else {
                break;
            };
            if let Some(entry) = state.entries.remove(&oldest) {
                state.bytes -= entry.bytes;
                tracing::warn!(
                    grouping_key = %entry.key,
                    max_groups = limits.max_groups,
                    max_bytes = limits.max_bytes,
                    "forgetting an ambiguous write without repairing it: ambiguous_writes limits reached"
                );
                self.count_forgotten("capacity");
            }
        }
        self.inner.len.store(state.entries.len(), Ordering::Release);
        self.inner
            .metrics
            .ambiguous_pending
            .set(state.entries.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AmbiguousWritesConfig;

    fn journal(max_groups: usize, max_bytes: u64) -> Journal {
        let mut config = Config::parse("pushgateway: {servers: [a]}").unwrap();
        config.ambiguous_writes = AmbiguousWritesConfig {
            settle_time: Duration::from_secs(1),
            linger: Duration::from_secs(60),
            max_groups,
            max_bytes,
        };
        Journal::new(
            Arc::new(ArcSwap::from_pointee(config)),
            FaultMetrics::default(),
        )
    }

    fn key(job: &str) -> GroupingKey {
        GroupingKey::from_labels(BTreeMap::from([("job".to_string(), job.to_string())])).unwrap()
    }

    fn write(method: Method, body: &str) -> AckedWrite {
        AckedWrite {
            method,
            path_and_query: "/metrics/job/j".into(),
            headers: WriteHeaders::default(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn bodies(journal: &Journal) -> Vec<Vec<String>> {
        journal
            .pending()
            .iter()
            .map(|p| {
                p.writes
                    .iter()
                    .map(|w| format!("{} {}", w.method, String::from_utf8_lossy(&w.body)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn acknowledged_writes_are_recorded_only_for_groups_with_an_ambiguous_write() {
        let journal = journal(10, 1 << 20);
        let (a, b) = (key("a"), key("b"));
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 0"));
        assert!(journal.is_empty());
        journal.note_ambiguous(&a, &a.ring_key(), "node1", false);
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 1"));
        journal.note_acked(&b.ring_key(), write(Method::PUT, "y 1"));
        assert_eq!(journal.len(), 1);
        assert_eq!(bodies(&journal), vec![vec!["PUT x 1".to_string()]]);
    }

    #[test]
    fn a_put_or_delete_replaces_what_came_before_and_posts_are_kept_in_order() {
        let journal = journal(10, 1 << 20);
        let a = key("a");
        journal.note_ambiguous(&a, &a.ring_key(), "node1", false);
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 1"));
        journal.note_acked(&a.ring_key(), write(Method::POST, "y 1"));
        journal.note_acked(&a.ring_key(), write(Method::POST, "z 1"));
        assert_eq!(
            bodies(&journal),
            vec![vec!["PUT x 1", "POST y 1", "POST z 1"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()]
        );
        journal.note_acked(&a.ring_key(), write(Method::DELETE, ""));
        assert_eq!(bodies(&journal), vec![vec!["DELETE ".to_string()]]);
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 2"));
        assert_eq!(bodies(&journal), vec![vec!["PUT x 2".to_string()]]);
    }

    #[test]
    fn a_repair_removes_only_the_version_it_read() {
        let journal = journal(10, 1 << 20);
        let a = key("a");
        journal.note_ambiguous(&a, &a.ring_key(), "node1", false);
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 1"));
        let read = journal.pending().remove(0);
        journal.note_acked(&a.ring_key(), write(Method::PUT, "x 2"));
        assert!(!journal.remove_if_unchanged(&a.ring_key(), read.version));
        let again = journal.pending().remove(0);
        assert!(journal.remove_if_unchanged(&a.ring_key(), again.version));
        assert!(journal.is_empty());
    }

    #[test]
    fn the_oldest_entries_are_forgotten_beyond_the_limits() {
        let jobs = |journal: &Journal| -> Vec<String> {
            journal
                .pending()
                .iter()
                .map(|p| p.key.to_string())
                .collect()
        };
        let by_count = journal(2, 1 << 20);
        for job in ["a", "b", "c"] {
            let k = key(job);
            by_count.note_ambiguous(&k, &k.ring_key(), "node1", false);
        }
        assert_eq!(
            jobs(&by_count),
            vec![key("b").to_string(), key("c").to_string()]
        );

        let by_bytes = journal(10, 10);
        for job in ["a", "b", "c"] {
            let k = key(job);
            by_bytes.note_ambiguous(&k, &k.ring_key(), "node1", false);
            by_bytes.note_acked(&k.ring_key(), write(Method::PUT, "x 1"));
        }
        // 3 bytes each: the third body takes the total to 9, still within 10 bytes.
        assert_eq!(jobs(&by_bytes).len(), 3);
        let b = key("b");
        by_bytes.note_acked(&b.ring_key(), write(Method::POST, "y 1"));
        assert_eq!(
            jobs(&by_bytes),
            vec![key("b").to_string(), key("c").to_string()]
        );
    }
}

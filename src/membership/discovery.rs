//! The discovery layer: a source yields candidate addresses; the driver here runs it, keeps the last answer of
//! whatever fails, tells about an outage once (log line, metrics, `/-/ring`) and publishes [`Discovered`] for the
//! health layer.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::shutdown::Shutdown;
use crate::telemetry::{DiscoveryLabels, Metrics};

/// One membership source that finds candidates (the health layer decides which of them are in the ring).
pub trait Discovery: Send + 'static {
    /// `MembershipConfig::name` of the source.
    fn name(&self) -> &'static str;

    /// One look-up. Each part that fails (a name, a file) keeps its last good answer in `addresses`, and its
    /// failure is in `failures`; the source never drops what it knew because it could not look.
    fn discover(&mut self) -> impl Future<Output = Round> + Send;

    /// Resolves when the next look-up is due: the refresh interval passed, a watched file changed, or the
    /// config was reloaded.
    fn wait(&mut self) -> impl Future<Output = ()> + Send;
}

/// The result of one look-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// `host:port` candidates.
    pub addresses: BTreeSet<String>,
    /// What failed this time, one entry per failing part; empty on success.
    pub failures: Vec<PartFailure>,
}

/// One part of a source (a name, a file, the file watch) whose look-up failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartFailure {
    /// Which part, as the user configured it: `dns_sd.names[0] "pg.svc" (A)`, a file's path.
    pub part: String,
    /// What went wrong, naming whom it asked: `nameserver 10.0.0.10:53 answered SERVFAIL (server failure)`.
    pub error: String,
}

impl PartFailure {
    pub fn new(part: impl Into<String>, error: impl Into<String>) -> PartFailure {
        PartFailure {
            part: part.into(),
            error: error.into(),
        }
    }
}

impl std::fmt::Display for PartFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.part, self.error)
    }
}

impl Round {
    /// Every failure on one line, for logs and `last_error`.
    pub fn failure_text(&self) -> String {
        self.failures
            .iter()
            .map(PartFailure::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the health layer probes.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    pub source: &'static str,
    pub addresses: BTreeSet<String>,
    /// For `/-/ring`: last success, last error, failed look-ups (`Null` for sources that cannot fail).
    pub status: serde_json::Value,
}

/// The outage bookkeeping of one source (pure).
#[derive(Debug, Default)]
pub struct Status {
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// While the current look-ups fail: since when.
    pub failing_since: Option<SystemTime>,
    /// The parts that failed in the latest look-up (empty once one succeeds).
    pub failing: Vec<PartFailure>,
    pub failed_rounds: u64,
}

/// What changed with a round, for logging once per outage.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    Healthy,
    OutageStarted,
    StillFailing,
    Recovered,
}

impl Status {
    pub fn record(&mut self, round: &Round, now: SystemTime) -> Transition {
        self.failing.clone_from(&round.failures);
        if round.failures.is_empty() {
            self.last_success = Some(now);
            if self.failing_since.take().is_some() {
                Transition::Recovered
            } else {
                Transition::Healthy
            }
        } else {
            self.failed_rounds += 1;
            self.last_error = Some(round.failure_text());
            self.last_error_at = Some(now);
            if self.failing_since.is_none() {
                self.failing_since = Some(now);
                Transition::OutageStarted
            } else {
                Transition::StillFailing
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let time =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        serde_json::json!({
            "last_success": time(self.last_success),
            "last_error": self.last_error,
            "last_error_at": time(self.last_error_at),
            "failing_since": time(self.failing_since),
            "failing": self.failing,
            "failed_lookups": self.failed_rounds,
        })
    }
}

/// Runs `source` until shutdown; the receiver sees every round's candidates.
pub fn spawn<D: Discovery>(
    source: D,
    metrics: Metrics,
    shutdown: Shutdown,
) -> watch::Receiver<Arc<Discovered>> {
    let (tx, rx) = watch::channel(Arc::new(Discovered {
        source: source.name(),
        addresses: BTreeSet::new(),
        status: serde_json::Value::Null,
    }));
    tokio::spawn(run(source, tx, metrics, shutdown));
    rx
}

async fn run<D: Discovery>(
    mut source: D,
    tx: watch::Sender<Arc<Discovered>>,
    metrics: Metrics,
    mut shutdown: Shutdown,
) {
    let name = source.name();
    let labels = DiscoveryLabels { source: name };
    let mut status = Status::default();
    loop {
        let round = tokio::select! {
            round = source.discover() => round,
            _ = shutdown.recv() => return,
        };
        match status.record(&round, SystemTime::now()) {
            Transition::OutageStarted => tracing::warn!(
                source = name,
                error = %round.failure_text(),
                kept = round.addresses.len(),
                "membership discovery failed; keeping the last known addresses until it succeeds again"
            ),
            Transition::StillFailing => tracing::debug!(
                source = name,
                error = %round.failure_text(),
                "membership discovery still failing"
            ),
            Transition::Recovered => tracing::info!(
                source = name,
                addresses = round.addresses.len(),
                "membership discovery succeeds again"
            ),
            Transition::Healthy => {}
        }
        if round.failures.is_empty() {
            metrics.discovery_up.get_or_create(&labels).set(1);
            metrics
                .discovery_last_success
                .get_or_create(&labels)
                .set(unix_seconds(SystemTime::now()));
        } else {
            metrics.discovery_up.get_or_create(&labels).set(0);
            metrics.discovery_failures.get_or_create(&labels).inc();
        }
        let previous = tx.borrow().addresses.clone();
        if previous != round.addresses {
            let joined: Vec<&String> = round.addresses.difference(&previous).collect();
            let left: Vec<&String> = previous.difference(&round.addresses).collect();
            tracing::info!(
                source = name,
                ?joined,
                ?left,
                "discovered addresses changed"
            );
        }
        tx.send_replace(Arc::new(Discovered {
            source: name,
            addresses: round.addresses,
            status: status.to_json(),
        }));
        tokio::select! {
            () = source.wait() => {}
            _ = shutdown.recv() => return,
        }
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn round(errors: &[&str]) -> Round {
        Round {
            addresses: BTreeSet::new(),
            failures: errors
                .iter()
                .map(|e| PartFailure::new("dns_sd.names[0] \"pg.svc\" (A)", *e))
                .collect(),
        }
    }

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let mut status = Status::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(status.record(&round(&[]), t0), Transition::Healthy);
        assert_eq!(
            status.record(&round(&["NXDOMAIN"]), t0),
            Transition::OutageStarted
        );
        assert_eq!(
            status.record(&round(&["timeout"]), t0),
            Transition::StillFailing
        );
        assert_eq!(status.failed_rounds, 2);
        assert_eq!(
            status.last_error.as_deref(),
            Some("dns_sd.names[0] \"pg.svc\" (A): timeout")
        );
        assert_eq!(status.failing, round(&["timeout"]).failures);
        assert_eq!(status.record(&round(&[]), t0), Transition::Recovered);
        assert_eq!(status.failing_since, None);
        assert!(status.failing.is_empty(), "nothing fails any more");
        assert_eq!(
            status.last_error.as_deref(),
            Some("dns_sd.names[0] \"pg.svc\" (A): timeout"),
            "the last error stays visible"
        );
    }

    proptest::proptest! {
        /// Whatever the sequence of good and failed rounds, an outage is announced exactly once when it begins
        /// and once when it ends, and the failures are all counted.
        #[test]
        fn each_outage_is_announced_once(rounds in proptest::collection::vec(proptest::bool::ANY, 0..64)) {
            let mut status = Status::default();
            let mut started = 0;
            let mut recovered = 0;
            let mut expected_starts = 0;
            let mut expected_recoveries = 0;
            let mut failing = false;
            for &ok in &rounds {
                let errors: &[&str] = if ok { &[] } else { &["SERVFAIL"] };
                match status.record(&round(errors), SystemTime::UNIX_EPOCH) {
                    Transition::OutageStarted => started += 1,
                    Transition::Recovered => recovered += 1,
                    Transition::Healthy | Transition::StillFailing => {}
                }
                if ok && failing { expected_recoveries += 1; }
                if !ok && !failing { expected_starts += 1; }
                failing = !ok;
            }
            proptest::prop_assert_eq!(started, expected_starts);
            proptest::prop_assert_eq!(recovered, expected_recoveries);
            proptest::prop_assert_eq!(status.failed_rounds, rounds.iter().filter(|ok| !**ok).count() as u64);
            proptest::prop_assert_eq!(status.failing_since.is_some(), failing);
        }
    }
}

//! Per-worker counters and latency histograms, merged into one [`Report`] at the end of a run.
//!
//! Each worker owns its [`WorkerStats`] so the hot path takes no lock; the histograms are merged once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly, in µs; slower requests are clamped to it (the request
/// timeout is far below this).
const MAX_TRACKED_LATENCY_US: u64 = 600_000_000;

/// Why a push did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection (or HTTP handshake) could not be established.
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    /// The connection failed while sending or receiving.
    Io,
    /// A redirect pointed somewhere that is not loopback (or not http).
    RedirectRefused,
    /// More redirects than allowed in a row.
    TooManyRedirects,
    /// A response status other than the expected one, by class.
    Status1xx,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::RedirectRefused => "redirect_refused",
            ErrorKind::TooManyRedirects => "too_many_redirects",
            ErrorKind::Status1xx => "status_1xx",
            ErrorKind::Status2xx => "status_2xx",
            ErrorKind::Status3xx => "status_3xx",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
        }
    }

    /// The class of an unexpected status code.
    pub fn for_status(status: u16) -> Self {
        match status / 100 {
            1 => ErrorKind::Status1xx,
            2 => ErrorKind::Status2xx,
            3 => ErrorKind::Status3xx,
            4 => ErrorKind::Status4xx,
            _ => ErrorKind::Status5xx,
        }
    }
}

/// What one worker saw.
#[derive(Debug)]
pub struct WorkerStats {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<ErrorKind, u64>,
    redirects_followed: u64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerStats {
    pub fn new() -> Self {
        // Bounds are constants within hdrhistogram's limits, so construction cannot fail.
        let latency_us = Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Self {
            latency_us,
            ok: 0,
            errors: BTreeMap::new(),
            redirects_followed: 0,
        }
    }

    /// A successful push and its latency (including any redirects followed).
    pub fn record_ok(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        self.ok += 1;
    }

    pub fn record_error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn record_redirect_followed(&mut self) {
        self.redirects_followed += 1;
    }

    pub fn merge(&mut self, other: &WorkerStats) {
        // Both histograms share the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += count;
        }
        self.redirects_followed += other.redirects_followed;
    }

    pub fn ok(&self) -> u64 {
        self.ok
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency percentiles of successful pushes, in µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The outcome of a run, as printed and as written to `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub method: String,
    pub concurrency: usize,
    pub groups: usize,
    pub body_bytes: usize,
    pub follow_redirects: bool,
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub redirects_followed: u64,
    /// Successful pushes per second of wall time.
    pub ok_per_s: f64,
    /// CPU time (user + system) the load generator itself used, when the OS told us.
    pub client_cpu_s: Option<f64>,
    /// For an https target: protocol, cipher suite and key exchange of the run's first handshake.
    pub tls: Option<String>,
    pub latency_us: LatencySummary,
    /// For a fill run (every group pushed once): how many groups the target acknowledged.
    pub fill: Option<FillReport>,
}

/// The outcome of a fill run ([`crate::load::Walk::EachGroupOnce`]): each group was pushed at most once, so
/// every count is of groups. `acknowledged + failed + not_pushed == groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FillReport {
    pub groups: u64,
    /// Pushed, and answered with the expected status.
    pub acknowledged: u64,
    /// Pushed, and answered otherwise or not at all (a timed-out push may still have been stored).
    pub failed: u64,
    /// Never pushed: the run's deadline came first.
    pub not_pushed: u64,
}

/// What the run was, for the report header.
#[derive(Debug, Clone)]
pub struct RunDescription {
    pub label: String,
    pub target: String,
    pub method: String,
    pub concurrency: usize,
    pub groups: usize,
    pub body_bytes: usize,
    pub follow_redirects: bool,
    /// Whether every group was to be pushed exactly once (a fill run) rather than round-robin.
    pub fill: bool,
}

impl Report {
    pub fn new(description: RunDescription, stats: &WorkerStats, elapsed: Duration) -> Self {
        let elapsed_s = elapsed.as_secs_f64();
        let histogram = &stats.latency_us;
        let latency_us = LatencySummary {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        };
        let errors_total = stats.error_total();
        let requests = stats.ok + errors_total;
        let groups = u64::try_from(description.groups).unwrap_or(u64::MAX);
        let fill = description.fill.then(|| FillReport {
            groups,
            acknowledged: stats.ok,
            failed: errors_total,
            not_pushed: groups.saturating_sub(requests),
        });
        Report {
            label: description.label,
            target: description.target,
            method: description.method,
            concurrency: description.concurrency,
            groups: description.groups,
            body_bytes: description.body_bytes,
            follow_redirects: description.follow_redirects,
            elapsed_s,
            requests,
            ok: stats.ok,
            errors_total,
            errors: stats
                .errors
                .iter()
                .map(|(kind, count)| (kind.label().to_string(), *count))
                .collect(),
            redirects_followed: stats.redirects_followed,
            ok_per_s: if elapsed_s > 0.0 {
                stats.ok as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us,
            client_cpu_s: None,
            tls: None,
            fill,
        }
    }

    /// A fixed-width table for humans.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(kind, count)| format!("{kind}={count}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rows = [
            ("label", self.label.clone()),
            ("target", self.target.clone()),
            (
                "load",
                format!(
                    "{} x{} over {} groups, {} B body{}",
                    self.method,
                    self.concurrency,
                    self.groups,
                    self.body_bytes,
                    if self.follow_redirects {
                        ", following 307"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "requests",
                format!(
                    "{} in {:.2} s ({} ok, {} redirects followed)",
                    self.requests, self.elapsed_s, self.ok, self.redirects_followed
                ),
            ),
            ("ok/s", format!("{:.0}", self.ok_per_s)),
            (
                "latency µs",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
                    self.latency_us.p50,
                    self.latency_us.p90,
                    self.latency_us.p99,
                    self.latency_us.p999,
                    self.latency_us.max,
                    self.latency_us.mean
                ),
            ),
            (
                "client cpu",
                match self.client_cpu_s {
                    Some(cpu) if self.elapsed_s > 0.0 => {
                        format!(
                            "{cpu:.2} s ({:.0}% of one core)",
                            100.0 * cpu / self.elapsed_s
                        )
                    }
                    _ => "unknown".to_string(),
                },
            ),
            (
                "tls",
                self.tls.clone().unwrap_or_else(|| "none".to_string()),
            ),
            ("errors", errors),
        ];
        let fill = self.fill.as_ref().map(|fill| {
            (
                "fill",
                format!(
                    "{} of {} groups acknowledged, {} failed, {} not pushed",
                    fill.acknowledged, fill.groups, fill.failed, fill.not_pushed
                ),
            )
        });
        for (key, value) in rows.into_iter().chain(fill) {
            let _ = writeln!(out, "{key:<11} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> RunDescription {
        RunDescription {
            label: "t".into(),
            target: "http://127.0.0.1:1".into(),
            method: "PUT".into(),
            concurrency: 2,
            groups: 3,
            body_bytes: 10,
            follow_redirects: false,
            fill: false,
        }
    }

    #[test]
    fn merged_workers_sum_counts_and_percentiles_cover_both() {
        let mut first = WorkerStats::new();
        let mut second = WorkerStats::new();
        for micros in 1..=90 {
            first.record_ok(Duration::from_micros(micros * 10));
        }
        for _ in 0..10 {
            second.record_ok(Duration::from_millis(50));
        }
        second.record_error(ErrorKind::Timeout);
        second.record_error(ErrorKind::for_status(503));
        second.record_error(ErrorKind::for_status(502));
        first.merge(&second);

        let report = Report::new(description(), &first, Duration::from_secs(2));
        assert_eq!(report.ok, 100);
        assert_eq!(report.requests, 103);
        assert_eq!(report.errors.get("timeout"), Some(&1));
        assert_eq!(report.errors.get("status_5xx"), Some(&2));
        assert!((report.ok_per_s - 50.0).abs() < 1e-9);
        // The 90th percentile is still in the fast group, the 99th in the slow one.
        assert!(report.latency_us.p90 <= 901, "{:?}", report.latency_us);
        assert!(
            (49_900..=50_100).contains(&report.latency_us.p99),
            "{:?}",
            report.latency_us
        );
        let table = report.table();
        assert!(table.contains("status_5xx=2"), "{table}");
        assert_eq!(report.fill, None);
        assert!(!table.contains("fill"), "{table}");
    }

    #[test]
    fn a_fill_report_counts_groups_acknowledged_failed_and_not_pushed() {
        let mut stats = WorkerStats::new();
        for _ in 0..5 {
            stats.record_ok(Duration::from_millis(1));
        }
        stats.record_error(ErrorKind::Timeout);
        let report = Report::new(
            RunDescription {
                groups: 10,
                fill: true,
                ..description()
            },
            &stats,
            Duration::from_secs(1),
        );
        assert_eq!(
            report.fill,
            Some(FillReport {
                groups: 10,
                acknowledged: 5,
                failed: 1,
                not_pushed: 4,
            })
        );
        let table = report.table();
        assert!(
            table.contains("fill        5 of 10 groups acknowledged, 1 failed, 4 not pushed"),
            "{table}"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(ErrorKind::for_status(101), ErrorKind::Status1xx);
        assert_eq!(ErrorKind::for_status(307), ErrorKind::Status3xx);
        assert_eq!(ErrorKind::for_status(404), ErrorKind::Status4xx);
        assert_eq!(ErrorKind::for_status(599), ErrorKind::Status5xx);
    }
}

//! Push bodies in the Prometheus text exposition format 0.0.4.
//!
//! The body imitates what a batch job pushes: a handful of gauge and counter families spread over a few label
//! values, plus one request-duration histogram. It is generated once per run and shared by every request, so
//! the load generator spends no CPU on it while measuring.

use std::fmt::Write as _;

/// Content type of the text exposition format, as client libraries send it.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the histogram buckets (the client libraries' defaults), `+Inf` is added after them.
const HISTOGRAM_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The plain-sample families; samples are dealt round-robin over them.
const FAMILIES: [(&str, &str, &str, &str); 4] = [
    (
        "bench_queue_depth",
        "gauge",
        "queue",
        "Items waiting in the queue.",
    ),
    (
        "bench_jobs_processed_total",
        "counter",
        "kind",
        "Jobs processed since start.",
    ),
    (
        "bench_temperature_celsius",
        "gauge",
        "sensor",
        "Last temperature reading.",
    ),
    (
        "bench_bytes_sent_total",
        "counter",
        "peer",
        "Bytes sent to each peer.",
    ),
];

/// What goes into a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySpec {
    /// Number of gauge and counter samples (dealt over four families).
    pub samples: usize,
    /// Whether to append the request-duration histogram.
    pub histogram: bool,
}

impl Default for BodySpec {
    fn default() -> Self {
        Self {
            samples: 20,
            histogram: true,
        }
    }
}

/// Renders the body. Values are derived from the sample index so that runs are reproducible.
pub fn exposition_body(spec: BodySpec) -> String {
    let mut out = String::with_capacity(64 * spec.samples + 1024);
    for (family_index, (name, kind, label, help)) in FAMILIES.iter().enumerate() {
        let members: Vec<usize> = (0..spec.samples)
            .filter(|sample| sample % FAMILIES.len() == family_index)
            .collect();
        if members.is_empty() {
            continue;
        }
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (position, sample) in members.iter().enumerate() {
            let value = sample_value(*sample, kind);
            let _ = writeln!(out, "{name}{{{label}=\"v{position}\"}} {value}");
        }
    }
    if spec.histogram {
        write_histogram(&mut out);
    }
    out
}

fn sample_value(sample: usize, kind: &str) -> String {
    if kind == "counter" {
        format!("{}", 1000 + sample * 137)
    } else {
        format!("{}", (sample as f64) * 1.25 + 0.5)
    }
}

fn write_histogram(out: &mut String) {
    let name = "bench_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time spent serving requests.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (index, bound) in HISTOGRAM_BOUNDS.iter().enumerate() {
        cumulative += 3 + index as u64 * 2;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let total = cumulative + 1;
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum {}", total as f64 * 0.137);
    let _ = writeln!(out, "{name}_count {total}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A strict reader for the subset of the text format the generator writes: every sample belongs to a
    /// family declared by `# TYPE` before it, label syntax is `name="value"`, values parse as floats, no series
    /// repeats, and histogram buckets are cumulative and end in `+Inf` equal to `_count`.
    fn check_exposition(text: &str) -> Result<usize, String> {
        if !text.ends_with('\n') {
            return Err("body must end with a newline".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut series = HashSet::new();
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let mut histogram_count = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
                if !["gauge", "counter", "histogram"].contains(&kind) {
                    return Err(format!("unknown type in {line}"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(format!("family declared twice: {name}"));
                }
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series_key, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
            let (name, labels) = match series_key.split_once('{') {
                Some((name, rest)) => (
                    name,
                    rest.strip_suffix('}')
                        .ok_or(format!("unclosed labels: {line}"))?,
                ),
                None => (series_key, ""),
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad metric name: {line}"));
            }
            let mut le = None;
            for pair in labels.split(',').filter(|pair| !pair.is_empty()) {
                let (label, quoted) = pair.split_once('=').ok_or(format!("bad label: {line}"))?;
                let inner = quoted
                    .strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .ok_or(format!("unquoted label value: {line}"))?;
                if label.starts_with("__") || label.is_empty() {
                    return Err(format!("bad label name: {line}"));
                }
                if label == "le" {
                    le = Some(inner.to_string());
                }
            }
            if !series.insert(series_key.to_string()) {
                return Err(format!("series repeated: {line}"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| types.get(*base).map(String::as_str) == Some("histogram"))
                .unwrap_or(name);
            let kind = types
                .get(family)
                .ok_or(format!("sample before its TYPE: {line}"))?;
            if kind == "counter" && value < 0.0 {
                return Err(format!("negative counter: {line}"));
            }
            if name.ends_with("_bucket") && kind == "histogram" {
                let bound = le.ok_or(format!("bucket without le: {line}"))?;
                let bound: f64 = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().map_err(|_| format!("bad le: {line}"))?
                };
                buckets.push((bound, value));
            } else if name.ends_with("_count") && kind == "histogram" {
                histogram_count = Some(value);
            }
        }
        for pair in buckets.windows(2) {
            if pair[1].0 <= pair[0].0 || pair[1].1 < pair[0].1 {
                return Err(format!("buckets not cumulative: {pair:?}"));
            }
        }
        if let Some(last) = buckets.last() {
            if last.0 != f64::INFINITY || Some(last.1) != histogram_count {
                return Err("last bucket must be +Inf and equal _count".into());
            }
        }
        Ok(series.len())
    }

    #[test]
    fn default_body_is_valid_exposition_of_about_one_to_two_kilobytes() {
        let body = exposition_body(BodySpec::default());
        let series = check_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        // 20 plain samples, 12 buckets, _sum and _count.
        assert_eq!(series, 20 + 12 + 2);
        assert!(
            (1000..=2048).contains(&body.len()),
            "body is {} bytes",
            body.len()
        );
    }

    #[test]
    fn sample_count_is_honoured_without_histogram() {
        for samples in [1, 3, 4, 7, 50] {
            let body = exposition_body(BodySpec {
                samples,
                histogram: false,
            });
            assert_eq!(check_exposition(&body), Ok(samples), "{body}");
        }
    }

    #[test]
    fn checker_rejects_repeated_series_and_undeclared_samples() {
        assert!(check_exposition("# TYPE a gauge\na 1\na 2\n").is_err());
        assert!(check_exposition("b 1\n").is_err());
        assert!(check_exposition("# TYPE a gauge\na 1").is_err());
    }

    #[test]
    fn body_is_identical_between_calls() {
        let spec = BodySpec::default();
        assert_eq!(exposition_body(spec), exposition_body(spec));
    }
}

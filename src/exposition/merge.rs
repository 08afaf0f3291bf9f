//! Merges the text expositions of several Pushgateway nodes into one valid exposition.
//!
//! Each node is consistent on its own, but two nodes may disagree, because the groups that
//! a lone Pushgateway would have checked against each other now live on different nodes.
//! A lone Pushgateway resolves such clashes like this (read from `storage/diskmetricstore.go`
//! and client_golang's gatherer, and observed on version 1.5.1):
//! - different HELP: the push is accepted and `/metrics` shows one of the help strings,
//!   picked by Go map order, so it changes between scrapes;
//! - different TYPE: the later push is rejected with 400 ("... is not a GAUGE");
//! - a name that is another family's `_sum`/`_count`/`_bucket`: rejected with 400.
//!
//! The merge makes the same choices deterministically. Nodes are ranked by name, and for
//! every clash the earlier node wins:
//! - HELP: the first node's HELP (an absent HELP counts as a value) is kept;
//! - TYPE: the first node's family is kept and the other node's samples of that family are
//!   dropped;
//! - the same series (family and label set, ignoring `le`/`quantile` and empty-valued labels,
//!   which Prometheus treats as absent) on two nodes: the first node's is kept;
//! - a family whose name is the `_sum`/`_count`/`_bucket` series of a histogram or summary
//!   from another node: the family first seen on the earlier node is kept.
//!
//! Every dropped or overridden item is returned as a [`Conflict`] for the caller to log and
//! count; a node whose exposition does not parse is skipped and reported too.

use std::collections::{BTreeMap, HashMap, HashSet};

use xxhash_rust::xxh3::Xxh3;

use super::text::{self, MetricFamily, MetricType, ParseError, Sample};

/// One merged exposition and everything the merge had to resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged text exposition (format 0.0.4), families sorted by name.
    pub text: String,
    pub conflicts: Vec<Conflict>,
}

/// Something the merge resolved by dropping or overriding part of a node's exposition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Conflict {
    #[error("node {node}: exposition skipped: {error}")]
    InvalidExposition { node: String, error: ParseError },
    #[error(
        "metric family {family}: node {node} has HELP {}, kept {} from node {kept_node}",
        show_help(help.as_deref()),
        show_help(kept_help.as_deref())
    )]
    HelpMismatch {
        family: String,
        kept_node: String,
        /// Escaped HELP text; `None` when that node's family had no HELP line.
        kept_help: Option<String>,
        node: String,
        help: Option<String>,
    },
    #[error(
        "metric family {family}: node {node} has TYPE {node_type}, kept {kept_type} from node {kept_node}; dropped {dropped_samples} sample(s) of node {node}"
    )]
    TypeMismatch {
        family: String,
        kept_node: String,
        kept_type: MetricType,
        node: String,
        node_type: MetricType,
        dropped_samples: usize,
    },
    #[error(
        "series {series}: present on node {kept_node} and node {node}; kept node {kept_node}'s"
    )]
    DuplicateSeries {
        /// The family name and label set, e.g. `requests_total{code="200",job="j"}`.
        series: String,
        kept_node: String,
        node: String,
    },
    #[error(
        "metric family {family} of node {node} collides with {kept_type} {kept_family} of node {kept_node}; dropped {dropped_samples} sample(s) of {family}"
    )]
    NameCollision {
        family: String,
        node: String,
        kept_family: String,
        kept_type: MetricType,
        kept_node: String,
        dropped_samples: usize,
    },
}

impl Conflict {
    /// A short, stable name of the conflict's kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Conflict::InvalidExposition { .. } => "invalid_exposition",
            Conflict::HelpMismatch { .. } => "help_mismatch",
            Conflict::TypeMismatch { .. } => "type_mismatch",
            Conflict::DuplicateSeries { .. } => "duplicate_series",
            Conflict::NameCollision { .. } => "name_collision",
        }
    }
}

/// A HELP text for messages: quoted, or `(none)` without a HELP line.
fn show_help(help: Option<&str>) -> String {
    help.map_or_else(|| "(none)".to_owned(), |help| format!("{help:?}"))
}

/// One family being merged: the winning header and the kept samples.
struct MergedFamily<'a> {
    name: &'a str,
    help: Option<&'a str>,
    metric_type: MetricType,
    /// Rank of the node the header came from.
    first_rank: usize,
    samples: Vec<&'a Sample<'a>>,
    /// Series identity hash -> rank of the node that contributed it.
    series_owner: HashMap<u128, usize>,
}

/// Merges `(node name, exposition text)` pairs. The order of `nodes` does not matter: they
/// are ranked by node name (ties keep the given order).
pub fn merge(nodes: &[(&str, &str)]) -> Merged {
    merge_where(nodes, |_| true)
}

/// Like [`merge`], but keeps only what clients pushed: samples with a non-empty `job` label.
///
/// The Pushgateway adds the grouping labels, `job` always among them, to every pushed sample
/// and to each group's `push_time_seconds` / `push_failure_time_seconds`, while its own
/// metrics (`go_*`, `process_*`, `pushgateway_*`, `promhttp_*`) carry no `job`. Every node
/// has those, so merged they would only collide; they describe one process and are scraped
/// from that node itself. A family left without samples is dropped before any HELP/TYPE
/// comparison, so a node's self-metrics never cause a conflict.
pub fn merge_pushed(nodes: &[(&str, &str)]) -> Merged {
    merge_where(nodes, is_pushed_sample)
}

/// Whether a Pushgateway exposes `sample` for a pushed group (it has a non-empty `job` label).
pub fn is_pushed_sample(sample: &Sample<'_>) -> bool {
    sample
        .labels()
        .any(|label| label.name == "job" && !label.escaped_value.is_empty())
}

/// The merge itself, over the samples `keep` accepts.
fn merge_where(nodes: &[(&str, &str)], keep: impl Fn(&Sample<'_>) -> bool) -> Merged {
    let mut ranked: Vec<(&str, &str)> = nodes.to_vec();
    ranked.sort_by(|a, b| a.0.cmp(b.0));

    let mut conflicts = Vec::new();
    let mut parsed: Vec<(usize, Vec<MetricFamily<'_>>)> = Vec::with_capacity(ranked.len());
    for (rank, (node, exposition)) in ranked.iter().enumerate() {
        match text::parse_text(exposition) {
            Ok(families) => parsed.push((rank, families)),
            Err(error) => conflicts.push(Conflict::InvalidExposition {
                node: (*node).to_owned(),
                error,
            }),
        }
    }

    let mut merged: BTreeMap<&str, MergedFamily<'_>> = BTreeMap::new();
    let mut label_buffer = Vec::new();
    for (rank, families) in &parsed {
        let rank = *rank;
        let node = ranked[rank].0;
        for family in families {
            let kept_count = family.samples.iter().filter(|s| keep(s)).count();
            if kept_count == 0 && !family.samples.is_empty() {
                continue;
            }
            let entry = merged.entry(family.name).or_insert_with(|| MergedFamily {
                name: family.name,
                help: family.help,
                metric_type: family.metric_type,
                first_rank: rank,
                samples: Vec::with_capacity(family.samples.len()),
                series_owner: HashMap::with_capacity(family.samples.len()),
            });
            if entry.metric_type != family.metric_type {
                conflicts.push(Conflict::TypeMismatch {
                    family: family.name.to_owned(),
                    kept_node: ranked[entry.first_rank].0.to_owned(),
                    kept_type: entry.metric_type,
                    node: node.to_owned(),
                    node_type: family.metric_type,
                    dropped_samples: kept_count,
                });
                continue;
            }
            if entry.help != family.help {
                conflicts.push(Conflict::HelpMismatch {
                    family: family.name.to_owned(),
                    kept_node: ranked[entry.first_rank].0.to_owned(),
                    kept_help: entry.help.map(str::to_owned),
                    node: node.to_owned(),
                    help: family.help.map(str::to_owned),
                });
            }
            let mut reported: HashSet<u128> = HashSet::new();
            for sample in family.samples.iter().filter(|s| keep(s)) {
                let key = series_key(family, sample, &mut label_buffer);
                let owner = *entry.series_owner.entry(key).or_insert(rank);
                if owner == rank {
                    entry.samples.push(sample);
                } else if reported.insert(key) {
                    conflicts.push(Conflict::DuplicateSeries {
                        series: series_display(family, sample),
                        kept_node: ranked[owner].0.to_owned(),
                        node: node.to_owned(),
                    });
                }
            }
        }
    }

    drop_suffix_collisions(&mut merged, &ranked, &mut conflicts);

    let mut out = String::with_capacity(ranked.iter().map(|(_, text)| text.len()).sum());
    for family in merged.values() {
        text::render_header(family.name, family.help, family.metric_type, &mut out);
        for sample in &family.samples {
            text::render_sample(sample, &mut out);
        }
    }
    Merged {
        text: out,
        conflicts,
    }
}

/// Removes families whose name is a series name of a histogram or summary family, keeping
/// whichever of the two came from the earlier node (the histogram/summary on a tie).
fn drop_suffix_collisions<'a>(
    merged: &mut BTreeMap<&'a str, MergedFamily<'a>>,
    ranked: &[(&str, &str)],
    conflicts: &mut Vec<Conflict>,
) {
    let mut losers: Vec<(String, String)> = Vec::new(); // (loser, winner)
    for family in merged.values() {
        let suffixes: &[&str] = match family.metric_type {
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            MetricType::Summary => &["_sum", "_count"],
            _ => continue,
        };
        for suffix in suffixes {
            let collided = format!("{}{}", family.name, suffix);
            if let Some(other) = merged.get(collided.as_str()) {
                if other.first_rank < family.first_rank {
                    losers.push((family.name.to_owned(), collided));
                } else {
                    losers.push((collided, family.name.to_owned()));
                }
            }
        }
    }
    for (loser_name, winner_name) in losers {
        // A family may lose twice (e.g. to `x_sum` and `x_count`); drop and report it once.
        let Some(loser) = merged.remove(loser_name.as_str()) else {
            continue;
        };
        let Some(winner) = merged.get(winner_name.as_str()) else {
            merged.insert(loser.name, loser);
            continue;
        };
        conflicts.push(Conflict::NameCollision {
            family: loser_name,
            node: ranked[loser.first_rank].0.to_owned(),
            kept_family: winner_name,
            kept_type: winner.metric_type,
            kept_node: ranked[winner.first_rank].0.to_owned(),
            dropped_samples: loser.samples.len(),
        });
    }
}

/// The label that tells a histogram's or summary's lines of one series apart.
fn per_line_label(family: &MetricFamily<'_>, sample: &Sample<'_>) -> Option<&'static str> {
    match family.metric_type {
        MetricType::Histogram if sample.name.ends_with("_bucket") => Some("le"),
        MetricType::Summary if sample.name.len() == family.name.len() => Some("quantile"),
        _ => None,
    }
}

/// A 128-bit hash of the series identity: the sorted label set without the per-line label
/// and without empty values. Labels are hashed in their escaped form, which is canonical.
fn series_key<'a>(
    family: &MetricFamily<'a>,
    sample: &Sample<'a>,
    buffer: &mut Vec<text::Label<'a>>,
) -> u128 {
    let skip = per_line_label(family, sample);
    buffer.clear();
    buffer.extend(
        sample
            .labels()
            .filter(|label| !label.escaped_value.is_empty() && Some(label.name) != skip),
    );
    buffer.sort_unstable();
    let mut hasher = Xxh3::new();
    for label in buffer.iter() {
        hasher.update(label.name.as_bytes());
        // 0xff and 0xfe never occur in UTF-8, so they separate fields unambiguously.
        hasher.update(&[0xff]);
        hasher.update(label.escaped_value.as_bytes());
        hasher.update(&[0xfe]);
    }
    hasher.digest128()
}

/// `family{labels}` of a sample's series, for conflict reports.
fn series_display(family: &MetricFamily<'_>, sample: &Sample<'_>) -> String {
    let skip = per_line_label(family, sample);
    let mut labels: Vec<_> = sample
        .labels()
        .filter(|label| !label.escaped_value.is_empty() && Some(label.name) != skip)
        .collect();
    labels.sort_unstable();
    let mut out = String::from(family.name);
    out.push('{');
    for (position, label) in labels.iter().enumerate() {
        if position > 0 {
            out.push(',');
        }
        out.push_str(label.name);
        out.push_str("=\"");
        out.push_str(label.escaped_value);
        out.push('"');
    }
    out.push('}');
    out
}

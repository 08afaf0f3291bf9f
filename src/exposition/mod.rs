//! Prometheus text exposition: parse, merge, and render from Pushgateway JSON. Pure, no I/O.
//!
//! - [`text`]: zero-copy parser and renderer for the text format 0.0.4.
//! - [`merge`]: merges the expositions of several Pushgateway nodes into one valid exposition
//!   (the gateway's read side), resolving HELP/TYPE clashes and duplicate series
//!   deterministically and reporting each as a [`merge::Conflict`]; [`merge::merge_pushed`]
//!   keeps only pushed groups and leaves out each node's own process metrics.
//! - [`pushgateway_json`]: turns a Pushgateway's `GET /api/v1/metrics` answer into one text
//!   body per group, ready to `PUT` to another node (the rebalancer's copy step), or as the node exposes it.
//! - [`replicas`]: with replication, which node's copy of each group a read shows (each group once).
pub mod merge;
pub mod pushgateway_json;
pub mod replicas;
pub mod text;

pub use merge::{is_pushed_sample, merge, merge_pushed, Conflict, Merged};
pub use pushgateway_json::{parse_api_metrics, ApiMetricsError, Group};
pub use text::{parse_text, render, MetricFamily, MetricType, ParseError, Sample};

#[cfg(test)]
mod tests;

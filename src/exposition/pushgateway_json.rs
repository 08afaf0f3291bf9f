//! Rebuilds each group of a Pushgateway's `GET /api/v1/metrics` answer as a text exposition
//! body that can be `PUT` to another Pushgateway.
//!
//! The answer is `{"status":"success","data":[group...]}`; a group has `labels` (the grouping
//! key), `last_push_successful`, and one entry per metric family keyed by its name:
//! `{time_stamp, type, help?, metrics:[...]}`. Every number is a string (`"NaN"`, `"+Inf"`
//! included); the body repeats those strings verbatim after checking that they parse as
//! `f64`, so no precision is lost and nothing but a number reaches the output. The
//! Pushgateway's own `push_time_seconds` and `push_failure_time_seconds` families are left
//! out of the body (the target sets its own) and returned as numbers instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::text::{
    escape_help, escape_label_value, is_valid_label_name, is_valid_metric_name, MetricType,
};

/// The family holding the time of the group's last successful push.
pub const PUSH_TIME_FAMILY: &str = "push_time_seconds";
/// The family holding the time of the group's last failed push.
pub const PUSH_FAILURE_TIME_FAMILY: &str = "push_failure_time_seconds";

/// The family the rebalancer adds to a group it copies: `{time="last_push"}` is the time of the client's last
/// push before the move (the copy's own `push_time_seconds` is the time of the copy), `{time="move"}` when the
/// copy was made. It keeps a moved group's age right for expiry; a client's `PUT` replaces it.
pub const MOVED_FAMILY: &str = "dynamic_sharding_group_moved";

/// What [`MOVED_FAMILY`] says about a copied group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovedMarker {
    /// Unix seconds of the client's last push before the move.
    pub last_push: f64,
    /// Unix seconds of the move (the gateway's clock).
    pub moved_at: f64,
}

impl MovedMarker {
    /// The family as text-format lines, to append to a copied group's body.
    pub fn render(&self) -> String {
        format!(
            "# HELP {MOVED_FAMILY} Set by dynamic-sharding on a group it moved: the client's last push before the \
             move, and the move.\n# TYPE {MOVED_FAMILY} gauge\n{MOVED_FAMILY}{{time=\"last_push\"}} {}\n\
             {MOVED_FAMILY}{{time=\"move\"}} {}\n",
            self.last_push, self.moved_at
        )
    }
}

/// One group of a Pushgateway, ready to be copied to another one.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The grouping key (`job` included).
    pub labels: BTreeMap<String, String>,
    pub last_push_successful: bool,
    /// Unix seconds of the last successful push; `Some(0.0)` if none succeeded yet.
    pub push_time_seconds: Option<f64>,
    /// Unix seconds of the last failed push; `Some(0.0)` if none failed.
    pub push_failure_time_seconds: Option<f64>,
    /// The group's metrics as a text exposition (format 0.0.4), families sorted by name, without
    /// [`MOVED_FAMILY`]; `None` when the caller of [`parse_api_metrics_with`] did not want it rendered.
    pub body: Option<String>,
    /// Set when the rebalancer copied this group here and no `PUT` replaced it since.
    pub moved: Option<MovedMarker>,
}

/// Why an `/api/v1/metrics` answer could not be turned into groups.
#[derive(Debug, thiserror::Error)]
pub enum ApiMetricsError {
    #[error("/api/v1/metrics answer is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("/api/v1/metrics answered status {0:?}, expected \"success\"")]
    Status(String),
    #[error("group {group}: metric family name {family:?} is invalid (it must match [a-zA-Z_:][a-zA-Z0-9_:]*)")]
    InvalidFamilyName { group: String, family: String },
    #[error("group {group}, family {family}: label name {label:?} is invalid (it must match [a-zA-Z_][a-zA-Z0-9_]*)")]
    InvalidLabelName {
        group: String,
        family: String,
        label: String,
    },
    #[error("group {group}, family {family}: a {metric_type} metric carries the reserved label {label:?}")]
    ReservedLabel {
        group: String,
        family: String,
        metric_type: MetricType,
        label: &'static str,
    },
    #[error("group {group}, family {family}: unknown type {found:?} (expected COUNTER, GAUGE, HISTOGRAM, SUMMARY or UNTYPED)")]
    UnknownType {
        group: String,
        family: String,
        found: String,
    },
    #[error("group {group}, family {family}: {field} {value:?} is not a number")]
    InvalidNumber {
        group: String,
        family: String,
        field: &'static str,
        value: String,
    },
    #[error("group {group}, family {family}: a {metric_type} metric lacks the {field:?} field")]
    MissingField {
        group: String,
        family: String,
        metric_type: MetricType,
        field: &'static str,
    },
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Vec<ApiGroup>,
}

#[derive(Deserialize)]
struct ApiGroup {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    last_push_successful: bool,
    /// Every other key is a metric family.
    #[serde(flatten)]
    families: BTreeMap<String, ApiFamily>,
}

#[derive(Deserialize)]
struct ApiFamily {
    #[serde(rename = "type")]
    metric_type: String,
    #[serde(default)]
    help: Option<String>,
    #[serde(default)]
    metrics: Vec<ApiMetric>,
}

#[derive(Deserialize)]
struct ApiMetric {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    value: Option<String>,
    buckets: Option<BTreeMap<String, String>>,
    quantiles: Option<BTreeMap<String, String>>,
    count: Option<String>,
    sum: Option<String>,
}

/// Parses a `GET /api/v1/metrics` answer into its groups, in the order given.
pub fn parse_api_metrics(json: &[u8]) -> Result<Vec<Group>, ApiMetricsError> {
    parse_api_metrics_with(json, |_| true)
}

/// [`parse_api_metrics`], rendering a group's body only when `wants_body(labels)` says so; other groups get an
/// `body: None`. The rebalancer renders only the groups it may copy: a node lists
/// mostly groups it owns, and rendering them all was most of a pass's memory.
pub fn parse_api_metrics_with(
    json: &[u8],
    wants_body: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<Vec<Group>, ApiMetricsError> {
    let answer: ApiAnswer = serde_json::from_slice(json)?;
    if answer.status != "success" {
        return Err(ApiMetricsError::Status(answer.status));
    }
    answer
        .data
        .into_iter()
        .map(|group| {
            let render = wants_body(&group.labels);
            group_from_api(group, render)
        })
        .collect()
}

/// One group as its node exposes it on `/metrics`, for a replicated read that shows each group from one node.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposedGroup {
    /// The grouping key (`job` included).
    pub labels: BTreeMap<String, String>,
    /// Unix seconds of the last successful push; 0 if none succeeded.
    pub push_time_seconds: f64,
    /// Every family of the group, `push_time_seconds`, `push_failure_time_seconds` and the rebalancer's marker
    /// included, as a text exposition (format 0.0.4) with families sorted by name.
    pub exposition: String,
}

/// Parses a `GET /api/v1/metrics` answer into its groups as the node's `/metrics` shows them.
pub fn parse_api_metrics_exposed(json: &[u8]) -> Result<Vec<ExposedGroup>, ApiMetricsError> {
    let answer: ApiAnswer = serde_json::from_slice(json)?;
    if answer.status != "success" {
        return Err(ApiMetricsError::Status(answer.status));
    }
    answer
        .data
        .into_iter()
        .map(|group| {
            let group_name = display_labels(&group.labels);
            let mut exposition = String::new();
            let mut push_time_seconds = 0.0;
            for (name, family) in &group.families {
                let context = Context {
                    group: &group_name,
                    family: name,
                };
                let metric_type = checked_type(name, family, &context)?;
                if name == PUSH_TIME_FAMILY {
                    push_time_seconds = family
                        .metrics
                        .first()
                        .and_then(|m| m.value.as_deref()?.parse().ok())
                        .unwrap_or(0.0);
                }
                render_family(name, family, metric_type, &context, &mut exposition)?;
            }
            Ok(ExposedGroup {
                labels: group.labels,
                push_time_seconds,
                exposition,
            })
        })
        .collect()
}

fn group_from_api(group: ApiGroup, render_body: bool) -> Result<Group, ApiMetricsError> {
    let group_name = display_labels(&group.labels);
    let mut body = String::new();
    let mut push_time_seconds = None;
    let mut push_failure_time_seconds = None;
    let mut moved = None;
    for (name, family) in &group.families {
        let context = Context {
            group: &group_name,
            family: name,
        };
        let metric_type = checked_type(name, family, &context)?;
        if name == PUSH_TIME_FAMILY || name == PUSH_FAILURE_TIME_FAMILY {
            let first_value = family.metrics.first().and_then(|m| m.value.as_deref());
            let seconds = first_value
                .map(|value| number(value, "value", &context).map(|_| value.parse().ok()))
                .transpose()?
                .flatten();
            if name == PUSH_TIME_FAMILY {
                push_time_seconds = seconds;
            } else {
                push_failure_time_seconds = seconds;
            }
            continue;
        }
        if name == MOVED_FAMILY {
            moved = moved_marker(family);
            continue;
        }
        if render_body {
            render_family(name, family, metric_type, &context, &mut body)?;
        }
    }
    Ok(Group {
        labels: group.labels,
        last_push_successful: group.last_push_successful,
        push_time_seconds,
        push_failure_time_seconds,
        body: render_body.then_some(body),
        moved,
    })
}

/// A family's type, once its name is known to be a valid metric name.
fn checked_type(
    name: &str,
    family: &ApiFamily,
    context: &Context,
) -> Result<MetricType, ApiMetricsError> {
    if !is_valid_metric_name(name) {
        return Err(ApiMetricsError::InvalidFamilyName {
            group: context.group.to_owned(),
            family: name.to_owned(),
        });
    }
    parse_type(&family.metric_type, context)
}

fn moved_marker(family: &ApiFamily) -> Option<MovedMarker> {
    let value = |time: &str| {
        family
            .metrics
            .iter()
            .find(|m| m.labels.get("time").is_some_and(|t| t == time))
            .and_then(|m| m.value.as_deref()?.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    Some(MovedMarker {
        last_push: value("last_push")?,
        moved_at: value("move")?,
    })
}

/// Where an error happened, for messages.
struct Context<'c> {
    group: &'c str,
    family: &'c str,
}

impl Context<'_> {
    fn invalid_number(&self, field: &'static str, value: &str) -> ApiMetricsError {
        ApiMetricsError::InvalidNumber {
            group: self.group.to_owned(),
            family: self.family.to_owned(),
            field,
            value: value.to_owned(),
        }
    }

    fn missing(&self, metric_type: MetricType, field: &'static str) -> ApiMetricsError {
        ApiMetricsError::MissingField {
            group: self.group.to_owned(),
            family: self.family.to_owned(),
            metric_type,
            field,
        }
    }
}

fn parse_type(found: &str, context: &Context<'_>) -> Result<MetricType, ApiMetricsError> {
    match found {
        "COUNTER" => Ok(MetricType::Counter),
        "GAUGE" => Ok(MetricType::Gauge),
        "HISTOGRAM" => Ok(MetricType::Histogram),
        "SUMMARY" => Ok(MetricType::Summary),
        "UNTYPED" => Ok(MetricType::Untyped),
        _ => Err(ApiMetricsError::UnknownType {
            group: context.group.to_owned(),
            family: context.family.to_owned(),
            found: found.to_owned(),
        }),
    }
}

/// Returns `value` unchanged if it parses as an `f64`: the text is emitted verbatim.
fn number<'v>(
    value: &'v str,
    field: &'static str,
    context: &Context<'_>,
) -> Result<&'v str, ApiMetricsError> {
    match value.parse::<f64>() {
        Ok(_) => Ok(value),
        Err(_) => Err(context.invalid_number(field, value)),
    }
}

fn required<'m>(
    field_value: &'m Option<String>,
    metric_type: MetricType,
    field: &'static str,
    context: &Context<'_>,
) -> Result<&'m str, ApiMetricsError> {
    let value = field_value
        .as_deref()
        .ok_or_else(|| context.missing(metric_type, field))?;
    number(value, field, context)
}

/// Sorts `{bound: value}` entries by the numeric bound (the JSON map is sorted as text).
fn sorted_by_bound<'m>(
    entries: &'m BTreeMap<String, String>,
    field: &'static str,
    context: &Context<'_>,
) -> Result<Vec<(f64, &'m str, &'m str)>, ApiMetricsError> {
    let mut sorted = Vec::with_capacity(entries.len());
    for (bound, value) in entries {
        let numeric_bound: f64 = bound
            .parse()
            .ok()
            .filter(|b: &f64| !b.is_nan())
            .ok_or_else(|| context.invalid_number(field, bound))?;
        sorted.push((
            numeric_bound,
            bound.as_str(),
            number(value, field, context)?,
        ));
    }
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(sorted)
}

fn render_family(
    name: &str,
    family: &ApiFamily,
    metric_type: MetricType,
    context: &Context<'_>,
    out: &mut String,
) -> Result<(), ApiMetricsError> {
    let mut escaped_help = None;
    if let Some(help) = &family.help {
        let mut escaped = String::with_capacity(help.len());
        escape_help(help, &mut escaped);
        escaped_help = Some(escaped);
    }
    super::text::render_header(name, escaped_help.as_deref(), metric_type, out);
    let reserved = match metric_type {
        MetricType::Histogram => Some("le"),
        MetricType::Summary => Some("quantile"),
        _ => None,
    };
    for metric in &family.metrics {
        for label in metric.labels.keys() {
            if !is_valid_label_name(label) {
                return Err(ApiMetricsError::InvalidLabelName {
                    group: context.group.to_owned(),
                    family: name.to_owned(),
                    label: label.clone(),
                });
            }
            if Some(label.as_str()) == reserved {
                return Err(ApiMetricsError::ReservedLabel {
                    group: context.group.to_owned(),
                    family: name.to_owned(),
                    metric_type,
                    label: reserved.unwrap_or_default(),
                });
            }
        }
        match metric_type {
            MetricType::Counter | MetricType::Gauge | MetricType::Untyped => {
                let value = required(&metric.value, metric_type, "value", context)?;
                write_line(out, name, "", &metric.labels, None, value);
            }
            MetricType::Histogram => {
                let count = required(&metric.count, metric_type, "count", context)?;
                let sum = required(&metric.sum, metric_type, "sum", context)?;
                let empty = BTreeMap::new();
                let buckets =
                    sorted_by_bound(metric.buckets.as_ref().unwrap_or(&empty), "bucket", context)?;
                let has_infinite_bucket = buckets
                    .last()
                    .is_some_and(|(bound, _, _)| *bound == f64::INFINITY);
                for (_, bound, cumulative) in &buckets {
                    write_line(
                        out,
                        name,
                        "_bucket",
                        &metric.labels,
                        Some(("le", bound)),
                        cumulative,
                    );
                }
                // Prometheus requires the +Inf bucket; it always equals the count.
                if !has_infinite_bucket {
                    write_line(
                        out,
                        name,
                        "_bucket",
                        &metric.labels,
                        Some(("le", "+Inf")),
                        count,
                    );
                }
                write_line(out, name, "_sum", &metric.labels, None, sum);
                write_line(out, name, "_count", &metric.labels, None, count);
            }
            MetricType::Summary => {
                let count = required(&metric.count, metric_type, "count", context)?;
                let sum = required(&metric.sum, metric_type, "sum", context)?;
                let empty = BTreeMap::new();
                let quantiles = sorted_by_bound(
                    metric.quantiles.as_ref().unwrap_or(&empty),
                    "quantile",
                    context,
                )?;
                for (_, quantile, value) in &quantiles {
                    write_line(
                        out,
                        name,
                        "",
                        &metric.labels,
                        Some(("quantile", quantile)),
                        value,
                    );
                }
                write_line(out, name, "_sum", &metric.labels, None, sum);
                write_line(out, name, "_count", &metric.labels, None, count);
            }
        }
    }
    Ok(())
}

/// Appends `name+suffix{labels,extra} value`; `extra` is a validated number needing no escaping.
fn write_line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &BTreeMap<String, String>,
    extra: Option<(&str, &str)>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        let pairs = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra);
        for (label, label_value) in pairs {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(label_value, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// `{a="x",job="j"}`, for error messages.
fn display_labels(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (position, (name, value)) in labels.iter().enumerate() {
        if position > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(value, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

//! `GET /`: the status page for people (the Pushgateway has its own at its root). Server-rendered HTML with
//! inline CSS only: no JavaScript, no external asset, so it works on networks without internet.
//!
//! It shows the nodes (health, last probe, share of the ring, outlier ejection, failing reads), the groups the
//! ring's nodes hold (labels, node(s), last push and age; `?job=` keeps one job, `?page=` pages through them
//! [`GROUPS_PER_PAGE`] at a time), the membership source's state (its last success, last error and every part
//! failing now; Consul's last contact), the rebalancer's last pass, pending ambiguous-write repairs and group
//! expiry.
//!
//! The group list is every ring node's `GET /api/v1/metrics`, fanned out like the read side (failures are
//! recorded the same way). Those answers carry every metric of every group, so one page view holds them all
//! at once; only labels and push times are kept after parsing, and page views run one at a time
//! ([`PAGE_VIEWS`]), so refreshing in many tabs queues rather than multiplying that memory.
//!
//! Everything that comes from a node or a label is HTML-escaped ([`Escaped`]): label values are arbitrary user
//! input. The response also carries a Content-Security-Policy that allows no script at all.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use http::{header, HeaderValue, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::read;
use super::{text, AppState};
use crate::config::{Config, NodeScheme};
use crate::grouping::GroupingKey;
use crate::membership::Membership;
use crate::outlier::NodeOutlierStatus;
use crate::pushgateway::{api, NodeError};
use crate::ring::{Algorithm, Ring};

/// Groups shown per page.
pub const GROUPS_PER_PAGE: usize = 500;
/// One page view at a time: each holds every node's full `/api/v1/metrics` answer while it parses.
static PAGE_VIEWS: Semaphore = Semaphore::const_new(1);
const LISTING_PATH: &str = api::Read::Groups.path();
/// The job label, shown first and filtered on.
const JOB: &str = "job";

/// The "Group expiry" section: a one-word state for the summary card, then setting/value rows.
fn expiry_summary(config: &Config) -> Expiry {
    let groups = &config.groups;
    let limit = |d: Option<std::time::Duration>| {
        d.map_or_else(
            || "never".to_owned(),
            |d| humantime::format_duration(d).to_string(),
        )
    };
    let mut rows = vec![("groups.expire_after".to_owned(), limit(groups.expire_after))];
    for (index, entry) in groups.expire_overrides.iter().enumerate() {
        // The regex as written: the stored one is anchored as `^(?:...)$`.
        let job = entry.job.as_str();
        let job = job
            .strip_prefix("^(?:")
            .and_then(|j| j.strip_suffix(")$"))
            .unwrap_or(job);
        rows.push((
            format!("groups.expire_overrides[{index}]"),
            format!("job =~ {job}: {}", limit(entry.expire_after)),
        ));
    }
    if !config.rebalance.enabled {
        rows.push((
            "rebalance.enabled".to_owned(),
            "false: this replica does not expire groups".to_owned(),
        ));
    }
    Expiry {
        state: if groups.expiry_enabled() { "on" } else { "off" }.to_owned(),
        rows,
    }
}

/// What the page shows of group expiry.
#[derive(Debug, Clone, PartialEq)]
struct Expiry {
    state: String,
    rows: Vec<(String, String)>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    job: Option<String>,
    page: Option<String>,
}

/// `GET /`.
pub async fn page(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response<Body> {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("invalid query string for the status page ({rejection}); use ?job=<job name>&page=<number>"),
            )
        }
    };
    let page = match parse_page(query.page.as_deref()) {
        Ok(page) => page,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let job = query.job.filter(|job| !job.is_empty());

    // Never closed, so acquiring only waits.
    let _permit = PAGE_VIEWS.acquire().await.ok();
    let table = state.ring.load_full();
    let nodes = table.readable.clone();
    let timeout = state.config.load().read.timeout;
    let answers = read::fan_out(&state, &nodes, api::Read::Groups, timeout).await;
    let filter = job.clone();
    // Parsing every group of every node is CPU work; keep it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        answers
            .into_iter()
            .map(|answer| {
                let listed = match answer.result {
                    Ok(body) => parse_listing(&body, filter.as_deref()).map_err(NodeError::Decode),
                    Err(failure) => Err(failure),
                };
                (answer.node, listed)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("listing the groups failed: {error}"),
            )
        }
    };
    let mut listings = Vec::with_capacity(parsed.len());
    let mut unlisted = Vec::new();
    for (node, listed) in parsed {
        match listed {
            Ok(listing) => {
                read::note_success(&state, &node, LISTING_PATH);
                listings.push((node, listing));
            }
            Err(failure) => {
                if let NodeError::Decode(_) = failure {
                    read::note_failure(&state, &node, LISTING_PATH, &failure);
                }
                unlisted.push((node, failure.to_string()));
            }
        }
    }
    let ring = &table.ring;
    let groups = GroupPage::build(listings, unlisted, job, page, GROUPS_PER_PAGE, |labels| {
        owner_of(ring, labels)
    });

    let config = state.config.load();
    let membership = state.membership.borrow().clone();
    let view = PageView {
        now: SystemTime::now(),
        mode: format!("{:?}", config.mode).to_lowercase(),
        node_scheme: config.upstream.scheme,
        algorithm: ring.algorithm(),
        generation: table.generation,
        built_at: table.built_at,
        membership: &membership,
        ring_nodes: ring.nodes(),
        shares: ring.shares(),
        outliers: state.outliers.status(),
        read_failures: state.read_side.failing_reads_json(),
        rebalance: state.rebalance_status.borrow().clone(),
        pending_repairs: state.journal.len(),
        expiry: expiry_summary(&config),
        groups,
    };
    html_response(render(&view))
}

fn html_response(body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Defence in depth behind the escaping: no script, no remote anything; only the page's own inline CSS.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `?page=`: absent or empty is page 1.
fn parse_page(page: Option<&str>) -> Result<usize, String> {
    let Some(page) = page.map(str::trim).filter(|page| !page.is_empty()) else {
        return Ok(1);
    };
    match page.parse::<usize>() {
        Ok(number) if number >= 1 => Ok(number),
        _ => Err(format!(
            "invalid page {page:?}: use a page number from 1 (e.g. ?page=2)"
        )),
    }
}

/// The node the ring places a group on, when it can tell: `go-compatible` hashes the client's request path,
/// which a group's labels do not determine.
fn owner_of(ring: &Ring, labels: &BTreeMap<String, String>) -> Option<String> {
    if ring.algorithm() != Algorithm::Rendezvous {
        return None;
    }
    let key = GroupingKey::from_labels(labels.clone()).ok()?;
    ring.owner(&key.ring_key()).map(str::to_owned)
}

// ---- Listing ------------------------------------------------------------------------------------------------

/// What the page keeps of one node's `/api/v1/metrics`: every group's count, and the matching groups' labels
/// and push times. The metric families are skipped unparsed.
#[derive(Debug, Default, PartialEq)]
struct NodeListing {
    /// Groups on the node, whatever the filter.
    total: usize,
    groups: Vec<ListedGroup>,
}

#[derive(Debug, PartialEq)]
struct ListedGroup {
    labels: BTreeMap<String, String>,
    push_time: Option<f64>,
    last_push_successful: bool,
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
    #[serde(default = "yes")]
    last_push_successful: bool,
    push_time_seconds: Option<ApiFamily>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct ApiFamily {
    #[serde(default)]
    metrics: Vec<ApiMetric>,
}

#[derive(Deserialize)]
struct ApiMetric {
    value: Option<String>,
}

/// Parses a node's `/api/v1/metrics` answer, keeping the groups whose job is `job` (every group without one).
fn parse_listing(body: &[u8], job: Option<&str>) -> Result<NodeListing, String> {
    let answer: ApiAnswer = serde_json::from_slice(body)
        .map_err(|error| format!("{LISTING_PATH} is not the expected JSON: {error}"))?;
    if answer.status != "success" {
        return Err(format!(
            "{LISTING_PATH} answered status {:?}, expected \"success\"",
            answer.status
        ));
    }
    let total = answer.data.len();
    let groups = answer
        .data
        .into_iter()
        .filter(|group| {
            job.is_none_or(|job| group.labels.get(JOB).map(String::as_str) == Some(job))
        })
        .map(|group| ListedGroup {
            push_time: group
                .push_time_seconds
                .and_then(|family| family.metrics.into_iter().next())
                .and_then(|metric| metric.value)
                .and_then(|value| value.parse::<f64>().ok())
                // The Pushgateway reports 0 for a group that never had a successful push.
                .filter(|seconds| seconds.is_finite() && *seconds > 0.0),
            labels: group.labels,
            last_push_successful: group.last_push_successful,
        })
        .collect();
    Ok(NodeListing { total, groups })
}

/// One group as the page shows it.
#[derive(Debug, PartialEq)]
struct GroupRow {
    job: String,
    /// The other grouping labels, sorted by name.
    labels: Vec<(String, String)>,
    /// Every node holding the group, by name.
    holders: Vec<Holder>,
    /// Where the ring places it, when that follows from its labels.
    owner: Option<String>,
}

#[derive(Debug, PartialEq)]
struct Holder {
    node: String,
    push_time: Option<f64>,
    last_push_successful: bool,
}

impl GroupRow {
    /// The newest push time on any holder.
    fn push_time(&self) -> Option<f64> {
        self.holders
            .iter()
            .filter_map(|holder| holder.push_time)
            .reduce(f64::max)
    }
}

/// One page of the merged group list.
#[derive(Debug, Default, PartialEq)]
struct GroupPage {
    job: Option<String>,
    page: usize,
    per_page: usize,
    /// Distinct groups matching the filter, on every listed node.
    matching: usize,
    rows: Vec<GroupRow>,
    /// Groups each listed node holds, whatever the filter.
    per_node: BTreeMap<String, usize>,
    /// Nodes whose groups are missing, with why.
    unlisted: Vec<(String, String)>,
}

impl GroupPage {
    /// Merges the nodes' listings (a group held by two nodes is one row with two holders), sorted by job, then
    /// labels, and keeps page `page` (from 1).
    fn build(
        listings: Vec<(String, NodeListing)>,
        unlisted: Vec<(String, String)>,
        job: Option<String>,
        page: usize,
        per_page: usize,
        owner: impl Fn(&BTreeMap<String, String>) -> Option<String>,
    ) -> GroupPage {
        type Key = (String, Vec<(String, String)>);
        let mut merged: BTreeMap<Key, Vec<Holder>> = BTreeMap::new();
        let mut per_node = BTreeMap::new();
        for (node, listing) in listings {
            per_node.insert(node.clone(), listing.total);
            for group in listing.groups {
                let mut labels = group.labels;
                let job = labels.remove(JOB).unwrap_or_default();
                merged
                    .entry((job, labels.into_iter().collect()))
                    .or_default()
                    .push(Holder {
                        node: node.clone(),
                        push_time: group.push_time,
                        last_push_successful: group.last_push_successful,
                    });
            }
        }
        let matching = merged.len();
        let skip = page.saturating_sub(1).saturating_mul(per_page);
        let rows = merged
            .into_iter()
            .skip(skip)
            .take(per_page)
            .map(|((job, labels), mut holders)| {
                holders.sort_by(|a, b| a.node.cmp(&b.node));
                let mut all: BTreeMap<String, String> = labels.iter().cloned().collect();
                all.insert(JOB.to_owned(), job.clone());
                GroupRow {
                    owner: owner(&all),
                    job,
                    labels,
                    holders,
                }
            })
            .collect();
        GroupPage {
            job,
            page,
            per_page,
            matching,
            rows,
            per_node,
            unlisted,
        }
    }

    fn pages(&self) -> usize {
        self.matching.div_ceil(self.per_page.max(1)).max(1)
    }
}

// ---- Rendering ----------------------------------------------------------------------------------------------

/// Everything the page shows, gathered before rendering so that rendering is pure.
struct PageView<'a> {
    now: SystemTime,
    mode: String,
    /// `pushgateway.scheme`, for the links to each node's own page.
    node_scheme: NodeScheme,
    algorithm: Algorithm,
    generation: u64,
    built_at: SystemTime,
    membership: &'a Membership,
    ring_nodes: &'a [String],
    /// Parallel to `ring_nodes`.
    shares: Vec<f64>,
    outliers: BTreeMap<String, NodeOutlierStatus>,
    read_failures: Value,
    rebalance: Value,
    pending_repairs: usize,
    expiry: Expiry,
    groups: GroupPage,
}

/// Displays a string HTML-escaped, for text and for quoted attribute values.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(index) = rest.find(['&', '<', '>', '"', '\'']) {
            formatter.write_str(&rest[..index])?;
            formatter.write_str(match rest.as_bytes()[index] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[index + 1..];
        }
        formatter.write_str(rest)
    }
}

/// `write!` into a `String`, which cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

const STYLE: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--bg:#f3f5f7;--card:#fff;--line:#d8dee4;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:#1f2937;color:#f9fafb;padding:14px 28px;display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px}
header h1{font-size:18px;margin:0;font-weight:600}
header span{color:#cbd5e1;font-size:13px}
main{max-width:1440px;margin:0 auto;padding:18px 28px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:0 0 18px;padding:14px 18px}
h2{font-size:15px;margin:0 0 10px}
h2 small{font-weight:400;color:var(--muted);margin-left:8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:0 0 18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:22px;font-weight:600}
.card span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-size:12px;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:#f8fafc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;white-space:nowrap}
.up{background:var(--ok)}.down{background:var(--bad)}.warn{background:var(--warn)}.off{background:#6e7781}
.label{display:inline-block;font:12px/1.5 ui-monospace,"DejaVu Sans Mono",monospace;background:#eef1f4;border-radius:4px;padding:0 5px;margin:1px 3px 1px 0;white-space:pre-wrap;word-break:break-all}
.job{font-weight:600}
.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}
.muted{color:var(--muted)}
.nowrap{white-space:nowrap}
.err{color:var(--bad);word-break:break-word}
.bar{display:inline-block;width:90px;height:8px;background:#e5e9ee;border-radius:4px;vertical-align:middle;margin-right:8px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
form{display:flex;gap:8px;align-items:center;margin:0 0 10px}
input{font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px;min-width:240px}
button{font:inherit;padding:4px 14px;border:1px solid var(--accent);border-radius:6px;background:var(--accent);color:#fff}
a{color:var(--accent)}
nav.pager{display:flex;gap:16px;align-items:center;margin:10px 0 0}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
dl.kv.cols{grid-template-columns:repeat(2,max-content minmax(0,1fr))}
.row{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1.2fr) minmax(0,1fr);gap:0 18px;align-items:start}
section h2+h2,dl+h2,p+h2{margin-top:14px}
"#;

fn render(view: &PageView<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024 + view.groups.rows.len() * 512);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<title>dynamic-sharding</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>");
    w!(
        out,
        "<header><h1>dynamic-sharding</h1><span>version {}</span><span>mode {}</span>\
         <span>ring {} · generation {} · built {}</span><span>membership {}</span>\
         <span>rendered {}</span></header><main>",
        env!("CARGO_PKG_VERSION"),
        Escaped(&view.mode),
        view.algorithm,
        view.generation,
        humantime::format_rfc3339_seconds(view.built_at),
        view.membership.source,
        humantime::format_rfc3339_seconds(view.now),
    );
    render_cards(&mut out, view);
    render_nodes(&mut out, view);
    render_membership(&mut out, view);
    // The operational state above the (long) group list.
    out.push_str("<div class=\"row\">");
    render_rebalancer(&mut out, view);
    render_faults(&mut out, view);
    render_expiry(&mut out, view);
    out.push_str("</div>");
    render_read_failures(&mut out, view);
    render_groups(&mut out, view);
    out.push_str("</main></body></html>\n");
    out
}

fn render_cards(out: &mut String, view: &PageView<'_>) {
    let healthy = view.membership.nodes.iter().filter(|n| n.healthy).count();
    let ejected = view.outliers.values().filter(|o| o.ejected).count();
    let listed: usize = view.groups.per_node.values().sum();
    out.push_str("<div class=\"cards\">");
    w!(
        out,
        "<div class=\"card\" id=\"card-nodes\"><b>{healthy} / {}</b><span>nodes healthy</span></div>",
        view.membership.nodes.len()
    );
    w!(
        out,
        "<div class=\"card\"><b>{}</b><span>nodes in the ring</span></div>",
        view.ring_nodes.len()
    );
    let (state, what) = match MembershipState::of(view.membership) {
        MembershipState::Ok => ("ok", "look-ups"),
        MembershipState::Failing => ("failing", "look-ups"),
        MembershipState::Pending => ("pending", "look-ups"),
        MembershipState::ConsulReachable => ("ok", "agent"),
        MembershipState::ConsulUnreachable => ("unreachable", "agent"),
    };
    w!(
        out,
        "<div class=\"card\" id=\"card-membership\"><b>{state}</b><span>{} {what}</span></div>",
        view.membership.source
    );
    w!(
        out,
        "<div class=\"card\"><b>{ejected}</b><span>nodes ejected</span></div>"
    );
    w!(
        out,
        "<div class=\"card\"><b>{listed}</b><span>groups on the ring's nodes</span></div>"
    );
    w!(
        out,
        "<div class=\"card\"><b>{}</b><span>pending write repairs</span></div>",
        view.pending_repairs
    );
    w!(
        out,
        "<div class=\"card\" id=\"card-expiry\"><b>{}</b><span>group expiry</span></div>",
        Escaped(&view.expiry.state)
    );
    out.push_str("</div>");
}

fn render_nodes(out: &mut String, view: &PageView<'_>) {
    out.push_str("<section id=\"nodes\"><h2>Nodes</h2><table><thead><tr><th>node</th><th>health</th>\
        <th>last probe</th><th>share of the ring</th><th class=\"num\">groups</th><th>outlier detection</th>\
        <th>last error</th></tr></thead><tbody>");
    for node in &view.membership.nodes {
        let outlier = view.outliers.get(&node.node);
        let ejected = outlier.is_some_and(|o| o.ejected);
        let read_failing = failing_read_count(&view.read_failures, &node.node);
        let health = match (node.healthy, ejected) {
            (false, _) => "down",
            (true, true) => "ejected",
            (true, false) => "up",
        };
        w!(
            out,
            "<tr class=\"node\" data-node=\"{0}\" data-health=\"{1}\"><td class=\"mono\">\
             <a href=\"{3}{0}/\">{0}</a></td><td><span class=\"badge {2}\">{1}</span>",
            Escaped(&node.node),
            health,
            match health {
                "up" => "up",
                "ejected" => "warn",
                _ => "down",
            },
            view.node_scheme.prefix(),
        );
        if read_failing > 0 {
            out.push_str(" <span class=\"badge warn\">reads failing</span>");
        }
        out.push_str("</td><td class=\"nowrap\">");
        match node.last_probe {
            Some(probe) => {
                w!(
                    out,
                    "{} <span class=\"muted\">({} ago)</span>",
                    humantime::format_rfc3339_seconds(probe),
                    age(view.now, probe)
                );
            }
            None => out.push_str("<span class=\"muted\">never</span>"),
        }
        out.push_str("</td><td class=\"nowrap\">");
        match view.ring_nodes.iter().position(|n| *n == node.node) {
            Some(index) => {
                let share = view.shares.get(index).copied().unwrap_or_default() * 100.0;
                w!(
                    out,
                    "<span class=\"bar\"><i style=\"width:{share:.1}%\"></i></span>{share:.1}%"
                );
            }
            None => out.push_str("<span class=\"muted\">not in the ring</span>"),
        }
        out.push_str("</td><td class=\"num\">");
        match view.groups.per_node.get(&node.node) {
            Some(count) => {
                w!(out, "{count}");
            }
            None => out.push_str("<span class=\"muted\">—</span>"),
        }
        out.push_str("</td><td>");
        match outlier {
            Some(o) if o.ejected => {
                w!(
                    out,
                    "ejected for {:.0}s more ({} times)",
                    o.ejected_for_seconds.unwrap_or_default(),
                    o.times_ejected
                );
                if let Some(reason) = &o.last_ejection_reason {
                    w!(out, "<br><span class=\"err\">{}</span>", Escaped(reason));
                }
            }
            Some(o) => {
                w!(
                    out,
                    "{} failures in a row · {} in flight",
                    o.consecutive_failures,
                    o.pushes_in_flight
                );
                if o.times_ejected > 0 {
                    w!(out, ", ejected {} times before", o.times_ejected);
                }
            }
            None => out.push_str("<span class=\"muted\">no pushes yet</span>"),
        }
        out.push_str("</td><td>");
        if let Some(error) = &node.last_error {
            w!(out, "<span class=\"err\">{}</span>", Escaped(error));
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// Whether the membership source's last look-up (or contact with Consul) worked.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MembershipState {
    Ok,
    Failing,
    /// No look-up finished yet.
    Pending,
    ConsulReachable,
    ConsulUnreachable,
}

impl MembershipState {
    fn of(membership: &Membership) -> MembershipState {
        let detail = &membership.detail;
        if detail.is_null() {
            return MembershipState::Pending;
        }
        if membership.source == "consul" {
            return if detail.get("reachable").and_then(Value::as_bool) == Some(true) {
                MembershipState::ConsulReachable
            } else {
                MembershipState::ConsulUnreachable
            };
        }
        let discovery = &detail["discovery"];
        if discovery.get("failing_since").is_some_and(Value::is_string) {
            MembershipState::Failing
        } else if discovery.get("last_success").is_some_and(Value::is_string) {
            MembershipState::Ok
        } else {
            MembershipState::Pending
        }
    }
}

/// The membership source and whether it can look: for the discovered sources (static, `dns_sd`, `file_sd`) the
/// last success, the last error and every part (name, file) failing now with its own error; for Consul the
/// agent, the last contact and the last error. Everything from a source is escaped: errors quote names, paths
/// and server answers.
fn render_membership(out: &mut String, view: &PageView<'_>) {
    let membership = view.membership;
    let state = MembershipState::of(membership);
    w!(
        out,
        "<section id=\"membership\" data-source=\"{0}\" data-state=\"{1}\"><h2>Membership<small>{0}</small></h2>",
        membership.source,
        match state {
            MembershipState::Ok | MembershipState::ConsulReachable => "ok",
            MembershipState::Failing | MembershipState::ConsulUnreachable => "failing",
            MembershipState::Pending => "pending",
        }
    );
    let detail = &membership.detail;
    let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let when = |time: Option<String>| match time {
        Some(time) => time_and_age(view.now, &time),
        None => "never".to_owned(),
    };
    if membership.source == "consul" && state != MembershipState::Pending {
        w!(
            out,
            "<p>{}</p><dl class=\"kv\">",
            if state == MembershipState::ConsulReachable {
                "<span class=\"badge up\">Consul reachable</span>"
            } else {
                "<span class=\"badge down\">Consul unreachable: keeping the last node set</span>"
            }
        );
        for (label, key) in [("agent", "consul"), ("service", "service")] {
            w!(
                out,
                "<dt>{label}</dt><dd class=\"mono\">{}</dd>",
                Escaped(&text(detail, key).unwrap_or_default())
            );
        }
        w!(
            out,
            "<dt>last contact</dt><dd>{}</dd><dt>last index</dt><dd>{}</dd>",
            Escaped(&when(text(detail, "last_contact"))),
            Escaped(
                &detail
                    .get("last_index")
                    .map_or_else(String::new, Value::to_string)
            )
        );
        render_last_error(out, view, detail);
        if let Some(error) = text(detail, "last_registration_error") {
            w!(
                out,
                "<dt>last registration error</dt><dd class=\"err\">{}</dd>",
                Escaped(&error)
            );
        }
        out.push_str("</dl></section>");
        return;
    }
    let discovery = &detail["discovery"];
    match state {
        MembershipState::Failing => {
            w!(
                out,
                "<p><span class=\"badge down\">last look-up failed</span> since {}; keeping the last known \
                 addresses</p>",
                Escaped(&when(text(discovery, "failing_since")))
            );
        }
        MembershipState::Pending => out.push_str("<p class=\"muted\">No look-up yet.</p>"),
        _ => out.push_str("<p><span class=\"badge up\">last look-up succeeded</span></p>"),
    }
    w!(
        out,
        "<dl class=\"kv\"><dt>last success</dt><dd id=\"discovery-last-success\">{}</dd>\
         <dt>failed look-ups</dt><dd>{}</dd>",
        Escaped(&when(text(discovery, "last_success"))),
        discovery
            .get("failed_lookups")
            .and_then(Value::as_u64)
            .unwrap_or_default()
    );
    render_last_error(out, view, discovery);
    out.push_str("</dl>");
    let failing = discovery
        .get("failing")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if !failing.is_empty() {
        out.push_str("<table id=\"discovery-failing\"><thead><tr><th>failing now</th><th>error</th></tr></thead><tbody>");
        for failure in failing {
            w!(
                out,
                "<tr class=\"failing-part\"><td class=\"mono\">{}</td><td class=\"err\">{}</td></tr>",
                Escaped(&text(failure, "part").unwrap_or_default()),
                Escaped(&text(failure, "error").unwrap_or_default())
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

/// `last_error` and `last_error_at` of a membership detail, as `<dt>`/`<dd>` rows; nothing when there is none.
fn render_last_error(out: &mut String, view: &PageView<'_>, detail: &Value) {
    let Some(error) = detail.get("last_error").and_then(Value::as_str) else {
        return;
    };
    w!(
        out,
        "<dt>last error</dt><dd class=\"err\" id=\"membership-last-error\">{}</dd>",
        Escaped(error)
    );
    if let Some(at) = detail.get("last_error_at").and_then(Value::as_str) {
        w!(
            out,
            "<dt>last error at</dt><dd>{}</dd>",
            Escaped(&time_and_age(view.now, at))
        );
    }
}

/// An RFC 3339 time as [`readable_time`] shows it, with how long ago it was.
fn time_and_age(now: SystemTime, text: &str) -> String {
    match humantime::parse_rfc3339_weak(text) {
        Ok(time) => format!("{} ({} ago)", readable_time(text), age(now, time)),
        Err(_) => text.to_owned(),
    }
}

fn failing_read_count(failures: &Value, node: &str) -> usize {
    failures.as_array().map_or(0, |entries| {
        entries
            .iter()
            .filter(|entry| entry.get("node").and_then(Value::as_str) == Some(node))
            .count()
    })
}

fn render_groups(out: &mut String, view: &PageView<'_>) {
    let groups = &view.groups;
    let first = (groups.page - 1) * groups.per_page + 1;
    let last = (first + groups.rows.len()).saturating_sub(1);
    w!(out, "<section id=\"groups\"><h2>Groups<small>");
    match &groups.job {
        Some(job) => {
            w!(out, "job {}: ", Escaped(job));
        }
        None => out.push_str("all jobs: "),
    }
    if groups.rows.is_empty() {
        w!(out, "{} groups", groups.matching);
    } else {
        w!(out, "{first}–{last} of {}", groups.matching);
    }
    out.push_str(" · groups on nodes outside the ring are not listed</small></h2>");
    w!(
        out,
        "<form method=\"get\" action=\"/\"><label for=\"job\">Job</label>\
         <input id=\"job\" name=\"job\" value=\"{}\" placeholder=\"exact job name\">\
         <button type=\"submit\">Filter</button><a href=\"/\">all jobs</a></form>",
        Escaped(groups.job.as_deref().unwrap_or_default())
    );
    for (node, why) in &groups.unlisted {
        w!(
            out,
            "<p class=\"err unlisted\">Groups of {} are missing: {}</p>",
            Escaped(node),
            Escaped(why)
        );
    }
    if groups.rows.is_empty() {
        out.push_str("<p class=\"muted\">No group on this page.</p>");
    } else {
        out.push_str("<table><thead><tr><th>job</th><th>grouping labels</th><th>node(s)</th><th>last push</th>\
            <th class=\"num\">age</th></tr></thead><tbody>");
        for row in &groups.rows {
            render_group(out, view, row);
        }
        out.push_str("</tbody></table>");
    }
    render_pager(out, groups);
    out.push_str("</section>");
}

fn render_group(out: &mut String, view: &PageView<'_>, row: &GroupRow) {
    w!(
        out,
        "<tr class=\"group\" data-job=\"{0}\"><td class=\"job\">{0}</td><td>",
        Escaped(&row.job)
    );
    for (name, value) in &row.labels {
        w!(
            out,
            "<span class=\"label\">{}=\"{}\"</span>",
            Escaped(name),
            Escaped(value)
        );
    }
    out.push_str("</td><td>");
    for holder in &row.holders {
        w!(
            out,
            "<span class=\"mono holder\">{}</span>",
            Escaped(&holder.node)
        );
        if !holder.last_push_successful {
            out.push_str(" <span class=\"badge warn\">last push failed</span>");
        }
        if row
            .owner
            .as_ref()
            .is_some_and(|owner| *owner != holder.node)
        {
            out.push_str(" <span class=\"badge warn\">not its owner</span>");
        }
        out.push_str("<br>");
    }
    if let Some(owner) = &row.owner {
        if !row.holders.iter().any(|holder| holder.node == *owner) {
            w!(out, "<span class=\"muted\">owner {}</span>", Escaped(owner));
        }
    }
    out.push_str("</td>");
    match row.push_time().and_then(unix_time) {
        Some(pushed) => {
            w!(
                out,
                "<td>{}</td><td class=\"num\">{}</td>",
                humantime::format_rfc3339_seconds(pushed),
                age(view.now, pushed)
            );
        }
        None => out.push_str("<td class=\"muted\">never succeeded</td><td></td>"),
    }
    out.push_str("</tr>");
}

fn render_pager(out: &mut String, groups: &GroupPage) {
    let pages = groups.pages();
    if pages <= 1 && groups.page == 1 {
        return;
    }
    out.push_str("<nav class=\"pager\">");
    if groups.page > 1 {
        let previous = groups.page.min(pages + 1) - 1;
        w!(
            out,
            "<a rel=\"prev\" href=\"{}\">← previous</a>",
            Escaped(&page_url(groups.job.as_deref(), previous))
        );
    }
    w!(out, "<span>page {} of {pages}</span>", groups.page);
    if groups.page < pages {
        w!(
            out,
            "<a rel=\"next\" href=\"{}\">next →</a>",
            Escaped(&page_url(groups.job.as_deref(), groups.page + 1))
        );
    }
    out.push_str("</nav>");
}

fn page_url(job: Option<&str>, page: usize) -> String {
    match job {
        Some(job) => format!(
            "/?job={}&page={page}",
            utf8_percent_encode(job, NON_ALPHANUMERIC)
        ),
        None => format!("/?page={page}"),
    }
}

fn render_rebalancer(out: &mut String, view: &PageView<'_>) {
    out.push_str("<section id=\"rebalancer\"><h2>Rebalancer</h2>");
    let status = &view.rebalance;
    let flag = |key: &str| status.get(key).and_then(Value::as_bool).unwrap_or(false);
    w!(
        out,
        "<p><span class=\"badge {}\">{}</span> <span class=\"badge {}\">{}</span>",
        if flag("enabled") { "up" } else { "off" },
        if flag("enabled") {
            "enabled"
        } else {
            "disabled"
        },
        if flag("leader") { "up" } else { "off" },
        if flag("leader") {
            "this replica rebalances"
        } else {
            "not the leader"
        },
    );
    if let Some(reason) = status.get("inactive_reason").and_then(Value::as_str) {
        w!(out, " <span class=\"muted\">{}</span>", Escaped(reason));
    }
    out.push_str("</p>");
    if let Some(Value::Array(draining)) = status.get("draining") {
        if !draining.is_empty() {
            out.push_str("<p>Draining: ");
            for node in draining.iter().filter_map(Value::as_str) {
                w!(out, "<span class=\"mono\">{}</span> ", Escaped(node));
            }
            out.push_str("</p>");
        }
    }
    match status.get("last_pass") {
        Some(Value::Object(pass)) => {
            out.push_str("<h2>Last pass</h2><dl class=\"kv cols\" id=\"last-pass\">");
            // Every field the rebalancer reports, so new ones show up without changing this page.
            for (key, value) in pass {
                let value = match value {
                    Value::String(text) => readable_time(text),
                    Value::Number(number) if !number.is_i64() && !number.is_u64() => {
                        format!("{:.3}", number.as_f64().unwrap_or_default())
                    }
                    other => other.to_string(),
                };
                w!(
                    out,
                    "<dt>{}</dt><dd>{}</dd>",
                    Escaped(&key.replace('_', " ")),
                    Escaped(&value)
                );
            }
            out.push_str("</dl>");
        }
        _ => out.push_str("<p class=\"muted\">No pass yet.</p>"),
    }
    out.push_str("</section>");
}

fn render_faults(out: &mut String, view: &PageView<'_>) {
    out.push_str("<section id=\"faults\"><h2>Faults</h2><dl class=\"kv\">");
    w!(
        out,
        "<dt>ambiguous writes awaiting repair</dt><dd id=\"pending-repairs\">{}</dd>",
        view.pending_repairs
    );
    let ejected: Vec<&String> = view
        .outliers
        .iter()
        .filter(|(_, o)| o.ejected)
        .map(|(node, _)| node)
        .collect();
    out.push_str("<dt>ejected nodes</dt><dd>");
    if ejected.is_empty() {
        out.push_str("none");
    }
    for node in ejected {
        w!(out, "<span class=\"mono\">{}</span> ", Escaped(node));
    }
    let failures = view.read_failures.as_array().map_or(0, Vec::len);
    out.push_str("</dd><dt>nodes whose reads fail</dt><dd>");
    if failures == 0 {
        out.push_str("none");
    } else {
        w!(out, "{failures}, <a href=\"#read-failures\">see below</a>");
    }
    out.push_str("</dd></dl></section>");
}

/// The nodes whose last fanned-out read failed, with the node's own error; absent when there are none.
fn render_read_failures(out: &mut String, view: &PageView<'_>) {
    let failures = view.read_failures.as_array().map_or(&[][..], Vec::as_slice);
    if !failures.is_empty() {
        out.push_str("<section id=\"read-failures\"><h2>Nodes whose reads fail</h2><table><thead><tr><th>node</th><th>path</th><th>kind</th>\
            <th>since</th><th class=\"num\">failures in a row</th><th>error</th></tr></thead><tbody>");
        for entry in failures {
            let field = |key: &str| match entry.get(key) {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            w!(
                out,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"num\">{}</td><td class=\"err\">{}</td></tr>",
                Escaped(&field("node")),
                Escaped(&field("path")),
                Escaped(&field("kind")),
                Escaped(&readable_time(&field("since"))),
                Escaped(&field("failures_in_a_row")),
                Escaped(&field("error")),
            );
        }
        out.push_str("</tbody></table></section>");
    }
}

fn render_expiry(out: &mut String, view: &PageView<'_>) {
    w!(
        out,
        "<section id=\"expiry\"><h2>Group expiry<small>{}</small></h2><dl class=\"kv\">",
        Escaped(&view.expiry.state)
    );
    for (setting, value) in &view.expiry.rows {
        w!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            Escaped(setting),
            Escaped(value)
        );
    }
    out.push_str("</dl></section>");
}

/// An RFC 3339 timestamp to the second with a space before the time, so a narrow column wraps between date and
/// time; anything else as it is.
fn readable_time(text: &str) -> String {
    match humantime::parse_rfc3339_weak(text) {
        Ok(time) => humantime::format_rfc3339_seconds(time)
            .to_string()
            .replacen('T', " ", 1)
            .replace('Z', " UTC"),
        Err(_) => text.to_owned(),
    }
}

fn unix_time(seconds: f64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

/// How long ago `then` was, to the second ("3m 12s"); "0s" for a time in the future (clock skew).
fn age(now: SystemTime, then: SystemTime) -> String {
    let elapsed = now.duration_since(then).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(elapsed.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeStatus;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn listed(pairs: &[(&str, &str)], push_time: f64) -> ListedGroup {
        ListedGroup {
            labels: labels(pairs),
            push_time: Some(push_time),
            last_push_successful: true,
        }
    }

    #[test]
    fn escaping_covers_every_character_that_can_open_markup_or_close_an_attribute() {
        assert_eq!(
            Escaped(r#"<script>alert("x" & 'y')</script>"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(Escaped("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(Escaped("").to_string(), "");
    }

    #[test]
    fn a_listing_keeps_labels_and_push_time_and_counts_every_group() {
        let body = br#"{"status":"success","data":[
            {"labels":{"job":"a","instance":"x"},"last_push_successful":true,
             "push_time_seconds":{"time_stamp":"t","type":"GAUGE","metrics":[{"labels":{},"value":"1700000000.5"}]},
             "some_metric":{"type":"COUNTER","metrics":[{"labels":{"job":"a"},"value":"3"}]}},
            {"labels":{"job":"b"},"last_push_successful":false,
             "push_time_seconds":{"metrics":[{"value":"0"}]}}]}"#;
        let all = parse_listing(body, None).unwrap();
        assert_eq!(all.total, 2);
        assert_eq!(
            all.groups,
            vec![
                listed(&[("job", "a"), ("instance", "x")], 1_700_000_000.5),
                ListedGroup {
                    labels: labels(&[("job", "b")]),
                    push_time: None,
                    last_push_successful: false,
                },
            ]
        );
        let only_b = parse_listing(body, Some("b")).unwrap();
        assert_eq!(only_b.total, 2);
        assert_eq!(only_b.groups.len(), 1);
    }

    #[test]
    fn unusable_listings_say_what_is_wrong() {
        assert!(parse_listing(b"<html>", None)
            .unwrap_err()
            .contains("not the expected JSON"));
        assert!(parse_listing(br#"{"status":"error"}"#, None)
            .unwrap_err()
            .contains("\"error\""));
    }

    fn node_listing(groups: Vec<ListedGroup>) -> NodeListing {
        NodeListing {
            total: groups.len(),
            groups,
        }
    }

    #[test]
    fn a_group_on_two_nodes_is_one_row_and_rows_are_sorted_and_paged() {
        let listings = vec![
            (
                "n2:1".to_owned(),
                node_listing(vec![
                    listed(&[("job", "b")], 20.0),
                    listed(&[("job", "a"), ("i", "2")], 5.0),
                ]),
            ),
            (
                "n1:1".to_owned(),
                node_listing(vec![
                    listed(&[("job", "b")], 10.0),
                    listed(&[("job", "a"), ("i", "1")], 1.0),
                ]),
            ),
        ];
        let page = GroupPage::build(listings, vec![], None, 1, 2, |_| Some("n1:1".to_owned()));
        assert_eq!(page.matching, 3);
        assert_eq!(page.pages(), 2);
        assert_eq!(page.per_node.get("n1:1"), Some(&2));
        let shown: Vec<(&str, Vec<(String, String)>)> = page
            .rows
            .iter()
            .map(|row| (row.job.as_str(), row.labels.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("a", vec![("i".to_owned(), "1".to_owned())]),
                ("a", vec![("i".to_owned(), "2".to_owned())]),
            ]
        );

        let listings = vec![
            (
                "n2:1".to_owned(),
                node_listing(vec![listed(&[("job", "b")], 20.0)]),
            ),
            (
                "n1:1".to_owned(),
                node_listing(vec![listed(&[("job", "b")], 10.0)]),
            ),
        ];
        let page = GroupPage::build(listings, vec![], None, 1, 500, |_| None);
        assert_eq!(page.rows.len(), 1);
        let row = &page.rows[0];
        let holders: Vec<&str> = row.holders.iter().map(|h| h.node.as_str()).collect();
        assert_eq!(holders, ["n1:1", "n2:1"]);
        assert_eq!(row.push_time(), Some(20.0));
    }

    #[test]
    fn a_page_past_the_end_is_empty_and_links_back() {
        let listings = vec![(
            "n:1".to_owned(),
            node_listing(vec![listed(&[("job", "a")], 1.0)]),
        )];
        let page = GroupPage::build(listings, vec![], Some("a b&c".to_owned()), 7, 500, |_| None);
        assert!(page.rows.is_empty());
        assert_eq!(page.matching, 1);
        let mut out = String::new();
        render_pager(&mut out, &page);
        assert!(out.contains("href=\"/?job=a%20b%26c&amp;page=1\""), "{out}");
        assert!(!out.contains("rel=\"next\""), "{out}");
    }

    #[test]
    fn timestamps_read_as_date_and_time_and_other_text_stays() {
        assert_eq!(
            readable_time("2026-12-01T20:50:13.861Z"),
            "2026-12-01 20:50:13 UTC"
        );
        assert_eq!(readable_time("ring change"), "ring change");
    }

    #[test]
    fn page_numbers_start_at_one_and_bad_ones_say_how_to_fix_them() {
        assert_eq!(parse_page(None), Ok(1));
        assert_eq!(parse_page(Some("")), Ok(1));
        assert_eq!(parse_page(Some("3")), Ok(3));
        for bad in ["0", "-1", "two", "1.5"] {
            let message = parse_page(Some(bad)).unwrap_err();
            assert!(
                message.contains(bad) && message.contains("page number"),
                "{message}"
            );
        }
    }

    /// A page seen at 62 s after the epoch, of `membership` and `groups`.
    fn page_view(membership: &Membership, groups: GroupPage) -> PageView<'_> {
        PageView {
            now: UNIX_EPOCH + Duration::from_secs(62),
            mode: "proxy".to_owned(),
            node_scheme: NodeScheme::Https,
            algorithm: Algorithm::Rendezvous,
            generation: 1,
            built_at: UNIX_EPOCH,
            membership,
            ring_nodes: &[],
            shares: vec![],
            outliers: BTreeMap::new(),
            read_failures: Value::Array(vec![]),
            rebalance: serde_json::json!({"enabled": true, "leader": true, "last_pass": null}),
            pending_repairs: 0,
            expiry: Expiry {
                state: "off".to_owned(),
                rows: vec![("groups.expire_after".to_owned(), "off".to_owned())],
            },
            groups,
        }
    }

    /// The `<section id="membership">` of the page rendered for `membership`.
    fn membership_section(membership: &Membership) -> String {
        let no_groups = GroupPage::build(vec![], vec![], None, 1, GROUPS_PER_PAGE, |_| None);
        let html = render(&page_view(membership, no_groups));
        html.split("<section id=\"membership\"")
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("no membership section:\n{html}"))
            .to_owned()
    }

    fn discovered(source: &'static str, discovery: Value) -> Membership {
        Membership {
            source,
            nodes: vec![],
            detail: serde_json::json!({ "discovery": discovery }),
        }
    }

    #[test]
    fn a_failing_discovery_shows_its_last_success_and_each_failing_part_escaped() {
        let failing = discovered(
            "file_sd",
            serde_json::json!({
                "last_success": "1970-01-01T00:00:02.000Z",
                "last_error": "/sd/<b>.json: invalid JSON; /sd/b.yml: cannot read: denied",
                "last_error_at": "1970-01-01T00:01:00.000Z",
                "failing_since": "1970-01-01T00:00:30.000Z",
                "failing": [
                    {"part": "/sd/<b>.json", "error": "invalid JSON <script>alert(1)</script>"},
                    {"part": "/sd/b.yml", "error": "cannot read: denied"},
                ],
                "failed_lookups": 4,
            }),
        );
        let section = membership_section(&failing);
        assert!(
            section.starts_with(" data-source=\"file_sd\" data-state=\"failing\">"),
            "{section}"
        );
        assert!(
            section.contains("last look-up failed</span> since 1970-01-01 00:00:30 UTC (32s ago)"),
            "{section}"
        );
        assert!(
            section.contains(
                "<dd id=\"discovery-last-success\">1970-01-01 00:00:02 UTC (1m ago)</dd>"
            ),
            "{section}"
        );
        assert!(
            section.contains("<dt>failed look-ups</dt><dd>4</dd>"),
            "{section}"
        );
        assert!(
            section.contains(
                "<tr class=\"failing-part\"><td class=\"mono\">/sd/&lt;b&gt;.json</td>\
                 <td class=\"err\">invalid JSON &lt;script&gt;alert(1)&lt;/script&gt;</td></tr>"
            ),
            "{section}"
        );
        assert!(section.contains(
            "<td class=\"mono\">/sd/b.yml</td><td class=\"err\">cannot read: denied</td>"
        ));
        assert!(
            !section.contains("<script") && !section.contains("<b>"),
            "{section}"
        );

        let recovered = discovered(
            "dns_sd",
            serde_json::json!({
                "last_success": "1970-01-01T00:01:01.000Z",
                "last_error": "dns_sd.names[0] \"pg\" (A): nameserver 10.0.0.1:53 answered SERVFAIL",
                "last_error_at": "1970-01-01T00:01:00.000Z",
                "failing_since": null,
                "failing": [],
                "failed_lookups": 4,
            }),
        );
        let section = membership_section(&recovered);
        assert!(section.contains("data-state=\"ok\""), "{section}");
        assert!(section.contains("last look-up succeeded"), "{section}");
        assert!(
            section.contains("&quot;pg&quot; (A): nameserver 10.0.0.1:53 answered SERVFAIL"),
            "the last error stays visible: {section}"
        );
        assert!(
            !section.contains("discovery-failing"),
            "nothing fails now: {section}"
        );

        let pending = Membership::empty("dns_sd");
        assert!(membership_section(&pending).contains("No look-up yet."));
    }

    #[test]
    fn consul_membership_shows_whether_the_agent_answers() {
        let consul = Membership {
            source: "consul",
            nodes: vec![],
            detail: serde_json::json!({
                "consul": "http://127.0.0.1:8500",
                "service": "pushgateway",
                "reachable": false,
                "last_index": 42,
                "last_contact": "1970-01-01T00:00:50.000Z",
                "last_error": "connection refused <&>",
                "last_error_at": "1970-01-01T00:01:00.000Z",
                "last_registration_error": null,
            }),
        };
        let section = membership_section(&consul);
        assert!(section.contains("data-state=\"failing\""), "{section}");
        assert!(section.contains("Consul unreachable"), "{section}");
        assert!(
            section.contains("<dd class=\"mono\">http://127.0.0.1:8500</dd>"),
            "{section}"
        );
        assert!(
            section.contains("1970-01-01 00:00:50 UTC (12s ago)"),
            "{section}"
        );
        assert!(
            section.contains("connection refused &lt;&amp;&gt;"),
            "{section}"
        );
        assert!(!section.contains("registration"), "{section}");
        assert!(
            membership_section(&Membership::empty("consul")).contains("No look-up yet."),
            "before the first answer"
        );
    }

    #[test]
    fn the_rendered_page_escapes_labels_and_node_errors() {
        let membership = Membership {
            source: "static",
            nodes: vec![NodeStatus {
                node: "127.0.0.1:9091".to_owned(),
                healthy: false,
                last_probe: None,
                last_error: Some("<b>refused</b>".to_owned()),
            }],
            detail: Value::Null,
        };
        let groups = GroupPage::build(
            vec![(
                "127.0.0.1:9091".to_owned(),
                node_listing(vec![listed(
                    &[("job", "<j>"), ("x", "<script>alert(1)</script>")],
                    1.0,
                )]),
            )],
            vec![],
            Some("<j>".to_owned()),
            1,
            500,
            |_| None,
        );
        let html = render(&page_view(&membership, groups));
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>refused"), "{html}");
        assert!(html.contains("x=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(html.contains("data-health=\"down\""));
        assert!(
            html.contains("<a href=\"https://127.0.0.1:9091/\">"),
            "a node's link has pushgateway.scheme: {html}"
        );
        assert!(html.contains("value=\"&lt;j&gt;\""));
        assert!(html.contains("1m 1s"), "age of a push at 1 s seen at 62 s");
        assert!(html.contains("<section id=\"expiry\"><h2>Group expiry<small>off</small></h2>"));
    }
}

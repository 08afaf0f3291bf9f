//! Tests against fixtures captured from a real Pushgateway 1.5.1 (`testdata/`): node A and
//! node B `/metrics`, node A `/api/v1/metrics`, and the body pushed to node A's `batch` group.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::merge::{is_pushed_sample, merge, merge_pushed, Conflict};
use super::pushgateway_json::{parse_api_metrics, ApiMetricsError, Group, MovedMarker};
use super::text::{
    escape_help, escape_label_value, parse_text, render, unescape_help, MetricFamily, MetricType,
    ParseErrorKind,
};

const NODE_A_METRICS: &str = include_str!("testdata/node_a_metrics.txt");
const NODE_B_METRICS: &str = include_str!("testdata/node_b_metrics.txt");
const NODE_A_API: &str = include_str!("testdata/node_a_api_v1_metrics.json");
const PUSHED_BODY: &str = include_str!("testdata/pushed_body.txt");

fn family<'f, 'a>(families: &'f [MetricFamily<'a>], name: &str) -> &'f MetricFamily<'a> {
    match families.iter().find(|f| f.name == name) {
        Some(found) => found,
        None => panic!("family {name} missing"),
    }
}

/// `(sample name, sorted unescaped labels, value)` of every sample: a comparable view.
type SampleView = (String, Vec<(String, String)>, String);

fn sample_views(families: &[MetricFamily<'_>]) -> BTreeSet<SampleView> {
    let mut views = BTreeSet::new();
    for family in families {
        for sample in &family.samples {
            let mut labels: Vec<(String, String)> = sample
                .labels()
                .map(|l| (l.name.to_owned(), l.value().into_owned()))
                .collect();
            labels.sort();
            views.insert((sample.name.to_owned(), labels, sample.value.to_owned()));
        }
    }
    views
}

// ---------------------------------------------------------------- text parser

#[test]
fn parses_pushgateway_metrics_fixture_with_every_type() {
    let families = parse_text(NODE_A_METRICS).unwrap();

    let requests = family(&families, "requests_total");
    assert_eq!(requests.metric_type, MetricType::Counter);
    assert_eq!(
        unescape_help(requests.help.unwrap()),
        "Total requests.\nSecond line with a backslash \\ here."
    );
    assert_eq!(requests.samples.len(), 4);
    let odd_path = requests
        .samples
        .iter()
        .flat_map(|s| s.labels())
        .find(|l| l.name == "path" && l.value().contains('\n'))
        .unwrap();
    assert_eq!(odd_path.value(), "line\nbreak\\slash");
    let quoted = requests
        .samples
        .iter()
        .find(|s| s.labels().any(|l| l.value() == "/b \"quoted\""))
        .unwrap();
    assert_eq!(quoted.value, "3.5e-07");

    let latency = family(&families, "latency_seconds");
    assert_eq!(latency.metric_type, MetricType::Histogram);
    let names: Vec<&str> = latency.samples.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "latency_seconds_bucket",
            "latency_seconds_bucket",
            "latency_seconds_bucket",
            "latency_seconds_bucket",
            "latency_seconds_sum",
            "latency_seconds_count"
        ]
    );

    let rpc = family(&families, "rpc_duration_seconds");
    assert_eq!(rpc.metric_type, MetricType::Summary);
    assert_eq!(rpc.samples.len(), 5);
    assert!(rpc.samples.iter().any(|s| s.value == "NaN"));

    let temperature = family(&families, "temperature_celsius");
    assert_eq!(temperature.metric_type, MetricType::Gauge);
    let values: BTreeSet<&str> = temperature.samples.iter().map(|s| s.value).collect();
    assert!(values.contains("+Inf") && values.contains("-Inf") && values.contains("NaN"));
    assert!(temperature
        .samples
        .iter()
        .any(|s| s.value_f64() == f64::NEG_INFINITY));

    assert_eq!(
        family(&families, "no_type_line").metric_type,
        MetricType::Untyped
    );
    assert_eq!(
        family(&families, "go_gc_duration_seconds").metric_type,
        MetricType::Summary
    );
    // Each family appears once, and no `_sum`/`_count`/`_bucket` became a family of its own.
    let names: BTreeSet<&str> = families.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), families.len());
    assert!(
        !names.contains("latency_seconds_bucket") && !names.contains("rpc_duration_seconds_sum")
    );
}

#[test]
fn parses_the_body_a_client_pushed_including_family_without_type_line() {
    let families = parse_text(PUSHED_BODY).unwrap();
    let untyped = family(&families, "no_type_line");
    assert_eq!(untyped.metric_type, MetricType::Untyped);
    assert_eq!(untyped.help, None);
    let labels: Vec<_> = untyped.samples[0].labels().collect();
    assert_eq!((labels[0].name, labels[0].escaped_value), ("a", "b"));
    assert_eq!(
        family(&families, "requests_total").samples[2].value,
        "12345678901234567890"
    );
}

#[test]
fn parses_comments_blank_lines_timestamps_and_loose_spacing() {
    let text = "\n# just a comment\n#\n  # HELP x  A gauge.\n# TYPE x gauge\n\
                x{ a = \"1\" , b=\"2\", } 3 1700000000000\r\n\tx 4   \n\n";
    let families = parse_text(text).unwrap();
    assert_eq!(families.len(), 1);
    let x = &families[0];
    assert_eq!(
        (x.help, x.metric_type),
        (Some("A gauge."), MetricType::Gauge)
    );
    assert_eq!(x.samples[0].timestamp, Some("1700000000000"));
    let labels: Vec<(&str, &str)> = x.samples[0]
        .labels()
        .map(|l| (l.name, l.escaped_value))
        .collect();
    assert_eq!(labels, [("a", "1"), ("b", "2")]);
    assert_eq!((x.samples[1].value, x.samples[1].timestamp), ("4", None));
    assert_eq!(
        render(&families),
        "# HELP x A gauge.\n# TYPE x gauge\nx{a=\"1\",b=\"2\"} 3 1700000000000\nx 4\n"
    );
}

#[test]
fn suffixed_names_join_only_a_declared_histogram_or_summary() {
    let text =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 2\nh_count 1\n\
                # TYPE g gauge\ng 1\ng_sum 5\nlone_count 3\n\
                # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n";
    let families = parse_text(text).unwrap();
    let names: Vec<(&str, MetricType, usize)> = families
        .iter()
        .map(|f| (f.name, f.metric_type, f.samples.len()))
        .collect();
    assert_eq!(
        names,
        [
            ("h", MetricType::Histogram, 4),
            ("g", MetricType::Gauge, 1),
            ("g_sum", MetricType::Untyped, 1),
            ("lone_count", MetricType::Untyped, 1),
            ("s", MetricType::Summary, 3),
        ]
    );
}

#[test]
fn rejects_malformed_lines_with_line_number_and_reason() {
    type Case = (&'static str, usize, fn(&ParseErrorKind) -> bool);
    let cases: [Case; 10] = [
        (
            "x{a=\"\\t\"} 1\n",
            1,
            |k| matches!(k, ParseErrorKind::InvalidEscape(e) if e == "\\t"),
        ),
        (
            "ok 1\nx one\n",
            2,
            |k| matches!(k, ParseErrorKind::InvalidValue(v) if v == "one"),
        ),
        ("x 1 12.5\n", 1, |k| {
            matches!(k, ParseErrorKind::InvalidTimestamp(_))
        }),
        ("x{a=\"1\" 1\n", 1, |k| {
            matches!(k, ParseErrorKind::MalformedLabels(_))
        }),
        (
            "x{1a=\"1\"} 1\n",
            1,
            |k| matches!(k, ParseErrorKind::InvalidLabelName(n) if n == "1a"),
        ),
        ("x{a=\"1\",a=\"2\"} 1\n", 1, |k| {
            matches!(k, ParseErrorKind::DuplicateLabel(_))
        }),
        ("# TYPE x gauge\n# TYPE x counter\n", 2, |k| {
            matches!(k, ParseErrorKind::DuplicateType(_))
        }),
        ("x 1\n# TYPE x gauge\n", 2, |k| {
            matches!(k, ParseErrorKind::TypeAfterSamples(_))
        }),
        ("# TYPE h histogram\nh_bucket 1\n", 2, |k| {
            matches!(k, ParseErrorKind::MissingBucketLabel { label: "le", .. })
        }),
        (
            "# TYPE x gaug\n",
            1,
            |k| matches!(k, ParseErrorKind::UnknownType(t) if t == "gaug"),
        ),
    ];
    for (text, line, expected) in cases {
        let error = parse_text(text).expect_err(text);
        assert_eq!(error.line, line, "{text:?}: {error}");
        assert!(expected(&error.kind), "{text:?}: unexpected {error}");
    }
    let message = parse_text("x{a=\"1\"} 1\ny{b=\"2\"} nope\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("line 2") && message.contains("\"nope\""),
        "{message}"
    );
}

#[test]
fn render_then_parse_gives_the_same_families_for_fixtures() {
    for fixture in [NODE_A_METRICS, NODE_B_METRICS, PUSHED_BODY] {
        let families = parse_text(fixture).unwrap();
        let rendered = render(&families);
        let reparsed = parse_text(&rendered).unwrap();
        assert_eq!(families.len(), reparsed.len());
        for (original, again) in families.iter().zip(&reparsed) {
            assert_eq!(
                (original.name, original.help, original.metric_type),
                (again.name, again.help, again.metric_type)
            );
            assert_eq!(original.samples.len(), again.samples.len());
            for (a, b) in original.samples.iter().zip(&again.samples) {
                assert_eq!(
                    (a.name, a.value, a.timestamp),
                    (b.name, b.value, b.timestamp)
                );
                assert!(a.labels().eq(b.labels()));
            }
        }
        // Rendering is canonical: a second round changes nothing.
        assert_eq!(render(&reparsed), rendered);
    }
}

proptest! {
    #[test]
    fn escaped_label_values_and_help_survive_render_and_parse(
        values in proptest::collection::vec(any::<String>(), 1..4),
        help in any::<String>(),
    ) {
        let mut text = String::from("# HELP m ");
        escape_help(&help, &mut text);
        text.push_str("\n# TYPE m gauge\nm{");
        for (index, value) in values.iter().enumerate() {
            text.push_str(&format!("l{index}=\""));
            escape_label_value(value, &mut text);
            text.push_str("\",");
        }
        text.push_str("} 1\n");
        let families = parse_text(&text).unwrap();
        let rendered = render(&families);
        let families = parse_text(&rendered).unwrap();
        prop_assert_eq!(families.len(), 1);
        prop_assert_eq!(unescape_help(families[0].help.unwrap()), help.trim_start_matches([' ', '\t']));
        let parsed: Vec<String> = families[0].samples[0].labels().map(|l| l.value().into_owned()).collect();
        prop_assert_eq!(parsed, values);
    }
}

// ---------------------------------------------------------------- merge

#[test]
fn merging_two_real_nodes_resolves_help_type_and_duplicates_deterministically() {
    let merged = merge(&[("node-a", NODE_A_METRICS), ("node-b", NODE_B_METRICS)]);
    let families = parse_text(&merged.text).unwrap();
    let names: Vec<&str> = families.iter().map(|f| f.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "families sorted by name, each once");

    // HELP clash: node-a's help is kept, node-b's series are kept too.
    let requests = family(&families, "requests_total");
    assert!(requests.help.unwrap().starts_with("Total requests."));
    assert_eq!(requests.samples.len(), 5);
    assert!(merged.conflicts.iter().any(|c| matches!(c,
        Conflict::HelpMismatch { family, kept_node, node, help: Some(help), .. }
            if family == "requests_total" && kept_node == "node-a" && node == "node-b"
               && help == "Requests seen by node B.")));

    // TYPE clash: node-a's histogram wins; node-b's gauge sample is dropped and reported.
    let latency = family(&families, "latency_seconds");
    assert_eq!(latency.metric_type, MetricType::Histogram);
    assert!(latency.samples.iter().all(|s| s.name != "latency_seconds"));
    assert!(merged.conflicts.iter().any(|c| matches!(c,
        Conflict::TypeMismatch { family, kept_type: MetricType::Histogram, node_type: MetricType::Gauge,
                                 dropped_samples: 1, node, .. }
            if family == "latency_seconds" && node == "node-b")));

    // Same histogram on both nodes: kept once (all four lines), reported once.
    let dup = family(&families, "dup_hist");
    assert_eq!(dup.samples.len(), 4);
    let dup_reports: Vec<_> = merged
        .conflicts
        .iter()
        .filter(|c| matches!(c, Conflict::DuplicateSeries { series, .. } if series.starts_with("dup_hist{")))
        .collect();
    assert_eq!(dup_reports.len(), 1, "{dup_reports:?}");
    assert!(matches!(dup_reports[0],
        Conflict::DuplicateSeries { series, kept_node, node }
            if series == "dup_hist{job=\"dup\"}" && kept_node == "node-a" && node == "node-b"));

    // Node-b's own summary series sits next to node-a's in one family.
    let rpc = family(&families, "rpc_duration_seconds");
    assert_eq!(rpc.samples.len(), 8);

    // Nothing is lost: every sample of either node is in the output unless reported dropped.
    let output = sample_views(&families);
    let node_a = sample_views(&parse_text(NODE_A_METRICS).unwrap());
    assert!(
        node_a.is_subset(&output),
        "node-a wins every clash, so all of it is kept"
    );
    let from_b_only =
        sample_views(&[family(&parse_text(NODE_B_METRICS).unwrap(), "requests_total").clone()]);
    assert!(from_b_only.is_subset(&output));
}

#[test]
fn merge_result_does_not_depend_on_the_order_nodes_are_given() {
    let forward = merge(&[("node-a", NODE_A_METRICS), ("node-b", NODE_B_METRICS)]);
    let backward = merge(&[("node-b", NODE_B_METRICS), ("node-a", NODE_A_METRICS)]);
    assert_eq!(forward, backward);
}

#[test]
fn merge_keeps_escaping_and_treats_empty_label_as_absent_for_duplicates() {
    let a = "# HELP m Line one\\nline two \\\\ end.\n# TYPE m gauge\nm{job=\"j\",path=\"a\\\"b\\\\c\\nd\"} 1\n";
    let b = "# HELP m Line one\\nline two \\\\ end.\n# TYPE m gauge\nm{path=\"a\\\"b\\\\c\\nd\",instance=\"\",job=\"j\"} 2\nm{job=\"k\"} 3\n";
    let merged = merge(&[("a", a), ("b", b)]);
    assert_eq!(
        merged.text,
        "# HELP m Line one\\nline two \\\\ end.\n# TYPE m gauge\nm{job=\"j\",path=\"a\\\"b\\\\c\\nd\"} 1\nm{job=\"k\"} 3\n"
    );
    assert_eq!(merged.conflicts.len(), 1);
    assert!(
        matches!(&merged.conflicts[0], Conflict::DuplicateSeries { kept_node, node, .. }
        if kept_node == "a" && node == "b")
    );
}

#[test]
fn merge_absent_help_counts_as_a_help_value_and_first_node_wins() {
    let merged = merge(&[
        ("b", "# HELP x From b.\nx{n=\"b\"} 1\n"),
        ("a", "x{n=\"a\"} 2\n"),
    ]);
    assert_eq!(
        merged.text,
        "# TYPE x untyped\nx{n=\"a\"} 2\nx{n=\"b\"} 1\n"
    );
    assert!(
        matches!(&merged.conflicts[..], [Conflict::HelpMismatch { kept_help: None, help: Some(h), .. }] if h == "From b.")
    );
}

#[test]
fn merge_drops_a_family_that_is_another_nodes_histogram_series_name() {
    let a = "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
    let b = "# TYPE h_count gauge\nh_count{x=\"1\"} 7\n";
    let merged = merge(&[("a", a), ("b", b)]);
    assert_eq!(merged.text, a);
    assert!(
        matches!(&merged.conflicts[..], [Conflict::NameCollision { family, kept_family, dropped_samples: 1, .. }]
        if family == "h_count" && kept_family == "h")
    );
    // The earlier node wins even when it holds the plain family.
    let merged = merge(&[("b", b), ("c", a)]);
    assert_eq!(merged.text, b);
    assert!(
        matches!(&merged.conflicts[..], [Conflict::NameCollision { family, .. }] if family == "h")
    );
}

#[test]
fn merge_skips_and_reports_a_node_whose_exposition_does_not_parse() {
    let merged = merge(&[("good", "x 1\n"), ("bad", "x{ 1\n")]);
    assert_eq!(merged.text, "# TYPE x untyped\nx 1\n");
    assert!(
        matches!(&merged.conflicts[..], [Conflict::InvalidExposition { node, error }]
        if node == "bad" && error.line == 1)
    );
}

#[test]
fn merge_pushed_keeps_every_pushed_series_and_no_node_self_metrics() {
    let merged = merge_pushed(&[("node-a", NODE_A_METRICS), ("node-b", NODE_B_METRICS)]);
    let families = parse_text(&merged.text).unwrap();
    for family in &families {
        for prefix in ["go_", "process_", "pushgateway_", "promhttp_"] {
            assert!(
                !family.name.starts_with(prefix),
                "self-metric family {} in the merged output",
                family.name
            );
        }
    }
    // Per-group push timestamps of both nodes are pushed series.
    let push_time = family(&families, "push_time_seconds");
    assert_eq!(
        push_time.samples.len(),
        6,
        "5 groups on node-a + nodeb (dup kept once)"
    );
    assert!(families
        .iter()
        .any(|f| f.name == "push_failure_time_seconds"));

    // Every pushed sample of node-a (which wins every clash) survives, across all metric types.
    let pushed_a: BTreeSet<SampleView> = sample_views(&parse_text(NODE_A_METRICS).unwrap())
        .into_iter()
        .filter(|(_, labels, _)| {
            labels
                .iter()
                .any(|(name, value)| name == "job" && !value.is_empty())
        })
        .collect();
    let output = sample_views(&families);
    assert_eq!(
        output.iter().filter(|v| pushed_a.contains(v)).count(),
        pushed_a.len()
    );
    for metric_type in [
        MetricType::Counter,
        MetricType::Gauge,
        MetricType::Histogram,
        MetricType::Summary,
        MetricType::Untyped,
    ] {
        assert!(
            families.iter().any(|f| f.metric_type == metric_type),
            "no {metric_type:?} family survived"
        );
    }

    // Only clashes between pushed families are reported: none about go_*, process_*, ...
    assert!(!merged.conflicts.is_empty());
    for conflict in &merged.conflicts {
        let text = conflict.to_string();
        assert!(
            !text.contains("go_") && !text.contains("process_") && !text.contains("pushgateway_"),
            "self-metric conflict reported: {text}"
        );
    }
    let kinds: BTreeSet<&str> = merged.conflicts.iter().map(Conflict::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["duplicate_series", "help_mismatch", "type_mismatch"])
    );
}

#[test]
fn merge_pushed_drops_series_without_job_but_keeps_their_pushed_neighbours() {
    // The node's own go_goroutines (no job) and a pushed family of the same name must not clash.
    let a = "# HELP up_since Own metric.\n# TYPE up_since gauge\nup_since 5\n\
             # HELP shared Pushed.\n# TYPE shared gauge\nshared{job=\"j\",path=\"a\\\\b\\\"c\"} 1\nshared 9\n";
    let b = "# HELP up_since Other HELP on another node.\n# TYPE up_since counter\nup_since 7\n\
             # HELP shared Pushed.\n# TYPE shared gauge\nshared{job=\"k\",instance=\"\"} 2\n";
    let merged = merge_pushed(&[("a", a), ("b", b)]);
    assert_eq!(
        merged.text,
        "# HELP shared Pushed.\n# TYPE shared gauge\nshared{job=\"j\",path=\"a\\\\b\\\"c\"} 1\nshared{job=\"k\",instance=\"\"} 2\n"
    );
    assert_eq!(merged.conflicts, Vec::new());
    let families = parse_text(a).unwrap();
    assert!(!is_pushed_sample(&families[0].samples[0]));
    assert!(is_pushed_sample(&families[1].samples[0]));
}

// ---------------------------------------------------------------- /api/v1/metrics

fn group<'g>(groups: &'g [Group], job: &str) -> &'g Group {
    match groups
        .iter()
        .find(|g| g.labels.get("job").map(String::as_str) == Some(job))
    {
        Some(found) => found,
        None => panic!("group {job} missing"),
    }
}

/// `parse_api_metrics` renders every group's body.
fn rendered_body(group: &Group) -> &str {
    group
        .body
        .as_deref()
        .expect("parse_api_metrics renders every body")
}

#[test]
fn api_json_groups_rebuild_exactly_the_series_the_node_exposes() {
    let groups = parse_api_metrics(NODE_A_API.as_bytes()).unwrap();
    assert_eq!(groups.len(), 5);
    let exposed = parse_text(NODE_A_METRICS).unwrap();
    for group in &groups {
        let body = parse_text(rendered_body(group)).unwrap();
        // The body holds the same samples, values and labels that node's /metrics shows
        // for this group, minus the two per-group push-time series.
        let expected: BTreeSet<SampleView> = sample_views(&exposed)
            .into_iter()
            .filter(|(name, labels, _)| {
                name != "push_time_seconds"
                    && name != "push_failure_time_seconds"
                    && group
                        .labels
                        .iter()
                        .all(|(k, v)| labels.contains(&(k.clone(), v.clone())))
                    && labels.iter().any(|(k, _)| k == "job")
            })
            .collect();
        assert_eq!(sample_views(&body), expected, "group {:?}", group.labels);
        // HELP and TYPE match too.
        for family in &body {
            let exposed_family = exposed.iter().find(|f| f.name == family.name).unwrap();
            assert_eq!(family.metric_type, exposed_family.metric_type);
        }
    }

    let batch = group(&groups, "batch");
    assert!(batch.last_push_successful);
    assert_eq!(batch.push_time_seconds, Some(1.795691061205681e9));
    assert_eq!(batch.push_failure_time_seconds, Some(0.0));
    assert!(
        !rendered_body(batch).contains("push_time_seconds")
            && !rendered_body(batch).contains("push_failure_time_seconds")
    );
    assert!(rendered_body(batch).contains(
        "# HELP requests_total Total requests.\\nSecond line with a backslash \\\\ here.\n# TYPE requests_total counter\n"
    ));
    assert!(rendered_body(batch).contains(
        "latency_seconds_bucket{instance=\"host1\",job=\"batch\",le=\"0.1\"} 2\n\
         latency_seconds_bucket{instance=\"host1\",job=\"batch\",le=\"0.5\"} 5\n\
         latency_seconds_bucket{instance=\"host1\",job=\"batch\",le=\"1\"} 7\n\
         latency_seconds_bucket{instance=\"host1\",job=\"batch\",le=\"+Inf\"} 8\n\
         latency_seconds_sum{instance=\"host1\",job=\"batch\"} 3.141592653589793\n\
         latency_seconds_count{instance=\"host1\",job=\"batch\"} 8\n"
    ));
    assert!(rendered_body(batch).contains("rpc_duration_seconds{instance=\"host1\",job=\"batch\",service=\"x\",quantile=\"0.99\"} NaN\n"));
    assert!(
        rendered_body(batch).contains("path=\"line\\nbreak\\\\slash\"} 1.2345678901234567e+19\n")
    );
    assert!(rendered_body(batch).contains("# TYPE no_type_line untyped\n"));

    let failed = group(&groups, "typeclash");
    assert!(!failed.last_push_successful);
    assert_eq!(failed.push_time_seconds, Some(0.0));
    assert_eq!(rendered_body(failed), "");
    assert_eq!(
        group(&groups, "with/slash")
            .labels
            .get("region")
            .map(String::as_str),
        Some("eu west")
    );
}

fn one_group_json(families: &str) -> String {
    format!(
        r#"{{"status":"success","data":[{{"labels":{{"job":"j"}},"last_push_successful":true,{families}}}]}}"#
    )
}

#[test]
fn api_json_histogram_without_inf_bucket_gets_one_and_buckets_sort_numerically() {
    let json = one_group_json(
        r#""h":{"time_stamp":"t","type":"HISTOGRAM","help":"H.","metrics":[{"labels":{"job":"j","v":"a\"b"},
            "buckets":{"10":"4","2":"3","0.5":"1"},"count":"5","sum":"1e-3"}]}"#,
    );
    let groups = parse_api_metrics(json.as_bytes()).unwrap();
    assert_eq!(
        rendered_body(&groups[0]),
        "# HELP h H.\n# TYPE h histogram\n\
         h_bucket{job=\"j\",v=\"a\\\"b\",le=\"0.5\"} 1\n\
         h_bucket{job=\"j\",v=\"a\\\"b\",le=\"2\"} 3\n\
         h_bucket{job=\"j\",v=\"a\\\"b\",le=\"10\"} 4\n\
         h_bucket{job=\"j\",v=\"a\\\"b\",le=\"+Inf\"} 5\n\
         h_sum{job=\"j\",v=\"a\\\"b\"} 1e-3\n\
         h_count{job=\"j\",v=\"a\\\"b\"} 5\n"
    );
    assert_eq!(groups[0].push_time_seconds, None);
    assert!(parse_text(rendered_body(&groups[0])).is_ok());
}

#[test]
fn api_json_rejects_values_that_are_not_numbers_and_names_the_input() {
    let cases = [
        (
            r#""c":{"type":"COUNTER","metrics":[{"labels":{},"value":"1\n# injected"}]}"#,
            "value",
        ),
        (
            r#""c":{"type":"COUNTER","metrics":[{"labels":{"bad-name":"x"},"value":"1"}]}"#,
            "bad-name",
        ),
        (
            r#""c":{"type":"GAUGE_HISTOGRAM","metrics":[]}"#,
            "GAUGE_HISTOGRAM",
        ),
        (r#""c d":{"type":"GAUGE","metrics":[]}"#, "c d"),
        (
            r#""s":{"type":"SUMMARY","metrics":[{"labels":{},"quantiles":{},"sum":"1"}]}"#,
            "count",
        ),
        (
            r#""h":{"type":"HISTOGRAM","metrics":[{"labels":{"le":"1"},"buckets":{},"count":"1","sum":"1"}]}"#,
            "reserved label \"le\"",
        ),
    ];
    for (families, named) in cases {
        let error = parse_api_metrics(one_group_json(families).as_bytes()).expect_err(families);
        let message = error.to_string();
        assert!(
            message.contains(named) && message.contains("{job=\"j\"}"),
            "{message}"
        );
    }
    assert!(matches!(
        parse_api_metrics(br#"{"status":"error","data":[]}"#),
        Err(ApiMetricsError::Status(s)) if s == "error"
    ));
    assert!(matches!(
        parse_api_metrics(b"not json"),
        Err(ApiMetricsError::Json(_))
    ));
}

#[test]
fn the_rebalancers_moved_marker_is_read_and_left_out_of_the_body_and_renders_back() {
    let json = one_group_json(
        r#""x":{"type":"GAUGE","metrics":[{"labels":{"job":"j"},"value":"1"}]},
           "dynamic_sharding_group_moved":{"type":"GAUGE","metrics":[
             {"labels":{"job":"j","time":"last_push"},"value":"1700000000.5"},
             {"labels":{"job":"j","time":"move"},"value":"1700000100"}]}"#,
    );
    let groups = parse_api_metrics(json.as_bytes()).unwrap();
    let marker = MovedMarker {
        last_push: 1_700_000_000.5,
        moved_at: 1_700_000_100.0,
    };
    assert_eq!(groups[0].moved, Some(marker));
    assert!(!rendered_body(&groups[0]).contains("dynamic_sharding_group_moved"));
    // What a copy appends parses as the text format and reads back the same.
    let rendered = marker.render();
    let families = parse_text(&rendered).unwrap();
    assert_eq!(families.len(), 1);
    assert!(rendered.contains("dynamic_sharding_group_moved{time=\"last_push\"} 1700000000.5\n"));
    let unmoved =
        parse_api_metrics(one_group_json(r#""x":{"type":"GAUGE","metrics":[]}"#).as_bytes())
            .unwrap();
    assert_eq!(unmoved[0].moved, None);
}

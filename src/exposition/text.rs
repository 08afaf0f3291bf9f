//! The Prometheus text exposition format, version 0.0.4: a zero-copy parser and a renderer.
//!
//! Parsed families borrow from the input: names, label values, HELP text and sample values
//! are slices of it, kept in their escaped form. Escaping in this format is a bijection (a
//! label value may only contain the escapes `\\`, `\"` and `\n`, a HELP text only `\\` and
//! `\n`), so two escaped slices are equal exactly when the values are, and rendering writes
//! them back unchanged. This keeps the merge of ~10 MB of expositions free of per-sample
//! allocations. Family assignment follows the Go `expfmt.TextParser` the Pushgateway uses:
//! a sample belongs to the family of its exact name, else to a summary (`_sum`, `_count`) or
//! histogram (`_bucket`, `_sum`, `_count`) family of its base name, else to a new untyped
//! family.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// The metric types of format 0.0.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    /// The word used on a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    /// Parses the word of a `# TYPE` line.
    pub fn from_type_word(word: &str) -> Option<MetricType> {
        match word {
            "counter" => Some(MetricType::Counter),
            "gauge" => Some(MetricType::Gauge),
            "histogram" => Some(MetricType::Histogram),
            "summary" => Some(MetricType::Summary),
            "untyped" => Some(MetricType::Untyped),
            _ => None,
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metric family: its HELP, TYPE and every sample line that belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily<'a> {
    pub name: &'a str,
    /// HELP text in its escaped form (see [`unescape_help`]); `None` without a HELP line.
    pub help: Option<&'a str>,
    /// `Untyped` when the family has no TYPE line.
    pub metric_type: MetricType,
    pub samples: Vec<Sample<'a>>,
}

/// One sample line. `name` includes any `_bucket`/`_sum`/`_count` suffix.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// The validated text between `{` and `}` (empty without labels).
    labels_text: &'a str,
    /// The value as written; it parses as an `f64` (`NaN`, `+Inf`, `-Inf` included).
    pub value: &'a str,
    /// Milliseconds since the epoch as written; it parses as an `i64`.
    pub timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    /// The sample's labels in the order written.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            rest: self.labels_text,
        }
    }

    /// The value as a number.
    pub fn value_f64(&self) -> f64 {
        // Validated when parsed; NaN is unreachable but keeps this total.
        self.value.parse().unwrap_or(f64::NAN)
    }
}

/// One label pair; the value is kept escaped (see [`unescape_label_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label<'a> {
    pub name: &'a str,
    pub escaped_value: &'a str,
}

impl<'a> Label<'a> {
    /// The label value with escapes resolved.
    pub fn value(&self) -> Cow<'a, str> {
        unescape_label_value(self.escaped_value)
    }
}

/// Iterator over the labels of a [`Sample`]. The text was validated by the parser, so this
/// only splits it.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = Label<'a>;

    fn next(&mut self) -> Option<Label<'a>> {
        let text = self.rest.trim_start_matches([' ', '\t', ',']);
        let eq = text.find('=')?;
        let name = text[..eq].trim_end_matches([' ', '\t']);
        let after_eq = &text[eq + 1..];
        let open = after_eq.find('"')?;
        let value_start = &after_eq[open + 1..];
        let close = closing_quote(value_start)?;
        self.rest = &value_start[close + 1..];
        Some(Label {
            name,
            escaped_value: &value_start[..close],
        })
    }
}

/// Index of the first unescaped `"` in `text`.
fn closing_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Why a line of an exposition was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("invalid metric name {0:?} (it must match [a-zA-Z_:][a-zA-Z0-9_:]*)")]
    InvalidMetricName(String),
    #[error("invalid label name {0:?} (it must match [a-zA-Z_][a-zA-Z0-9_]*)")]
    InvalidLabelName(String),
    #[error("label {0:?} appears twice in one sample; give each label once")]
    DuplicateLabel(String),
    #[error("malformed label set: {0}")]
    MalformedLabels(&'static str),
    #[error("invalid escape sequence {0:?}; only \\\\, \\\" (label values) and \\n are allowed")]
    InvalidEscape(String),
    #[error("sample value {0:?} is not a number (use e.g. 1.5, NaN, +Inf, -Inf)")]
    InvalidValue(String),
    #[error("timestamp {0:?} is not an integer number of milliseconds")]
    InvalidTimestamp(String),
    #[error("unexpected text {0:?} after the timestamp")]
    TrailingText(String),
    #[error("sample line has no value")]
    MissingValue,
    #[error("unknown metric type {0:?} (use counter, gauge, histogram, summary or untyped)")]
    UnknownType(String),
    #[error("second HELP line for metric family {0:?}; give HELP once per family")]
    DuplicateHelp(String),
    #[error("second TYPE line for metric family {0:?}; give TYPE once per family")]
    DuplicateType(String),
    #[error("TYPE line for metric family {0:?} comes after its samples; put it before them")]
    TypeAfterSamples(String),
    #[error("{family} is a {metric_type} but sample {sample:?} lacks the {label:?} label")]
    MissingBucketLabel {
        family: String,
        metric_type: MetricType,
        sample: String,
        label: &'static str,
    },
    #[error("label {label:?} of {sample:?} has value {value:?}, which is not a number")]
    InvalidBucketBound {
        sample: String,
        label: &'static str,
        value: String,
    },
    #[error("histogram {0:?} has a sample without the _bucket, _sum or _count suffix")]
    BareHistogramSample(String),
}

/// A rejected exposition: the 1-based line number, what is wrong, and the line itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exposition line {line}: {kind} (line: {content:?})")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
    /// The offending line, cut to 200 bytes.
    pub content: String,
}

/// Parses a text exposition into its families, in order of first appearance.
pub fn parse_text(text: &str) -> Result<Vec<MetricFamily<'_>>, ParseError> {
    let mut parser = Parser {
        families: Vec::new(),
        index: HashMap::new(),
        family_flags: Vec::new(),
        last_family: None,
        label_names: Vec::new(),
    };
    for (line_index, line) in text.split('\n').enumerate() {
        parser.line(line).map_err(|kind| ParseError {
            line: line_index + 1,
            kind,
            content: truncate(line, 200).to_owned(),
        })?;
    }
    Ok(parser.families)
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[derive(Default, Clone, Copy)]
struct FamilyFlags {
    has_type_line: bool,
}

struct Parser<'a> {
    families: Vec<MetricFamily<'a>>,
    index: HashMap<&'a str, usize>,
    family_flags: Vec<FamilyFlags>,
    /// The family of the previous sample: consecutive samples almost always share it, which
    /// saves a hash lookup per line.
    last_family: Option<usize>,
    /// Reused buffer for the duplicate-label check, to avoid an allocation per sample.
    label_names: Vec<&'a str>,
}

const BLANKS: [char; 2] = [' ', '\t'];
/// Blanks plus the `\r` of a CRLF line end, which sample and TYPE lines tolerate. A HELP
/// text keeps a `\r` (as the Go parser does), so HELP survives a round trip unchanged.
const BLANKS_CR: [char; 3] = [' ', '\t', '\r'];

impl<'a> Parser<'a> {
    fn line(&mut self, line: &'a str) -> Result<(), ParseErrorKind> {
        let line = line.trim_start_matches(BLANKS);
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(comment.trim_start_matches(BLANKS));
        }
        self.sample(line)
    }

    fn family_index(&mut self, name: &'a str) -> usize {
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        let index = self.families.len();
        self.families.push(MetricFamily {
            name,
            help: None,
            metric_type: MetricType::Untyped,
            samples: Vec::new(),
        });
        self.family_flags.push(FamilyFlags::default());
        self.index.insert(name, index);
        index
    }

    fn comment(&mut self, comment: &'a str) -> Result<(), ParseErrorKind> {
        let (keyword, rest) = split_token(comment);
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(()); // An ordinary comment.
        }
        let (name, rest) = split_token(rest.trim_start_matches(BLANKS));
        if !is_valid_metric_name(name) {
            return Err(ParseErrorKind::InvalidMetricName(name.to_owned()));
        }
        let rest = rest.trim_start_matches(BLANKS);
        let index = self.family_index(name);
        if keyword == "HELP" {
            validate_escapes(rest, false)?;
            let family = &mut self.families[index];
            if family.help.is_some() {
                return Err(ParseErrorKind::DuplicateHelp(name.to_owned()));
            }
            family.help = Some(rest);
            return Ok(());
        }
        let word = rest.trim_end_matches(BLANKS_CR);
        let metric_type = MetricType::from_type_word(word)
            .ok_or_else(|| ParseErrorKind::UnknownType(word.to_owned()))?;
        if self.family_flags[index].has_type_line {
            return Err(ParseErrorKind::DuplicateType(name.to_owned()));
        }
        let family = &mut self.families[index];
        if !family.samples.is_empty() {
            return Err(ParseErrorKind::TypeAfterSamples(name.to_owned()));
        }
        family.metric_type = metric_type;
        self.family_flags[index].has_type_line = true;
        Ok(())
    }

    /// The family a sample name belongs to, the way `expfmt.TextParser` decides it.
    fn family_for_sample(&mut self, name: &'a str) -> usize {
        if let Some(last) = self.last_family {
            let family = &self.families[last];
            if family.name == name
                || (matches!(
                    family.metric_type,
                    MetricType::Histogram | MetricType::Summary
                ) && self.index.get(name).is_none_or(|&exact| exact == last)
                    && is_series_of(family, name))
            {
                return last;
            }
        }
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        for (suffix, types) in [
            ("_bucket", &[MetricType::Histogram][..]),
            ("_sum", &[MetricType::Summary, MetricType::Histogram][..]),
            ("_count", &[MetricType::Summary, MetricType::Histogram][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some(&index) = self.index.get(base) {
                    if types.contains(&self.families[index].metric_type) {
                        return index;
                    }
                }
            }
        }
        self.family_index(name)
    }

    fn sample(&mut self, line: &'a str) -> Result<(), ParseErrorKind> {
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_valid_metric_name(name) {
            return Err(ParseErrorKind::InvalidMetricName(name.to_owned()));
        }
        let mut rest = line[name_end..].trim_start_matches(BLANKS);
        let mut labels_text = "";
        if let Some(after_brace) = rest.strip_prefix('{') {
            let labels_len = scan_labels(after_brace, &mut self.label_names)?;
            labels_text = &after_brace[..labels_len];
            rest = &after_brace[labels_len + 1..];
        }
        let rest = rest.trim_start_matches(BLANKS);
        let (value, rest) = split_token(rest);
        if value.is_empty() {
            return Err(ParseErrorKind::MissingValue);
        }
        if value.parse::<f64>().is_err() {
            return Err(ParseErrorKind::InvalidValue(value.to_owned()));
        }
        let (timestamp, rest) = split_token(rest.trim_start_matches(BLANKS));
        let timestamp = if timestamp.is_empty() {
            None
        } else if timestamp.parse::<i64>().is_ok() {
            Some(timestamp)
        } else {
            return Err(ParseErrorKind::InvalidTimestamp(timestamp.to_owned()));
        };
        let trailing = rest.trim_matches(BLANKS_CR);
        if !trailing.is_empty() {
            return Err(ParseErrorKind::TrailingText(trailing.to_owned()));
        }
        let sample = Sample {
            name,
            labels_text,
            value,
            timestamp,
        };
        let index = self.family_for_sample(name);
        self.last_family = Some(index);
        let family = &mut self.families[index];
        check_bucket_label(family, &sample)?;
        family.samples.push(sample);
        Ok(())
    }
}

/// Whether `name` is one of the suffixed series of a histogram or summary `family`.
fn is_series_of(family: &MetricFamily<'_>, name: &str) -> bool {
    let Some(suffix) = name.strip_prefix(family.name) else {
        return false;
    };
    match family.metric_type {
        MetricType::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count"),
        MetricType::Summary => matches!(suffix, "_sum" | "_count"),
        _ => false,
    }
}

/// Histogram buckets need a numeric `le`, summary quantiles a numeric `quantile`.
fn check_bucket_label(
    family: &MetricFamily<'_>,
    sample: &Sample<'_>,
) -> Result<(), ParseErrorKind> {
    let label = match family.metric_type {
        MetricType::Histogram if sample.name.len() == family.name.len() => {
            return Err(ParseErrorKind::BareHistogramSample(family.name.to_owned()));
        }
        MetricType::Histogram if sample.name.ends_with("_bucket") => "le",
        MetricType::Summary if sample.name.len() == family.name.len() => "quantile",
        _ => return Ok(()),
    };
    let Some(found) = sample.labels().find(|l| l.name == label) else {
        return Err(ParseErrorKind::MissingBucketLabel {
            family: family.name.to_owned(),
            metric_type: family.metric_type,
            sample: sample.name.to_owned(),
            label,
        });
    };
    if found.escaped_value.parse::<f64>().is_err() {
        return Err(ParseErrorKind::InvalidBucketBound {
            sample: sample.name.to_owned(),
            label,
            value: found.escaped_value.to_owned(),
        });
    }
    Ok(())
}

/// Validates the label set after `{`; returns the offset of the closing `}`.
fn scan_labels<'a>(text: &'a str, names: &mut Vec<&'a str>) -> Result<usize, ParseErrorKind> {
    let bytes = text.as_bytes();
    names.clear();
    let mut i = 0;
    let skip_blanks = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_blanks(&mut i);
        match bytes.get(i) {
            None => return Err(ParseErrorKind::MalformedLabels("missing closing '}'")),
            Some(b'}') => return Ok(i),
            Some(_) => {}
        }
        let name_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let name = &text[name_start..i];
        if !is_valid_label_name(name) {
            let end = text[name_start..]
                .find(['=', ',', '}'])
                .map_or(text.len(), |offset| name_start + offset);
            return Err(ParseErrorKind::InvalidLabelName(
                text[name_start..end].trim_end().to_owned(),
            ));
        }
        if names.contains(&name) {
            return Err(ParseErrorKind::DuplicateLabel(name.to_owned()));
        }
        names.push(name);
        skip_blanks(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(ParseErrorKind::MalformedLabels(
                "expected '=' after a label name",
            ));
        }
        i += 1;
        skip_blanks(&mut i);
        if bytes.get(i) != Some(&b'"') {
            return Err(ParseErrorKind::MalformedLabels(
                "expected '\"' to open a label value",
            ));
        }
        i += 1;
        let value_start = i;
        let close = closing_quote(&text[value_start..])
            .ok_or(ParseErrorKind::MalformedLabels("unterminated label value"))?;
        validate_escapes(&text[value_start..value_start + close], true)?;
        i = value_start + close + 1;
        skip_blanks(&mut i);
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            _ => {
                return Err(ParseErrorKind::MalformedLabels(
                    "expected ',' or '}' after a label value",
                ))
            }
        }
    }
}

/// Splits off the leading run of characters other than blanks and `\r`.
fn split_token(text: &str) -> (&str, &str) {
    let end = text.find(BLANKS_CR).unwrap_or(text.len());
    (&text[..end], &text[end..])
}

fn validate_escapes(text: &str, is_label_value: bool) -> Result<(), ParseErrorKind> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            match bytes.get(i + 1) {
                Some(b'\\') | Some(b'n') => {}
                Some(b'"') if is_label_value => {}
                _ => {
                    let end = (i + 2).min(text.len());
                    let end = (end..=text.len())
                        .find(|&e| text.is_char_boundary(e))
                        .unwrap_or(text.len());
                    return Err(ParseErrorKind::InvalidEscape(text[i..end].to_owned()));
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Resolves `\\`, `\"` and `\n` in an escaped label value.
pub fn unescape_label_value(escaped: &str) -> Cow<'_, str> {
    unescape(escaped)
}

/// Resolves `\\` and `\n` in an escaped HELP text.
pub fn unescape_help(escaped: &str) -> Cow<'_, str> {
    unescape(escaped)
}

/// Appends `value` escaped for use between the quotes of a label value.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

/// Appends `help` escaped for a `# HELP` line.
pub fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

/// Appends the `# HELP` (when present) and `# TYPE` lines of a family.
pub fn render_header(
    name: &str,
    escaped_help: Option<&str>,
    metric_type: MetricType,
    out: &mut String,
) {
    if let Some(help) = escaped_help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(help);
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(metric_type.as_str());
    out.push('\n');
}

/// Appends one sample line in canonical form (`name{a="x",b="y"} value [timestamp]`).
pub fn render_sample(sample: &Sample<'_>, out: &mut String) {
    out.push_str(sample.name);
    let mut labels = sample.labels().peekable();
    if labels.peek().is_some() {
        out.push('{');
        for (position, label) in labels.enumerate() {
            if position > 0 {
                out.push(',');
            }
            out.push_str(label.name);
            out.push_str("=\"");
            out.push_str(label.escaped_value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(sample.value);
    if let Some(timestamp) = sample.timestamp {
        out.push(' ');
        out.push_str(timestamp);
    }
    out.push('\n');
}

/// Appends a whole family; a TYPE line is always written, so the result is self-describing.
pub fn render_family(family: &MetricFamily<'_>, out: &mut String) {
    render_header(family.name, family.help, family.metric_type, out);
    for sample in &family.samples {
        render_sample(sample, out);
    }
}

/// Renders families as one exposition.
pub fn render(families: &[MetricFamily<'_>]) -> String {
    let mut out = String::new();
    for family in families {
        render_family(family, &mut out);
    }
    out
}

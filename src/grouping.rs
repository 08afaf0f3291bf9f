//! Pushgateway grouping keys: parsing push paths exactly as Pushgateway 1.5.1 does, and a canonical form.
//!
//! Pure logic, no I/O. A push path goes through the same stages as in the Go program, and each stage has
//! its own error so the gateway can answer with the status the Pushgateway would have used:
//!
//! 1. Go's `net/url` percent-decodes the whole path (`%2F` becomes a separator, `%6Aob` is `job`; raw
//!    control characters and bad escapes are a plain `400 Bad Request` from the Go server).
//! 2. Go's `http.ServeMux` answers `301` to the cleaned path when the *decoded* path has an empty, `.` or `..`
//!    segment ([`GroupingKeyError::NonCanonicalPath`]), whatever the path and the method.
//! 3. `httprouter` matches `/metrics/job/:job/*labels` (or `/metrics/job@base64/...`) on the decoded path
//!    ([`match_push_path`]); for `PUT`, `POST` and `DELETE`, a wrong letter case in that static prefix gets a
//!    `307` to the fixed path ([`GroupingKeyError::WrongCase`]); other methods have no such route (404).
//! 4. The handler ([`PushRoute::grouping_key`]) decodes a base64 job, splits the labels (`splitLabels`, the
//!    last of a repeated label winning), then rejects an empty job. Values are bytes until here: only the
//!    final key's values must be UTF-8, and only for a push ([`NonUtf8`]).
//!
//! Where we deliberately differ from the Pushgateway (observed against the real 1.5.1 binary):
//! - `/metrics/job/` and `/metrics/job@base64/` are a clear `400 empty job name` (the Pushgateway answers
//!   307 -> 404, or 404).
//! - A push whose key has a value that is not UTF-8 after decoding (`%FF`, or base64 of non-UTF-8 bytes) is
//!   a `400` here. The Pushgateway also answers 400, but still creates the group; from then on its
//!   `/metrics` answers 500 and every later push to any group on that instance fails, so such a push must
//!   never be forwarded. A `DELETE` of such a key harms nothing and is forwarded ([`NonUtf8::Replace`]).
//! - A base64 job name that does not decode is a `400` in both, but Pushgateway 1.5.1 returns without
//!   unlocking its handler mutex: every later request to that route (e.g. all `PUT /metrics/job@base64/...`)
//!   hangs forever. Another reason to reject before forwarding.
//! - An empty label value is an absent label ([`GroupingKey::canonical`], [`without_empty_labels`]): the
//!   Pushgateway keeps `{job="j"}` and `{job="j",a=""}` as two groups, and holding both breaks it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::ops::{Bound, Range};

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The static route prefix of every push path.
const PUSH_PREFIX: &str = "/metrics/job";
/// A label name (or the `job` route segment) with this suffix carries its value in URL-safe base64.
const BASE64_SUFFIX: &str = "@base64";
const JOB_LABEL: &str = "job";

/// Characters that `to_push_path` leaves unescaped in a plain value: RFC 3986 unreserved characters, so the
/// output never depends on how lenient a server's path parser is.
const PATH_VALUE_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A parsed grouping key: the job plus other labels, decoded. Identity is the set of label pairs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupingKey {
    job: String,
    /// Every grouping label except `job`.
    labels: BTreeMap<String, String>,
}

/// Why a push path or label set is not a valid grouping key. [`Self::http_status`] is the status the
/// Pushgateway would answer (or a clearer one, see the module documentation).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GroupingKeyError {
    #[error(
        "path {path:?} is not a push path: expected /metrics/job/<job>{{/<label>/<value>}} \
         or /metrics/job@base64/<job in URL-safe base64>{{/<label>/<value>}}"
    )]
    NotAPushPath { path: String },

    #[error(
        "invalid percent-encoding at byte {offset} of path {path:?}: '%' must be followed by two hex \
         digits (write a literal '%' as %25)"
    )]
    InvalidPercentEncoding { path: String, offset: usize },

    #[error("control character at byte {offset} of path {path:?}: percent-encode it (e.g. %0A)")]
    ControlCharacterInPath { path: String, offset: usize },

    #[error(
        "the value of label {label} in path {path:?} is not valid UTF-8 once percent-decoded: grouping \
         label values must be UTF-8 text"
    )]
    ValueNotUtf8 { label: String, path: String },

    #[error(
        "path {path:?} has an empty, '.' or '..' segment once percent-decoded; the Pushgateway redirects \
         it to {location:?}; send an empty, '.' or '/'-containing value as <label>@base64/<value in \
         URL-safe base64> ('=' for empty)"
    )]
    NonCanonicalPath { path: String, location: String },

    #[error(
        "path {path:?} has the wrong letter case; the Pushgateway redirects it to {location:?}"
    )]
    WrongCase { path: String, location: String },

    #[error(
        "empty job name: push to /metrics/job/<job>, or /metrics/job@base64/<job in URL-safe base64>"
    )]
    EmptyJob,

    /// Same text as the Pushgateway's.
    #[error("odd number of components in label string {}", go_quote(.labels))]
    OddComponents { labels: String },

    /// Same text as the Pushgateway's. Names must match `[a-zA-Z_][a-zA-Z0-9_]*` and not start with `__`.
    #[error("improper label name {}", go_quote(.name))]
    ImproperLabelName { name: String },

    #[error(
        "invalid base64 encoding for label {label}={}: illegal base64 data at input byte {offset} \
         (use the URL-safe alphabet of RFC 4648 section 5: A-Z a-z 0-9 - _, padding optional)",
        go_quote(.value)
    )]
    InvalidBase64 {
        label: String,
        value: String,
        offset: usize,
    },

    #[error(
        "base64 value for label {label}={} does not decode to UTF-8 text; label values must be UTF-8",
        go_quote(.value)
    )]
    Base64NotUtf8 { label: String, value: String },

    #[error("grouping labels {labels} have no \"job\" label; every group needs one")]
    MissingJob { labels: String },
}

impl GroupingKeyError {
    /// The HTTP status to answer with: 301/307 for the router's redirects, 404 for paths that are not
    /// push paths, 400 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NonCanonicalPath { .. } => 301,
            // httprouter uses 307 for every method but GET; pushes are PUT, POST or DELETE.
            Self::WrongCase { .. } => 307,
            Self::NotAPushPath { .. } => 404,
            _ => 400,
        }
    }

    /// The `Location` of a redirect (percent-encoded like Go's `url.URL.String`); the caller appends the
    /// request's `?query`, as Go does.
    pub fn redirect_location(&self) -> Option<&str> {
        match self {
            Self::NonCanonicalPath { location, .. } | Self::WrongCase { location, .. } => {
                Some(location)
            }
            _ => None,
        }
    }
}

/// Parse the raw request path (exactly as received: percent-encoded, no query string), which starts with
/// `/metrics/job`. Returns the key, or an error that maps to the Pushgateway's HTTP status.
pub fn parse_push_path(raw_path: &str) -> Result<GroupingKey, GroupingKeyError> {
    match_push_path(raw_path)?.grouping_key(NonUtf8::Reject)
}

/// `raw_path`, which [`parse_push_path`] parsed as `key`, without the label pairs whose (last) value is empty,
/// every other byte as received (percent-encoding, `@base64` spelling, label order); `None` when `key` has no
/// empty value, so such a path is never rebuilt. The result parses as `key.canonical()`.
///
/// Forwarding both `{job="j"}` and `{job="j",a=""}` to one Pushgateway breaks it (see
/// [`GroupingKey::has_empty_label_value`]); with this rewrite they are one group. Pairs named `job` stay: the
/// route's job overrides them and the Pushgateway ignores them.
pub fn without_empty_labels(raw_path: &str, key: &GroupingKey) -> Option<String> {
    if !key.has_empty_label_value() {
        return None;
    }
    // The path parsed, so this cannot fail; should it ever, the canonical path is still the same group.
    Some(strip_empty_pairs(raw_path, key).unwrap_or_else(|| key.clone().canonical().to_push_path()))
}

fn strip_empty_pairs(raw_path: &str, key: &GroupingKey) -> Option<String> {
    let decoded = percent_decode_path(raw_path).ok()?;
    let names: Vec<&[u8]> = decoded.get(1..)?.split(|b| *b == b'/').collect();
    let segments = raw_segments(raw_path);
    // Segments: `metrics`, `job` (or `job@base64`), the job, then name/value pairs.
    if names.len() != segments.len()
        || segments.len() < 3
        || !(segments.len() - 3).is_multiple_of(2)
    {
        return None;
    }
    let mut path = String::with_capacity(raw_path.len());
    path.push_str(raw_path.get(..segments[2].end)?);
    for pair in (3..segments.len()).step_by(2) {
        let name = std::str::from_utf8(names[pair]).ok()?;
        let name = name.strip_suffix(BASE64_SUFFIX).unwrap_or(name);
        let value_is_empty =
            name != JOB_LABEL && key.labels.get(name).is_some_and(String::is_empty);
        if !value_is_empty {
            path.push_str(raw_path.get(segments[pair].separator..segments[pair + 1].end)?);
        }
    }
    Some(path)
}

/// One segment of a raw path: its separator before it (`/`, or `%2F` which decodes to one) and its bytes.
struct RawSegment {
    separator: usize,
    end: usize,
}

/// The segments of a raw path as they fall once decoded: split at `/` and at `%2F` / `%2f`.
fn raw_segments(raw_path: &str) -> Vec<RawSegment> {
    let bytes = raw_path.as_bytes();
    let mut segments = Vec::new();
    let mut separator = 0;
    let mut index = 1;
    while index < bytes.len() {
        let separator_len = match bytes[index] {
            b'/' => 1,
            b'%' if bytes.get(index + 1) == Some(&b'2')
                && matches!(bytes.get(index + 2), Some(b'F' | b'f')) =>
            {
                3
            }
            _ => 0,
        };
        if separator_len == 0 {
            index += 1;
            continue;
        }
        segments.push(RawSegment {
            separator,
            end: index,
        });
        separator = index;
        index += separator_len;
    }
    segments.push(RawSegment {
        separator,
        end: bytes.len(),
    });
    segments
}

impl GroupingKey {
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The grouping labels other than `job`, sorted by name.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Build a key from a complete label set, e.g. the `labels` of a group in `/api/v1/metrics`.
    pub fn from_labels(mut all: BTreeMap<String, String>) -> Result<Self, GroupingKeyError> {
        let Some(job) = all.remove(JOB_LABEL) else {
            return Err(GroupingKeyError::MissingJob {
                labels: format_label_set(all.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            });
        };
        if job.is_empty() {
            return Err(GroupingKeyError::EmptyJob);
        }
        if let Some(bad) = all.keys().find(|name| !is_valid_label_name(name)) {
            return Err(GroupingKeyError::ImproperLabelName { name: bad.clone() });
        }
        Ok(Self { job, labels: all })
    }

    /// Every grouping label, `job` included, sorted by name.
    pub fn all_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        let before_job = self
            .labels
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(JOB_LABEL)));
        let after_job = self
            .labels
            .range::<str, _>((Bound::Excluded(JOB_LABEL), Bound::Unbounded));
        fn as_strs<'a>((name, value): (&'a String, &'a String)) -> (&'a str, &'a str) {
            (name, value)
        }
        before_job
            .map(as_strs)
            .chain(std::iter::once((JOB_LABEL, self.job.as_str())))
            .chain(after_job.map(as_strs))
    }

    /// True when some label has an empty value. Prometheus treats `{a=""}` like an absent `a`, but the
    /// Pushgateway keeps them as two groups whose `push_time_seconds` collide, which breaks that instance
    /// (every later push 400, `/metrics` 500): the gateway forwards only the [`Self::canonical`] form.
    pub fn has_empty_label_value(&self) -> bool {
        self.labels.values().any(String::is_empty)
    }

    /// The same group as Prometheus sees it: every empty-valued label dropped (the job is never empty).
    pub fn canonical(mut self) -> Self {
        if self.has_empty_label_value() {
            self.labels.retain(|_, value| !value.is_empty());
        }
        self
    }

    /// Unambiguous canonical bytes for hashing; see [`Self::write_ring_key`].
    pub fn ring_key(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write_ring_key(&mut buf);
        buf
    }

    /// Append the canonical bytes to `buf` (cleared first), reusing its allocation.
    ///
    /// Format (fixed; changing it moves every group): for each label with a non-empty value, `job` included,
    /// sorted by name: `LEB128(len(name)) name LEB128(len(value)) value`. Length prefixes make it injective
    /// on canonical keys: no two distinct [`Self::canonical`] forms give the same bytes, however their bytes
    /// are split between names and values. Empty values are left out because `{a=""}` and an absent `a` are
    /// one series in Prometheus, so both spellings of a group must have one owner.
    pub fn write_ring_key(&self, buf: &mut Vec<u8>) {
        buf.clear();
        let payload: usize = self.all_labels().map(|(n, v)| n.len() + v.len()).sum();
        buf.reserve(payload + 4 * (self.labels.len() + 1));
        for (name, value) in self.all_labels().filter(|(_, value)| !value.is_empty()) {
            write_length_prefixed(buf, name.as_bytes());
            write_length_prefixed(buf, value.as_bytes());
        }
    }

    /// A canonical push path the Pushgateway accepts for exactly this group: the job, then the labels
    /// sorted by name. Values that are empty, `.`, `..` or contain `/` use `<name>@base64/<URL-safe
    /// base64>` (`=` for empty); other values are percent-encoded outside the unreserved characters.
    pub fn to_push_path(&self) -> String {
        let payload: usize = self.all_labels().map(|(n, v)| n.len() + v.len()).sum();
        let mut path = String::with_capacity(PUSH_PREFIX.len() + 2 * payload + 16);
        path.push_str(PUSH_PREFIX);
        push_path_value(&mut path, &self.job);
        for (name, value) in &self.labels {
            path.push('/');
            path.push_str(name);
            push_path_value(&mut path, value);
        }
        path
    }
}

impl fmt::Display for GroupingKey {
    /// `{job="j",a="x"}`: job first, then the other labels sorted, values escaped as in Prometheus.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rest = self.labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        write_label_set(
            f,
            std::iter::once((JOB_LABEL, self.job.as_str())).chain(rest),
        )
    }
}

/// Append the value part after a name already in `path` (or after `/metrics/job` for the job): either
/// `/<percent-encoded value>` or `@base64/<value>`.
fn push_path_value(path: &mut String, value: &str) {
    let needs_base64 = value.is_empty() || value == "." || value == ".." || value.contains('/');
    if needs_base64 {
        path.push_str(BASE64_SUFFIX);
        path.push('/');
        if value.is_empty() {
            path.push('=');
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(value, path);
        }
    } else {
        path.push('/');
        // Writing into a String cannot fail.
        let _ = write!(
            path,
            "{}",
            percent_encoding::utf8_percent_encode(value, PATH_VALUE_ESCAPES)
        );
    }
}

fn write_length_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            buf.push(low);
            break;
        }
        buf.push(low | 0x80);
    }
    buf.extend_from_slice(bytes);
}

fn write_label_set<'a>(
    out: &mut impl fmt::Write,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    out.write_char('{')?;
    for (index, (name, value)) in pairs.enumerate() {
        if index > 0 {
            out.write_char(',')?;
        }
        out.write_str(name)?;
        out.write_str("=\"")?;
        for c in value.chars() {
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                c => out.write_char(c)?,
            }
        }
        out.write_char('"')?;
    }
    out.write_char('}')
}

fn format_label_set<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_label_set(&mut out, pairs);
    out
}

/// A path the Pushgateway's router hands to its push and delete handlers: percent-decoded, clean,
/// `/metrics/job/<job>[/<labels>]` or `/metrics/job@base64/<job>[/<labels>]` in the right case, with a
/// non-empty job segment. What those handlers find wrong with it is [`Self::grouping_key`]'s error.
#[derive(Debug)]
pub struct PushRoute<'a> {
    raw_path: &'a str,
    /// Go's `r.URL.Path`: not necessarily UTF-8.
    decoded: Cow<'a, [u8]>,
    job_is_base64: bool,
    /// The job segment in `decoded`; the labels (httprouter's `*labels`: empty or starting with `/`) follow.
    job: Range<usize>,
}

/// What [`PushRoute::grouping_key`] does with a value that is not UTF-8 once decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonUtf8 {
    /// An error ([`GroupingKeyError::ValueNotUtf8`] or [`GroupingKeyError::Base64NotUtf8`]): for pushes,
    /// which break the Pushgateway that stores them.
    Reject,
    /// Invalid bytes become U+FFFD: for a `DELETE`, which the Pushgateway accepts (202) and which harms
    /// nothing. The lossy key only chooses the node the delete goes to.
    Replace,
}

/// The router stage (1-3 in the module documentation) of a raw request path.
pub fn match_push_path(raw_path: &str) -> Result<PushRoute<'_>, GroupingKeyError> {
    let decoded = percent_decode_path(raw_path)?;
    if !is_clean_path(&decoded) {
        return Err(GroupingKeyError::NonCanonicalPath {
            path: raw_path.to_owned(),
            location: go_escape_path(&clean_path(&decoded)),
        });
    }
    let (job_is_base64, job) = match_push_route(&decoded, raw_path)?;
    Ok(PushRoute {
        raw_path,
        decoded,
        job_is_base64,
        job,
    })
}

impl PushRoute<'_> {
    /// The percent-decoded path (Go's `r.URL.Path`), which the go-compatible ring hashes.
    pub fn decoded_path(&self) -> &[u8] {
        &self.decoded
    }

    /// The handler stage: the grouping key, or the error the Pushgateway's handler answers 400 with.
    pub fn grouping_key(&self, non_utf8: NonUtf8) -> Result<GroupingKey, GroupingKeyError> {
        let segment = &self.decoded[self.job.clone()];
        let job = if self.job_is_base64 {
            Cow::Owned(decode_base64_value(JOB_LABEL, segment)?)
        } else {
            Cow::Borrowed(segment)
        };
        // Same order of checks as the Pushgateway: labels before the empty job, and UTF-8 last (it is
        // checked when the push is stored), on the values that won.
        let (mut labels, not_utf8) = split_labels(&self.decoded[self.job.end..])?;
        if job.is_empty() {
            return Err(GroupingKeyError::EmptyJob);
        }
        let job = match String::from_utf8(job.into_owned()) {
            Ok(job) => job,
            Err(error) => self.not_utf8(
                JOB_LABEL,
                error.into_bytes(),
                self.job_is_base64.then_some(segment),
                non_utf8,
            )?,
        };
        for value in not_utf8 {
            let text = self.not_utf8(value.name, value.bytes, value.base64, non_utf8)?;
            labels.insert(value.name.to_owned(), text);
        }
        Ok(GroupingKey { job, labels })
    }

    fn not_utf8(
        &self,
        label: &str,
        bytes: Vec<u8>,
        base64: Option<&[u8]>,
        non_utf8: NonUtf8,
    ) -> Result<String, GroupingKeyError> {
        match (non_utf8, base64) {
            (NonUtf8::Replace, _) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            (NonUtf8::Reject, Some(encoded)) => Err(GroupingKeyError::Base64NotUtf8 {
                label: label.to_owned(),
                value: String::from_utf8_lossy(encoded).into_owned(),
            }),
            (NonUtf8::Reject, None) => Err(GroupingKeyError::ValueNotUtf8 {
                label: label.to_owned(),
                path: self.raw_path.to_owned(),
            }),
        }
    }
}

/// Match `/metrics/job/:job[/*labels]` or `/metrics/job@base64/:job[/*labels]` on a clean decoded path:
/// whether the job is base64, and where its segment is.
fn match_push_route(path: &[u8], raw_path: &str) -> Result<(bool, Range<usize>), GroupingKeyError> {
    let not_a_push_path = || GroupingKeyError::NotAPushPath {
        path: raw_path.to_owned(),
    };
    let after_prefix =
        strip_prefix_ignore_ascii_case(path, PUSH_PREFIX).ok_or_else(not_a_push_path)?;
    let (job_is_base64, after_static) = if let Some(rest) = after_prefix.strip_prefix(b"/") {
        (false, rest)
    } else if let Some(rest) = strip_prefix_ignore_ascii_case(after_prefix, BASE64_SUFFIX)
        .and_then(|rest| rest.strip_prefix(b"/"))
    {
        (true, rest)
    } else {
        // Like the Pushgateway: `/metrics/job` and `/metrics/job@base64` have no route.
        return Err(not_a_push_path());
    };
    // The path is clean, so the job segment can only be empty at the very end (`/metrics/job/`).
    let job_start = path.len() - after_static.len();
    let job_end = after_static
        .iter()
        .position(|b| *b == b'/')
        .map_or(path.len(), |slash| job_start + slash);
    if job_start == job_end {
        return Err(GroupingKeyError::EmptyJob);
    }

    let canonical_static: &[u8] = if job_is_base64 {
        b"/metrics/job@base64/"
    } else {
        b"/metrics/job/"
    };
    if &path[..job_start] != canonical_static {
        // httprouter 1.3's case-insensitive lookup finds `/metrics/job@base64/:job` but not its `/*labels`
        // child: Pushgateway 1.5.1 answers 404 there, even for a lone trailing slash.
        if job_is_base64 && job_end < path.len() {
            return Err(not_a_push_path());
        }
        // httprouter's RedirectFixedPath: the static part is fixed, the parameters keep their case.
        let mut fixed = Vec::with_capacity(path.len());
        fixed.extend_from_slice(canonical_static);
        fixed.extend_from_slice(after_static);
        return Err(GroupingKeyError::WrongCase {
            path: raw_path.to_owned(),
            location: go_escape_path(&fixed),
        });
    }
    Ok((job_is_base64, job_start..job_end))
}

fn strip_prefix_ignore_ascii_case<'a>(text: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &text[prefix.len()..])
}

/// A label whose last value in the path is not UTF-8.
struct NotUtf8Value<'a> {
    name: &'a str,
    bytes: Vec<u8>,
    /// The encoded value, when it came from `<name>@base64`.
    base64: Option<&'a [u8]>,
}

/// The Pushgateway's `splitLabels`: `/name/value/...` into a map, the last duplicate winning. A `job`
/// label here is validated but dropped, because the job from the route overrides it. Labels whose
/// winning value is not UTF-8 are returned apart (nearly always none), for the caller to reject or replace.
fn split_labels(
    labels: &[u8],
) -> Result<(BTreeMap<String, String>, Vec<NotUtf8Value<'_>>), GroupingKeyError> {
    let mut result = BTreeMap::new();
    let mut not_utf8: Vec<NotUtf8Value> = Vec::new();
    // `labels` is empty or starts with '/'; a lone "/" (trailing slash after the job) means no labels.
    if labels.len() <= 1 {
        return Ok((result, not_utf8));
    }
    let components = &labels[1..];
    let separators = components.iter().filter(|b| **b == b'/').count();
    if separators % 2 == 0 {
        return Err(GroupingKeyError::OddComponents {
            labels: String::from_utf8_lossy(labels).into_owned(),
        });
    }
    let mut parts = components.split(|b| *b == b'/');
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let (name, is_base64) = match name.strip_suffix(BASE64_SUFFIX.as_bytes()) {
            Some(trimmed) => (trimmed, true),
            None => (name, false),
        };
        let name = match std::str::from_utf8(name) {
            Ok(name) if is_valid_label_name(name) => name,
            _ => {
                return Err(GroupingKeyError::ImproperLabelName {
                    name: String::from_utf8_lossy(name).into_owned(),
                })
            }
        };
        let decoded = if is_base64 {
            decode_base64_value(name, value)?
        } else {
            value.to_vec()
        };
        if name == JOB_LABEL {
            continue;
        }
        // Only the last value of a label counts, so an earlier non-UTF-8 one is forgotten.
        if !not_utf8.is_empty() {
            not_utf8.retain(|earlier| earlier.name != name);
        }
        match String::from_utf8(decoded) {
            Ok(text) => {
                result.insert(name.to_owned(), text);
            }
            Err(error) => {
                result.remove(name);
                not_utf8.push(NotUtf8Value {
                    name,
                    bytes: error.into_bytes(),
                    base64: is_base64.then_some(value),
                });
            }
        }
    }
    Ok((result, not_utf8))
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
fn is_valid_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    (first.is_ascii_alphabetic() || *first == b'_')
        && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && !name.starts_with("__")
}

fn decode_base64_value(label: &str, encoded: &[u8]) -> Result<Vec<u8>, GroupingKeyError> {
    decode_base64_like_go(encoded).map_err(|offset| GroupingKeyError::InvalidBase64 {
        label: label.to_owned(),
        value: String::from_utf8_lossy(encoded).into_owned(),
        offset,
    })
}

/// Go's `base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))`, as the Pushgateway decodes:
/// trailing `=` are all dropped, `\r` and `\n` are skipped anywhere, unused trailing bits are ignored
/// (`YR` decodes like `YQ`), and the standard alphabet's `+` is rejected. `Err` holds the byte offset of
/// the offending character.
fn decode_base64_like_go(encoded: &[u8]) -> Result<Vec<u8>, usize> {
    let trimmed_len = encoded.len() - encoded.iter().rev().take_while(|b| **b == b'=').count();
    let trimmed = &encoded[..trimmed_len];
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut sextets_in_quantum = 0;
    let mut last_sextet_offset = 0;
    for (offset, &byte) in trimmed.iter().enumerate() {
        if byte == b'\r' || byte == b'\n' {
            continue;
        }
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(offset),
        };
        bits = (bits << 6) | u32::from(sextet);
        sextets_in_quantum += 1;
        last_sextet_offset = offset;
        if sextets_in_quantum == 4 {
            out.extend_from_slice(&[(bits >> 16) as u8, (bits >> 8) as u8, bits as u8]);
            bits = 0;
            sextets_in_quantum = 0;
        }
    }
    match sextets_in_quantum {
        1 => return Err(last_sextet_offset),
        2 => out.push((bits >> 4) as u8),
        3 => out.extend_from_slice(&[(bits >> 10) as u8, (bits >> 2) as u8]),
        _ => {}
    }
    Ok(out)
}

/// Go's request-URI decoding of the path: `%XX` escapes decoded, anything else literal (`+` stays `+`).
/// Borrows when there is nothing to decode.
fn percent_decode_path(raw_path: &str) -> Result<Cow<'_, [u8]>, GroupingKeyError> {
    let bytes = raw_path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(GroupingKeyError::NotAPushPath {
            path: raw_path.to_owned(),
        });
    }
    if let Some(offset) = bytes.iter().position(|b| *b < 0x20 || *b == 0x7f) {
        return Err(GroupingKeyError::ControlCharacterInPath {
            path: raw_path.to_owned(),
            offset,
        });
    }
    let Some(first_percent) = bytes.iter().position(|b| *b == b'%') else {
        return Ok(Cow::Borrowed(bytes));
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    decoded.extend_from_slice(&bytes[..first_percent]);
    let mut index = first_percent;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            decoded.push(byte);
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).and_then(|b| hex_value(*b));
        let low = bytes.get(index + 2).and_then(|b| hex_value(*b));
        let (Some(high), Some(low)) = (high, low) else {
            return Err(GroupingKeyError::InvalidPercentEncoding {
                path: raw_path.to_owned(),
                offset: index,
            });
        };
        decoded.push((high << 4) | low);
        index += 3;
    }
    Ok(Cow::Owned(decoded))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Whether Go's ServeMux would leave the (rooted) path alone: no empty segment except one trailing, no
/// `.` or `..` segment.
fn is_clean_path(path: &[u8]) -> bool {
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        match segment {
            b"." | b".." => return false,
            b"" if !is_last => return false,
            _ => {}
        }
    }
    true
}

/// Go's ServeMux `cleanPath`: `path.Clean` (collapse `//`, drop `.`, resolve `..`, never above the
/// root), keeping a trailing slash.
fn clean_path(path: &[u8]) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = Vec::new();
    for segment in path[1..].split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut cleaned = Vec::with_capacity(path.len());
    for segment in &kept {
        cleaned.push(b'/');
        cleaned.extend_from_slice(segment);
    }
    if kept.is_empty() || path.ends_with(b"/") {
        cleaned.push(b'/');
    }
    cleaned
}

/// Go's `url.URL{Path: p}.String()` for a path: everything but letters, digits and `-_.~$&+,/:;=@` is
/// percent-encoded (upper-case hex).
fn go_escape_path(path: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut escaped = String::with_capacity(path.len() + 8);
    for &byte in path {
        if byte.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&byte) {
            escaped.push(char::from(byte));
        } else {
            escaped.push('%');
            escaped.push(char::from(HEX[usize::from(byte >> 4)]));
            escaped.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    escaped
}

/// Go's `%q` (strconv.Quote) for the texts the Pushgateway quotes, so our messages read the same.
fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\u{07}' => quoted.push_str("\\a"),
            '\u{08}' => quoted.push_str("\\b"),
            '\u{0c}' => quoted.push_str("\\f"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\u{0b}' => quoted.push_str("\\v"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(quoted, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04x}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    //! Expected results were checked against the real Pushgateway 1.5.1 binary (Debian) with curl,
    //! unless a test says it covers one of our documented differences.
    use super::*;
    use proptest::prelude::*;

    fn key(job: &str, labels: &[(&str, &str)]) -> GroupingKey {
        GroupingKey {
            job: job.to_owned(),
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn parse_err(path: &str) -> GroupingKeyError {
        match parse_push_path(path) {
            Ok(key) => panic!("{path} parsed as {key}, expected an error"),
            Err(err) => err,
        }
    }

    #[test]
    fn parses_job_and_labels() {
        let parsed = parse_push_path("/metrics/job/j/a/x/instance/h1").unwrap();
        assert_eq!(parsed, key("j", &[("a", "x"), ("instance", "h1")]));
        assert_eq!(parsed.job(), "j");
        assert_eq!(parsed.labels().len(), 2);
    }

    #[test]
    fn job_alone_and_trailing_slash_after_job_are_the_same_group() {
        // Pushgateway: `/metrics/job/j/` is 200 with group {job="j"}.
        assert_eq!(parse_push_path("/metrics/job/j").unwrap(), key("j", &[]));
        assert_eq!(parse_push_path("/metrics/job/j/").unwrap(), key("j", &[]));
    }

    #[test]
    fn empty_job_is_400_empty_job_name() {
        // Pushgateway: `/metrics/job/` is 307 -> `/metrics/job` which is 404, `/metrics/job@base64/` is 404;
        // ours is a clearer 400.
        for path in [
            "/metrics/job/",
            "/metrics/job@base64/",
            "/Metrics/JOB/",
            "/metrics/job@base64/=",
        ] {
            let err = parse_err(path);
            assert_eq!(err, GroupingKeyError::EmptyJob, "{path}");
            assert_eq!(err.http_status(), 400);
            assert!(err.to_string().starts_with("empty job name"));
        }
    }

    #[test]
    fn the_prefix_alone_is_404_like_the_pushgateway() {
        for path in ["/metrics/job", "/metrics/job@base64", "/metrics/%6Aob"] {
            let err = parse_err(path);
            assert!(
                matches!(err, GroupingKeyError::NotAPushPath { .. }),
                "{path}: {err:?}"
            );
            assert_eq!(err.http_status(), 404);
        }
    }

    #[test]
    fn percent_encoded_route_letters_are_decoded_before_matching() {
        // Pushgateway 1.5.1 answered 200 for each, storing {job="j"}: its router matches r.URL.Path.
        for path in [
            "/metrics/%6Aob/j",
            "/metrics/jo%62/j",
            "/%6Detrics/job/j",
            "/metrics%2Fjob/j",
            "/metrics/job%2Fj",
            "/metrics/job%40base64/ag",
        ] {
            assert_eq!(parse_push_path(path), Ok(key("j", &[])), "{path}");
        }
        // The letter case is checked on the decoded path too.
        let err = parse_err("/metrics/%4AOB/j");
        assert_eq!(err.redirect_location(), Some("/metrics/job/j"));
    }

    #[test]
    fn a_repeated_label_is_judged_by_its_last_value_only() {
        // Pushgateway 1.5.1: 200 for each, the last value winning, and the instance stayed healthy.
        for path in [
            "/metrics/job/j/a/%FF/a/x",
            "/metrics/job/j/a@base64/_w/a/x",
            "/metrics/job/j/a/%FF/a@base64/eA",
        ] {
            assert_eq!(parse_push_path(path), Ok(key("j", &[("a", "x")])), "{path}");
        }
        // A `job` label in the labels is overridden by the route's job, whatever its value.
        assert_eq!(
            parse_push_path("/metrics/job/j/job/%FF/job@base64/_w"),
            Ok(key("j", &[]))
        );
        // The other way round, the winning value is not UTF-8.
        assert!(matches!(
            parse_err("/metrics/job/j/a/x/a/%FF/b/y"),
            GroupingKeyError::ValueNotUtf8 { ref label, .. } if label == "a"
        ));
        assert!(matches!(
            parse_err("/metrics/job/j/a/x/a@base64/_w"),
            GroupingKeyError::Base64NotUtf8 { ref label, ref value } if label == "a" && value == "_w"
        ));
    }

    #[test]
    fn a_delete_may_name_non_utf8_values() {
        // Pushgateway 1.5.1 answers such a DELETE with 202 and stays healthy.
        let lossy = |path: &str| {
            match_push_path(path)
                .and_then(|route| route.grouping_key(NonUtf8::Replace))
                .unwrap()
        };
        assert_eq!(
            lossy("/metrics/job/j/a/x%FFy"),
            key("j", &[("a", "x\u{fffd}y")])
        );
        assert_eq!(lossy("/metrics/job/%FF"), key("\u{fffd}", &[]));
        assert_eq!(lossy("/metrics/job@base64/_w"), key("\u{fffd}", &[]));
        assert_eq!(
            lossy("/metrics/job/j/a@base64/_w/b/y"),
            key("j", &[("a", "\u{fffd}"), ("b", "y")])
        );
        // Everything else is still checked.
        let route = match_push_path("/metrics/job/j/a%FF/x").unwrap();
        assert!(matches!(
            route.grouping_key(NonUtf8::Replace),
            Err(GroupingKeyError::ImproperLabelName { .. })
        ));
        let route = match_push_path("/metrics/job@base64/!/a/%FF").unwrap();
        assert!(matches!(
            route.grouping_key(NonUtf8::Replace),
            Err(GroupingKeyError::InvalidBase64 { .. })
        ));
    }

    #[test]
    fn a_non_utf8_job_is_rejected_for_a_push() {
        assert!(matches!(
            parse_err("/metrics/job/%FF/a/x"),
            GroupingKeyError::ValueNotUtf8 { ref label, .. } if label == "job"
        ));
        assert!(matches!(
            parse_err("/metrics/job@base64/_w"),
            GroupingKeyError::Base64NotUtf8 { ref label, .. } if label == "job"
        ));
    }

    #[test]
    fn empty_job_after_base64_decoding_is_400() {
        // Pushgateway: 400 "job name is required" for `=` and `==`.
        assert_eq!(
            parse_err("/metrics/job@base64/="),
            GroupingKeyError::EmptyJob
        );
        assert_eq!(
            parse_err("/metrics/job@base64/==/a/x"),
            GroupingKeyError::EmptyJob
        );
    }

    #[test]
    fn label_errors_are_reported_before_an_empty_base64_job() {
        // Pushgateway runs splitLabels before the job check.
        let err = parse_err("/metrics/job@base64/=/a");
        assert_eq!(
            err.to_string(),
            "odd number of components in label string \"/a\""
        );
    }

    #[test]
    fn odd_number_of_components_has_pushgateway_message() {
        let err = parse_err("/metrics/job/j/a");
        assert_eq!(err.http_status(), 400);
        assert_eq!(
            err.to_string(),
            "odd number of components in label string \"/a\""
        );
    }

    #[test]
    fn odd_components_message_quotes_like_go() {
        // Pushgateway answered `"/a/\x01/b"` for `/metrics/job/j/a/%01/b`.
        let err = parse_err("/metrics/job/j/a/%01/b");
        assert_eq!(
            err.to_string(),
            "odd number of components in label string \"/a/\\x01/b\""
        );
    }

    #[test]
    fn improper_label_names_are_rejected() {
        for name in ["1abc", "__x", "a-b", "é"] {
            let err = parse_err(&format!("/metrics/job/j/{name}/x"));
            assert_eq!(err.http_status(), 400);
            assert_eq!(err.to_string(), format!("improper label name \"{name}\""));
        }
    }

    #[test]
    fn base64_suffix_alone_or_twice_is_an_improper_name() {
        assert_eq!(
            parse_err("/metrics/job/j/@base64/eA").to_string(),
            "improper label name \"\""
        );
        assert_eq!(
            parse_err("/metrics/job/j/a@base64@base64/eA").to_string(),
            "improper label name \"a@base64\""
        );
    }

    #[test]
    fn label_names_may_use_upper_case_and_underscore() {
        let parsed = parse_push_path("/metrics/job/j/A/x/_b/y/c_1/z").unwrap();
        assert_eq!(parsed, key("j", &[("A", "x"), ("_b", "y"), ("c_1", "z")]));
    }

    #[test]
    fn first_job_label_wins() {
        assert_eq!(
            parse_push_path("/metrics/job/j1/job/j2").unwrap(),
            key("j1", &[])
        );
        assert_eq!(
            parse_push_path("/metrics/job@base64/ajE/job@base64/ajI").unwrap(),
            key("j1", &[])
        );
    }

    #[test]
    fn overridden_job_label_is_still_validated() {
        // Pushgateway: 400 invalid base64 encoding for label job="!!".
        assert!(matches!(
            parse_err("/metrics/job/j/job@base64/!!"),
            GroupingKeyError::InvalidBase64 { offset: 0, .. }
        ));
    }

    #[test]
    fn duplicate_label_last_value_wins() {
        assert_eq!(
            parse_push_path("/metrics/job/j/a/x/a/y").unwrap(),
            key("j", &[("a", "y")])
        );
        assert_eq!(
            parse_push_path("/metrics/job/j/a/y/a@base64/eA").unwrap(),
            key("j", &[("a", "x")])
        );
    }

    #[test]
    fn base64_job_is_decoded() {
        assert_eq!(
            parse_push_path("/metrics/job@base64/ag==/a/x").unwrap(),
            key("j", &[("a", "x")])
        );
    }

    #[test]
    fn base64_suffix_on_job_value_is_literal() {
        assert_eq!(
            parse_push_path("/metrics/job/j@base64/a/x").unwrap(),
            key("j@base64", &[("a", "x")])
        );
    }

    #[test]
    fn base64_padding_is_optional_and_any_amount_is_dropped() {
        for value in ["eA", "eA==", "eA===="] {
            let parsed = parse_push_path(&format!("/metrics/job/j/a@base64/{value}")).unwrap();
            assert_eq!(parsed, key("j", &[("a", "x")]), "{value}");
        }
    }

    #[test]
    fn base64_single_equals_or_nothing_is_the_empty_value() {
        for path in ["/metrics/job/j/a@base64/=", "/metrics/job/j/a@base64/"] {
            assert_eq!(parse_push_path(path).unwrap(), key("j", &[("a", "")]));
        }
    }

    #[test]
    fn base64_uses_url_safe_alphabet_and_rejects_standard_plus() {
        // "-_-_" is 0xfb 0xff 0xbf; "Pz8_" is "??" + 0x3f in URL-safe.
        assert_eq!(
            parse_push_path("/metrics/job/j/a@base64/Pz8_").unwrap(),
            key("j", &[("a", "???")])
        );
        let err = parse_err("/metrics/job/j/a@base64/ab+c");
        assert_eq!(err.http_status(), 400);
        assert_eq!(
            err,
            GroupingKeyError::InvalidBase64 {
                label: "a".into(),
                value: "ab+c".into(),
                offset: 2
            }
        );
        assert!(err.to_string().contains("a=\"ab+c\""), "{err}");
    }

    #[test]
    fn bad_base64_names_the_value() {
        for (value, offset) in [("x", 0), ("Y", 0), ("e=A", 1), ("eAeAY", 4)] {
            let err = parse_err(&format!("/metrics/job/j/a@base64/{value}"));
            assert_eq!(
                err,
                GroupingKeyError::InvalidBase64 {
                    label: "a".into(),
                    value: value.into(),
                    offset
                },
                "{value}"
            );
            assert!(err.to_string().contains(&format!("\"{value}\"")));
        }
        assert!(matches!(
            parse_err("/metrics/job@base64/ab+c"),
            GroupingKeyError::InvalidBase64 { ref label, offset: 2, .. } if label == "job"
        ));
    }

    #[test]
    fn base64_ignores_unused_trailing_bits_and_newlines_like_go() {
        // Go's decoder is not strict: "YR" decodes to "a" and %0A / %0D inside the value are skipped.
        assert_eq!(
            parse_push_path("/metrics/job/j/a@base64/YR").unwrap(),
            key("j", &[("a", "a")])
        );
        assert_eq!(
            parse_push_path("/metrics/job/j/a@base64/e%0DA%0A").unwrap(),
            key("j", &[("a", "x")])
        );
    }

    #[test]
    fn base64_of_non_utf8_bytes_is_400() {
        // Pushgateway answered 400 too, but created the group and then failed every later push.
        let err = parse_err("/metrics/job/j/a@base64/ab-_");
        assert!(matches!(err, GroupingKeyError::Base64NotUtf8 { .. }));
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn percent_encoded_slash_is_a_separator() {
        assert_eq!(
            parse_err("/metrics/job/j/a/x%2Fy").to_string(),
            "odd number of components in label string \"/a/x/y\""
        );
        assert_eq!(
            parse_push_path("/metrics/job/j/a/x%2Fb/y").unwrap(),
            key("j", &[("a", "x"), ("b", "y")])
        );
    }

    #[test]
    fn plus_semicolon_tilde_and_space_are_literal() {
        assert_eq!(
            parse_push_path("/metrics/job/j/a/x+y;z~w%20v").unwrap(),
            key("j", &[("a", "x+y;z~w v")])
        );
    }

    #[test]
    fn percent_decoding_covers_utf8_quotes_and_control_bytes() {
        assert_eq!(
            parse_push_path("/metrics/job/%C3%A9/a/x%C3%a9/b/%22q%5C%0A/c/%00%3F").unwrap(),
            key("é", &[("a", "xé"), ("b", "\"q\\\n"), ("c", "\0?")])
        );
    }

    #[test]
    fn invalid_percent_escape_is_400_naming_the_offset() {
        for (path, offset) in [
            ("/metrics/job/j/a/%zz", 17),
            ("/metrics/job/j/a/x%", 18),
            ("/metrics/job/j/a/%2", 17),
        ] {
            let err = parse_err(path);
            assert_eq!(
                err,
                GroupingKeyError::InvalidPercentEncoding {
                    path: path.into(),
                    offset
                }
            );
            assert_eq!(err.http_status(), 400);
            assert_eq!(match_push_path(path).unwrap_err(), err);
        }
    }

    #[test]
    fn raw_control_characters_are_400() {
        // Go's server rejects them in the request line with a plain 400.
        let err = parse_err("/metrics/job/j/a/x\u{1}y");
        assert!(matches!(
            err,
            GroupingKeyError::ControlCharacterInPath { offset: 18, .. }
        ));
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn non_utf8_after_percent_decoding_is_400() {
        let err = parse_err("/metrics/job/j/a/%FF");
        assert_eq!(
            err,
            GroupingKeyError::ValueNotUtf8 {
                label: "a".into(),
                path: "/metrics/job/j/a/%FF".into()
            }
        );
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn trailing_slash_adds_an_empty_value() {
        assert_eq!(
            parse_push_path("/metrics/job/j/a/x/b/").unwrap(),
            key("j", &[("a", "x"), ("b", "")])
        );
        assert_eq!(
            parse_err("/metrics/job/j/a/x/").to_string(),
            "odd number of components in label string \"/a/x/\""
        );
    }

    #[test]
    fn unclean_paths_redirect_301_to_the_cleaned_decoded_path() {
        // Every pair below was answered 301 with exactly this Location by the Pushgateway.
        for (path, location) in [
            ("/metrics/job/j//a/x", "/metrics/job/j/a/x"),
            ("/metrics//job/j", "/metrics/job/j"),
            ("/metrics/job/j/./a/x", "/metrics/job/j/a/x"),
            ("/metrics/job/j/a/x/.", "/metrics/job/j/a/x"),
            ("/metrics/job/j/a/x/..", "/metrics/job/j/a"),
            ("/metrics/job/j/a/x/b/..", "/metrics/job/j/a/x"),
            ("/metrics/job/j/a/%2E%2E", "/metrics/job/j"),
            ("/metrics/job/j/a/%2e", "/metrics/job/j/a"),
            ("/metrics/job/j/a/x%2F%2Fy/b/z", "/metrics/job/j/a/x/y/b/z"),
            ("/metrics/job/j%2F/a/x", "/metrics/job/j/a/x"),
            ("/metrics/job/j/a/x%3Fy//", "/metrics/job/j/a/x%3Fy/"),
            (
                "/metrics/job/j/a/h%C3%A9%20%25//b",
                "/metrics/job/j/a/h%C3%A9%20%25/b",
            ),
            ("/metrics/job/..", "/metrics"),
            ("/metrics/job/.", "/metrics/job"),
            ("/Metrics/job/j//a/x", "/Metrics/job/j/a/x"),
            ("/..", "/"),
        ] {
            let err = parse_err(path);
            assert_eq!(err.http_status(), 301, "{path}");
            assert_eq!(err.redirect_location(), Some(location), "{path}");
        }
    }

    #[test]
    fn dots_inside_a_segment_are_not_cleaned() {
        assert_eq!(
            parse_push_path("/metrics/job/j/a/.x/b/...").unwrap(),
            key("j", &[("a", ".x"), ("b", "...")])
        );
    }

    #[test]
    fn wrong_case_prefix_redirects_307_keeping_parameters() {
        for (path, location) in [
            ("/Metrics/job/j", "/metrics/job/j"),
            ("/metrics/Job/j", "/metrics/job/j"),
            ("/METRICS/JOB/j/A/x", "/metrics/job/j/A/x"),
            ("/METRICS/JOB@BASE64/ag", "/metrics/job@base64/ag"),
            ("/metrics/job@Base64/ag", "/metrics/job@base64/ag"),
            ("/metrics/jOb/j/", "/metrics/job/j/"),
        ] {
            let err = parse_err(path);
            assert_eq!(err.http_status(), 307, "{path}");
            assert_eq!(err.redirect_location(), Some(location), "{path}");
        }
        // A base64 job followed by anything: Pushgateway 1.5.1 finds no fixed-case route (404).
        for path in [
            "/METRICS/JOB@BASE64/ag/a/x",
            "/metrics/job@Base64/ag/",
            "/Metrics/job@base64/ag/a/x",
        ] {
            let err = parse_err(path);
            assert!(
                matches!(err, GroupingKeyError::NotAPushPath { .. }),
                "{path}: {err:?}"
            );
        }
    }

    #[test]
    fn other_paths_are_404() {
        for path in [
            "/metrics/jobx/j",
            "/metrics/job@base64x/j",
            "/metrics",
            "/",
            "",
            "metrics/job/j",
        ] {
            let err = parse_err(path);
            assert!(
                matches!(err, GroupingKeyError::NotAPushPath { .. }),
                "{path}"
            );
            assert_eq!(err.http_status(), 404);
            assert_eq!(err.redirect_location(), None);
        }
    }

    #[test]
    fn decoded_path_borrows_without_escapes_and_keeps_non_utf8_bytes() {
        let route = match_push_path("/metrics/job/j/a/x+y").unwrap();
        assert!(matches!(route.decoded, Cow::Borrowed(_)));
        assert_eq!(route.decoded_path(), b"/metrics/job/j/a/x+y");
        let route = match_push_path("/metrics/job/j/a/x%2Fy%20z").unwrap();
        assert_eq!(route.decoded_path(), b"/metrics/job/j/a/x/y z");
        let route = match_push_path("/metrics/job/j/a/%C3").unwrap();
        assert_eq!(route.decoded_path(), b"/metrics/job/j/a/\xc3");
    }

    #[test]
    fn empty_value_is_flagged_and_has_the_ring_key_of_the_absent_label() {
        let without = parse_push_path("/metrics/job/j").unwrap();
        assert!(!without.has_empty_label_value());
        for path in [
            "/metrics/job/j/instance@base64/=",
            "/metrics/job/j/instance@base64/",
            "/metrics/job/j/instance/",
        ] {
            let with_empty = parse_push_path(path).unwrap();
            // The parsed key is what the client sent; its ring key and canonical form are those of `{job="j"}`.
            assert_ne!(with_empty, without, "{path}");
            assert!(with_empty.has_empty_label_value(), "{path}");
            assert_eq!(with_empty.ring_key(), without.ring_key(), "{path}");
            assert_eq!(with_empty.canonical(), without, "{path}");
        }
    }

    #[test]
    fn without_empty_labels_leaves_a_path_without_them_alone() {
        for path in [
            "/metrics/job/j",
            "/metrics/job/j/",
            "/metrics/job/j/a/x/b/y",
        ] {
            let key = parse_push_path(path).unwrap();
            assert_eq!(without_empty_labels(path, &key), None, "{path}");
        }
    }

    #[test]
    fn without_empty_labels_drops_only_the_empty_pairs_byte_for_byte() {
        for (path, expected) in [
            ("/metrics/job/j/instance@base64/=", "/metrics/job/j"),
            ("/metrics/job/j/instance@base64/", "/metrics/job/j"),
            ("/metrics/job/j/instance/", "/metrics/job/j"),
            ("/metrics/job/j/instance@base64/==", "/metrics/job/j"),
            // Other pairs keep their order, spelling and escapes.
            (
                "/metrics/job@base64/ag/z/1/a@base64/=/b/x%20y%2Fc/z/d@base64/eA",
                "/metrics/job@base64/ag/z/1/b/x%20y%2Fc/z/d@base64/eA",
            ),
            ("/metrics/job/j/a/x/b/", "/metrics/job/j/a/x"),
            // `%2F` is a separator once decoded; it may sit before or after an empty pair.
            ("/metrics/job/j/a/x%2Fb/", "/metrics/job/j/a/x"),
            ("/metrics/job/j%2Fa@base64/=/b/y", "/metrics/job/j/b/y"),
            // The last value wins: an empty last value drops every pair of that name.
            ("/metrics/job/j/a/x/b/y/a/", "/metrics/job/j/b/y"),
            // A `job` pair is overridden by the route's job either way; it is not ours to drop.
            ("/metrics/job/j/job/k/a/", "/metrics/job/j/job/k"),
            // Percent-encoded name letters.
            ("/metrics/job/j/%69nstance/", "/metrics/job/j"),
        ] {
            let key = parse_push_path(path).unwrap();
            let stripped = without_empty_labels(path, &key);
            assert_eq!(stripped.as_deref(), Some(expected), "{path}");
            assert_eq!(
                parse_push_path(expected).unwrap(),
                key.canonical(),
                "{path}"
            );
        }
    }

    #[test]
    fn without_empty_labels_keeps_a_non_empty_value_that_overrides_an_empty_one() {
        let path = "/metrics/job/j/a/x/b@base64/=/b/y";
        let key = parse_push_path(path).unwrap();
        assert_eq!(without_empty_labels(path, &key), None);
    }

    #[test]
    fn display_puts_job_first_and_escapes_values() {
        let key = key("j\"1", &[("b", "line\nbreak"), ("a", "back\\slash")]);
        assert_eq!(
            key.to_string(),
            r#"{job="j\"1",a="back\\slash",b="line\nbreak"}"#
        );
    }

    #[test]
    fn ring_key_is_length_prefixed_pairs_sorted_with_job() {
        let key = key("j", &[("zone", "z"), ("a", "xy")]);
        let mut expected = vec![1, b'a', 2, b'x', b'y'];
        expected.extend([3, b'j', b'o', b'b', 1, b'j']);
        expected.extend([4, b'z', b'o', b'n', b'e', 1, b'z']);
        assert_eq!(key.ring_key(), expected);
    }

    #[test]
    fn ring_key_uses_multi_byte_lengths_for_long_values() {
        let long = "v".repeat(300);
        let bytes = key(&long, &[]).ring_key();
        // 300 = 0b10_0101100: LEB128 0xac 0x02.
        assert_eq!(&bytes[..6], &[3, b'j', b'o', b'b', 0xac, 0x02]);
        assert_eq!(bytes.len(), 6 + 300);
    }

    #[test]
    fn ring_key_differs_when_bytes_move_between_name_and_value() {
        let left = key("j", &[("ab", "c")]);
        let right = key("j", &[("a", "bc")]);
        assert_ne!(left.ring_key(), right.ring_key());
        let split_across_pairs = key("j", &[("a", "b"), ("c", "d")]);
        let one_pair = key("j", &[("a", "b\u{1}\u{1}c\u{1}d")]);
        assert_ne!(split_across_pairs.ring_key(), one_pair.ring_key());
    }

    #[test]
    fn write_ring_key_reuses_and_clears_the_buffer() {
        let mut buf = b"stale bytes".to_vec();
        let key = key("j", &[("a", "x")]);
        key.write_ring_key(&mut buf);
        assert_eq!(buf, key.ring_key());
    }

    #[test]
    fn to_push_path_is_sorted_and_encodes_awkward_values() {
        let key = key(
            "my job",
            &[
                ("z", "plain-1.2_~"),
                ("a", ""),
                ("b", "x/y"),
                ("c", ".."),
                ("d", "50%"),
            ],
        );
        assert_eq!(
            key.to_push_path(),
            "/metrics/job/my%20job/a@base64/=/b@base64/eC95/c@base64/Li4/d/50%25/z/plain-1.2_~"
        );
        assert_eq!(parse_push_path(&key.to_push_path()).unwrap(), key);
    }

    #[test]
    fn to_push_path_uses_base64_for_a_job_with_slash() {
        let key = key("a/b", &[]);
        assert_eq!(key.to_push_path(), "/metrics/job@base64/YS9i");
        assert_eq!(parse_push_path(&key.to_push_path()).unwrap(), key);
    }

    #[test]
    fn from_labels_requires_a_non_empty_job_and_valid_names() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            GroupingKey::from_labels(labels(&[("job", "j"), ("a", "x")])).unwrap(),
            key("j", &[("a", "x")])
        );
        let missing = GroupingKey::from_labels(labels(&[("a", "x")])).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "grouping labels {a=\"x\"} have no \"job\" label; every group needs one"
        );
        assert_eq!(
            GroupingKey::from_labels(labels(&[("job", "")])).unwrap_err(),
            GroupingKeyError::EmptyJob
        );
        assert_eq!(
            GroupingKey::from_labels(labels(&[("job", "j"), ("__x", "y")])).unwrap_err(),
            GroupingKeyError::ImproperLabelName { name: "__x".into() }
        );
    }

    #[test]
    fn all_labels_are_sorted_with_job_in_place() {
        let key = key("j", &[("a", "1"), ("z", "2"), ("jz", "3"), ("ja", "4")]);
        let names: Vec<&str> = key.all_labels().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "ja", "job", "jz", "z"]);
    }

    fn label_name() -> impl Strategy<Value = String> {
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}"
            .prop_filter("reserved or job", |n| !n.starts_with("__") && n != "job")
    }

    /// Arbitrary unicode, with '/', '%', '.', spaces, '=' and empty strings made likely.
    fn label_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a/%. =+@\\\\\n]{0,6}",
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
        ]
    }

    fn grouping_key() -> impl Strategy<Value = GroupingKey> {
        (
            label_value().prop_filter("job must not be empty", |j| !j.is_empty()),
            proptest::collection::btree_map(label_name(), label_value(), 0..5),
        )
            .prop_map(|(job, labels)| GroupingKey { job, labels })
    }

    /// Keys over a tiny alphabet, so that near-collisions (shifted bytes) are common.
    fn small_grouping_key() -> impl Strategy<Value = GroupingKey> {
        (
            "[ab]{1,3}",
            proptest::collection::btree_map("[ab]{1,3}", "[ab]{0,3}", 0..3),
        )
            .prop_map(|(job, labels)| GroupingKey { job, labels })
    }

    /// Push paths made of pieces that hit every stage: non-UTF-8 escapes, base64 of non-UTF-8 bytes,
    /// repeated names, separators, case.
    fn awkward_push_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/a"),
            Just("/a@base64"),
            Just("/job"),
            Just("/job@base64"),
            Just("/x"),
            Just("/_w"),
            Just("/eA"),
            Just("/%FF"),
            Just("/x%C3"),
            Just("/%C3%A9"),
            Just("%2F"),
            Just("/="),
            Just("/!"),
            Just("/"),
        ];
        (
            prop_oneof![
                Just("/metrics/job"),
                Just("/metrics/job@base64"),
                Just("/metrics/JOB")
            ],
            proptest::collection::vec(piece, 1..8),
        )
            .prop_map(|(prefix, pieces)| format!("{prefix}{}", pieces.concat()))
    }

    fn base64_segment(value: &str) -> String {
        if value.is_empty() {
            "=".to_owned()
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value)
        }
    }

    proptest! {
        #[test]
        fn push_path_round_trips(key in grouping_key()) {
            prop_assert_eq!(parse_push_path(&key.to_push_path()), Ok(key));
        }

        #[test]
        fn label_order_in_url_does_not_change_the_key(
            (key, order) in grouping_key().prop_flat_map(|key| {
                let indices: Vec<usize> = (0..key.labels.len()).collect();
                (Just(key), Just(indices).prop_shuffle())
            })
        ) {
            let pairs: Vec<(&String, &String)> = key.labels.iter().collect();
            let mut path = format!("/metrics/job@base64/{}", base64_segment(&key.job));
            for index in order {
                let (name, value) = pairs[index];
                path.push_str(&format!("/{name}@base64/{}", base64_segment(value)));
            }
            let parsed = parse_push_path(&path);
            prop_assert_eq!(parsed.as_ref().map(GroupingKey::ring_key), Ok(key.ring_key()));
            prop_assert_eq!(parsed, Ok(key));
        }

        #[test]
        fn ring_key_is_injective_on_canonical_keys(left in grouping_key(), right in grouping_key()) {
            let (left, right) = (left.canonical(), right.canonical());
            prop_assert_eq!(left == right, left.ring_key() == right.ring_key());
        }

        #[test]
        fn ring_key_is_injective_on_near_collisions(
            left in small_grouping_key(),
            right in small_grouping_key(),
        ) {
            let (left, right) = (left.canonical(), right.canonical());
            prop_assert_eq!(left == right, left.ring_key() == right.ring_key());
        }

        #[test]
        fn ring_key_is_that_of_the_canonical_key(key in grouping_key()) {
            prop_assert_eq!(key.ring_key(), key.clone().canonical().ring_key());
        }

        /// Empty-valued pairs, in any spelling and position, are cut out of a path and nothing else changes.
        #[test]
        fn without_empty_labels_removes_exactly_the_empty_pairs(
            (key, order) in grouping_key().prop_map(GroupingKey::canonical).prop_flat_map(|key| {
                let indices: Vec<usize> = (0..key.labels.len()).collect();
                (Just(key), Just(indices).prop_shuffle())
            }),
            empty in proptest::collection::btree_set(label_name(), 1..3),
            positions in proptest::collection::vec(any::<proptest::sample::Index>(), 2),
            trailing_plain in any::<bool>(),
        ) {
            let empty: Vec<String> = empty.into_iter().filter(|n| !key.labels.contains_key(n)).collect();
            prop_assume!(!empty.is_empty());
            let mut pairs: Vec<String> = order
                .iter()
                .map(|&index| {
                    let (name, value) = key.labels.iter().nth(index).unwrap();
                    format!("/{name}@base64/{}", base64_segment(value))
                })
                .collect();
            let expected = format!("/metrics/job@base64/{}{}", base64_segment(&key.job), pairs.concat());
            for (name, position) in empty.iter().zip(&positions) {
                let at = position.index(pairs.len() + 1);
                pairs.insert(at, format!("/{name}@base64/="));
            }
            if trailing_plain {
                // A plain empty value is only possible last (a trailing slash).
                if let Some(last) = pairs.iter_mut().rev().find(|p| p.ends_with("@base64/=")) {
                    *last = last.replace("@base64/=", "/");
                    let moved = last.clone();
                    pairs.retain(|p| *p != moved);
                    pairs.push(moved);
                }
            }
            let path = format!("/metrics/job@base64/{}{}", base64_segment(&key.job), pairs.concat());
            let parsed = parse_push_path(&path).unwrap();
            prop_assert_eq!(parsed.ring_key(), key.ring_key());
            prop_assert_eq!(without_empty_labels(&path, &parsed), Some(expected));
        }

        #[test]
        fn from_labels_round_trips(key in grouping_key()) {
            let all: BTreeMap<String, String> = key
                .all_labels()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            prop_assert_eq!(GroupingKey::from_labels(all), Ok(key));
        }

        #[test]
        fn parse_never_panics(path in "/metrics/job[/@a-z0-9%.=+]{0,30}") {
            let _ = parse_push_path(&path);
        }

        #[test]
        fn replacing_non_utf8_changes_only_what_non_utf8_values_decide(path in awkward_push_path()) {
            let Ok(route) = match_push_path(&path) else { return Ok(()) };
            match (route.grouping_key(NonUtf8::Reject), route.grouping_key(NonUtf8::Replace)) {
                (Ok(strict), Ok(lossy)) => prop_assert_eq!(strict, lossy),
                (Err(strict), Ok(_)) => prop_assert!(
                    matches!(
                        strict,
                        GroupingKeyError::ValueNotUtf8 { .. } | GroupingKeyError::Base64NotUtf8 { .. }
                    ),
                    "{path}: {strict:?}"
                ),
                (Err(strict), Err(lossy)) => prop_assert_eq!(strict, lossy),
                (Ok(strict), Err(lossy)) => prop_assert!(false, "{path}: {strict} but {lossy:?}"),
            }
        }
    }
}

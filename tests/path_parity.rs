//! Push paths through the gateway answer like a lone Pushgateway 1.5.1: each request goes to a reference
//! Pushgateway and, through the gateway (proxy mode), to another one, and the answers are compared. What differs
//! on purpose is what README.md lists under "Push paths: parity with a lone Pushgateway"; the differential
//! test at the end classifies each such request explicitly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = "# TYPE parity_gauge gauge\nparity_gauge 1\n";
/// The longest request target hyper accepts (`http::Uri` keeps offsets in a `u16`).
const MAX_TARGET: usize = 65534;

/// One complete answer to a request sent byte for byte.
#[derive(Debug)]
struct Answer {
    status: u16,
    location: Option<String>,
    node: Option<String>,
    body: String,
}

/// Sends `method target` exactly as given (no client-side normalisation of `//`, `.`, case or escapes) on a
/// fresh connection and reads the whole answer. Panics if nothing comes back within 30 s: a Pushgateway that
/// hangs was poisoned by an earlier request, which this suite must never do.
async fn raw(addr: &str, method: &str, target: &[u8], body: &str) -> Answer {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request = Vec::with_capacity(target.len() + body.len() + 128);
        request.extend_from_slice(method.as_bytes());
        request.push(b' ');
        request.extend_from_slice(target);
        request.extend_from_slice(
            format!(
                " HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        stream.write_all(&request).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let shown = String::from_utf8_lossy(&target[..target.len().min(200)]).into_owned();
    let answer = match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok(answer)) => String::from_utf8_lossy(&answer).into_owned(),
        Ok(Err(error)) => panic!("{method} {shown} to {addr}: {error}"),
        Err(_) => panic!("{method} {shown} to {addr}: no answer within 30 s"),
    };
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {shown} to {addr}: no status line in {head:?}"));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    Answer {
        status,
        location: header("location"),
        node: header("x-dynamic-sharding-node"),
        body: body.to_owned(),
    }
}

/// A lone reference Pushgateway, and the gateway (proxy mode) in front of one other Pushgateway.
struct Pair {
    reference: Pushgateway,
    node: Pushgateway,
    gateway: Gateway,
}

impl Pair {
    async fn start() -> Pair {
        let reference = Pushgateway::start().await;
        let node = Pushgateway::start().await;
        let gateway = Gateway::start(&format!(
            "mode: proxy\npushgateway:\n  servers: [\"{}\"]\nhealth_check: {{interval: 500ms, timeout: 400ms, \
             unhealthy_threshold: 2, healthy_threshold: 1}}\nrebalance:\n  enabled: false\n",
            node.addr()
        ))
        .await;
        wait_until(secs(20), Duration::from_millis(100), || async {
            let ring = gateway.ring().await;
            ring["ring_nodes"].as_array().map_or(0, Vec::len) == 1
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the node never joined the ring: {e}\n{}",
                gateway.log_text()
            )
        });
        Pair {
            reference,
            node,
            gateway,
        }
    }

    /// The reference's answer and the gateway's.
    async fn both(&self, method: &str, target: &str, body: &str) -> (Answer, Answer) {
        let direct = raw(&self.reference.addr(), method, target.as_bytes(), body).await;
        let through = raw(&self.gateway.addr(), method, target.as_bytes(), body).await;
        (direct, through)
    }

    /// Asserts the gateway answers `method target` with the reference's status and `Location`; returns it.
    async fn assert_same(&self, method: &str, target: &str, body: &str) -> u16 {
        let (direct, through) = self.both(method, target, body).await;
        assert_eq!(
            (through.status, &through.location),
            (direct.status, &direct.location),
            "{method} {target}: gateway answered {} {:?}, the Pushgateway {} {:?}",
            through.status,
            through.body,
            direct.status,
            direct.body
        );
        direct.status
    }

    /// Both Pushgateways still serve `/metrics` (neither was poisoned) and hold the same groups.
    async fn assert_same_groups_and_healthy(&self) {
        for pushgateway in [&self.reference, &self.node] {
            let reply = raw(&pushgateway.addr(), "GET", b"/metrics", "").await;
            assert_eq!(
                reply.status,
                200,
                "{} /metrics: {}",
                pushgateway.addr(),
                reply.body
            );
        }
        self.assert_same_groups().await;
    }

    /// Both Pushgateways hold the same groups. A Pushgateway applies a DELETE after its 202, so the two may
    /// differ for a moment after one: wait for them to agree, then compare.
    async fn assert_same_groups(&self) {
        let agreed = wait_until(SETTLE, POLL_INTERVAL, || async {
            sorted(self.node.groups().await) == sorted(self.reference.groups().await)
        })
        .await;
        assert_eq!(
            sorted(self.node.groups().await),
            sorted(self.reference.groups().await),
            "{agreed:?}"
        );
    }
}

fn sorted(mut groups: Vec<BTreeMap<String, String>>) -> Vec<BTreeMap<String, String>> {
    groups.sort();
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_the_go_router_cleans_get_its_301_to_the_clean_path() {
    let pair = Pair::start().await;
    for method in ["PUT", "POST", "DELETE", "OPTIONS", "PATCH"] {
        for target in [
            "//metrics/job/j",
            "/metrics//job/j/a/x",
            "/./metrics/job/j",
            "/metrics/../metrics/job/j?x=1",
            "/metrics/job/j/a/x/%2E%2E/y/z",
            "//Metrics/JOB/j",
        ] {
            let status = pair.assert_same(method, target, BODY).await;
            assert_eq!(status, 301, "{method} {target}");
        }
    }
    assert!(
        pair.node.groups().await.is_empty(),
        "a redirect reached the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_case_prefixes_get_307_for_pushes_and_deletes_and_404_otherwise() {
    let pair = Pair::start().await;
    let targets = [
        "/metrics/JOB/j",
        "/Metrics/job/j/a/x?q=1",
        "/METRICS/JOB@BASE64/ag",
        "/metrics/%4AOB/j",
    ];
    for target in targets {
        for method in ["PUT", "POST", "DELETE"] {
            assert_eq!(
                pair.assert_same(method, target, BODY).await,
                307,
                "{method} {target}"
            );
        }
        for method in ["PATCH", "OPTIONS"] {
            assert_eq!(
                pair.assert_same(method, target, BODY).await,
                404,
                "{method} {target}"
            );
        }
    }
    // Following the redirect pushes the group itself.
    let (_, through) = pair.both("PUT", "/metrics/JOB/j/a/x", BODY).await;
    let location = through.location.expect("a Location");
    assert_eq!(pair.assert_same("PUT", &location, BODY).await, 200);
    pair.assert_same_groups_and_healthy().await;
    assert_eq!(
        pair.node.groups().await,
        vec![labels(&[("job", "j"), ("a", "x")])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_prefix_letters_reach_the_same_group() {
    let pair = Pair::start().await;
    for target in [
        "/metrics/%6Aob/j",
        "/%6Detrics/job/j/a/x",
        "/metrics%2Fjob/k",
        "/metrics/job%40base64/bA",
    ] {
        assert_eq!(pair.assert_same("PUT", target, BODY).await, 200, "{target}");
    }
    pair.assert_same_groups_and_healthy().await;
    assert_eq!(pair.node.groups().await.len(), 4);
    assert_eq!(
        pair.assert_same("DELETE", "/metrics/jo%62/j", "").await,
        202
    );
    assert_eventually_eq(
        SETTLE,
        || async { pair.node.groups().await.len() },
        3,
        "the DELETE removed one of the four groups",
    )
    .await;
    pair.assert_same_groups_and_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_with_a_non_utf8_value_is_forwarded_and_accepted() {
    let pair = Pair::start().await;
    assert_eq!(
        pair.assert_same("PUT", "/metrics/job/keep", BODY).await,
        200
    );
    for target in [
        "/metrics/job/j/a/%FF",
        "/metrics/job/%C3",
        "/metrics/job@base64/_w",
        "/metrics/job/j/a@base64/_w/b/y",
    ] {
        assert_eq!(
            pair.assert_same("DELETE", target, "").await,
            202,
            "{target}"
        );
        let (_, through) = pair.both("DELETE", target, "").await;
        assert_eq!(
            through.node.as_deref(),
            Some(pair.node.addr().as_str()),
            "DELETE {target} was answered by the node"
        );
    }
    pair.assert_same_groups_and_healthy().await;
    // A push with such a value still never reaches a node (it would break it); the reference is not asked.
    let push = raw(&pair.gateway.addr(), "PUT", b"/metrics/job/j/a/%FF", BODY).await;
    assert_eq!(push.status, 400, "{}", push.body);
    assert!(push.body.contains("UTF-8"), "{}", push.body);
    assert!(push.node.is_none());
    pair.assert_same_groups_and_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_label_counts_by_its_last_value_only() {
    let pair = Pair::start().await;
    for target in [
        "/metrics/job/j/a/%FF/a/x",
        "/metrics/job/j/b@base64/_w/b/y",
        "/metrics/job/k/job/%FF",
    ] {
        assert_eq!(pair.assert_same("PUT", target, BODY).await, 200, "{target}");
    }
    pair.assert_same_groups_and_healthy().await;
    assert_eq!(
        sorted(pair.node.groups().await),
        sorted(vec![
            labels(&[("job", "j"), ("a", "x")]),
            labels(&[("job", "j"), ("b", "y")]),
            labels(&[("job", "k")]),
        ])
    );
}

/// `/metrics/job/long/a/vvv…` exactly `len` bytes long.
fn long_target(len: usize) -> String {
    let prefix = "/metrics/job/long/a/";
    format!("{prefix}{}", "v".repeat(len - prefix.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_hypers_limit_is_414_and_one_at_the_limit_is_forwarded() {
    let pair = Pair::start().await;
    assert_eq!(
        pair.assert_same("PUT", &long_target(MAX_TARGET), BODY)
            .await,
        200
    );
    pair.assert_same_groups_and_healthy().await;
    // Deliberate difference (README): the Pushgateway takes up to ~1 MB, hyper refuses more than 65534 bytes.
    for len in [MAX_TARGET + 1, 100_000] {
        let (direct, through) = pair.both("PUT", &long_target(len), BODY).await;
        assert_eq!(direct.status, 200, "{len} bytes to the Pushgateway");
        assert_eq!(through.status, 414, "{len} bytes to the gateway");
    }
    assert_eq!(
        pair.assert_same("PUT", "/metrics/job/after", BODY).await,
        200
    );
    // Not silent: counted, and logged (at most every 10 s, so once here) with what to do about it. Hyper writes
    // the 414 before the connection task sees the error and counts it, so the client can be faster than the count.
    let too_large = || async {
        let metrics = pair
            .gateway
            .request(reqwest::Method::GET, "/-/metrics", "")
            .await
            .body;
        metric_sum(&metrics, "dynamic_sharding_http_requests_too_large_total")
    };
    let counted = wait_until(secs(10), POLL_INTERVAL, || async {
        too_large().await >= 2.0
    })
    .await;
    assert!(
        counted.is_ok(),
        "{counted:?}: {} counted",
        too_large().await
    );
    assert_eq!(too_large().await, 2.0);
    let warned_once = || {
        pair.gateway
            .log_text()
            .lines()
            .any(|line| line.contains("level=warn") && line.contains("over 65534 bytes (414)"))
    };
    let logged = wait_until(secs(10), POLL_INTERVAL, || async { warned_once() }).await;
    assert!(logged.is_ok(), "{logged:?}: {}", pair.gateway.log_text());
    let log = pair.gateway.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("level=warn") && line.contains("over 65534 bytes (414)"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
}

// ---------------------------------------------------------------------------------------------------------------
// The differential test

/// What the generator knows about a request, for the classification of deliberate differences.
#[derive(Default)]
struct Traits {
    /// The job (or, after a route error, nothing) is empty: the gateway's clear 400.
    empty_job: bool,
    /// A `job@base64` value that does not decode: it hangs the reference's handler, so it is not sent there.
    invalid_base64_job: bool,
    /// A push whose stored key would have a non-UTF-8 value: it breaks the reference, so it is not sent there.
    non_utf8_push: bool,
    /// Raw `<`, `>` or `` ` `` in the target, which hyper's parser refuses.
    raw_char_hyper_refuses: bool,
    /// Over hyper's request-target limit.
    too_long: bool,
}

/// Why a request's answers may differ, as README.md lists it; `None`: they must agree.
fn deliberate(
    traits: &Traits,
    method: &str,
    direct: Option<&Answer>,
    through: &Answer,
) -> Option<&'static str> {
    if traits.too_long && through.status == 414 {
        return Some("target over 65534 bytes: 414");
    }
    if traits.raw_char_hyper_refuses && through.status == 400 {
        return Some("raw < > ` in the target: 400");
    }
    if direct.is_none() && through.status == 400 {
        return Some(if traits.invalid_base64_job {
            "invalid base64 job (hangs a Pushgateway): 400, reference not asked"
        } else {
            "non-UTF-8 value in a push (breaks a Pushgateway): 400, reference not asked"
        });
    }
    let direct = direct?;
    if traits.empty_job
        && matches!(method, "PUT" | "POST" | "DELETE")
        && through.status == 400
        && through.body.starts_with("empty job name")
        && matches!(direct.status, 307 | 404)
    {
        return Some("empty job: 400 instead of 307/404");
    }
    None
}

/// Builds random push and delete requests over the grammar's corners. Label values are never empty: `{a=""}`
/// next to `{}` breaks a Pushgateway, and the gateway is to fold the two into one group (issue 10, point 3),
/// which a lone Pushgateway does not, so such pushes would make the two stores diverge.
struct Generator {
    rng: StdRng,
}

/// A generated value segment and what it decodes to.
struct Value {
    segment: String,
    /// Decodes (base64) to bytes that are not UTF-8, or percent-decodes to such bytes.
    non_utf8: bool,
    /// A base64 value that does not decode.
    invalid_base64: bool,
}

impl Generator {
    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.rng.random_range(0..choices.len())]
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    /// A plain (not base64) value: tokens, escapes, separators, dots, long runs, non-UTF-8 escapes.
    fn plain_value(&mut self, traits: &mut Traits) -> Value {
        let segment = match self.rng.random_range(0..20) {
            0 => "%FF".to_owned(),
            1 => format!("x%C3{}", self.pick(&["", "%A9"])),
            2 => "x%2Fy".to_owned(),
            3 => self.pick(&[".", "..", "%2E", ".x", "..."]).to_owned(),
            4 => "%zz".to_owned(),
            5 => self
                .pick(&[
                    "a+b;c~d",
                    "sp%20ace",
                    "%22q%22",
                    "%C3%A9t%C3%A9",
                    "{x}|^",
                    "50%25",
                    "%6Aob",
                ])
                .to_owned(),
            6 => {
                traits.raw_char_hyper_refuses = true;
                self.pick(&["x<y", "x>y", "x`y"]).to_owned()
            }
            7 => "v".repeat(self.rng.random_range(100..3000)),
            _ => format!("v{}", self.rng.random_range(0..6)),
        };
        let non_utf8 = segment == "%FF" || segment == "x%C3";
        Value {
            segment,
            non_utf8,
            invalid_base64: false,
        }
    }

    /// A base64 value: valid, padded, with a skipped newline, of non-UTF-8 bytes, or not base64.
    fn base64_value(&mut self) -> Value {
        let segment = self.pick(&["eA", "eA==", "eC95", "w6k", "_w", "!!", "eA%0A"]);
        Value {
            segment: segment.to_owned(),
            non_utf8: segment == "_w",
            invalid_base64: segment == "!!",
        }
    }

    /// A request that is never ambiguous about whether it could break a Pushgateway (see [`Traits`]).
    fn request(&mut self) -> (&'static str, String, &'static str, Traits) {
        loop {
            if let Some(request) = self.try_request() {
                return request;
            }
        }
    }

    fn try_request(&mut self) -> Option<(&'static str, String, &'static str, Traits)> {
        let mut traits = Traits::default();
        let method = self.pick(&[
            "PUT", "PUT", "PUT", "POST", "POST", "DELETE", "DELETE", "OPTIONS", "PATCH",
        ]);
        let base64_job = self.chance(25);
        // Prefixes the Pushgateway routes to its handlers, and ones its router answers itself (307, 301).
        let (prefix, handler_runs) = if base64_job {
            match self.rng.random_range(0..4) {
                0 => ("/METRICS/JOB@BASE64/", false),
                1 => ("/metrics/job%40base64/", true),
                _ => ("/metrics/job@base64/", true),
            }
        } else {
            let prefix = self.pick(&[
                "/metrics/job/",
                "/metrics/job/",
                "/metrics/job/",
                "/metrics/job/",
                "/Metrics/job/",
                "/metrics/JOB/",
                "/metrics/%6Aob/",
                "/%6Detrics/job/",
                "/metrics%2Fjob/",
                "//metrics/job/",
                "/metrics/./job/",
                "/metrics/job/../job/",
            ]);
            let routed = !prefix.contains("Metrics")
                && !prefix.contains("JOB")
                && !prefix.contains("/.")
                && !prefix.starts_with("//");
            (prefix, routed)
        };
        let mut target = prefix.to_owned();
        // What the handler stores: the job, and each label's last value (a `job` label is overridden).
        let mut job_non_utf8 = false;
        let mut last_values: BTreeMap<&str, bool> = BTreeMap::new();
        // Errors the Pushgateway's handler answers before it stores anything.
        let mut rejected_by_handler = false;
        let mut pairs = 0;
        if base64_job {
            let value = if self.chance(8) {
                traits.empty_job = true;
                Value {
                    segment: "=".to_owned(),
                    non_utf8: false,
                    invalid_base64: false,
                }
            } else {
                self.base64_value()
            };
            target.push_str(&value.segment);
            traits.invalid_base64_job = value.invalid_base64;
            job_non_utf8 = value.non_utf8;
        } else if self.chance(4) {
            traits.empty_job = true;
        } else if self.chance(70) {
            target.push_str(self.pick(&["j", "batch", "j2"]));
        } else {
            let value = self.plain_value(&mut traits);
            target.push_str(&value.segment);
            job_non_utf8 = value.non_utf8;
        }
        for _ in 0..self.rng.random_range(0..4) {
            pairs += 1;
            let name = self.pick(&["a", "a", "b", "instance", "job", "A", "1x", "__r", "a-b"]);
            let base64 = self.chance(30);
            target.push('/');
            target.push_str(name);
            target.push_str(if base64 { "@base64/" } else { "/" });
            let value = if base64 {
                self.base64_value()
            } else {
                self.plain_value(&mut traits)
            };
            target.push_str(&value.segment);
            rejected_by_handler |=
                value.invalid_base64 || !matches!(name, "a" | "b" | "instance" | "job" | "A");
            if name != "job" {
                last_values.insert(name, value.non_utf8);
            }
        }
        if self.chance(2) {
            let filler = MAX_TARGET + 10 - target.len().min(MAX_TARGET);
            target.push_str("/long/");
            target.push_str(&"w".repeat(filler));
            traits.too_long = true;
        }
        match self.rng.random_range(0..20) {
            0 => {
                target.push_str("/a");
                rejected_by_handler = true;
            }
            1 => {
                target.push('/');
                rejected_by_handler |= pairs > 0 || traits.too_long;
            }
            2 => target.push_str("?x=1"),
            3 => target.push_str("//b/y"),
            _ => {}
        }
        // Go's router answers unclean paths (301) and bad escapes (400) before any handler runs.
        let path = target.split('?').next().unwrap_or_default();
        let handler_runs = handler_runs && is_clean_and_decodable(path);
        // A `%2F` in a value moves the separators the flags above assume: such requests are generated only
        // without non-UTF-8 values, so they can never break the reference.
        let any_non_utf8 = job_non_utf8
            || ["%FF", "_w", "x%C3/"].iter().any(|s| target.contains(s))
            || target.ends_with("x%C3");
        if handler_runs && any_non_utf8 && path.contains("%2F") {
            return None;
        }
        let handled = handler_runs && matches!(method, "PUT" | "POST" | "DELETE");
        traits.invalid_base64_job &= handled;
        traits.non_utf8_push = handled
            && method != "DELETE"
            && !rejected_by_handler
            && !traits.empty_job
            && !traits.invalid_base64_job
            && (job_non_utf8 || last_values.values().any(|non_utf8| *non_utf8));
        let body = match self.rng.random_range(0..10) {
            0 => "not a metric line\n",
            1 => "dup 1\ndup 2\n",
            2 => "",
            3 => "# TYPE parity_counter_total counter\nparity_counter_total 3\n",
            _ => BODY,
        };
        Some((method, target, body, traits))
    }
}

/// Whether Go would hand `path` to its router unchanged: every `%XX` escape valid, and no empty (except a
/// last), `.` or `..` segment once decoded. Written here independently of the gateway's parser.
fn is_clean_and_decodable(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let Some(byte) = path
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            else {
                return false;
            };
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    let segments: Vec<&[u8]> = decoded[1..].split(|b| *b == b'/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .all(|(i, segment)| !matches!(*segment, b"." | b"..") && (i == last || !segment.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_random_push_paths_get_the_lone_pushgateways_status() {
    const REQUESTS: usize = 600;
    let seed = std::env::var("DS_PARITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201_u64);
    let pair = Pair::start().await;
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
    };
    let mut agreed = 0;
    let mut deliberate_counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut disagreements = Vec::new();
    let mut status_counts: BTreeMap<u16, usize> = BTreeMap::new();
    for index in 0..REQUESTS {
        let (method, target, body, traits) = generator.request();
        // Requests that break a Pushgateway never reach the reference (nor, the gateway rejects them, the node).
        let unsafe_for_reference = traits.invalid_base64_job || traits.non_utf8_push;
        let direct = if unsafe_for_reference {
            None
        } else {
            Some(raw(&pair.reference.addr(), method, target.as_bytes(), body).await)
        };
        let through = raw(&pair.gateway.addr(), method, target.as_bytes(), body).await;
        *status_counts.entry(through.status).or_default() += 1;
        let same = direct
            .as_ref()
            .is_some_and(|d| d.status == through.status && d.location == through.location);
        if same {
            agreed += 1;
        } else if let Some(reason) = deliberate(&traits, method, direct.as_ref(), &through) {
            *deliberate_counts.entry(reason).or_default() += 1;
        } else {
            let shown: String = target.chars().take(160).collect();
            disagreements.push(format!(
                "#{index} {method} {shown}: gateway {} {:?} {:?}, Pushgateway {:?}",
                through.status,
                through.location,
                through.body.chars().take(160).collect::<String>(),
                direct.as_ref().map(|d| (
                    d.status,
                    &d.location,
                    d.body.chars().take(160).collect::<String>()
                ))
            ));
        }
        if index % 100 == 99 {
            // Neither store was poisoned (a poisoned one would make every later answer agree on 400/500).
            for pushgateway in [&pair.reference, &pair.node] {
                let reply = raw(&pushgateway.addr(), "GET", b"/metrics", "").await;
                assert_eq!(
                    reply.status,
                    200,
                    "after #{index}, {} /metrics: {}",
                    pushgateway.addr(),
                    reply.body
                );
            }
        }
    }
    println!(
        "differential (seed {seed}): {agreed} of {REQUESTS} statuses agreed; deliberate differences: \
         {deliberate_counts:?}; disagreements: {}; gateway statuses: {status_counts:?}",
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // Both stores saw the same accepted pushes, except those only the reference took (over-long targets, raw
    // characters hyper refuses).
    let only_reference = |group: &BTreeMap<String, String>| {
        group.keys().any(|name| name == "long")
            || group.values().any(|value| value.contains(['<', '>', '`']))
    };
    let reference_groups = || async {
        sorted(pair.reference.groups().await)
            .into_iter()
            .filter(|group| !only_reference(group))
            .collect::<Vec<_>>()
    };
    // The last requests may be DELETEs, which a Pushgateway applies after its 202: wait for the two to agree.
    let agreed = wait_until(SETTLE, POLL_INTERVAL, || async {
        sorted(pair.node.groups().await) == reference_groups().await
    })
    .await;
    let node_groups = sorted(pair.node.groups().await);
    assert!(!node_groups.is_empty(), "some pushes were stored");
    assert_eq!(node_groups, reference_groups().await, "{agreed:?}");
}

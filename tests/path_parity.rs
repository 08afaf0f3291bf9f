//! Push paths through the gateway answer like a lone Pushgateway 1.5.1: each request goes to a reference
//! Pushgateway and, through the gateway (proxy mode), to another one, and the answers are compared. What differs
//! on purpose is what README.md lists under "Push paths: parity with a lone Pushgateway".

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
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
        assert_eq!(
            sorted(self.node.groups().await),
            sorted(self.reference.groups().await)
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
    pair.assert_same_groups_and_healthy().await;
    assert_eq!(pair.node.groups().await.len(), 3);
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
}

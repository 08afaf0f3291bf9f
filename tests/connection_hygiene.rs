//! Client connections against the real gateway binary: header-read and idle timeouts, the connection cap, the
//! memory budget for request bodies, early refusal of oversized bodies, and accept errors (out of descriptors).

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(node: &Pushgateway, extra: &str) -> String {
    format!(
        "pushgateway:\n  servers: [\"{}\"]\nhealth_check: {{interval: 500ms, timeout: 400ms}}\n{extra}",
        node.addr()
    )
}

/// A status line and headers as read from a raw connection.
struct Head {
    status: u16,
    text: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads one response head (up to the blank line); `None` if the connection closed or failed first.
async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => bytes.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some(Head { status, text })
}

/// Reads one whole response with a `Content-Length` body; returns its head and body.
async fn read_response(stream: &mut TcpStream) -> Option<(Head, String)> {
    let head = read_head(stream).await?;
    let length: usize = head.header("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

async fn get(stream: &mut TcpStream, path: &str) -> Option<(Head, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream).await
}

/// Whether the peer has closed `stream` (end of stream or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an error answer before closing is fine
        }
    }
}

fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_dripped_slower_than_the_header_read_timeout_is_closed() {
    let node = Pushgateway::start().await;
    let gateway = Gateway::start(&config(
        &node,
        "web: {header_read_timeout: 1s, idle_timeout: 1s}\n",
    ))
    .await;
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    // One byte every 100 ms of a head that never ends, until the gateway closes the connection.
    let drip = async {
        let head = format!(
            "GET /-/healthy HTTP/1.1\r\nHost: gateway\r\nX-Slow: {}",
            "a".repeat(10_000)
        );
        for byte in head.as_bytes() {
            if writer.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 256];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    };
    let closed = tokio::select! {
        closed = tokio::time::timeout(secs(30), closed) => closed.unwrap_or(false),
        () = drip => false,
    };
    assert!(
        closed,
        "a dripping head must be cut off by web.header_read_timeout"
    );
    let healthy = gateway.request(Method::GET, "/-/healthy", "").await;
    assert_eq!(healthy.status, StatusCode::OK, "the gateway keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let node = Pushgateway::start().await;
    // The header timer (60 s) would close it too, but only much later than the idle timeout.
    let gateway = Gateway::start(&config(
        &node,
        "web: {header_read_timeout: 60s, idle_timeout: 1s}\n",
    ))
    .await;
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let (head, _) = get(&mut stream, "/-/healthy")
        .await
        .expect("a first answer");
    assert_eq!(head.status, 200);
    assert!(
        closed_within(&mut stream, secs(30)).await,
        "an idle keep-alive connection must be closed by web.idle_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_web_max_connections_wait_until_one_closes() {
    let node = Pushgateway::start().await;
    let gateway = Gateway::start_with_args(&config(&node, ""), &["--web.max-connections=2"]).await;
    // Both slots taken by keep-alive connections that were served (the harness' readiness connection may hold
    // one for a moment; a connection waits for it to close, so allow a generous wait).
    let mut first = TcpStream::connect(gateway.addr()).await.unwrap();
    let mut second = TcpStream::connect(gateway.addr()).await.unwrap();
    for stream in [&mut first, &mut second] {
        let answer = tokio::time::timeout(secs(30), get(stream, "/-/healthy")).await;
        assert_eq!(answer.ok().flatten().map(|(h, _)| h.status), Some(200));
    }
    let (_, metrics) = get(&mut second, "/-/metrics").await.expect("metrics");
    assert_eq!(
        metric_value(&metrics, "dynamic_sharding_http_connections_open"),
        Some(2.0),
        "{metrics}"
    );

    // A third connection is not accepted while both are open: its request gets no answer.
    let mut third = TcpStream::connect(gateway.addr()).await.unwrap();
    third
        .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    // A negative check with a bounded window: while both slots are held the third cannot be served at all, so a
    // slow machine cannot fail it; a gateway ignoring the cap would answer within the second.
    let early = tokio::time::timeout(Duration::from_secs(1), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "the third connection was served beyond the cap"
    );

    // Once one closes, the waiting connection is served.
    drop(first);
    let answer = tokio::time::timeout(secs(30), read_response(&mut third)).await;
    assert_eq!(answer.ok().flatten().map(|(h, _)| h.status), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_memory_budget_get_503_with_retry_after_and_memory_stays_bounded() {
    const BODY: usize = 8 << 20;
    let node = Pushgateway::start().await;
    let gateway = Gateway::start(&config(
        &node,
        "proxy: {max_body_size: 8MiB, max_body_memory: 20MiB, client_body_timeout: 5m}\n",
    ))
    .await;
    // The push that fits (below) needs its node in the ring; the first probe fills it after `/-/healthy` answers.
    gateway.wait_for_ring_size(1).await;
    let head = |job: &str| {
        format!(
            "PUT /metrics/job/{job} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {BODY}\r\n\r\n"
        )
    };

    // Two uploads that send all but their last byte and stall, holding 16 MiB of the 20 MiB budget.
    let mut stalled = Vec::new();
    for job in ["stalled_a", "stalled_b"] {
        let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
        stream.write_all(head(job).as_bytes()).await.unwrap();
        stream.write_all(&vec![b'#'; BODY - 1]).await.unwrap();
        stalled.push(stream);
    }
    wait_until(secs(30), POLL_INTERVAL, || async {
        let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
        metric_value(&metrics, "dynamic_sharding_request_body_bytes_in_use")
            == Some((2 * BODY) as f64)
    })
    .await
    .expect("both stalled bodies hold their bytes");

    // Eighteen more uploads of the same size: each is answered 503 with Retry-After, without growing memory.
    for index in 0..18 {
        let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
        stream
            .write_all(head(&format!("refused_{index}")).as_bytes())
            .await
            .unwrap();
        let (mut reader, mut writer) = stream.split();
        // The client keeps sending its body; the answer must not wait for it.
        let send_body = async {
            let _ = writer.write_all(&vec![b'#'; BODY - 1]).await;
            std::future::pending::<()>().await;
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(secs(30), async {
                let mut bytes = Vec::new();
                let mut byte = [0u8; 1];
                while !bytes.ends_with(b"\r\n\r\n") {
                    match reader.read(&mut byte).await {
                        Ok(1) => bytes.push(byte[0]),
                        _ => break,
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }) => answer.unwrap_or_default(),
            () = send_body => unreachable!(),
        };
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "upload {index}: {answer:?}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1\r\n"),
            "upload {index}: {answer:?}"
        );
    }

    // Other requests are served meanwhile, pushes that fit included.
    let push = gateway
        .request(Method::PUT, "/metrics/job/small", "small_gauge 1\n")
        .await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.body);
    assert!(node.metrics_text().await.contains("small_gauge"));
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        metric_value(&metrics, "dynamic_sharding_request_bodies_refused_total")
            .is_some_and(|refused| refused >= 18.0),
        "{metrics}"
    );
    // 16 MiB of stalled bodies plus the process itself; 20 uploads of 8 MiB held would be 160 MiB.
    let rss_mib = vm_rss_kib(gateway.pid()) / 1024;
    assert!(rss_mib < 120, "gateway RSS {rss_mib} MiB");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_max_body_size_gets_413_before_it_is_sent() {
    let node = Pushgateway::start().await;
    // Short connection timeouts: waiting for a body after a 100 Continue must not count as idle.
    let gateway = Gateway::start(&config(
        &node,
        "proxy: {max_body_size: 1KiB}\nweb: {header_read_timeout: 1s, idle_timeout: 1s}\n",
    ))
    .await;
    gateway.wait_for_ring_size(1).await;

    // With Expect: 100-continue the client waits for permission: the answer is 413, never 100.
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    stream
        .write_all(
            b"PUT /metrics/job/big HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let head = tokio::time::timeout(secs(30), read_head(&mut stream))
        .await
        .ok()
        .flatten()
        .expect("an answer without sending the body");
    assert_eq!(head.status, 413, "{}", head.text);

    // Without Expect the answer does not wait for the body either.
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    stream
        .write_all(
            b"PUT /metrics/job/big HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1025\r\n\r\n",
        )
        .await
        .unwrap();
    let head = tokio::time::timeout(secs(30), read_head(&mut stream))
        .await
        .ok()
        .flatten()
        .expect("an answer before the body");
    assert_eq!(head.status, 413, "{}", head.text);

    // A body within the limit with Expect: 100-continue still gets its 100 and goes through.
    const FITS: &str = "fits_gauge 1\n";
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let head = format!(
        "PUT /metrics/job/fits HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        FITS.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let continue_head = tokio::time::timeout(secs(30), read_head(&mut stream))
        .await
        .ok()
        .flatten()
        .expect("100 Continue");
    assert_eq!(continue_head.status, 100, "{}", continue_head.text);
    // A client slower than the idle timeout to send its body after the 100 Continue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.write_all(FITS.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(secs(30), read_head(&mut stream))
        .await
        .ok()
        .flatten()
        .expect("an answer to the push");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(node.metrics_text().await.contains("fits_gauge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_is_logged_counted_and_recovers_when_connections_close() {
    let node = Pushgateway::start().await;
    let gateway = Gateway::start(&config(&node, "")).await;
    let pid = gateway.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 8;
    let status = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:{limit}")])
        .status()
        .expect("run prlimit");
    assert!(status.success());

    // Far more connections than descriptors left: accepting fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(gateway.addr()).await.unwrap());
    }
    wait_until(secs(30), POLL_INTERVAL, || async {
        gateway.log_text().contains("cannot accept a connection")
    })
    .await
    .unwrap_or_else(|e| panic!("no accept error logged: {e}\n{}", gateway.log_text()));
    assert!(gateway.log_text().contains("level=error"));

    drop(held);
    wait_until(secs(30), POLL_INTERVAL, || async {
        let client = http_client();
        let Ok(reply) = send(
            &client,
            Method::GET,
            &format!("{}/-/metrics", gateway.url()),
            "",
        )
        .await
        else {
            return false;
        };
        metric_value(&reply.body, "dynamic_sharding_http_accept_errors_total")
            .is_some_and(|n| n >= 1.0)
    })
    .await
    .expect("the gateway serves again and counted the accept errors");
    // Probes that needed a new socket failed while descriptors were out, and may have taken the node out of the
    // ring; recovered, the next probe puts it back.
    gateway.wait_for_ring_size(1).await;
    let push = gateway
        .request(Method::PUT, "/metrics/job/after_emfile", "after_gauge 1\n")
        .await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_push_finish_then_exits_zero() {
    const BODY: &str = "inflight_gauge 7\n";
    let node = Pushgateway::start().await;
    let mut gateway = Gateway::start(&config(&node, "")).await;
    gateway.wait_for_ring_size(1).await;
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    let head = format!(
        "PUT /metrics/job/inflight HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The push is in its handler once its declared body is held from the budget.
    wait_until(secs(30), POLL_INTERVAL, || async {
        let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
        metric_value(&metrics, "dynamic_sharding_request_body_bytes_in_use")
            == Some(BODY.len() as f64)
    })
    .await
    .expect("the push reached its handler");

    gateway.signal("TERM");
    wait_until(secs(30), POLL_INTERVAL, || async {
        gateway.log_text().contains("shutting down gracefully")
    })
    .await
    .expect("the gateway began shutting down");
    stream.write_all(BODY.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(secs(30), read_response(&mut stream)).await;
    assert_eq!(answer.ok().flatten().map(|(h, _)| h.status), Some(200));
    assert!(node.metrics_text().await.contains("inflight_gauge"));
    wait_until(secs(30), POLL_INTERVAL, || {
        let exited = gateway.exit_status().is_some();
        async move { exited }
    })
    .await
    .expect("the gateway exits once the push is done");
    assert!(
        gateway.exit_status().is_some_and(|s| s.success()),
        "{}",
        gateway.log_text()
    );
}

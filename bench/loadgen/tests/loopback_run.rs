//! Runs the load loop against small in-process HTTP servers on 127.0.0.1 and checks what it counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use ds_loadgen::body::{exposition_body, BodySpec, TEXT_CONTENT_TYPE};
use ds_loadgen::load::{group_paths, run, Limit, LoadPlan};
use ds_loadgen::stats::{Report, RunDescription};
use ds_loadgen::target::LoopbackEndpoint;

/// What the test server does with each request.
#[derive(Clone)]
enum Behaviour {
    /// 200 when the body arrived whole with the right method and headers, 400 otherwise.
    Accept { expected_body: Bytes },
    /// 307 to `base` + the request path.
    RedirectTo { base: String },
}

struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

async fn start_server(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (requests_seen, connections_seen) = (Arc::clone(&requests), Arc::clone(&connections));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections_seen.fetch_add(1, Ordering::Relaxed);
            let behaviour = behaviour.clone();
            let requests_seen = Arc::clone(&requests_seen);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let behaviour = behaviour.clone();
                    let requests_seen = Arc::clone(&requests_seen);
                    async move {
                        requests_seen.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(respond(behaviour, request).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        requests,
        connections,
    }
}

async fn respond(behaviour: Behaviour, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let has_host = request.headers().contains_key(http::header::HOST);
    let content_type_ok = request.headers().get(http::header::CONTENT_TYPE)
        == Some(&HeaderValue::from_static(TEXT_CONTENT_TYPE));
    let is_put = request.method() == Method::PUT;
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let mut response = Response::new(Full::new(Bytes::new()));
    match behaviour {
        Behaviour::Accept { expected_body } => {
            let whole = body.map(|b| b == expected_body).unwrap_or(false);
            let valid =
                whole && has_host && content_type_ok && is_put && path.starts_with("/metrics/job/");
            if !valid {
                *response.status_mut() = StatusCode::BAD_REQUEST;
            }
        }
        Behaviour::RedirectTo { base } => {
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let location = HeaderValue::from_str(&format!("{base}{path}")).expect("ascii location");
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
        }
    }
    response
}

fn plan(
    target: &str,
    requests: u64,
    follow_redirects: bool,
    expected_status: Option<StatusCode>,
) -> Arc<LoadPlan> {
    let target = LoopbackEndpoint::parse(target).expect("loopback target");
    Arc::new(LoadPlan {
        paths: group_paths(&target.path_prefix, "bench", 10, 3),
        target,
        method: Method::PUT,
        body: Bytes::from(exposition_body(BodySpec::default())),
        content_type: HeaderValue::from_static(TEXT_CONTENT_TYPE),
        concurrency: 4,
        limit: Limit {
            duration: Some(Duration::from_secs(60)),
            requests: Some(requests),
        },
        follow_redirects,
        max_redirects: 3,
        request_timeout: Duration::from_secs(10),
        expected_status,
    })
}

async fn report_of(plan: Arc<LoadPlan>) -> Report {
    let (stats, elapsed) = run(plan).await;
    Report::new(
        RunDescription {
            label: "test".into(),
            target: String::new(),
            method: "PUT".into(),
            concurrency: 4,
            groups: 10,
            body_bytes: 0,
            follow_redirects: false,
        },
        &stats,
        elapsed,
    )
}

fn body() -> Bytes {
    Bytes::from(exposition_body(BodySpec::default()))
}

#[tokio::test]
async fn pushes_exactly_n_requests_over_c_keep_alive_connections() {
    let upstream = start_server(Behaviour::Accept {
        expected_body: body(),
    })
    .await;
    let report = report_of(plan(&format!("http://{}", upstream.addr), 200, false, None)).await;
    assert_eq!(report.ok, 200, "{report:?}");
    assert_eq!(report.errors_total, 0, "{report:?}");
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 200);
    assert_eq!(
        upstream.connections.load(Ordering::Relaxed),
        4,
        "one connection per worker"
    );
}

#[tokio::test]
async fn follows_307_and_resends_the_body() {
    let upstream = start_server(Behaviour::Accept {
        expected_body: body(),
    })
    .await;
    let redirector = start_server(Behaviour::RedirectTo {
        base: format!("http://127.0.0.1:{}", upstream.addr.port()),
    })
    .await;
    let report = report_of(plan(&format!("http://{}", redirector.addr), 40, true, None)).await;
    assert_eq!(report.ok, 40, "{report:?}");
    assert_eq!(report.redirects_followed, 40);
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 40);
    assert_eq!(redirector.requests.load(Ordering::Relaxed), 40);
}

#[tokio::test]
async fn unfollowed_redirects_count_as_3xx_unless_expected() {
    let redirector = start_server(Behaviour::RedirectTo {
        base: "http://127.0.0.1:1".into(),
    })
    .await;
    let target = format!("http://{}", redirector.addr);
    let report = report_of(plan(&target, 10, false, None)).await;
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.get("status_3xx"), Some(&10), "{report:?}");

    let report = report_of(plan(
        &target,
        10,
        false,
        Some(StatusCode::TEMPORARY_REDIRECT),
    ))
    .await;
    assert_eq!(report.ok, 10, "{report:?}");
}

#[tokio::test]
async fn refuses_to_follow_a_redirect_off_loopback() {
    let redirector = start_server(Behaviour::RedirectTo {
        base: "http://10.0.0.1:9091".into(),
    })
    .await;
    let report = report_of(plan(&format!("http://{}", redirector.addr), 8, true, None)).await;
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.errors.get("redirect_refused"),
        Some(&8),
        "{report:?}"
    );
}

#[tokio::test]
async fn closed_port_counts_connect_errors_and_still_stops() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let report = report_of(plan(&format!("http://127.0.0.1:{port}"), 12, false, None)).await;
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.get("connect"), Some(&12), "{report:?}");
}

//! Runs the load loop against small in-process HTTP servers on 127.0.0.1 and checks what it counts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use ds_loadgen::body::{exposition_body, BodySpec, TEXT_CONTENT_TYPE};
use ds_loadgen::load::{group_paths, run, Limit, LoadPlan, Walk};
use ds_loadgen::stats::{FillReport, Report, RunDescription};
use ds_loadgen::target::LoopbackEndpoint;

/// What the test server does with each request.
#[derive(Clone)]
enum Behaviour {
    /// 200 when the body arrived whole with the right method and headers, 400 otherwise.
    Accept { expected_body: Bytes },
    /// 307 to `base` + the request path.
    RedirectTo { base: String },
    /// Counts each path it is sent in `seen`. Group `i-<n>` is answered after `slow` when `n % 4 == 0`, and with
    /// 503 when `n % 10 == 7` and `refuse_some` is set; others get 200 when the push arrived whole, as `Accept`.
    Record {
        expected_body: Bytes,
        seen: Arc<Mutex<BTreeMap<String, u64>>>,
        slow: Duration,
        refuse_some: bool,
    },
}

struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

async fn start_server(behaviour: Behaviour) -> Server {
    serve(behaviour, None).await
}

/// Serves `behaviour` on a loopback port, counting connections (after the TLS handshake, when `tls` is given)
/// and requests. With `tls`: connections must complete the handshake of the acceptor, and a request without
/// exactly the given `Authorization` gets 401.
async fn serve(
    behaviour: Behaviour,
    tls: Option<(tokio_rustls::TlsAcceptor, HeaderValue)>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (requests_seen, connections_seen) = (Arc::clone(&requests), Arc::clone(&connections));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let behaviour = behaviour.clone();
            let tls = tls.clone();
            let requests_seen = Arc::clone(&requests_seen);
            let connections_seen = Arc::clone(&connections_seen);
            tokio::spawn(async move {
                match tls {
                    None => {
                        connections_seen.fetch_add(1, Ordering::Relaxed);
                        serve_connection(stream, behaviour, None, requests_seen).await;
                    }
                    Some((acceptor, authorization)) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return; // a client that does not trust the certificate
                        };
                        connections_seen.fetch_add(1, Ordering::Relaxed);
                        serve_connection(stream, behaviour, Some(authorization), requests_seen)
                            .await;
                    }
                }
            });
        }
    });
    Server {
        addr,
        requests,
        connections,
    }
}

/// HTTP/1.1 on one connection: each request counted, answered by [`respond`]; 401 instead when `authorization`
/// is required and the request does not carry it.
async fn serve_connection<Io>(
    io: Io,
    behaviour: Behaviour,
    authorization: Option<HeaderValue>,
    requests_seen: Arc<AtomicU64>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let behaviour = behaviour.clone();
        let authorization = authorization.clone();
        let requests_seen = Arc::clone(&requests_seen);
        async move {
            requests_seen.fetch_add(1, Ordering::Relaxed);
            let authorized = authorization.as_ref().is_none_or(|authorization| {
                request.headers().get(http::header::AUTHORIZATION) == Some(authorization)
            });
            let mut response = respond(behaviour, request).await;
            if !authorized {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
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
        Behaviour::Record {
            expected_body,
            seen,
            slow,
            refuse_some,
        } => {
            *seen
                .lock()
                .expect("no test thread panicked holding it")
                .entry(path.clone())
                .or_insert(0) += 1;
            let n = group_number(&path);
            if n.is_multiple_of(4) {
                tokio::time::sleep(slow).await;
            }
            let whole = body.map(|b| b == expected_body).unwrap_or(false);
            if refuse_some && n % 10 == 7 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            } else if !(whole && content_type_ok && is_put) {
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

/// `n` of a path `.../instance/i-<n>[/zone/...]`.
fn group_number(path: &str) -> usize {
    path.split("/instance/i-")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{path} is not a loadgen group path"))
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
        walk: Walk::RoundRobin,
        follow_redirects,
        max_redirects: 3,
        request_timeout: Duration::from_secs(10),
        expected_status,
        tls: None,
        authorization: None,
    })
}

async fn report_of(plan: Arc<LoadPlan>) -> Report {
    let (groups, fill) = (plan.paths.len(), plan.walk == Walk::EachGroupOnce);
    let (stats, elapsed) = run(plan).await;
    Report::new(
        RunDescription {
            label: "test".into(),
            target: String::new(),
            method: "PUT".into(),
            concurrency: 4,
            groups,
            body_bytes: 0,
            follow_redirects: false,
            fill,
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

/// A CA and a server certificate for 127.0.0.1 signed by it, made with `openssl` in a temp dir.
struct TestPki {
    dir: std::path::PathBuf,
}

impl TestPki {
    fn generate(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("ds-loadgen-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = |file: &str| dir.join(file).display().to_string();
        let openssl = |args: &[&str]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (scripts/install-test-deps.sh installs it)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "1", "-subj", "/CN=loadgen-test-ca"],
                &["-keyout", &path("ca.key"), "-out", &path("ca.crt")],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-subj", "/CN=loadgen-test-server"],
                &["-keyout", &path("server.key"), "-out", &path("server.csr")],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.crt"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &path("server.ext"),
            "-out",
            &path("server.crt"),
        ]);
        TestPki { dir }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An https server with `pki`'s certificate that answers 200 only to a whole push carrying `authorization`.
async fn start_tls_server(pki: &TestPki, authorization: HeaderValue) -> Server {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(pki.file("server.crt"))
        .expect("server.crt")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificate");
    let key = PrivateKeyDer::from_pem_file(pki.file("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(
        Behaviour::Accept {
            expected_body: body(),
        },
        Some((acceptor, authorization)),
    )
    .await
}

#[tokio::test]
async fn pushes_over_https_with_basic_auth_trusting_only_the_given_ca() {
    let pki = TestPki::generate("https");
    let other = TestPki::generate("other-ca");
    // "pusher:secret"
    let authorization = HeaderValue::from_static("Basic cHVzaGVyOnNlY3JldA==");
    let server = start_tls_server(&pki, authorization.clone()).await;
    let https_plan = |ca: &TestPki, authorization: Option<HeaderValue>| {
        let mut plan = plan(&format!("https://{}", server.addr), 40, false, None);
        let plan_mut = Arc::get_mut(&mut plan).expect("not shared yet");
        plan_mut.tls =
            Some(ds_loadgen::tls::TlsClient::trusting(&ca.file("ca.crt")).expect("CA file"));
        plan_mut.authorization = authorization;
        plan
    };

    let trusted = https_plan(&pki, Some(authorization.clone()));
    let report = report_of(Arc::clone(&trusted)).await;
    assert_eq!(report.ok, 40, "{report:?}");
    assert_eq!(server.requests.load(Ordering::Relaxed), 40);
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        4,
        "one TLS connection per worker, kept alive"
    );
    let negotiated = trusted.tls.as_ref().and_then(|tls| tls.negotiated());
    assert!(
        negotiated
            .as_deref()
            .is_some_and(|n| n.starts_with("TLSv1_3 ")),
        "{negotiated:?}"
    );

    let report = report_of(https_plan(&pki, None)).await;
    assert_eq!(
        report.errors.get("status_4xx"),
        Some(&40),
        "no credentials: {report:?}"
    );

    let report = report_of(https_plan(&other, Some(authorization))).await;
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.errors.get("connect"),
        Some(&40),
        "a certificate from a CA not given is refused: {report:?}"
    );
    assert_eq!(server.connections.load(Ordering::Relaxed), 8);
}

/// A server that records every path it is sent (see `Behaviour::Record`).
async fn start_recorder(
    slow: Duration,
    refuse_some: bool,
) -> (Server, Arc<Mutex<BTreeMap<String, u64>>>) {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let server = start_server(Behaviour::Record {
        expected_body: body(),
        seen: Arc::clone(&seen),
        slow,
        refuse_some,
    })
    .await;
    (server, seen)
}

/// A fill plan: `groups` groups each pushed once over `concurrency` connections, within `bound`.
fn fill_plan(server: &Server, groups: usize, concurrency: usize, bound: Duration) -> Arc<LoadPlan> {
    let mut plan = plan(&format!("http://{}", server.addr), 1, false, None);
    let plan_mut = Arc::get_mut(&mut plan).expect("not shared yet");
    plan_mut.paths = group_paths("", "bench", groups, 3);
    plan_mut.concurrency = concurrency;
    plan_mut.walk = Walk::EachGroupOnce;
    plan_mut.limit = Limit {
        duration: Some(bound),
        // Ignored by a fill: it must not end the run early nor let it go on.
        requests: Some(3),
    };
    plan
}

fn seen_counts(seen: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    seen.lock()
        .expect("no test thread panicked holding it")
        .clone()
}

/// Every group's path once, and nothing else. The slow groups (every 4th, at 4 workers) are exactly the share
/// one worker gets when the workers walk their own groups: with a shared request budget instead of a shared
/// group counter, the fast workers push their own groups again while the slow one never reaches all of its own.
#[tokio::test]
async fn fill_pushes_every_group_exactly_once_even_when_one_workers_share_is_slow() {
    let (server, seen) = start_recorder(Duration::from_millis(20), false).await;
    let report = report_of(fill_plan(&server, 400, 4, Duration::from_secs(120))).await;
    let seen = seen_counts(&seen);
    let expected: BTreeMap<String, u64> = group_paths("", "bench", 400, 3)
        .into_iter()
        .map(|path| (path, 1))
        .collect();
    let pushed_twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let never_pushed: Vec<_> = expected.keys().filter(|p| !seen.contains_key(*p)).collect();
    assert!(
        pushed_twice.is_empty(),
        "pushed more than once: {pushed_twice:?}"
    );
    assert!(never_pushed.is_empty(), "never pushed: {never_pushed:?}");
    assert_eq!(seen, expected);
    assert_eq!(
        report.fill,
        Some(FillReport {
            groups: 400,
            acknowledged: 400,
            failed: 0,
            not_pushed: 0,
        }),
        "{report:?}"
    );
    assert_eq!(report.requests, 400);
    assert_eq!(server.requests.load(Ordering::Relaxed), 400);
    assert_eq!(server.connections.load(Ordering::Relaxed), 4);
}

/// A refused group counts as failed and is not pushed again.
#[tokio::test]
async fn fill_counts_refused_groups_as_failed_without_pushing_them_again() {
    let (server, seen) = start_recorder(Duration::ZERO, true).await;
    let report = report_of(fill_plan(&server, 100, 8, Duration::from_secs(120))).await;
    let seen = seen_counts(&seen);
    assert_eq!(seen.len(), 100);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(
        report.fill,
        Some(FillReport {
            groups: 100,
            acknowledged: 90,
            failed: 10,
            not_pushed: 0,
        }),
        "{report:?}"
    );
    assert_eq!(report.errors.get("status_5xx"), Some(&10), "{report:?}");
}

/// The bound ends a fill early; what was not pushed by then is counted, and nothing is pushed twice.
#[tokio::test]
async fn fill_stops_at_its_bound_and_counts_the_groups_not_pushed() {
    let (server, seen) = start_recorder(Duration::from_millis(100), false).await;
    // Every 4th group takes 100 ms; 2 workers, 0.3 s: far fewer than 1,000 groups get pushed.
    let report = report_of(fill_plan(&server, 1000, 2, Duration::from_millis(300))).await;
    let seen = seen_counts(&seen);
    let fill = report.fill.clone().expect("a fill report");
    assert!(fill.not_pushed > 0, "{fill:?}");
    assert_eq!(
        fill.acknowledged + fill.failed + fill.not_pushed,
        1000,
        "{fill:?}"
    );
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(seen.len() as u64, fill.acknowledged + fill.failed);
}

/// The command line: `--fill-groups N` pushes each group once, writes the fill counts to the JSON report, and
/// exits non-zero when the target did not acknowledge every group.
#[tokio::test]
async fn the_fill_groups_flag_reports_acknowledged_groups_and_fails_when_some_were_not() {
    for (refuse_some, expected_ok) in [(false, true), (true, false)] {
        let (server, seen) = start_recorder(Duration::ZERO, refuse_some).await;
        let dir = std::env::temp_dir().join(format!(
            "ds-loadgen-fill-{}-{refuse_some}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let json = dir.join("fill.json");
        let args = [
            "--target".to_string(),
            format!("http://{}", server.addr),
            "-c".into(),
            "3".into(),
            "--fill-groups".into(),
            "250".into(),
            "--json".into(),
            json.display().to_string(),
        ];
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ds-loadgen"))
                .args(args)
                .output()
                .expect("run ds-loadgen")
        })
        .await
        .expect("the blocking task");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), expected_ok, "{stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
        let acknowledged = if refuse_some { 225 } else { 250 };
        assert_eq!(report["fill"]["groups"], 250, "{report}");
        assert_eq!(report["fill"]["acknowledged"], acknowledged, "{report}");
        assert_eq!(report["fill"]["not_pushed"], 0, "{report}");
        assert_eq!(report["groups"], 250, "{report}");
        let seen = seen_counts(&seen);
        assert_eq!(seen.len(), 250);
        assert!(seen.values().all(|n| *n == 1), "{seen:?}");
        if refuse_some {
            assert!(
                stderr.contains(
                    "--fill-groups 250: 25 groups were not acknowledged (25 failed, 0 not pushed"
                ),
                "{stderr}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

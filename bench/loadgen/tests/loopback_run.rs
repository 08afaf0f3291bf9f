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
        tls: None,
        authorization: None,
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

//! Per-job authorization (`authorization:` in the gateway's config) on top of the listener's basic auth, with
//! real processes: the gateway serving https with `basic_auth_users`, Pushgateway 1.5.1 behind it, Python's
//! `prometheus_client` pushing and deleting with `basic_auth_handler`, and raw HTTP for every push-path spelling,
//! the admin endpoints, redirect mode and reloads.

mod common;

use std::process::Command;

use base64::Engine;
use common::tls::{bcrypt, python_https_as, Pki, SecureGateway, USERNAME};
use common::{metric_sum, Pushgateway, PythonPushOp};
use reqwest::{Method, StatusCode};

/// The users of these tests, each with its own password (`<pki password>-<user>`). `pusher` is in
/// `basic_auth_users` but not in the rules: it may only read.
const TEAM_A: &str = "team-a";
const OPS: &str = "ops";

fn password(pki: &Pki, user: &str) -> String {
    if user == USERNAME {
        pki.password.clone()
    } else {
        format!("{}-{user}", pki.password)
    }
}

/// TLS with the test certificate; `pusher`, `team-a` and `ops` as basic-auth users.
fn web_yaml(pki: &Pki) -> String {
    let mut yaml = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {USERNAME}: '{}'\n",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.hash
    );
    for user in [TEAM_A, OPS] {
        yaml.push_str(&format!("  {user}: '{}'\n", bcrypt(&password(pki, user))));
    }
    yaml
}

const RULES: &str = "authorization:\n  users:\n    team-a: {push_jobs: 'team_a_.*'}\n    ops: {push_jobs: '.*', admin: true}\n";

fn config(nodes: &[String], extra: &str) -> String {
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 200ms, timeout: 150ms, healthy_threshold: 1}}\nrebalance: {{enabled: false}}\n{extra}",
        nodes.join(", ")
    )
}

async fn request(
    gateway: &SecureGateway,
    pki: &Pki,
    user: &str,
    method: Method,
    path: &str,
) -> (StatusCode, Option<String>, String) {
    let response = pki
        .client()
        .request(method.clone(), format!("{}{path}", gateway.url()))
        .basic_auth(user, Some(password(pki, user)))
        .body("authz_test_metric 1\n")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} as {user}: {e}"));
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, location, response.text().await.unwrap_or_default())
}

async fn wait_ready(gateway: &SecureGateway, pki: &Pki) {
    common::wait_until(common::secs(20), common::POLL_INTERVAL, || async {
        request(gateway, pki, USERNAME, Method::GET, "/-/ready")
            .await
            .0
            == StatusCode::OK
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the gateway's ring never got its node ({e}): {}",
            gateway.log_text()
        )
    });
}

fn jobs(groups: &[std::collections::BTreeMap<String, String>]) -> Vec<String> {
    let mut jobs: Vec<String> = groups
        .iter()
        .filter_map(|g| g.get("job").cloned())
        .collect();
    jobs.sort();
    jobs
}

#[tokio::test]
async fn each_user_pushes_and_deletes_only_its_own_jobs_through_prometheus_client_and_raw_http() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway =
        SecureGateway::start(&pki, &config(&[node.addr()], RULES), &web_yaml(&pki), false).await;
    wait_ready(&gateway, &pki).await;
    let team_a = (TEAM_A, password(&pki, TEAM_A));
    let ops = (OPS, password(&pki, OPS));
    let as_team_a = (team_a.0, team_a.1.as_str());
    let as_ops = (ops.0, ops.1.as_str());

    // prometheus_client over https with basic_auth_handler: allowed, refused, then delete allowed and refused.
    python_https_as(
        &pki,
        &gateway.url(),
        as_team_a,
        "team_a_app",
        PythonPushOp::Push(1.0),
    )
    .await
    .expect("team-a may push team_a_app");
    python_https_as(
        &pki,
        &gateway.url(),
        as_team_a,
        "team_a_app",
        PythonPushOp::PushAdd(2.0),
    )
    .await
    .expect("team-a may push-add team_a_app");
    let refused = python_https_as(
        &pki,
        &gateway.url(),
        as_team_a,
        "team_b_app",
        PythonPushOp::Push(1.0),
    )
    .await
    .expect_err("team-a may not push team_b_app");
    assert!(refused.contains("403"), "{refused}");
    python_https_as(
        &pki,
        &gateway.url(),
        as_ops,
        "team_b_app",
        PythonPushOp::Push(3.0),
    )
    .await
    .expect("ops may push any job");
    assert_eq!(jobs(&node.groups().await), ["team_a_app", "team_b_app"]);
    let refused = python_https_as(
        &pki,
        &gateway.url(),
        as_team_a,
        "team_b_app",
        PythonPushOp::Delete,
    )
    .await
    .expect_err("team-a may not delete team_b_app");
    assert!(refused.contains("403"), "{refused}");
    assert_eq!(
        jobs(&node.groups().await),
        ["team_a_app", "team_b_app"],
        "nothing was deleted"
    );
    python_https_as(
        &pki,
        &gateway.url(),
        as_team_a,
        "team_a_app",
        PythonPushOp::Delete,
    )
    .await
    .expect("team-a may delete team_a_app");
    // The Pushgateway applies a DELETE after its 202.
    common::assert_eventually_eq(
        common::SETTLE,
        || async { jobs(&node.groups().await) },
        vec!["team_b_app".to_string()],
        "team-a's delete removed team_a_app",
    )
    .await;

    // Raw HTTP: the message names the rule, for every spelling of a push path and every writing method.
    let rule = r#"user "team-a" may not push job "team_b_x": authorization.users.team-a.push_jobs is "team_a_.*""#;
    let b64 = base64::engine::general_purpose::URL_SAFE.encode("team_b_x");
    for (method, path) in [
        (Method::PUT, "/metrics/job/team_b_x".to_string()),
        (Method::POST, "/metrics/job/team_b_x/instance/i".to_string()),
        (Method::PUT, format!("/metrics/job@base64/{b64}")),
        // Percent-encoded route letters reach the push routes (the router's fallback, not the fast path).
        (Method::PUT, "/metrics/%6Aob/team_b_x".to_string()),
        (Method::PUT, "/metrics/job/team_b_x/a@base64/=".to_string()),
    ] {
        let (status, location, body) = request(&gateway, &pki, TEAM_A, method.clone(), &path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body.trim(), rule, "{method} {path}");
        assert_eq!(location, None);
    }
    let (status, _, body) = request(
        &gateway,
        &pki,
        TEAM_A,
        Method::DELETE,
        "/metrics/job/team_b_app",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body.trim(),
        r#"user "team-a" may not delete job "team_b_app": authorization.users.team-a.push_jobs is "team_a_.*""#
    );
    // A path the gateway redirects to its clean form is authorized when the client follows the redirect: the
    // 301 points at the gateway itself, never at a node.
    let (status, location, _) = request(
        &gateway,
        &pki,
        TEAM_A,
        Method::PUT,
        "/metrics/job//team_b_x",
    )
    .await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(location.as_deref(), Some("/metrics/job/team_b_x"));
    let (status, _, body) = request(
        &gateway,
        &pki,
        TEAM_A,
        Method::PUT,
        "/metrics/job/team_a_raw/instance/i",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jobs(&node.groups().await),
        ["team_a_raw", "team_b_app"],
        "no refused push reached the node"
    );

    // An authenticated user without rules reads everything and writes nothing.
    let (status, _, body) =
        request(&gateway, &pki, USERNAME, Method::PUT, "/metrics/job/any").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body.trim(),
        r#"user "pusher" may not push job "any": it is not in authorization.users, so it may only read"#
    );
    for path in [
        "/metrics",
        "/api/v1/metrics",
        "/-/sd",
        "/-/ring",
        "/",
        "/metrics/job/team_b_app",
    ] {
        let (status, _, body) = request(&gateway, &pki, USERNAME, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    }
    let (_, _, metrics) = request(&gateway, &pki, USERNAME, Method::GET, "/-/metrics").await;
    let forbidden = |reason: &str| {
        metric_sum(
            &metrics,
            &format!("dynamic_sharding_http_requests_forbidden_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        forbidden("job_not_allowed"),
        8.0,
        "2 by Python, 6 raw\n{metrics}"
    );
    assert_eq!(forbidden("unlisted_user"), 1.0);

    // Refusals are logged with the user and the rule, never a credential.
    let log = gateway.log_text();
    assert!(log.contains("request refused by authorization"), "{log}");
    for user in [USERNAME, TEAM_A, OPS] {
        assert!(
            !log.contains(&password(&pki, user)),
            "a password is in the log"
        );
    }
}

#[tokio::test]
async fn admin_endpoints_are_refused_to_a_non_admin_and_allowed_to_an_admin() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = SecureGateway::start_with_args(
        &pki,
        &config(&[node.addr()], RULES),
        &web_yaml(&pki),
        false,
        &["--web.enable-admin-api"],
    )
    .await;
    wait_ready(&gateway, &pki).await;
    assert_eq!(
        node.push("/metrics/job/kept", "kept 1\n").await,
        StatusCode::OK
    );

    for (method, path) in [
        (Method::POST, "/-/reload"),
        (Method::PUT, "/api/v1/admin/wipe"),
    ] {
        for user in [TEAM_A, USERNAME] {
            let (status, _, body) = request(&gateway, &pki, user, method.clone(), path).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{user} {method} {path}: {body}"
            );
            assert!(body.contains(&format!("may not use {path}")), "{body}");
        }
    }
    let (_, _, body) = request(&gateway, &pki, TEAM_A, Method::PUT, "/api/v1/admin/wipe").await;
    assert_eq!(
        body.trim(),
        r#"user "team-a" may not use /api/v1/admin/wipe: authorization.users.team-a.admin is not true"#
    );
    assert_eq!(
        jobs(&node.groups().await),
        ["kept"],
        "a refused wipe wiped nothing"
    );

    let (status, _, body) = request(&gateway, &pki, OPS, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = request(&gateway, &pki, OPS, Method::PUT, "/api/v1/admin/wipe").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The Pushgateway deletes the groups of a wipe after its 202.
    common::assert_eventually_eq(
        common::SETTLE,
        || node.groups(),
        Vec::new(),
        "the admin's wipe wiped the node",
    )
    .await;
    let (_, _, metrics) = request(&gateway, &pki, USERNAME, Method::GET, "/-/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "dynamic_sharding_http_requests_forbidden_total{reason=\"not_admin\"}"
        ),
        3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn redirect_mode_refuses_before_the_307() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = SecureGateway::start(
        &pki,
        &config(&[node.addr()], &format!("mode: redirect\n{RULES}")),
        &web_yaml(&pki),
        false,
    )
    .await;
    wait_ready(&gateway, &pki).await;
    let (status, location, body) =
        request(&gateway, &pki, TEAM_A, Method::PUT, "/metrics/job/team_b_x").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(location, None, "a refused push learns no node");
    assert!(body.contains("push_jobs is \"team_a_.*\""), "{body}");
    let (status, location, _) = request(
        &gateway,
        &pki,
        TEAM_A,
        Method::DELETE,
        "/metrics/job/team_b_x",
    )
    .await;
    assert_eq!((status, location), (StatusCode::FORBIDDEN, None));
    let (status, location, _) =
        request(&gateway, &pki, TEAM_A, Method::PUT, "/metrics/job/team_a_x").await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        location,
        Some(format!("http://{}/metrics/job/team_a_x", node.addr()))
    );
    // The owner lookup is a read: anyone authenticated may ask.
    let (status, _, body) = request(
        &gateway,
        &pki,
        USERNAME,
        Method::GET,
        "/metrics/job/team_b_x",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("nextUrl:http://"), "{body}");
}

#[tokio::test]
async fn a_reload_changes_the_rules_all_or_nothing() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let nodes = [node.addr()];
    let gateway = SecureGateway::start(&pki, &config(&nodes, RULES), &web_yaml(&pki), false).await;
    wait_ready(&gateway, &pki).await;
    let push = |job: &'static str| {
        let gateway = &gateway;
        let pki = &pki;
        async move {
            request(
                gateway,
                pki,
                TEAM_A,
                Method::PUT,
                &format!("/metrics/job/{job}"),
            )
            .await
            .0
        }
    };
    assert_eq!(push("team_a_x").await, StatusCode::OK);
    assert_eq!(push("team_b_x").await, StatusCode::FORBIDDEN);

    let moved = RULES.replace("team_a_.*", "team_b_.*");
    std::fs::write(gateway.config(), config(&nodes, &moved)).unwrap();
    let (status, _, body) = request(&gateway, &pki, OPS, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        push("team_b_x").await,
        StatusCode::OK,
        "the new rule allows team_b_x"
    );
    assert_eq!(
        push("team_a_x").await,
        StatusCode::FORBIDDEN,
        "and no longer team_a_x"
    );

    // An invalid regex fails the reload with the key named; the rules in force stay.
    std::fs::write(
        gateway.config(),
        config(&nodes, &RULES.replace("team_a_.*", "team_(a")),
    )
    .unwrap();
    let (status, _, body) = request(&gateway, &pki, OPS, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains(
            "authorization.users.team-a.push_jobs: \"team_(a\" is not a valid regular expression"
        ),
        "{body}"
    );
    assert_eq!(push("team_b_x").await, StatusCode::OK);
    assert_eq!(push("team_a_x").await, StatusCode::FORBIDDEN);

    // Dropping basic_auth_users while the rules stay would leave no user to authorize: refused as a whole, so
    // the web config stays too (a request without credentials still gets 401).
    std::fs::write(gateway.config(), config(&nodes, &moved)).unwrap();
    let web_without_users = web_yaml(&pki);
    let tls_only = &web_without_users[..web_without_users.find("basic_auth_users").unwrap()];
    std::fs::write(gateway.web_config(), tls_only).unwrap();
    let (status, _, body) = request(&gateway, &pki, OPS, Method::POST, "/-/reload").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("no basic_auth_users are configured"),
        "{body}"
    );
    let anonymous = pki
        .client()
        .put(format!("{}/metrics/job/team_b_x", gateway.url()))
        .body("x 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(push("team_b_x").await, StatusCode::OK);
}

#[tokio::test]
async fn authorization_without_authentication_is_refused_at_start_and_an_unknown_user_is_a_warning()
{
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config(&["127.0.0.1:9".to_string()], RULES)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dynamic-sharding"))
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            common::free_port()
        ))
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "started without any authentication"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("authorization: needs authenticated users"),
        "{stderr}"
    );

    // A rule for a user basic auth does not know: the gateway runs and says so.
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let rules = format!("{RULES}    team-c: {{push_jobs: 'team_c_.*'}}\n");
    let gateway = SecureGateway::start(
        &pki,
        &config(&[node.addr()], &rules),
        &web_yaml(&pki),
        false,
    )
    .await;
    let log = gateway.log_text();
    assert!(
        log.contains("authorization.users.team-c") && log.contains("not in basic_auth_users"),
        "{log}"
    );
}

#[tokio::test]
async fn a_verified_client_certificate_names_the_user_when_there_is_no_basic_auth() {
    let pki = Pki::generate();
    pki.client_cert_for("team-a-cert", TEAM_A);
    let node = Pushgateway::start().await;
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: VerifyClientCertIfGiven\n  \
         client_ca_file: {}\n",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.ca_file().display(),
    );
    let gateway = SecureGateway::start(&pki, &config(&[node.addr()], RULES), &web, false).await;
    let put = |identity: Option<&'static str>, job: &'static str| {
        let client = pki.client_with(&pki.ca_file(), identity);
        let url = format!("{}/metrics/job/{job}", gateway.url());
        async move {
            let response = client
                .put(url)
                .body("cert_metric 1\n")
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap_or_default())
        }
    };
    common::wait_until(common::secs(20), common::POLL_INTERVAL, || async {
        put(Some("team-a-cert"), "team_a_x").await.0 == StatusCode::OK
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "team-a's certificate never pushed ({e}): {}",
            gateway.log_text()
        )
    });
    let (status, body) = put(Some("team-a-cert"), "team_b_x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body.trim(),
        r#"user "team-a" may not push job "team_b_x": authorization.users.team-a.push_jobs is "team_a_.*""#
    );
    // A certificate from the CA without a DNS name, and no certificate at all: no user, so reads only.
    for identity in [Some("client"), None] {
        let (status, body) = put(identity, "team_a_y").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{identity:?}: {body}");
        assert!(body.starts_with("no authenticated user may push"), "{body}");
        let read = pki
            .client_with(&pki.ca_file(), identity)
            .get(format!("{}/-/sd", gateway.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK);
    }
    assert_eq!(jobs(&node.groups().await), ["team_a_x"]);
}

#[tokio::test]
async fn with_basic_auth_the_basic_auth_user_is_the_identity_not_the_certificate() {
    let pki = Pki::generate();
    pki.client_cert_for("team-a-cert", TEAM_A);
    let node = Pushgateway::start().await;
    let web = web_yaml(&pki).replace(
        "basic_auth_users:",
        &format!(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:",
            pki.ca_file().display()
        ),
    );
    let gateway = SecureGateway::start(&pki, &config(&[node.addr()], RULES), &web, true).await;
    // team-a's certificate, pusher's password: pusher it is, and pusher may only read.
    let response = pki
        .client_with(&pki.ca_file(), Some("team-a-cert"))
        .put(format!("{}/metrics/job/team_a_x", gateway.url()))
        .basic_auth(USERNAME, Some(&pki.password))
        .body("cert_metric 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .starts_with(r#"user "pusher" may not push"#),
        "the basic-auth user was judged"
    );
    assert!(node.groups().await.is_empty());
}

//! HTTP: the router and its handlers. Pushgateway API paths are routed to their owner node; everything the
//! gateway owns lives under `/-/` so it never collides with the Pushgateway API.
//!
//! - [`push`]: `/metrics/job/...`: proxy, redirect, or owner lookup.
//! - [`admin`]: `/-/healthy`, `/-/ready`, `/-/reload`, `/-/metrics`, `/-/ring`, `/test/v1`.
//! - [`read`]: the Pushgateway read API (`GET /metrics`, `/api/v1/metrics`, `/api/v1/status`,
//!   `PUT /api/v1/admin/wipe`), fanned out to every healthy node and merged.
//! - [`sd`]: `/-/sd`, Prometheus HTTP service discovery listing the healthy nodes.
//! - [`status_page`]: `GET /`, the HTML status page for people.

pub mod admin;
pub mod push;
pub mod read;
pub mod sd;
pub mod status_page;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderValue, StatusCode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ambiguous::Journal;
use crate::authorization::{Action, User};
use crate::body_budget::BodyBudget;
use crate::config::Config;
use crate::membership::health::SuspectReporter;
use crate::membership::Membership;
use crate::move_guard::MoveCoordinator;
use crate::outlier::OutlierDetector;
use crate::pushgateway::HttpClient;
use crate::routing::RingHandle;
use crate::telemetry::{ForbiddenLabels, LogInterval, Metrics};

/// A request to re-read the config file; the answer says whether the new config was applied.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub ring: RingHandle,
    pub membership: watch::Receiver<Arc<Membership>>,
    /// The config in force; swapped on reload.
    pub config: Arc<ArcSwap<Config>>,
    pub client: HttpClient,
    pub metrics: Metrics,
    pub suspects: SuspectReporter,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub lifecycle_enabled: bool,
    /// `--web.enable-admin-api`: `PUT /api/v1/admin/wipe` is forwarded to every node.
    pub admin_api_enabled: bool,
    /// State of the read-side fan-out (which merge conflicts were already logged).
    pub read_side: read::ReadSide,
    /// Coordinates pushes with the rebalancer's group moves.
    pub move_guard: MoveCoordinator,
    /// The rebalancer's status (the `rebalance` object of `/-/ring`), published by it.
    pub rebalance_status: watch::Receiver<serde_json::Value>,
    /// Passive failure detection: the push path reports every forwarded push's outcome.
    pub outliers: OutlierDetector,
    /// Groups with an ambiguous write, and their acknowledged pushes since.
    pub journal: Journal,
    /// Bytes of push bodies held in memory, over all connections (`proxy.max_body_memory`).
    pub body_budget: BodyBudget,
}

/// The gateway's whole HTTP service: push paths go straight to [`push::PushService`], everything else through
/// the axum [`router`]. Pushes are nearly all the traffic; skipping the router's path matching (and the
/// URL-parameter map it inserts into every request's extensions) saves a few percent of CPU per push.
#[derive(Clone)]
pub struct GatewayService {
    push: push::PushService,
    api: axum::Router,
}

impl GatewayService {
    pub fn new(state: AppState) -> GatewayService {
        let push = push::PushService::new(state.clone());
        GatewayService {
            api: router(push.clone(), state),
            push,
        }
    }
}

impl tower::Service<http::Request<Body>> for GatewayService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <push::PushService as tower::Service<http::Request<Body>>>::Future,
        <axum::Router as tower::Service<http::Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both inner services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if push::is_push_path(request.uri().path()) {
            Either::Left(self.push.call(request))
        } else {
            Either::Right(self.api.call(request))
        }
    }
}

/// The routes the gateway answers itself; any other path falls back to `push` (which answers 404 for paths
/// that are not pushes either, like the Pushgateway).
pub fn router(push: push::PushService, state: AppState) -> axum::Router {
    axum::Router::new()
        // `get` alone: other methods get 405 with `Allow: GET,HEAD`.
        .route("/", get(status_page::page))
        .route("/-/healthy", get(admin::healthy).head(admin::healthy))
        .route("/-/ready", get(admin::ready).head(admin::ready))
        .route("/-/reload", any(admin::reload))
        .route("/-/metrics", get(admin::metrics))
        .route("/-/ring", get(admin::ring))
        .route("/test/v1", get(admin::test_v1))
        .route("/-/sd", get(sd::targets))
        .route("/metrics", get(read::metrics))
        .route("/api/v1/metrics", get(read::api_metrics))
        .route("/api/v1/status", get(read::status))
        .route("/api/v1/admin/wipe", any(read::wipe))
        // Push paths are matched by hand: the Pushgateway's grammar (base64 job segment, path cleaning) does not
        // fit a route pattern, and the raw path is needed undecoded.
        .fallback_service(push)
        .with_state(state)
}

/// At most one `warn` line per interval for refused requests (each is logged at `debug` too).
static FORBIDDEN_LOG: LogInterval = LogInterval::new(std::time::Duration::from_secs(10));

/// With an `authorization` section, whether the request's verified user (set by the server room) may do
/// `action`: `Some` 403 naming the rule if not (counted and logged). Without the section everything is allowed.
pub(crate) fn forbidden(
    state: &AppState,
    config: &Config,
    extensions: &http::Extensions,
    action: Action<'_>,
) -> Option<http::Response<Body>> {
    let authorization = config.authorization.as_ref()?;
    let user = extensions.get::<User>().map(|user| &*user.0);
    let refusal = authorization.check(user, action).err()?;
    let reason = refusal.reason.as_str();
    state
        .metrics
        .requests_forbidden
        .get_or_create(&ForbiddenLabels { reason })
        .inc();
    if FORBIDDEN_LOG.due() {
        tracing::warn!(user = user.unwrap_or(""), reason, message = %refusal.message, "request refused by authorization (logged at most every 10 s, every one at debug)");
    } else {
        tracing::debug!(user = user.unwrap_or(""), reason, message = %refusal.message, "request refused by authorization");
    }
    Some(text(StatusCode::FORBIDDEN, refusal.message))
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> http::Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    text_lines(status, Bytes::from(body))
}

/// A plain-text response from a body that already ends with a newline.
pub(crate) fn text_lines(status: StatusCode, body: Bytes) -> http::Response<Body> {
    // Built directly rather than with `Response::builder()`, whose `.header(name, "…")` copies and re-validates
    // the value on every call: this runs once per redirect and per rejected push.
    let mut response = http::Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(value.to_string()))
        .unwrap_or_default()
}

//! Wiring: start every component for a validated config, serve HTTP, reload on request, stop gracefully.
//!
//! Data flows one way: config channel -> membership source -> membership channel -> ring builder ->
//! `ArcSwap<RoutingTable>` -> request handlers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::ambiguous::{self, Journal};
use crate::body_budget::BodyBudget;
use crate::config::{normalize_listen_addr, Config, ConfigError};
use crate::consul::{self, ConsulClient, ConsulError};
use crate::gateway::{self, AppState, ReloadRequest};
use crate::membership;
use crate::outlier::OutlierDetector;
use crate::pushgateway;
use crate::server::{self, ServerError};
use crate::shutdown;
use crate::telemetry::Metrics;

/// Start-up options that come from flags rather than the config file.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_file: PathBuf,
    /// `--web.listen-address`: overrides `http_listen_addr`.
    pub listen_address: Option<String>,
    pub enable_lifecycle: bool,
    /// `--web.enable-admin-api`: allows `PUT /api/v1/admin/wipe`.
    pub enable_admin_api: bool,
    /// `--web.max-connections`: overrides `web.max_connections`.
    pub max_connections: Option<usize>,
    /// `--web.config.file`: TLS, basic auth and response headers of the listener (exporter-toolkit format).
    pub web_config_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Upstream(#[from] pushgateway::ClientConfigError),
    #[error("invalid listen address: {0}")]
    ListenAddress(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    WebConfig(#[from] server::web_config::WebConfigError),
    #[error("--web.max-connections: must be at least 1, e.g. 512")]
    MaxConnections,
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// `--config.check`: reads and validates the config file and `--web.config.file` as a start would (the files
/// they name included), without binding or contacting anything.
pub fn check_config(options: &Options) -> Result<Config, AppError> {
    let config = Config::load(&options.config_file)?;
    load_security(options)?;
    Ok(config)
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(options: Options) -> Result<(), AppError> {
    let config = Config::load(&options.config_file)?;
    let listen_addr = options
        .listen_address
        .clone()
        .unwrap_or_else(|| config.listen_addr.clone());
    let bind_addr = normalize_listen_addr(&listen_addr).map_err(AppError::ListenAddress)?;
    let mut limits = config.web;
    if let Some(max_connections) = options.max_connections {
        if max_connections == 0 {
            return Err(AppError::MaxConnections);
        }
        limits.max_connections = max_connections;
    }
    let security = load_security(&options)?;
    check_authorization(&config, &security)?;
    let security = Arc::new(ArcSwap::from_pointee(security));
    let listener = server::bind(&bind_addr).await?;

    let metrics = Metrics::new();
    metrics.config_reload_success.set(1);
    metrics.config_reload_timestamp.set(unix_now());
    let (shutdown_trigger, shutdown) = shutdown::channel();
    let client = pushgateway::HttpClient::new(&config)?;
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let consul_client = config.consul().map(ConsulClient::new).transpose()?;
    let membership::Started {
        membership: membership_rx,
        suspects,
    } = membership::start(
        &config,
        membership::Dependencies {
            config: config_rx.clone(),
            client: client.clone(),
            consul: consul_client.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        },
    );
    let shared_config = Arc::new(ArcSwap::from_pointee(config.clone()));
    let outliers = OutlierDetector::new(
        shared_config.clone(),
        membership_rx.clone(),
        metrics.faults.clone(),
    );
    outliers.spawn_expiry(shutdown.clone());
    let (ring, ring_changes) = crate::routing::spawn(
        membership_rx.clone(),
        config_rx.clone(),
        outliers.clone(),
        metrics.clone(),
        shutdown.clone(),
    );

    // Rebalancing: which replica moves groups. With static membership `rebalance.enabled` is the switch (set it on
    // one replica). With Consul, the replicas that have it enabled elect one leader through a session lock.
    // `_always_leader` keeps the constant channel open for as long as the gateway runs.
    let (_always_leader, mut leader_rx) = watch::channel(true);
    // A receiver of the election's channel, kept to wait on shutdown until the election task has released the lock.
    let mut election = None;
    if let (Some(consul), Some(consul_client)) = (config.consul(), &consul_client) {
        if config.rebalance.enabled {
            leader_rx = consul::leader::spawn_leader_election(
                consul_client.clone(),
                rebalance_lock_key(&consul.service_name),
                shutdown.clone(),
            );
            election = Some(leader_rx.clone());
        }
    }
    let journal = Journal::new(shared_config.clone(), metrics.faults.clone());
    let rebalancer = crate::rebalance::spawn(crate::rebalance::Dependencies {
        config: config_rx.clone(),
        membership: membership_rx.clone(),
        ring_changes,
        ring: ring.clone(),
        leader: leader_rx,
        client: client.clone(),
        journal: journal.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });

    ambiguous::repair::spawn(ambiguous::repair::Dependencies {
        journal: journal.clone(),
        ring: ring.clone(),
        client: client.clone(),
        config: shared_config.clone(),
        coordinator: rebalancer.coordinator.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let state = AppState {
        ring,
        membership: membership_rx,
        config: shared_config.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        suspects,
        reload: reload_tx,
        lifecycle_enabled: options.enable_lifecycle,
        admin_api_enabled: options.enable_admin_api,
        read_side: Default::default(),
        move_guard: rebalancer.coordinator.clone(),
        rebalance_status: rebalancer.status_json(),
        outliers,
        journal,
        body_budget: BodyBudget::new(
            metrics.server.body_bytes_in_use.clone(),
            metrics.server.bodies_refused.clone(),
        ),
    };

    let mut terminate = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;

    tracing::info!(
        address = %bind_addr,
        mode = ?config.mode,
        algorithm = ?config.ring_algorithm,
        membership = config.membership.name(),
        servers = %config.servers.join(","),
        max_connections = limits.max_connections,
        tls = security.load().is_tls(),
        basic_auth = security.load().requires_auth(),
        version = env!("CARGO_PKG_VERSION"),
        "dynamic-sharding listening"
    );
    let server = server::serve(
        listener,
        gateway::GatewayService::new(state),
        security.clone(),
        limits,
        metrics.server.clone(),
        shutdown.clone(),
    );
    let mut server = std::pin::pin!(server);

    let reload = |answer: Option<ReloadRequest>| {
        let result = reload_config(
            &options,
            &listen_addr,
            &config_tx,
            &shared_config,
            &client,
            &security,
            &metrics,
        );
        if let Some(answer) = answer {
            let _ = answer.send(result);
        }
    };
    loop {
        tokio::select! {
            () = &mut server => return Ok(()),
            _ = terminate.recv() => { tracing::info!("received SIGTERM, shutting down gracefully"); break }
            _ = interrupt.recv() => { tracing::info!("received SIGINT, shutting down gracefully"); break }
            _ = hangup.recv() => { tracing::info!("received SIGHUP, reloading configuration"); reload(None) }
            Some(answer) = reload_rx.recv() => reload(Some(answer)),
        }
    }

    shutdown_trigger.trigger();
    let grace = shared_config.load().proxy.shutdown_timeout;
    match tokio::time::timeout(grace, server).await {
        Ok(()) => {}
        Err(_) => tracing::warn!(
            ?grace,
            "in-flight requests did not finish in time; exiting anyway"
        ),
    }
    if let Some(election) = election {
        wait_for_election_to_end(election).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long shutdown waits for the leader election to release its lock and destroy its session.
const ELECTION_RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Waits until the election task has ended (its sender is dropped once the lock is released and the session
/// destroyed). Returning earlier drops the runtime with those requests in flight: the session then survives, and
/// on a busy machine the lock with it, so the other replicas wait for the session TTL instead of taking over.
async fn wait_for_election_to_end(mut election: watch::Receiver<bool>) {
    let ended = async { while election.changed().await.is_ok() {} };
    if tokio::time::timeout(ELECTION_RELEASE_GRACE, ended)
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?ELECTION_RELEASE_GRACE,
            "could not release the rebalance leader lock in time; it expires with its Consul session"
        );
    }
}

fn reload_config(
    options: &Options,
    listen_addr: &str,
    config_tx: &watch::Sender<Arc<Config>>,
    shared_config: &ArcSwap<Config>,
    client: &pushgateway::HttpClient,
    security: &ArcSwap<server::Security>,
    metrics: &Metrics,
) -> Result<(), String> {
    // The TLS files, `password_file` and `--web.config.file` are read again; if one is unusable the reload fails
    // as a whole and everything stays as it was.
    let loaded = load_security(options)
        .map_err(|e| ConfigError::Invalid(e.to_string()))
        .and_then(|new_security| {
            let new_config = Config::load(&options.config_file)?;
            check_authorization(&new_config, &new_security)?;
            client
                .reconfigure(&new_config)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            Ok((new_config, new_security))
        });
    match loaded {
        Ok((new_config, new_security)) => {
            security.store(Arc::new(new_security));
            if options.listen_address.is_none() && new_config.listen_addr != listen_addr {
                tracing::warn!(
                    old = %listen_addr,
                    new = %new_config.listen_addr,
                    "http_listen_addr changed; the new address takes effect after a restart"
                );
            }
            let running = shared_config.load().membership.name();
            if new_config.membership.name() != running {
                tracing::warn!(
                    running,
                    configured = new_config.membership.name(),
                    "the membership source changed; the new source takes effect after a restart"
                );
            }
            if new_config.web != shared_config.load().web {
                tracing::warn!(
                    "web.* changed; the new connection limits take effect after a restart"
                );
            }
            metrics.config_reload_success.set(1);
            metrics.config_reload_timestamp.set(unix_now());
            tracing::info!(
                file = %options.config_file.display(),
                servers = %new_config.servers.join(","),
                mode = ?new_config.mode,
                "configuration reloaded"
            );
            shared_config.store(Arc::new(new_config.clone()));
            config_tx.send_replace(Arc::new(new_config));
            Ok(())
        }
        Err(error) => {
            metrics.config_reload_success.set(0);
            tracing::error!(%error, "configuration reload failed; keeping the previous configuration");
            Err(error.to_string())
        }
    }
}

/// `authorization` refines authentication, so it needs a source of verified users: `basic_auth_users`, or client
/// certificates checked against `client_ca_file`. Without one no request carries a user and every push would be
/// refused. A rule for a user that cannot log in with basic auth is only a warning (it may be added to the web
/// config next).
fn check_authorization(config: &Config, security: &server::Security) -> Result<(), ConfigError> {
    let Some(authorization) = &config.authorization else {
        return Ok(());
    };
    if !security.requires_auth() && !security.verifies_client_certificates() {
        return Err(ConfigError::Invalid(
            "authorization: needs authenticated users, but no basic_auth_users are configured (in the file \
             --web.config.file names) and no client certificates are verified (client_auth_type \
             RequireAndVerifyClientCert or VerifyClientCertIfGiven); add one of them, or remove the \
             authorization section"
                .to_string(),
        ));
    }
    if security.requires_auth() {
        for user in authorization
            .users()
            .filter(|user| !security.has_user(user))
        {
            tracing::warn!(
                key = %format!("authorization.users.{user}"),
                "this user is not in basic_auth_users of --web.config.file, so it cannot log in and its rules apply to nobody"
            );
        }
    }
    Ok(())
}

/// The listener's TLS and authentication from `--web.config.file`; none without the flag.
fn load_security(
    options: &Options,
) -> Result<server::Security, server::web_config::WebConfigError> {
    match &options.web_config_file {
        Some(path) => server::Security::load(path),
        None => Ok(server::Security::none()),
    }
}

/// The Consul KV key whose lock holder is the one replica that rebalances groups of `service_name`.
pub fn rebalance_lock_key(service_name: &str) -> String {
    format!("dynamic-sharding/{service_name}/rebalance-leader")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

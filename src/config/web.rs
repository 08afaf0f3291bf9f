//! `web` and `http_listen_addr`: the gateway's own listener and its limits on client connections.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};
use crate::pushgateway::address::split_host_port;

/// The original tool's listen address.
pub const DEFAULT_LISTEN_ADDR: &str = ":9292";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    max_connections: Option<usize>,
    header_read_timeout: Option<PromDuration>,
    idle_timeout: Option<PromDuration>,
}

/// `web`: limits on client connections (see `crate::server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// Connections served at once; further ones wait in the listen backlog (`--web.max-connections`).
    pub max_connections: usize,
    /// From when the gateway starts waiting for a request (on connect, or after the previous response) until
    /// its whole head (request line and headers) has arrived; then the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without sending a byte of its next request (after connecting, or
    /// after the previous response). At most `header_read_timeout`, which bounds that wait too.
    pub idle_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            // Prometheus' and the Pushgateway's `--web.max-connections` default.
            max_connections: 512,
            // nginx's `client_header_timeout` default.
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

pub(super) fn validate_web(raw: RawWeb) -> Result<WebConfig, ConfigError> {
    let defaults = WebConfig::default();
    let web = WebConfig {
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        header_read_timeout: raw
            .header_read_timeout
            .map_or(defaults.header_read_timeout, |d| d.0),
        idle_timeout: raw.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
    };
    if web.max_connections == 0 {
        return Err(invalid("web.max_connections: must be at least 1, e.g. 512"));
    }
    for (key, value) in [
        ("web.header_read_timeout", web.header_read_timeout),
        ("web.idle_timeout", web.idle_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(format!("{key}: must be greater than 0, e.g. 60s")));
        }
    }
    if web.idle_timeout > web.header_read_timeout {
        return Err(invalid(format!(
            "web.idle_timeout: {} is longer than web.header_read_timeout ({}), which already closes a connection \
             that sends no complete request head within it; set it at most {}",
            humantime::format_duration(web.idle_timeout),
            humantime::format_duration(web.header_read_timeout),
            humantime::format_duration(web.header_read_timeout),
        )));
    }
    Ok(web)
}

/// Turns a Go-style listen address (`:9292`, `host:port`) into one `tokio::net::TcpListener::bind` accepts.
pub fn normalize_listen_addr(addr: &str) -> Result<String, String> {
    let (host, port) = split_host_port(addr).ok_or_else(|| {
        format!("{addr:?} is not host:port; use e.g. \":9292\" or \"127.0.0.1:9292\"")
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{addr:?} has an invalid port; use a number from 0 to 65535"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

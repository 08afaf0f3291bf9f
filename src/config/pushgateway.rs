//! `pushgateway`: the configured servers, and how every Pushgateway is reached (scheme, TLS, basic auth).

use serde::{Deserialize, Serialize};

use super::tls::validate_tls_files;
use super::{invalid, ConfigError, Secret};
use crate::pushgateway::NodeAddress;

/// The default Pushgateway port applied to `pushgateway.servers` entries without one (the original's behaviour).
pub const DEFAULT_PUSHGATEWAY_PORT: u16 = 9091;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPushgateway {
    port: Option<u16>,
    #[serde(default)]
    servers: Option<Vec<String>>,
    scheme: Option<NodeScheme>,
    tls_config: Option<RawNodeTls>,
    basic_auth: Option<RawBasicAuth>,
}

/// `pushgateway.tls_config`, the keys of a Prometheus scrape config's `tls_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNodeTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
    insecure_skip_verify: Option<bool>,
}

/// `pushgateway.basic_auth`, as in a Prometheus scrape config. Not `Debug`: it holds the password as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

impl std::fmt::Debug for RawBasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBasicAuth")
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::secret::REDACTED),
            )
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// `pushgateway.scheme`: how every Pushgateway is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeScheme {
    #[default]
    Http,
    Https,
}

impl NodeScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeScheme::Http => "http",
            NodeScheme::Https => "https",
        }
    }

    /// `http://` or `https://`.
    pub fn prefix(self) -> &'static str {
        match self {
            NodeScheme::Http => "http://",
            NodeScheme::Https => "https://",
        }
    }
}

/// `pushgateway.scheme`, `tls_config` and `basic_auth`: used for every request to a Pushgateway (pushes, probes,
/// reads, the rebalancer, repairs, admin wipe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub scheme: NodeScheme,
    pub tls: NodeTlsConfig,
    pub basic_auth: Option<BasicAuth>,
}

/// `pushgateway.tls_config`. Paths are PEM files, read when the client is built (at start and on reload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTlsConfig {
    /// Replaces the built-in roots (as in Prometheus).
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The name the node certificates are verified against (and sent as SNI) instead of each node's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// `pushgateway.basic_auth`, with `password_file` already read (it is read again on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

impl BasicAuth {
    /// The `Authorization` value, `Basic <base64(username:password)>` (RFC 7617).
    pub fn header_value(&self) -> Secret {
        use base64::Engine as _;
        let credentials = format!("{}:{}", self.username, self.password.expose());
        Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }
}

/// `pushgateway`: the configured Pushgateways as `host:port` (deduplicated, in file order) and how they are reached.
pub(super) fn validate_pushgateway(
    raw: RawPushgateway,
) -> Result<(Vec<String>, UpstreamConfig), ConfigError> {
    let default_port = match raw.port {
        Some(0) => {
            return Err(invalid(
                "pushgateway.port: 0 is not a valid port; use e.g. 9091",
            ))
        }
        Some(port) => port,
        None => DEFAULT_PUSHGATEWAY_PORT,
    };
    let mut servers: Vec<String> = Vec::new();
    for (index, entry) in raw.servers.unwrap_or_default().iter().enumerate() {
        let node = node_address(entry, default_port)
            .map_err(|e| invalid(format!("pushgateway.servers[{index}]: {e}")))?;
        if !servers.contains(&node) {
            servers.push(node);
        }
    }
    let upstream = validate_upstream(raw.scheme, raw.tls_config, raw.basic_auth)?;
    Ok((servers, upstream))
}

fn validate_upstream(
    scheme: Option<NodeScheme>,
    tls: Option<RawNodeTls>,
    basic_auth: Option<RawBasicAuth>,
) -> Result<UpstreamConfig, ConfigError> {
    let scheme = scheme.unwrap_or_default();
    let non_empty = |value: Option<String>| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let tls_given = tls.is_some();
    let raw_tls = tls.unwrap_or_default();
    let [ca_file, cert_file, key_file] = validate_tls_files(
        "pushgateway.tls_config",
        [raw_tls.ca_file, raw_tls.cert_file, raw_tls.key_file],
        tls_given,
        scheme == NodeScheme::Https,
    )?;
    let tls = NodeTlsConfig {
        ca_file,
        cert_file,
        key_file,
        server_name: non_empty(raw_tls.server_name),
        insecure_skip_verify: raw_tls.insecure_skip_verify.unwrap_or(false),
    };
    let basic_auth = basic_auth
        .map(|raw| {
            let username = raw.username.unwrap_or_default();
            if username.is_empty() {
                return Err(invalid(
                    "pushgateway.basic_auth.username: missing; basic_auth needs a username and a password or password_file",
                ));
            }
            // RFC 7617: the user-id cannot contain a colon (the first one ends it).
            if username.contains(':') || username.chars().any(char::is_control) {
                return Err(invalid(
                    "pushgateway.basic_auth.username: must not contain ':' or control characters",
                ));
            }
            let password = match (raw.password, non_empty(raw.password_file)) {
                (Some(password), None) => password,
                (None, Some(path)) => read_password_file(&path)?,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "pushgateway.basic_auth: both password and password_file are set; keep exactly one",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        "pushgateway.basic_auth: set password or password_file (exactly one)",
                    ))
                }
            };
            Ok(BasicAuth {
                username,
                password: Secret::new(password),
            })
        })
        .transpose()?;
    Ok(UpstreamConfig {
        scheme,
        tls,
        basic_auth,
    })
}

/// Reads `pushgateway.basic_auth.password_file`; surrounding whitespace (a trailing newline) is not part of
/// the password, as in Prometheus.
fn read_password_file(path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        invalid(format!(
            "pushgateway.basic_auth.password_file: cannot read {path:?}: {error}"
        ))
    })?;
    let password = text.trim();
    if password.is_empty() {
        return Err(invalid(format!(
            "pushgateway.basic_auth.password_file: {path:?} is empty; write the password into it"
        )));
    }
    Ok(password.to_string())
}

/// A `pushgateway.servers` entry as the node id `host:port`: a bare host gets `default_port`.
pub fn node_address(entry: &str, default_port: u16) -> Result<String, String> {
    NodeAddress::from_config_entry(entry, default_port)
        .map(|address| address.to_string())
        .map_err(|error| error.to_string())
}

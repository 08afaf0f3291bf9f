//! A small client for the parts of Consul's HTTP API the gateway uses: agent service registration, the health
//! endpoint with blocking queries (membership), and sessions plus KV locks (one leader among replicas).
//!
//! - [`ConsulClient`]: one configured HTTP client (token, basic auth, http/https with CA and client cert).
//! - [`index`]: Consul's rules for following `X-Consul-Index` and backing off, as pure functions.
//! - [`leader`]: leader election on a KV key, published as a `watch::Receiver<bool>`.
//!
//! `reqwest` (rustls) is used rather than the hyper client in `pushgateway/client.rs`: Consul needs TLS with a private CA
//! and client certificates, which reqwest configures in a few lines, while the Pushgateway client stays plain
//! HTTP/1.1 on the hot path.

pub mod index;
pub mod leader;

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{ConsulConfig, ConsulScheme};
use crate::secret::Secret;

/// Non-blocking calls (register, acquire, ...) give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything but unreserved characters is escaped in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("cannot read consul_server.tls.{key} {path:?}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("consul_server.tls.{key} {path:?} is not a usable PEM file: {source}")]
    TlsPem {
        key: &'static str,
        path: String,
        source: reqwest::Error,
    },
    #[error("consul_server.token contains characters not allowed in an HTTP header")]
    InvalidToken,
    #[error("cannot build the HTTP client for Consul: {0}")]
    Client(reqwest::Error),
    #[error("cannot reach Consul for {method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        source: reqwest::Error,
    },
    #[error("Consul answered {status} to {method} {url}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("unexpected answer from Consul to {method} {url}: {message}")]
    Decode {
        method: Method,
        url: String,
        message: String,
    },
}

impl ConsulError {
    /// Whether Consul could not be reached at all (as opposed to answering with an error).
    pub fn is_transport(&self) -> bool {
        matches!(self, ConsulError::Transport { .. })
    }
}

/// The answer to a (possibly blocking) read, with the index to pass to the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct Indexed<T> {
    pub value: T,
    /// `X-Consul-Index`, 0 when absent.
    pub index: u64,
}

/// An agent service registration (`PUT /v1/agent/service/register`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub check: HttpCheck,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpCheck {
    #[serde(rename = "HTTP")]
    pub http: String,
    #[serde(rename = "TLSServerName", skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(rename = "TLSSkipVerify", skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// Sent by Consul as the check's `Authorization` header; `Debug` shows it redacted.
    #[serde(
        rename = "Header",
        skip_serializing_if = "Option::is_none",
        serialize_with = "authorization_header"
    )]
    pub authorization: Option<Secret>,
    /// Go duration strings (`5s`, `1500ms`).
    pub interval: String,
    pub timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
    /// The status a newly created check starts with (Consul's default is `critical`). Consul keeps the current
    /// status of a check that already exists, so this only matters for an agent that lost its registrations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// A check's `Header` map (`{"Authorization": ["Basic ..."]}`), the one place the credential is written out.
fn authorization_header<S: serde::Serializer>(
    value: &Option<Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(usize::from(value.is_some())))?;
    if let Some(value) = value {
        map.serialize_entry("Authorization", &[value.expose()])?;
    }
    map.end()
}

/// One registered instance from `/v1/health/service/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInstance {
    pub service_id: String,
    /// Every check of the instance (and of its node) is `passing`: what `?passing=true` would filter on.
    pub passing: bool,
    /// `Service.Address`, or `Node.Address` when the service has none (Consul's documented fallback).
    pub address: String,
    pub port: u16,
    pub node: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

/// A KV entry as far as locks care.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvEntry {
    pub key: String,
    /// The session holding the lock, if any.
    #[serde(default)]
    pub session: Option<String>,
}

/// Settings of a session used as a lock owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    pub name: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub behavior: String,
    pub lock_delay: String,
}

#[derive(Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// A configured client for one Consul agent. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base_url: String,
    datacenter: Option<String>,
    username: Option<Secret>,
    password: Option<Secret>,
}

impl ConsulClient {
    /// Builds the client: reads the TLS files now, so a bad path fails at start-up with the key's name.
    pub fn new(config: &ConsulConfig) -> Result<ConsulClient, ConsulError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &config.token {
            let mut value =
                HeaderValue::from_str(token.expose()).map_err(|_| ConsulError::InvalidToken)?;
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        // The agent is addressed directly, as the Consul CLI does; an HTTP(S)_PROXY meant for the internet must
        // not capture it.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none());
        if config.scheme == ConsulScheme::Https {
            let tls = &config.tls;
            if let Some(path) = &tls.ca_file {
                let pem = read_tls_file("ca_file", path)?;
                let certificates =
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                        ConsulError::TlsPem {
                            key: "ca_file",
                            path: path.clone(),
                            source,
                        }
                    })?;
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
            if let (Some(cert_path), Some(key_path)) = (&tls.cert_file, &tls.key_file) {
                let mut pem = read_tls_file("cert_file", cert_path)?;
                pem.push(b'\n');
                pem.extend(read_tls_file("key_file", key_path)?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|source| ConsulError::TlsPem {
                        key: "cert_file",
                        path: cert_path.clone(),
                        source,
                    })?;
                builder = builder.identity(identity);
            }
            builder = builder
                .use_rustls_tls()
                .danger_accept_invalid_certs(tls.insecure_skip_verify);
        }
        Ok(ConsulClient {
            http: builder.build().map_err(ConsulError::Client)?,
            base_url: format!("{}://{}", config.scheme.as_str(), config.addr),
            datacenter: config.datacenter.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
        })
    }

    /// `scheme://host:port` of the agent.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.username {
            Some(username) => request.basic_auth(
                username.expose(),
                self.password.as_ref().map(Secret::expose),
            ),
            None => request,
        }
    }

    /// Query parameters shared by catalog-level reads: the datacenter, and a blocking index when given.
    fn query(&self, blocking: Option<(u64, Duration)>) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(dc) = &self.datacenter {
            query.push(("dc", dc.clone()));
        }
        if let Some((index, wait)) = blocking {
            if index > 0 {
                query.push(("index", index.to_string()));
                query.push(("wait", format!("{}ms", wait.as_millis())));
            }
        }
        query
    }

    /// Sends a request and returns status, index header and body; non-2xx answers become [`ConsulError::Status`]
    /// unless `accept` lets them through (404 for an absent key or session).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<String>,
        timeout: Duration,
        accept: &[StatusCode],
    ) -> Result<(StatusCode, u64, String), ConsulError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = self
            .request(method.clone(), &url)
            .query(query)
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let transport = |source| ConsulError::Transport {
            method: method.clone(),
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let text = response.text().await.map_err(transport)?;
        if status.is_success() || accept.contains(&status) {
            Ok((status, index, text))
        } else {
            Err(ConsulError::Status {
                method,
                url,
                status,
                body: text.trim().chars().take(300).collect(),
            })
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        text: &str,
    ) -> Result<T, ConsulError> {
        serde_json::from_str(text).map_err(|error| ConsulError::Decode {
            method,
            url: format!("{}{path}", self.base_url),
            message: error.to_string(),
        })
    }

    /// `PUT /v1/agent/service/register`: creates or updates (idempotently) one registration on this agent.
    pub async fn register_service(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ConsulError> {
        let body = serde_json::to_string(registration).map_err(|error| ConsulError::Decode {
            method: Method::PUT,
            url: format!("{}/v1/agent/service/register", self.base_url),
            message: error.to_string(),
        })?;
        self.send(
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(body),
            REQUEST_TIMEOUT,
            &[],
        )
        .await
        .map(|_| ())
    }

    /// `PUT /v1/agent/service/deregister/<id>`.
    pub async fn deregister_service(&self, service_id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/service/deregister/{}", segment(service_id));
        self.send(Method::PUT, &path, &[], None, REQUEST_TIMEOUT, &[])
            .await
            .map(|_| ())
    }

    /// `GET /v1/health/service/<name>[?tag=..]`, blocking while the index is `index` (0: answer at once) for up
    /// to `wait`. Every registered instance is returned, with `passing` computed from its checks the way
    /// `?passing=true` filters, so callers can tell a failing instance from a deregistered one.
    pub async fn instances(
        &self,
        service: &str,
        tag: Option<&str>,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<ServiceInstance>>, ConsulError> {
        let path = format!("/v1/health/service/{}", segment(service));
        let mut query = self.query(Some((index, wait)));
        if let Some(tag) = tag {
            query.push(("tag", tag.to_string()));
        }
        let (_, index, text) = self
            .send(
                Method::GET,
                &path,
                &query,
                None,
                blocking_timeout(wait),
                &[],
            )
            .await?;
        let entries: Vec<HealthEntry> = self.decode(Method::GET, &path, &text)?;
        let value = entries
            .into_iter()
            .map(|entry| ServiceInstance {
                address: if entry.service.address.is_empty() {
                    entry.node.address
                } else {
                    entry.service.address
                },
                service_id: entry.service.id,
                passing: entry.checks.iter().all(|check| check.status == "passing"),
                port: entry.service.port,
                node: entry.node.node,
            })
            .collect();
        Ok(Indexed { value, index })
    }

    /// `PUT /v1/session/create`; returns the session ID.
    pub async fn create_session(&self, request: &SessionRequest) -> Result<String, ConsulError> {
        let path = "/v1/session/create";
        let body = serde_json::to_string(request).map_err(|error| ConsulError::Decode {
            method: Method::PUT,
            url: format!("{}{path}", self.base_url),
            message: error.to_string(),
        })?;
        let (_, _, text) = self
            .send(
                Method::PUT,
                path,
                &self.query(None),
                Some(body),
                REQUEST_TIMEOUT,
                &[],
            )
            .await?;
        let created: SessionCreated = self.decode(Method::PUT, path, &text)?;
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/<id>`; `Ok(false)` when Consul no longer knows the session (it expired).
    pub async fn renew_session(&self, session: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/session/renew/{}", segment(session));
        let (status, _, _) = self
            .send(
                Method::PUT,
                &path,
                &self.query(None),
                None,
                REQUEST_TIMEOUT,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status != StatusCode::NOT_FOUND)
    }

    /// `PUT /v1/session/destroy/<id>`: releases every lock the session holds.
    pub async fn destroy_session(&self, session: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/session/destroy/{}", segment(session));
        self.send(
            Method::PUT,
            &path,
            &self.query(None),
            None,
            REQUEST_TIMEOUT,
            &[],
        )
        .await
        .map(|_| ())
    }

    /// `PUT /v1/kv/<key>?acquire=<session>`: whether the lock is now held by `session`.
    pub async fn acquire_lock(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        self.lock_operation(key, "acquire", session).await
    }

    /// `PUT /v1/kv/<key>?release=<session>`.
    pub async fn release_lock(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        self.lock_operation(key, "release", session).await
    }

    async fn lock_operation(
        &self,
        key: &str,
        operation: &'static str,
        session: &str,
    ) -> Result<bool, ConsulError> {
        let path = kv_path(key);
        let mut query = self.query(None);
        query.push((operation, session.to_string()));
        let (_, _, text) = self
            .send(
                Method::PUT,
                &path,
                &query,
                Some(String::new()),
                REQUEST_TIMEOUT,
                &[],
            )
            .await?;
        self.decode(Method::PUT, &path, &text)
    }

    /// `GET /v1/kv/<key>`, blocking while the index is `index`; `None` when the key does not exist.
    pub async fn kv_entry(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Option<KvEntry>>, ConsulError> {
        let path = kv_path(key);
        let (status, index, text) = self
            .send(
                Method::GET,
                &path,
                &self.query(Some((index, wait))),
                None,
                blocking_timeout(wait),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(Indexed { value: None, index });
        }
        let entries: Vec<KvEntry> = self.decode(Method::GET, &path, &text)?;
        Ok(Indexed {
            value: entries.into_iter().next(),
            index,
        })
    }
}

/// Consul adds up to wait/16 of jitter to a blocking query; allow that plus a margin before giving up.
fn blocking_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + REQUEST_TIMEOUT
}

fn segment(text: &str) -> String {
    utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

fn kv_path(key: &str) -> String {
    let segments: Vec<String> = key.trim_matches('/').split('/').map(segment).collect();
    format!("/v1/kv/{}", segments.join("/"))
}

fn read_tls_file(key: &'static str, path: &str) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|source| ConsulError::TlsFile {
        key,
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_keep_their_slashes_and_escape_the_rest() {
        assert_eq!(
            kv_path("dynamic-sharding/leader"),
            "/v1/kv/dynamic-sharding/leader"
        );
        assert_eq!(kv_path("/a b/c?d/"), "/v1/kv/a%20b/c%3Fd");
    }

    #[test]
    fn registration_uses_consuls_field_names() {
        let registration = ServiceRegistration {
            id: "10.0.0.1_9091".into(),
            name: "pushgateway".into(),
            address: "10.0.0.1".into(),
            port: 9091,
            tags: vec![],
            check: HttpCheck {
                http: "http://10.0.0.1:9091/-/healthy".into(),
                tls_server_name: None,
                tls_skip_verify: false,
                authorization: None,
                interval: "5s".into(),
                timeout: "2s".into(),
                deregister_critical_service_after: None,
                status: Some("passing"),
            },
        };
        let json = serde_json::to_value(&registration).unwrap();
        assert_eq!(json["ID"], "10.0.0.1_9091");
        assert_eq!(json["Check"]["HTTP"], "http://10.0.0.1:9091/-/healthy");
        assert_eq!(json["Check"]["Interval"], "5s");
        assert!(json["Check"]
            .get("DeregisterCriticalServiceAfter")
            .is_none());
        assert_eq!(json["Check"]["Status"], "passing");
    }
}

//! The pooled HTTP/1.1 client used to talk to Pushgateways (probes, reads, the rebalancer, repairs, and proxied
//! pushes when `proxy.per_node_pool` is off), and the per-config [`Transport`] every request to a node uses:
//! scheme, TLS (rustls) and the gateway's own basic-auth header (`pushgateway.scheme`, `tls_config`,
//! `basic_auth`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName};

use super::error::NodeError;
use crate::config::{Config, NodeScheme, NodeTlsConfig};
use crate::tls_files::{self, TlsFileError};

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client towards Pushgateways; cloning shares it. A reload swaps in a new [`Transport`] (TLS files and
/// `password_file` read again); requests already under way finish with the one they started with.
#[derive(Clone)]
pub struct HttpClient {
    current: Arc<ArcSwap<Transport>>,
}

impl HttpClient {
    /// Builds the client for `config`: fails when a `pushgateway.tls_config` file is unusable.
    pub fn new(config: &Config) -> Result<HttpClient, ClientConfigError> {
        Ok(HttpClient {
            current: Arc::new(ArcSwap::from_pointee(Transport::new(config)?)),
        })
    }

    /// Replaces the transport after a reload; on error the previous one stays.
    pub fn reconfigure(&self, config: &Config) -> Result<(), ClientConfigError> {
        self.current.store(Arc::new(Transport::new(config)?));
        Ok(())
    }

    /// The transport of the current config.
    pub fn transport(&self) -> Arc<Transport> {
        self.current.load_full()
    }

    /// `<scheme>://<node><path_and_query>` for the current scheme.
    pub fn node_url(&self, node: &str, path_and_query: &str) -> String {
        self.current.load().node_url(node, path_and_query)
    }
}

/// Sets each transport's generation: a pooled connection opened under another one is not reused.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// How to reach Pushgateways under one config: scheme, TLS connector, `Authorization` value, and the shared
/// keep-alive client built with them.
pub struct Transport {
    pub scheme: NodeScheme,
    generation: u64,
    /// `Some` exactly when the scheme is https.
    tls: Option<tokio_rustls::TlsConnector>,
    /// `tls_config.server_name`: verified (and sent as SNI) instead of each node's host.
    server_name: Option<ServerName<'static>>,
    /// `Basic <base64>` of `basic_auth`, marked sensitive; `None` without `basic_auth`.
    authorization: Option<HeaderValue>,
    client: Inner,
}

impl Transport {
    fn new(config: &Config) -> Result<Transport, ClientConfigError> {
        let upstream = &config.upstream;
        let tls_config = match upstream.scheme {
            NodeScheme::Http => None,
            NodeScheme::Https => Some(Arc::new(tls_client_config(&upstream.tls)?)),
        };
        let server_name = upstream
            .tls
            .server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_string()).map_err(|_| ClientConfigError::ServerName {
                    name: name.to_string(),
                })
            })
            .transpose()?;
        let authorization = upstream
            .basic_auth
            .as_ref()
            .map(|auth| {
                let mut value = HeaderValue::from_str(auth.header_value().expose())
                    .map_err(|_| ClientConfigError::BasicAuth)?;
                // Kept out of hyper's header debug output.
                value.set_sensitive(true);
                Ok::<_, ClientConfigError>(value)
            })
            .transpose()?;

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.proxy.connect_timeout));
        http.set_nodelay(true);
        // The https connector below decides by scheme; it needs the inner one to pass https URIs on.
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(match &tls_config {
                Some(tls) => (**tls).clone(),
                // Never used for http:// URIs; any valid config will do.
                None => tls_client_config(&NodeTlsConfig::default())?,
            })
            .https_or_http();
        let builder = match &server_name {
            Some(name) => builder.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(name.clone()),
            ),
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Idle connections are kept for 90 s, as in Go's default transport.
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Transport {
            scheme: upstream.scheme,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            // The per-node pool speaks HTTP/1.1 only; hyper-rustls sets ALPN itself for the shared client.
            tls: tls_config.map(|tls| {
                let mut config = (*tls).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                tokio_rustls::TlsConnector::from(Arc::new(config))
            }),
            server_name,
            authorization,
            client,
        })
    }

    /// `<scheme>://<node><path_and_query>`.
    pub fn node_url(&self, node: &str, path_and_query: &str) -> String {
        format!("{}{node}{path_and_query}", self.scheme.prefix())
    }

    /// Sets the gateway's own `Authorization` (replacing a client's) when `basic_auth` is configured; without it
    /// the headers are left as they are.
    pub fn authorize(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.authorization {
            headers.insert(header::AUTHORIZATION, value.clone());
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The TLS connector and the name to verify for a node whose host is `host`; `None` for plain HTTP.
    pub(crate) fn tls_for(
        &self,
        host: &str,
    ) -> Option<Result<(&tokio_rustls::TlsConnector, ServerName<'static>), NodeError>> {
        let connector = self.tls.as_ref()?;
        let name = match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_string()).map_err(|_| {
                NodeError::Connect(format!(
                    "{host:?} is not a valid TLS server name; set pushgateway.tls_config.server_name"
                ))
            }),
        };
        Some(name.map(|name| (connector, name)))
    }
}

/// Why `pushgateway.tls_config` or `basic_auth` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("pushgateway.tls_config.{key}: {source}")]
    File {
        key: &'static str,
        source: TlsFileError,
    },
    #[error("pushgateway.tls_config.ca_file: {path:?} holds a certificate that cannot be a root: {message}")]
    Root { path: String, message: String },
    #[error("pushgateway.tls_config: {0}")]
    Tls(String),
    #[error("pushgateway.tls_config.server_name: {name:?} is not a DNS name or IP address")]
    ServerName { name: String },
    #[error("pushgateway.basic_auth: the username and password do not make a valid header value")]
    BasicAuth,
}

/// The rustls client config of `tls_config`: `ca_file` replaces the built-in roots (as in Prometheus),
/// `cert_file`/`key_file` is the client certificate, `insecure_skip_verify` accepts any server certificate.
fn tls_client_config(tls: &NodeTlsConfig) -> Result<rustls::ClientConfig, ClientConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientConfigError::Tls(e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for cert in file("ca_file", tls_files::certificates(Path::new(path)))? {
                    roots.add(cert).map_err(|e| ClientConfigError::Root {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = file("cert_file", tls_files::certificates(Path::new(cert_path)))?;
            let key = file("key_file", tls_files::private_key(Path::new(key_path)))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientConfigError::Tls(format!("cert_file and key_file: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A `tls_config.<key>` file's error, naming the key.
fn file<T>(key: &'static str, result: Result<T, TlsFileError>) -> Result<T, ClientConfigError> {
    result.map_err(|source| ClientConfigError::File { key, source })
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake signatures are still checked, so the
/// connection is at least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends `request` (its URI from [`HttpClient::node_url`]) with the gateway's credentials, and reads the whole
/// response, however long that takes.
pub async fn exchange(
    client: &HttpClient,
    mut request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Bytes>, NodeError> {
    let transport = client.transport();
    transport.authorize(request.headers_mut());
    let response = transport
        .client
        .request(request)
        .await
        .map_err(NodeError::from_client_error)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| NodeError::Reset(e.to_string()))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// Sends `request` and reads the whole response within `timeout`.
pub async fn send(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<http::Response<Bytes>, NodeError> {
    tokio::time::timeout(timeout, exchange(client, request))
        .await
        .map_err(|_| NodeError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(&format!("pushgateway:\n  servers: ['127.0.0.1:1']\n{text}")).unwrap()
    }

    #[test]
    fn the_gateways_credentials_replace_a_clients() {
        let transport =
            Transport::new(&config("  basic_auth: {username: u, password: 'p'}\n")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Y2xpZW50"),
        );
        transport.authorize(&mut headers);
        let value = &headers[header::AUTHORIZATION];
        assert_eq!(value, "Basic dTpw");
        assert!(value.is_sensitive());
        assert!(!format!("{headers:?}").contains("dTpw"));
    }

    #[test]
    fn without_credentials_a_clients_header_passes_through() {
        let transport = Transport::new(&config("")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Y2xpZW50"),
        );
        transport.authorize(&mut headers);
        assert_eq!(headers[header::AUTHORIZATION], "Basic Y2xpZW50");
    }

    #[test]
    fn urls_carry_the_scheme() {
        let http = Transport::new(&config("")).unwrap();
        assert_eq!(http.node_url("n:1", "/-/healthy"), "http://n:1/-/healthy");
        assert!(http.tls_for("n").is_none());
        let https = Transport::new(&config("  scheme: https\n")).unwrap();
        assert_eq!(https.node_url("n:1", "/-/healthy"), "https://n:1/-/healthy");
        assert!(https.tls_for("127.0.0.1").is_some_and(|tls| tls.is_ok()));
    }

    #[test]
    fn unusable_tls_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let cases = [
            (
                "  scheme: https\n  tls_config: {ca_file: /nonexistent/ca.crt}\n".to_string(),
                "pushgateway.tls_config.ca_file: cannot read \"/nonexistent/ca.crt\"",
            ),
            (
                format!(
                    "  scheme: https\n  tls_config: {{ca_file: '{}'}}\n",
                    not_pem.display()
                ),
                "pushgateway.tls_config.ca_file",
            ),
            (
                format!(
                    "  scheme: https\n  tls_config: {{cert_file: '{0}', key_file: '{0}'}}\n",
                    not_pem.display()
                ),
                "pushgateway.tls_config.cert_file",
            ),
            (
                "  scheme: https\n  tls_config: {server_name: 'not a name'}\n".to_string(),
                "pushgateway.tls_config.server_name",
            ),
        ];
        for (text, expected) in cases {
            let err = match Transport::new(&config(&text)) {
                Ok(_) => panic!("{text} was accepted"),
                Err(err) => err.to_string(),
            };
            assert!(
                err.contains(expected),
                "{text}: {err:?} should mention {expected:?}"
            );
        }
    }
}

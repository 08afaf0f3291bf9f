//! https targets: a rustls client that trusts only the CA file it is given (the benchmark's own throwaway CA),
//! never the system roots and never "skip verification", and that remembers what the first handshake agreed on
//! so a report can say which protocol and cipher suite it measured.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--ca-file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// The TLS side of a run, shared by all workers.
pub struct TlsClient {
    connector: TlsConnector,
    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519", from the first handshake of the run.
    negotiated: OnceLock<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("negotiated", &self.negotiated.get())
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting only the certificates in `ca_file` (PEM), offering TLS 1.2 and 1.3 and ALPN http/1.1.
    pub fn trusting(ca_file: &Path) -> Result<TlsClient, TlsSetupError> {
        let error = |reason: String| TlsSetupError::CaFile {
            path: ca_file.display().to_string(),
            reason,
        };
        let pem = std::fs::read(ca_file).map_err(|e| error(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(error("holds no certificate".to_string()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            negotiated: OnceLock::new(),
        })
    }

    /// The TLS handshake over `stream`, checking the certificate against `server_name`.
    pub async fn connect(
        &self,
        server_name: ServerName<'static>,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let stream = self.connector.connect(server_name, stream).await?;
        self.negotiated.get_or_init(|| {
            let (_, connection) = stream.get_ref();
            let part = |value: Option<String>| value.unwrap_or_else(|| "?".to_string());
            format!(
                "{} {} {}",
                part(connection.protocol_version().map(|v| format!("{v:?}"))),
                part(
                    connection
                        .negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                ),
                part(
                    connection
                        .negotiated_key_exchange_group()
                        .map(|g| format!("{:?}", g.name()))
                ),
            )
        });
        Ok(stream)
    }

    /// What the first handshake of the run negotiated, if one completed.
    pub fn negotiated(&self) -> Option<String> {
        self.negotiated.get().cloned()
    }
}

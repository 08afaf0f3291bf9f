//! What `--web.config.file` turns on for the listener, ready to use per connection and per request: a TLS
//! acceptor that picks up new certificate files, basic authentication with a cache of verified passwords, and the
//! extra response headers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use base64::Engine;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::authorization::User;

use super::web_config::{ClientAuth, TlsSettings, TlsVersion, WebConfigError, WebSettings};
use crate::tls_files;

/// The listener's security for new connections; `app.rs` swaps in a new one on reload.
#[derive(Default)]
pub struct Security {
    pub(super) tls: Option<ReloadingTls>,
    pub(super) auth: Option<Auth>,
    pub(super) headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Security {
    /// Plain HTTP, no authentication, no extra headers: what the gateway does without `--web.config.file`.
    pub fn none() -> Security {
        Security::default()
    }

    /// Reads `path` and the certificate files it names; any problem is an error naming the key.
    pub fn load(path: &Path) -> Result<Security, WebConfigError> {
        let settings = WebSettings::load(path)?;
        let invalid = |key: &str, message: String| WebConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("tls_server_config.{key}"),
            message,
        };
        let tls = match settings.tls {
            Some(tls) => {
                let stamp = FileStamp::of(&tls);
                let config = server_config(&tls).map_err(|(key, message)| invalid(key, message))?;
                Some(ReloadingTls {
                    settings: tls,
                    current: Mutex::new((stamp, TlsAcceptor::from(Arc::new(config)))),
                })
            }
            None => None,
        };
        let auth = (!settings.users.is_empty()).then(|| Auth::new(settings.users));
        Ok(Security {
            tls,
            auth,
            headers: settings.headers.into(),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether a verified client certificate can name the user (`client_auth_type` `VerifyClientCertIfGiven` or
    /// `RequireAndVerifyClientCert`).
    pub fn verifies_client_certificates(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.settings.client_auth.verifies())
    }

    /// Whether `user` is one of `basic_auth_users`.
    pub fn has_user(&self, user: &str) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|auth| auth.users.contains_key(user))
    }
}

/// Modification times and sizes of the certificate, key and client CA files: when one changes, the next
/// handshake reads them all again (exporter-toolkit re-reads them per handshake; a stat is cheaper).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp(Vec<Option<(SystemTime, u64)>>);

impl FileStamp {
    fn of(tls: &TlsSettings) -> FileStamp {
        let stat = |path: &PathBuf| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        let mut files = vec![stat(&tls.cert_file), stat(&tls.key_file)];
        if let Some(ca) = &tls.client_ca_file {
            files.push(stat(ca));
        }
        FileStamp(files)
    }
}

pub(super) struct ReloadingTls {
    settings: TlsSettings,
    current: Mutex<(FileStamp, TlsAcceptor)>,
}

impl ReloadingTls {
    /// The acceptor for a new connection, rebuilt first if a certificate file changed. Files that cannot be
    /// used (e.g. a key written before its certificate) keep the previous acceptor, and the next handshake tries
    /// again.
    pub(super) fn acceptor(&self) -> TlsAcceptor {
        let stamp = FileStamp::of(&self.settings);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != stamp {
            match server_config(&self.settings) {
                Ok(config) => {
                    tracing::info!(
                        cert_file = %self.settings.cert_file.display(),
                        "TLS certificate files changed; new connections use the new certificate"
                    );
                    *current = (stamp, TlsAcceptor::from(Arc::new(config)));
                }
                Err((key, message)) => {
                    tracing::warn!(
                        key = %format!("tls_server_config.{key}"),
                        %message,
                        "TLS certificate files changed but cannot be used; keeping the previous certificate"
                    );
                    // Not retried until the files change again.
                    current.0 = stamp;
                }
            }
        }
        current.1.clone()
    }

    /// The user a client certificate names: the first DNS name of its subject alternative names, and only when
    /// `client_ca_file` verified it (with `RequestClientCert`/`RequireAnyClientCert` anyone can make one).
    pub(super) fn certificate_user(&self, connection: &rustls::ServerConnection) -> Option<User> {
        if !self.settings.client_auth.verifies() {
            return None;
        }
        let certificate = connection.peer_certificates()?.first()?;
        let certificate = webpki::EndEntityCert::try_from(certificate).ok()?;
        let name = certificate.valid_dns_names().next()?;
        Some(User(name.into()))
    }
}

type KeyError = (&'static str, String);

/// The certificates of the file at `key`.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    tls_files::certificates(path).map_err(|e| (key, e.to_string()))
}

fn server_config(tls: &TlsSettings) -> Result<ServerConfig, KeyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ("min_version", e.to_string()))?;
    let roots = || -> Result<Arc<RootCertStore>, KeyError> {
        let path = tls
            .client_ca_file
            .as_deref()
            .ok_or(("client_ca_file", "required".to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in certificates("client_ca_file", path)? {
            roots
                .add(cert)
                .map_err(|e| ("client_ca_file", format!("{}: {e}", path.display())))?;
        }
        Ok(Arc::new(roots))
    };
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match tls.client_auth {
        ClientAuth::NoClientCert => None,
        ClientAuth::RequestClientCert => Some(Arc::new(AnyClientCert {
            provider: provider.clone(),
            mandatory: false,
        })),
        ClientAuth::RequireAnyClientCert => Some(Arc::new(AnyClientCert {
            provider: provider.clone(),
            mandatory: true,
        })),
        ClientAuth::VerifyClientCertIfGiven => Some(
            WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| ("client_ca_file", e.to_string()))?,
        ),
        ClientAuth::RequireAndVerifyClientCert => Some(
            WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| ("client_ca_file", e.to_string()))?,
        ),
    };
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let certs = certificates("cert_file", &tls.cert_file)?;
    let key = tls_files::private_key(&tls.key_file).map_err(|e| ("key_file", e.to_string()))?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key_file", format!("does not match cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    Ok(config)
}

/// `RequestClientCert` / `RequireAnyClientCert`: a client certificate is asked for (and with `mandatory`
/// required) but not checked against a CA, as Go's `tls` does; the handshake signature is still verified, so
/// the client holds the key of the certificate it presents.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// At most this many checked (user, password) pairs are remembered; past it the cache starts over, so a client
/// trying many passwords cannot grow it.
const CHECKED_CACHE_LIMIT: usize = 1024;

/// `basic_auth_users`: user -> bcrypt hash, and the outcome of each (user, password) pair bcrypt checked, keyed by
/// their SHA-256 digest: a client pushing with the same credentials pays one bcrypt, not one per request, and so
/// does a misconfigured client retrying a wrong password. Only digests are kept, never a password; the cache goes
/// with the configuration on reload.
pub(super) struct Auth {
    users: HashMap<String, String>,
    checked: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt at a time, as exporter-toolkit does: a flood of new passwords queues here (as tasks, not
    /// threads) instead of taking every core; cached pairs never wait for it.
    bcrypt_turn: Semaphore,
}

impl Auth {
    fn new(users: HashMap<String, String>) -> Auth {
        Auth {
            users,
            checked: Mutex::new(HashMap::new()),
            bcrypt_turn: Semaphore::new(1),
        }
    }

    /// The configured user whose credentials `headers` carry, if any. A cache miss runs bcrypt on the blocking
    /// pool, so a slow hash does not stall the connections served by this worker thread.
    pub(super) async fn authenticate(&self, headers: &HeaderMap) -> Option<User> {
        let (user, password) = basic_credentials(headers)?;
        self.verify(user, password)
            .await
            .map(|user| User(user.into()))
    }

    async fn verify(&self, user: String, password: String) -> Option<String> {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(&ok) = self.lock().get(&digest) {
            return ok.then_some(user);
        }
        let Ok(_turn) = self.bcrypt_turn.acquire().await else {
            return None; // never closed
        };
        let hash = self.users.get(&user).cloned();
        let known = hash.is_some();
        let verified = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => bcrypt::verify(password, &hash),
            // An unknown user costs a bcrypt too (against a fixed hash), so timing does not tell which users exist.
            None => bcrypt::verify(password, dummy_hash()).map(|_| false),
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
        let ok = verified && known;
        let mut cache = self.lock();
        if cache.len() >= CHECKED_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(digest, ok);
        ok.then_some(user)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| bcrypt::hash("dynamic-sharding: no such user", 10).unwrap_or_default())
}

/// `Authorization: Basic base64(user:password)`, decoded; `None` for anything else.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {encoded}"))
    }

    #[test]
    fn only_basic_credentials_are_decoded() {
        assert_eq!(
            basic_credentials(&basic("alice", "p:w")),
            Some(("alice".to_string(), "p:w".to_string()))
        );
        assert_eq!(basic_credentials(&headers("Bearer abc")), None);
        assert_eq!(basic_credentials(&headers("Basic !!!")), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn right_credentials_pass_wrong_ones_and_unknown_users_do_not_and_each_pair_is_checked_once(
    ) {
        let users = HashMap::from([("alice".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = Auth::new(users);
        let alice = Some(User("alice".into()));
        assert_eq!(auth.authenticate(&basic("alice", "wrong")).await, None);
        assert_eq!(auth.authenticate(&basic("bob", "secret")).await, None);
        assert_eq!(auth.authenticate(&HeaderMap::new()).await, None);
        assert_eq!(auth.lock().len(), 2, "failures are cached too");
        assert_eq!(
            auth.authenticate(&basic("alice", "wrong")).await,
            None,
            "and stay failures"
        );
        assert_eq!(auth.authenticate(&basic("alice", "secret")).await, alice);
        assert_eq!(auth.lock().len(), 3);
        assert_eq!(
            auth.authenticate(&basic("alice", "secret")).await,
            alice,
            "the second request hits the cache, and names the user"
        );
        assert_eq!(auth.authenticate(&basic("alice", "secre")).await, None);
    }
}

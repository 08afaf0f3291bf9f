//! `--web.config.file`: the exporter-toolkit web configuration file (the one Prometheus and the Pushgateway
//! take), parsed and checked. Unsupported keys are refused by name rather than ignored, so a file that asks for
//! more than this gateway does never silently runs with less.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("--web.config.file: cannot read {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--web.config.file {path:?}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("--web.config.file {path:?}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The file as written. `Option<serde_yaml_ng::Value>` fields are keys of the format this gateway does not
/// implement: they are read only to refuse them by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    min_version: String,
    #[serde(default)]
    max_version: String,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    cert: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    key: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

/// Who must present a client certificate and whether it is checked against `client_ca_file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// Whether a presented certificate is checked against `client_ca_file`.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Pick the cipher suite by the server's order rather than the client's (rustls' `ignore_client_order`).
    pub prefer_server_cipher_suites: bool,
}

/// A checked web configuration. The default (no file) is plain HTTP without authentication.
#[derive(Clone, Debug, Default)]
pub struct WebSettings {
    pub tls: Option<TlsSettings>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name -> bcrypt hash.
    pub users: HashMap<String, String>,
}

impl WebSettings {
    /// Reads and checks `path`; relative file names in it are relative to its directory, as in exporter-toolkit.
    pub fn load(path: &Path) -> Result<WebSettings, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        WebSettings::parse(&text, base).map_err(|error| match error {
            ParseError::Yaml(source) => WebConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            ParseError::Invalid { key, message } => WebConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            },
        })
    }

    fn parse(text: &str, base: &Path) -> Result<WebSettings, ParseError> {
        // An empty file is a valid (empty) configuration, as in exporter-toolkit.
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(ParseError::Yaml)?
        };
        let tls = raw.tls_server_config.map(|t| tls(t, base)).transpose()?;
        let mut headers = Vec::new();
        if let Some(http) = raw.http_server_config {
            if http.http2 == Some(true) {
                return Err(invalid(
                    "http_server_config.http2",
                    "HTTP/2 is not supported by this gateway (it serves HTTP/1.1); remove the key or set it to false",
                ));
            }
            let mut names: Vec<_> = http.headers.into_iter().collect();
            names.sort();
            for (name, value) in names {
                let key = format!("http_server_config.headers.{name}");
                check_header(&name, &value).map_err(|message| invalid(&key, &message))?;
                let header_name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(&key, "not a valid HTTP header name"))?;
                let header_value = HeaderValue::from_str(&value)
                    .map_err(|_| invalid(&key, "not a valid HTTP header value"))?;
                headers.push((header_name, header_value));
            }
        }
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            let key = format!("basic_auth_users.{user}");
            if user.contains(':') {
                return Err(invalid(&key, "a user name cannot contain ':'"));
            }
            // Checked here so a typo is refused at start rather than making every login fail.
            let is_bcrypt = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p))
                && hash.parse::<bcrypt::HashParts>().is_ok();
            if !is_bcrypt {
                return Err(invalid(
                    &key,
                    "not a bcrypt hash ($2y$, $2a$ or $2b$, as `htpasswd -nBC 10 USER` writes it)",
                ));
            }
        }
        Ok(WebSettings {
            tls,
            headers,
            users,
        })
    }
}

/// exporter-toolkit allows only these response headers, and for two of them only these values, so a file that
/// works for the Pushgateway works here and the other way round.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let Some((_, values)) = ALLOWED_HEADERS.iter().find(|(allowed, _)| *allowed == name) else {
        let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "this header cannot be configured; allowed: {}",
            names.join(", ")
        ));
    };
    if !values.is_empty() && !values.contains(&value) {
        return Err(format!("{value:?} is not one of {values:?}"));
    }
    Ok(())
}

enum ParseError {
    Yaml(serde_yaml_ng::Error),
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: &str) -> ParseError {
    ParseError::Invalid {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn tls(raw: RawTls, base: &Path) -> Result<TlsSettings, ParseError> {
    const K: &str = "tls_server_config";
    let unsupported = |key: &str, what: &str| {
        invalid(
            &format!("{K}.{key}"),
            &format!("not supported by this gateway ({what}); remove the key"),
        )
    };
    if !raw.cipher_suites.is_empty() {
        return Err(unsupported(
            "cipher_suites",
            "rustls uses its own safe defaults",
        ));
    }
    if raw.curve_preferences.is_some() {
        return Err(unsupported(
            "curve_preferences",
            "rustls uses its own safe defaults",
        ));
    }
    if raw.client_allowed_sans.is_some() {
        return Err(unsupported(
            "client_allowed_sans",
            "client certificates are checked against client_ca_file only",
        ));
    }
    if raw.cert.is_some() || raw.key.is_some() {
        return Err(unsupported(
            "cert/key",
            "inline certificates; use cert_file and key_file",
        ));
    }
    if raw.cert_file.is_empty() || raw.key_file.is_empty() {
        return Err(invalid(
            &format!("{K}.cert_file"),
            "cert_file and key_file are both required when tls_server_config is set",
        ));
    }
    let client_ca_file = (!raw.client_ca_file.is_empty()).then(|| base.join(&raw.client_ca_file));
    let client_auth = match raw.client_auth_type.as_str() {
        // exporter-toolkit: a CA without a type means the client certificate is required and verified.
        "" if client_ca_file.is_some() => ClientAuth::RequireAndVerifyClientCert,
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(invalid(
                &format!("{K}.client_auth_type"),
                &format!(
                "{other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, \
                     VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ),
            ))
        }
    };
    let verifies = matches!(
        client_auth,
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
    );
    if verifies && client_ca_file.is_none() {
        return Err(invalid(
            &format!("{K}.client_ca_file"),
            "required when client_auth_type verifies client certificates",
        ));
    }
    if !verifies && client_ca_file.is_some() {
        return Err(invalid(
            &format!("{K}.client_ca_file"),
            "set, but client_auth_type does not verify client certificates; use VerifyClientCertIfGiven or \
             RequireAndVerifyClientCert",
        ));
    }
    let min_version = version(&raw.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(&raw.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(invalid(&format!("{K}.min_version"), "is above max_version"));
    }
    Ok(TlsSettings {
        cert_file: base.join(raw.cert_file),
        key_file: base.join(raw.key_file),
        client_auth,
        client_ca_file,
        min_version,
        max_version,
        // exporter-toolkit's default; rustls' own default follows the client's order.
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
    })
}

fn version(text: &str, key: &str, default: TlsVersion) -> Result<TlsVersion, ParseError> {
    match text {
        "" => Ok(default),
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => Err(invalid(
            &format!("tls_server_config.{key}"),
            &format!("{text} is not supported (rustls implements only TLS12 and TLS13); use TLS12 or TLS13"),
        )),
        other => Err(invalid(
            &format!("tls_server_config.{key}"),
            &format!("{other:?} is not a TLS version; use TLS12 or TLS13"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebSettings, String> {
        WebSettings::parse(text, Path::new("/etc/ds")).map_err(|e| match e {
            ParseError::Yaml(e) => e.to_string(),
            ParseError::Invalid { key, message } => format!("{key}: {message}"),
        })
    }

    #[test]
    fn a_full_file_is_read_with_paths_relative_to_its_directory() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let settings = parse(&format!(
            "tls_server_config:\n  cert_file: s.crt\n  key_file: /abs/s.key\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nhttp_server_config:\n  http2: false\n  headers: {{X-Frame-Options: deny}}\n\
             basic_auth_users:\n  alice: '{hash}'\n"
        ))
        .unwrap();
        let tls = settings.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/ds/s.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/s.key"));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert!(
            tls.prefer_server_cipher_suites,
            "exporter-toolkit's default"
        );
        assert_eq!(settings.headers.len(), 1);
        assert_eq!(settings.users["alice"], hash);
    }

    #[test]
    fn an_empty_file_means_plain_http_without_auth() {
        let settings = parse("").unwrap();
        assert!(settings.tls.is_none() && settings.users.is_empty() && settings.headers.is_empty());
    }

    #[test]
    fn unsupported_and_unknown_keys_are_refused_by_name() {
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        for (text, key) in [
            (
                format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
                "cipher_suites",
            ),
            (
                format!("{tls}  curve_preferences: [X25519]\n"),
                "curve_preferences",
            ),
            (
                format!("{tls}  prefer_server_cipher_suites: yes please\n"),
                "prefer_server_cipher_suites",
            ),
            (
                format!("{tls}  client_allowed_sans: [a]\n"),
                "client_allowed_sans",
            ),
            (format!("{tls}  min_version: TLS10\n"), "min_version"),
            (format!("{tls}  max_version: TLS11\n"), "max_version"),
            (
                format!("{tls}  client_auth_type: Sometimes\n"),
                "client_auth_type",
            ),
            (
                format!("{tls}  client_auth_type: VerifyClientCertIfGiven\n"),
                "client_ca_file",
            ),
            ("http_server_config: {http2: true}\n".to_string(), "http2"),
            (
                "http_server_config: {headers: {X-Custom: a}}\n".to_string(),
                "headers.X-Custom",
            ),
            (
                "http_server_config: {headers: {X-Frame-Options: allow}}\n".to_string(),
                "headers.X-Frame-Options",
            ),
            (
                "basic_auth_users: {bob: plaintext}\n".to_string(),
                "basic_auth_users.bob",
            ),
            ("basic_auth_user: {}\n".to_string(), "basic_auth_user"),
            (format!("{tls}  cert_fil: x\n"), "cert_fil"),
        ] {
            let error = parse(&text).expect_err(&text);
            assert!(error.contains(key), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_error_of_a_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, "http_server_config: {http2: true}\n").unwrap();
        let error = WebSettings::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("web.yml") && error.contains("http2"),
            "{error}"
        );
    }
}

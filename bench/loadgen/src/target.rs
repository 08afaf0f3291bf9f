//! Where requests may go: loopback HTTP(S) endpoints only.
//!
//! Benchmarks on this machine must never send traffic anywhere but the loopback interface, so every URL the
//! generator is given (`--target`) or told to follow (a 307 `Location`) passes through [`LoopbackEndpoint::parse`].
//! Host names are not resolved: `localhost` maps to 127.0.0.1 directly so that a resolver cannot send it elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::Uri;

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{url:?} is not a valid URL: {reason}; expected e.g. http://127.0.0.1:9091")]
    Invalid { url: String, reason: String },
    #[error("{url:?} uses scheme {scheme:?}; only http:// and https:// are supported")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("{url:?} has no host; give an absolute URL such as http://127.0.0.1:9091")]
    MissingHost { url: String },
    #[error(
        "{url:?} points at {host:?}, which is not a loopback address; \
         only 127.0.0.0/8, localhost and [::1] may be targeted"
    )]
    NotLoopback { url: String, host: String },
    #[error("redirect location {location:?} is relative to a path; only absolute paths or URLs are followed")]
    RelativeLocation { location: String },
}

/// An HTTP endpoint on the loopback interface, with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoopbackEndpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `https://`: TLS on the connection, the certificate checked against [`LoopbackEndpoint::server_name`].
    pub tls: bool,
    /// The `Host` header value, as written in the URL (`localhost:9091`, `[::1]:80`).
    pub authority: String,
    /// Path prefix without trailing slash ("" when the URL had none); request paths are appended to it.
    pub path_prefix: String,
}

impl LoopbackEndpoint {
    /// Parses an absolute `http://` or `https://` URL and checks that its host is a loopback address.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: Uri = url
            .parse()
            .map_err(|err: http::uri::InvalidUri| TargetError::Invalid {
                url: url.to_string(),
                reason: err.to_string(),
            })?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(TargetError::UnsupportedScheme {
                    url: url.to_string(),
                    scheme: other.to_string(),
                })
            }
            None => {
                return Err(TargetError::MissingHost {
                    url: url.to_string(),
                })
            }
        };
        let authority = uri.authority().ok_or_else(|| TargetError::MissingHost {
            url: url.to_string(),
        })?;
        if authority.as_str().contains('@') {
            return Err(TargetError::Invalid {
                url: url.to_string(),
                reason: "user information is not supported".to_string(),
            });
        }
        let host = authority.host();
        let ip = loopback_ip(host).ok_or_else(|| TargetError::NotLoopback {
            url: url.to_string(),
            host: host.to_string(),
        })?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            tls,
            authority: authority.as_str().to_string(),
            path_prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Resolves a redirect `Location` received from this endpoint: an absolute path stays on this endpoint
    /// (without the prefix, since the server already chose the full path); an absolute URL must be loopback.
    /// Returns the endpoint to send to and the path-and-query to request there.
    pub fn resolve_location(&self, location: &str) -> Result<(Self, String), TargetError> {
        if location.starts_with("//") {
            // Scheme-relative: the authority follows, so check it like any absolute URL.
            let scheme = if self.tls { "https" } else { "http" };
            return Self::resolve_absolute(&format!("{scheme}:{location}"));
        }
        if location.starts_with('/') {
            let mut same = self.clone();
            same.path_prefix.clear();
            return Ok((same, location.to_string()));
        }
        if location.contains("://") {
            return Self::resolve_absolute(location);
        }
        Err(TargetError::RelativeLocation {
            location: location.to_string(),
        })
    }

    /// The name the server certificate must carry: `localhost` as written, otherwise the IP address.
    pub fn server_name(&self) -> rustls::pki_types::ServerName<'static> {
        let host = self
            .authority
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(self.authority.as_str(), |(host, _)| host);
        if host.eq_ignore_ascii_case("localhost") {
            if let Ok(name) = rustls::pki_types::ServerName::try_from("localhost") {
                return name;
            }
        }
        rustls::pki_types::ServerName::IpAddress(self.addr.ip().into())
    }

    fn resolve_absolute(url: &str) -> Result<(Self, String), TargetError> {
        let endpoint = Self::parse(url)?;
        let path_and_query = url
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.path_and_query().map(|pq| pq.as_str().to_string()))
            .filter(|pq| !pq.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let mut endpoint = endpoint;
        endpoint.path_prefix.clear();
        Ok((endpoint, path_and_query))
    }
}

/// The IP to connect to when `host` names a loopback address, `None` otherwise.
fn loopback_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = bare.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_forms() {
        let cases = [
            ("http://127.0.0.1:9091", "127.0.0.1:9091", ""),
            ("http://127.1.2.3:80/", "127.1.2.3:80", ""),
            ("http://localhost:8080/pgw/", "127.0.0.1:8080", "/pgw"),
            ("http://LOCALHOST", "127.0.0.1:80", ""),
            ("http://[::1]:9091", "[::1]:9091", ""),
        ];
        for (url, addr, prefix) in cases {
            let endpoint = LoopbackEndpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(endpoint.addr.to_string(), addr, "{url}");
            assert_eq!(endpoint.path_prefix, prefix, "{url}");
        }
        assert_eq!(
            LoopbackEndpoint::parse("http://localhost:8080")
                .map(|e| e.authority)
                .ok(),
            Some("localhost:8080".to_string())
        );
    }

    #[test]
    fn https_targets_use_tls_port_443_by_default_and_the_name_in_the_url() {
        use rustls::pki_types::ServerName;
        let ip = LoopbackEndpoint::parse("https://127.0.0.1").expect("loopback https");
        assert!(ip.tls);
        assert_eq!(ip.addr.to_string(), "127.0.0.1:443");
        assert!(matches!(ip.server_name(), ServerName::IpAddress(_)));
        let named = LoopbackEndpoint::parse("https://localhost:9443").expect("localhost https");
        assert_eq!(
            named.server_name(),
            ServerName::try_from("localhost").expect("dns name")
        );
        let v6 = LoopbackEndpoint::parse("https://[::1]:9443").expect("[::1] https");
        assert!(matches!(v6.server_name(), ServerName::IpAddress(_)));
        assert!(
            !LoopbackEndpoint::parse("http://127.0.0.1")
                .expect("http")
                .tls
        );
        let (next, _) = named
            .resolve_location("//127.0.0.1:9444/x")
            .expect("scheme-relative");
        assert!(next.tls, "a scheme-relative location keeps https");
    }

    #[test]
    fn refuses_everything_that_is_not_loopback() {
        for url in [
            "http://10.0.0.1:9091",
            "http://192.168.1.1",
            "http://128.0.0.1",
            "http://0.0.0.0:9091",
            "http://[::]:9091",
            "http://[::ffff:10.0.0.1]:80",
            "http://example.com",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
        ] {
            match LoopbackEndpoint::parse(url) {
                Err(TargetError::NotLoopback { .. }) => {}
                other => panic!("{url} should be refused as not loopback, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_other_schemes_and_relative_urls() {
        assert!(matches!(
            LoopbackEndpoint::parse("ftp://127.0.0.1"),
            Err(TargetError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            LoopbackEndpoint::parse("https://10.0.0.1"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            LoopbackEndpoint::parse("127.0.0.1:9091"),
            Err(TargetError::UnsupportedScheme { .. }) | Err(TargetError::MissingHost { .. })
        ));
        assert!(matches!(
            LoopbackEndpoint::parse("/metrics"),
            Err(TargetError::MissingHost { .. })
        ));
        assert!(matches!(
            LoopbackEndpoint::parse("http://user@127.0.0.1"),
            Err(TargetError::Invalid { .. })
        ));
    }

    #[test]
    fn error_message_names_the_url_and_the_rule() {
        let message = LoopbackEndpoint::parse("http://10.1.1.1:1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("10.1.1.1"), "{message}");
        assert!(message.contains("loopback"), "{message}");
    }

    #[test]
    fn redirects_resolve_to_loopback_only() {
        let base = LoopbackEndpoint::parse("http://127.0.0.1:9000/prefix").expect("valid");
        let (same, path) = base
            .resolve_location("/metrics/job/a?x=1")
            .expect("absolute path");
        assert_eq!(same.addr, base.addr);
        assert_eq!(same.path_prefix, "");
        assert_eq!(path, "/metrics/job/a?x=1");

        let (other, path) = base
            .resolve_location("http://127.0.0.1:19101/metrics/job/a")
            .expect("loopback URL");
        assert_eq!(other.addr.port(), 19101);
        assert_eq!(path, "/metrics/job/a");

        let (bare, path) = base
            .resolve_location("http://localhost:19102")
            .expect("no path");
        assert_eq!(bare.addr.port(), 19102);
        assert_eq!(path, "/");

        assert!(matches!(
            base.resolve_location("http://10.0.0.5:9091/metrics/job/a"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            base.resolve_location("//10.0.0.5/metrics"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            base.resolve_location("ftp://127.0.0.1/x"),
            Err(TargetError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            base.resolve_location("metrics/job/a"),
            Err(TargetError::RelativeLocation { .. })
        ));
    }
}

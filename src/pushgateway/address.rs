//! [`NodeAddress`]: a Pushgateway's `host:port`, parsed once into what a connection and a URI need.
//!
//! A node's id everywhere else (ring, membership, metric labels, `/-/ring`) is its `host:port` text; this is
//! the one place that takes that text apart.

use std::fmt;
use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use crate::config::NodeScheme;

/// A node's `host:port` (`[v6]:port` for an IPv6 literal): the URI authority of every request to it, the
/// socket address to connect to, and the name TLS verifies by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// The text as given, e.g. `10.0.0.1:9091` or `[::1]:9091`.
    authority: Authority,
    /// The host without an IPv6 literal's brackets.
    host: Box<str>,
    port: u16,
}

/// Why a text is not a node address. Messages quote the address except where it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty entry; give a host or host:port")]
    Empty,
    #[error(
        "contains user info (user:password@), which would be shown in logs and /-/ring; \
                    remove it (the gateway sends no credentials to Pushgateways)"
    )]
    UserInfo,
    #[error("{0:?} is not a host or host:port")]
    NotHostPort(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} has an invalid port; use a number from 1 to 65535")]
    InvalidPort(String),
    #[error("{0:?} is not a valid host:port ({1})")]
    Invalid(String, String),
}

impl NodeAddress {
    /// A node id as membership publishes it: `host:port` or `[v6]:port`, port 1 to 65535, no user info.
    pub fn parse(text: &str) -> Result<NodeAddress, AddressError> {
        if text.contains('@') {
            return Err(AddressError::UserInfo);
        }
        let (host, port) =
            split_host_port(text).ok_or_else(|| AddressError::NotHostPort(text.to_string()))?;
        if host.is_empty() {
            return Err(AddressError::NoHost(text.to_string()));
        }
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(AddressError::InvalidPort(text.to_string())),
        };
        let authority = Authority::from_str(text)
            .map_err(|error| AddressError::Invalid(text.to_string(), error.to_string()))?;
        Ok(NodeAddress {
            authority,
            host: host.into(),
            port,
        })
    }

    /// A `pushgateway.servers` entry (`host`, `host:port`, `[v6]`, a bare v6 literal, an `http://` prefix or a
    /// trailing `/` tolerated, as the Go original did); a missing port is `default_port`.
    pub fn from_config_entry(entry: &str, default_port: u16) -> Result<NodeAddress, AddressError> {
        let entry = entry.trim();
        let entry = entry
            .strip_prefix("http://")
            .unwrap_or(entry)
            .trim_end_matches('/');
        if entry.is_empty() {
            return Err(AddressError::Empty);
        }
        // Checked before any message that quotes the entry, which would then show the password.
        if entry.contains('@') {
            return Err(AddressError::UserInfo);
        }
        if entry.contains('/') || entry.contains(char::is_whitespace) {
            return Err(AddressError::NotHostPort(entry.to_string()));
        }
        let bracketed_v6 = entry.starts_with('[');
        let bare_v6 = !bracketed_v6 && entry.matches(':').count() > 1;
        if bare_v6 {
            return NodeAddress::parse(&format!("[{entry}]:{default_port}"));
        }
        if bracketed_v6 && entry.ends_with(']') {
            return NodeAddress::parse(&format!("{entry}:{default_port}"));
        }
        match split_host_port(entry) {
            Some(_) => NodeAddress::parse(entry),
            None => NodeAddress::parse(&format!("{entry}:{default_port}")),
        }
    }

    /// The `host:port` text.
    pub fn as_str(&self) -> &str {
        self.authority.as_str()
    }

    /// The host as a socket address or TLS server name wants it: an IPv6 literal without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<scheme>://<host:port><path_and_query>`.
    pub fn url(&self, scheme: NodeScheme, path_and_query: &str) -> String {
        format!("{}{}{path_and_query}", scheme.prefix(), self.as_str())
    }

    /// The same as [`url`](Self::url), built from parts: no formatting and re-parsing (the push path).
    pub fn uri(&self, scheme: NodeScheme, path_and_query: Option<&PathAndQuery>) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(match scheme {
            NodeScheme::Http => Scheme::HTTP,
            NodeScheme::Https => Scheme::HTTPS,
        });
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).ok()
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The node id of `host` and `port` (e.g. a Consul instance's address and port): an IPv6 literal is
/// bracketed. Not validated: see [`NodeAddress::parse`].
pub fn node_id(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host:port` / `[v6]:port` (the host without brackets); the host may be empty (`:9292`).
pub fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_is_taken_apart_once() {
        let v4 = NodeAddress::parse("10.0.0.1:9091").unwrap();
        assert_eq!(
            (v4.as_str(), v4.host(), v4.port()),
            ("10.0.0.1:9091", "10.0.0.1", 9091)
        );
        assert_eq!(v4.to_string(), "10.0.0.1:9091");
        let v6 = NodeAddress::parse("[::1]:9091").unwrap();
        assert_eq!(
            (v6.as_str(), v6.host(), v6.port()),
            ("[::1]:9091", "::1", 9091)
        );
        assert_eq!(node_id("::1", 9091), "[::1]:9091");
        assert_eq!(node_id("[::1]", 9091), "[::1]:9091");
        assert_eq!(node_id("pgw", 9091), "pgw:9091");
    }

    #[test]
    fn bad_node_ids_say_what_is_wrong() {
        for (text, expected) in [
            (
                "bad host:1",
                AddressError::Invalid(String::new(), String::new()),
            ),
            ("u:p@h:1", AddressError::UserInfo),
            ("h", AddressError::NotHostPort("h".into())),
            (":1", AddressError::NoHost(":1".into())),
            ("h:0", AddressError::InvalidPort("h:0".into())),
            ("h:x", AddressError::InvalidPort("h:x".into())),
            ("[::1]x:1", AddressError::NotHostPort("[::1]x:1".into())),
        ] {
            let error = NodeAddress::parse(text).unwrap_err();
            match expected {
                AddressError::Invalid(..) => assert!(
                    matches!(error, AddressError::Invalid(..)),
                    "{text}: {error}"
                ),
                expected => assert_eq!(error, expected, "{text}"),
            }
        }
        assert!(!AddressError::UserInfo.to_string().contains("u:p"));
    }

    #[test]
    fn config_entries_get_the_default_port() {
        let entry = |text| NodeAddress::from_config_entry(text, 9091).map(|a| a.to_string());
        assert_eq!(entry(" http://pgw/ ").unwrap(), "pgw:9091");
        assert_eq!(entry("pgw:1").unwrap(), "pgw:1");
        assert_eq!(entry("::1").unwrap(), "[::1]:9091");
        assert_eq!(entry("[::1]").unwrap(), "[::1]:9091");
        assert_eq!(entry("[::1]:2").unwrap(), "[::1]:2");
        assert_eq!(entry(""), Err(AddressError::Empty));
        assert_eq!(entry("a/b"), Err(AddressError::NotHostPort("a/b".into())));
        assert_eq!(entry("a:0"), Err(AddressError::InvalidPort("a:0".into())));
    }

    #[test]
    fn urls_and_uris_agree() {
        let address = NodeAddress::parse("127.0.0.1:9091").unwrap();
        let target: PathAndQuery = "/metrics/job/a?x=1".parse().unwrap();
        for scheme in [NodeScheme::Http, NodeScheme::Https] {
            assert_eq!(
                address.uri(scheme, Some(&target)).unwrap().to_string(),
                address.url(scheme, "/metrics/job/a?x=1")
            );
            assert_eq!(
                address.uri(scheme, None).unwrap().to_string(),
                address.url(scheme, "/")
            );
        }
        assert_eq!(
            address.url(NodeScheme::Https, "/-/healthy"),
            "https://127.0.0.1:9091/-/healthy"
        );
    }
}

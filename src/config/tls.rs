//! What `consul_server.tls` and `pushgateway.tls_config` have in common: the PEM file keys and their rules.

use super::{invalid, ConfigError};

/// The PEM file paths of a TLS section (`section`: `consul_server.tls`, `pushgateway.tls_config`) in the order
/// `ca_file`, `cert_file`, `key_file`, trimmed (blank is unset). `cert_file` and `key_file` go together, and the
/// section may be set (`set`, or any file given) only with the https scheme.
pub(super) fn validate_tls_files(
    section: &str,
    files: [Option<String>; 3],
    set: bool,
    https: bool,
) -> Result<[Option<String>; 3], ConfigError> {
    let [ca_file, cert_file, key_file] = files.map(|value| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    if cert_file.is_some() != key_file.is_some() {
        return Err(invalid(format!(
            "{section}: cert_file and key_file go together; set both (client certificate) or neither"
        )));
    }
    let set = set || ca_file.is_some() || cert_file.is_some();
    if set && !https {
        let (parent, leaf) = section.rsplit_once('.').unwrap_or((section, section));
        return Err(invalid(format!(
            "{section}: set but {parent}.scheme is http; set scheme: https or remove {leaf}"
        )));
    }
    Ok([ca_file, cert_file, key_file])
}

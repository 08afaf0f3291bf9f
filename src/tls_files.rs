//! Reading the PEM files of a TLS setting (certificates, a private key) for rustls: the listener's
//! `--web.config.file` and `pushgateway.tls_config` both use it. The caller names the config key in its error.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file cannot be used. The messages quote the path; the caller prefixes the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} is not a PEM certificate file: {message}")]
    NotCertificates { path: PathBuf, message: String },
    #[error("{path:?} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path:?} is not a PEM private key: {message}")]
    NotPrivateKey { path: PathBuf, message: String },
}

/// Every certificate in the PEM file at `path`; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::NotCertificates {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The (first) private key in the PEM file at `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsFileError::NotPrivateKey {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_say_which_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("missing.pem");
        let read = certificates(&missing).unwrap_err().to_string();
        assert!(
            read.starts_with(&format!("cannot read {missing:?}")),
            "{read}"
        );
        let none = certificates(&not_pem).unwrap_err().to_string();
        assert_eq!(none, format!("{not_pem:?} holds no PEM certificate"));
        let key = private_key(&not_pem).unwrap_err().to_string();
        assert!(
            key.starts_with(&format!("{not_pem:?} is not a PEM private key")),
            "{key}"
        );
    }
}

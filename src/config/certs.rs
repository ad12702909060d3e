//! Certificate, key and CA files: read, parsed and checked (a key that does not match its certificate, a chain
//! that does not parse, a CA file without certificates), for `validate` and for the TLS listeners and clients
//! that use them. Also the TLS settings types of the config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The crypto every TLS config here uses (ring: small, and no C toolchain beyond `cc`).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "1.2" => Some(Self::Tls12),
            "1.3" => Some(Self::Tls13),
            _ => None,
        }
    }
}

/// A certificate chain and key as configured (paths already joined to the config's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertPaths {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `[listeners.tls]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerTlsSettings {
    pub(crate) certificates: Vec<CertPaths>,
    pub(crate) min_version: TlsVersion,
    pub(crate) alpn: Vec<String>,
}

/// One certificate, loaded and checked against its key.
pub(crate) struct LoadedCert {
    pub(crate) key: Arc<CertifiedKey>,
    /// DNS names from the subjectAltName extension (the subject's CN when there is none), lower-cased.
    pub(crate) names: Vec<String>,
    pub(crate) not_after: SystemTime,
    /// The files' bytes, to tell a real change from a touch.
    pub(crate) raw: (Vec<u8>, Vec<u8>),
}

impl LoadedCert {
    /// The label of this certificate in metrics and logs: its first name, or its file.
    pub(crate) fn label(&self, paths: &CertPaths) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| paths.cert.display().to_string())
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.not_after < SystemTime::now()
    }
}

/// Reads a certificate chain and its key and checks that they belong together. The error names the file and
/// the reason.
pub(crate) fn load_pair(paths: &CertPaths) -> Result<LoadedCert, String> {
    let cert_bytes = std::fs::read(&paths.cert)
        .map_err(|e| format!("cannot read {}: {e}", paths.cert.display()))?;
    let key_bytes = std::fs::read(&paths.key)
        .map_err(|e| format!("cannot read {}: {e}", paths.key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", paths.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{}: no certificate in the file (expected -----BEGIN CERTIFICATE-----)",
            paths.cert.display()
        ));
    };
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("{}: not a PEM private key: {e}", paths.key.display()))?;
    let (names, not_after) = describe(leaf).map_err(|e| {
        format!(
            "{}: cannot parse the certificate: {e}",
            paths.cert.display()
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {}",
            paths.key.display(),
            paths.cert.display()
        ),
        other => format!("{}: unusable private key: {other}", paths.key.display()),
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        raw: (cert_bytes, key_bytes),
    })
}

fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    };
    Ok((names, not_after))
}

/// Loads every certificate of a listener; the first error stops it.
pub(crate) fn load_all(certs: &[CertPaths]) -> Result<Vec<LoadedCert>, String> {
    certs.iter().map(load_pair).collect()
}

/// Certificates by name: exact names, then `*.` wildcards one label deep, then the first certificate.
/// `[pools.NAME.tls]`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct UpstreamTlsSettings {
    /// `None`: the system's roots.
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
}

/// Reads a CA bundle; the error names the file.
pub(crate) fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

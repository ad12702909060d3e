//! TLS on both sides, with rustls: the certificates a TLS listener presents (chosen by SNI, re-read when their
//! files change), and the client side for `https` and `h2` upstreams.
//!
//! A listener's certificates live in a [`CertResolver`] behind an `ArcSwap`: a reload swaps the whole set, new
//! handshakes see the new one, and connections already open keep what they negotiated. A set that fails to load
//! never replaces a working one.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

use crate::config::ListenerSettings;
use crate::observe::events::{Kind, Level};
use crate::observe::metrics::Metrics;

pub(crate) use crate::config::certs::{
    ListenerTlsSettings, LoadedCert, TlsVersion, UpstreamTlsSettings, load_all, load_roots,
    provider,
};

#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn new(loaded: &[LoadedCert]) -> Option<Self> {
        let default = Arc::clone(&loaded.first()?.key);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in loaded {
            for name in &cert.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name.clone()),
                };
                // The first certificate listed for a name wins.
                map.or_insert_with(|| Arc::clone(&cert.key));
            }
        }
        Some(Self {
            default,
            exact,
            wildcard,
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return Arc::clone(&self.default);
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Arc::clone(k);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Arc::clone(k);
            }
        }
        Arc::clone(&self.default)
    }
}

/// Chooses a listener's certificate by SNI from the set currently loaded.
#[derive(Debug)]
pub(crate) struct CertResolver {
    set: ArcSwap<CertSet>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// A TLS listener's state: its settings, its certificates, and the rustls config built on them.
pub(crate) struct ListenerTls {
    pub(crate) settings: ListenerTlsSettings,
    /// The listener's address, as the `listener` label of the expiry metric.
    label: String,
    resolver: Arc<CertResolver>,
    pub(crate) server_config: Arc<ServerConfig>,
    /// The bytes each certificate was loaded from, and the metric labels in use.
    loaded: std::sync::Mutex<Loaded>,
}

struct Loaded {
    raw: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last re-read failed: the next one that loads counts as a reload even if the files are as before
    /// (an operator putting the good files back).
    failed: bool,
    /// The `name` label and expiry of each certificate.
    names: Vec<(String, f64)>,
}

impl ListenerTls {
    /// Loads the certificates and builds the listener's rustls config.
    pub(crate) fn new(
        settings: &ListenerTlsSettings,
        label: String,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let loaded = load_all(&settings.certificates)?;
        let set = CertSet::new(&loaded).ok_or("no certificate configured")?;
        let resolver = Arc::new(CertResolver {
            set: ArcSwap::from_pointee(set),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = settings
            .alpn
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        // Session tickets let returning clients skip the full handshake (HAProxy and NGINX do the same).
        if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
            config.ticketer = ticketer;
        }
        let this = Self {
            settings: settings.clone(),
            label,
            resolver,
            server_config: Arc::new(config),
            loaded: std::sync::Mutex::new(Loaded {
                raw: Vec::new(),
                failed: false,
                names: Vec::new(),
            }),
        };
        this.publish(&loaded, metrics);
        Ok(this)
    }

    fn publish(&self, loaded: &[LoadedCert], metrics: &Metrics) {
        let mut state = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        for (name, _) in state.names.drain(..) {
            let _ = metrics
                .tls_certificate_expiry
                .remove_label_values(&[&self.label, &name]);
        }
        for (cert, paths) in loaded.iter().zip(&self.settings.certificates) {
            let expiry = cert
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            state.names.push((cert.label(paths), expiry));
        }
        state.raw = loaded.iter().map(|c| c.raw.clone()).collect();
        state.failed = false;
        drop(state);
        self.export(metrics);
    }

    /// Sets this listener's expiry series.
    pub(crate) fn export(&self, metrics: &Metrics) {
        let state = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        for (name, expiry) in &state.names {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[&self.label, name])
                .set(*expiry);
        }
    }

    /// Re-reads the certificate files. A change is applied to new handshakes; a file that does not load keeps
    /// the certificates in use. Returns `None` when nothing changed.
    pub(crate) fn reload_certificates(&self, metrics: &Metrics) -> Option<Result<(), String>> {
        let result = load_all(&self.settings.certificates);
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                self.loaded.lock().unwrap_or_else(|p| p.into_inner()).failed = true;
                metrics
                    .tls_certificate_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(listener = %self.label, error = %e,
                    "certificate reload failed; still serving the previous certificates");
                metrics.events.record(
                    Kind::CertificateFailed,
                    Level::Error,
                    None,
                    None,
                    format!(
                        "listener {}: certificate reload failed, still serving the previous certificates: {e}",
                        self.label
                    ),
                );
                return Some(Err(e));
            }
        };
        {
            let mut state = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            let same = state.raw.len() == loaded.len()
                && state
                    .raw
                    .iter()
                    .zip(&loaded)
                    .all(|(old, new)| *old == new.raw);
            if same {
                if !std::mem::take(&mut state.failed) {
                    return None;
                }
                drop(state);
                metrics
                    .tls_certificate_reloads_total
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(listener = %self.label,
                    "certificates load again after a failed reload; unchanged, still serving them");
                metrics.events.record(
                    Kind::CertificateReloaded,
                    Level::Info,
                    None,
                    None,
                    format!(
                        "listener {}: certificates load again after a failed reload (unchanged)",
                        self.label
                    ),
                );
                return Some(Ok(()));
            }
        }
        let set = CertSet::new(&loaded)?;
        self.resolver.set.store(Arc::new(set));
        self.publish(&loaded, metrics);
        metrics
            .tls_certificate_reloads_total
            .with_label_values(&["success"])
            .inc();
        for (cert, paths) in loaded.iter().zip(&self.settings.certificates) {
            tracing::info!(listener = %self.label, certificate = %paths.cert.display(),
                names = ?cert.names, "certificate reloaded");
            metrics.events.record(
                Kind::CertificateReloaded,
                Level::Info,
                None,
                None,
                format!(
                    "listener {}: certificate {} reloaded ({})",
                    self.label,
                    paths.cert.display(),
                    cert.names.join(", ")
                ),
            );
        }
        Some(Ok(()))
    }

    /// Removes this listener's expiry series (the listener is gone).
    pub(crate) fn forget(&self, metrics: &Metrics) {
        let state = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        for (name, _) in &state.names {
            let _ = metrics
                .tls_certificate_expiry
                .remove_label_values(&[&self.label, name]);
        }
    }

    /// Every file the listener's certificates come from.
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        self.settings
            .certificates
            .iter()
            .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
    }
}

/// Why a client's TLS handshake failed: the `reason` label of `switchyard_tls_handshake_errors_total`.
pub(crate) fn handshake_error_reason(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidMessage(_) => "malformed",
            rustls::Error::PeerIncompatible(p) => {
                use rustls::PeerIncompatible as P;
                match p {
                    P::Tls12NotOffered
                    | P::Tls12NotOfferedOrEnabled
                    | P::SupportedVersionsExtensionRequired
                    | P::ServerDoesNotSupportTls12Or13 => "protocol_version",
                    _ => "incompatible",
                }
            }
            rustls::Error::NoApplicationProtocol => "no_application_protocol",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => "malformed",
            _ => "other",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => "closed",
        io::ErrorKind::InvalidData => "malformed",
        _ => "other",
    }
}

/// The client side for one pool's TLS upstreams.
pub(crate) fn client_config(
    settings: &UpstreamTlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let roots = load_roots(settings.ca_file.as_deref())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to verify a backend's certificate against: the configured `server_name`, else the backend's host.
pub(crate) fn server_name(
    configured: Option<&str>,
    backend_address: &str,
) -> Option<ServerName<'static>> {
    let host = match configured {
        Some(n) => n,
        None => match backend_address.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => backend_address,
        },
    };
    ServerName::try_from(host.to_owned()).ok()
}

/// What a proxy listener speaks, published in the snapshot: a reload changes it without rebinding, and a
/// connection takes the mode current when it is accepted.
pub(crate) enum ListenerMode {
    Plain,
    /// `redirect_https`: every request gets a 308 to https.
    Redirect,
    Tls(Arc<ListenerTls>),
}

impl ListenerMode {
    /// The mode for a listener's settings, reusing `previous`'s TLS state when its settings are unchanged (its
    /// certificates are then re-read, as every reload does).
    pub(crate) fn build(
        settings: &ListenerSettings,
        previous: Option<&ListenerMode>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        if settings.redirect_https {
            return Ok(Self::Redirect);
        }
        let Some(tls) = &settings.tls else {
            return Ok(Self::Plain);
        };
        if let Some(Self::Tls(old)) = previous {
            if old.settings == *tls {
                let _ = old.reload_certificates(metrics);
                return Ok(Self::Tls(Arc::clone(old)));
            }
        }
        let label = settings.address.to_string();
        ListenerTls::new(tls, label, metrics).map(|t| Self::Tls(Arc::new(t)))
    }

    pub(crate) fn tls(&self) -> Option<&Arc<ListenerTls>> {
        match self {
            Self::Tls(t) => Some(t),
            _ => None,
        }
    }
}

//! TLS and HTTP/2 test helpers: a test CA issuing certificates as files, TLS and HTTP/1.1 or HTTP/2 clients on
//! raw connections, and readers for the echo backend's answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{BoxBody, admin_get, full, write_atomically};
use switchyard::server::Server;

/// A test CA and the certificates it issues, as PEM files in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate's files and DER bytes.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate for `names` into `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |_| {})
    }

    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.path(&format!("{file}.pem")),
            key: self.path(&format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        write_atomically(&issued.key, key.serialize_pem().as_bytes());
        write_atomically(&issued.cert, cert.pem().as_bytes());
        issued
    }

    pub fn client(&self, alpn: &[&str]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// `[[listeners]]` with TLS over `certs`, an admin listener, and a pool `p` over `backend`.
pub fn tls_config(certs: &[&Issued], backend: SocketAddr, listener_extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{}]\n{listener_extra}\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n\
         [[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{backend}\" }}]\n",
        list.join(", ")
    )
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn tls_connect(addr: SocketAddr, sni: &str, connector: &TlsConnector) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

pub fn presented(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

pub async fn h1<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
) -> http1::SendRequest<BoxBody> {
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
) -> http2::SendRequest<BoxBody> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn text(resp: Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

pub fn request_to(uri: &str, host: &str) -> Request<BoxBody> {
    Request::get(uri)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

/// The JSON the echo backend returns, as (version, host header, x-forwarded-proto).
pub fn echoed(json: &str) -> (String, Vec<String>, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{json}"));
    let headers: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    let all = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    (
        v["version"].as_str().unwrap().to_owned(),
        all("host"),
        all("x-forwarded-proto"),
    )
}

pub async fn metrics_text(server: &Server) -> String {
    admin_get(server, "/metrics").await.1
}

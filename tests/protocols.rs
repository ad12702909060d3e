//! Protocols: TLS termination (SNI, the default certificate, versions, rotation, broken files), HTTP/2 both ways
//! (h2 over TLS by ALPN, h2c by prior knowledge, h2c and h2 upstreams), gRPC-style trailers with streaming both
//! ways, WebSocket upgrades, and the HTTPS redirect listener. Certificates are made at test time with rcgen.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

use common::*;
use switchyard::server::Server;

/// A test CA and the certificates it issues, as PEM files in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate's files and DER bytes.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
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

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate for `names` into `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |_| {})
    }

    fn issue_with(
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

    fn client(&self, alpn: &[&str]) -> TlsConnector {
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
fn tls_config(certs: &[&Issued], backend: SocketAddr, listener_extra: &str) -> String {
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

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, sni: &str, connector: &TlsConnector) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn presented(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn h1<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
) -> http1::SendRequest<BoxBody> {
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: T,
) -> http2::SendRequest<BoxBody> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn text(resp: Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn get(uri: &str, host: &str) -> Request<BoxBody> {
    Request::get(uri)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

/// The JSON the echo backend returns, as (version, host header, x-forwarded-proto).
fn echoed(json: &str) -> (String, Vec<String>, Vec<String>) {
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

async fn metrics_text(server: &Server) -> String {
    admin_get(server, "/metrics").await.1
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_first() {
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let www = pki.issue("www", &["www.test", "*.www.test"]);
    let backend = echo_backend().await;
    let server = start_proxy(&tls_config(&[&api, &www], backend, "")).await;
    let addr = server.listen_addrs[0];
    let client = pki.client(&["http/1.1"]);

    for (sni, expected) in [
        ("api.test", &api.der),
        ("www.test", &www.der),
        ("a.www.test", &www.der),
        ("API.TEST", &api.der),
        ("unknown.test", &api.der),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        // Unknown names get the default (first) certificate, which the client then rejects for the wrong name:
        // check what was presented with a client that accepts any name from our CA.
        let stream = match client.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => {
                assert_eq!(sni, "unknown.test", "{sni}: {e}");
                let seen = presented_anyway(addr, sni).await;
                assert_eq!(&seen, expected, "{sni}");
                continue;
            }
        };
        assert_eq!(&presented(&stream), expected, "{sni}");
        let mut sender = h1(stream).await;
        let resp = sender.send_request(get("/who", sni)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (version, host, proto) = echoed(&text(resp).await);
        assert_eq!(version, "HTTP/1.1");
        assert_eq!(host, vec![sni.to_owned()]);
        assert_eq!(
            proto,
            vec!["https".to_owned()],
            "X-Forwarded-Proto on a TLS listener"
        );
    }
    let m = metrics_text(&server).await;
    let expiry = metric(
        &m,
        "switchyard_tls_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:0\",name=\"api.test\"}",
    )
    .unwrap_or_else(|| panic!("expiry metric missing:\n{m}"));
    assert!(
        expiry > 4_000_000_000.0,
        "rcgen's default notAfter is 4096: {expiry}"
    );
    server.shutdown().await;
}

/// The leaf certificate a TLS server presents for `sni`, whatever its names (the handshake is completed with
/// a verifier that accepts anything, for inspection only).
async fn presented_anyway(addr: SocketAddr, sni: &str) -> Vec<u8> {
    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
        .with_no_client_auth();
    let stream = tls_connect(addr, sni, &TlsConnector::from(Arc::new(config))).await;
    presented(&stream)
}

/// A TLS 1.1 ClientHello (legacy version 3.2, no supported_versions extension; one signature_algorithms
/// extension so that the version is what the server objects to), byte by byte.
const TLS11_CLIENT_HELLO: [u8; 62] = {
    let mut b = [0u8; 62];
    // Record: handshake, legacy version 3.1, length 57.
    b[0] = 0x16;
    b[1] = 0x03;
    b[2] = 0x01;
    b[4] = 57;
    // Handshake: ClientHello, length 53.
    b[5] = 0x01;
    b[8] = 53;
    // client_version 3.2 (TLS 1.1); the random (11..43) stays zero; session id length 0 at 43.
    b[9] = 0x03;
    b[10] = 0x02;
    // Cipher suites: length 4, ECDHE-RSA-AES128-SHA, AES128-SHA.
    b[45] = 4;
    b[46] = 0xc0;
    b[47] = 0x13;
    b[48] = 0x00;
    b[49] = 0x2f;
    // Compression methods: 1, null.
    b[50] = 1;
    b[51] = 0;
    // Extensions: length 8; signature_algorithms (13), length 4, list length 2, rsa_pkcs1_sha256.
    b[53] = 8;
    b[55] = 13;
    b[57] = 4;
    b[59] = 2;
    b[60] = 0x04;
    b[61] = 0x01;
    b
};

#[tokio::test]
async fn tls_1_1_and_plain_http_are_refused_and_counted() {
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let backend = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&tls_config(&[&api], backend, "min_version = \"1.2\"")).await;
    let addr = server.listen_addrs[0];

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&TLS11_CLIENT_HELLO).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    // An alert record: level fatal (2), description protocol_version (70); never a ServerHello.
    assert!(answer.len() >= 7, "{answer:?}");
    assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
    assert_eq!(
        &answer[5..7],
        &[2, 70],
        "fatal protocol_version: {answer:?}"
    );

    let plain = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.contains("HTTP/1.1 200"), "{plain}");

    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = metrics_text(&server).await;
            metric(
                &m,
                "switchyard_tls_handshake_errors_total{reason=\"protocol_version\"}",
            ) == Some(1.0)
                && metric(
                    &m,
                    "switchyard_tls_handshake_errors_total{reason=\"malformed\"}",
                ) == Some(1.0)
        })
        .await,
        "{}",
        metrics_text(&server).await
    );

    // Nobody else is affected.
    let stream = tls_connect(addr, "api.test", &pki.client(&["http/1.1"])).await;
    let resp = h1(stream)
        .await
        .send_request(get("/", "api.test"))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "b");
    server.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_on_file_change_and_a_broken_file_keeps_the_old() {
    let pki = Pki::new();
    let first = pki.issue("site", &["api.test"]);
    let backend = named_backend("b", Duration::ZERO).await;
    let path = pki.path("switchyard.toml");
    std::fs::write(&path, tls_config(&[&first], backend, "")).unwrap();
    fail_on_task_panics();
    let config = switchyard::config::load(&path).unwrap();
    let server = Server::start_with_file(config, path.clone()).await.unwrap();
    let addr = server.listen_addrs[0];
    let client = pki.client(&["http/1.1"]);

    // A client keeps a connection open across the rotation.
    let kept = tls_connect(addr, "api.test", &client).await;
    assert_eq!(presented(&kept), first.der);
    let mut kept = h1(kept).await;
    let resp = kept.send_request(get("/", "api.test")).await.unwrap();
    assert_eq!(text(resp).await, "b");

    // Rewrite both files with a new key and certificate: new handshakes get it.
    let second = pki.issue("site", &["api.test"]);
    assert_ne!(first.der, second.der);
    assert!(
        eventually(Duration::from_secs(10), || async {
            presented(&tls_connect(addr, "api.test", &client).await) == second.der
        })
        .await,
        "the new certificate was never served"
    );
    let resp = kept.send_request(get("/", "api.test")).await.unwrap();
    assert_eq!(text(resp).await, "b", "the open connection still works");
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(
            &m,
            "switchyard_tls_certificate_reloads_total{result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );

    // A broken certificate file: counted, and the previous certificate stays.
    write_atomically(
        &second.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &metrics_text(&server).await,
                "switchyard_tls_certificate_reloads_total{result=\"error\"}",
            ) >= Some(1.0)
        })
        .await,
        "a broken certificate was not counted"
    );
    let fresh = tls_connect(addr, "api.test", &client).await;
    assert_eq!(
        presented(&fresh),
        second.der,
        "the last good certificate stays"
    );
    let resp = h1(fresh)
        .await
        .send_request(get("/", "api.test"))
        .await
        .unwrap();
    assert_eq!(text(resp).await, "b");

    // A reload with the broken file is refused as a whole (validate names the file).
    let refused = server
        .reload(switchyard::control::Trigger::Signal)
        .await
        .unwrap_err();
    let refused = refused.to_string();
    assert!(refused.contains("site.pem"), "{refused}");
    server.shutdown().await;
}

#[tokio::test]
async fn h2_over_tls_and_h2c_reach_an_http1_upstream() {
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let backend = echo_backend().await;
    let server = start_proxy(&tls_config(&[&api], backend, "")).await;
    let tls_addr = server.listen_addrs[0];

    // h2 negotiated by ALPN.
    let stream = tls_connect(tls_addr, "api.test", &pki.client(&["h2", "http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2(stream).await;
    let mut answers = Vec::new();
    for i in 0..10 {
        let req = Request::get(format!("https://api.test/h2/{i}"))
            .version(Version::HTTP_2)
            .body(full(""))
            .unwrap();
        answers.push(sender.send_request(req));
    }
    for a in answers {
        let resp = a.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let (version, host, proto) = echoed(&text(resp).await);
        assert_eq!(version, "HTTP/1.1", "the upstream speaks HTTP/1.1");
        assert_eq!(host, vec!["api.test".to_owned()], "Host from :authority");
        assert_eq!(proto, vec!["https".to_owned()]);
    }
    server.shutdown().await;

    // h2c by prior knowledge on a plain listener.
    let server = start_proxy(&pool_config(&[backend], "")).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let mut sender = h2(tcp).await;
    let req = Request::get("http://plain.test/h2c")
        .version(Version::HTTP_2)
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let (version, host, proto) = echoed(&text(resp).await);
    assert_eq!(
        (version.as_str(), host, proto),
        (
            "HTTP/1.1",
            vec!["plain.test".to_owned()],
            vec!["http".to_owned()]
        )
    );
    server.shutdown().await;
}

fn curl_available() -> bool {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !found && std::env::var_os("SWITCHYARD_REQUIRE_TOOLS").is_some() {
        panic!("curl with HTTP/2 is required (SWITCHYARD_REQUIRE_TOOLS is set)");
    }
    found
}

fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_speaks_h2_over_tls_and_h2c_prior_knowledge() {
    if !curl_available() {
        eprintln!("skipped: no curl with HTTP/2 here");
        return;
    }
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let backend = echo_backend().await;
    let server = start_proxy(&tls_config(&[&api], backend, "")).await;
    let plain = start_proxy(&pool_config(&[backend], "")).await;
    let (tls_addr, plain_addr) = (server.listen_addrs[0], plain.listen_addrs[0]);
    let ca = pki.ca_file();
    let resolve = format!("api.test:{}:127.0.0.1", tls_addr.port());
    let url = format!("https://api.test:{}/curl", tls_addr.port());
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--write-out",
            "\n%{http_version} %{http_code}",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(out.ends_with("\n2 200"), "curl --http2: {out} {err}");
    assert!(out.contains("\"x-forwarded-proto\",\"https\""), "{out}");

    let url = format!("http://{plain_addr}/curl");
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http2-prior-knowledge",
            "--write-out",
            "\n%{http_version} %{http_code}",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(
        out.ends_with("\n2 200"),
        "curl --http2-prior-knowledge: {out} {err}"
    );
    server.shutdown().await;
    plain.shutdown().await;
}

/// An HTTP/2-only backend (h2c) that reports the version it saw and counts its connections.
async fn h2c_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_h2(TokioIo::new(tcp)));
        }
    });
    (addr, connections)
}

/// Serves HTTP/2 only: `/grpc` echoes the request body frame by frame and ends with gRPC trailers; anything
/// else answers with the version seen and the `:authority`.
async fn serve_h2<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static>(io: T) {
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        if req.uri().path() == "/grpc" {
            let te = req.headers().get("te").cloned();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let mut body = req.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        let _ = tx.send(Ok(Frame::data(data))).await;
                    }
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("grpc-message", "done".parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
            let stream = tokio_stream_from(rx);
            let mut resp = Response::new(BodyExt::boxed(
                StreamBody::new(stream)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            ));
            resp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            if let Some(te) = te {
                resp.headers_mut().insert("x-saw-te", te);
            }
            return Ok::<_, std::convert::Infallible>(resp);
        }
        let body = format!(
            "{:?} {}",
            req.version(),
            req.uri().authority().map_or("", |a| a.as_str())
        );
        Ok(Response::new(full(body)))
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn h2c_upstream_is_multiplexed_over_few_connections() {
    let (backend, connections) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let addr = server.listen_addrs[0];
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            get_with(addr, &format!("/many/{i}"), "svc.test").await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, "HTTP/2.0 svc.test",
            "forwarded as HTTP/2 with :authority from Host"
        );
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= 4,
        "40 concurrent requests opened {opened} HTTP/2 connections"
    );
    server.shutdown().await;
}

async fn get_with(addr: SocketAddr, path: &str, host: &str) -> (StatusCode, String) {
    let resp = client()
        .request(
            Request::get(format!("http://{addr}{path}"))
                .header("host", host)
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    (status, text(resp).await)
}

#[tokio::test]
async fn grpc_trailers_and_streaming_both_ways_over_http2() {
    let (backend, _) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let mut sender = h2(tcp).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = BodyExt::boxed(
        StreamBody::new(tokio_stream_from(rx))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    );
    let req = Request::post("http://grpc.test/grpc")
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-saw-te"],
        "trailers",
        "TE: trailers reached the backend"
    );
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: the body streams both ways through the proxy.
    for i in 0..3 {
        let message = Bytes::from(format!("message {i}"));
        tx.send(Ok(Frame::data(message.clone()))).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo did not stream back")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), message);
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if frame.is_trailers() {
            trailers = frame.into_trailers().ok();
        }
    }
    let trailers = trailers.expect("trailers arrived at the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    server.shutdown().await;
}

#[tokio::test]
async fn h2_and_https_upstreams_over_tls_are_verified() {
    let pki = Pki::new();
    let upstream_cert = pki.issue("upstream", &["backend.internal"]);
    let certs = vec![rustls::pki_types::CertificateDer::from(
        upstream_cert.der.clone(),
    )];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&upstream_cert.key).unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve_h2(TokioIo::new(tls)).await;
                } else {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(full(format!(
                            "{:?} {}",
                            req.version(),
                            req.headers()
                                .get("host")
                                .map_or("", |h| h.to_str().unwrap_or(""))
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });

    for (protocol, expected) in [("h2", "HTTP/2.0 app.test"), ("https", "HTTP/1.1 app.test")] {
        let extra = format!(
            "protocol = \"{protocol}\"\n[pools.p.tls]\nca_file = \"{}\"\nserver_name = \"backend.internal\"\n",
            pki.ca_file().display()
        );
        let checked = format!(
            "{extra}[pools.p.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n"
        );
        let server = start_proxy(&pool_config(&[upstream], &checked)).await;
        let (status, body) = get_with(server.listen_addrs[0], "/x", "app.test").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, expected),
            "{protocol}"
        );
        // Health checks speak the pool's protocol too.
        let series = format!(
            "switchyard_health_checks_total{{backend=\"{upstream}\",pool=\"p\",result=\"success\"}}"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                metric(&metrics_text(&server).await, &series) >= Some(2.0)
            })
            .await,
            "{protocol}: {}",
            metrics_text(&server).await
        );
        server.shutdown().await;

        // The wrong name: the certificate does not verify, and the client gets 502.
        let extra = extra.replace("backend.internal", "other.internal");
        let server = start_proxy(&pool_config(&[upstream], &extra)).await;
        let (status, body) = get_with(server.listen_addrs[0], "/x", "app.test").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{protocol}: {body}");
        server.shutdown().await;
    }
}

/// A WebSocket echo server.
async fn websocket_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(server: &Server) -> WebSocket {
    let url = format!("ws://{}/chat", server.listen_addrs[0]);
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

/// Sends a text message and waits (bounded) for the same text back.
async fn echo(ws: &mut WebSocket, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo")
        .unwrap()
        .unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

#[tokio::test]
async fn websocket_messages_flow_both_ways_through_the_proxy() {
    let backend = websocket_backend().await;
    let server = start_proxy(&pool_config(&[backend], "")).await;
    let url = format!("ws://{}/chat", server.listen_addrs[0]);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        echo(&mut ws, &format!("hello {i}")).await;
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "switchyard_upgraded_connections"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("switchyard_requests_total{{backend=\"{backend}\",code=\"101\",pool=\"p\"}}")
        ),
        Some(1.0),
        "{m}"
    );

    // The client closes; the backend answers and closes; the proxy passes the end on.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &metrics_text(&server).await,
                "switchyard_upgraded_connections",
            ) == Some(0.0)
        })
        .await,
        "the tunnel did not close"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_websocket_finish_within_the_drain_timeout() {
    let backend = websocket_backend().await;
    let toml = format!("drain_timeout = \"30s\"\n{}", pool_config(&[backend], ""));
    let server = start_proxy(&toml).await;
    let mut ws = ws_connect(&server).await;
    echo(&mut ws, "before").await;

    let shutdown = tokio::spawn(server.shutdown());
    // Draining: the tunnel still carries messages, and the shutdown waits for it.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo(&mut ws, &format!("during {i}")).await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the open WebSocket"
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown did not end once the WebSocket closed")
        .unwrap();
}

#[tokio::test]
async fn http2_clients_get_the_configured_stream_limit() {
    let backend = named_backend("b", Duration::ZERO).await;
    let toml = pool_config(&[backend], "").replace(
        "[[routes]]",
        "[limits]\nmax_concurrent_streams = 7\n\n[[routes]]",
    );
    let server = start_proxy(&toml).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let (sender, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut sender = sender.ready().await.unwrap();
    let req = Request::get("http://s.test/").body(()).unwrap();
    let (resp, _) = sender.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The server's SETTINGS have arrived with the first response.
    assert_eq!(sender.current_max_send_streams(), 7);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_idle_timeout() {
    let backend = websocket_backend().await;
    let toml = pool_config(&[backend], "").replace(
        "[[routes]]",
        "[limits]\nidle_timeout = \"1s\"\n\n[[routes]]",
    );
    let server = start_proxy(&toml).await;
    let mut ws = ws_connect(&server).await;
    echo(&mut ws, "ping").await;
    // Silence: the proxy closes the tunnel; the client sees the end of the stream.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was never closed");
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_to_an_http2_pool_is_refused_clearly() {
    let (backend, _) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let answer = raw(
        server.listen_addrs[0],
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("cannot carry an upgrade"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_redirect_listener_sends_every_request_to_https() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let backend = backend(move |_req| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Response::new(full("backend"))
        }
    })
    .await;
    let toml = pool_config(&[backend], "").replacen(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nredirect_https = true\n",
        1,
    );
    let server = start_proxy(&toml).await;
    let addr = server.listen_addrs[0];
    for (host, path, location) in [
        ("example.com", "/a/b?c=1", "https://example.com/a/b?c=1"),
        ("Example.com:8080", "/", "https://Example.com/"),
    ] {
        let resp = client()
            .request(
                Request::post(format!("http://{addr}{path}"))
                    .header("host", host)
                    .body(full("payload"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()["location"], location);
    }
    let answer = raw(addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(3)).await;
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reaches a pool");
    server.shutdown().await;
}

#[tokio::test]
async fn validate_names_a_mismatched_key_and_warns_on_an_expired_certificate() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test"]);
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mismatched = Issued {
        cert: a.cert.clone(),
        key: b.key.clone(),
        der: Vec::new(),
    };
    let err = switchyard::config::parse(&tls_config(&[&mismatched], backend, ""), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listeners[0].tls.certificates[0]"), "{err}");
    assert!(
        err.contains("b.key does not match the certificate in"),
        "{err}"
    );

    let missing = Issued {
        cert: pki.path("nope.pem"),
        key: a.key.clone(),
        der: Vec::new(),
    };
    let err = switchyard::config::parse(&tls_config(&[&missing], backend, ""), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.pem") && err.contains("No such file"),
        "{err}"
    );

    let old = pki.issue_with("old", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let config = switchyard::config::parse(&tls_config(&[&old], backend, ""), "t.toml").unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].contains("expired at 2021-01-01"),
        "{:?}",
        config.warnings
    );

    let err = switchyard::config::parse(
        &tls_config(&[&a], backend, "min_version = \"1.1\"\nalpn = [\"spdy\"]"),
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("listeners[0].tls.min_version") && err.contains("\"1.1\""),
        "{err}"
    );
    assert!(err.contains("listeners[0].tls.alpn[0]"), "{err}");
}

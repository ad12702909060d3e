//! TLS termination: the certificate chosen by SNI (the first one by default), old versions and plain HTTP
//! refused and counted, certificates rotated on file change (a broken file keeps the old), `validate` on bad
//! and expired certificates, and the HTTPS redirect listener. Certificates are made at test time with rcgen.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::*;
use switchyard::server::Server;

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
        let resp = sender.send_request(request_to("/who", sni)).await.unwrap();
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
        .send_request(request_to("/", "api.test"))
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
    let resp = kept
        .send_request(request_to("/", "api.test"))
        .await
        .unwrap();
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
    let resp = kept
        .send_request(request_to("/", "api.test"))
        .await
        .unwrap();
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
        .send_request(request_to("/", "api.test"))
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
    // The event feed: the rotation, the broken file, the refused reload, each with its reason.
    let feed = events(&server).await;
    let said = |kind: &str, text: &str| feed.iter().any(|e| e.0 == kind && e.2.contains(text));
    assert!(said("certificate_reloaded", "api.test"), "{feed:?}");
    assert!(
        said(
            "certificate_failed",
            "still serving the previous certificates"
        ),
        "{feed:?}"
    );
    assert!(said("reload_failed", "site.pem"), "{feed:?}");
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

//! DNS discovery against a real DNS server on 127.0.0.1 (UDP, built here with hickory-proto), whose records the
//! tests change: pools follow A and SRV records (ports and weights), keep the last known backends while DNS is
//! down, and drop them on NXDOMAIN only once it persists.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use hickory_proto::op::ResponseCode;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

use common::*;
use switchyard::server::Server;

fn discovery_config(dns: SocketAddr, pool_extra: &str) -> String {
    config(&format!(
        "[resolver]\nnameservers = [\"{dns}\"]\ntimeout = \"300ms\"\n\n[[routes]]\npool = \"p\"\n[pools.p]\n{pool_extra}\n"
    ))
}

async fn backends(server: &Server) -> Vec<(String, String, u64)> {
    let p = pools(server).await;
    let mut list: Vec<(String, String, u64)> = p["pools"]["p"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["source"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    list.sort();
    list
}

async fn lookups(server: &Server, result: &str) -> f64 {
    let (_, text) = admin_get(server, "/metrics").await;
    metric(
        &text,
        &format!("switchyard_discovery_lookups_total{{pool=\"p\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_records_add_a_backend_beside_the_static_ones() {
    let dns = Dns::start().await;
    let from_dns = named_backend("dns", Duration::ZERO).await;
    let listed = named_backend("static", Duration::ZERO).await;
    let server = start_proxy(&discovery_config(
        dns.addr,
        &format!(
            "backends = [{{ address = \"{listed}\" }}]\ndiscovery = {{ type = \"dns\", name = \"web.test\", port = {}, refresh = \"1s\" }}",
            from_dns.port()
        ),
    ))
    .await;
    // Only the static backend until DNS has the name.
    assert_eq!(
        backends(&server).await,
        vec![(listed.to_string(), "static".into(), 1)]
    );
    dns.set(|z| {
        z.a.insert("web.test".into(), vec![Ipv4Addr::LOCALHOST]);
    });
    let want = {
        let mut w = vec![
            (listed.to_string(), "static".to_owned(), 1),
            (from_dns.to_string(), "dns".to_owned(), 1),
        ];
        w.sort();
        w
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&server).await == want
        })
        .await,
        "the A record never showed up: {:?}",
        backends(&server).await
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both backends take traffic: {seen:?}");
    let (_, text) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(&text, "switchyard_discovery_backends{pool=\"p\"}"),
        Some(1.0)
    );
    // The event feed names the change.
    let feed = events(&server).await;
    assert!(
        feed.iter()
            .any(|e| e.0 == "dns_changed" && e.2.contains(&format!("added [{from_dns}]"))),
        "{feed:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_and_the_pool_follows_them() {
    let dns = Dns::start().await;
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let c = named_backend("c", Duration::ZERO).await;
    dns.set(|z| {
        z.a.insert("node.test".into(), vec![Ipv4Addr::LOCALHOST]);
        z.srv.insert(
            "_http._tcp.api.test".into(),
            vec![
                (1, a.port(), "node.test".into()),
                (3, b.port(), "node.test".into()),
            ],
        );
    });
    // `refresh` is an hour: the records' 1 s TTL is what makes the pool follow them.
    let server = start_proxy(&discovery_config(
        dns.addr,
        "discovery = { type = \"dns_srv\", name = \"_http._tcp.api.test\", refresh = \"1h\" }",
    ))
    .await;
    let mut first = vec![
        (a.to_string(), "dns".to_owned(), 1),
        (b.to_string(), "dns".to_owned(), 3),
    ];
    first.sort();
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&server).await == first
        })
        .await,
        "{:?}",
        backends(&server).await
    );
    // Weights 1:3 over 40 requests: smooth round-robin gives exactly 10 and 30.
    let mut counts = HashMap::new();
    for _ in 0..40 {
        let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
        assert_eq!(status, 200);
        *counts.entry(body).or_insert(0) += 1;
    }
    assert_eq!((counts["a"], counts["b"]), (10, 30), "{counts:?}");

    // b is drained by hand: that state must survive the change (b stays the same backend).
    let (status, _) = send(
        server.admin_addr,
        "POST",
        &format!("/api/pools/p/backends/{b}/drain"),
        "",
    )
    .await;
    assert_eq!(status, 200);

    // Records change: a goes, c comes (weight 0 counts as 1).
    dns.set(|z| {
        z.srv.insert(
            "_http._tcp.api.test".into(),
            vec![
                (3, b.port(), "node.test".into()),
                (0, c.port(), "node.test".into()),
            ],
        );
    });
    let mut second = vec![
        (b.to_string(), "dns".to_owned(), 3),
        (c.to_string(), "dns".to_owned(), 1),
    ];
    second.sort();
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&server).await == second
        })
        .await,
        "{:?}",
        backends(&server).await
    );
    let p = pools(&server).await;
    let draining = |addr: SocketAddr| {
        p["pools"]["p"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .map(|x| x["draining"].as_bool().unwrap())
    };
    assert_eq!(
        draining(b),
        Some(true),
        "b lost its state in the change: {p}"
    );
    assert_eq!(draining(c), Some(false));
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "c"),
        "the drained b got a request"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn dns_down_keeps_the_last_backends_and_nxdomain_empties_only_once_it_persists() {
    let mut dns = Dns::start().await;
    let a = named_backend("a", Duration::ZERO).await;
    dns.set(|z| {
        z.a.insert("node.test".into(), vec![Ipv4Addr::LOCALHOST]);
        z.srv.insert(
            "_http._tcp.api.test".into(),
            vec![(1, a.port(), "node.test".into())],
        );
    });
    let server = start_proxy(&discovery_config(
        dns.addr,
        "discovery = { type = \"dns_srv\", name = \"_http._tcp.api.test\", refresh = \"1s\" }",
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&server).await.len() == 1
        })
        .await
    );

    // The DNS server goes away: lookups fail, the backend stays and serves.
    dns.stop();
    assert!(
        eventually(Duration::from_secs(15), || async {
            lookups(&server, "failure").await >= 2.0
        })
        .await,
        "no failed lookups counted"
    );
    assert_eq!(
        backends(&server).await.len(),
        1,
        "a DNS outage emptied the pool"
    );
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));

    // Back, now saying NXDOMAIN: the backend stays for the first empty answers, then goes.
    dns.set(|z| {
        z.srv.clear();
        z.a.clear();
    });
    dns.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            lookups(&server, "empty").await >= 1.0
        })
        .await
    );
    let empties = lookups(&server, "empty").await;
    if empties < 3.0 {
        assert_eq!(
            backends(&server).await.len(),
            1,
            "emptied after {empties} empty answers"
        );
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            backends(&server).await.is_empty()
        })
        .await,
        "a persistent NXDOMAIN never emptied the discovered backends"
    );
    assert!(lookups(&server, "empty").await >= 3.0);
    let (status, _, _) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(status, 503);
    server.shutdown().await;
}

#[tokio::test]
async fn a_pool_waiting_for_its_first_answer_says_503() {
    // A DNS server that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = start_proxy(&discovery_config(
        silent.local_addr().unwrap(),
        "discovery = { type = \"dns\", name = \"web.test\", port = 80 }",
    ))
    .await;
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no backend available"), "{body}");
    server.shutdown().await;
}

#[test]
fn validate_checks_discovery_settings() {
    let check = |pool: &str| {
        switchyard::config::parse(
            &config(&format!("[[routes]]\npool = \"p\"\n[pools.p]\n{pool}\n")),
            "t.toml",
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(
        check("discovery = { type = \"dns\", name = \"api.service.consul\", port = 8080 }").is_ok()
    );
    assert!(
        check("discovery = { type = \"dns_srv\", name = \"_http._tcp.api.service.consul\" }")
            .is_ok()
    );
    let e = check("discovery = { type = \"dns\", name = \"api.test\" }").unwrap_err();
    assert!(
        e.contains("pools.p.discovery.port") && e.contains("needs the backends' port"),
        "{e}"
    );
    let e = check("discovery = { type = \"dns_srv\", name = \"_x._tcp.api.test\", port = 1 }")
        .unwrap_err();
    assert!(e.contains("leave port out"), "{e}");
    let e = check("discovery = { type = \"consul\", name = \"api.test\" }").unwrap_err();
    assert!(
        e.contains("pools.p.discovery.type") && e.contains("\"dns_srv\""),
        "{e}"
    );
    let e = check(
        "discovery = { type = \"dns\", name = \"not a name\", port = 80, refresh = \"soon\" }",
    )
    .unwrap_err();
    assert!(
        e.contains("pools.p.discovery.name") && e.contains("pools.p.discovery.refresh"),
        "{e}"
    );
    let e = check("").unwrap_err();
    assert!(
        e.contains("pools.p.backends") && e.contains("or a discovery"),
        "{e}"
    );
    let e = switchyard::config::parse(
        &config("[resolver]\nnameservers = [\"dns.example\"]\n[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n"),
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("resolver.nameservers[0]"), "{e}");
}

/// A resolver answering SERVFAIL or REFUSED says nothing about the name: the pool keeps its discovered backends
/// however long it lasts (well past the three lookups that empty it on NXDOMAIN), counts each lookup as a
/// failure, and logs once when failing starts and once when it ends. Through the real binary, for A and SRV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_and_refused_keep_the_discovered_backends() {
    let dns = Dns::start().await;
    let from_dns = named_backend("dns", Duration::ZERO).await;
    dns.set(|z| {
        z.a.insert("web.test".into(), vec![Ipv4Addr::LOCALHOST]);
        z.a.insert("node.test".into(), vec![Ipv4Addr::LOCALHOST]);
        z.srv.insert(
            "_http._tcp.api.test".into(),
            vec![(1, from_dns.port(), "node.test".into())],
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let (_proc, port, admin) = spawn(dir.path(), |port, admin| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\n\
             [[routes]]\nhost = \"a.test\"\npool = \"a\"\n[[routes]]\nhost = \"srv.test\"\npool = \"srv\"\n\
             [pools.a]\ndiscovery = {{ type = \"dns\", name = \"web.test\", port = {}, refresh = \"1s\" }}\n\
             [pools.srv]\ndiscovery = {{ type = \"dns_srv\", name = \"_http._tcp.api.test\", refresh = \"1s\" }}\n",
            dns.addr,
            from_dns.port()
        )
    })
    .await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let lookups = |pool: &'static str, result: &'static str| async move {
        metric_at(
            admin,
            &format!("switchyard_discovery_lookups_total{{pool=\"{pool}\",result=\"{result}\"}}"),
        )
        .await
    };
    let served = || async {
        get(proxy, "/", Some("a.test")).await.0 == 200
            && get(proxy, "/", Some("srv.test")).await.0 == 200
    };
    assert!(
        eventually(Duration::from_secs(10), served).await,
        "the discovered backends never served"
    );
    for code in [ResponseCode::ServFail, ResponseCode::Refused] {
        let before = (
            lookups("a", "failure").await,
            lookups("srv", "failure").await,
        );
        dns.set(|z| z.failing = Some(code));
        // Five failed refreshes in a row for each pool: more than the three that empty a pool on NXDOMAIN.
        assert!(
            eventually(Duration::from_secs(20), || async {
                lookups("a", "failure").await >= before.0 + 5.0
                    && lookups("srv", "failure").await >= before.1 + 5.0
            })
            .await,
            "{code:?} was not counted as a failed lookup"
        );
        assert!(served().await, "{code:?} emptied a discovered pool");
        assert_eq!(
            lookups("a", "empty").await,
            0.0,
            "{code:?} taken for 'no records'"
        );
        assert_eq!(
            lookups("srv", "empty").await,
            0.0,
            "{code:?} taken for 'no records'"
        );
        dns.set(|z| z.failing = None);
        let successes = (
            lookups("a", "success").await,
            lookups("srv", "success").await,
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                lookups("a", "success").await > successes.0
                    && lookups("srv", "success").await > successes.1
            })
            .await
        );
    }
    let (_, _, pools) = get(([127, 0, 0, 1], admin).into(), "/api/pools", None).await;
    let pools: serde_json::Value = serde_json::from_str(&pools).unwrap();
    for pool in ["a", "srv"] {
        assert_eq!(
            pools["pools"][pool]["backends"][0]["address"],
            from_dns.to_string()
        );
    }
    let log = strip_ansi(&std::fs::read_to_string(dir.path().join("stderr.log")).unwrap());
    for pool in ["pool=\"a\"", "pool=\"srv\""] {
        let lines = |what: &str| {
            log.lines()
                .filter(|l| l.contains(pool) && l.contains(what))
                .count()
        };
        assert_eq!(
            lines("DNS lookup failed"),
            2,
            "once per failing episode:\n{log}"
        );
        assert_eq!(lines("DNS discovery answers again"), 2, "{log}");
        assert_eq!(lines("no records"), 0, "{log}");
    }
}

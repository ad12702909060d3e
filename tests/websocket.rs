//! Upgrades (WebSocket) through the proxy end to end: messages both ways, the idle timeout, the drain on
//! shutdown.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::*;
use switchyard::server::Server;

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

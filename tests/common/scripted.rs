//! Upstreams scripted at the byte level, for what a well-behaved HTTP library would never do: close a
//! kept-alive connection right after answering, honour a short keep-alive timeout, send a huge head in one
//! write or in pieces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream does on each connection.
#[derive(Clone)]
pub struct Script {
    /// The bytes of every answer.
    pub response: Arc<Vec<u8>>,
    /// Written this many bytes at a time (0: in one write).
    pub piece: usize,
    /// After an answer: close the connection after this long (`Some`), or wait this long at most for the next
    /// request and then close (`idle`), or keep it open.
    pub close_after: Option<Duration>,
    pub idle: Option<Duration>,
}

impl Script {
    pub fn answering(response: Vec<u8>) -> Self {
        Self {
            response: Arc::new(response),
            piece: 0,
            close_after: None,
            idle: None,
        }
    }
}

/// A scripted upstream on 127.0.0.1:0; the counter tells how many connections it accepted.
pub async fn scripted_backend(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp, script.clone()));
        }
    });
    (addr, accepted)
}

/// Reads request heads (requests without bodies) and answers each with the script.
async fn serve(mut tcp: TcpStream, script: Script) {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::new();
    let mut read = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = match script.idle {
                Some(idle) if buf.is_empty() => {
                    match tokio::time::timeout(idle, tcp.read(&mut read)).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
                _ => tcp.read(&mut read).await,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&read[..n]),
            }
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        buf.drain(..end);
        let response = &script.response[..];
        let written = if script.piece == 0 {
            tcp.write_all(response).await
        } else {
            let mut result = Ok(());
            for piece in response.chunks(script.piece) {
                result = tcp.write_all(piece).await;
                if result.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            result
        };
        if written.is_err() {
            return;
        }
        if let Some(after) = script.close_after {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            return;
        }
    }
}

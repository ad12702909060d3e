//! What a listener does with the connections it has not served yet when it stops.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: queued.test\r\n\r\n";

/// Everything the server sent on `stream` until it closed the connection, or why reading failed.
async fn answer(stream: &mut TcpStream) -> Result<String, io::Error> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 10 s"))??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Connections the kernel queued on the socket, which no accept loop took before the stop, are served instead
/// of reset by the socket's closing (with `reuse_port`: the last ones a process gets before a newer one takes
/// over). One that has sent nothing yet gets a grace to send its request.
#[test]
fn connections_queued_when_the_listener_stops_are_served() {
    // The worker's runtime is driven only once the stop is sent: its accept loop sees the stop first.
    let worker = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let answers = rt.block_on(async {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = tcp.local_addr().unwrap();
        let handler = |_req: Request<Incoming>, _conn: ConnInfo| async {
            crate::proxy::plain(StatusCode::OK, "served\n")
        };
        let listener = ListenerTask::spawn(
            bound,
            tcp,
            ModeSource::Fixed(Arc::new(ListenerMode::Plain)),
            None,
            handler,
            "test",
            &[worker.handle().clone()],
        )
        .unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let mut stream = TcpStream::connect(bound).await.unwrap();
            stream.write_all(REQUEST).await.unwrap();
            queued.push(stream);
        }
        let mut silent = TcpStream::connect(bound).await.unwrap();
        let stopped = listener.stop(Duration::from_secs(10));
        let driver = std::thread::spawn(move || {
            worker.block_on(async move {
                let _ = end_rx.await;
            })
        });
        let mut answers = Vec::new();
        for stream in &mut queued {
            answers.push(answer(stream).await);
        }
        // The others were served, so the silent one was taken too and waits for its first bytes.
        let answered = match silent.write_all(REQUEST).await {
            Ok(()) => answer(&mut silent).await,
            Err(e) => Err(e),
        };
        answers.push(answered);
        let drained = tokio::time::timeout(Duration::from_secs(10), stopped).await;
        let _ = end_tx.send(());
        driver.join().unwrap();
        assert!(drained.is_ok(), "the drain did not end");
        answers
    });
    for (i, answer) in answers.iter().enumerate() {
        let text = answer.as_ref().map(String::as_str).unwrap_or("");
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("served\n"),
            "connection {i}: {answer:?}"
        );
    }
}

/// A stopping listener bound with `reuse_port` takes no new handshakes: a client that connects then sends its SYN
/// again a second later, and meets the other socket on the address once the stopping one has closed.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn a_stopping_reuse_port_listener_hands_new_connections_to_the_other_socket() {
    let old = bind("127.0.0.1:0".parse().unwrap(), "test", true)
        .await
        .unwrap();
    let address = old.local_addr().unwrap();
    handover::stop_taking_handshakes(&old).unwrap();
    let connecting = tokio::spawn(TcpStream::connect(address));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !connecting.is_finished(),
        "the handshake was taken: {connecting:?}"
    );
    let new = bind(address, "test", true).await.unwrap();
    drop(old);
    let connected = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the client's SYN was not taken again")
        .unwrap();
    let client = connected.expect("the client's connection was refused or reset");
    let (accepted, peer) = tokio::time::timeout(Duration::from_secs(5), new.accept())
        .await
        .expect("the new socket did not get the connection")
        .unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    drop(accepted);
}

/// The filter keeps everything but a new handshake: a connection with the filter on both ends (as sockets accepted
/// after it went on inherit it) carries data both ways and closes normally.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test]
async fn the_handover_filter_keeps_an_established_connections_packets() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    for end in [&client, &server] {
        socket2::SockRef::from(end)
            .attach_filter(&handover::program::DROP_NEW_HANDSHAKES)
            .unwrap();
    }
    let mut got = [0u8; 4];
    client.write_all(b"ping").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    server.write_all(b"pong").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"pong");
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the client's FIN did not arrive");
}

/// A reload that takes a listener out of the config publishes the snapshot first and stops the listener's accept
/// loop after: a connection the loop takes in between (or from the queue as it stops) arrived while the listener
/// was configured, and is served with the listener's last mode instead of being closed unanswered.
#[tokio::test]
async fn a_connection_taken_after_the_listener_left_the_config_is_served() {
    use crate::router::Snapshot;
    const CLOSING: &[u8] = b"GET / HTTP/1.1\r\nHost: queued.test\r\nConnection: close\r\n\r\n";
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = tcp.local_addr().unwrap();
    let snapshot = |listener: SocketAddr, metrics: &Metrics, before: Option<&Snapshot>| {
        let text = format!(
            "[[listeners]]\naddress = \"{listener}\"\n[[routes]]\npath_prefix = \"/\"\npool = \"web\"\n\
             [pools.web]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        let config = crate::config::parse(&text, "test.toml").unwrap();
        let modes = vec![(listener, Arc::new(ListenerMode::Plain))];
        Snapshot::build(&config, metrics, before, None, modes)
    };
    let metrics = Arc::new(Metrics::new());
    let first = snapshot(bound, &metrics, None);
    let published = Arc::new(arc_swap::ArcSwap::from_pointee(first));
    let proxy = Arc::new(Proxy::new(Arc::clone(&published), Arc::clone(&metrics)));
    let handler = |_req: Request<Incoming>, _conn: ConnInfo| async {
        crate::proxy::plain(StatusCode::OK, "served\n")
    };
    let listener = ListenerTask::spawn(
        bound,
        tcp,
        ModeSource::Published(bound),
        Some(proxy),
        handler,
        "test",
        &[],
    )
    .unwrap();
    let mut before = TcpStream::connect(bound).await.unwrap();
    before.write_all(CLOSING).await.unwrap();
    let answered = answer(&mut before).await.unwrap();
    assert!(answered.ends_with("served\n"), "{answered:?}");

    let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let second = snapshot(elsewhere, &metrics, Some(&published.load()));
    published.store(Arc::new(second));
    let mut after = TcpStream::connect(bound).await.unwrap();
    after.write_all(CLOSING).await.unwrap();
    let answered = answer(&mut after).await;
    assert!(
        answered
            .as_ref()
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200") && a.ends_with("served\n")),
        "{answered:?}"
    );
    let drained = tokio::time::timeout(
        Duration::from_secs(10),
        listener.stop(Duration::from_secs(5)),
    )
    .await;
    assert!(drained.is_ok(), "the drain did not end");
}

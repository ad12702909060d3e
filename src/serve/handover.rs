//! A stopping listener that shares its address with a newer process (`reuse_port`) hands new connections over
//! instead of resetting them.
//!
//! The kernel spreads new connections over every socket bound to the address by a hash of the client's address
//! and port, and queues each one on the socket it chose until that socket's process accepts it. Closing a socket
//! resets whatever is still in its queue. A stopping listener takes what is queued before it closes, but a
//! connection can still arrive between its last look and the close. So first the socket stops taking new
//! handshakes: a filter drops the clients' SYNs, each client sends its SYN again a second later (TCP's first
//! retransmission), and by then the socket is closed and the kernel picks a socket still open. A connection
//! is one second slower instead of reset. Linux's `net.ipv4.tcp_migrate_req` does the same in the kernel, when
//! the operator has turned it on.

use std::io;

use tokio::net::TcpListener;

#[cfg(any(target_os = "linux", target_os = "android"))]
use socket2::SockRef;

/// Classic BPF, run on each packet addressed to the listening socket, with the TCP header at offset 0.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) mod program {
    use socket2::SockFilter;

    const LOAD_BYTE: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const TCP_FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;

    /// Drops a SYN without ACK (a new handshake); keeps everything else, such as the last ACK of a handshake already
    /// under way. Sockets accepted from the listener afterwards inherit the filter, which never sees a SYN there.
    pub(crate) const DROP_NEW_HANDSHAKES: [SockFilter; 5] = [
        SockFilter::new(LOAD_BYTE, 0, 0, TCP_FLAGS),
        SockFilter::new(AND, 0, 0, SYN | ACK),
        SockFilter::new(JUMP_IF_EQUAL, 0, 1, SYN),
        SockFilter::new(RETURN, 0, 0, 0),
        SockFilter::new(RETURN, 0, 0, u32::MAX),
    ];
}

/// With `reuse_port`, stops `listener`'s socket from taking new handshakes (for every process and loop that
/// shares it); without, there is no other socket to hand them to, and nothing changes.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) fn stop_taking_handshakes(listener: &TcpListener) -> io::Result<()> {
    let socket = SockRef::from(listener);
    if socket.reuse_port()? {
        socket.attach_filter(&program::DROP_NEW_HANDSHAKES)?;
    }
    Ok(())
}

/// Elsewhere the queue is still taken before the close; a connection arriving in between is reset.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(super) fn stop_taking_handshakes(_listener: &TcpListener) -> io::Result<()> {
    Ok(())
}

//! A TCP stream that writes with `send(2)`/`sendmsg(2)` instead of `write(2)`/`writev(2)`.
//!
//! tokio's `TcpStream` writes through the file API, which on Linux walks the VFS layer (file position lock,
//! permission and notification hooks) before it reaches the socket. `send` goes to the socket directly; on
//! the two writes every proxied request makes, that is measurable (docs/performance.md). Reads already use
//! `recv`. Plain HTTP/1 connections report no vectored writes, so hyper joins a response's head and a small
//! body into one buffer and one `send`; a TLS stream above still gets `sendmsg` for its records.
//!
//! A client connection may carry the bytes already read from it to tell its HTTP version (`serve::version`):
//! they come out of the first reads before the socket is read again.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct Tcp {
    stream: TcpStream,
    /// Read from the socket before hyper took it; empty (unallocated) once handed on.
    first: Vec<u8>,
}

impl Tcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self::with_first(stream, Vec::new())
    }

    /// A stream whose reads return `first` before anything more from the socket.
    pub(crate) fn with_first(stream: TcpStream, first: Vec<u8>) -> Self {
        Self { stream, first }
    }

    fn poll_send<R>(
        &self,
        cx: &mut Context<'_>,
        mut send: impl FnMut(SockRef<'_>) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self
                .stream
                .try_io(Interest::WRITABLE, || send(SockRef::from(&self.stream)))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.first.len().min(buf.remaining());
        buf.put_slice(this.first.get(..n).unwrap_or_default());
        if n == this.first.len() {
            this.first = Vec::new();
        } else {
            this.first.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, |s| s.send(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, |s| s.send_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

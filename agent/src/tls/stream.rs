//! [`Stream`]: what the relay reads and writes, plain TCP or TLS in either role.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{HandshakeFailure, Side, TlsError};

/// A connection leg as the proxy sees it: plain TCP, TLS the agent originated towards a
/// server (`Client` role), or TLS it terminated for a workload (`Server` role).
///
/// Reading and writing go through [`AsyncRead`]/[`AsyncWrite`]; a TLS variant cannot be
/// spliced, so the relay must copy through userspace for it.
#[derive(Debug)]
pub enum Stream {
    /// Clear-text TCP.
    Plain(TcpStream),
    /// TLS with the agent as client (towards the real server).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS with the agent as server (terminating the workload's TLS).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Client(tls) => tls.get_ref().0,
            Stream::Server(tls) => tls.get_ref().0,
        }
    }

    /// The peer's address, from the TCP stream.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The local address, from the TCP stream.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// Whether the stream is TLS (either role).
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The server name (SNI) a TLS client asked for, on a terminated stream. Worth
    /// journaling: it is the host name the workload believes it connected to.
    pub fn client_sni(&self) -> Option<&str> {
        match self {
            Stream::Server(tls) => tls.get_ref().1.server_name(),
            _ => None,
        }
    }

    /// The negotiated TLS protocol version, `None` for a plain stream.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Stream::Plain(_) => None,
            Stream::Client(tls) => tls.get_ref().1.protocol_version(),
            Stream::Server(tls) => tls.get_ref().1.protocol_version(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// For TLS: sends close_notify, then shuts down the TCP write half.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Terminates a workload's TLS, after the proxy has read the client's SSLRequest and
/// answered `S` itself.
///
/// The caller must have checked that nothing followed the SSLRequest in its buffer
/// (CVE-2021-23214: bytes sent before the answer are plaintext injection) and must not
/// have read past it: the ClientHello must still be in the socket. There is no timeout
/// here; the caller bounds the handshake.
pub async fn accept_client(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<Stream, TlsError> {
    // Read the peer address first: afterwards the TcpStream belongs to the handshake
    // future, and an error has to say who failed.
    let peer = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
        Ok(tls) => Ok(Stream::Server(Box::new(tls))),
        Err(err) => Err(TlsError::Handshake {
            side: Side::Client,
            peer,
            failure: HandshakeFailure::classify(&err, None),
        }),
    }
}

//! The connector of the hyper client that carries a session's requests: TCP to the
//! original destination (whatever the request's URI says), then TLS per the target's
//! `tls` setting with ALPN `h2` / `http/1.1`. A connection on which the server chose
//! `h2` is reported to hyper as such, so the pooled client speaks HTTP/2 on it.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::{Stream, TlsError, UpstreamTls, ALPN_H2};

/// Why the agent could not open a connection to the server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The original destination.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// Neither TCP nor TLS finished within `connect_timeout`.
    #[error("connecting to {addr}: no connection within {timeout:?}")]
    Timeout {
        /// The original destination.
        addr: SocketAddr,
        /// `[agent] connect_timeout`.
        timeout: Duration,
    },
    /// The TLS handshake failed (names the failure: unknown issuer, name mismatch, ...).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Connects every request of one session to the original destination.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    /// The network namespace the connection leaves from (the client's).
    origin: crate::proxy::Origin,
    timeout: Duration,
    tls: UpstreamTls,
    /// The name the client asked for in its own TLS SNI: the name verified upstream
    /// when the target sets no `server_name`.
    client_sni: Option<Arc<str>>,
}

impl Connector {
    pub fn new(
        addr: SocketAddr,
        origin: crate::proxy::Origin,
        timeout: Duration,
        tls: UpstreamTls,
        client_sni: Option<&str>,
    ) -> Connector {
        Connector {
            addr,
            origin,
            timeout,
            tls,
            client_sni: client_sni.map(Arc::from),
        }
    }

    /// The URI scheme of requests on this connector's connections.
    pub fn scheme(&self) -> &'static str {
        if self.tls.enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// This connector, offering only `http/1.1` in ALPN (see [`UpstreamTls::http1_only`]).
    pub fn http1_only(&self) -> Connector {
        Connector {
            tls: self.tls.http1_only(),
            ..self.clone()
        }
    }

    /// A new connection to the original destination (TCP, then TLS per the target),
    /// within the connect timeout.
    pub async fn connect(self) -> Result<TokioIo<Upstream>, UpstreamError> {
        let (addr, timeout) = (self.addr, self.timeout);
        let setup = async move {
            let tcp = self
                .origin
                .dial(addr)
                .await
                .map_err(|source| UpstreamError::Connect { addr, source })?;
            let stream = self
                .tls
                .connect(tcp, addr, self.client_sni.as_deref())
                .await?;
            Ok(TokioIo::new(Upstream(stream)))
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| UpstreamError::Timeout { addr, timeout })?
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn Future<Output = Result<TokioIo<Upstream>, UpstreamError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    /// The URI is ignored: a session only ever talks to its original destination.
    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// A connection to the server, plain or TLS.
pub struct Upstream(Stream);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        let h2 = match &self.0 {
            Stream::Client(tls) => tls.get_ref().1.alpn_protocol() == Some(ALPN_H2),
            _ => false,
        };
        if h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An error with its causes, `outer: inner: innermost` (hyper's own message alone,
/// "client error (Connect)", does not say what failed).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

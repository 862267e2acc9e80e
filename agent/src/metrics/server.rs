//! The `/metrics` endpoint (`[agent] metrics_listen`): `GET /metrics` answers the
//! Prometheus text format; anything else 404 (other paths) or 405 (other methods).
//!
//! Served by hyper (HTTP/1.1, keep-alive for the scraper), as the approvals decision
//! endpoint is: the head is bounded by hyper's smallest read buffer, bodies are never
//! read, and each connection has [`CONNECTION_TIMEOUT`] in total, so a stuck scraper
//! cannot hold a task.
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, warn};

use super::Gauges;

/// The longest request head.
const MAX_HEAD: usize = 8 * 1024;
/// A connection's whole lifetime.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// What Prometheus asks for and prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the gauges refreshed at each scrape.
pub type GaugeSource = Arc<dyn Fn() -> Gauges + Send + Sync>;

/// Serves `/metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    gauges: GaugeSource,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let gauges = gauges.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let gauges = gauges.clone();
                            async move { Ok::<_, Infallible>(answer(&req, &gauges)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .max_buf_size(MAX_HEAD)
                            .serve_connection(TokioIo::new(stream), service);
                        match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics: connection ended"),
                            Err(_) => debug!(%peer, "metrics: connection timed out"),
                            Ok(Ok(())) => {}
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn answer(req: &Request<Incoming>, gauges: &GaugeSource) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, super::get().encode(gauges()))
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "nhi-agent serves /metrics only\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

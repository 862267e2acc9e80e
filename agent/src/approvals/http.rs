//! The loopback decision endpoint (`[approvals] http_listen`): `POST
//! /approvals/<id>/decision` with a signed decision token as the body (the JWT itself,
//! or JSON `{"token": "..."}`). Answers 200, 400, 401, 404 or 409 with a JSON body
//! `{"ok":..., "error"|"request"/"by"/"grant": ...}`.
//!
//! Served by hyper (HTTP/1.1, one request per connection), as the HTTP targets are: no
//! hand-written parsing. Sizes are bounded before buffering (the head by hyper's smallest
//! read buffer, 8 KiB; the body by [`MAX_BODY`], refused on its announced length before
//! any of it is read) and each connection has [`CONNECTION_TIMEOUT`] in total. The
//! address is loopback-only (checked when the configuration is validated).
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use super::{token::MAX_TOKEN_LEN, Registry};

/// The longest request head (hyper's smallest read buffer).
const MAX_HEAD: usize = 8 * 1024;
/// The longest body (a token, possibly in JSON).
const MAX_BODY: usize = MAX_TOKEN_LEN;
/// A connection's whole lifetime.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves decisions on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, registry: Registry, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(CONNECTION_TIMEOUT, connection(stream, peer, registry)).await {
                            Ok(Err(e)) => debug!(%peer, error = %e, "decision endpoint: connection ended"),
                            Err(_) => debug!(%peer, "decision endpoint: connection timed out"),
                            Ok(Ok(())) => {}
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "decision endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, &registry).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// Answers one request.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    let (status, body) = match read_request(req).await {
        Err((status, message)) => (status, json!({"ok": false, "error": message})),
        Ok((path, body)) => answer(&path, &body, peer, registry),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

type Parsed = Result<(String, Vec<u8>), (u16, String)>;

/// Reads one request: its path and body, or the status to refuse it with.
async fn read_request(req: Request<Incoming>) -> Parsed {
    if req.method() != Method::POST {
        return Err((405, "only POST /approvals/<id>/decision".into()));
    }
    // Refused on the announced length, before any of the body is read.
    if req.body().size_hint().lower() > MAX_BODY as u64 {
        return Err((413, format!("body longer than {MAX_BODY} bytes")));
    }
    let path = req.uri().path().to_owned();
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok((path, body.to_bytes().to_vec())),
        Err(e) if e.is::<LengthLimitError>() => {
            Err((413, format!("body longer than {MAX_BODY} bytes")))
        }
        Err(e) => Err((400, format!("bad HTTP request: {e}"))),
    }
}

/// The status and JSON answer for a request to `path` with `body`.
fn answer(
    path: &str,
    body: &[u8],
    peer: SocketAddr,
    registry: &Registry,
) -> (u16, serde_json::Value) {
    let id = path
        .strip_prefix("/approvals/")
        .and_then(|rest| rest.strip_suffix("/decision"))
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let Some(id) = id else {
        return (
            404,
            json!({"ok": false, "error": "unknown path (POST /approvals/<id>/decision)"}),
        );
    };
    let Some(token) = token_of(body) else {
        return (
            400,
            json!({"ok": false, "error": "the body must be a JWT or {\"token\": \"...\"}"}),
        );
    };
    let via = format!("http {peer}");
    match registry.submit(&token, Some(id), &via) {
        Ok(d) => (
            200,
            json!({"ok": true, "request": d.request, "by": d.by, "grant": d.grant}),
        ),
        Err(e) => (
            e.http_status(),
            json!({"ok": false, "error": e.to_string()}),
        ),
    }
}

/// The token in a body: the JWT itself, or `{"token": "..."}`.
pub fn token_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        return v.get("token")?.as_str().map(str::to_owned);
    }
    (!text.is_empty()).then(|| text.to_owned())
}

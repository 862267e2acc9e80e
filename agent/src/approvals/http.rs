//! The loopback decision endpoint (`[approvals] http_listen`): `POST
//! /approvals/<id>/decision` with a signed decision token as the body (the JWT itself,
//! or JSON `{"token": "..."}`). Answers 200, 400, 401, 404 or 409 with a JSON body
//! `{"ok":..., "error"|"request"/"by"/"grant": ...}`.
//!
//! One request per connection, parsed with `httparse` on tokio: the endpoint takes a
//! single small POST, so a full HTTP stack would add dependencies for nothing. Sizes are
//! bounded before buffering (headers 8 KiB, body 16 KiB) and each connection has
//! [`CONNECTION_TIMEOUT`] in total. The address is loopback-only (checked when the
//! configuration is validated).
use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use super::{token::MAX_TOKEN_LEN, Registry};

/// The longest request head.
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
                        match tokio::time::timeout(CONNECTION_TIMEOUT, connection(stream, peer, &registry)).await {
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
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: &Registry,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (status, body) = match read_request(&mut stream, &mut buf).await? {
        Err((status, message)) => (status, json!({"ok": false, "error": message})),
        Ok((path, body)) => answer(&path, &body, peer, registry),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

type Parsed = Result<(String, Vec<u8>), (u16, String)>;

/// Reads one request: its path and body, or the status to refuse it with.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Parsed> {
    let mut chunk = [0u8; 4096];
    let (head_len, path, length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                if req.method != Some("POST") {
                    return Ok(Err((405, "only POST /approvals/<id>/decision".into())));
                }
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let Some(length) = length else {
                    return Ok(Err((400, "Content-Length is required".into())));
                };
                if length > MAX_BODY {
                    return Ok(Err((413, format!("body longer than {MAX_BODY} bytes"))));
                }
                break (n, req.path.unwrap_or("").to_owned(), length);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Ok(Err((
                        400,
                        format!("request head longer than {MAX_HEAD} bytes"),
                    )));
                }
            }
            Err(e) => return Ok(Err((400, format!("bad HTTP request: {e}")))),
        }
        let want = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head_len);
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Ok((path, body)))
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

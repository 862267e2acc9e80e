//! Refusals of sessions the journal could not open (their start was not recorded), in
//! the protocol's own words, so that the client prints why instead of "connection
//! reset". Nothing is journaled (that is what failed) and nothing reaches the server.
//! PostgreSQL's is `postgres::refuse_unrecorded` (it has a start-up to read first).
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::mysql::frame;
use crate::protocol::redis::error_reply;

/// ER_UNKNOWN_ERROR: the server's code for an error it has no better code for.
const MYSQL_ER_UNKNOWN: u16 = 1105;

/// A MySQL client reads the greeting first: it gets an ERR packet in its place, as a
/// server at its connection limit sends one (sequence id 0, no SQL state: nothing is
/// negotiated yet, so clients read the text right after the code).
pub async fn mysql(mut client: TcpStream, message: &str) -> &'static str {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&MYSQL_ER_UNKNOWN.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let _ = client.write_all(&frame::packet(0, &payload)).await;
    let _ = client.shutdown().await;
    "refused with an ERR greeting"
}

/// A Redis client speaks first: its first command is answered `-ERR message` and the
/// connection closes. A TLS client (0x16 first) cannot read it and is closed. Bounded
/// by `within`.
pub async fn redis(mut client: TcpStream, message: &str, within: Duration) -> &'static str {
    let exchange = async {
        if let Err(what) = plain_first_bytes(&client).await {
            return what;
        }
        let _ = client.write_all(&error_reply(message)).await;
        let _ = client.shutdown().await;
        drain(&mut client).await;
        "refused with -ERR"
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or("no command in time")
}

/// A plain HTTP client gets `503 Service Unavailable` with `message` as its body, after
/// its first bytes (HTTP clients speak first); the connection closes. A TLS client (0x16
/// first) cannot read it and is closed. Bounded by `within`.
pub async fn http(mut client: TcpStream, message: &str, within: Duration) -> &'static str {
    let exchange = async {
        if let Err(what) = plain_first_bytes(&client).await {
            return what;
        }
        let body = format!("{message}\n");
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\nretry-after: 60\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
        let _ = client.shutdown().await;
        drain(&mut client).await;
        "refused with 503"
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or("no request in time")
}

/// Waits for the client's first bytes: `Ok` for a plain-text client, `Err` (what
/// happened) for one that left or starts TLS (0x16), which cannot read a plain answer.
async fn plain_first_bytes(client: &TcpStream) -> Result<(), &'static str> {
    let mut first = [0u8; 1];
    match client.peek(&mut first).await {
        Ok(0) | Err(_) => Err("client gone"),
        Ok(_) if first[0] == 0x16 => Err("TLS client closed"),
        Ok(_) => Ok(()),
    }
}

/// Reads what the client sent until it closes (at most 2 s), so that the close is a FIN
/// it reads after the answer, not a reset that discards it.
pub(super) async fn drain(client: &mut (impl AsyncRead + Unpin)) {
    let mut rest = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(client.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn a_mysql_client_reads_an_err_packet_instead_of_the_greeting() {
        let (mut client, server) = pair().await;
        assert_eq!(
            mysql(server, "nhi-agent: nope").await,
            "refused with an ERR greeting"
        );
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        let body = b"\xff\x51\x04nhi-agent: nope";
        assert_eq!(&answer[..4], &[body.len() as u8, 0, 0, 0]);
        assert_eq!(&answer[4..], body);
    }

    #[tokio::test]
    async fn a_redis_client_reads_an_error_for_its_first_command() {
        let (mut client, server) = pair().await;
        let refusal = tokio::spawn(async move {
            redis(server, "ERR nhi-agent: nope", Duration::from_secs(10)).await
        });
        client
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let mut answer = [0u8; 21];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"-ERR nhi-agent: nope\r");
        client.shutdown().await.expect("shutdown");
        assert_eq!(refusal.await.expect("join"), "refused with -ERR");
    }

    #[tokio::test]
    async fn an_http_client_reads_a_503_with_the_reason() {
        let (mut client, server) = pair().await;
        let refusal =
            tokio::spawn(
                async move { http(server, "nhi-agent: nope", Duration::from_secs(10)).await },
            );
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\nnhi-agent: nope\n"), "{answer}");
        assert!(answer.contains("content-length: 16\r\n"), "{answer}");
        drop(client);
        assert_eq!(refusal.await.expect("join"), "refused with 503");
    }
}

//! Refusals a PostgreSQL client can read: a FATAL ErrorResponse instead of a bare reset,
//! so that psql and drivers print why (e.g. "the audit journal cannot record new
//! sessions (No space left on device)").
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::postgres::{encode, FrontendDecoder, FrontendMessage};

/// SQLSTATE of the refusals the journal causes: 58030 io_error (what PostgreSQL itself
/// reports when it cannot write its files).
pub const SQLSTATE_JOURNAL: &str = "58030";

use crate::journal::root_cause;

/// The FATAL ErrorResponse for a request the journal could not record.
pub fn journal_refusal(e: &(dyn std::error::Error + 'static)) -> Bytes {
    encode::error_response(
        "FATAL",
        SQLSTATE_JOURNAL,
        &format!(
            "nhi-agent: the audit journal cannot record this session ({}); the request was not forwarded",
            root_cause(e)
        ),
    )
}

/// Answers a client whose session could not be opened at all (the journal did not record
/// its start): reads its start-up (SSLRequest and GSSENCRequest answered `N`) and sends
/// FATAL `sqlstate` `message`. Nothing is journaled (that is what failed) and nothing is
/// forwarded; a CancelRequest is dropped, since forwarding it unjournaled would act on
/// the server. Bounded by `within`; returns what happened, for the log.
pub async fn refuse_unrecorded(
    mut client: TcpStream,
    sqlstate: &str,
    message: &str,
    within: Duration,
) -> &'static str {
    let exchange = async {
        let mut decoder = FrontendDecoder::new();
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match decoder.decode(&mut buf) {
                Err(_) => return "malformed start-up",
                Ok(Some(decoded)) => match decoded.message {
                    FrontendMessage::SslRequest | FrontendMessage::GssEncRequest => {
                        if client.write_all(&encode::ssl_refused()).await.is_err() {
                            return "client gone";
                        }
                    }
                    FrontendMessage::Startup(_) => {
                        let error = encode::error_response("FATAL", sqlstate, message);
                        let _ = client.write_all(&error).await;
                        let _ = client.shutdown().await;
                        return "refused with FATAL";
                    }
                    FrontendMessage::CancelRequest { .. } => return "cancel request dropped",
                    _ => return "unexpected start-up message",
                },
                Ok(None) => match client.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return "client gone",
                    Ok(_) => {}
                },
            }
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or("no start-up in time")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_message_names_the_cause_not_the_path() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = crate::journal::JournalError::Prelog {
            op: "append",
            path: "/var/lib/nhi-agent/journal.db.prelog".into(),
            source: io,
        };
        let bytes = journal_refusal(&e);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("C58030\0"), "{text:?}");
        assert!(text.contains("journal cannot record"), "{text:?}");
        assert!(text.contains("No space left on device"), "{text:?}");
        assert!(!text.contains("/var/lib"), "{text:?}");
    }

    #[tokio::test]
    async fn a_refused_client_reads_a_fatal_after_its_start_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // SSLRequest, then a StartupMessage for user "u".
            s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
                .await
                .expect("ssl");
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await.expect("answer");
            assert_eq!(&n, b"N");
            let body = b"\x00\x03\x00\x00user\x00u\x00\x00";
            let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            startup.extend_from_slice(body);
            s.write_all(&startup).await.expect("startup");
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.expect("read");
            answer
        });
        let (server, _) = listener.accept().await.expect("accept");
        let what = refuse_unrecorded(server, "58030", "nope", Duration::from_secs(10)).await;
        assert_eq!(what, "refused with FATAL");
        let answer = client.await.expect("client");
        assert_eq!(answer.first(), Some(&b'E'));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains("SFATAL\0") && text.contains("C58030\0") && text.contains("Mnope\0"));
    }
}

//! Announcements of approval requests to `[approvals] webhook_url`: one JSON POST per
//! request, from one background thread fed by a bounded queue.
//!
//! Architecture invariant: the webhook never slows a hold or the proxy. A full queue
//! drops the *announcement* (logged); the audit event was journaled before, by the
//! session. A failed POST is retried with exponential backoff (the shipper's
//! [`crate::ship::backoff::Backoff`]), then given up (logged).
use std::{
    sync::mpsc::{self, Receiver, SyncSender, TrySendError},
    thread,
    time::Duration,
};

use tracing::{debug, warn};

/// Announcements waiting to be sent; more are dropped.
pub const QUEUE: usize = 256;
/// Time for one POST, connect to last byte.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The sending side; cheap to clone. Dropping every clone stops the thread.
#[derive(Clone, Debug)]
pub struct Announcer {
    tx: SyncSender<Vec<u8>>,
}

impl Announcer {
    /// Starts the sender thread for `url`: `retries` attempts after the first, the
    /// first retry after `backoff`, doubling up to a minute ([`crate::ship::backoff`]:
    /// each pause drawn in its upper half).
    pub fn start(url: String, retries: u32, backoff: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        thread::Builder::new()
            .name("nhi-webhook".into())
            .spawn(move || sender(&url, retries, backoff, rx))?;
        Ok(Self { tx })
    }

    /// Queues one JSON body; never blocks. Returns false if it was dropped.
    pub fn announce(&self, body: &serde_json::Value) -> bool {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "approval webhook: announcement not encodable; dropped");
                return false;
            }
        };
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                warn!(
                    queue = QUEUE,
                    "approval webhook: queue full; announcement dropped (the request is journaled and listed)"
                );
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!("approval webhook: sender thread gone; announcement dropped");
                false
            }
        }
    }
}

fn sender(url: &str, retries: u32, backoff: Duration, rx: Receiver<Vec<u8>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    while let Ok(body) = rx.recv() {
        // The shipper's schedule: doubling up to a minute, with equal jitter so agents
        // that lost the same endpoint do not retry in step.
        let mut schedule = crate::ship::backoff::Backoff::new(backoff, MAX_BACKOFF);
        for attempt in 0..=retries {
            match post(&agent, url, &body) {
                Ok(()) => {
                    debug!(attempt, "approval webhook: delivered");
                    break;
                }
                Err(e) if attempt < retries => {
                    let wait = schedule.next_delay();
                    warn!(attempt, error = %e, retry_in = ?wait, "approval webhook: POST failed; retrying");
                    thread::sleep(wait);
                }
                Err(e) => {
                    warn!(attempts = attempt + 1, error = %e, "approval webhook: POST failed; announcement given up");
                }
            }
        }
    }
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), String> {
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Reads one HTTP request (headers + Content-Length body) and answers `status`.
    fn serve_one(listener: &TcpListener, status: u16) -> String {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        String::from_utf8(body).unwrap()
    }

    #[test]
    fn a_failed_post_is_retried_until_it_is_delivered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let announcer = Announcer::start(url, 3, Duration::from_millis(10)).unwrap();
        assert!(announcer.announce(&serde_json::json!({"id": "a-1", "text": "hi"})));
        // Two failures, then success: three POSTs of the same body.
        let first = serve_one(&listener, 500);
        let second = serve_one(&listener, 503);
        let third = serve_one(&listener, 200);
        assert_eq!(first, second);
        assert_eq!(second, third);
        let v: serde_json::Value = serde_json::from_str(&third).unwrap();
        assert_eq!(v["id"], "a-1");
        // The next announcement is sent once, with no retry of the delivered one.
        assert!(announcer.announce(&serde_json::json!({"id": "a-2"})));
        let next: serde_json::Value = serde_json::from_str(&serve_one(&listener, 204)).unwrap();
        assert_eq!(next["id"], "a-2");
    }

    #[test]
    fn an_announcement_is_given_up_after_its_retries() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let announcer = Announcer::start(url, 1, Duration::from_millis(10)).unwrap();
        announcer.announce(&serde_json::json!({"id": "a-1"}));
        announcer.announce(&serde_json::json!({"id": "a-2"}));
        // a-1: first attempt + one retry, both failing; then a-2 comes.
        let a = serve_one(&listener, 500);
        let b = serve_one(&listener, 500);
        let c = serve_one(&listener, 200);
        assert!(a.contains("a-1") && b.contains("a-1"), "{a} {b}");
        assert!(c.contains("a-2"), "{c}");
    }
}

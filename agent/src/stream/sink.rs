//! Where a stream's records go, and when they count as delivered:
//! - `syslog`: RFC 5424 messages over TCP (TLS: RFC 5425), octet-counting framing (RFC
//!   6587 3.4.1: `LEN SP MSG`), delivered once written and flushed (syslog over TCP has
//!   no application acknowledgement; before each batch the connection is checked for a
//!   close by the receiver, so a receiver that went away is reconnected to rather than
//!   written into the void);
//! - `splunk_hec`: one POST of the batch (HEC events, concatenated JSON objects) with
//!   `Authorization: Splunk <token>`, delivered on a 2xx answer;
//! - `otlp`: one POST of an OTLP/HTTP JSON `ExportLogsServiceRequest`, delivered on 2xx;
//! - `file`: JSON lines appended, flushed and synced; rotated to `path.1` ... when the
//!   next line would take it past `max_bytes`.
//!
//! The framing and bodies are pure functions ([`syslog_frame`], [`hec_body`],
//! [`otlp_body`]), tested without sockets. Errors never carry the token.
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::{SinkConfig, StreamConfig, TlsSettings};
use super::format::Record;
use crate::credential::{CredentialSource, Secret};

/// A sink that takes records.
pub trait Sink: Send {
    /// Delivers `records` (in order) or fails; on failure some may have been delivered
    /// (they are sent again: at least once).
    fn send(&mut self, records: &[Record]) -> Result<(), String>;
}

/// RFC 5424 facility of every message: 13, log audit.
const FACILITY: u8 = 13;
/// The SD-ID of the structured data element naming the journal event (a private
/// enterprise number is required by RFC 5424 for a non-IANA SD-ID; 32473 is the one
/// RFC 5612 reserves for documentation and examples).
pub const SD_ID: &str = "nhi@32473";

/// The host name put in messages (syslog HOSTNAME, HEC `host`, OTLP `host.name`).
pub fn host_name() -> String {
    // The UTS name the kernel holds (what gethostname(2) reads).
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

/// Escapes an SD-PARAM value (RFC 5424 6.3.3: `"`, `\` and `]`).
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field of RFC 5424: printable US-ASCII without spaces, at most `max`
/// characters; `-` when empty.
fn header_field(value: &str, max: usize) -> String {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v
    }
}

/// One record as an octet-counted RFC 5424 frame: `LEN SP <PRI>1 TIMESTAMP HOSTNAME
/// nhi-agent PROCID KIND [nhi@32473 journal_id=".." event_id=".." event_hash=".."] BODY`.
pub fn syslog_frame(record: &Record, host: &str, pid: u32) -> Vec<u8> {
    let pri = u16::from(FACILITY) * 8 + u16::from(record.severity.min(7));
    let time = crate::journal::us_to_system_time(record.time_ms.saturating_mul(1000))
        .map(crate::journal::format_rfc3339_us)
        .unwrap_or_else(|| "-".to_owned());
    let mut sd = format!(
        "[{SD_ID} journal_id=\"{}\" event_id=\"{}\"",
        sd_escape(&record.journal_id),
        record.event_id
    );
    if let Some(hash) = &record.event_hash {
        sd.push_str(&format!(" event_hash=\"{}\"", sd_escape(hash)));
    }
    sd.push(']');
    let msg = format!(
        "<{pri}>1 {time} {} nhi-agent {pid} {} {sd} {}",
        header_field(host, 255),
        header_field(&record.kind, 32),
        record.body
    );
    let mut frame = format!("{} ", msg.len()).into_bytes();
    frame.extend_from_slice(msg.as_bytes());
    frame
}

/// The HEC body of a batch: one event object per record, concatenated (HEC's batch
/// format); the journal identity in `fields` (indexed fields) and in the event itself.
pub fn hec_body(
    records: &[Record],
    host: &str,
    index: Option<&str>,
    sourcetype: Option<&str>,
) -> String {
    let mut body = String::new();
    for r in records {
        let event: Value = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
        let mut e = json!({
            "time": format!("{}.{:03}", r.time_ms.div_euclid(1000), r.time_ms.rem_euclid(1000)),
            "host": host,
            "source": "nhi-agent",
            "sourcetype": sourcetype.unwrap_or("nhi:event"),
            "event": event,
            "fields": {
                "journal_id": r.journal_id,
                "event_id": r.event_id.to_string(),
                "event_hash": r.event_hash,
                "kind": r.kind,
            },
        });
        if let Some(index) = index {
            e["index"] = json!(index);
        }
        body.push_str(&e.to_string());
        body.push('\n');
    }
    body
}

/// The OTLP/HTTP JSON logs body of a batch (`ExportLogsServiceRequest`): one log record
/// per record, the event as its string body, the journal identity as attributes.
pub fn otlp_body(records: &[Record], host: &str) -> Value {
    let string = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    let logs: Vec<Value> = records
        .iter()
        .map(|r| {
            let (number, text) = match r.severity {
                0..=3 => (17, "ERROR"),
                4 => (13, "WARN"),
                _ => (9, "INFO"),
            };
            let mut attributes = vec![
                string("nhi.journal_id", &r.journal_id),
                json!({"key": "nhi.event_id", "value": {"intValue": r.event_id.to_string()}}),
                string("nhi.kind", &r.kind),
            ];
            if let Some(hash) = &r.event_hash {
                attributes.push(string("nhi.event_hash", hash));
            }
            let nanos = i128::from(r.time_ms) * 1_000_000;
            json!({
                "timeUnixNano": nanos.to_string(),
                "severityNumber": number,
                "severityText": text,
                "body": {"stringValue": r.body},
                "attributes": attributes,
            })
        })
        .collect();
    json!({
        "resourceLogs": [{
            "resource": {"attributes": [
                string("service.name", "nhi-agent"),
                string("host.name", host),
            ]},
            "scopeLogs": [{
                "scope": {"name": "nhi-agent", "version": env!("CARGO_PKG_VERSION")},
                "logRecords": logs,
            }],
        }],
    })
}

/// Opens the sink of `config`: reads the token and CA files now, so that a bad one is
/// an error of the start (or of the reload) naming the file. Connections are made at the
/// first send.
pub fn open(config: &StreamConfig) -> Result<Box<dyn Sink>, String> {
    let host = host_name();
    match &config.sink {
        SinkConfig::Syslog { address, tls } => {
            let tls = tls.as_ref().map(syslog_tls).transpose()?;
            Ok(Box::new(Syslog {
                address: address.clone(),
                tls,
                timeout: config.timeout,
                host,
                conn: None,
            }))
        }
        SinkConfig::SplunkHec {
            url,
            token_file,
            index,
            sourcetype,
            ca_file,
        } => {
            let token = CredentialSource::File(token_file.clone())
                .load()
                .map_err(|e| e.to_string())?;
            token
                .expose_str()
                .map_err(|e| format!("{}: {e}", token_file.display()))?;
            Ok(Box::new(Http {
                agent: http_agent(url, ca_file.as_deref(), config.timeout)?,
                url: url.to_string(),
                kind: HttpKind::Hec {
                    token,
                    index: index.clone(),
                    sourcetype: sourcetype.clone(),
                },
                host,
            }))
        }
        SinkConfig::Otlp { url, ca_file } => Ok(Box::new(Http {
            agent: http_agent(url, ca_file.as_deref(), config.timeout)?,
            url: url.to_string(),
            kind: HttpKind::Otlp,
            host,
        })),
        SinkConfig::File {
            path,
            max_bytes,
            keep,
        } => Ok(Box::new(FileSink::new(path.clone(), *max_bytes, *keep))),
    }
}

fn syslog_tls(
    settings: &TlsSettings,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    ),
    String,
> {
    let roots = match &settings.ca_file {
        Some(path) => crate::tls::load_roots(path),
        None => crate::tls::load_system_roots(),
    }
    .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(settings.server_name.clone())
        .map_err(|_| format!("invalid TLS server name {:?}", settings.server_name))?;
    Ok((Arc::new(config), name))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    fn write_all_flush(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
            Conn::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()?;
                // Push everything rustls still buffers onto the socket.
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut s.sock)?;
                }
                Ok(())
            }
        }
    }

    /// Whether the receiver closed (or reset) the connection. A syslog receiver sends
    /// nothing, so anything readable is a close, except TLS records (session tickets),
    /// which rustls reads here.
    fn closed_by_peer(&mut self) -> bool {
        if self.tcp().set_nonblocking(true).is_err() {
            return true;
        }
        let mut buf = [0u8; 512];
        let closed = match self {
            Conn::Plain(s) => match s.peek(&mut buf) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
            Conn::Tls(s) => loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            },
        };
        closed || self.tcp().set_nonblocking(false).is_err()
    }
}

struct Syslog {
    address: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
    timeout: Duration,
    host: String,
    conn: Option<Conn>,
}

impl Syslog {
    fn connect(&self) -> Result<Conn, String> {
        let addrs: Vec<_> = self
            .address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.address))?
            .collect();
        let mut last = format!("{} resolves to no address", self.address);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(tcp) => {
                    let _ = tcp.set_write_timeout(Some(self.timeout));
                    let _ = tcp.set_read_timeout(Some(self.timeout));
                    let _ = tcp.set_nodelay(true);
                    return match &self.tls {
                        None => Ok(Conn::Plain(tcp)),
                        Some((config, name)) => {
                            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                                .map_err(|e| format!("TLS to {addr}: {e}"))?;
                            let mut stream = rustls::StreamOwned::new(conn, tcp);
                            // Handshake now, so a certificate problem is named as such.
                            while stream.conn.is_handshaking() {
                                stream
                                    .conn
                                    .complete_io(&mut stream.sock)
                                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                            }
                            Ok(Conn::Tls(Box::new(stream)))
                        }
                    };
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last)
    }
}

impl Sink for Syslog {
    fn send(&mut self, records: &[Record]) -> Result<(), String> {
        if self.conn.as_mut().is_some_and(Conn::closed_by_peer) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(self.connect()?),
        };
        let pid = std::process::id();
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend(syslog_frame(r, &self.host, pid));
        }
        match conn.write_all_flush(&bytes) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.conn = None;
                Err(format!("writing to {}: {e}", self.address))
            }
        }
    }
}

enum HttpKind {
    Hec {
        token: Secret,
        index: Option<String>,
        sourcetype: Option<String>,
    },
    Otlp,
}

struct Http {
    agent: ureq::Agent,
    url: String,
    kind: HttpKind,
    host: String,
}

/// The HTTP client of a HEC or OTLP sink: TLS verified against `ca_file`, or the system
/// roots (read only for an `https` URL: a plain `http` one needs none).
fn http_agent(
    url: &url::Url,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<ureq::Agent, String> {
    let certs: Vec<ureq::tls::Certificate<'static>> = match ca_file {
        Some(path) => crate::tls::load_roots(path)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(format!("{}: {e}", path.display()))),
                    })
                    .collect()
            })?,
        None if url.scheme() != "https" => Vec::new(),
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err("no system CA certificates found (set ca_file)".to_owned());
            }
            found
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
    };
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into())
}

impl Sink for Http {
    fn send(&mut self, records: &[Record]) -> Result<(), String> {
        let request = ureq::http::Request::post(&self.url);
        let (request, body) = match &self.kind {
            HttpKind::Hec {
                token,
                index,
                sourcetype,
            } => {
                let token = token.expose_str().map_err(|e| e.to_string())?;
                (
                    request
                        .header("Authorization", format!("Splunk {token}"))
                        .header("Content-Type", "application/json"),
                    hec_body(records, &self.host, index.as_deref(), sourcetype.as_deref()),
                )
            }
            HttpKind::Otlp => (
                request.header("Content-Type", "application/json"),
                otlp_body(records, &self.host).to_string(),
            ),
        };
        let request = request
            .body(body)
            .map_err(|e| format!("building the request to {}: {e}", self.url))?;
        match self.agent.run(request) {
            Ok(mut response) if response.status().is_success() => {
                // Read the (small) answer so the connection can be reused.
                let _ = response.body_mut().read_to_string();
                Ok(())
            }
            Ok(mut response) => {
                let status = response.status();
                let text = response
                    .body_mut()
                    .with_config()
                    .limit(512)
                    .read_to_string()
                    .unwrap_or_default();
                Err(format!("{} answered {status}: {}", self.url, text.trim()))
            }
            Err(e) => Err(format!("cannot reach {}: {e}", self.url)),
        }
    }
}

/// JSON lines in a file, rotated by size.
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
}

impl FileSink {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> FileSink {
        FileSink {
            path,
            max_bytes,
            keep,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `path` becomes `path.1`, `path.1` becomes `path.2`, ...; the oldest beyond `keep`
    /// is deleted.
    fn rotate(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))
    }
}

impl Sink for FileSink {
    fn send(&mut self, records: &[Record]) -> Result<(), String> {
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", e))?;
        }
        let mut size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        let mut file: Option<std::fs::File> = None;
        for r in records {
            let line_len = r.body.len() as u64 + 1;
            if size > 0 && size + line_len > self.max_bytes {
                if let Some(f) = file.take() {
                    f.sync_data().map_err(|e| err("syncing", e))?;
                }
                self.rotate().map_err(|e| err("rotating", e))?;
                size = 0;
            }
            let f = match &mut file {
                Some(f) => f,
                None => file.insert(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)
                        .map_err(|e| err("opening", e))?,
                ),
            };
            f.write_all(r.body.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .map_err(|e| err("writing", e))?;
            size += line_len;
        }
        if let Some(f) = file {
            f.sync_data().map_err(|e| err("syncing", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, body: &str) -> Record {
        Record {
            journal_id: "j-1".into(),
            event_id: id,
            event_hash: Some("ab".repeat(32)),
            kind: "statement".into(),
            time_ms: 1_700_000_000_123,
            severity: 4,
            body: body.into(),
        }
    }

    #[test]
    fn syslog_frames_are_octet_counted_rfc5424() {
        let frame = syslog_frame(&record(7, r#"{"a":"x]\"y"}"#), "bastion-1", 42);
        let text = String::from_utf8(frame).expect("utf-8");
        let (len, msg) = text.split_once(' ').expect("LEN SP MSG");
        assert_eq!(
            len.parse::<usize>().expect("length"),
            msg.len(),
            "octet count"
        );
        let hash = "ab".repeat(32);
        assert_eq!(
            msg,
            format!(
                "<108>1 2023-11-14T22:13:20.123000Z bastion-1 nhi-agent 42 statement \
                 [nhi@32473 journal_id=\"j-1\" event_id=\"7\" event_hash=\"{hash}\"] {{\"a\":\"x]\\\"y\"}}"
            ),
            "PRI = 13*8+4; the body as is after the structured data"
        );
        // Multi-byte characters are counted in octets, and SD values are escaped.
        let mut r = record(8, "é");
        r.journal_id = "a\"b]c\\".into();
        r.kind = "with space and a very long kind name over thirty-two chars".into();
        let text = String::from_utf8(syslog_frame(&r, "", 1)).expect("utf-8");
        let (len, msg) = text.split_once(' ').expect("LEN SP MSG");
        assert_eq!(len.parse::<usize>().expect("length"), msg.len());
        assert!(msg.contains(r#"journal_id="a\"b\]c\\""#), "{msg}");
        assert!(msg.contains(" - nhi-agent 1 withspaceandaveryl"), "{msg}");
        assert!(msg.ends_with("] é"));
    }

    #[test]
    fn hec_envelope_carries_the_event_and_its_identity() {
        let body = hec_body(
            &[record(1, r#"{"id":1}"#), record(2, r#"{"id":2}"#)],
            "h",
            Some("nhi"),
            None,
        );
        let events: Vec<Value> = serde_json::Deserializer::from_str(&body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .expect("concatenated JSON objects");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event"], json!({"id": 1}));
        assert_eq!(events[0]["time"], "1700000000.123");
        assert_eq!(events[0]["index"], "nhi");
        assert_eq!(events[0]["sourcetype"], "nhi:event");
        assert_eq!(events[1]["fields"]["event_id"], "2");
        assert_eq!(events[1]["fields"]["journal_id"], "j-1");
        assert_eq!(events[1]["fields"]["event_hash"], "ab".repeat(32));
        let no_index = hec_body(&[record(1, "{}")], "h", None, Some("st"));
        let e: Value = serde_json::from_str(no_index.trim()).expect("json");
        assert!(e.get("index").is_none());
        assert_eq!(e["sourcetype"], "st");
    }

    #[test]
    fn otlp_body_is_an_export_logs_request() {
        let body = otlp_body(&[record(3, r#"{"id":3}"#)], "h");
        let rl = &body["resourceLogs"][0];
        assert_eq!(
            rl["resource"]["attributes"][0]["value"]["stringValue"],
            "nhi-agent"
        );
        assert_eq!(rl["resource"]["attributes"][1]["value"]["stringValue"], "h");
        let log = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(log["timeUnixNano"], "1700000000123000000");
        assert_eq!(log["severityNumber"], 13);
        assert_eq!(log["severityText"], "WARN");
        assert_eq!(log["body"]["stringValue"], r#"{"id":3}"#);
        let attr = |k: &str| {
            log["attributes"]
                .as_array()
                .expect("attributes")
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
        };
        assert_eq!(attr("nhi.event_id"), Some(json!({"intValue": "3"})));
        assert_eq!(attr("nhi.journal_id"), Some(json!({"stringValue": "j-1"})));
        assert_eq!(
            attr("nhi.event_hash"),
            Some(json!({"stringValue": "ab".repeat(32)}))
        );
    }

    /// A one-shot HTTP server on loopback: answers each request with `status`, and
    /// returns the request heads and bodies it read.
    fn http_server(statuses: Vec<u16>) -> (u16, std::thread::JoinHandle<Vec<(String, String)>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let (mut conn, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body_start) = loop {
                    let n = conn.read(&mut chunk).expect("read");
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..at]).into_owned(), at + 4);
                    }
                };
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("content-length");
                while buf.len() < body_start + length {
                    let n = conn.read(&mut chunk).expect("read");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body =
                    String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned();
                seen.push((head, body));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
                );
                conn.write_all(answer.as_bytes()).expect("answer");
            }
            seen
        });
        (port, server)
    }

    fn http_stream(sink: SinkConfig) -> StreamConfig {
        StreamConfig {
            name: "t".into(),
            sink,
            format: super::super::config::Format::Json,
            filters: Default::default(),
            start_at: super::super::config::StartAt::Oldest,
            batch: 10,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }
    }

    /// HEC: the token from its 0600 file in the Authorization header, delivered on 2xx,
    /// an error naming the status (never the token) otherwise; a token file others can
    /// read is refused.
    #[test]
    fn hec_sends_the_token_and_counts_only_2xx_as_delivered() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("hec.token");
        std::fs::write(&token_file, "s3cr3t-token\n").expect("token");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let (port, server) = http_server(vec![200, 503]);
        let config = http_stream(SinkConfig::SplunkHec {
            url: format!("http://127.0.0.1:{port}/services/collector/event")
                .parse()
                .expect("url"),
            token_file: token_file.clone(),
            index: None,
            sourcetype: None,
            ca_file: None,
        });
        let err = open(&config).err().expect("a token file others can read");
        assert!(err.contains("0644"), "{err}");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let mut sink = open(&config).expect("open");
        sink.send(&[record(1, "{}")]).expect("200 is delivered");
        let err = sink.send(&[record(2, "{}")]).expect_err("503 is not");
        assert!(err.contains("503"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let seen = server.join().expect("server");
        assert!(seen[0]
            .0
            .starts_with("POST /services/collector/event HTTP/1.1"));
        assert!(
            seen[0]
                .0
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Splunk s3cr3t-token")),
            "{}",
            seen[0].0
        );
        let event: Value = serde_json::from_str(seen[1].1.trim()).expect("HEC event");
        assert_eq!(event["fields"]["event_id"], "2");
    }

    /// OTLP: the JSON logs body POSTed as application/json, delivered on 2xx.
    #[test]
    fn otlp_posts_json_logs() {
        let (port, server) = http_server(vec![200]);
        let config = http_stream(SinkConfig::Otlp {
            url: format!("http://127.0.0.1:{port}/v1/logs")
                .parse()
                .expect("url"),
            ca_file: None,
        });
        let mut sink = open(&config).expect("open");
        sink.send(&[record(5, r#"{"id":5}"#)]).expect("delivered");
        let seen = server.join().expect("server");
        assert!(
            seen[0].0.starts_with("POST /v1/logs HTTP/1.1"),
            "{}",
            seen[0].0
        );
        assert!(seen[0]
            .0
            .lines()
            .any(|l| l.eq_ignore_ascii_case("content-type: application/json")));
        let body: Value = serde_json::from_str(&seen[0].1).expect("json");
        assert_eq!(
            body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"]["stringValue"],
            r#"{"id":5}"#
        );
    }

    #[test]
    fn file_sink_appends_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/events.jsonl");
        // 10 bytes per line (9 + newline); 25 bytes hold two lines.
        let mut sink = FileSink::new(path.clone(), 25, 2);
        let line = |n: i64| record(n, &format!("{{\"n\":{n:03}}}"));
        sink.send(&[line(1), line(2), line(3)]).expect("send");
        sink.send(&[line(4)]).expect("send");
        sink.send(&[line(5), line(6), line(7)]).expect("send");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        assert_eq!(read(path.clone()), "{\"n\":007}\n");
        assert_eq!(read(rotated(1)), "{\"n\":005}\n{\"n\":006}\n");
        assert_eq!(read(rotated(2)), "{\"n\":003}\n{\"n\":004}\n");
        assert!(!rotated(3).exists(), "only keep = 2 rotated files");
        // A line longer than max_bytes still goes out whole, in a file of its own.
        let mut sink = FileSink::new(dir.path().join("big.jsonl"), 5, 1);
        sink.send(&[line(1), line(2)]).expect("send");
        assert_eq!(read(dir.path().join("big.jsonl")), "{\"n\":002}\n");
        assert_eq!(read(dir.path().join("big.jsonl.1")), "{\"n\":001}\n");
    }
}

//! HTTP bodies as masking sees them, sans IO: which kind of body a `Content-Type`
//! announces ([`BodyKind`]), how it is encoded ([`Coding`]), incremental decoding with a
//! bounded output ([`Decoder`]), the masking of line-framed bodies (NDJSON, SSE, text)
//! one line at a time with a bounded line ([`LineMasker`]), whole documents
//! ([`mask_whole`]), and the bounded excerpt the journal keeps ([`Excerpt`]).
//!
//! Bodies of other types (images, archives, protobuf, forms, ...) are not masked: the
//! proxy passes them through untouched.
use std::io::Write;

use crate::mask::{BodyMasker, Detector};

/// The default `mask_body_limit`: the largest JSON body, or NDJSON/SSE/text line, the
/// agent masks (decoded size).
pub const DEFAULT_MASK_BODY_LIMIT: u64 = 4 << 20;

/// Bytes of a body kept in the journal (`record_results = "rows"`).
pub const EXCERPT_BYTES: usize = 4096;

/// A body a mask can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`, `*/*+json`: masked as one document (needs the whole body).
    Json,
    /// `application/x-ndjson`, `application/jsonl`, `application/json-seq`...: one JSON
    /// document per line, masked line by line.
    Ndjson,
    /// `text/event-stream`: `data:` lines masked (as JSON when they hold a JSON
    /// document, else as text), other lines as text, line by line.
    Sse,
    /// Any other `text/*`: masked line by line by the detectors.
    Text,
    /// `application/xml`, `text/xml`, `*/*+xml`: masked as one document (elements by
    /// name as JSON members are, text by the detectors; needs the whole body).
    Xml,
}

impl BodyKind {
    /// The kind a `Content-Type` value announces; `None`: not masked.
    pub fn of(content_type: &str) -> Option<BodyKind> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (top, sub) = essence.split_once('/')?;
        match (top, sub) {
            ("application", "json") => Some(BodyKind::Json),
            // AWS's JSON protocols (`application/x-amz-json-1.0`, `-1.1`).
            ("application", sub) if sub.starts_with("x-amz-json-") => Some(BodyKind::Json),
            ("application", "x-ndjson" | "ndjson" | "jsonl" | "x-jsonl" | "jsonlines") => {
                Some(BodyKind::Ndjson)
            }
            ("text", "event-stream") => Some(BodyKind::Sse),
            ("application" | "text", "xml") => Some(BodyKind::Xml),
            (_, sub) if sub.ends_with("+xml") => Some(BodyKind::Xml),
            ("text", _) => Some(BodyKind::Text),
            (_, sub) if sub.ends_with("+json") => Some(BodyKind::Json),
            _ => None,
        }
    }

    /// The name journaled (`body_kind`).
    pub fn name(self) -> &'static str {
        match self {
            BodyKind::Json => "json",
            BodyKind::Ndjson => "ndjson",
            BodyKind::Sse => "sse",
            BodyKind::Text => "text",
            BodyKind::Xml => "xml",
        }
    }
}

/// A `Content-Encoding` the agent decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// zlib-wrapped (RFC 9110), or raw deflate as some servers send it.
    Deflate,
    Br,
}

impl Coding {
    /// The coding of a body with these `Content-Encoding` values. More than one coding,
    /// or one the agent does not decode, is an error (a body that must be masked and
    /// cannot be read is refused, never passed raw).
    pub fn of<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Coding, String> {
        let mut found = Coding::Identity;
        for token in values
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "identity")
        {
            let coding = match token.as_str() {
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Br,
                other => return Err(format!("Content-Encoding \"{other}\" cannot be decoded")),
            };
            if found != Coding::Identity {
                return Err("more than one Content-Encoding".into());
            }
            found = coding;
        }
        Ok(found)
    }

    /// The token, as in the header.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
        }
    }
}

/// Why a body could not be masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body exceeds mask_body_limit ({limit} bytes) and must be masked")]
    TooLarge { limit: u64 },
    #[error("a line of the body exceeds mask_body_limit ({limit} bytes) and must be masked")]
    LineTooLong { limit: u64 },
    #[error("the {coding} body cannot be decoded: {why}")]
    Decode { coding: &'static str, why: String },
    #[error("the body is declared JSON but is {0}")]
    NotJson(String),
    #[error("the body is declared XML but is {0}")]
    NotXml(String),
    #[error("line {line} of the NDJSON body is {why}")]
    NdjsonLine { line: u64, why: String },
}

/// A `Write` that keeps what it is given up to `cap` bytes, then fails.
struct Sink {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.over = true;
            return Err(std::io::Error::other("decoded body over its limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Identity(Sink),
    Gzip(flate2::write::GzDecoder<Sink>),
    /// Deflate before its first two bytes say zlib or raw.
    DeflateStart(Vec<u8>, Sink),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Raw(flate2::write::DeflateDecoder<Sink>),
    Br(Box<brotli_decompressor::DecompressorWriter<Sink>>),
    Gone,
}

/// An incremental decoder of one body. Decoded bytes accumulate until [`Self::take`];
/// more than `cap` of them pending is [`BodyError::TooLarge`] (a decompression bomb is
/// stopped by the bound, not by memory).
pub struct Decoder {
    coding: Coding,
    inner: Inner,
    limit: u64,
}

impl Decoder {
    /// A decoder of `coding` holding at most `cap` decoded bytes at a time; `limit` is
    /// what errors name.
    pub fn new(coding: Coding, cap: usize, limit: u64) -> Decoder {
        let sink = Sink {
            buf: Vec::new(),
            cap,
            over: false,
        };
        let inner = match coding {
            Coding::Identity => Inner::Identity(sink),
            Coding::Gzip => Inner::Gzip(flate2::write::GzDecoder::new(sink)),
            Coding::Deflate => Inner::DeflateStart(Vec::new(), sink),
            Coding::Br => Inner::Br(Box::new(brotli_decompressor::DecompressorWriter::new(
                sink, 4096,
            ))),
        };
        Decoder {
            coding,
            inner,
            limit,
        }
    }

    fn sink(&mut self) -> Option<&mut Sink> {
        match &mut self.inner {
            Inner::Identity(s) | Inner::DeflateStart(_, s) => Some(s),
            Inner::Gzip(d) => Some(d.get_mut()),
            Inner::Zlib(d) => Some(d.get_mut()),
            Inner::Raw(d) => Some(d.get_mut()),
            Inner::Br(d) => Some(d.get_mut()),
            Inner::Gone => None,
        }
    }

    fn error(&mut self, e: std::io::Error) -> BodyError {
        if self.sink().is_some_and(|s| s.over) {
            BodyError::TooLarge { limit: self.limit }
        } else {
            BodyError::Decode {
                coding: self.coding.name(),
                why: e.to_string(),
            }
        }
    }

    /// Decodes `input` (the next bytes of the encoded body).
    pub fn feed(&mut self, input: &[u8]) -> Result<(), BodyError> {
        if let Inner::DeflateStart(start, _) = &mut self.inner {
            start.extend_from_slice(input);
            if start.len() < 2 {
                return Ok(());
            }
            let Inner::DeflateStart(start, sink) = std::mem::replace(&mut self.inner, Inner::Gone)
            else {
                unreachable!("matched above");
            };
            // A zlib header: compression method 8 and a check value making the first
            // two bytes a multiple of 31 (RFC 1950).
            let zlib = start[0] & 0x0f == 8 && u16::from_be_bytes([start[0], start[1]]) % 31 == 0;
            self.inner = if zlib {
                Inner::Zlib(flate2::write::ZlibDecoder::new(sink))
            } else {
                Inner::Raw(flate2::write::DeflateDecoder::new(sink))
            };
            return self.feed(&start);
        }
        let result = match &mut self.inner {
            Inner::Identity(s) => s.write_all(input),
            Inner::Gzip(d) => d.write_all(input),
            Inner::Zlib(d) => d.write_all(input),
            Inner::Raw(d) => d.write_all(input),
            Inner::Br(d) => d.write_all(input),
            Inner::DeflateStart(..) | Inner::Gone => Ok(()),
        };
        result.map_err(|e| self.error(e))
    }

    /// The end of the encoded body: checks that it was complete.
    pub fn finish(&mut self) -> Result<(), BodyError> {
        if let Inner::DeflateStart(start, _) = &self.inner {
            if start.is_empty() {
                return Ok(());
            }
            return Err(BodyError::Decode {
                coding: self.coding.name(),
                why: "truncated".into(),
            });
        }
        let result = match &mut self.inner {
            Inner::Gzip(d) => d.try_finish(),
            Inner::Zlib(d) => d.try_finish(),
            Inner::Raw(d) => d.try_finish(),
            Inner::Br(d) => d.close(),
            _ => Ok(()),
        };
        result.map_err(|e| self.error(e))
    }

    /// The decoded bytes so far (drained).
    pub fn take(&mut self) -> Vec<u8> {
        self.sink()
            .map(|s| std::mem::take(&mut s.buf))
            .unwrap_or_default()
    }
}

/// Masks a complete body of `kind` (already decoded). `Ok(None)`: unchanged.
pub fn mask_whole(
    kind: BodyKind,
    body: &[u8],
    limit: u64,
    masker: &mut BodyMasker,
    secret: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, BodyError> {
    if body.len() as u64 > limit {
        return Err(BodyError::TooLarge { limit });
    }
    match kind {
        BodyKind::Json => masker
            .mask_json(body, secret)
            .map_err(|e| BodyError::NotJson(e.to_string())),
        BodyKind::Xml => masker
            .mask_xml(body, secret)
            .map_err(|e| BodyError::NotXml(e.to_string())),
        _ => {
            let mut lines = LineMasker::new(kind, limit);
            let mut out = Vec::with_capacity(body.len());
            lines.push(body, masker, secret, &mut out)?;
            lines.finish(masker, secret, &mut out)?;
            Ok((out != body).then_some(out))
        }
    }
}

/// Masks a line-framed body (NDJSON, SSE, text) as it arrives: complete lines are
/// masked and appended to the output at once (an SSE event reaches the client as soon
/// as its lines did); a partial line waits, at most `limit` bytes of it.
#[derive(Debug)]
pub struct LineMasker {
    kind: BodyKind,
    limit: u64,
    pending: Vec<u8>,
    line: u64,
    /// Inside a PEM private key whose BEGIN line was masked: its lines are dropped
    /// until the END line (text bodies, when the `private_key` detector is on).
    in_key: bool,
}

impl LineMasker {
    pub fn new(kind: BodyKind, limit: u64) -> LineMasker {
        LineMasker {
            kind,
            limit,
            pending: Vec::new(),
            line: 0,
            in_key: false,
        }
    }

    /// Masks the complete lines `data` finishes into `out`.
    pub fn push(
        &mut self,
        data: &[u8],
        masker: &mut BodyMasker,
        secret: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.pending[start..]) {
            let end = start + nl + 1;
            let line = std::mem::take(&mut self.pending);
            let result = self.line(&line[start..end], masker, secret, out);
            self.pending = line;
            result?;
            start = end;
        }
        self.pending.drain(..start);
        if self.pending.len() as u64 > self.limit {
            return Err(BodyError::LineTooLong { limit: self.limit });
        }
        Ok(())
    }

    /// The end of the body: masks a last line without a line break.
    pub fn finish(
        &mut self,
        masker: &mut BodyMasker,
        secret: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.pending);
        self.line(&line, masker, secret, out)
    }

    /// One line, with its line break if it has one.
    fn line(
        &mut self,
        line: &[u8],
        masker: &mut BodyMasker,
        secret: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        self.line += 1;
        if line.len() as u64 > self.limit {
            return Err(BodyError::LineTooLong { limit: self.limit });
        }
        let content_end = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))
            .map_or(line.len(), <[u8]>::len);
        let (content, ending) = line.split_at(content_end);
        match self.kind {
            // XML is masked whole (mask_whole); a line of it reads as text.
            BodyKind::Ndjson | BodyKind::Json => {
                if content.iter().all(u8::is_ascii_whitespace) {
                    out.extend_from_slice(content);
                } else {
                    match masker.mask_json(content, secret) {
                        Ok(Some(new)) => out.extend_from_slice(&new),
                        Ok(None) => out.extend_from_slice(content),
                        Err(e) => {
                            return Err(BodyError::NdjsonLine {
                                line: self.line,
                                why: e.to_string(),
                            })
                        }
                    }
                }
            }
            BodyKind::Sse => {
                if let Some(payload) = content.strip_prefix(b"data:") {
                    out.extend_from_slice(b"data:");
                    let (space, payload) = match payload.strip_prefix(b" ") {
                        Some(rest) => (&b" "[..], rest),
                        None => (&b""[..], payload),
                    };
                    out.extend_from_slice(space);
                    let json = matches!(
                        payload.iter().find(|b| !b.is_ascii_whitespace()),
                        Some(b'{' | b'[')
                    );
                    let masked = match json.then(|| masker.mask_json(payload, secret)) {
                        Some(Ok(masked)) => masked,
                        // Not a (whole) JSON document: the detectors read it as text.
                        _ => masker.mask_text(payload, secret),
                    };
                    out.extend_from_slice(masked.as_deref().unwrap_or(payload));
                } else {
                    let masked = masker.mask_text(content, secret);
                    out.extend_from_slice(masked.as_deref().unwrap_or(content));
                }
            }
            BodyKind::Text | BodyKind::Xml => {
                if self.in_key {
                    // The key's BEGIN line is masked; its body and END line go.
                    if memchr::memmem::find(content, b"-----END ").is_some() {
                        self.in_key = false;
                    }
                } else {
                    if masker.detects(Detector::PrivateKey)
                        && memchr::memmem::find(content, b"-----BEGIN ").is_some()
                        && memchr::memmem::find(content, b"PRIVATE KEY-----").is_some()
                        && memchr::memmem::find(content, b"-----END ").is_none()
                    {
                        self.in_key = true;
                    }
                    let masked = masker.mask_text(content, secret);
                    out.extend_from_slice(masked.as_deref().unwrap_or(content));
                }
            }
        }
        out.extend_from_slice(ending);
        Ok(())
    }
}

/// The first [`EXCERPT_BYTES`] (or `cap`) bytes of a body, for the journal.
#[derive(Debug, Default)]
pub struct Excerpt {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Excerpt {
    pub fn new(cap: usize) -> Excerpt {
        Excerpt {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Keeps what still fits of `data`.
    pub fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// Whether bytes were left out.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The excerpt as text (lossy UTF-8; a character cut at the end is dropped).
    pub fn text(&self) -> String {
        let bytes = match std::str::from_utf8(&self.buf) {
            Ok(_) => &self.buf[..],
            Err(e) if e.error_len().is_none() => &self.buf[..e.valid_up_to()],
            Err(_) => &self.buf[..],
        };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

#[cfg(test)]
mod tests;

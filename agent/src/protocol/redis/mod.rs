//! Redis's RESP2 and RESP3, sans IO: client commands ([`ClientDecoder`]: arrays of bulk
//! strings, and inline commands) and server replies of every type ([`ServerDecoder`]).
//!
//! Framing is done in two passes, the mini-redis way: a resumable [`Scanner`] walks the
//! headers of the frame at the front of the buffer without copying (so a frame arriving
//! in many reads is scanned once, not once per read), checking every length, count and
//! the nesting depth against [`Limits`] *before* it waits for the bytes they announce;
//! once the whole frame is buffered it is split off and parsed into a [`Frame`] whose
//! strings are zero-copy slices of it. "Need more bytes" is `Ok(None)`; malformed or
//! oversized input is a [`RespError`], after which the connection is closed.
//!
//! RESP3's streamed strings and aggregates (`$?`, `*?`, ...) are refused: no Redis
//! server sends them, and a proxy that guessed their end would be ambiguous.
use bytes::{BufMut, Bytes, BytesMut};

mod inline;
pub mod names;
#[cfg(test)]
mod tests;

pub use inline::split_args;

/// Bounds on what one frame may announce, checked before its bytes are buffered.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest bulk (or verbatim, or bulk error) string.
    pub max_bulk: usize,
    /// Longest line: a simple string, error, number, or an inline command.
    pub max_line: usize,
    /// Deepest nesting of aggregates (attributes count as one level).
    pub max_depth: usize,
    /// Most elements in one frame, all levels together (a map entry counts two).
    pub max_elements: usize,
    /// Largest frame, in bytes.
    pub max_frame: usize,
}

impl Limits {
    /// What the agent accepts from clients: Redis's own `proto-max-bulk-len` is 512 MiB;
    /// the agent buffers a command whole before it is judged, so it takes less. 64 KiB
    /// lines are Redis's inline limit (`PROTO_INLINE_MAX_SIZE`).
    pub const CLIENT: Limits = Limits {
        max_bulk: 64 << 20,
        max_line: 64 << 10,
        max_depth: 1,
        max_elements: 1 << 20,
        max_frame: 128 << 20,
    };
    /// What the agent accepts from servers (replies are buffered whole to be masked).
    pub const SERVER: Limits = Limits {
        max_bulk: 256 << 20,
        max_line: 1 << 20,
        max_depth: 64,
        max_elements: 8 << 20,
        max_frame: 512 << 20,
    };
}

/// Malformed or oversized input: the connection is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unknown RESP type byte 0x{byte:02x}")]
    UnknownType { byte: u8 },
    #[error("invalid {what} in a RESP header")]
    BadNumber { what: &'static str },
    #[error("{what} of {len} exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("line without CRLF within {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("a bulk string is not followed by CRLF")]
    MissingCrlf,
    #[error("nesting deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("RESP3 streamed types are not supported")]
    Streamed,
    #[error("invalid {what}")]
    Invalid { what: &'static str },
    #[error("client command: {0}")]
    Command(String),
}

/// One RESP value. Strings are zero-copy slices of the frame they came in.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`.
    Simple(Bytes),
    /// `-ERR ...`.
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$5 hello`; `None`: RESP2's null bulk `$-1`.
    Bulk(Option<Bytes>),
    /// `*N ...`; `None`: RESP2's null array `*-1`.
    Array(Option<Vec<Frame>>),
    /// RESP3 `_`.
    Null,
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `,3.14` (its text, as sent: `inf`, `-inf`, `nan` included).
    Double(Bytes),
    /// RESP3 `(1234...` (its digits, as sent).
    BigNumber(Bytes),
    /// RESP3 `!N ...`.
    BulkError(Bytes),
    /// RESP3 `=N txt:...`: the three-byte format and the text.
    Verbatim { format: [u8; 3], text: Bytes },
    /// RESP3 `%N` key/value pairs.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~N`.
    Set(Vec<Frame>),
    /// RESP3 `>N`: out-of-band data (pub/sub messages, invalidations, ...).
    Push(Vec<Frame>),
    /// RESP3 `|N` attributes and the value they annotate.
    Attribute {
        attrs: Vec<(Frame, Frame)>,
        value: Box<Frame>,
    },
}

impl Frame {
    /// The type's name, as the journal records it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::Simple(_) => "simple",
            Frame::Error(_) => "error",
            Frame::Integer(_) => "integer",
            Frame::Bulk(Some(_)) => "bulk",
            Frame::Bulk(None) | Frame::Array(None) | Frame::Null => "null",
            Frame::Array(Some(_)) => "array",
            Frame::Boolean(_) => "boolean",
            Frame::Double(_) => "double",
            Frame::BigNumber(_) => "bignum",
            Frame::BulkError(_) => "error",
            Frame::Verbatim { .. } => "verbatim",
            Frame::Map(_) => "map",
            Frame::Set(_) => "set",
            Frame::Push(_) => "push",
            Frame::Attribute { value, .. } => value.type_name(),
        }
    }

    /// The value an attribute annotates (the frame itself otherwise).
    pub fn unwrap_attributes(&self) -> &Frame {
        match self {
            Frame::Attribute { value, .. } => value.unwrap_attributes(),
            other => other,
        }
    }

    /// Whether this is an error reply (`-` or `!`).
    pub fn is_error(&self) -> bool {
        matches!(
            self.unwrap_attributes(),
            Frame::Error(_) | Frame::BulkError(_)
        )
    }

    /// The text of a string-like frame (simple, bulk, verbatim).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Simple(b) | Frame::Bulk(Some(b)) => Some(b),
            Frame::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The elements of an array, set or push.
    pub fn elements(&self) -> Option<&[Frame]> {
        match self {
            Frame::Array(Some(v)) | Frame::Set(v) | Frame::Push(v) => Some(v),
            _ => None,
        }
    }

    /// Appends the frame's RESP encoding to `out` (lengths recomputed).
    pub fn encode(&self, out: &mut BytesMut) {
        fn line(out: &mut BytesMut, tag: u8, text: &[u8]) {
            out.put_u8(tag);
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
        fn bulk(out: &mut BytesMut, tag: u8, text: &[u8]) {
            line(out, tag, text.len().to_string().as_bytes());
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
        fn count(out: &mut BytesMut, tag: u8, n: usize) {
            line(out, tag, n.to_string().as_bytes());
        }
        match self {
            Frame::Simple(s) => line(out, b'+', s),
            Frame::Error(s) => line(out, b'-', s),
            Frame::Integer(i) => line(out, b':', i.to_string().as_bytes()),
            Frame::Bulk(Some(b)) => bulk(out, b'$', b),
            Frame::Bulk(None) => out.put_slice(b"$-1\r\n"),
            Frame::Array(None) => out.put_slice(b"*-1\r\n"),
            Frame::Array(Some(v)) => {
                count(out, b'*', v.len());
                v.iter().for_each(|f| f.encode(out));
            }
            Frame::Null => out.put_slice(b"_\r\n"),
            Frame::Boolean(b) => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Frame::Double(d) => line(out, b',', d),
            Frame::BigNumber(d) => line(out, b'(', d),
            Frame::BulkError(e) => bulk(out, b'!', e),
            Frame::Verbatim { format, text } => {
                let mut body = Vec::with_capacity(4 + text.len());
                body.extend_from_slice(format);
                body.push(b':');
                body.extend_from_slice(text);
                bulk(out, b'=', &body);
            }
            Frame::Map(pairs) => {
                count(out, b'%', pairs.len());
                for (k, v) in pairs {
                    k.encode(out);
                    v.encode(out);
                }
            }
            Frame::Set(v) => {
                count(out, b'~', v.len());
                v.iter().for_each(|f| f.encode(out));
            }
            Frame::Push(v) => {
                count(out, b'>', v.len());
                v.iter().for_each(|f| f.encode(out));
            }
            Frame::Attribute { attrs, value } => {
                count(out, b'|', attrs.len());
                for (k, v) in attrs {
                    k.encode(out);
                    v.encode(out);
                }
                value.encode(out);
            }
        }
    }

    /// The frame encoded on its own.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// A decoded frame and its exact bytes (forwarded as they came when nothing changes).
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    pub value: T,
    pub raw: Bytes,
}

/// What one header line announces.
enum Header {
    /// A value complete in its line.
    Line,
    /// A string of this many bytes follows (then CRLF).
    Bulk(usize),
    /// An aggregate of this many elements follows.
    Aggregate(usize),
}

/// Finds the CRLF ending the line at the front of `buf`: the line's length, `None` if
/// not buffered yet (an error past `limit` bytes).
fn find_line(buf: &[u8], limit: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[..buf.len().min(limit + 2)];
    match memchr::memchr(b'\n', window) {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(RespError::Invalid {
            what: "line ending (LF without CR)",
        }),
        None if buf.len() > limit + 1 => Err(RespError::LineTooLong { limit }),
        None => Ok(None),
    }
}

/// A decimal length or count: `-1` (null) is `None`.
fn parse_len(text: &[u8], what: &'static str) -> Result<Option<u64>, RespError> {
    if text == b"-1" {
        return Ok(None);
    }
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadNumber { what });
    }
    // At most 19 digits: fits in u64.
    Ok(Some(
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(RespError::BadNumber { what })?,
    ))
}

fn bounded(len: u64, limit: usize, what: &'static str) -> Result<usize, RespError> {
    if len > limit as u64 {
        return Err(RespError::TooLarge {
            what,
            len,
            limit: limit as u64,
        });
    }
    Ok(len as usize)
}

/// Reads the header at the front of `buf`: its length (CRLF included) and what it
/// announces. `None`: not buffered yet.
fn header(buf: &[u8], limits: &Limits) -> Result<Option<(usize, Header)>, RespError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some(len) = find_line(&buf[1..], limits.max_line)? else {
        return Ok(None);
    };
    let text = &buf[1..1 + len];
    let used = len + 3;
    let h = match tag {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
            check_line(tag, text)?;
            Header::Line
        }
        b'$' | b'!' | b'=' => {
            if text.first() == Some(&b'?') {
                return Err(RespError::Streamed);
            }
            match parse_len(text, "bulk length")? {
                None if tag == b'$' => Header::Line,
                None => {
                    return Err(RespError::BadNumber {
                        what: "bulk length",
                    })
                }
                Some(n) => Header::Bulk(bounded(n, limits.max_bulk, "bulk length")?),
            }
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            if text.first() == Some(&b'?') {
                return Err(RespError::Streamed);
            }
            match parse_len(text, "element count")? {
                None if tag == b'*' => Header::Line,
                None => {
                    return Err(RespError::BadNumber {
                        what: "element count",
                    })
                }
                Some(n) => {
                    let n = bounded(n, limits.max_elements, "element count")?;
                    // Maps and attributes hold pairs.
                    let n = if matches!(tag, b'%' | b'|') {
                        bounded(n as u64 * 2, limits.max_elements, "element count")?
                    } else {
                        n
                    };
                    Header::Aggregate(n)
                }
            }
        }
        b'.' => return Err(RespError::Streamed),
        byte => return Err(RespError::UnknownType { byte }),
    };
    Ok(Some((used, h)))
}

/// Checks the text of a one-line value.
fn check_line(tag: u8, text: &[u8]) -> Result<(), RespError> {
    let ok = match tag {
        b'+' | b'-' => !text.contains(&b'\r'),
        b':' => parse_int(text).is_some(),
        b'_' => text.is_empty(),
        b'#' => text == b"t" || text == b"f",
        b',' => {
            !text.is_empty()
                && text
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
        }
        b'(' => {
            let digits = text.strip_prefix(b"-").unwrap_or(text);
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(RespError::Invalid {
            what: match tag {
                b':' => "integer",
                b'_' => "null",
                b'#' => "boolean",
                b',' => "double",
                b'(' => "big number",
                _ => "simple string",
            },
        })
    }
}

fn parse_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Walks one frame's headers, resumably: what it has walked stays walked across reads.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of the frame walked so far.
    pos: usize,
    /// Elements still to come at each open aggregate level.
    stack: Vec<usize>,
    /// Elements seen in this frame so far.
    elements: usize,
}

impl Scanner {
    /// The length of the frame at the front of `buf` once it is all buffered.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, RespError> {
        loop {
            let Some((used, h)) = header(&buf[self.pos..], limits)? else {
                return Ok(None);
            };
            match h {
                Header::Line => self.pos += used,
                Header::Bulk(n) => {
                    let end = self.pos + used + n;
                    if end + 2 > limits.max_frame {
                        return Err(RespError::TooLarge {
                            what: "frame",
                            len: (end + 2) as u64,
                            limit: limits.max_frame as u64,
                        });
                    }
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(RespError::MissingCrlf);
                    }
                    self.pos = end + 2;
                }
                Header::Aggregate(n) => {
                    self.pos += used;
                    self.elements += n;
                    if self.elements > limits.max_elements {
                        return Err(RespError::TooLarge {
                            what: "elements in one frame",
                            len: self.elements as u64,
                            limit: limits.max_elements as u64,
                        });
                    }
                    if n > 0 {
                        // An attribute map (|) annotates the value after it: one more element.
                        let tag = buf[self.pos - used];
                        let n = if tag == b'|' { n + 1 } else { n };
                        if self.stack.len() >= limits.max_depth {
                            return Err(RespError::TooDeep {
                                limit: limits.max_depth,
                            });
                        }
                        self.stack.push(n);
                        continue;
                    }
                    if buf[self.pos - used] == b'|' {
                        // `|0` still annotates the value after it.
                        if self.stack.len() >= limits.max_depth {
                            return Err(RespError::TooDeep {
                                limit: limits.max_depth,
                            });
                        }
                        self.stack.push(1);
                        continue;
                    }
                }
            }
            if self.pos > limits.max_frame {
                return Err(RespError::TooLarge {
                    what: "frame",
                    len: self.pos as u64,
                    limit: limits.max_frame as u64,
                });
            }
            // One element complete: close the aggregates it completes.
            loop {
                match self.stack.last_mut() {
                    None => {
                        let len = self.pos;
                        *self = Scanner::default();
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }
}

/// Parses a frame the [`Scanner`] found complete (so every length is known to fit).
fn parse(frame: &Bytes, pos: &mut usize) -> Result<Frame, RespError> {
    let rest = &frame[*pos..];
    let tag = rest[0];
    let end = memchr::memchr(b'\r', rest).ok_or(RespError::Invalid { what: "frame" })?;
    let text = frame.slice(*pos + 1..*pos + end);
    *pos += end + 2;
    let bulk = |pos: &mut usize, n: usize| {
        let b = frame.slice(*pos..*pos + n);
        *pos += n + 2;
        b
    };
    let count = |text: &[u8]| -> Result<Option<usize>, RespError> {
        Ok(parse_len(text, "count")?.map(|n| n as usize))
    };
    Ok(match tag {
        b'+' => Frame::Simple(text),
        b'-' => Frame::Error(text),
        b':' => Frame::Integer(parse_int(&text).ok_or(RespError::Invalid { what: "integer" })?),
        b'_' => Frame::Null,
        b'#' => Frame::Boolean(&text[..] == b"t"),
        b',' => Frame::Double(text),
        b'(' => Frame::BigNumber(text),
        b'$' => match count(&text)? {
            None => Frame::Bulk(None),
            Some(n) => Frame::Bulk(Some(bulk(pos, n))),
        },
        b'!' => Frame::BulkError(bulk(pos, count(&text)?.unwrap_or(0))),
        b'=' => {
            let body = bulk(pos, count(&text)?.unwrap_or(0));
            if body.len() < 4 || body[3] != b':' {
                return Err(RespError::Invalid {
                    what: "verbatim string (no format prefix)",
                });
            }
            Frame::Verbatim {
                format: [body[0], body[1], body[2]],
                text: body.slice(4..),
            }
        }
        b'*' | b'~' | b'>' => match count(&text)? {
            None => Frame::Array(None),
            Some(n) => {
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(parse(frame, pos)?);
                }
                match tag {
                    b'*' => Frame::Array(Some(v)),
                    b'~' => Frame::Set(v),
                    _ => Frame::Push(v),
                }
            }
        },
        b'%' | b'|' => {
            let n = count(&text)?.unwrap_or(0);
            let mut pairs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let k = parse(frame, pos)?;
                let v = parse(frame, pos)?;
                pairs.push((k, v));
            }
            if tag == b'%' {
                Frame::Map(pairs)
            } else {
                Frame::Attribute {
                    attrs: pairs,
                    value: Box::new(parse(frame, pos)?),
                }
            }
        }
        byte => return Err(RespError::UnknownType { byte }),
    })
}

/// Decodes server replies (any RESP2/RESP3 type) from a byte stream.
#[derive(Debug)]
pub struct ServerDecoder {
    scanner: Scanner,
    limits: Limits,
}

impl Default for ServerDecoder {
    fn default() -> Self {
        ServerDecoder::new(Limits::SERVER)
    }
}

impl ServerDecoder {
    pub fn new(limits: Limits) -> ServerDecoder {
        ServerDecoder {
            scanner: Scanner::default(),
            limits,
        }
    }

    /// The next whole frame at the front of `buf` (consumed), `None`: need more bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<Frame>>, RespError> {
        let Some(len) = self.scanner.scan(buf, &self.limits)? else {
            return Ok(None);
        };
        let raw = buf.split_to(len).freeze();
        let mut pos = 0;
        let value = parse(&raw, &mut pos)?;
        debug_assert_eq!(pos, raw.len());
        Ok(Some(Decoded { value, raw }))
    }
}

/// A client command: its arguments (the name first), as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<Bytes>,
    /// Sent as an inline command (a text line), not an array: the agent forwards its
    /// array encoding, so the server reads exactly the arguments the agent judged.
    pub inline: bool,
}

impl Command {
    /// The command's name, upper case (ASCII); empty for an empty command.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// The command as an array of bulk strings.
    pub fn encode(&self) -> Bytes {
        encode_command(&self.args)
    }
}

/// An array of bulk strings: how a client sends a command.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.put_slice(format!("${}\r\n", a.len()).as_bytes());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// An error reply (`-<text>`), CR and LF in `text` replaced by spaces.
pub fn error_reply(text: &str) -> Bytes {
    let clean: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-{clean}\r\n"))
}

/// The length of a command header that redis-server reads as no command at all (its
/// count is zero or less: `*0`, `*-1`, `*-3`), so the command is skipped and not
/// answered; `None` for anything else (including such a header not yet whole). The
/// count must be one redis-server can read: no leading zero, at most 18 digits.
fn no_command(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(24)];
    let lf = memchr::memchr(b'\n', window)?;
    let count = window[..lf].strip_prefix(b"*")?.strip_suffix(b"\r")?;
    let zero_or_less = match count {
        b"0" => true,
        [b'-', b'1'..=b'9', rest @ ..] => rest.len() < 18 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    zero_or_less.then_some(lf + 1)
}

/// Decodes client commands: arrays of bulk strings, or inline command lines.
#[derive(Debug)]
pub struct ClientDecoder {
    scanner: Scanner,
    limits: Limits,
}

impl Default for ClientDecoder {
    fn default() -> Self {
        ClientDecoder::new(Limits::CLIENT)
    }
}

impl ClientDecoder {
    pub fn new(limits: Limits) -> ClientDecoder {
        ClientDecoder {
            scanner: Scanner::default(),
            limits,
        }
    }

    /// The next whole command at the front of `buf` (consumed); `None`: need more bytes.
    /// Empty inline lines, empty command arrays and negative counts (`*0`, `*-1`, `*-3`)
    /// are skipped, as Redis does.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<Command>>, RespError> {
        loop {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first != b'*' {
                // An inline command: one line, LF or CRLF terminated (as Redis reads it).
                let window = &buf[..buf.len().min(self.limits.max_line + 1)];
                let Some(lf) = memchr::memchr(b'\n', window) else {
                    if buf.len() > self.limits.max_line {
                        return Err(RespError::LineTooLong {
                            limit: self.limits.max_line,
                        });
                    }
                    return Ok(None);
                };
                let raw = buf.split_to(lf + 1).freeze();
                let line = raw[..lf].strip_suffix(b"\r").unwrap_or(&raw[..lf]);
                let args = split_args(line).map_err(RespError::Command)?;
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(Decoded {
                    value: Command {
                        args: args.into_iter().map(Bytes::from).collect(),
                        inline: true,
                    },
                    raw,
                }));
            }
            // A count of zero or less is no command to redis-server: skipped, unanswered.
            if let Some(len) = no_command(buf) {
                let _ = buf.split_to(len);
                continue;
            }
            let Some(len) = self.scanner.scan(buf, &self.limits)? else {
                return Ok(None);
            };
            let raw = buf.split_to(len).freeze();
            let mut pos = 0;
            let frame = parse(&raw, &mut pos)?;
            let Frame::Array(Some(elements)) = frame else {
                return Err(RespError::Command("a null command array".into()));
            };
            if elements.is_empty() {
                return Err(RespError::Command("an empty command array".into()));
            }
            let args = elements
                .into_iter()
                .map(|e| match e {
                    Frame::Bulk(Some(b)) => Ok(b),
                    other => Err(RespError::Command(format!(
                        "a command argument must be a bulk string, not {}",
                        other.type_name()
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Some(Decoded {
                value: Command {
                    args,
                    inline: false,
                },
                raw,
            }));
        }
    }
}

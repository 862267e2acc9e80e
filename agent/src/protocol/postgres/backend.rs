//! Messages from the server, and the decoder that cuts them out of its byte stream.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::error::{MessageId, ProtocolError};
use super::frame::{be_u32, check_len, take, Decoded, Limits, PgStr, Reader, Size};
use super::frontend::MAX_CANCEL_KEY;

/// An Authentication ('R') request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// 0: authenticated.
    Ok,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send `"md5" + md5(md5(password + user) + salt)`.
    Md5Password { salt: [u8; 4] },
    /// 10: start SASL with one of these mechanisms (e.g. SCRAM-SHA-256,
    /// SCRAM-SHA-256-PLUS).
    Sasl { mechanisms: Vec<PgStr> },
    /// 11: a server challenge (SCRAM server-first message).
    SaslContinue { data: Bytes },
    /// 12: the server's final SASL message (SCRAM server signature).
    SaslFinal { data: Bytes },
    /// Any other code (2 Kerberos V5, 7 GSS, 8 GSSContinue, 9 SSPI, ...), with the rest
    /// of the body.
    Other { code: u32, data: Bytes },
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: PgStr,
    /// The table the column comes from, or 0.
    pub table_oid: u32,
    /// Its attribute number in that table, or 0.
    pub column: i16,
    pub type_oid: u32,
    /// pg_type.typlen: negative for variable-width types.
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A DataRow, decoded lazily: the column lengths were checked against the body when it
/// was decoded, and the accessors walk them again without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow {
    body: Bytes,
    columns: u16,
}

impl DataRow {
    /// The body: the Int16 column count, then per column an Int32 length (-1 for NULL)
    /// and the value. `raw[5..]`.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.columns)
    }

    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// Per column, the range of its value within [`Self::body`], or `None` for NULL.
    pub fn ranges(&self) -> DataRowRanges<'_> {
        DataRowRanges {
            body: &self.body,
            pos: 2,
            left: self.columns,
        }
    }

    /// Per column, its value, or `None` for NULL.
    pub fn values(&self) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.ranges()
            .map(|range| range.and_then(|r| self.body.get(r)))
    }

    /// Column `index`'s value: `None` past the last column, `Some(None)` for NULL.
    pub fn get(&self, index: usize) -> Option<Option<&[u8]>> {
        self.values().nth(index)
    }
}

/// Iterator of [`DataRow::ranges`].
#[derive(Debug, Clone)]
pub struct DataRowRanges<'a> {
    body: &'a [u8],
    pos: usize,
    left: u16,
}

impl Iterator for DataRowRanges<'_> {
    type Item = Option<Range<usize>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked at decode time; a shortfall here would end the iteration rather than
        // panic.
        let Some(len) = be_u32(self.body, self.pos) else {
            self.left = 0;
            return None;
        };
        let len = len as i32;
        self.pos += 4;
        if len < 0 {
            return Some(None);
        }
        let start = self.pos;
        let end = start.saturating_add(len as usize);
        if end > self.body.len() {
            self.left = 0;
            return None;
        }
        self.pos = end;
        Some(Some(start..end))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Exact: a DataRow only comes from the decoder, which checked every column.
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for DataRowRanges<'_> {}

/// A CommandComplete tag, e.g. `SELECT 5`, `INSERT 0 3`, `UPDATE 2`, `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag(pub PgStr);

impl CommandTag {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The command: the tag without its counts (`"INSERT"`, `"CREATE TABLE"`).
    pub fn command(&self) -> &str {
        let s = self.as_str();
        s.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ')
    }

    /// Rows affected or returned, for the commands that report it: SELECT (also
    /// CREATE TABLE AS and SELECT INTO), INSERT (after the legacy OID), UPDATE, DELETE,
    /// MERGE, FETCH, MOVE, COPY. `None` for any other tag.
    pub fn rows(&self) -> Option<u64> {
        let mut words = self.as_str().split(' ');
        let command = words.next()?;
        let count = match command {
            "INSERT" => {
                words.next()?.parse::<u32>().ok()?;
                words.next()?
            }
            "SELECT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY" => words.next()?,
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        count.parse().ok()
    }
}

/// The fields of an ErrorResponse or NoticeResponse, in the order sent: a type byte
/// (`S` severity, `V` non-localized severity, `C` SQLSTATE, `M` message, `D` detail,
/// `H` hint, `P` position, ...) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub fields: Vec<(u8, PgStr)>,
}

impl ErrorFields {
    /// The first field of this type.
    pub fn get(&self, kind: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_str())
    }

    /// ERROR, FATAL, PANIC, WARNING, NOTICE, DEBUG, INFO or LOG: the non-localized `V`
    /// field, or `S` from servers before 9.6.
    pub fn severity(&self) -> Option<&str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// The SQLSTATE (`C`), e.g. `22012`.
    pub fn code(&self) -> Option<&str> {
        self.get(b'C')
    }

    /// The primary message (`M`).
    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    pub fn detail(&self) -> Option<&str> {
        self.get(b'D')
    }

    pub fn hint(&self) -> Option<&str> {
        self.get(b'H')
    }
}

/// CopyInResponse, CopyOutResponse, CopyBothResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    /// 0 textual (every column format is 0), 1 binary.
    pub format: u8,
    pub column_formats: Vec<i16>,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// The single untagged byte answering an SSLRequest: `S` (TLS handshake follows) or
    /// `N` (go on in clear).
    SslAnswer(u8),
    /// The single untagged byte answering a GSSENCRequest: `G` or `N`.
    GssEncAnswer(u8),
    /// 'R'
    Authentication(AuthRequest),
    /// 'S': a run-time parameter's current value.
    ParameterStatus { name: PgStr, value: PgStr },
    /// 'K': what a CancelRequest must quote. The key is 4 bytes in protocol 3.0.
    BackendKeyData { pid: u32, key: Bytes },
    /// 'Z': `I` idle, `T` in a transaction, `E` in a failed transaction.
    ReadyForQuery { status: u8 },
    /// 'T'
    RowDescription { fields: Vec<FieldDescription> },
    /// 'D'
    DataRow(DataRow),
    /// 'C'
    CommandComplete { tag: CommandTag },
    /// 'I'
    EmptyQueryResponse,
    /// 'E'
    ErrorResponse(ErrorFields),
    /// 'N'
    NoticeResponse(ErrorFields),
    /// '1'
    ParseComplete,
    /// '2'
    BindComplete,
    /// '3'
    CloseComplete,
    /// 'n'
    NoData,
    /// 's': Execute stopped at its row limit.
    PortalSuspended,
    /// 't': the parameter types of a described statement.
    ParameterDescription { types: Vec<u32> },
    /// 'A': a NOTIFY.
    NotificationResponse {
        pid: u32,
        channel: PgStr,
        payload: PgStr,
    },
    /// 'G'
    CopyInResponse(CopyResponse),
    /// 'H'
    CopyOutResponse(CopyResponse),
    /// 'W' (replication).
    CopyBothResponse(CopyResponse),
    /// 'd': COPY TO STDOUT data (one row per message from the server).
    CopyData(Bytes),
    /// 'c'
    CopyDone,
    /// 'V': a fast-path function's result.
    FunctionCallResponse { value: Option<Bytes> },
    /// 'v': the server speaks an older minor version and ignored these `_pq_.` options.
    NegotiateProtocolVersion {
        newest_minor: u32,
        unrecognized: Vec<PgStr>,
    },
    /// A type this decoder does not know, relayed as is.
    Other { tag: u8, body: Bytes },
}

/// Where the server stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendPhase {
    /// Tagged messages. The initial phase.
    Normal,
    /// The next byte answers an SSLRequest.
    SslAnswer,
    /// The next byte answers a GSSENCRequest.
    GssEncAnswer,
}

/// Decodes the server → client stream.
///
/// Transitions: it starts in [`BackendPhase::Normal`]. When the proxy forwards an
/// SSLRequest (resp. GSSENCRequest) upstream, it calls
/// [`BackendDecoder::expect_ssl_answer`] (resp. [`BackendDecoder::expect_gssenc_answer`])
/// before feeding any server byte read after it: the answer is one untagged byte. Once
/// that byte is decoded the decoder is back in `Normal` by itself. After `N`, tagged
/// messages follow in clear; after `S`/`G`, the bytes that follow are TLS/GSS records,
/// and the proxy must terminate that layer (feeding the decoder the plaintext) or stop
/// decoding. A server predating SSL support answers an ErrorResponse instead, which is
/// decoded as such.
#[derive(Debug, Clone)]
pub struct BackendDecoder {
    phase: BackendPhase,
    limits: Limits,
}

impl Default for BackendDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendDecoder {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        BackendDecoder {
            phase: BackendPhase::Normal,
            limits,
        }
    }

    pub fn phase(&self) -> BackendPhase {
        self.phase
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An SSLRequest was forwarded: the next server byte is `S` or `N`.
    pub fn expect_ssl_answer(&mut self) {
        self.phase = BackendPhase::SslAnswer;
    }

    /// A GSSENCRequest was forwarded: the next server byte is `G` or `N`.
    pub fn expect_gssenc_answer(&mut self) {
        self.phase = BackendPhase::GssEncAnswer;
    }

    /// Cuts the next whole message off the front of `buf`; see
    /// [`super::FrontendDecoder::decode`] for the contract.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Decoded<BackendMessage>>, ProtocolError> {
        let (request, expected, accept) = match self.phase {
            BackendPhase::Normal => return decode_tagged(buf, &self.limits),
            BackendPhase::SslAnswer => ("SSLRequest", "'S' or 'N'", b'S'),
            BackendPhase::GssEncAnswer => ("GSSENCRequest", "'G' or 'N'", b'G'),
        };
        let Some(&byte) = buf.first() else {
            return Ok(None);
        };
        if byte == b'E' {
            // An ErrorResponse from a server that does not know the request.
            let out = decode_tagged(buf, &self.limits)?;
            if out.is_some() {
                self.phase = BackendPhase::Normal;
            }
            return Ok(out);
        }
        if byte != accept && byte != b'N' {
            return Err(ProtocolError::UnexpectedAnswer {
                request,
                expected,
                byte,
            });
        }
        let raw = buf.split_to(1).freeze();
        let message = if self.phase == BackendPhase::SslAnswer {
            BackendMessage::SslAnswer(byte)
        } else {
            BackendMessage::GssEncAnswer(byte)
        };
        self.phase = BackendPhase::Normal;
        Ok(Some(Decoded { raw, message }))
    }
}

/// The name and size rule of a backend tag.
pub(crate) fn backend_kind(tag: u8) -> (&'static str, Size) {
    match tag {
        b'R' => ("Authentication", Size::Control),
        b'S' => ("ParameterStatus", Size::Control),
        b'K' => ("BackendKeyData", Size::Range(12, 8 + MAX_CANCEL_KEY as u32)),
        b'Z' => ("ReadyForQuery", Size::Fixed(5)),
        b'T' => ("RowDescription", Size::Large),
        b'D' => ("DataRow", Size::Large),
        b'C' => ("CommandComplete", Size::Control),
        b'I' => ("EmptyQueryResponse", Size::Fixed(4)),
        b'E' => ("ErrorResponse", Size::Large),
        b'N' => ("NoticeResponse", Size::Large),
        b'1' => ("ParseComplete", Size::Fixed(4)),
        b'2' => ("BindComplete", Size::Fixed(4)),
        b'3' => ("CloseComplete", Size::Fixed(4)),
        b'n' => ("NoData", Size::Fixed(4)),
        b's' => ("PortalSuspended", Size::Fixed(4)),
        b't' => ("ParameterDescription", Size::Large),
        b'A' => ("NotificationResponse", Size::Large),
        b'G' => ("CopyInResponse", Size::Control),
        b'H' => ("CopyOutResponse", Size::Control),
        b'W' => ("CopyBothResponse", Size::Control),
        b'd' => ("CopyData", Size::Large),
        b'c' => ("CopyDone", Size::Fixed(4)),
        b'V' => ("FunctionCallResponse", Size::Large),
        b'v' => ("NegotiateProtocolVersion", Size::Control),
        _ => ("unknown backend message", Size::Large),
    }
}

fn decode_tagged(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Decoded<BackendMessage>>, ProtocolError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some(len) = be_u32(buf, 1) else {
        return Ok(None);
    };
    let (name, size) = backend_kind(tag);
    let message = MessageId {
        name,
        tag: Some(tag),
    };
    check_len(message, len, size, limits)?;
    let Some(raw) = take(buf, (len as usize).saturating_add(1)) else {
        return Ok(None);
    };
    let body = raw.slice(5..);
    let msg = decode_body(tag, Reader::new(message, &body), &body)?;
    Ok(Some(Decoded { raw, message: msg }))
}

fn decode_body(tag: u8, mut r: Reader<'_>, body: &Bytes) -> Result<BackendMessage, ProtocolError> {
    let msg = match tag {
        b'R' => BackendMessage::Authentication(decode_auth(&mut r)?),
        b'S' => BackendMessage::ParameterStatus {
            name: r.cstr("parameter name")?,
            value: r.cstr("parameter value")?,
        },
        b'K' => BackendMessage::BackendKeyData {
            pid: r.u32("process ID")?,
            key: r.rest(),
        },
        b'Z' => {
            let status = r.u8("transaction status")?;
            if !matches!(status, b'I' | b'T' | b'E') {
                return Err(r.invalid(
                    "transaction status (expected 'I', 'T' or 'E')",
                    format!("{status:#04x}"),
                ));
            }
            BackendMessage::ReadyForQuery { status }
        }
        b'T' => {
            // A field is at least a NUL (empty name) and 18 bytes of numbers.
            let n = r.count16("field count", 19)?;
            let mut fields = Vec::with_capacity(n);
            for _ in 0..n {
                fields.push(FieldDescription {
                    name: r.cstr("field name")?,
                    table_oid: r.u32("table OID")?,
                    column: r.i16("column attribute number")?,
                    type_oid: r.u32("type OID")?,
                    type_size: r.i16("type size")?,
                    type_modifier: r.i32("type modifier")?,
                    format: r.i16("format code")?,
                });
            }
            BackendMessage::RowDescription { fields }
        }
        b'D' => {
            let columns = r.u16("column count")?;
            for _ in 0..columns {
                r.value("column value")?;
            }
            BackendMessage::DataRow(DataRow {
                body: body.clone(),
                columns,
            })
        }
        b'C' => BackendMessage::CommandComplete {
            tag: CommandTag(r.cstr("command tag")?),
        },
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::ErrorResponse(decode_error_fields(&mut r)?),
        b'N' => BackendMessage::NoticeResponse(decode_error_fields(&mut r)?),
        b'1' => BackendMessage::ParseComplete,
        b'2' => BackendMessage::BindComplete,
        b'3' => BackendMessage::CloseComplete,
        b'n' => BackendMessage::NoData,
        b's' => BackendMessage::PortalSuspended,
        b't' => {
            let n = r.count16("parameter count", 4)?;
            let types = (0..n)
                .map(|_| r.u32("parameter type"))
                .collect::<Result<_, _>>()?;
            BackendMessage::ParameterDescription { types }
        }
        b'A' => BackendMessage::NotificationResponse {
            pid: r.u32("process ID")?,
            channel: r.cstr("channel")?,
            payload: r.cstr("payload")?,
        },
        b'G' => BackendMessage::CopyInResponse(decode_copy_response(&mut r)?),
        b'H' => BackendMessage::CopyOutResponse(decode_copy_response(&mut r)?),
        b'W' => BackendMessage::CopyBothResponse(decode_copy_response(&mut r)?),
        b'd' => BackendMessage::CopyData(r.rest()),
        b'c' => BackendMessage::CopyDone,
        b'V' => BackendMessage::FunctionCallResponse {
            value: r.value("result value")?,
        },
        b'v' => {
            let newest_minor = r.u32("newest minor version")?;
            // Each option name is at least its NUL.
            let n = r.count32("unrecognized option count", 1)?;
            let unrecognized = (0..n)
                .map(|_| r.cstr("option name"))
                .collect::<Result<_, _>>()?;
            BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            }
        }
        _ => BackendMessage::Other {
            tag,
            body: r.rest(),
        },
    };
    r.finish()?;
    Ok(msg)
}

fn decode_auth(r: &mut Reader<'_>) -> Result<AuthRequest, ProtocolError> {
    let code = r.u32("authentication code")?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt = r.bytes(4, "MD5 salt")?;
            AuthRequest::Md5Password {
                salt: [salt[0], salt[1], salt[2], salt[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let mechanism = r.cstr("SASL mechanism")?;
                if mechanism.is_empty() {
                    break;
                }
                mechanisms.push(mechanism);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue { data: r.rest() },
        12 => AuthRequest::SaslFinal { data: r.rest() },
        code => AuthRequest::Other {
            code,
            data: r.rest(),
        },
    })
}

fn decode_error_fields(r: &mut Reader<'_>) -> Result<ErrorFields, ProtocolError> {
    let mut fields = Vec::new();
    loop {
        let kind = r.u8("field type")?;
        if kind == 0 {
            break;
        }
        fields.push((kind, r.cstr("field value")?));
    }
    Ok(ErrorFields { fields })
}

fn decode_copy_response(r: &mut Reader<'_>) -> Result<CopyResponse, ProtocolError> {
    let format = r.u8("overall format")?;
    let n = r.count16("column count", 2)?;
    let column_formats = r.i16s("column format", n)?;
    Ok(CopyResponse {
        format,
        column_formats,
    })
}

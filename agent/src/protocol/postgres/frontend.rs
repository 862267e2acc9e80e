//! Messages from the client, and the decoder that cuts them out of its byte stream.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::error::{MessageId, ProtocolError, Side};
use super::frame::{be_u32, check_len, take, Decoded, Limits, PgStr, Reader, Size};

/// The request code of SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The request code of GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The request code of CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol version 3.0, as sent in a StartupMessage (196608).
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// Longest cancel key: 4 bytes in protocol 3.0, up to 256 bytes from 3.2 on.
pub const MAX_CANCEL_KEY: usize = 256;

/// A protocol version as carried by a StartupMessage: major in the high 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn minor(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// The StartupMessage: protocol version and the session parameters (`user`, `database`,
/// `application_name`, `options`, `client_encoding`, `replication`, `_pq_.*` ...), in
/// the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub version: ProtocolVersion,
    pub params: Vec<(PgStr, PgStr)>,
}

impl StartupMessage {
    /// The value of the first parameter with this name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The database; the server defaults it to the user name when absent.
    pub fn database(&self) -> Option<&str> {
        self.param("database")
    }

    pub fn application_name(&self) -> Option<&str> {
        self.param("application_name")
    }
}

/// The body of a 'p' message, whose meaning depends on the authentication request the
/// server sent last: PasswordMessage (cleartext or MD5), SASLInitialResponse,
/// SASLResponse or GSSResponse. Kept opaque; the accessors interpret it once the caller
/// knows which it is.
///
/// `Debug` prints only the length: this is where passwords travel.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthResponse {
    body: Bytes,
}

impl fmt::Debug for AuthResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthResponse")
            .field("len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: PgStr,
    pub data: Option<Bytes>,
}

impl fmt::Debug for SaslInitialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .field("data_len", &self.data.as_ref().map(Bytes::len))
            .finish()
    }
}

const AUTH_RESPONSE: MessageId = MessageId {
    name: "PasswordMessage/SASLResponse",
    tag: Some(b'p'),
};

impl AuthResponse {
    pub fn new(body: Bytes) -> Self {
        AuthResponse { body }
    }

    /// The whole body, as the server will read it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Reads the body as a PasswordMessage (after AuthenticationCleartextPassword or
    /// AuthenticationMD5Password): the password or `md5...` hash, without its NUL. Not
    /// checked to be UTF-8. Never log it.
    pub fn password(&self) -> Result<Bytes, ProtocolError> {
        let mut r = Reader::new(AUTH_RESPONSE, &self.body);
        let password = r.cstr_bytes("password")?;
        r.finish()?;
        Ok(password)
    }

    /// Reads the body as a SASLInitialResponse (the first 'p' after
    /// AuthenticationSASL). Later SASLResponse messages are the bare [`Self::body`].
    pub fn sasl_initial(&self) -> Result<SaslInitialResponse, ProtocolError> {
        let mut r = Reader::new(AUTH_RESPONSE, &self.body);
        let mechanism = r.cstr("SASL mechanism")?;
        let data = r.value("SASL initial response")?;
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// SSLRequest (untagged): the client asks for TLS; the server answers one byte.
    SslRequest,
    /// GSSENCRequest (untagged): the client asks for GSSAPI encryption; one-byte answer.
    GssEncRequest,
    /// CancelRequest (untagged), alone on its own connection: cancel what the backend
    /// `pid` is running, if `key` matches its BackendKeyData. The key is 4 bytes in
    /// protocol 3.0 (up to 256 from 3.2 on).
    CancelRequest { pid: u32, key: Bytes },
    /// StartupMessage (untagged).
    Startup(StartupMessage),
    /// 'Q': simple query; may hold several statements separated by semicolons.
    Query { sql: PgStr },
    /// 'P': prepare `sql` as statement `name` ("" is the unnamed statement).
    Parse {
        name: PgStr,
        sql: PgStr,
        param_types: Vec<u32>,
    },
    /// 'B': bind parameters to a prepared statement, making a portal.
    Bind {
        portal: PgStr,
        statement: PgStr,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    /// 'D': describe a statement (`kind` b'S') or a portal (b'P').
    Describe { kind: u8, name: PgStr },
    /// 'E': run a portal; `max_rows` 0 (or negative) means all rows.
    Execute { portal: PgStr, max_rows: i32 },
    /// 'C': close a statement (`kind` b'S') or a portal (b'P').
    Close { kind: u8, name: PgStr },
    /// 'S'
    Sync,
    /// 'H'
    Flush,
    /// 'X'
    Terminate,
    /// 'd': COPY FROM STDIN data, in chunks that need not align with rows.
    CopyData(Bytes),
    /// 'c'
    CopyDone,
    /// 'f': the client aborts a COPY FROM STDIN.
    CopyFail { message: PgStr },
    /// 'F': fast-path function call.
    FunctionCall {
        oid: u32,
        arg_formats: Vec<i16>,
        args: Vec<Option<Bytes>>,
        result_format: i16,
    },
    /// 'p': see [`AuthResponse`].
    AuthResponse(AuthResponse),
}

/// Where the client stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendPhase {
    /// Untagged startup-phase packets: SSLRequest, GSSENCRequest, CancelRequest,
    /// StartupMessage. The initial phase.
    Startup,
    /// Tagged messages, after the StartupMessage.
    Normal,
    /// After a CancelRequest: nothing more may come.
    Cancelled,
}

/// Decodes the client → server stream.
///
/// Transitions: it starts in [`FrontendPhase::Startup`]; SSLRequest and GSSENCRequest
/// leave it there (the client sends another startup packet after the answer, inside the
/// TLS/GSS tunnel if the server accepted); a StartupMessage moves it to
/// [`FrontendPhase::Normal`] by itself; a CancelRequest to
/// [`FrontendPhase::Cancelled`]. [`FrontendDecoder::startup_done`] forces `Normal`, for a
/// proxy that performed the startup itself (e.g. it terminated TLS and replayed a
/// rewritten StartupMessage upstream) and hands over a stream already past it.
#[derive(Debug, Clone)]
pub struct FrontendDecoder {
    phase: FrontendPhase,
    limits: Limits,
}

impl Default for FrontendDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontendDecoder {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        FrontendDecoder {
            phase: FrontendPhase::Startup,
            limits,
        }
    }

    pub fn phase(&self) -> FrontendPhase {
        self.phase
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The startup phase is over: what follows is tagged messages.
    pub fn startup_done(&mut self) {
        self.phase = FrontendPhase::Normal;
    }

    /// Cuts the next whole message off the front of `buf`. `Ok(None)` means more bytes
    /// are needed (nothing was consumed; the buffer may have been reserved for the rest
    /// of a message whose length is known). Limits are checked from the header, before
    /// the body is waited for. After an `Err` the stream is unusable.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Decoded<FrontendMessage>>, ProtocolError> {
        match self.phase {
            FrontendPhase::Startup => self.decode_startup(buf),
            FrontendPhase::Normal => decode_tagged(buf, &self.limits),
            FrontendPhase::Cancelled if buf.is_empty() => Ok(None),
            FrontendPhase::Cancelled => Err(ProtocolError::DataAfterCancel { len: buf.len() }),
        }
    }

    fn decode_startup(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Decoded<FrontendMessage>>, ProtocolError> {
        // A TLS record starts 0x16 0x03; a startup packet is at most a few KiB, so its
        // first byte is 0. Say so rather than "length too large".
        if buf.first() == Some(&0x16) && buf.get(1).is_none_or(|&b| b == 0x03) {
            return Err(ProtocolError::DirectTls);
        }
        let Some(len) = be_u32(buf, 0) else {
            return Ok(None);
        };
        let packet = MessageId {
            name: "startup packet",
            tag: None,
        };
        check_len(
            packet,
            len,
            Size::Range(
                8,
                u32::try_from(self.limits.max_startup).unwrap_or(u32::MAX),
            ),
            &self.limits,
        )?;
        let Some(code) = be_u32(buf, 4) else {
            return Ok(None);
        };
        let (message, size) = match code {
            SSL_REQUEST_CODE => (startup_id("SSLRequest"), Size::Fixed(8)),
            GSSENC_REQUEST_CODE => (startup_id("GSSENCRequest"), Size::Fixed(8)),
            CANCEL_REQUEST_CODE => (
                startup_id("CancelRequest"),
                Size::Range(16, 12 + MAX_CANCEL_KEY as u32),
            ),
            _ if code >> 16 == 1234 => {
                return Err(ProtocolError::UnknownRequestCode {
                    code,
                    minor: (code & 0xffff) as u16,
                })
            }
            _ if code >> 16 == 3 => (startup_id("StartupMessage"), Size::Range(9, u32::MAX)),
            _ => {
                let v = ProtocolVersion(code);
                return Err(ProtocolError::UnsupportedProtocolVersion {
                    code,
                    major: v.major(),
                    minor: v.minor(),
                });
            }
        };
        check_len(message, len, size, &self.limits)?;
        let Some(raw) = take(buf, len as usize) else {
            return Ok(None);
        };
        let body = raw.slice(8..);
        let mut r = Reader::new(message, &body);
        let msg = match code {
            SSL_REQUEST_CODE => FrontendMessage::SslRequest,
            GSSENC_REQUEST_CODE => FrontendMessage::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let pid = r.u32("process ID")?;
                let key = r.rest();
                self.phase = FrontendPhase::Cancelled;
                FrontendMessage::CancelRequest { pid, key }
            }
            _ => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr("parameter name")?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr("parameter value")?;
                    params.push((name, value));
                }
                self.phase = FrontendPhase::Normal;
                FrontendMessage::Startup(StartupMessage {
                    version: ProtocolVersion(code),
                    params,
                })
            }
        };
        r.finish()?;
        Ok(Some(Decoded { raw, message: msg }))
    }
}

fn startup_id(name: &'static str) -> MessageId {
    MessageId { name, tag: None }
}

/// The name and size rule of a frontend tag; `None` for a tag the protocol lacks.
pub(crate) fn frontend_kind(tag: u8) -> Option<(&'static str, Size)> {
    Some(match tag {
        b'Q' => ("Query", Size::Large),
        b'P' => ("Parse", Size::Large),
        b'B' => ("Bind", Size::Large),
        b'F' => ("FunctionCall", Size::Large),
        b'd' => ("CopyData", Size::Large),
        b'D' => ("Describe", Size::Control),
        b'E' => ("Execute", Size::Control),
        b'C' => ("Close", Size::Control),
        b'f' => ("CopyFail", Size::Control),
        b'p' => (AUTH_RESPONSE.name, Size::Control),
        b'S' => ("Sync", Size::Fixed(4)),
        b'H' => ("Flush", Size::Fixed(4)),
        b'X' => ("Terminate", Size::Fixed(4)),
        b'c' => ("CopyDone", Size::Fixed(4)),
        _ => return None,
    })
}

fn decode_tagged(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Decoded<FrontendMessage>>, ProtocolError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some((name, size)) = frontend_kind(tag) else {
        return Err(ProtocolError::UnknownTag {
            side: Side::Frontend,
            tag,
        });
    };
    let Some(len) = be_u32(buf, 1) else {
        return Ok(None);
    };
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

fn decode_body(tag: u8, mut r: Reader<'_>, body: &Bytes) -> Result<FrontendMessage, ProtocolError> {
    let msg = match tag {
        b'Q' => FrontendMessage::Query {
            sql: r.cstr("query string")?,
        },
        b'P' => {
            let name = r.cstr("statement name")?;
            let sql = r.cstr("query string")?;
            let n = r.count16("parameter type count", 4)?;
            let param_types = (0..n)
                .map(|_| r.u32("parameter type"))
                .collect::<Result<_, _>>()?;
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            }
        }
        b'B' => {
            let portal = r.cstr("portal name")?;
            let statement = r.cstr("statement name")?;
            let n = r.count16("parameter format count", 2)?;
            let param_formats = r.i16s("parameter format", n)?;
            let n = r.count16("parameter count", 4)?;
            let params = (0..n)
                .map(|_| r.value("parameter value"))
                .collect::<Result<_, _>>()?;
            let n = r.count16("result format count", 2)?;
            let result_formats = r.i16s("result format", n)?;
            FrontendMessage::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            }
        }
        b'D' | b'C' => {
            let kind = r.u8("kind")?;
            if kind != b'S' && kind != b'P' {
                return Err(r.invalid("kind (expected 'S' or 'P')", format!("{kind:#04x}")));
            }
            let name = r.cstr("name")?;
            if tag == b'D' {
                FrontendMessage::Describe { kind, name }
            } else {
                FrontendMessage::Close { kind, name }
            }
        }
        b'E' => FrontendMessage::Execute {
            portal: r.cstr("portal name")?,
            max_rows: r.i32("maximum row count")?,
        },
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'X' => FrontendMessage::Terminate,
        b'c' => FrontendMessage::CopyDone,
        b'd' => FrontendMessage::CopyData(r.rest()),
        b'f' => FrontendMessage::CopyFail {
            message: r.cstr("error message")?,
        },
        b'F' => {
            let oid = r.u32("function OID")?;
            let n = r.count16("argument format count", 2)?;
            let arg_formats = r.i16s("argument format", n)?;
            let n = r.count16("argument count", 4)?;
            let args = (0..n)
                .map(|_| r.value("argument value"))
                .collect::<Result<_, _>>()?;
            let result_format = r.i16("result format")?;
            FrontendMessage::FunctionCall {
                oid,
                arg_formats,
                args,
                result_format,
            }
        }
        b'p' => {
            r.rest();
            FrontendMessage::AuthResponse(AuthResponse::new(body.clone()))
        }
        _ => {
            return Err(ProtocolError::UnknownTag {
                side: Side::Frontend,
                tag,
            })
        }
    };
    r.finish()?;
    Ok(msg)
}

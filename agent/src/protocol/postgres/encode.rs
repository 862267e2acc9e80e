//! Encoders: the few messages the agent synthesizes, and `encode` for every message
//! type, so that a rewritten message is re-framed exactly as a client or server would.
//!
//! Strings are written without any NUL byte they contain (the protocol cannot carry
//! one). Counts the protocol holds in an Int16 and lengths in an Int32 cannot overflow
//! from decoded messages; building a message over those bounds (more than 65 535
//! parameters, a frame over 2 GiB) is a programming error and panics.

use bytes::{BufMut, Bytes, BytesMut};

use super::backend::{AuthRequest, BackendMessage, CopyResponse, DataRow, ErrorFields};
use super::frontend::{
    FrontendMessage, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
};
use crate::mask::RowMasker;

/// A tagged frame: `tag`, the Int32 length (`body.len() + 4`), `body`.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(5 + body.len());
    framed(&mut dst, Some(tag), |dst| dst.put_slice(body));
    dst.freeze()
}

/// An ErrorResponse with fields S (severity, localized), V (severity), C (SQLSTATE) and
/// M (message).
pub fn error_response(severity: &str, sqlstate: &str, message: &str) -> Bytes {
    let fields = [
        (b'S', severity),
        (b'V', severity),
        (b'C', sqlstate),
        (b'M', message),
    ];
    let mut dst = BytesMut::new();
    framed(&mut dst, Some(b'E'), |dst| {
        for (kind, value) in fields {
            dst.put_u8(kind);
            put_cstr(dst, value.as_bytes());
        }
        dst.put_u8(0);
    });
    dst.freeze()
}

/// ReadyForQuery with `status` b'I', b'T' or b'E'.
pub fn ready_for_query(status: u8) -> Bytes {
    frame(b'Z', &[status])
}

/// The single byte `N` that refuses an SSLRequest (or a GSSENCRequest).
pub fn ssl_refused() -> Bytes {
    Bytes::from_static(b"N")
}

/// A DataRow of these values (`None` is NULL).
pub fn data_row(values: &[Option<&[u8]>]) -> Bytes {
    let size = 2 + values
        .iter()
        .map(|v| 4 + v.map_or(0, <[u8]>::len))
        .sum::<usize>();
    let mut dst = BytesMut::with_capacity(5 + size);
    framed(&mut dst, Some(b'D'), |dst| {
        dst.put_u16(count16(values.len()));
        for value in values {
            put_value(dst, *value);
        }
    });
    dst.freeze()
}

/// AuthenticationOk.
pub fn authentication_ok() -> Bytes {
    frame(b'R', &0u32.to_be_bytes())
}

/// CommandComplete with this tag (e.g. `"SELECT 0"`).
pub fn command_complete(tag: &str) -> Bytes {
    let mut dst = BytesMut::new();
    framed(&mut dst, Some(b'C'), |dst| put_cstr(dst, tag.as_bytes()));
    dst.freeze()
}

impl FrontendMessage {
    /// Appends this message, framed, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        use FrontendMessage as F;
        let tag = match self {
            F::SslRequest | F::GssEncRequest | F::CancelRequest { .. } | F::Startup(_) => None,
            F::Query { .. } => Some(b'Q'),
            F::Parse { .. } => Some(b'P'),
            F::Bind { .. } => Some(b'B'),
            F::Describe { .. } => Some(b'D'),
            F::Execute { .. } => Some(b'E'),
            F::Close { .. } => Some(b'C'),
            F::Sync => Some(b'S'),
            F::Flush => Some(b'H'),
            F::Terminate => Some(b'X'),
            F::CopyData(_) => Some(b'd'),
            F::CopyDone => Some(b'c'),
            F::CopyFail { .. } => Some(b'f'),
            F::FunctionCall { .. } => Some(b'F'),
            F::AuthResponse(_) => Some(b'p'),
        };
        framed(dst, tag, |dst| match self {
            F::SslRequest => dst.put_u32(SSL_REQUEST_CODE),
            F::GssEncRequest => dst.put_u32(GSSENC_REQUEST_CODE),
            F::CancelRequest { pid, key } => {
                dst.put_u32(CANCEL_REQUEST_CODE);
                dst.put_u32(*pid);
                dst.put_slice(key);
            }
            F::Startup(startup) => {
                dst.put_u32(startup.version.0);
                for (name, value) in &startup.params {
                    put_cstr(dst, name.as_bytes());
                    put_cstr(dst, value.as_bytes());
                }
                dst.put_u8(0);
            }
            F::Query { sql } => put_cstr(dst, sql.as_bytes()),
            F::Parse {
                name,
                sql,
                param_types,
            } => {
                put_cstr(dst, name.as_bytes());
                put_cstr(dst, sql.as_bytes());
                dst.put_u16(count16(param_types.len()));
                for oid in param_types {
                    dst.put_u32(*oid);
                }
            }
            F::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            } => {
                put_cstr(dst, portal.as_bytes());
                put_cstr(dst, statement.as_bytes());
                put_i16s(dst, param_formats);
                dst.put_u16(count16(params.len()));
                for param in params {
                    put_value(dst, param.as_deref());
                }
                put_i16s(dst, result_formats);
            }
            F::Describe { kind, name } | F::Close { kind, name } => {
                dst.put_u8(*kind);
                put_cstr(dst, name.as_bytes());
            }
            F::Execute { portal, max_rows } => {
                put_cstr(dst, portal.as_bytes());
                dst.put_i32(*max_rows);
            }
            F::Sync | F::Flush | F::Terminate | F::CopyDone => {}
            F::CopyData(data) => dst.put_slice(data),
            F::CopyFail { message } => put_cstr(dst, message.as_bytes()),
            F::FunctionCall {
                oid,
                arg_formats,
                args,
                result_format,
            } => {
                dst.put_u32(*oid);
                put_i16s(dst, arg_formats);
                dst.put_u16(count16(args.len()));
                for arg in args {
                    put_value(dst, arg.as_deref());
                }
                dst.put_i16(*result_format);
            }
            F::AuthResponse(response) => dst.put_slice(response.body()),
        });
    }

    /// This message, framed.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }
}

impl BackendMessage {
    /// Appends this message, framed, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        use BackendMessage as B;
        let tag = match self {
            B::SslAnswer(byte) | B::GssEncAnswer(byte) => {
                dst.put_u8(*byte);
                return;
            }
            B::Authentication(_) => b'R',
            B::ParameterStatus { .. } => b'S',
            B::BackendKeyData { .. } => b'K',
            B::ReadyForQuery { .. } => b'Z',
            B::RowDescription { .. } => b'T',
            B::DataRow(_) => b'D',
            B::CommandComplete { .. } => b'C',
            B::EmptyQueryResponse => b'I',
            B::ErrorResponse(_) => b'E',
            B::NoticeResponse(_) => b'N',
            B::ParseComplete => b'1',
            B::BindComplete => b'2',
            B::CloseComplete => b'3',
            B::NoData => b'n',
            B::PortalSuspended => b's',
            B::ParameterDescription { .. } => b't',
            B::NotificationResponse { .. } => b'A',
            B::CopyInResponse(_) => b'G',
            B::CopyOutResponse(_) => b'H',
            B::CopyBothResponse(_) => b'W',
            B::CopyData(_) => b'd',
            B::CopyDone => b'c',
            B::FunctionCallResponse { .. } => b'V',
            B::NegotiateProtocolVersion { .. } => b'v',
            B::Other { tag, .. } => *tag,
        };
        framed(dst, Some(tag), |dst| match self {
            B::SslAnswer(_) | B::GssEncAnswer(_) => {}
            B::Authentication(auth) => put_auth(dst, auth),
            B::ParameterStatus { name, value } => {
                put_cstr(dst, name.as_bytes());
                put_cstr(dst, value.as_bytes());
            }
            B::BackendKeyData { pid, key } => {
                dst.put_u32(*pid);
                dst.put_slice(key);
            }
            B::ReadyForQuery { status } => dst.put_u8(*status),
            B::RowDescription { fields } => {
                dst.put_u16(count16(fields.len()));
                for f in fields {
                    put_cstr(dst, f.name.as_bytes());
                    dst.put_u32(f.table_oid);
                    dst.put_i16(f.column);
                    dst.put_u32(f.type_oid);
                    dst.put_i16(f.type_size);
                    dst.put_i32(f.type_modifier);
                    dst.put_i16(f.format);
                }
            }
            B::DataRow(row) => dst.put_slice(row.body()),
            B::CommandComplete { tag } => put_cstr(dst, tag.as_str().as_bytes()),
            B::ErrorResponse(fields) | B::NoticeResponse(fields) => put_fields(dst, fields),
            B::EmptyQueryResponse
            | B::ParseComplete
            | B::BindComplete
            | B::CloseComplete
            | B::NoData
            | B::PortalSuspended
            | B::CopyDone => {}
            B::ParameterDescription { types } => {
                dst.put_u16(count16(types.len()));
                for oid in types {
                    dst.put_u32(*oid);
                }
            }
            B::NotificationResponse {
                pid,
                channel,
                payload,
            } => {
                dst.put_u32(*pid);
                put_cstr(dst, channel.as_bytes());
                put_cstr(dst, payload.as_bytes());
            }
            B::CopyInResponse(copy) | B::CopyOutResponse(copy) | B::CopyBothResponse(copy) => {
                put_copy_response(dst, copy)
            }
            B::CopyData(data) => dst.put_slice(data),
            B::FunctionCallResponse { value } => put_value(dst, value.as_deref()),
            B::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => {
                dst.put_u32(*newest_minor);
                dst.put_i32(i32::try_from(unrecognized.len()).expect("option count fits Int32"));
                for option in unrecognized {
                    put_cstr(dst, option.as_bytes());
                }
            }
            B::Other { body, .. } => dst.put_slice(body),
        });
    }

    /// This message, framed.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }
}

fn put_auth(dst: &mut BytesMut, auth: &AuthRequest) {
    match auth {
        AuthRequest::Ok => dst.put_u32(0),
        AuthRequest::CleartextPassword => dst.put_u32(3),
        AuthRequest::Md5Password { salt } => {
            dst.put_u32(5);
            dst.put_slice(salt);
        }
        AuthRequest::Sasl { mechanisms } => {
            dst.put_u32(10);
            for mechanism in mechanisms {
                put_cstr(dst, mechanism.as_bytes());
            }
            dst.put_u8(0);
        }
        AuthRequest::SaslContinue { data } => {
            dst.put_u32(11);
            dst.put_slice(data);
        }
        AuthRequest::SaslFinal { data } => {
            dst.put_u32(12);
            dst.put_slice(data);
        }
        AuthRequest::Other { code, data } => {
            dst.put_u32(*code);
            dst.put_slice(data);
        }
    }
}

fn put_fields(dst: &mut BytesMut, fields: &ErrorFields) {
    for (kind, value) in &fields.fields {
        dst.put_u8(*kind);
        put_cstr(dst, value.as_bytes());
    }
    dst.put_u8(0);
}

fn put_copy_response(dst: &mut BytesMut, copy: &CopyResponse) {
    dst.put_u8(copy.format);
    put_i16s(dst, &copy.column_formats);
}

/// Writes an optional tag, a length word patched in afterwards, and the body `f` writes.
fn framed(dst: &mut BytesMut, tag: Option<u8>, f: impl FnOnce(&mut BytesMut)) {
    if let Some(tag) = tag {
        dst.put_u8(tag);
    }
    let start = dst.len();
    dst.put_u32(0);
    f(dst);
    let len = u32::try_from(dst.len() - start)
        .ok()
        .filter(|&len| len <= i32::MAX as u32)
        .expect("a PostgreSQL message is at most 2 GiB");
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A string and its NUL; NUL bytes inside are dropped.
fn put_cstr(dst: &mut BytesMut, s: &[u8]) {
    if s.contains(&0) {
        dst.extend(s.iter().copied().filter(|&b| b != 0));
    } else {
        dst.put_slice(s);
    }
    dst.put_u8(0);
}

/// An Int32 length and the bytes, or -1 for NULL.
fn put_value(dst: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => dst.put_i32(-1),
        Some(v) => {
            dst.put_i32(i32::try_from(v.len()).expect("a value is at most 2 GiB"));
            dst.put_slice(v);
        }
    }
}

fn put_i16s(dst: &mut BytesMut, values: &[i16]) {
    dst.put_u16(count16(values.len()));
    for v in values {
        dst.put_i16(*v);
    }
}

fn count16(n: usize) -> u16 {
    u16::try_from(n).expect("the protocol counts at most 65535 elements")
}

/// A DataRow through a result set's [`RowMasker`]: `Some(new complete DataRow frame)`
/// (tag 'D', length, body) when any value changed, else `None` (forward the original
/// bytes).
pub fn mask_data_row(masker: &mut RowMasker, row: &DataRow) -> Option<Bytes> {
    let changes = masker.mask_values(row.values())?;
    let mut values: Vec<Option<&[u8]>> = row.values().collect();
    for (i, new) in &changes {
        values[*i] = new.as_deref();
    }
    Some(data_row(&values))
}

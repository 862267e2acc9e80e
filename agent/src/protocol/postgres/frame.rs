//! Framing: cutting a byte stream into messages by tag and length, the limits that bound
//! what a decoder waits for, the cursor that reads a body, and the zero-copy string type.

use std::{fmt, ops::Deref};

use bytes::{Bytes, BytesMut};

use super::error::{MessageId, ProtocolError};

/// Default [`Limits::max_message`]: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;
/// Default [`Limits::max_startup`]: 10 KiB (the server itself refuses startup packets
/// over 10 000 bytes).
pub const DEFAULT_MAX_STARTUP: usize = 10 << 10;
/// Default [`Limits::max_control`]: 256 KiB.
pub const DEFAULT_MAX_CONTROL: usize = 256 << 10;

/// How long a message may be, checked from its header before its body is waited for.
/// A message over its limit is a [`ProtocolError::LengthTooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages that carry data or SQL and may legitimately be large: Query, Parse,
    /// Bind, FunctionCall, CopyData (both ways), DataRow, RowDescription,
    /// ParameterDescription, ErrorResponse, NoticeResponse, NotificationResponse,
    /// FunctionCallResponse, and unknown backend types. Default 64 MiB; a row or a COPY
    /// chunk larger than this is refused.
    pub max_message: usize,
    /// Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
    /// CancelRequest). Default 10 KiB.
    pub max_startup: usize,
    /// Every other message type (Describe, Execute, Close, CopyFail, the 'p'
    /// authentication responses, Authentication requests, ParameterStatus,
    /// CommandComplete, ...). The server accepts at most 10 000 bytes for the small
    /// frontend types and 65 535-byte authentication tokens; libpq refuses non-data
    /// backend messages over 30 000 bytes. Default 256 KiB, capped by `max_message`.
    pub max_control: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: DEFAULT_MAX_MESSAGE,
            max_startup: DEFAULT_MAX_STARTUP,
            max_control: DEFAULT_MAX_CONTROL,
        }
    }
}

/// The size rule of a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// Always exactly this length (length word included).
    Fixed(u32),
    /// Between these lengths, inclusive, independently of the configured limits.
    Range(u32, u32),
    /// Up to [`Limits::max_control`].
    Control,
    /// Up to [`Limits::max_message`].
    Large,
}

/// Checks a declared length (the length word, which counts itself) against a size rule.
pub(crate) fn check_len(
    message: MessageId,
    len: u32,
    size: Size,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    let (min, limit) = match size {
        Size::Fixed(expected) => {
            if len != expected {
                return Err(ProtocolError::UnexpectedLength {
                    message,
                    len,
                    expected,
                });
            }
            return Ok(());
        }
        Size::Range(min, max) => (min, max as usize),
        Size::Control => (4, limits.max_control.min(limits.max_message)),
        Size::Large => (4, limits.max_message),
    };
    if len < min {
        return Err(ProtocolError::LengthTooShort { message, len, min });
    }
    if len as usize > limit {
        return Err(ProtocolError::LengthTooLarge {
            message,
            len,
            limit,
        });
    }
    Ok(())
}

/// Reads a big-endian u32 at `at`; the caller has checked that 4 bytes are there.
pub(crate) fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The most [`take`] reserves ahead for a message still arriving. Reserving the whole
/// declared length would let 5 bytes of header pin `max_message` bytes of memory per
/// connection; beyond this the buffer grows (amortised) as the bytes actually come.
const MAX_RESERVE: usize = 64 << 10;

/// Cuts one whole frame of `total` bytes off the front of `buf`, or asks for more
/// (reserving room for part of the rest). `total` has been checked against the limits.
pub(crate) fn take(buf: &mut BytesMut, total: usize) -> Option<Bytes> {
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(MAX_RESERVE));
        return None;
    }
    Some(buf.split_to(total).freeze())
}

/// A cursor over a message body. Every read checks the remaining length first; nothing
/// is allocated from a count before the count is checked against the body.
pub(crate) struct Reader<'a> {
    message: MessageId,
    body: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(message: MessageId, body: &'a Bytes) -> Self {
        Reader {
            message,
            body,
            pos: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len().saturating_sub(self.pos)
    }

    fn need(&self, needed: usize, field: &'static str) -> Result<(), ProtocolError> {
        if self.remaining() < needed {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.body[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// The next `n` bytes, as a zero-copy slice.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, ProtocolError> {
        self.need(n, field)?;
        let out = self.body.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.body.slice(self.pos.min(self.body.len())..);
        self.pos = self.body.len();
        out
    }

    /// A NUL-terminated string, without its NUL, as raw bytes.
    pub(crate) fn cstr_bytes(&mut self, field: &'static str) -> Result<Bytes, ProtocolError> {
        let rest = self.body.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::MissingNul {
                message: self.message,
                field,
            });
        };
        let out = self.body.slice(self.pos..self.pos + nul);
        self.pos += nul + 1;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string, without its NUL.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<PgStr, ProtocolError> {
        let bytes = self.cstr_bytes(field)?;
        PgStr::from_utf8(bytes).map_err(|offset| ProtocolError::InvalidUtf8 {
            message: self.message,
            field,
            offset,
        })
    }

    /// An Int16 element count, checked so that `count * min_each` bytes remain.
    pub(crate) fn count16(
        &mut self,
        field: &'static str,
        min_each: usize,
    ) -> Result<usize, ProtocolError> {
        let count = usize::from(self.u16(field)?);
        self.need(count.saturating_mul(min_each), field)?;
        Ok(count)
    }

    /// An Int32 element count (never negative), checked so that `count * min_each`
    /// bytes remain.
    pub(crate) fn count32(
        &mut self,
        field: &'static str,
        min_each: usize,
    ) -> Result<usize, ProtocolError> {
        let raw = self.i32(field)?;
        let count = usize::try_from(raw).map_err(|_| self.invalid(field, raw))?;
        self.need(count.saturating_mul(min_each), field)?;
        Ok(count)
    }

    /// `count` Int16 values (format codes).
    pub(crate) fn i16s(
        &mut self,
        field: &'static str,
        count: usize,
    ) -> Result<Vec<i16>, ProtocolError> {
        self.need(count.saturating_mul(2), field)?;
        (0..count).map(|_| self.i16(field)).collect()
    }

    /// An Int32 length followed by that many bytes; -1 is NULL.
    pub(crate) fn value(&mut self, field: &'static str) -> Result<Option<Bytes>, ProtocolError> {
        let len = self.i32(field)?;
        if len == -1 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| self.invalid(field, len))?;
        self.bytes(n, field).map(Some)
    }

    pub(crate) fn invalid(&self, field: &'static str, value: impl fmt::Display) -> ProtocolError {
        ProtocolError::InvalidValue {
            message: self.message,
            field,
            value: value.to_string(),
        }
    }

    /// Fails unless the whole body was read.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(ProtocolError::TrailingBytes {
                message: self.message,
                extra,
            }),
        }
    }
}

/// A string field of a message: a zero-copy slice of the frame, checked to be UTF-8 when
/// decoded. Derefs to `str`. Decoded strings never contain NUL; the encoders drop any
/// NUL byte of a string built from elsewhere (the protocol cannot carry it).
///
/// This module has no `unsafe`, so [`PgStr::as_str`] re-checks the UTF-8 (a linear but
/// vectorised scan); hold on to the `&str` when reading a long string many times.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgStr(Bytes);

impl PgStr {
    /// A string from a literal, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        PgStr(Bytes::from_static(s.as_bytes()))
    }

    /// Checks `bytes` is UTF-8; on failure returns the offset of the first bad byte.
    pub(crate) fn from_utf8(bytes: Bytes) -> Result<Self, usize> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(PgStr(bytes)),
            Err(e) => Err(e.valid_up_to()),
        }
    }

    pub fn as_str(&self) -> &str {
        // Every constructor checked the UTF-8, so the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bytes, without the terminating NUL.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for PgStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for PgStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for PgStr {
    fn from(s: &str) -> Self {
        PgStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for PgStr {
    fn from(s: String) -> Self {
        PgStr(Bytes::from(s))
    }
}

impl PartialEq<str> for PgStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for PgStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A decoded message with the exact bytes it was decoded from (tag and length word
/// included), so that the proxy forwards `raw` untouched and re-encodes only what it
/// changes.
///
/// `Debug` shows the message and the length of `raw`, never the raw bytes (they may hold
/// a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Decoded<M> {
    pub raw: Bytes,
    pub message: M,
}

impl<M: fmt::Debug> fmt::Debug for Decoded<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("message", &self.message)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

//! The one error type of the decoders: what is wrong, in which message.

use std::fmt;

/// Which peer sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client (libpq, JDBC, psycopg, ...).
    Frontend,
    /// The server.
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Frontend => "frontend",
            Side::Backend => "backend",
        })
    }
}

/// Names a message in an error: its protocol name and, for tagged messages, its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// The name the protocol documentation uses, e.g. `"DataRow"`.
    pub name: &'static str,
    /// The type byte; `None` for the untagged startup-phase messages and SSL answers.
    pub tag: Option<u8>,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Some(tag) => write!(f, "{} ({})", self.name, show_tag(&tag)),
            None => f.write_str(self.name),
        }
    }
}

/// A tag byte as `'D'` when printable, `0x00` otherwise.
fn show_tag(tag: &u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", *tag as char)
    } else {
        format!("{tag:#04x}")
    }
}

/// Why a byte stream is not valid PostgreSQL protocol (version 3).
///
/// Every variant is fatal for the connection: the stream cannot be resynchronised after
/// it (the bytes of the offending frame have been consumed when the error concerns its
/// body, not when it concerns its header). The proxy should reset both sides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The length word is smaller than the smallest valid message of this type.
    #[error("{message}: declared length {len} is below the minimum of {min}")]
    LengthTooShort {
        message: MessageId,
        len: u32,
        min: u32,
    },
    /// The length word is larger than the configured (or protocol) limit for this type;
    /// reported from the header alone, before the body is waited for.
    #[error("{message}: declared length {len} exceeds the limit of {limit} bytes")]
    LengthTooLarge {
        message: MessageId,
        len: u32,
        limit: usize,
    },
    /// A message whose length is fixed by the protocol declared another one.
    #[error("{message}: declared length {len}, but this message is always {expected}")]
    UnexpectedLength {
        message: MessageId,
        len: u32,
        expected: u32,
    },
    /// A type byte that the protocol does not define for this side. (Unknown backend
    /// tags are not errors: they decode as `BackendMessage::Other`.)
    #[error("{side} sent an unknown message type {}", show_tag(.tag))]
    UnknownTag { side: Side, tag: u8 },
    /// A startup packet for a protocol major version other than 3.
    #[error("StartupMessage: unsupported protocol version {major}.{minor} (code {code}); only 3.x is spoken")]
    UnsupportedProtocolVersion { code: u32, major: u16, minor: u16 },
    /// A startup-phase request code 1234.x that is none of SSLRequest (1234.5679),
    /// GSSENCRequest (1234.5680) or CancelRequest (1234.5678).
    #[error("startup packet: unknown request code {code} (1234.{minor})")]
    UnknownRequestCode { code: u32, minor: u16 },
    /// A TLS record where a startup packet was expected: a client opening with a TLS
    /// ClientHello (PostgreSQL 17 `sslnegotiation=direct`), or TLS after an accepted
    /// SSLRequest fed to the decoder instead of the plaintext.
    #[error("a TLS handshake where a startup packet was expected (direct SSL negotiation, or TLS after an accepted SSLRequest)")]
    DirectTls,
    /// A string field has no terminating NUL inside the body.
    #[error("{message}: {field} is not NUL-terminated")]
    MissingNul {
        message: MessageId,
        field: &'static str,
    },
    /// A field (or the elements a count announces) overruns the body.
    #[error("{message}: {field} needs {needed} bytes but only {remaining} remain in the body")]
    Truncated {
        message: MessageId,
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// A string field is not UTF-8.
    #[error(
        "{message}: {field} is not valid UTF-8 (invalid byte at offset {offset} of the field)"
    )]
    InvalidUtf8 {
        message: MessageId,
        field: &'static str,
        offset: usize,
    },
    /// A field holds a value the protocol does not allow (a negative length other than
    /// -1, an unknown Describe kind, ...).
    #[error("{message}: {field} has the invalid value {value}")]
    InvalidValue {
        message: MessageId,
        field: &'static str,
        value: String,
    },
    /// The body is longer than its fields.
    #[error("{message}: {extra} unexpected bytes after the last field")]
    TrailingBytes { message: MessageId, extra: usize },
    /// The backend decoder expected the single-byte answer to an SSLRequest or a
    /// GSSENCRequest.
    #[error("expected the one-byte answer to {request} ({expected}), got {}", show_tag(.byte))]
    UnexpectedAnswer {
        request: &'static str,
        expected: &'static str,
        byte: u8,
    },
    /// Bytes after a CancelRequest, which is the only message of its connection.
    #[error(
        "{len} bytes received after a CancelRequest, which is the only message of its connection"
    )]
    DataAfterCancel { len: usize },
}

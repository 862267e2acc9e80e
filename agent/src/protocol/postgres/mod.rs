//! The PostgreSQL wire protocol (version 3.x), sans IO: a decoder for each direction and
//! encoders for what the agent synthesizes.
//!
//! # Model
//!
//! The proxy owns one [`bytes::BytesMut`] per direction. After every read it calls
//! `decode(&mut buf)` until that returns `Ok(None)` ("need more bytes"; nothing was
//! consumed). Each [`Decoded`] message carries `raw`, the exact bytes it was cut from (a
//! zero-copy slice of the buffer), which the proxy forwards as they are unless it
//! decides to change the message; only then does it encode a new frame
//! ([`FrontendMessage::encode`], [`BackendMessage::encode`], the functions of
//! [`encode`]). Framing uses the tag and the length word only; bodies are decoded into
//! zero-copy [`PgStr`]/[`bytes::Bytes`] fields, with [`DataRow`] left lazy (ranges per
//! column) so masking can rewrite some columns of a row without touching the rest.
//! Lengths are checked against [`Limits`] from the 5-byte header, before the body is
//! waited for; any malformed input is a [`ProtocolError`], never a panic, and no count
//! read from the wire sizes an allocation before it is checked against the body.
//!
//! # Driving the decoders
//!
//! * A [`FrontendDecoder`] starts in [`FrontendPhase::Startup`] and leaves it by itself
//!   on the StartupMessage (to `Normal`) or a CancelRequest (to `Cancelled`: the
//!   connection carries nothing else; the proxy answers nothing and closes after
//!   forwarding it to the server the BackendKeyData designates).
//! * When the frontend decoder yields [`FrontendMessage::SslRequest`] (resp.
//!   [`FrontendMessage::GssEncRequest`]) and the proxy forwards it, the proxy calls
//!   [`BackendDecoder::expect_ssl_answer`] (resp. `expect_gssenc_answer`) before feeding
//!   the backend decoder anything the server sends after it. The answer decodes as
//!   [`BackendMessage::SslAnswer`]; the backend decoder is then back in `Normal`.
//!   After `N` both streams go on in clear and the client sends another startup packet
//!   (the frontend decoder is still in `Startup`). After `S`, what follows is TLS: the
//!   proxy must terminate it and feed the decoders the plaintext, or stop decoding.
//!   A proxy that answers the SSLRequest itself (e.g. [`encode::ssl_refused`]) does not
//!   forward it and does not touch the backend decoder.
//! * The client must wait for the answer, so bytes already buffered behind an
//!   SSLRequest/GSSENCRequest when it is decoded (or behind an `S` answer on the server
//!   side) were sent before the answer was known: the injection of CVE-2021-23214 /
//!   CVE-2021-23222. The proxy should check `buf.is_empty()` there and reset otherwise.
//! * [`FrontendDecoder::startup_done`] forces the frontend decoder to `Normal`, for a
//!   proxy that performed the startup itself and hands over a stream already past it.
//! * The meaning of a `'p'` message ([`AuthResponse`]) depends on the last
//!   [`AuthRequest`] the server sent: the proxy, which sees both directions, calls
//!   [`AuthResponse::password`] or [`AuthResponse::sasl_initial`] accordingly.
//!
//! Strings must be UTF-8 (the session's `client_encoding` must be UTF8): a non-UTF-8
//! query text, name or message is a [`ProtocolError::InvalidUtf8`].
#![forbid(unsafe_code)]

pub mod auth;
mod backend;
pub mod encode;
mod error;
mod frame;
mod frontend;

#[cfg(test)]
mod tests;

pub use backend::{
    AuthRequest, BackendDecoder, BackendMessage, BackendPhase, CommandTag, CopyResponse, DataRow,
    DataRowRanges, ErrorFields, FieldDescription,
};
pub use error::{MessageId, ProtocolError, Side};
pub use frame::{
    Decoded, Limits, PgStr, DEFAULT_MAX_CONTROL, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_STARTUP,
};
pub use frontend::{
    AuthResponse, FrontendDecoder, FrontendMessage, FrontendPhase, ProtocolVersion,
    SaslInitialResponse, StartupMessage, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY,
    PROTOCOL_3_0, SSL_REQUEST_CODE,
};

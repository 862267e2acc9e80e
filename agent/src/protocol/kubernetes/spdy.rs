//! SPDY/3.1 framing (the Chromium draft 3.1), sans IO: what the agent needs to journal each
//! frame of a `kubectl exec`, `attach` or `port-forward` connection that upgraded to
//! `SPDY/3.1` (Kubernetes' remotecommand and port-forward transport:
//! k8s.io/apimachinery's `httpstream/spdy`, built on moby/spdystream) *before* relaying it,
//! with bounded memory. It mirrors [`crate::protocol::http::websocket`].
//!
//! [`FrameDecoder`] (one per direction) is fed the bytes its sender sent that are not
//! relayed yet and answers with a [`Step`]: [`Step::Frame`] once a frame's 8-byte head and,
//! for a control frame, its whole body, for a DATA frame the first bytes of its payload (up
//! to the excerpt limit) are buffered: the caller journals the frame, then releases
//! `release` bytes (for DATA the head and the excerpt, `buf[HEAD_LEN..release]` being the
//! excerpt); [`Step::Payload`] for the rest of a DATA frame's payload, a prefix of the
//! buffer that streams through without being buffered, reported with its stream id so that
//! the caller can copy what it records of it; [`Step::NeedMore`] when nothing can be
//! released yet. Every payload byte of a DATA frame is therefore seen exactly once, in the
//! frame's excerpt or in a `Payload` prefix, and none is released before its frame was
//! reported. A DATA frame of any length (up to 2^24 - 1 bytes) costs at most its head plus
//! the excerpt limit; a control frame at most [`MAX_CONTROL_LENGTH`] bytes after its head.
//!
//! **Header blocks.** SYN_STREAM, SYN_REPLY and HEADERS carry name/value blocks compressed
//! with zlib and the SPDY/3 dictionary ([`DICTIONARY`], §2.6.10.1), in *one* zlib stream per
//! direction for the whole connection, sync-flushed after each block. A decoder therefore
//! inflates every block its sender sends, in order, whatever the caller cares about; a
//! block is accepted only if it inflates whole (all its bytes consumed, no stream end) to at
//! most [`MAX_HEADER_BLOCK`] bytes (inflation stops there: a zlib bomb costs no more) and
//! holds at most [`MAX_HEADERS`] pairs (each NUL-separated value counted). A block whose zlib header asks for no dictionary is
//! accepted, as Go's `compress/zlib` (spdystream's reader) accepts it.
//!
//! **Streams.** In remotecommand the *client* opens every stream (SYN_STREAM with a
//! `streamtype` header: `error`, `stdin`, `stdout`, `stderr`, `resize`; port-forward adds
//! `port` and `requestid` to its `error` and `data` streams) and the server answers each with
//! SYN_REPLY, but the server writes the DATA of `stdout`, `stderr` and `error`. So the table
//! of streams is shared: the caller owns one [`StreamTable`] per connection and passes it to
//! both decoders' [`FrameDecoder::next`] (under a lock if the two directions run on
//! different tasks). A stream enters the table when its SYN_STREAM is *reported*, before the
//! frame is relayed, so by the time the peer can name the stream, the table knows it; DATA
//! is labelled with [`StreamTable::stream_type`]. The table keeps at most [`MAX_STREAMS`]
//! streams: a stream closed (reset, or FIN from both sides) is forgotten when room is
//! needed, and a SYN_STREAM beyond that many live streams is refused.
//!
//! **Refused** (the connection is closed on any of them), as early as the bytes show it:
//! the head's fields (version, type, flags, length) as soon as their bytes are there, the
//! stream id of DATA with its fourth byte, a control frame's body once it is whole (it is
//! bounded). The checks are those of the spec's session errors, what spdystream's reader
//! refuses, and what would let bytes pass unaccounted for:
//! - a control frame of a version other than 3;
//! - an unknown control frame type: the spec says to ignore those, but spdystream's reader
//!   fails the connection on them (so no Kubernetes peer sends one), and passing a frame
//!   the agent cannot read would relay bytes it cannot journal. This includes CREDENTIAL
//!   (10), deprecated in 3.1, and SPDY/2's NOOP (5);
//! - flags a frame type does not define (SPDY/2's DATA flag 0x02 compressed the payload);
//! - a control frame longer than [`MAX_CONTROL_LENGTH`] (the spec's floor is 8192), or whose
//!   length does not fit its type (RST_STREAM, GOAWAY and WINDOW_UPDATE are 8 bytes, PING 4,
//!   SETTINGS 4 + 8 per entry with as many entries as announced);
//! - a reserved bit set in front of a 31-bit field (spdystream reads some of them
//!   unmasked: the agent and the peer would disagree on the stream);
//! - stream id 0 on SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS or DATA; a PING id 0 and a
//!   RST_STREAM status 0 (spdystream refuses both); a WINDOW_UPDATE delta of 0 (§2.6.8);
//! - a SYN_STREAM whose id has the other side's parity (client streams are odd) or does not
//!   increase (§2.3.2), or beyond [`MAX_STREAMS`] live streams;
//! - DATA, SYN_REPLY, RST_STREAM, HEADERS or WINDOW_UPDATE naming a stream never opened (an
//!   id above the last its opener opened), and a SYN_REPLY to a stream its sender opened;
//! - a header block that does not inflate (a zlib error, another dictionary, the zlib stream
//!   ended), is too large, has too many pairs, is truncated or has bytes after its last
//!   pair; a name empty, not printable ASCII or not lowercase (spdystream's reader refuses
//!   uppercase names; §2.6.10 wants lowercase US-ASCII), a name twice, a value starting or
//!   ending with NUL or holding two NULs in a row (§2.6.10).
//!
//! **Not refused**: frames after the sender's GOAWAY (the spec only stops *new* streams,
//! which the GOAWAY's recipient ignores, and spdystream can race a CreateStream against its
//! own Close), DATA after its sender's FIN on the stream and a second SYN_REPLY (stream
//! errors the endpoints answer with RST_STREAM; spdystream drops such frames), DATA before
//! the SYN_REPLY, and SETTINGS' contents. Flow control is the endpoints' business.
//!
//! Header values need not be UTF-8: the journal gets them lossily converted, one pair per
//! NUL-separated value, in wire order.
//!
//! **Driving it.** Per upgraded connection: one `StreamTable` (shared by the two pumps, e.g.
//! behind a `Mutex` held only for the `next` call), and per direction a
//! `FrameDecoder::new(sender, excerpt_limit)` (`sender`: who wrote the bytes; the client is
//! the side that sent the HTTP upgrade) and a buffer of what that side sent and was not
//! relayed. Loop on `decoder.next(&buf, &mut table)`: on `Frame { frame, release }` journal
//! the frame (a DATA frame's label is `table.stream_type(stream_id)`), then write
//! `buf[..release]` to the other side and drop it; on `Payload { stream_id, len }` record
//! what is wanted of `buf[..len]`, write it and drop it; on `NeedMore` read more. On an
//! error close both sides. Bytes still in the buffer when the sender closes belong to a
//! frame never reported, so they were never relayed.
use std::collections::{BTreeMap, HashSet};

use flate2::{Decompress, FlushDecompress, Status};
use thiserror::Error;

/// Who sent the bytes a decoder reads (the same type as for WebSocket frames).
pub use crate::protocol::http::websocket::Sender;

/// The SPDY version this module speaks (SPDY/3.1 frames say 3).
pub const VERSION: u16 = 3;
/// Every frame starts with an 8-byte head.
pub const HEAD_LEN: usize = 8;
/// The longest control frame body accepted (bytes after the head; §2.2.1 asks for 8192).
pub const MAX_CONTROL_LENGTH: u32 = 64 * 1024;
/// The most bytes a header block may inflate to.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The most name/value pairs a header block may hold, each NUL-separated value counted
/// as a pair (as [`Headers`] holds them).
pub const MAX_HEADERS: usize = 256;
/// The most streams a [`StreamTable`] keeps.
pub const MAX_STREAMS: usize = 1024;
/// The longest `streamtype`, `port` or `requestid` value a [`StreamTable`] keeps (longer
/// ones are not Kubernetes' and are left out of the table; the frame still has them).
pub const MAX_LABEL: usize = 64;

/// FLAG_FIN of DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL of SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS of SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// The zlib dictionary of SPDY/3 header blocks (§2.6.10.1), byte for byte: 1423 bytes,
/// Adler-32 `0xe3c6a7c2` (the dictionary id in every header stream's zlib header).
#[rustfmt::skip]
pub const DICTIONARY: [u8; 1423] = [
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69,  // - - - - o p t i
    0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,  // o n s - - - - h
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70,  // e a d - - - - p
    0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,  // o s t - - - - p
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65,  // u t - - - - d e
    0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,  // l e t e - - - -
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00,  // t r a c e - - -
    0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,  // - a c c e p t -
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70,  // - - - a c c e p
    0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,  // t - c h a r s e
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63,  // t - - - - a c c
    0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,  // e p t - e n c o
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f,  // d i n g - - - -
    0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,  // a c c e p t - l
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00,  // a n g u a g e -
    0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,  // - - - a c c e p
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73,  // t - r a n g e s
    0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,  // - - - - a g e -
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77,  // - - - a l l o w
    0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,  // - - - - a u t h
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f,  // o r i z a t i o
    0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,  // n - - - - c a c
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72,  // h e - c o n t r
    0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,  // o l - - - - c o
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e,  // n n e c t i o n
    0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,  // - - - - c o n t
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65,  // e n t - b a s e
    0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,  // - - - - c o n t
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,  // e n t - e n c o
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,  // d i n g - - - -
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d,  // c o n t e n t -
    0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,  // l a n g u a g e
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74,  // - - - - c o n t
    0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,  // e n t - l e n g
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f,  // t h - - - - c o
    0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,  // n t e n t - l o
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00,  // c a t i o n - -
    0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,  // - - c o n t e n
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00,  // t - m d 5 - - -
    0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,  // - c o n t e n t
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00,  // - r a n g e - -
    0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,  // - - c o n t e n
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00,  // t - t y p e - -
    0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,  // - - d a t e - -
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00,  // - - e t a g - -
    0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,  // - - e x p e c t
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69,  // - - - - e x p i
    0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,  // r e s - - - - f
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68,  // r o m - - - - h
    0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,  // o s t - - - - i
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00,  // f - m a t c h -
    0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,  // - - - i f - m o
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73,  // d i f i e d - s
    0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,  // i n c e - - - -
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d,  // i f - n o n e -
    0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,  // m a t c h - - -
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67,  // - i f - r a n g
    0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,  // e - - - - i f -
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69,  // u n m o d i f i
    0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,  // e d - s i n c e
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74,  // - - - - l a s t
    0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,  // - m o d i f i e
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63,  // d - - - - l o c
    0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,  // a t i o n - - -
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72,  // - m a x - f o r
    0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,  // w a r d s - - -
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00,  // - p r a g m a -
    0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,  // - - - p r o x y
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74,  // - a u t h e n t
    0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,  // i c a t e - - -
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61,  // - p r o x y - a
    0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,  // u t h o r i z a
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05,  // t i o n - - - -
    0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,  // r a n g e - - -
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72,  // - r e f e r e r
    0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,  // - - - - r e t r
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00,  // y - a f t e r -
    0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,  // - - - s e r v e
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00,  // r - - - - t e -
    0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,  // - - - t r a i l
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72,  // e r - - - - t r
    0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,  // a n s f e r - e
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00,  // n c o d i n g -
    0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,  // - - - u p g r a
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73,  // d e - - - - u s
    0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,  // e r - a g e n t
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79,  // - - - - v a r y
    0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,  // - - - - v i a -
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69,  // - - - w a r n i
    0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,  // n g - - - - w w
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e,  // w - a u t h e n
    0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,  // t i c a t e - -
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64,  // - - m e t h o d
    0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,  // - - - - g e t -
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75,  // - - - s t a t u
    0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,  // s - - - - 2 0 0
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76,  // - O K - - - - v
    0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,  // e r s i o n - -
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31,  // - - H T T P / 1
    0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,  // . 1 - - - - u r
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62,  // l - - - - p u b
    0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,  // l i c - - - - s
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69,  // e t - c o o k i
    0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,  // e - - - - k e e
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00,  // p - a l i v e -
    0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,  // - - - o r i g i
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32,  // n 1 0 0 1 0 1 2
    0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,  // 0 1 2 0 2 2 0 5
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30,  // 2 0 6 3 0 0 3 0
    0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,  // 2 3 0 3 3 0 4 3
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37,  // 0 5 3 0 6 3 0 7
    0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,  // 4 0 2 4 0 5 4 0
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34,  // 6 4 0 7 4 0 8 4
    0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,  // 0 9 4 1 0 4 1 1
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31,  // 4 1 2 4 1 3 4 1
    0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,  // 4 4 1 5 4 1 6 4
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34,  // 1 7 5 0 2 5 0 4
    0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,  // 5 0 5 2 0 3 - N
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f,  // o n - A u t h o
    0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,  // r i t a t i v e
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61,  // - I n f o r m a
    0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,  // t i o n 2 0 4 -
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65,  // N o - C o n t e
    0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,  // n t 3 0 1 - M o
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d,  // v e d - P e r m
    0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,  // a n e n t l y 4
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52,  // 0 0 - B a d - R
    0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,  // e q u e s t 4 0
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68,  // 1 - U n a u t h
    0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,  // o r i z e d 4 0
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64,  // 3 - F o r b i d
    0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,  // d e n 4 0 4 - N
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64,  // o t - F o u n d
    0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,  // 5 0 0 - I n t e
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72,  // r n a l - S e r
    0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,  // v e r - E r r o
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74,  // r 5 0 1 - N o t
    0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,  // - I m p l e m e
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20,  // n t e d 5 0 3 -
    0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,  // S e r v i c e -
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61,  // U n a v a i l a
    0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,  // b l e J a n - F
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41,  // e b - M a r - A
    0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,  // p r - M a y - J
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41,  // u n - J u l - A
    0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,  // u g - S e p t -
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20,  // O c t - N o v -
    0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,  // D e c - 0 0 : 0
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e,  // 0 : 0 0 - M o n
    0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,  // , - T u e , - W
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c,  // e d , - T h u ,
    0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,  // - F r i , - S a
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20,  // t , - S u n , -
    0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,  // G M T c h u n k
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f,  // e d , t e x t /
    0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,  // h t m l , i m a
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69,  // g e / p n g , i
    0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,  // m a g e / j p g
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67,  // , i m a g e / g
    0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,  // i f , a p p l i
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78,  // c a t i o n / x
    0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,  // m l , a p p l i
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78,  // c a t i o n / x
    0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,  // h t m l + x m l
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c,  // , t e x t / p l
    0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,  // a i n , t e x t
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72,  // / j a v a s c r
    0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,  // i p t , p u b l
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74,  // i c p r i v a t
    0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,  // e m a x - a g e
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65,  // = g z i p , d e
    0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,  // f l a t e , s d
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,  // c h c h a r s e
    0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,  // t = u t f - 8 c
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69,  // h a r s e t = i
    0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,  // s o - 8 8 5 9 -
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a,  // 1 , u t f - , *
    0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,        // , e n q = 0 .
];

/// A name/value header block: one pair per value, in wire order (a NUL-separated value is
/// several pairs with the same name).
pub type Headers = Vec<(String, String)>;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (0x1), FLAG_SETTINGS_PERSISTED (0x2).
    pub flags: u8,
    /// 24 bits.
    pub id: u32,
    pub value: u32,
}

/// One frame, as the journal describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        /// 0: the connection's window.
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        /// Payload length.
        len: u32,
        /// The first bytes of the payload, up to the decoder's excerpt limit.
        excerpt: Vec<u8>,
    },
}

impl Frame {
    /// The frame type's name in the spec (`SYN_STREAM`, ..., `DATA`).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::SynStream { .. } => ControlType::SynStream.as_str(),
            Frame::SynReply { .. } => ControlType::SynReply.as_str(),
            Frame::RstStream { .. } => ControlType::RstStream.as_str(),
            Frame::Settings { .. } => ControlType::Settings.as_str(),
            Frame::Ping { .. } => ControlType::Ping.as_str(),
            Frame::GoAway { .. } => ControlType::GoAway.as_str(),
            Frame::Headers { .. } => ControlType::Headers.as_str(),
            Frame::WindowUpdate { .. } => ControlType::WindowUpdate.as_str(),
            Frame::Data { .. } => DATA,
        }
    }

    /// The stream the frame is about, if any (not for a connection's WINDOW_UPDATE).
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. }
            | Frame::Data { stream_id, .. } => Some(*stream_id),
            Frame::WindowUpdate { stream_id, .. } if *stream_id != 0 => Some(*stream_id),
            _ => None,
        }
    }

    /// The header block of SYN_STREAM, SYN_REPLY and HEADERS.
    pub fn headers(&self) -> Option<&[(String, String)]> {
        match self {
            Frame::SynStream { headers, .. }
            | Frame::SynReply { headers, .. }
            | Frame::Headers { headers, .. } => Some(headers),
            _ => None,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_value(self.headers()?, name)
    }
}

fn first_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const DATA: &str = "DATA";

/// The control frame types of SPDY/3.1 (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ControlType {
    SynStream,
    SynReply,
    RstStream,
    Settings,
    Ping,
    GoAway,
    Headers,
    WindowUpdate,
}

impl ControlType {
    fn from_u16(value: u16) -> Option<ControlType> {
        Some(match value {
            1 => ControlType::SynStream,
            2 => ControlType::SynReply,
            3 => ControlType::RstStream,
            4 => ControlType::Settings,
            6 => ControlType::Ping,
            7 => ControlType::GoAway,
            8 => ControlType::Headers,
            9 => ControlType::WindowUpdate,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            ControlType::SynStream => "SYN_STREAM",
            ControlType::SynReply => "SYN_REPLY",
            ControlType::RstStream => "RST_STREAM",
            ControlType::Settings => "SETTINGS",
            ControlType::Ping => "PING",
            ControlType::GoAway => "GOAWAY",
            ControlType::Headers => "HEADERS",
            ControlType::WindowUpdate => "WINDOW_UPDATE",
        }
    }

    /// The flags the type defines.
    fn flags(self) -> u8 {
        match self {
            ControlType::SynStream => FLAG_FIN | FLAG_UNIDIRECTIONAL,
            ControlType::SynReply | ControlType::Headers => FLAG_FIN,
            ControlType::Settings => FLAG_CLEAR_SETTINGS,
            ControlType::RstStream
            | ControlType::Ping
            | ControlType::GoAway
            | ControlType::WindowUpdate => 0,
        }
    }

    /// Whether a body of `len` bytes fits the type's fields.
    fn fits(self, len: u32) -> bool {
        match self {
            ControlType::SynStream => len >= 10,
            ControlType::SynReply | ControlType::Headers => len >= 4,
            ControlType::RstStream | ControlType::GoAway | ControlType::WindowUpdate => len == 8,
            ControlType::Ping => len == 4,
            ControlType::Settings => len >= 4 && (len - 4).is_multiple_of(8),
        }
    }
}

/// Why bytes are not valid SPDY/3.1 (the connection is closed on any of them).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpdyError {
    #[error("a control frame of SPDY version {version} (only 3 is spoken)")]
    UnsupportedVersion { version: u16 },
    #[error("unknown control frame type {frame_type}")]
    UnknownControlType { frame_type: u16 },
    #[error("a {frame} frame with undefined flags {flags:#04x}")]
    UnknownFlags { frame: &'static str, flags: u8 },
    #[error(
        "a {frame} frame of {len} bytes (at most {} are accepted)",
        MAX_CONTROL_LENGTH
    )]
    ControlTooLong { frame: &'static str, len: u32 },
    #[error("a {frame} frame whose length {len} does not fit its fields")]
    BadLength { frame: &'static str, len: u32 },
    #[error("a {frame} frame with a reserved bit set")]
    ReservedBit { frame: &'static str },
    #[error("a {frame} frame on stream 0")]
    StreamIdZero { frame: &'static str },
    #[error("a PING frame with id 0")]
    PingIdZero,
    #[error("a RST_STREAM frame with status 0")]
    RstStatusZero,
    #[error("a WINDOW_UPDATE frame with a delta of 0")]
    WindowDeltaZero,
    #[error("a SETTINGS frame announcing {count} entries but holding {holds}")]
    SettingsCount { count: u32, holds: u32 },
    #[error(
        "the {sender} opened stream {stream_id} (client streams are odd, server streams even)"
    )]
    WrongStreamParity {
        stream_id: u32,
        sender: &'static str,
    },
    #[error("stream {stream_id} opened after stream {last} (stream ids must increase)")]
    StreamIdNotIncreasing { stream_id: u32, last: u32 },
    #[error("more than {} streams open at once", MAX_STREAMS)]
    TooManyStreams,
    #[error("a {frame} frame on stream {stream_id}, which was never opened")]
    UnknownStream { frame: &'static str, stream_id: u32 },
    #[error("a SYN_REPLY to stream {stream_id}, which its own sender opened")]
    ReplyToOwnStream { stream_id: u32 },
    #[error("a header block that does not inflate: {0}")]
    Compression(String),
    #[error("a header block compressed with dictionary {dict_id:#010x}, not SPDY/3's")]
    HeaderDictionary { dict_id: u32 },
    #[error("a header block of more than {} bytes", MAX_HEADER_BLOCK)]
    HeaderBlockTooLarge,
    #[error("a header block of more than {} name/value pairs", MAX_HEADERS)]
    TooManyHeaders,
    #[error("a malformed header block: {why}")]
    BadHeaderBlock { why: &'static str },
    #[error("a header with an empty name")]
    EmptyHeaderName,
    #[error("header name {name:?} is not lowercase printable ASCII")]
    BadHeaderName { name: String },
    #[error("header {name:?} appears twice")]
    DuplicateHeader { name: String },
    #[error("header {name:?} has a value with an empty part between NULs")]
    BadHeaderValue { name: String },
}

/// What the caller does next (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing can be released until more bytes arrive.
    NeedMore,
    /// A frame starts: journal it, then release `release` bytes (for DATA: the head and
    /// the excerpt; for a control frame: all of it).
    Frame { frame: Frame, release: usize },
    /// More payload of the DATA frame last returned (already journaled), on `stream_id`:
    /// the first `len` bytes of the buffer; release them.
    Payload { stream_id: u32, len: usize },
}

/// The side that opens streams with `stream_id`'s parity (§2.3.2: the client's are odd).
fn opener(stream_id: u32) -> Sender {
    if stream_id % 2 == 1 {
        Sender::Client
    } else {
        Sender::Server
    }
}

fn side(sender: Sender) -> usize {
    match sender {
        Sender::Client => 0,
        Sender::Server => 1,
    }
}

/// What a [`StreamTable`] knows of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Who sent its SYN_STREAM.
    pub opened_by: Sender,
    /// Its `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`, `data`).
    pub stream_type: Option<String>,
    /// Its `port` header (port-forward).
    pub port: Option<String>,
    /// Its `requestid` header (port-forward: pairs a connection's `data` and `error`).
    pub request_id: Option<String>,
    /// FLAG_FIN (or FLAG_UNIDIRECTIONAL) seen from the client, from the server.
    done: [bool; 2],
    reset: bool,
}

impl StreamInfo {
    /// Reset, or half-closed by both sides: nothing more is expected on it (a frame
    /// still in flight is accepted).
    pub fn closed(&self) -> bool {
        self.reset || self.done == [true, true]
    }
}

/// The streams of one connection, shared by its two decoders (see the module
/// documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamTable {
    streams: BTreeMap<u32, StreamInfo>,
    /// The last stream id the client, the server opened (0: none yet).
    last: [u32; 2],
}

impl StreamTable {
    pub fn new() -> StreamTable {
        StreamTable::default()
    }

    /// The `streamtype` of `stream_id`, if the table has it.
    pub fn stream_type(&self, stream_id: u32) -> Option<&str> {
        self.get(stream_id)?.stream_type.as_deref()
    }

    /// What the table knows of `stream_id` (nothing once a closed stream made room).
    pub fn get(&self, stream_id: u32) -> Option<&StreamInfo> {
        self.streams.get(&stream_id)
    }

    /// Streams in the table.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Whether `stream_id` was opened: ids only increase, so any id up to the last its
    /// opener used (a skipped id included, which the spec allows).
    pub fn opened(&self, stream_id: u32) -> bool {
        stream_id != 0 && stream_id <= self.last[side(opener(stream_id))]
    }

    /// Checks that `sender` may open `stream_id` now.
    fn check_open(&self, sender: Sender, stream_id: u32) -> Result<(), SpdyError> {
        if opener(stream_id) != sender {
            return Err(SpdyError::WrongStreamParity {
                stream_id,
                sender: sender.as_str(),
            });
        }
        let last = self.last[side(sender)];
        if stream_id <= last {
            return Err(SpdyError::StreamIdNotIncreasing { stream_id, last });
        }
        if self.streams.len() >= MAX_STREAMS && !self.streams.values().any(StreamInfo::closed) {
            return Err(SpdyError::TooManyStreams);
        }
        Ok(())
    }

    /// Records a SYN_STREAM that [`StreamTable::check_open`] accepted.
    fn open(&mut self, sender: Sender, stream_id: u32, flags: u8, headers: &[(String, String)]) {
        if self.streams.len() >= MAX_STREAMS {
            // The oldest closed stream makes room (check_open saw there is one).
            let closed = self
                .streams
                .iter()
                .find(|(_, info)| info.closed())
                .map(|(id, _)| *id);
            if let Some(id) = closed {
                self.streams.remove(&id);
            }
        }
        let label = |name: &str| {
            first_value(headers, name)
                .filter(|v| v.len() <= MAX_LABEL)
                .map(str::to_owned)
        };
        let mut done = [false; 2];
        if flags & FLAG_FIN != 0 {
            done[side(sender)] = true;
        }
        if flags & FLAG_UNIDIRECTIONAL != 0 {
            done[1 - side(sender)] = true;
        }
        self.streams.insert(
            stream_id,
            StreamInfo {
                opened_by: sender,
                stream_type: label("streamtype"),
                port: label("port"),
                request_id: label("requestid"),
                done,
                reset: false,
            },
        );
        self.last[side(sender)] = stream_id;
    }

    fn finish(&mut self, sender: Sender, stream_id: u32) {
        if let Some(info) = self.streams.get_mut(&stream_id) {
            info.done[side(sender)] = true;
        }
    }

    fn reset(&mut self, stream_id: u32) {
        if let Some(info) = self.streams.get_mut(&stream_id) {
            info.reset = true;
        }
    }
}

/// A parsed frame head.
enum Head {
    Data {
        stream_id: u32,
        fin: bool,
        len: u32,
    },
    Control {
        kind: ControlType,
        flags: u8,
        len: u32,
    },
}

/// Follows the frames one side sends (see the module documentation).
#[derive(Debug)]
pub struct FrameDecoder {
    sender: Sender,
    excerpt_limit: usize,
    /// The DATA frame whose payload is streaming: its stream and the bytes not released.
    payload: Option<(u32, u32)>,
    /// The sender's header compression stream.
    inflate: Decompress,
    /// The error that ended the decoder: every later call returns it again.
    failed: Option<SpdyError>,
}

impl FrameDecoder {
    /// A decoder of `sender`'s frames that buffers up to `excerpt_limit` payload bytes of
    /// each DATA frame for its excerpt (0: none; control frames are always whole).
    pub fn new(sender: Sender, excerpt_limit: usize) -> FrameDecoder {
        FrameDecoder {
            sender,
            excerpt_limit,
            payload: None,
            inflate: Decompress::new(true),
            failed: None,
        }
    }

    pub fn sender(&self) -> Sender {
        self.sender
    }

    /// The next step for `buf`, the sender's bytes not released yet (the caller drops the
    /// bytes a step releases from its front before calling again). `streams` is the
    /// connection's table, shared with the other direction's decoder. After an error the
    /// decoder is done: it returns the same error again.
    pub fn next(&mut self, buf: &[u8], streams: &mut StreamTable) -> Result<Step, SpdyError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let step = self.step(buf, streams);
        if let Err(error) = &step {
            self.failed = Some(error.clone());
        }
        step
    }

    fn step(&mut self, buf: &[u8], streams: &mut StreamTable) -> Result<Step, SpdyError> {
        if buf.is_empty() {
            return Ok(Step::NeedMore);
        }
        if let Some((stream_id, remaining)) = self.payload {
            let len = (remaining as usize).min(buf.len());
            let left = remaining - len as u32;
            self.payload = (left > 0).then_some((stream_id, left));
            return Ok(Step::Payload { stream_id, len });
        }
        let Some(head) = self.head(buf, streams)? else {
            return Ok(Step::NeedMore);
        };
        let body = &buf[HEAD_LEN..];
        match head {
            Head::Data {
                stream_id,
                fin,
                len,
            } => {
                let wanted = (len as usize).min(self.excerpt_limit);
                let Some(excerpt) = body.get(..wanted) else {
                    return Ok(Step::NeedMore);
                };
                // The frame is accepted: only now does the state move.
                if fin {
                    streams.finish(self.sender, stream_id);
                }
                let left = len - wanted as u32;
                self.payload = (left > 0).then_some((stream_id, left));
                Ok(Step::Frame {
                    frame: Frame::Data {
                        stream_id,
                        fin,
                        len,
                        excerpt: excerpt.to_vec(),
                    },
                    release: HEAD_LEN + wanted,
                })
            }
            Head::Control { kind, flags, len } => {
                let Some(body) = body.get(..len as usize) else {
                    return Ok(Step::NeedMore);
                };
                let frame = self.control(kind, flags, body, streams)?;
                Ok(Step::Frame {
                    frame,
                    release: HEAD_LEN + len as usize,
                })
            }
        }
    }

    /// Parses and checks a frame head at the start of `buf` (not empty); `None` while
    /// incomplete. Each field is checked as soon as its bytes are there.
    fn head(&self, buf: &[u8], streams: &StreamTable) -> Result<Option<Head>, SpdyError> {
        if buf[0] & 0x80 == 0 {
            let Some(id) = buf.get(..4) else {
                return Ok(None);
            };
            let stream_id = be32(id);
            if stream_id == 0 {
                return Err(SpdyError::StreamIdZero { frame: DATA });
            }
            if !streams.opened(stream_id) {
                return Err(SpdyError::UnknownStream {
                    frame: DATA,
                    stream_id,
                });
            }
            let Some(&flags) = buf.get(4) else {
                return Ok(None);
            };
            if flags & !FLAG_FIN != 0 {
                return Err(SpdyError::UnknownFlags { frame: DATA, flags });
            }
            let Some(len) = buf.get(5..HEAD_LEN) else {
                return Ok(None);
            };
            return Ok(Some(Head::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                len: be24(len),
            }));
        }
        let Some(version) = buf.get(..2) else {
            return Ok(None);
        };
        let version = u16::from_be_bytes([version[0], version[1]]) & 0x7FFF;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion { version });
        }
        let Some(frame_type) = buf.get(2..4) else {
            return Ok(None);
        };
        let frame_type = u16::from_be_bytes([frame_type[0], frame_type[1]]);
        let kind = ControlType::from_u16(frame_type)
            .ok_or(SpdyError::UnknownControlType { frame_type })?;
        let Some(&flags) = buf.get(4) else {
            return Ok(None);
        };
        if flags & !kind.flags() != 0 {
            return Err(SpdyError::UnknownFlags {
                frame: kind.as_str(),
                flags,
            });
        }
        let Some(len) = buf.get(5..HEAD_LEN) else {
            return Ok(None);
        };
        let len = be24(len);
        if len > MAX_CONTROL_LENGTH {
            return Err(SpdyError::ControlTooLong {
                frame: kind.as_str(),
                len,
            });
        }
        if !kind.fits(len) {
            return Err(SpdyError::BadLength {
                frame: kind.as_str(),
                len,
            });
        }
        Ok(Some(Head::Control { kind, flags, len }))
    }

    /// Reads and checks a whole control frame body (its length fits its type).
    fn control(
        &mut self,
        kind: ControlType,
        flags: u8,
        body: &[u8],
        streams: &mut StreamTable,
    ) -> Result<Frame, SpdyError> {
        let frame = kind.as_str();
        let word = |at: usize| {
            body.get(at..at + 4).map(be32).ok_or(SpdyError::BadLength {
                frame,
                len: body.len() as u32,
            })
        };
        let id31 = |at: usize| {
            let value = word(at)?;
            if value & 0x8000_0000 != 0 {
                return Err(SpdyError::ReservedBit { frame });
            }
            Ok(value)
        };
        let stream = |at: usize| {
            let stream_id = id31(at)?;
            if stream_id == 0 {
                return Err(SpdyError::StreamIdZero { frame });
            }
            Ok(stream_id)
        };
        let known = |stream_id: u32| {
            if streams.opened(stream_id) {
                Ok(stream_id)
            } else {
                Err(SpdyError::UnknownStream { frame, stream_id })
            }
        };
        let fin = flags & FLAG_FIN != 0;
        Ok(match kind {
            ControlType::SynStream => {
                let stream_id = stream(0)?;
                let associated_to = id31(4)?;
                let priority = body.get(8).map_or(0, |b| b >> 5);
                streams.check_open(self.sender, stream_id)?;
                let headers = self.header_block(body.get(10..).unwrap_or_default())?;
                streams.open(self.sender, stream_id, flags, &headers);
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            ControlType::SynReply => {
                let stream_id = stream(0)?;
                if opener(stream_id) == self.sender {
                    return Err(SpdyError::ReplyToOwnStream { stream_id });
                }
                known(stream_id)?;
                let headers = self.header_block(body.get(4..).unwrap_or_default())?;
                if fin {
                    streams.finish(self.sender, stream_id);
                }
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            }
            ControlType::Headers => {
                let stream_id = known(stream(0)?)?;
                let headers = self.header_block(body.get(4..).unwrap_or_default())?;
                if fin {
                    streams.finish(self.sender, stream_id);
                }
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }
            ControlType::RstStream => {
                let stream_id = known(stream(0)?)?;
                let status = word(4)?;
                if status == 0 {
                    return Err(SpdyError::RstStatusZero);
                }
                streams.reset(stream_id);
                Frame::RstStream { stream_id, status }
            }
            ControlType::Settings => {
                let count = word(0)?;
                let holds = (body.len() as u32 - 4) / 8;
                if count != holds {
                    return Err(SpdyError::SettingsCount { count, holds });
                }
                let entries = body
                    .get(4..)
                    .unwrap_or_default()
                    .chunks_exact(8)
                    .map(|entry| Setting {
                        flags: entry[0],
                        id: be24(&entry[1..4]),
                        value: be32(&entry[4..8]),
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            ControlType::Ping => {
                let id = word(0)?;
                if id == 0 {
                    return Err(SpdyError::PingIdZero);
                }
                Frame::Ping { id }
            }
            ControlType::GoAway => Frame::GoAway {
                last_good_stream_id: id31(0)?,
                status: word(4)?,
            },
            ControlType::WindowUpdate => {
                let stream_id = id31(0)?;
                if stream_id != 0 {
                    known(stream_id)?;
                }
                let delta = id31(4)?;
                if delta == 0 {
                    return Err(SpdyError::WindowDeltaZero);
                }
                Frame::WindowUpdate { stream_id, delta }
            }
        })
    }

    /// Inflates and parses one header block (the whole compressed part of a frame).
    fn header_block(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate_block(block)?;
        parse_block(&raw)
    }

    /// Inflates `block` in the sender's zlib stream: all of it, to at most
    /// [`MAX_HEADER_BLOCK`] bytes (no more is ever held).
    fn inflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        const CHUNK: usize = 4096;
        let mut chunk = [0u8; CHUNK];
        let mut out = Vec::new();
        let mut input = block;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self
                .inflate
                .decompress(input, &mut chunk, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            input = input.get(consumed..).unwrap_or_default();
            let Some(produced) = chunk.get(..produced) else {
                return Err(SpdyError::Compression("inflate overran its buffer".into()));
            };
            let needed = out.len() + produced.len();
            if needed > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlockTooLarge);
            }
            if needed > out.capacity() {
                out.reserve_exact(needed.next_power_of_two().min(MAX_HEADER_BLOCK) - out.len());
            }
            out.extend_from_slice(produced);
            match result {
                Err(error) => match error.needs_dictionary() {
                    Some(dict_id) => {
                        self.inflate
                            .set_dictionary(&DICTIONARY)
                            .map_err(|_| SpdyError::HeaderDictionary { dict_id })?;
                    }
                    None => return Err(SpdyError::Compression(error.to_string())),
                },
                Ok(Status::StreamEnd) => {
                    // spdystream never ends its stream: a later block could not inflate.
                    return Err(SpdyError::Compression("the zlib stream ended".into()));
                }
                Ok(Status::Ok | Status::BufError) => {
                    if produced.len() == CHUNK {
                        continue; // more output may be pending
                    }
                    if input.is_empty() {
                        return Ok(out);
                    }
                    if consumed == 0 && produced.is_empty() {
                        return Err(SpdyError::Compression("inflate made no progress".into()));
                    }
                }
            }
        }
    }
}

fn be32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .take(4)
        .fold(0, |acc, b| (acc << 8) | u32::from(*b))
}

fn be24(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .take(3)
        .fold(0, |acc, b| (acc << 8) | u32::from(*b))
}

/// Parses an inflated name/value block (§2.6.10).
fn parse_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut block = Reader(raw);
    let count = block.word()?;
    if count as usize > MAX_HEADERS {
        return Err(SpdyError::TooManyHeaders);
    }
    let mut headers = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..count {
        let name = block.string()?;
        if name.is_empty() {
            return Err(SpdyError::EmptyHeaderName);
        }
        if !name
            .iter()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
        {
            return Err(SpdyError::BadHeaderName { name: shown(name) });
        }
        let name = String::from_utf8_lossy(name).into_owned(); // printable ASCII: exact
        if !names.insert(name.clone()) {
            return Err(SpdyError::DuplicateHeader { name });
        }
        let value = block.string()?;
        if !value.is_empty() && value.split(|b| *b == 0).any(<[u8]>::is_empty) {
            return Err(SpdyError::BadHeaderValue { name });
        }
        for part in value.split(|b| *b == 0) {
            if headers.len() == MAX_HEADERS {
                return Err(SpdyError::TooManyHeaders);
            }
            headers.push((name.clone(), String::from_utf8_lossy(part).into_owned()));
        }
    }
    if !block.0.is_empty() {
        return Err(SpdyError::BadHeaderBlock {
            why: "bytes after the last pair",
        });
    }
    Ok(headers)
}

/// The unread rest of an inflated header block.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], SpdyError> {
        if self.0.len() < len {
            return Err(SpdyError::BadHeaderBlock { why: "truncated" });
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Ok(head)
    }

    fn word(&mut self) -> Result<u32, SpdyError> {
        self.take(4).map(be32)
    }

    /// A 32-bit length and that many bytes (no allocation: a slice of the block).
    fn string(&mut self) -> Result<&'a [u8], SpdyError> {
        let len = self.word()? as usize;
        self.take(len)
    }
}

/// A bounded, lossy rendering of bytes for an error message.
fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// `echo 'hi there' | kubectl exec -i foo -- cat`: what kubectl v1.32.4 sent after the
    /// `101` (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`, so SPDY; Go's spdystream and
    /// compress/zlib), captured against a loopback stand-in for the API server.
    const EXEC_CLIENT: &str = concat!(
        "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a",
        "0a0a6800000000ffff800300010000001700000003000000000000c22e555c92929907000000ffff",
        "800300010000001900000005000000000000c22ac5565c92925f5a02000000ffff80030001000000",
        "1500000007000000000000c229975a5404000000ffff000000030000000968692074686572650a00",
        "00000301000000800300060000000400000001800300030000000800000005000000058003000300",
        "00000800000007000000058003000300000008000000010000000580030007000000080000000000",
        "000000",
    );

    /// The stand-in's side of that exchange (a Python script: zlib with the dictionary).
    const EXEC_SERVER: &str = concat!(
        "80030002000000140000000178f9e3c6a7c202a6230600000000ffff800300020000000c00000003",
        "020100000000ffff800300020000000c00000005020100000000ffff800300020000000c00000007",
        "020100000000ffff000000050000001268656c6c6f2066726f6d207374646f75740a000000070000",
        "000f6f6f7073206f6e207374646572720a0000000501000000000000070100000000000001010000",
        "257b226d65746164617461223a207b7d2c2022737461747573223a202253756363657373227d8003",
        "00060000000400000001",
    );

    /// `kubectl port-forward pod/foo 18080:80` (v1.32.4, `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`)
    /// carrying one local connection that sent `ping\n` and closed.
    const PORT_FORWARD_CLIENT: &str = concat!(
        "800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0",
        "808614cb45a024cc6461c0c0c0c0590489c44c50e2663400000000ffff0000000101000000800300",
        "010000001800000003000000000000c2aa15540a2512d209000000ffff000000030000000570696e",
        "670a000000030100000080030007000000080000000000000000",
    );

    /// The stand-in's side: replies, the echo, and FIN on both streams.
    const PORT_FORWARD_SERVER: &str = concat!(
        "80030002000000140000000178f9e3c6a7c202a6230600000000ffff800300020000000c00000003",
        "020100000000ffff000000030000000a6563686f3a70696e670a0000000301000000000000010100",
        "0000",
    );

    /// A SYN_STREAM from node-spdy's test suite (`GET /`): another implementation's zlib.
    const NODE_SPDY_SYN_STREAM: &str = concat!(
        "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006",
        "b32a4804974d8cfa00000000ffff",
    );

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn adler32(bytes: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for byte in bytes {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    /// A name/value block before compression (values may hold NULs).
    fn raw_block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            out.extend((name.len() as u32).to_be_bytes());
            out.extend(name.as_bytes());
            out.extend((value.len() as u32).to_be_bytes());
            out.extend(value.as_bytes());
        }
        out
    }

    /// One side's header compression, as spdystream's Framer does it: zlib with the
    /// dictionary, one stream for the connection, a sync flush after each block.
    struct Encoder {
        deflate: Compress,
    }

    impl Encoder {
        fn new() -> Encoder {
            Encoder::with_dictionary(Some(&DICTIONARY))
        }

        fn with_dictionary(dictionary: Option<&[u8]>) -> Encoder {
            let mut deflate = Compress::new(Compression::best(), true);
            if let Some(dictionary) = dictionary {
                deflate.set_dictionary(dictionary).expect("dictionary");
            }
            Encoder { deflate }
        }

        fn compress(&mut self, raw: &[u8], flush: FlushCompress) -> Vec<u8> {
            let mut out = Vec::new();
            let mut input = raw;
            loop {
                out.reserve(input.len() + 1024);
                let before = self.deflate.total_in();
                self.deflate
                    .compress_vec(input, &mut out, flush)
                    .expect("compress");
                input = &input[(self.deflate.total_in() - before) as usize..];
                if input.is_empty() && out.len() < out.capacity() {
                    return out;
                }
            }
        }

        fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            self.compress(&raw_block(headers), FlushCompress::Sync)
        }

        fn syn_stream(&mut self, stream_id: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
            let block = self.block(headers);
            syn_stream_with(stream_id, flags, &block)
        }

        fn syn_reply(&mut self, stream_id: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut body = stream_id.to_be_bytes().to_vec();
            body.extend(self.block(headers));
            control(2, flags, &body)
        }

        fn headers(&mut self, stream_id: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut body = stream_id.to_be_bytes().to_vec();
            body.extend(self.block(headers));
            control(8, flags, &body)
        }
    }

    /// A SYN_STREAM with priority 2 and a given (compressed) block.
    fn syn_stream_with(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend(0u32.to_be_bytes());
        body.extend([2 << 5, 0]);
        body.extend(block);
        control(1, flags, &body)
    }

    fn control(frame_type: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80, 0x03];
        out.extend(frame_type.to_be_bytes());
        out.push(flags);
        out.extend(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend(body);
        out
    }

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn data(stream_id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = stream_id.to_be_bytes().to_vec();
        out.push(flags);
        out.extend(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend(payload);
        out
    }

    fn rst(stream_id: u32, status: u32) -> Vec<u8> {
        control(3, 0, &words(&[stream_id, status]))
    }

    fn ping(id: u32) -> Vec<u8> {
        control(6, 0, &words(&[id]))
    }

    fn goaway(last: u32, status: u32) -> Vec<u8> {
        control(7, 0, &words(&[last, status]))
    }

    fn window_update(stream_id: u32, delta: u32) -> Vec<u8> {
        control(9, 0, &words(&[stream_id, delta]))
    }

    /// What a relay saw of one direction.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        frames: Vec<Frame>,
        /// The bytes released, in order (must be the input: nothing added or lost).
        released: Vec<u8>,
        /// Every DATA payload byte per stream, from excerpts and `Payload` prefixes.
        payloads: BTreeMap<u32, Vec<u8>>,
    }

    /// One direction of a relay: buffers what arrives, steps until `NeedMore`, drops
    /// what was released.
    struct Relay {
        decoder: FrameDecoder,
        buf: Vec<u8>,
        seen: Seen,
    }

    impl Relay {
        fn new(sender: Sender, limit: usize) -> Relay {
            Relay {
                decoder: FrameDecoder::new(sender, limit),
                buf: Vec::new(),
                seen: Seen::default(),
            }
        }

        fn push(&mut self, piece: &[u8], table: &mut StreamTable) -> Result<(), SpdyError> {
            self.buf.extend_from_slice(piece);
            loop {
                let n = match self.decoder.next(&self.buf, table)? {
                    Step::NeedMore => return Ok(()),
                    Step::Frame { frame, release } => {
                        if let Frame::Data {
                            stream_id, excerpt, ..
                        } = &frame
                        {
                            assert_eq!(&self.buf[HEAD_LEN..release], excerpt.as_slice());
                            let payload = self.seen.payloads.entry(*stream_id).or_default();
                            payload.extend(excerpt);
                        }
                        self.seen.frames.push(frame);
                        release
                    }
                    Step::Payload { stream_id, len } => {
                        let payload = self.seen.payloads.entry(stream_id).or_default();
                        payload.extend(&self.buf[..len]);
                        len
                    }
                };
                assert!(n > 0 && n <= self.buf.len());
                self.seen.released.extend(self.buf.drain(..n));
            }
        }

        /// Pushes a whole input, which must leave nothing behind.
        fn feed(&mut self, input: &[u8], table: &mut StreamTable) -> Result<(), SpdyError> {
            self.push(input, table)?;
            assert!(self.buf.is_empty(), "left over: {:x?}", self.buf);
            Ok(())
        }
    }

    /// Runs a fresh decoder of `sender` over `input` delivered in `pieces`.
    fn run(
        sender: Sender,
        limit: usize,
        table: &mut StreamTable,
        pieces: &[&[u8]],
    ) -> Result<Seen, SpdyError> {
        let mut relay = Relay::new(sender, limit);
        for piece in pieces {
            relay.push(piece, table)?;
        }
        Ok(relay.seen)
    }

    /// The same frames, bytes and table whole, split at every position and byte by byte
    /// (starting from `table`); returns what was seen and the table after.
    fn check_every_split(
        sender: Sender,
        limit: usize,
        table: &StreamTable,
        input: &[u8],
    ) -> (Seen, StreamTable) {
        let mut after = table.clone();
        let seen = run(sender, limit, &mut after, &[input]).expect("valid");
        assert_eq!(seen.released, input);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let mut t = table.clone();
            let s = run(sender, limit, &mut t, &[a, b]).expect("valid");
            assert_eq!((&s, &t), (&seen, &after), "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let mut t = table.clone();
        let s = run(sender, limit, &mut t, &bytes).expect("valid");
        assert_eq!((&s, &t), (&seen, &after), "byte by byte");
        (seen, after)
    }

    /// Frames as (kind, stream or id, fin) for compact comparisons.
    fn shape(frames: &[Frame]) -> Vec<(&'static str, u32, bool)> {
        frames
            .iter()
            .map(|f| match f {
                Frame::SynStream { stream_id, fin, .. }
                | Frame::SynReply { stream_id, fin, .. }
                | Frame::Headers { stream_id, fin, .. }
                | Frame::Data { stream_id, fin, .. } => (f.kind(), *stream_id, *fin),
                Frame::RstStream { stream_id, .. } | Frame::WindowUpdate { stream_id, .. } => {
                    (f.kind(), *stream_id, false)
                }
                Frame::Ping { id } => (f.kind(), *id, false),
                Frame::GoAway {
                    last_good_stream_id,
                    ..
                } => (f.kind(), *last_good_stream_id, false),
                Frame::Settings { entries, .. } => (f.kind(), entries.len() as u32, false),
            })
            .collect()
    }

    fn pairs(headers: &[(&str, &str)]) -> Headers {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The dictionary id every SPDY/3 header stream's zlib header carries.
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head\0\0\0\x04post"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        let block = Encoder::new().block(&[("a", "b")]);
        assert_eq!(block[0], 0x78);
        assert_eq!(block[1] & 0x20, 0x20, "FDICT");
        assert_eq!(block[2..6], [0xe3, 0xc6, 0xa7, 0xc2]);
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]), "sync flush");
    }

    #[test]
    fn a_syn_stream_made_by_another_implementation_is_read() {
        let input = hex(NODE_SPDY_SYN_STREAM);
        let (seen, table) = check_every_split(Sender::Client, 0, &StreamTable::new(), &input);
        assert_eq!(
            seen.frames,
            [Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: pairs(&[(":method", "GET"), (":path", "/")]),
            }]
        );
        assert!(table.opened(1));
        assert_eq!(table.stream_type(1), None);
    }

    #[test]
    fn a_real_kubectl_exec_is_followed_both_ways() {
        let client = hex(EXEC_CLIENT);
        let server = hex(EXEC_SERVER);
        let (c, table) = check_every_split(Sender::Client, 1024, &StreamTable::new(), &client);
        assert_eq!(
            shape(&c.frames),
            [
                ("SYN_STREAM", 1, false),
                ("SYN_STREAM", 3, false),
                ("SYN_STREAM", 5, false),
                ("SYN_STREAM", 7, false),
                ("DATA", 3, false),
                ("DATA", 3, true),
                ("PING", 1, false),
                ("RST_STREAM", 5, false),
                ("RST_STREAM", 7, false),
                ("RST_STREAM", 1, false),
                ("GOAWAY", 0, false),
            ]
        );
        let types: Vec<_> = c.frames[..4]
            .iter()
            .map(|f| f.header("streamtype").unwrap())
            .collect();
        assert_eq!(types, ["error", "stdin", "stdout", "stderr"]);
        assert_eq!(c.frames[0].headers().unwrap().len(), 1);
        assert_eq!(c.payloads[&3], b"hi there\n");
        assert_eq!(
            c.frames[7],
            Frame::RstStream {
                stream_id: 5,
                status: 5 // CANCEL
            }
        );
        // The server writes on the streams the client opened: the shared table labels them.
        let (s, after) = check_every_split(Sender::Server, 1024, &table, &server);
        assert_eq!(
            shape(&s.frames),
            [
                ("SYN_REPLY", 1, false),
                ("SYN_REPLY", 3, false),
                ("SYN_REPLY", 5, false),
                ("SYN_REPLY", 7, false),
                ("DATA", 5, false),
                ("DATA", 7, false),
                ("DATA", 5, true),
                ("DATA", 7, true),
                ("DATA", 1, true),
                ("PING", 1, false),
            ]
        );
        let labelled: Vec<_> = s
            .payloads
            .iter()
            .map(|(id, bytes)| (after.stream_type(*id).unwrap(), bytes.as_slice()))
            .collect();
        assert_eq!(
            labelled,
            [
                ("error", &br#"{"metadata": {}, "status": "Success"}"#[..]),
                ("stdout", &b"hello from stdout\n"[..]),
                ("stderr", &b"oops on stderr\n"[..]),
            ]
        );
        // 1, 5 and 7 were reset; stdin (3) was closed by the client only.
        assert!([1, 5, 7].iter().all(|id| after.get(*id).unwrap().closed()));
        assert!(!after.get(3).unwrap().closed());
        // With a 4-byte excerpt, the payloads stream through and come out the same.
        let (short, _) = check_every_split(Sender::Server, 4, &table, &server);
        assert_eq!(short.payloads, s.payloads);
        let Frame::Data { excerpt, len, .. } = &short.frames[4] else {
            panic!("{:?}", short.frames[4]);
        };
        assert_eq!((excerpt.as_slice(), *len), (&b"hell"[..], 18));
    }

    #[test]
    fn a_real_kubectl_port_forward_is_labelled_with_port_and_request() {
        let client = hex(PORT_FORWARD_CLIENT);
        let server = hex(PORT_FORWARD_SERVER);
        let (c, table) = check_every_split(Sender::Client, 1024, &StreamTable::new(), &client);
        assert_eq!(
            shape(&c.frames),
            [
                ("SYN_STREAM", 1, false),
                ("DATA", 1, true),
                ("SYN_STREAM", 3, false),
                ("DATA", 3, false),
                ("DATA", 3, true),
                ("GOAWAY", 0, false),
            ]
        );
        for (id, stream_type) in [(1, "error"), (3, "data")] {
            let info = table.get(id).unwrap();
            assert_eq!(info.opened_by, Sender::Client);
            assert_eq!(info.stream_type.as_deref(), Some(stream_type));
            assert_eq!(info.port.as_deref(), Some("80"));
            assert_eq!(info.request_id.as_deref(), Some("0"));
        }
        let (s, after) = check_every_split(Sender::Server, 1024, &table, &server);
        assert_eq!(
            shape(&s.frames),
            [
                ("SYN_REPLY", 1, false),
                ("SYN_REPLY", 3, false),
                ("DATA", 3, false),
                ("DATA", 3, true),
                ("DATA", 1, true),
            ]
        );
        assert_eq!(s.payloads[&3], b"echo:ping\n");
        assert_eq!(after.stream_type(3), Some("data"));
        assert!(after.get(1).unwrap().closed() && after.get(3).unwrap().closed());
    }

    /// A tty exec as spdystream would carry it, with every frame type, both ways.
    #[test]
    fn an_exec_with_every_frame_type_splits_anywhere() {
        let mut client = Encoder::new();
        let mut server = Encoder::new();
        let mut c = Vec::new();
        for (id, stream_type) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
            c.extend(client.syn_stream(id, 0, &[("streamtype", stream_type)]));
        }
        c.extend(data(7, 0, br#"{"Width":80,"Height":24}"#));
        c.extend(data(3, 0, b"ls -l\r"));
        c.extend(ping(1));
        c.extend(window_update(0, 65_536));
        c.extend(window_update(5, 1));
        c.extend(client.headers(3, FLAG_FIN, &[("x-trailer", "a\0b")]));
        c.extend(goaway(0, 0));
        let mut s = Vec::new();
        s.extend(control(
            4,
            FLAG_CLEAR_SETTINGS,
            &words(&[2, 0x0100_0004, 100, 7, 65_536]),
        ));
        for id in [1, 3, 5, 7] {
            s.extend(server.syn_reply(id, 0, &[]));
        }
        s.extend(data(5, 0, b"total 0\r\n"));
        s.extend(ping(1));
        s.extend(data(5, FLAG_FIN, b""));
        s.extend(rst(7, 5));
        s.extend(data(1, FLAG_FIN, br#"{"status":"Success"}"#));
        let (seen_c, table) = check_every_split(Sender::Client, 16, &StreamTable::new(), &c);
        let (seen_s, table) = check_every_split(Sender::Server, 16, &table, &s);
        assert_eq!(
            shape(&seen_c.frames)[4..],
            [
                ("DATA", 7, false),
                ("DATA", 3, false),
                ("PING", 1, false),
                ("WINDOW_UPDATE", 0, false),
                ("WINDOW_UPDATE", 5, false),
                ("HEADERS", 3, true),
                ("GOAWAY", 0, false),
            ]
        );
        assert_eq!(
            seen_c.frames[1],
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 2,
                fin: false,
                unidirectional: false,
                headers: pairs(&[("streamtype", "stdin")]),
            }
        );
        assert_eq!(
            seen_c.frames[9].headers().unwrap(),
            pairs(&[("x-trailer", "a"), ("x-trailer", "b")])
        );
        assert_eq!(seen_c.payloads[&7], br#"{"Width":80,"Height":24}"#);
        assert_eq!(
            seen_s.frames[0],
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: 4,
                        value: 100
                    },
                    Setting {
                        flags: 0,
                        id: 7,
                        value: 65_536
                    },
                ],
            }
        );
        assert_eq!(seen_s.frames[1].headers(), Some(&[][..]));
        assert_eq!(table.stream_type(5), Some("stdout"));
        assert_eq!(seen_s.payloads[&5], b"total 0\r\n");
        assert!(table.get(7).unwrap().closed(), "reset");
        assert!(
            !table.get(3).unwrap().closed(),
            "half-closed by the client only"
        );
        assert_eq!(seen_s.frames[5].stream_id(), Some(5));
        assert_eq!(seen_c.frames[7].stream_id(), None);
    }

    #[test]
    fn long_data_frames_stream_with_a_bounded_excerpt() {
        let open = Encoder::new().syn_stream(1, 0, &[("streamtype", "stdin")]);
        let mut table = StreamTable::new();
        run(Sender::Client, 0, &mut table, &[&open]).unwrap();
        for len in [65usize, 300, 65_536, 200_000, 0xFF_FFFF] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let input = data(1, FLAG_FIN, &payload);
            let seen = run(Sender::Client, 64, &mut table.clone(), &[&input]).unwrap();
            assert_eq!(seen.released, input);
            assert_eq!(seen.payloads[&1], payload);
            let Frame::Data {
                len: n, excerpt, ..
            } = &seen.frames[0]
            else {
                panic!("{:?}", seen.frames);
            };
            assert_eq!((*n as usize, excerpt.as_slice()), (len, &payload[..64]));
            // Nothing waits for the payload beyond the excerpt, and only the head and the
            // excerpt go with the frame: the rest streams as it comes.
            let mut decoder = FrameDecoder::new(Sender::Client, 64);
            let t = &mut table.clone();
            assert_eq!(decoder.next(&input[..8 + 63], t).unwrap(), Step::NeedMore);
            match decoder.next(&input[..8 + 65], t).unwrap() {
                Step::Frame { release, .. } => assert_eq!(release, 8 + 64),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                decoder.next(&input[8 + 64..][..1], t).unwrap(),
                Step::Payload {
                    stream_id: 1,
                    len: 1
                }
            );
            let rest = &input[8 + 65..];
            if !rest.is_empty() {
                assert_eq!(
                    decoder.next(rest, t).unwrap(),
                    Step::Payload {
                        stream_id: 1,
                        len: rest.len()
                    }
                );
            }
            // The frame after starts cleanly.
            assert_eq!(decoder.next(&ping(3), t).unwrap(), frame_step(ping(3)));
        }
        let big = data(1, 0, &[7u8; 300]);
        check_every_split(Sender::Client, 16, &table, &big);
    }

    /// The step a whole control frame gives on its own.
    fn frame_step(bytes: Vec<u8>) -> Step {
        let mut table = StreamTable::new();
        let mut decoder = FrameDecoder::new(Sender::Client, 0);
        decoder.next(&bytes, &mut table).unwrap()
    }

    #[test]
    fn without_an_excerpt_data_is_released_at_its_head() {
        let mut table = StreamTable::new();
        let mut decoder = FrameDecoder::new(Sender::Client, 0);
        let open = Encoder::new().syn_stream(1, 0, &[("streamtype", "stdin")]);
        let Step::Frame { release, .. } = decoder.next(&open, &mut table).unwrap() else {
            panic!();
        };
        assert_eq!(release, open.len());
        let input = data(1, 0, &[b'x'; 1000]);
        match decoder.next(&input[..8], &mut table).unwrap() {
            Step::Frame { frame, release } => {
                assert_eq!(release, 8);
                assert_eq!(
                    frame,
                    Frame::Data {
                        stream_id: 1,
                        fin: false,
                        len: 1000,
                        excerpt: vec![]
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decoder.next(&input[8..], &mut table).unwrap(),
            Step::Payload {
                stream_id: 1,
                len: 1000
            }
        );
        // An empty DATA frame is its head.
        let empty = data(1, FLAG_FIN, b"");
        let step = decoder.next(&empty, &mut table).unwrap();
        assert!(matches!(step, Step::Frame { release: 8, .. }), "{step:?}");
    }

    #[test]
    fn header_compression_carries_across_frames() {
        let headers = [("streamtype", "stdout"), ("port", "8080")];
        let mut encoder = Encoder::new();
        let first = encoder.syn_stream(1, 0, &headers);
        let second = encoder.syn_stream(3, 0, &headers);
        // The second block refers back to the first: much shorter, and unreadable alone.
        assert!(second.len() + 10 < first.len(), "{second:x?}");
        let alone = run(Sender::Client, 0, &mut StreamTable::new(), &[&second]);
        assert!(matches!(alone, Err(SpdyError::Compression(_))), "{alone:?}");
        let input = [first, second].concat();
        let (seen, table) = check_every_split(Sender::Client, 0, &StreamTable::new(), &input);
        assert_eq!(seen.frames[1].headers().unwrap(), pairs(&headers));
        assert_eq!(table.get(3).unwrap().port.as_deref(), Some("8080"));
        // Each direction has its own stream: the server's first block starts one.
        let reply = Encoder::new().syn_reply(3, 0, &[("a", "b")]);
        check_every_split(Sender::Server, 0, &table, &reply);
    }

    #[test]
    fn a_header_block_without_a_dictionary_is_read() {
        let input = Encoder::with_dictionary(None).syn_stream(1, 0, &[("streamtype", "error")]);
        let (_, table) = check_every_split(Sender::Client, 0, &StreamTable::new(), &input);
        assert_eq!(table.stream_type(1), Some("error"));
    }

    /// A client SYN_STREAM opening stream 1, for cases that need an open stream.
    fn opening() -> Vec<u8> {
        Encoder::new().syn_stream(1, 0, &[("streamtype", "stdout")])
    }

    /// The table after the client opened stream 1.
    fn opened() -> StreamTable {
        let mut table = StreamTable::new();
        run(Sender::Client, 0, &mut table, &[&opening()]).unwrap();
        table
    }

    /// `input` is refused with `error`, and not before its last byte.
    fn refused(sender: Sender, table: &StreamTable, input: &[u8], error: SpdyError) {
        let got = run(sender, 64, &mut table.clone(), &[input]);
        assert_eq!(got.unwrap_err(), error, "{input:x?}");
        let before = run(sender, 64, &mut table.clone(), &[&input[..input.len() - 1]]);
        assert!(before.is_ok(), "{error}: refused before the last byte");
    }

    #[test]
    fn malformed_frames_are_refused_as_soon_as_the_bytes_show_it() {
        let empty = StreamTable::new;
        let open = opening();
        let with_open = |bytes: Vec<u8>| [open.clone(), bytes].concat();
        let cases: Vec<(Sender, StreamTable, Vec<u8>, SpdyError)> = vec![
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x02],
                SpdyError::UnsupportedVersion { version: 2 },
            ),
            (
                Sender::Client,
                empty(),
                vec![0xFF, 0xFF],
                SpdyError::UnsupportedVersion { version: 0x7FFF },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x05],
                SpdyError::UnknownControlType { frame_type: 5 },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x0A],
                SpdyError::UnknownControlType { frame_type: 10 },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x01, 0x04],
                SpdyError::UnknownFlags {
                    frame: "SYN_STREAM",
                    flags: 4,
                },
            ),
            (
                Sender::Server,
                empty(),
                vec![0x80, 0x03, 0x00, 0x06, 0x01],
                SpdyError::UnknownFlags {
                    frame: "PING",
                    flags: 1,
                },
            ),
            (
                Sender::Client,
                empty(),
                with_open(vec![0, 0, 0, 1, 0x02]),
                SpdyError::UnknownFlags {
                    frame: "DATA",
                    flags: 2,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01],
                SpdyError::ControlTooLong {
                    frame: "SYN_STREAM",
                    len: 65_537,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x09],
                SpdyError::BadLength {
                    frame: "SYN_STREAM",
                    len: 9,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04],
                SpdyError::BadLength {
                    frame: "RST_STREAM",
                    len: 4,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x08],
                SpdyError::BadLength {
                    frame: "PING",
                    len: 8,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x05],
                SpdyError::BadLength {
                    frame: "SETTINGS",
                    len: 5,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0x80, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03],
                SpdyError::BadLength {
                    frame: "SYN_REPLY",
                    len: 3,
                },
            ),
            (
                Sender::Client,
                empty(),
                vec![0, 0, 0, 0],
                SpdyError::StreamIdZero { frame: "DATA" },
            ),
            (
                Sender::Server,
                empty(),
                vec![0, 0, 0, 1],
                SpdyError::UnknownStream {
                    frame: "DATA",
                    stream_id: 1,
                },
            ),
            (
                Sender::Server,
                opened(),
                vec![0, 0, 0, 3],
                SpdyError::UnknownStream {
                    frame: "DATA",
                    stream_id: 3,
                },
            ),
            (
                Sender::Client,
                empty(),
                Encoder::new().syn_stream(0, 0, &[]),
                SpdyError::StreamIdZero {
                    frame: "SYN_STREAM",
                },
            ),
            (
                Sender::Client,
                empty(),
                Encoder::new().syn_stream(0x8000_0001, 0, &[]),
                SpdyError::ReservedBit {
                    frame: "SYN_STREAM",
                },
            ),
            (
                Sender::Client,
                empty(),
                Encoder::new().syn_stream(2, 0, &[]),
                SpdyError::WrongStreamParity {
                    stream_id: 2,
                    sender: "client",
                },
            ),
            (
                Sender::Server,
                empty(),
                Encoder::new().syn_stream(1, 0, &[]),
                SpdyError::WrongStreamParity {
                    stream_id: 1,
                    sender: "server",
                },
            ),
            (
                Sender::Client,
                opened(),
                Encoder::new().syn_stream(1, 0, &[]),
                SpdyError::StreamIdNotIncreasing {
                    stream_id: 1,
                    last: 1,
                },
            ),
            (
                Sender::Client,
                empty(),
                {
                    let mut e = Encoder::new();
                    [e.syn_stream(5, 0, &[]), e.syn_stream(3, 0, &[])].concat()
                },
                SpdyError::StreamIdNotIncreasing {
                    stream_id: 3,
                    last: 5,
                },
            ),
            (
                Sender::Client,
                empty(),
                {
                    let mut e = Encoder::new();
                    [e.syn_stream(1, 0, &[]), e.syn_reply(1, 0, &[])].concat()
                },
                SpdyError::ReplyToOwnStream { stream_id: 1 },
            ),
            (
                Sender::Server,
                empty(),
                Encoder::new().syn_reply(1, 0, &[]),
                SpdyError::UnknownStream {
                    frame: "SYN_REPLY",
                    stream_id: 1,
                },
            ),
            (
                Sender::Server,
                opened(),
                Encoder::new().headers(3, 0, &[]),
                SpdyError::UnknownStream {
                    frame: "HEADERS",
                    stream_id: 3,
                },
            ),
            (
                Sender::Server,
                opened(),
                rst(3, 5),
                SpdyError::UnknownStream {
                    frame: "RST_STREAM",
                    stream_id: 3,
                },
            ),
            (
                Sender::Server,
                opened(),
                rst(1, 0),
                SpdyError::RstStatusZero,
            ),
            (
                Sender::Server,
                empty(),
                rst(0, 1),
                SpdyError::StreamIdZero {
                    frame: "RST_STREAM",
                },
            ),
            (Sender::Client, empty(), ping(0), SpdyError::PingIdZero),
            (
                Sender::Client,
                opened(),
                window_update(1, 0),
                SpdyError::WindowDeltaZero,
            ),
            (
                Sender::Client,
                opened(),
                window_update(1, 0x8000_0001),
                SpdyError::ReservedBit {
                    frame: "WINDOW_UPDATE",
                },
            ),
            (
                Sender::Client,
                empty(),
                window_update(2, 1),
                SpdyError::UnknownStream {
                    frame: "WINDOW_UPDATE",
                    stream_id: 2,
                },
            ),
            (
                Sender::Client,
                empty(),
                goaway(0x8000_0000, 0),
                SpdyError::ReservedBit { frame: "GOAWAY" },
            ),
            (
                Sender::Server,
                empty(),
                control(4, 0, &words(&[2, 1, 1])),
                SpdyError::SettingsCount { count: 2, holds: 1 },
            ),
        ];
        for (sender, table, input, error) in cases {
            refused(sender, &table, &input, error);
        }
    }

    /// A SYN_STREAM for stream 1 whose header block is `raw` compressed.
    fn syn_with_raw(raw: &[u8]) -> Vec<u8> {
        let block = Encoder::new().compress(raw, FlushCompress::Sync);
        syn_stream_with(1, 0, &block)
    }

    #[test]
    fn malformed_header_blocks_are_refused() {
        let block = |headers: &[(&str, &str)]| syn_with_raw(&raw_block(headers));
        let mut too_many = 257u32.to_be_bytes().to_vec();
        too_many.extend([0; 8]);
        let mut trailing = raw_block(&[("a", "b")]);
        trailing.push(0);
        let mut truncated = raw_block(&[("abcde", "")]);
        truncated.truncate(8);
        let cases: Vec<(Vec<u8>, SpdyError)> = vec![
            (syn_with_raw(&too_many), SpdyError::TooManyHeaders),
            (
                block(&[("a", ["x"; MAX_HEADERS + 1].join("\0").as_str())]),
                SpdyError::TooManyHeaders,
            ),
            (
                block(&[("a", "1"), ("a", "2")]),
                SpdyError::DuplicateHeader { name: "a".into() },
            ),
            (
                block(&[("Streamtype", "stdout")]),
                SpdyError::BadHeaderName {
                    name: "Streamtype".into(),
                },
            ),
            (
                block(&[("stream type", "stdout")]),
                SpdyError::BadHeaderName {
                    name: "stream type".into(),
                },
            ),
            (
                block(&[("naïve", "x")]),
                SpdyError::BadHeaderName {
                    name: "naïve".into(),
                },
            ),
            (block(&[("", "x")]), SpdyError::EmptyHeaderName),
            (
                block(&[("a", "\0x")]),
                SpdyError::BadHeaderValue { name: "a".into() },
            ),
            (
                block(&[("a", "x\0")]),
                SpdyError::BadHeaderValue { name: "a".into() },
            ),
            (
                block(&[("a", "x\0\0y")]),
                SpdyError::BadHeaderValue { name: "a".into() },
            ),
            (
                syn_with_raw(&truncated),
                SpdyError::BadHeaderBlock { why: "truncated" },
            ),
            (
                syn_with_raw(&trailing),
                SpdyError::BadHeaderBlock {
                    why: "bytes after the last pair",
                },
            ),
            // No block at all (spdystream's reader fails on the missing count too).
            (
                syn_stream_with(1, 0, b""),
                SpdyError::BadHeaderBlock { why: "truncated" },
            ),
            (
                Encoder::with_dictionary(Some(b"not the SPDY dictionary")).syn_stream(
                    1,
                    0,
                    &[("a", "b")],
                ),
                SpdyError::HeaderDictionary {
                    dict_id: adler32(b"not the SPDY dictionary"),
                },
            ),
            (
                syn_stream_with(
                    1,
                    0,
                    &Encoder::new().compress(&raw_block(&[("a", "b")]), FlushCompress::Finish),
                ),
                SpdyError::Compression("the zlib stream ended".into()),
            ),
        ];
        for (input, error) in cases {
            refused(Sender::Client, &StreamTable::new(), &input, error);
        }
        // Not zlib at all.
        let garbage = syn_stream_with(1, 0, b"\x12\x34\x56\x78");
        let got = run(Sender::Client, 0, &mut StreamTable::new(), &[&garbage]);
        assert!(matches!(got, Err(SpdyError::Compression(_))), "{got:?}");
        // A value of NUL-separated parts is one pair per part; an empty value is one pair.
        let input = block(&[("a", "x\0y\0z"), ("b", "")]);
        let seen = run(Sender::Client, 0, &mut StreamTable::new(), &[&input]).unwrap();
        assert_eq!(
            seen.frames[0].headers().unwrap(),
            pairs(&[("a", "x"), ("a", "y"), ("a", "z"), ("b", "")])
        );
    }

    #[test]
    fn a_header_block_inflates_to_a_bounded_size() {
        // 13 bytes of count and lengths, then the value: exactly the limit is read.
        let at_limit = raw_block(&[("a", &"x".repeat(MAX_HEADER_BLOCK - 13))]);
        assert_eq!(at_limit.len(), MAX_HEADER_BLOCK);
        let input = syn_with_raw(&at_limit);
        let seen = run(Sender::Client, 0, &mut StreamTable::new(), &[&input]).unwrap();
        assert_eq!(
            seen.frames[0].header("a").unwrap().len(),
            MAX_HEADER_BLOCK - 13
        );
        let over = raw_block(&[("a", &"x".repeat(MAX_HEADER_BLOCK - 12))]);
        refused(
            Sender::Client,
            &StreamTable::new(),
            &syn_with_raw(&over),
            SpdyError::HeaderBlockTooLarge,
        );
        // A bomb: 16 MiB of header in a frame of a few KiB, refused once 64 KiB are out.
        let bomb = syn_with_raw(&raw_block(&[("a", &"x".repeat(16 << 20))]));
        assert!(bomb.len() < 32 * 1024, "{}", bomb.len());
        let mut decoder = FrameDecoder::new(Sender::Client, 0);
        let got = decoder.next(&bomb, &mut StreamTable::new());
        assert_eq!(got, Err(SpdyError::HeaderBlockTooLarge));
        // Inflation stopped early: most of the compressed block was never read.
        assert!(decoder.inflate.total_out() <= (MAX_HEADER_BLOCK + 4096) as u64);
        assert!(decoder.inflate.total_in() < bomb.len() as u64 / 2);
    }

    #[test]
    fn the_stream_table_is_bounded_and_forgets_closed_streams_first() {
        let mut table = StreamTable::new();
        let mut client = Relay::new(Sender::Client, 0);
        let mut server = Relay::new(Sender::Server, 0);
        let mut encoder = Encoder::new();
        let ids: Vec<u32> = (0..MAX_STREAMS as u32).map(|i| 2 * i + 1).collect();
        for id in &ids {
            let frame = encoder.syn_stream(*id, 0, &[("streamtype", "data")]);
            client.feed(&frame, &mut table).unwrap();
        }
        assert_eq!(table.len(), MAX_STREAMS);
        let next = 2 * MAX_STREAMS as u32 + 1;
        // All open: one more is refused (checked before its block is inflated, so the
        // compression stream does not move and the next attempt uses a fresh encoder).
        let mut full = table.clone();
        let frame = Encoder::new().syn_stream(next, 0, &[("streamtype", "data")]);
        let got = Relay::new(Sender::Client, 0).feed(&frame, &mut full);
        assert_eq!(got, Err(SpdyError::TooManyStreams));
        // Closed streams make room, oldest first: stream 5 by FIN both ways, 3 by a reset.
        client.feed(&data(5, FLAG_FIN, b""), &mut table).unwrap();
        server.feed(&data(5, FLAG_FIN, b""), &mut table).unwrap();
        server.feed(&rst(3, 5), &mut table).unwrap();
        assert!(table.get(5).unwrap().closed() && table.get(3).unwrap().closed());
        assert!(!table.get(1).unwrap().closed());
        let frame = encoder.syn_stream(next, 0, &[("streamtype", "error")]);
        client.feed(&frame, &mut table).unwrap();
        assert_eq!(table.len(), MAX_STREAMS);
        assert_eq!(table.get(3), None);
        assert_eq!(table.stream_type(5), Some("data"));
        assert_eq!(table.stream_type(next), Some("error"));
        // A forgotten stream was still opened: late frames on it pass, unlabelled.
        assert!(table.opened(3));
        server.feed(&data(3, 0, b"late"), &mut table).unwrap();
        assert_eq!(table.stream_type(3), None);
    }

    #[test]
    fn long_labels_are_left_out_of_the_table() {
        let long = "p".repeat(MAX_LABEL + 1);
        let input = Encoder::new().syn_stream(1, 0, &[("streamtype", &long), ("port", "80")]);
        let mut table = StreamTable::new();
        let seen = run(Sender::Client, 0, &mut table, &[&input]).unwrap();
        assert_eq!(seen.frames[0].header("streamtype"), Some(long.as_str()));
        assert_eq!(table.stream_type(1), None);
        assert_eq!(table.get(1).unwrap().port.as_deref(), Some("80"));
    }

    #[test]
    fn stream_flags_close_halves() {
        let mut encoder = Encoder::new();
        let input = [
            encoder.syn_stream(1, FLAG_FIN, &[]),
            encoder.syn_stream(3, FLAG_UNIDIRECTIONAL, &[]),
            encoder.syn_stream(5, FLAG_FIN | FLAG_UNIDIRECTIONAL, &[]),
        ]
        .concat();
        let (seen, table) = check_every_split(Sender::Client, 0, &StreamTable::new(), &input);
        assert!(matches!(
            seen.frames[2],
            Frame::SynStream {
                fin: true,
                unidirectional: true,
                ..
            }
        ));
        assert!(!table.get(1).unwrap().closed() && !table.get(3).unwrap().closed());
        assert!(table.get(5).unwrap().closed());
        let reply = Encoder::new().syn_reply(1, FLAG_FIN, &[]);
        let (_, table) = check_every_split(Sender::Server, 0, &table, &reply);
        assert!(table.get(1).unwrap().closed());
    }

    #[test]
    fn frames_after_goaway_and_after_fin_pass() {
        let mut encoder = Encoder::new();
        let input = [
            encoder.syn_stream(1, 0, &[("streamtype", "stdin")]),
            data(1, FLAG_FIN, b"end"),
            goaway(0, 0),
            data(1, 0, b"after FIN"),
            encoder.syn_stream(3, 0, &[("streamtype", "stdout")]),
            goaway(0, 0),
        ]
        .concat();
        let (seen, _) = check_every_split(Sender::Client, 8, &StreamTable::new(), &input);
        assert_eq!(seen.frames.len(), 6);
        assert_eq!(seen.payloads[&1], b"endafter FIN");
    }

    #[test]
    fn an_error_ends_the_decoder() {
        let mut table = StreamTable::new();
        let mut decoder = FrameDecoder::new(Sender::Client, 0);
        let error = SpdyError::UnsupportedVersion { version: 2 };
        assert_eq!(decoder.next(&[0x80, 0x02], &mut table), Err(error.clone()));
        assert_eq!(decoder.next(&ping(1), &mut table), Err(error));
    }

    #[test]
    fn arbitrary_and_mutated_bytes_never_panic_and_release_only_what_was_given() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut base = StreamTable::new();
        run(Sender::Client, 0, &mut base, &[&hex(EXEC_CLIENT)]).unwrap();
        let check = |sender: Sender, input: &[u8], table: &StreamTable| {
            let mut table = table.clone();
            let mut relay = Relay::new(sender, 8);
            let _ = relay.push(input, &mut table);
            assert!(input.starts_with(&relay.seen.released));
        };
        for _ in 0..2000 {
            let len = (next() % 48) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for sender in [Sender::Client, Sender::Server] {
                check(sender, &input, &base);
                let mut input = input.clone();
                if let Some(b) = input.first_mut() {
                    *b = 0x80; // mostly control frames of version 3
                }
                if let Some(b) = input.get_mut(1) {
                    *b = 0x03;
                }
                check(sender, &input, &base);
            }
        }
        // Real exchanges with one byte changed anywhere.
        for (sender, text) in [(Sender::Client, EXEC_CLIENT), (Sender::Server, EXEC_SERVER)] {
            let input = hex(text);
            for at in 0..input.len() {
                let mut changed = input.clone();
                changed[at] ^= (next() as u8) | 1;
                check(sender, &changed, &base);
            }
        }
    }
}

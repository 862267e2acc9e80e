//! WebSocket framing (RFC 6455 §5), sans IO: what the agent needs to journal each frame
//! of an upgraded connection *before* relaying it, with bounded memory.
//!
//! [`FrameDecoder`] is fed the bytes one side sent that are not relayed yet and answers
//! with a [`Step`]: [`Step::Frame`] once a frame's head and the first bytes of its payload
//! (up to the excerpt limit; a control frame whole) are buffered: the caller journals
//! the frame, then releases `release` bytes (the head and as much of the payload as is
//! buffered); [`Step::Payload`] for the rest of a long frame's payload, which streams
//! through without being buffered; [`Step::NeedMore`] when nothing can be released yet.
//! A frame of any length (up to 2^63 - 1 bytes) therefore costs at most its head plus
//! the excerpt limit in memory, and no byte of it is released before it is journaled.
//!
//! Malformed input is refused as early as the bytes show it (before waiting for more):
//! reserved bits (the agent removes `Sec-WebSocket-Extensions` from the handshake, so no
//! extension may set them), reserved opcodes, a client frame without a mask or a server
//! frame with one (§5.1), a fragmented or long (> 125 bytes) control frame (§5.5), a
//! length with its top bit set or not in its shortest encoding (§5.2), a continuation
//! without a message, a new message inside a fragmented one (§5.4), a close payload of
//! one byte (§5.5.1), and any frame after the sender's close frame (§5.5.1). Text is
//! not checked for valid UTF-8: the endpoints do that; the journal keeps a lossy excerpt.
use thiserror::Error;

/// The longest payload a control frame may have (§5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Who sent the bytes a decoder reads: client frames are masked, server frames not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Client => "client",
            Sender::Server => "server",
        }
    }
}

/// A frame's opcode (§5.2; the reserved ones are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Opcode::Continuation => "continuation",
            Opcode::Text => "text",
            Opcode::Binary => "binary",
            Opcode::Close => "close",
            Opcode::Ping => "ping",
            Opcode::Pong => "pong",
        }
    }
}

/// One frame, as the journal describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    pub opcode: Opcode,
    /// The message the frame belongs to: `opcode`, or for a continuation frame the
    /// opcode of the message's first frame.
    pub message: Opcode,
    /// Payload length.
    pub len: u64,
    /// The first bytes of the payload, unmasked: up to the decoder's excerpt limit for
    /// data frames, the whole payload of a control frame.
    pub excerpt: Vec<u8>,
}

impl Frame {
    /// A close frame's status code and reason (§5.5.1), if it has them.
    pub fn close(&self) -> Option<(u16, &[u8])> {
        if self.opcode != Opcode::Close || self.excerpt.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.excerpt[0], self.excerpt[1]]);
        Some((code, &self.excerpt[2..]))
    }
}

/// Why bytes are not a valid frame (the connection is closed on any of them).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("reserved bits {bits:#04x} set, but no extension was negotiated")]
    ReservedBits { bits: u8 },
    #[error("reserved opcode {opcode:#x}")]
    ReservedOpcode { opcode: u8 },
    #[error("a client frame is not masked")]
    ClientUnmasked,
    #[error("a server frame is masked")]
    ServerMasked,
    #[error("a {opcode} frame is fragmented (control frames cannot be)")]
    FragmentedControl { opcode: &'static str },
    #[error("a {opcode} frame has {len} bytes of payload (at most 125)")]
    LongControl { opcode: &'static str, len: u64 },
    #[error("a payload length with its most significant bit set")]
    LengthTopBit,
    #[error("payload length {len} not in its shortest encoding")]
    LengthNotMinimal { len: u64 },
    #[error("a continuation frame without a message to continue")]
    NoMessageToContinue,
    #[error("a new {opcode} message while a fragmented {open} message is unfinished")]
    MessageInterleaved {
        opcode: &'static str,
        open: &'static str,
    },
    #[error("a close frame with a 1-byte payload")]
    ClosePayload,
    #[error("a frame after the close frame")]
    AfterClose,
}

/// What the caller does next (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing can be released until more bytes arrive.
    NeedMore,
    /// A frame starts: journal it, then release `release` bytes.
    Frame { frame: Frame, release: usize },
    /// More payload of the frame last returned (already journaled): release this many.
    Payload(usize),
}

/// Follows the frames one side sends (see the module documentation).
#[derive(Debug)]
pub struct FrameDecoder {
    sender: Sender,
    excerpt_limit: usize,
    /// Payload bytes of the current frame not released yet.
    remaining: u64,
    /// The opcode of the fragmented message in progress.
    open_message: Option<Opcode>,
    /// The sender's close frame was seen.
    closed: bool,
}

impl FrameDecoder {
    /// A decoder of `sender`'s frames that buffers up to `excerpt_limit` payload bytes of
    /// each data frame for [`Frame::excerpt`] (0: none; control frames are always whole).
    pub fn new(sender: Sender, excerpt_limit: usize) -> FrameDecoder {
        FrameDecoder {
            sender,
            excerpt_limit,
            remaining: 0,
            open_message: None,
            closed: false,
        }
    }

    /// Whether the sender's close frame was seen.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The next step for `buf`, the sender's bytes not released yet (the caller drops
    /// the bytes a step releases from its front before calling again).
    pub fn next(&mut self, buf: &[u8]) -> Result<Step, FrameError> {
        if buf.is_empty() {
            return Ok(Step::NeedMore);
        }
        if self.remaining > 0 {
            let n = self.remaining.min(buf.len() as u64);
            self.remaining -= n;
            return Ok(Step::Payload(n as usize));
        }
        let Some(head) = self.head(buf)? else {
            return Ok(Step::NeedMore);
        };
        let payload = &buf[head.len..];
        let wanted = if head.opcode.is_control() {
            head.payload_len
        } else {
            head.payload_len.min(self.excerpt_limit as u64)
        };
        if (payload.len() as u64) < wanted {
            return Ok(Step::NeedMore);
        }
        let mut excerpt = payload[..wanted as usize].to_vec();
        if let Some(key) = head.mask {
            for (i, byte) in excerpt.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        if head.opcode == Opcode::Close && head.payload_len == 1 {
            return Err(FrameError::ClosePayload);
        }
        // The frame is accepted: only now does the message state move.
        let message = match head.opcode {
            Opcode::Continuation => {
                let open = self.open_message.ok_or(FrameError::NoMessageToContinue)?;
                if head.fin {
                    self.open_message = None;
                }
                open
            }
            Opcode::Text | Opcode::Binary => {
                if let Some(open) = self.open_message {
                    return Err(FrameError::MessageInterleaved {
                        opcode: head.opcode.as_str(),
                        open: open.as_str(),
                    });
                }
                if !head.fin {
                    self.open_message = Some(head.opcode);
                }
                head.opcode
            }
            Opcode::Close => {
                self.closed = true;
                Opcode::Close
            }
            control => control,
        };
        let available = head.payload_len.min(payload.len() as u64);
        self.remaining = head.payload_len - available;
        Ok(Step::Frame {
            frame: Frame {
                fin: head.fin,
                opcode: head.opcode,
                message,
                len: head.payload_len,
                excerpt,
            },
            release: head.len + available as usize,
        })
    }

    /// Parses and checks a frame head at the start of `buf`; `None` while incomplete.
    /// Every check a byte allows is made as soon as that byte is there.
    fn head(&self, buf: &[u8]) -> Result<Option<Head>, FrameError> {
        if self.closed {
            return Err(FrameError::AfterClose);
        }
        let b0 = buf[0];
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        if rsv != 0 {
            return Err(FrameError::ReservedBits { bits: rsv });
        }
        let opcode =
            Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode { opcode: b0 & 0x0F })?;
        if opcode.is_control() && !fin {
            return Err(FrameError::FragmentedControl {
                opcode: opcode.as_str(),
            });
        }
        if opcode == Opcode::Continuation && self.open_message.is_none() {
            return Err(FrameError::NoMessageToContinue);
        }
        if let (Some(open), Opcode::Text | Opcode::Binary) = (self.open_message, opcode) {
            return Err(FrameError::MessageInterleaved {
                opcode: opcode.as_str(),
                open: open.as_str(),
            });
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match (self.sender, masked) {
            (Sender::Client, false) => return Err(FrameError::ClientUnmasked),
            (Sender::Server, true) => return Err(FrameError::ServerMasked),
            _ => {}
        }
        let (payload_len, at) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if len < 126 {
                    return Err(FrameError::LengthNotMinimal { len });
                }
                (len, 4)
            }
            127 => {
                if buf.get(2).is_some_and(|b| b & 0x80 != 0) {
                    return Err(FrameError::LengthTopBit);
                }
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len <= u64::from(u16::MAX) {
                    return Err(FrameError::LengthNotMinimal { len });
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::LongControl {
                opcode: opcode.as_str(),
                len: payload_len,
            });
        }
        let (mask, len) = if masked {
            let Some(key) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            (Some(key.try_into().expect("4 bytes")), at + 4)
        } else {
            (None, at)
        };
        Ok(Some(Head {
            fin,
            opcode,
            payload_len,
            mask,
            len,
        }))
    }
}

/// A parsed frame head.
struct Head {
    fin: bool,
    opcode: Opcode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    /// Bytes of the head (with the masking key).
    len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as `sender` would send it (`key`: the client's masking key).
    fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    /// Runs a decoder over `input` delivered in the given pieces, the way the relay
    /// does: buffer, step until `NeedMore`, drop what was released. Returns the frames
    /// and the released bytes (which must equal the input: nothing added or lost).
    fn run(
        sender: Sender,
        limit: usize,
        pieces: &[&[u8]],
    ) -> Result<(Vec<Frame>, Vec<u8>), FrameError> {
        let mut decoder = FrameDecoder::new(sender, limit);
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut released = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                let n = match decoder.next(&buf)? {
                    Step::NeedMore => break,
                    Step::Frame { frame, release } => {
                        frames.push(frame);
                        release
                    }
                    Step::Payload(n) => n,
                };
                assert!(n > 0 && n <= buf.len());
                released.extend(buf.drain(..n));
            }
        }
        Ok((frames, released))
    }

    /// The same frames and bytes whole, split at every position and byte by byte.
    fn check_every_split(sender: Sender, limit: usize, input: &[u8]) -> Vec<Frame> {
        let (frames, released) = run(sender, limit, &[input]).expect("valid");
        assert_eq!(released, input);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let (f, r) = run(sender, limit, &[a, b]).expect("valid");
            assert_eq!((&f, &r), (&frames, &released), "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (f, r) = run(sender, limit, &bytes).expect("valid");
        assert_eq!((&f, &r), (&frames, &released), "byte by byte");
        frames
    }

    #[test]
    fn masked_client_frames_are_unmasked_for_the_excerpt() {
        let mut input = frame(true, 0x1, b"hello websocket", KEY);
        input.extend(frame(true, 0x9, b"ping!", KEY));
        input.extend(frame(true, 0x2, &[0, 1, 2, 3], KEY));
        let frames = check_every_split(Sender::Client, 1024, &input);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].excerpt, b"hello websocket");
        assert_eq!((frames[0].opcode, frames[0].len), (Opcode::Text, 15));
        assert_eq!(
            (frames[1].opcode, frames[1].excerpt.as_slice()),
            (Opcode::Ping, &b"ping!"[..])
        );
        assert_eq!(frames[2].message, Opcode::Binary);
    }

    #[test]
    fn fragmented_messages_carry_their_opcode_and_controls_may_interleave() {
        let mut input = frame(false, 0x1, b"part one, ", None);
        input.extend(frame(true, 0xA, b"", None));
        input.extend(frame(false, 0x0, b"part two, ", None));
        input.extend(frame(true, 0x0, b"end", None));
        input.extend(frame(true, 0x2, b"next", None));
        let frames = check_every_split(Sender::Server, 1024, &input);
        let shape: Vec<(Opcode, Opcode, bool)> = frames
            .iter()
            .map(|f| (f.opcode, f.message, f.fin))
            .collect();
        assert_eq!(
            shape,
            [
                (Opcode::Text, Opcode::Text, false),
                (Opcode::Pong, Opcode::Pong, true),
                (Opcode::Continuation, Opcode::Text, false),
                (Opcode::Continuation, Opcode::Text, true),
                (Opcode::Binary, Opcode::Binary, true),
            ]
        );
    }

    #[test]
    fn long_frames_stream_with_a_bounded_excerpt() {
        // 16- and 64-bit lengths; only `limit` bytes are buffered before release.
        for len in [126usize, 300, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let input = frame(true, 0x1, &payload, KEY);
            let (frames, released) = run(Sender::Client, 64, &[&input]).unwrap();
            assert_eq!(released, input);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].len, len as u64);
            assert_eq!(frames[0].excerpt, &payload[..64]);
            // Delivered in small reads, nothing waits for the whole payload.
            let mut decoder = FrameDecoder::new(Sender::Client, 64);
            let head = if len < 65_536 { 8 } else { 14 };
            assert_eq!(decoder.next(&input[..head + 63]).unwrap(), Step::NeedMore);
            match decoder.next(&input[..head + 100]).unwrap() {
                Step::Frame { release, .. } => assert_eq!(release, head + 100),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                decoder.next(&input[head + 100..][..10]).unwrap(),
                Step::Payload(10)
            );
        }
        check_every_split(Sender::Server, 16, &frame(true, 0x2, &[7u8; 300], None));
    }

    #[test]
    fn without_an_excerpt_a_frame_is_released_at_its_head() {
        let input = frame(true, 0x1, &[b'x'; 1000], None);
        let mut decoder = FrameDecoder::new(Sender::Server, 0);
        match decoder.next(&input[..4]).unwrap() {
            Step::Frame { frame, release } => {
                assert_eq!((release, frame.len, frame.excerpt.len()), (4, 1000, 0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decoder.next(&input[4..]).unwrap(), Step::Payload(1000));
    }

    #[test]
    fn close_frames_end_the_sender_and_carry_their_code() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let input = frame(true, 0x8, &payload, KEY);
        let frames = check_every_split(Sender::Client, 0, &input);
        assert_eq!(frames[0].close(), Some((1000, &b"bye"[..])));
        let mut after = input.clone();
        after.extend(frame(true, 0x1, b"late", KEY));
        assert_eq!(
            run(Sender::Client, 0, &[&after]).unwrap_err(),
            FrameError::AfterClose
        );
        // An empty close is fine; a one-byte one is not.
        check_every_split(Sender::Server, 0, &frame(true, 0x8, b"", None));
        assert_eq!(
            run(Sender::Server, 0, &[&frame(true, 0x8, b"x", None)]).unwrap_err(),
            FrameError::ClosePayload
        );
    }

    #[test]
    fn malformed_frames_are_refused_as_soon_as_the_bytes_show_it() {
        let long = [b'a'; 126];
        let cases: Vec<(Sender, Vec<u8>, FrameError)> = vec![
            (
                Sender::Client,
                frame(true, 0x1, b"x", None),
                FrameError::ClientUnmasked,
            ),
            (
                Sender::Server,
                frame(true, 0x1, b"x", KEY),
                FrameError::ServerMasked,
            ),
            (
                Sender::Server,
                vec![0xC1],
                FrameError::ReservedBits { bits: 0x40 },
            ),
            (
                Sender::Server,
                vec![0x83],
                FrameError::ReservedOpcode { opcode: 3 },
            ),
            (
                Sender::Server,
                vec![0x8B],
                FrameError::ReservedOpcode { opcode: 0xB },
            ),
            (
                Sender::Server,
                vec![0x09],
                FrameError::FragmentedControl { opcode: "ping" },
            ),
            (
                Sender::Server,
                frame(true, 0x9, &long, None),
                FrameError::LongControl {
                    opcode: "ping",
                    len: 126,
                },
            ),
            (
                Sender::Server,
                vec![0x81, 127, 0x80],
                FrameError::LengthTopBit,
            ),
            (
                Sender::Server,
                vec![0x81, 126, 0, 5],
                FrameError::LengthNotMinimal { len: 5 },
            ),
            (
                Sender::Server,
                vec![0x81, 127, 0, 0, 0, 0, 0, 0, 1, 0],
                FrameError::LengthNotMinimal { len: 256 },
            ),
            (Sender::Server, vec![0x80], FrameError::NoMessageToContinue),
            (
                Sender::Server,
                [frame(false, 0x1, b"a", None), vec![0x82]].concat(),
                FrameError::MessageInterleaved {
                    opcode: "binary",
                    open: "text",
                },
            ),
        ];
        for (sender, input, error) in cases {
            // Refused with only the bytes that show it: no waiting for the rest.
            assert_eq!(
                run(sender, 1024, &[&input]).unwrap_err(),
                error,
                "{input:x?}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_release_only_what_was_given() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for sender in [Sender::Client, Sender::Server] {
                if let Ok((_, released)) = run(sender, 8, &[&input]) {
                    assert!(input.starts_with(&released));
                }
            }
        }
    }
}

//! Packet framing: 3-byte length, sequence id, payload; 0xFFFFFF-byte payloads continue.
use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// The largest payload of one physical packet; a payload of exactly this length is
/// continued by the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// One logical packet: its payload (continuations joined) and its exact original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sequence id of its first physical packet.
    pub seq: u8,
    /// How many physical packets it took (1 unless it is at least 16 MiB).
    pub parts: u8,
    pub payload: Bytes,
    /// Headers and payloads as they came, to forward unchanged.
    pub raw: Bytes,
}

impl Packet {
    /// The sequence id the packet after this one carries.
    pub fn next_seq(&self) -> u8 {
        self.seq.wrapping_add(self.parts)
    }
}

/// Cuts logical packets off the front of a buffer.
#[derive(Debug, Clone)]
pub struct PacketDecoder {
    limit: usize,
}

impl PacketDecoder {
    /// A decoder refusing logical packets whose payload exceeds `limit` bytes.
    pub fn new(limit: usize) -> PacketDecoder {
        PacketDecoder { limit }
    }

    /// The next whole logical packet at the front of `buf` (consumed), `Ok(None)` when
    /// more bytes are needed. The length is checked against the bound from the headers
    /// alone, before the payload is waited for.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        let mut offset = 0usize;
        let mut total = 0usize;
        let mut parts = 0u32;
        loop {
            if buf.len() < offset + 4 {
                return Ok(None);
            }
            let len = usize::from(buf[offset])
                | usize::from(buf[offset + 1]) << 8
                | usize::from(buf[offset + 2]) << 16;
            total += len;
            parts += 1;
            if total > self.limit {
                return Err(ProtocolError::TooLong {
                    len: total,
                    limit: self.limit,
                });
            }
            if parts > 255 {
                return Err(ProtocolError::malformed("packet", "too many continuations"));
            }
            if buf.len() < offset + 4 + len {
                return Ok(None);
            }
            offset += 4 + len;
            if len < MAX_PAYLOAD {
                break;
            }
        }
        let seq = buf[3];
        let raw = buf.split_to(offset).freeze();
        let payload = if parts == 1 {
            raw.slice(4..)
        } else {
            let mut joined = BytesMut::with_capacity(total);
            let mut at = 0;
            while at < raw.len() {
                let len = usize::from(raw[at])
                    | usize::from(raw[at + 1]) << 8
                    | usize::from(raw[at + 2]) << 16;
                joined.extend_from_slice(&raw[at + 4..at + 4 + len]);
                at += 4 + len;
            }
            joined.freeze()
        };
        Ok(Some(Packet {
            seq,
            parts: parts as u8,
            payload,
            raw,
        }))
    }
}

/// Frames `payload` as packets starting at sequence id `seq` (split into 0xFFFFFF-byte
/// pieces, with an empty last packet when the length is a multiple of it); returns the
/// sequence id after the last packet.
pub fn encode(out: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// `payload` framed as packets from `seq`.
pub fn packet(seq: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    encode(&mut out, seq, payload);
    out.freeze()
}

//! The PostgreSQL server → client decoder (`BackendDecoder::decode`), fed as the proxy
//! feeds it (reads appended to one buffer, `decode` until it needs more bytes), then
//! what the proxy and the masking code read from each message: the lazy DataRow walk,
//! command tags, error fields, authentication requests; and the encoders, whose frame
//! must decode back to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::protocol::postgres::{BackendDecoder, BackendMessage};
use nhi_agent_fuzz::{append, reads, split_control};

fuzz_target!(|data: &[u8]| {
    let Some((control, data)) = split_control(data) else {
        return;
    };
    let mut decoder = BackendDecoder::new();
    // Bit 7: the proxy forwarded an SSLRequest; the first byte answers it.
    if control & 0x80 != 0 {
        decoder.expect_ssl_answer();
    }
    let mut buf = BytesMut::new();
    for read in reads(control, data) {
        append(&mut buf, read);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => {
                    assert_eq!(before - buf.len(), decoded.raw.len(), "raw is what was cut");
                    exercise(&decoded.message);
                }
                Ok(None) => {
                    assert_eq!(before, buf.len(), "need-more-bytes consumed nothing");
                    break;
                }
                Err(e) => {
                    let _ = e.to_string();
                    return;
                }
            }
        }
    }
});

fn exercise(message: &BackendMessage) {
    match message {
        BackendMessage::DataRow(row) => {
            // The decoder checked every column: the walk yields exactly `len` values,
            // each inside the body.
            assert_eq!(row.ranges().count(), row.len());
            assert_eq!(row.ranges().len(), row.len());
            for range in row.ranges().flatten() {
                assert!(range.end <= row.body().len());
            }
            assert_eq!(row.values().count(), row.len());
            assert_eq!(row.get(row.len()), None);
        }
        BackendMessage::CommandComplete { tag } => {
            let _ = (tag.command(), tag.rows());
        }
        BackendMessage::ErrorResponse(fields) | BackendMessage::NoticeResponse(fields) => {
            let _ = (
                fields.severity(),
                fields.code(),
                fields.message(),
                fields.detail(),
                fields.hint(),
            );
        }
        _ => {}
    }
    let frame = message.to_bytes();
    let mut decoder = BackendDecoder::new();
    if matches!(message, BackendMessage::SslAnswer(_)) {
        decoder.expect_ssl_answer();
    }
    let mut buf = BytesMut::from(&frame[..]);
    let again = decoder
        .decode(&mut buf)
        .expect("the encoder's frame decodes")
        .expect("the encoder's frame is whole");
    assert_eq!(&again.message, message, "encode/decode round trip");
    assert!(buf.is_empty(), "the encoder's frame is exactly one message");
}

//! The PostgreSQL client → server decoder (`FrontendDecoder::decode`), fed as the proxy
//! feeds it: reads appended to one buffer, `decode` called until it needs more bytes.
//! Then what the proxy does with the messages: the StartupMessage accessors, the 'p'
//! interpretations, and the encoders it uses to rewrite a message, which must produce a
//! frame the decoder reads back as the same message. Any error ends the "connection".
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::protocol::postgres::{FrontendDecoder, FrontendMessage};
use nhi_agent_fuzz::{append, reads, split_control};

fuzz_target!(|data: &[u8]| {
    let Some((control, data)) = split_control(data) else {
        return;
    };
    let mut decoder = FrontendDecoder::new();
    // Bit 7: the stream is already past the start-up (as after the agent's own
    // start-up with the server, `startup_done`).
    if control & 0x80 != 0 {
        decoder.startup_done();
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

fn exercise(message: &FrontendMessage) {
    match message {
        FrontendMessage::Startup(startup) => {
            let _ = (
                startup.user(),
                startup.database(),
                startup.application_name(),
                startup.param("replication"),
                startup.version.major(),
                startup.version.minor(),
            );
        }
        FrontendMessage::AuthResponse(response) => {
            let _ = response.password();
            if let Ok(initial) = response.sasl_initial() {
                let _ = format!("{initial:?}");
            }
        }
        _ => {}
    }
    // The encoder's frame decodes back to the same message (start-up packets with a
    // decoder in the start-up phase, tagged messages with one past it).
    let frame = message.to_bytes();
    let mut decoder = FrontendDecoder::new();
    let startup_packet = matches!(
        message,
        FrontendMessage::SslRequest
            | FrontendMessage::GssEncRequest
            | FrontendMessage::CancelRequest { .. }
            | FrontendMessage::Startup(_)
    );
    if !startup_packet {
        decoder.startup_done();
    }
    let mut buf = BytesMut::from(&frame[..]);
    let again = decoder
        .decode(&mut buf)
        .expect("the encoder's frame decodes")
        .expect("the encoder's frame is whole");
    assert_eq!(&again.message, message, "encode/decode round trip");
    assert!(buf.is_empty(), "the encoder's frame is exactly one message");
}

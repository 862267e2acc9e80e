//! What the Redis proxy does with each side's bytes: `ClientDecoder::decode` and
//! `ServerDecoder::decode` fed read by read, as `proxy::redis::session` calls them.
//!
//! Properties: nothing panics or hangs; how the stream is cut into reads changes
//! nothing (the control byte chooses the read size; the same input is decoded whole
//! too); a decoded frame's raw bytes are exactly what was consumed; a frame re-encoded
//! (as the proxy does after masking) decodes back to the same value; a command's array
//! form decodes back to the same arguments.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::protocol::redis::{ClientDecoder, Command, Frame, ServerDecoder};
use nhi_agent_fuzz::{reads, split_control};

/// Every frame (or the first error's position) of `data` fed in `control`'s reads.
fn server_frames(control: u8, data: &[u8]) -> (Vec<Frame>, bool) {
    let mut dec = ServerDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads(control, data) {
        buf.extend_from_slice(read);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert_eq!(before - buf.len(), f.raw.len());
                    let mut again = BytesMut::from(&f.value.to_bytes()[..]);
                    let back = ServerDecoder::default()
                        .decode(&mut again)
                        .expect("a re-encoded frame decodes")
                        .expect("whole");
                    assert_eq!(back.value, f.value);
                    assert!(again.is_empty());
                    out.push(f.value);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fn commands(control: u8, data: &[u8]) -> (Vec<Command>, bool) {
    let mut dec = ClientDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads(control, data) {
        buf.extend_from_slice(read);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(c)) => {
                    let mut again = BytesMut::from(&c.value.encode()[..]);
                    let back = ClientDecoder::default()
                        .decode(&mut again)
                        .expect("an encoded command decodes")
                        .expect("whole");
                    assert_eq!(back.value.args, c.value.args);
                    out.push(c.value);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = split_control(data) else {
        return;
    };
    let (cut, cut_err) = server_frames(control, rest);
    let (whole, whole_err) = server_frames(0, rest);
    if !cut_err && !whole_err {
        assert_eq!(cut, whole);
    }
    let (cut, cut_err) = commands(control, rest);
    let (whole, whole_err) = commands(0, rest);
    if !cut_err && !whole_err {
        assert_eq!(cut, whole);
    }
});

//! Decoding golden captures (`testdata/`, made with redis-cli and a raw client through
//! a logging relay in front of redis-server 7.0: see `testdata/README`) fed whole, read
//! by read at every split, byte by byte; and malformed or oversized input refused.
use bytes::BytesMut;

use super::*;

fn data(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/src/protocol/redis/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every server frame of `bytes`, fed in reads of the given sizes (cycled).
fn server_frames(bytes: &[u8], reads: &[usize]) -> Vec<Decoded<Frame>> {
    let mut dec = ServerDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = reads[i % reads.len()].min(bytes.len() - at);
        i += 1;
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

fn client_commands(bytes: &[u8], reads: &[usize]) -> Vec<Decoded<Command>> {
    let mut dec = ClientDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = reads[i % reads.len()].min(bytes.len() - at);
        i += 1;
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        while let Some(c) = dec.decode(&mut buf).unwrap() {
            out.push(c);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

fn names(commands: &[Decoded<Command>]) -> Vec<String> {
    commands.iter().map(|c| c.value.name()).collect()
}

const CAPTURES: &[&str] = &[
    "cli-resp2",
    "cli-resp3",
    "resp3-types",
    "pubsub-resp2",
    "pubsub-resp3",
];

#[test]
fn captures_decode_alike_however_they_are_cut() {
    for name in CAPTURES {
        let s2c = data(&format!("{name}.s2c"));
        let whole = server_frames(&s2c, &[usize::MAX]);
        // Raw bytes are exact and re-encoding reproduces them.
        let joined: Vec<u8> = whole.iter().flat_map(|f| f.raw.to_vec()).collect();
        assert_eq!(joined, s2c, "{name}");
        for f in &whole {
            assert_eq!(f.value.to_bytes(), f.raw, "{name}: {:?}", f.value);
        }
        let by_byte = server_frames(&s2c, &[1]);
        assert_eq!(by_byte.len(), whole.len(), "{name}");
        for reads in [&[2usize, 3, 5][..], &[7, 1], &[64, 1, 1000]] {
            let cut = server_frames(&s2c, reads);
            assert!(
                cut.iter().zip(&whole).all(|(a, b)| a.value == b.value),
                "{name} {reads:?}"
            );
        }
        let c2s = data(&format!("{name}.c2s"));
        let commands = client_commands(&c2s, &[usize::MAX]);
        assert_eq!(names(&client_commands(&c2s, &[1])), names(&commands));
        for c in &commands {
            assert_eq!(c.value.encode(), c.raw, "{name}");
        }
    }
}

#[test]
fn small_captures_at_every_split() {
    for name in ["resp3-types", "pubsub-resp2", "pubsub-resp3"] {
        let s2c = data(&format!("{name}.s2c"));
        let whole = server_frames(&s2c, &[usize::MAX]);
        for split in 1..s2c.len() {
            let cut = server_frames(&s2c, &[split, usize::MAX]);
            assert_eq!(cut.len(), whole.len(), "{name} at {split}");
            // Every prefix: no frame is reported before it is whole.
            let mut dec = ServerDecoder::default();
            let mut buf = BytesMut::from(&s2c[..split]);
            let mut consumed = 0;
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                consumed += f.raw.len();
            }
            assert_eq!(consumed + buf.len(), split);
        }
        let c2s = data(&format!("{name}.c2s"));
        let whole = client_commands(&c2s, &[usize::MAX]);
        for split in 1..c2s.len() {
            assert_eq!(
                names(&client_commands(&c2s, &[split, usize::MAX])),
                names(&whole)
            );
        }
    }
}

#[test]
fn every_resp3_type_is_decoded() {
    let frames = server_frames(&data("resp3-types.s2c"), &[usize::MAX]);
    let types: Vec<&str> = frames.iter().map(|f| f.value.type_name()).collect();
    // HELLO, bignum, verbatim, true, false, null, double, attrib (its value), push,
    // the reply after the push, GET of a missing key.
    assert_eq!(
        types,
        [
            "map", "bignum", "verbatim", "boolean", "boolean", "null", "double", "bulk", "push",
            "bulk", "null"
        ]
    );
    assert!(matches!(&frames[7].value, Frame::Attribute { attrs, .. } if attrs.len() == 1));
    assert!(
        matches!(&frames[2].value, Frame::Verbatim { format, text } if format == b"txt" && text.starts_with(b"This is"))
    );
    let pubsub = server_frames(&data("pubsub-resp2.s2c"), &[usize::MAX]);
    assert_eq!(pubsub.len(), 9);
}

#[test]
fn inline_commands_and_their_array_form() {
    let mut dec = ClientDecoder::default();
    let mut buf = BytesMut::from(&b"\r\nPING\r\nSET k \"a b\"\nGET"[..]);
    let ping = dec.decode(&mut buf).unwrap().unwrap();
    assert!(ping.value.inline);
    assert_eq!(ping.value.name(), "PING");
    assert_eq!(&ping.value.encode()[..], b"*1\r\n$4\r\nPING\r\n");
    let set = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(set.value.args, ["SET", "k", "a b"]);
    assert!(
        dec.decode(&mut buf).unwrap().is_none(),
        "GET has no end yet"
    );
    let mut bad = BytesMut::from(&b"SET k \"a\n"[..]);
    assert!(dec.decode(&mut bad).is_err());
}

#[test]
fn malformed_and_oversized_input_is_refused_before_buffering() {
    let refuse = |bytes: &[u8]| {
        let mut buf = BytesMut::from(bytes);
        ServerDecoder::default().decode(&mut buf).unwrap_err()
    };
    assert!(matches!(refuse(b"?x\r\n"), RespError::UnknownType { .. }));
    assert!(matches!(refuse(b"$abc\r\n"), RespError::BadNumber { .. }));
    assert!(matches!(refuse(b"$3\r\nabcd\r\n"), RespError::MissingCrlf));
    assert!(matches!(refuse(b":12a\r\n"), RespError::Invalid { .. }));
    assert!(matches!(refuse(b"$?\r\n"), RespError::Streamed));
    assert!(matches!(refuse(b"+OK\n"), RespError::Invalid { .. }));
    // A length over the limit is refused at its header, with no byte of its body.
    assert!(matches!(
        refuse(b"$999999999999\r\n"),
        RespError::TooLarge { .. }
    ));
    let deep = "*1\r\n".repeat(100);
    assert!(matches!(refuse(deep.as_bytes()), RespError::TooDeep { .. }));
    let mut client = ClientDecoder::default();
    let mut buf = BytesMut::from(&b"*1\r\n$100000000\r\n"[..]);
    assert!(matches!(
        client.decode(&mut buf),
        Err(RespError::TooLarge { .. })
    ));
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n:1\r\n"[..]);
    assert!(matches!(
        ClientDecoder::default().decode(&mut buf),
        Err(RespError::Command(_))
    ));
    let mut buf = BytesMut::from(&b"*1\r\n*1\r\n$1\r\na\r\n"[..]);
    assert!(matches!(
        ClientDecoder::default().decode(&mut buf),
        Err(RespError::TooDeep { .. })
    ));
    let long = vec![b'a'; 70 * 1024];
    let mut buf = BytesMut::from(&long[..]);
    assert!(matches!(
        ClientDecoder::default().decode(&mut buf),
        Err(RespError::LineTooLong { .. })
    ));
    // Incomplete is not an error.
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
    assert!(ClientDecoder::default().decode(&mut buf).unwrap().is_none());
}

/// A fuzzer's find: a NUL in an inline command made the splitter push empty arguments
/// forever. The server would stop reading at the NUL, so the line is refused.
#[test]
fn an_inline_command_with_a_nul_byte_is_refused_not_looped_on() {
    let data = &include_bytes!("testdata/fuzz-oom-resp3-server.bin")[1..];
    let mut dec = ClientDecoder::default();
    let mut buf = BytesMut::from(data);
    let mut commands = 0;
    let refused = loop {
        match dec.decode(&mut buf) {
            Ok(Some(_)) => commands += 1,
            Ok(None) => break false,
            Err(_) => break true,
        }
        assert!(commands < 1000, "the decoder does not advance");
    };
    assert!(refused, "the line with a NUL is refused");
    for line in [
        &b"s\0\r\n"[..],
        b"GET a\0b\r\n",
        b"\0\r\n",
        b"SET \"a\0\" b\r\n",
    ] {
        let mut buf = BytesMut::from(line);
        assert!(
            ClientDecoder::default().decode(&mut buf).is_err(),
            "{line:?}"
        );
    }
}

/// redis-server reads an empty or negative count (`*0`, `*-1`, `*-3`) as no command: no
/// reply, the next command goes on. So does the decoder, however the bytes are cut.
#[test]
fn empty_and_negative_command_counts_are_skipped_however_cut() {
    let bytes = b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n*-3\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
    for split in 1..bytes.len() {
        let got = client_commands(bytes, &[split]);
        assert_eq!(names(&got), ["PING", "GET"], "reads of {split}");
    }
    // What redis-server cannot read as a count (checked against it: `*-0` and `*00` are
    // "invalid multibulk length" there) is still malformed.
    for bad in [
        &b"*-\r\n"[..],
        b"*-x\r\n",
        b"*-3\n",
        b"*-1234567890123456789\r\n",
        b"*-0\r\n",
        b"*00\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(
            ClientDecoder::default().decode(&mut buf).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

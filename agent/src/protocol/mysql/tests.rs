use bytes::BytesMut;

use super::*;

/// A greeting captured from MariaDB 10.11 (`mariadbd`, mysql_native_password).
fn mariadb_greeting() -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"5.5.5-10.11.19-MariaDB-0+deb12u1\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh");
    p.push(0);
    let caps: u32 = 0xf7fe | (0x81bf << 16);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&0x1du32.to_le_bytes());
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_native_password\0");
    p
}

#[test]
fn packets_are_cut_whole_at_every_split() {
    let a = frame::packet(0, &mariadb_greeting());
    let b = frame::packet(1, b"\x03select 1");
    let mut all = a.to_vec();
    all.extend_from_slice(&b);
    let decoder = PacketDecoder::new(1 << 20);
    for cut in 0..=all.len() {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        buf.extend_from_slice(&all[..cut]);
        while let Some(p) = decoder.decode(&mut buf).unwrap() {
            got.push(p);
        }
        buf.extend_from_slice(&all[cut..]);
        while let Some(p) = decoder.decode(&mut buf).unwrap() {
            got.push(p);
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 2, "cut at {cut}");
        assert_eq!(got[0].raw, a);
        assert_eq!(got[0].seq, 0);
        assert_eq!(&got[1].payload[..], b"\x03select 1");
        assert_eq!(got[1].next_seq(), 2);
    }
}

#[test]
fn a_16_mib_payload_continues_and_is_joined() {
    let payload = vec![7u8; MAX_PAYLOAD + 10];
    let framed = frame::packet(3, &payload);
    assert_eq!(framed.len(), payload.len() + 8);
    let mut buf = BytesMut::from(&framed[..]);
    let p = PacketDecoder::new(32 << 20)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!((p.seq, p.parts, p.next_seq()), (3, 2, 5));
    assert_eq!(p.payload.len(), payload.len());
    assert_eq!(p.raw, framed);
    // Exactly 16 MiB - 1: an empty packet follows.
    let framed = frame::packet(0, &vec![1u8; MAX_PAYLOAD]);
    assert_eq!(framed.len(), MAX_PAYLOAD + 8);
}

#[test]
fn an_oversized_packet_is_refused_from_its_header() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0x0f, 0][..]);
    let err = PacketDecoder::new(1 << 19).decode(&mut buf).unwrap_err();
    assert!(matches!(err, ProtocolError::TooLong { .. }), "{err}");
}

#[test]
fn the_greeting_reads_and_is_written_back_the_same() {
    let raw = mariadb_greeting();
    let g = Greeting::parse(&raw).unwrap();
    assert_eq!(g.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1");
    assert_eq!(g.connection_id, 7);
    assert_eq!(g.scramble, b"abcdefghijklmnopqrst");
    assert_eq!(g.auth_plugin.as_deref(), Some("mysql_native_password"));
    assert_eq!(g.mariadb_caps, 0x1d);
    assert_eq!(&g.encode()[..], &raw[..]);
    // Every prefix is truncated, never a panic.
    for cut in 0..raw.len() - 23 {
        assert!(Greeting::parse(&raw[..cut]).is_err(), "prefix {cut}");
    }
}

#[test]
fn the_handshake_response_reads_and_is_written_back_the_same() {
    let response = HandshakeResponse {
        capabilities: caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
            | caps::CONNECT_WITH_DB
            | caps::CONNECT_ATTRS
            | caps::DEPRECATE_EOF,
        max_packet: 1 << 24,
        charset: 45,
        mariadb_caps: 0,
        user: "app".into(),
        auth_response: vec![1; 20],
        database: Some("shop".into()),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: vec![("_client_name".into(), "libmariadb".into())],
        ssl_request: false,
    };
    let bytes = response.encode();
    assert_eq!(HandshakeResponse::parse(&bytes).unwrap(), response);
    // The SSL request is the first 32 bytes with CLIENT_SSL.
    let ssl = HandshakeResponse {
        capabilities: response.capabilities | caps::SSL,
        ssl_request: true,
        ..HandshakeResponse::default()
    };
    let parsed = HandshakeResponse::parse(&ssl.encode()).unwrap();
    assert!(parsed.ssl_request);
    assert_eq!(ssl.encode().len(), 32);
}

#[test]
fn ok_err_and_eof_are_told_apart() {
    let ok = OkPacket {
        affected_rows: 3,
        last_insert_id: 0,
        status: status::AUTOCOMMIT | status::MORE_RESULTS_EXISTS,
        warnings: 0,
        info: String::new(),
    };
    let parsed = OkPacket::parse(&ok.encode(), 0).unwrap();
    assert_eq!(parsed.affected_rows, 3);
    assert_eq!(parsed.status, ok.status);
    let err = ErrPacket::new(1142, "42000", "nope");
    assert_eq!(ErrPacket::parse(&err.encode()).unwrap(), err);
    assert!(is_eof(&[0xfe, 0, 0, 2, 0], false));
    assert_eq!(eof_status(&[0xfe, 0, 0, 0x0a, 0], false), 0x0a);
    // A text row whose first value is a string of 16 MiB or more starts with 0xFE too.
    assert!(!is_eof(&[0xfe, 0, 0, 0, 1, 0, 0, 0, 0, b'x'], false));
    let mut deprecated = vec![0xfe];
    deprecated.extend_from_slice(
        &OkPacket {
            status: 0x22,
            ..OkPacket::default()
        }
        .encode()[1..],
    );
    assert!(is_eof(&deprecated, true));
    assert_eq!(eof_status(&deprecated, true), 0x22);
}

#[test]
fn column_definitions_and_text_rows_round_trip() {
    let mut p = BytesMut::new();
    for s in ["def", "shop", "u", "users", "e", "email"] {
        put_lenenc_bytes(&mut p, s.as_bytes());
    }
    p.extend_from_slice(&[
        0x0c,
        45,
        0,
        0,
        1,
        0,
        0,
        value::ty::VAR_STRING,
        0,
        0,
        0,
        0,
        0,
    ]);
    let def = ColumnDef::parse(&p).unwrap();
    assert_eq!((def.name.as_str(), def.org_name.as_str()), ("e", "email"));
    assert_eq!((def.table.as_str(), def.org_table.as_str()), ("u", "users"));
    assert_eq!(def.column_type, value::ty::VAR_STRING);
    let row = encode_text_row(&[Some(b"1"), None, Some(&[b'x'; 300][..])]);
    let values = text_row(&row).unwrap();
    assert_eq!(values, vec![Some(&b"1"[..]), None, Some(&[b'x'; 300][..])]);
    for cut in 0..row.len() {
        let _ = text_row(&row[..cut]);
    }
}

#[test]
fn binary_rows_decode_and_re_encode() {
    use value::*;
    let types = [
        (ty::LONG, false),
        (ty::VAR_STRING, false),
        (ty::LONGLONG, true),
        (ty::DATETIME, false),
        (ty::DOUBLE, false),
    ];
    let (minus_five, one_and_half) = ((-5i32).to_le_bytes(), 1.5f64.to_le_bytes());
    let values = vec![
        NewValue::Same(&minus_five, Layout::Int(4)),
        NewValue::String(b"ada@example.com"),
        NewValue::Null,
        NewValue::Same(&[0xea, 0x07, 12, 7, 18, 30, 5], Layout::Temporal),
        NewValue::Same(&one_and_half, Layout::Double),
    ];
    let row = encode_binary_row(&values);
    let decoded = binary_row(&row, &types).unwrap();
    let texts: Vec<Option<String>> = decoded
        .iter()
        .map(|v| {
            v.as_ref()
                .map(|v| String::from_utf8(v.text.clone().unwrap()).unwrap())
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            Some("-5".into()),
            Some("ada@example.com".into()),
            None,
            Some("2026-12-07 18:30:05".into()),
            Some("1.5".into())
        ]
    );
    for cut in 0..row.len() {
        assert!(binary_row(&row[..cut], &types).is_err(), "prefix {cut}");
    }
}

#[test]
fn execute_parameters_decode_with_the_bound_types() {
    // COM_STMT_EXECUTE id 1, no cursor, 2 params: int 42 and the string "x@y.z".
    let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0];
    p.push(0); // null bitmap
    p.push(1); // new params bound
    p.extend_from_slice(&[value::ty::LONGLONG, 0, value::ty::VAR_STRING, 0]);
    p.extend_from_slice(&42i64.to_le_bytes());
    p.push(5);
    p.extend_from_slice(b"x@y.z");
    let e = value::Execute::parse(&p, 2, None, &[false, false]).unwrap();
    assert_eq!(
        e.params,
        vec![Some(b"42".to_vec()), Some(b"x@y.z".to_vec())]
    );
    // A later execute that does not bind types again reuses the previous ones.
    let mut again = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0b10, 0];
    again.extend_from_slice(&7i64.to_le_bytes());
    let e2 = value::Execute::parse(&again, 2, e.types.as_deref(), &[false, false]).unwrap();
    assert_eq!(e2.params, vec![Some(b"7".to_vec()), None]);
    assert!(value::Execute::parse(&again, 2, None, &[false, false]).is_err());
}

/// go-sql-driver/mysql's vectors (auth_test.go) for caching_sha2_password.
#[test]
fn caching_sha2_scramble_matches_known_vectors() {
    let scramble = [
        10, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21,
    ];
    assert_eq!(
        crate::hex::encode(&auth::caching_sha2(b"secret", &scramble)),
        "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"
    );
    assert_eq!(
        crate::hex::encode(&auth::caching_sha2(b"secret2", &scramble)),
        "abc3934a012cf342e876071c8ee202de51785b430258a7a0138bc79c4d800bc6"
    );
    assert!(auth::caching_sha2(b"", &scramble).is_empty());
}

/// A JDBC capture (kingshard's util_test.go) for mysql_native_password, and the server's
/// check against the well-known stored hash of "password".
#[test]
fn native_password_scramble_matches_known_vectors() {
    assert_eq!(
        crate::hex::encode(&auth::native_password(
            b"kingshard",
            b"@jx=d_3z42;sS$YrS)p|"
        )),
        "fbc71db5ac3d7b51048d1a1d88c1677f34bcca11"
    );
    // mysql.user stores SHA1(SHA1(pw)): *2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19 for
    // "password". The server recovers SHA1(pw) = response XOR SHA1(scramble + stored)
    // and checks that its SHA1 is the stored hash.
    use sha1::{Digest, Sha1};
    let stored: [u8; 20] = crate::hex::decode("2470c0c06dee42fd1618bb99005adca2ec9d1e19").unwrap();
    let scramble = b"01234567890123456789";
    let response = auth::native_password(b"password", scramble);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(stored);
    let stage1: Vec<u8> = response
        .iter()
        .zip(h.finalize())
        .map(|(a, b)| a ^ b)
        .collect();
    assert_eq!(Sha1::digest(&stage1).to_vec(), stored.to_vec());
}

/// The server's own `ed25519_password("secret")` (MariaDB's documentation), and a
/// signature that verifies under that key.
#[test]
fn ed25519_key_and_signature_match_the_server() {
    use ed25519_dalek::Verifier;
    let public = auth::ed25519_public_key(b"secret");
    let stored = "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY";
    let decoded = base64_decode(stored);
    assert_eq!(public.to_vec(), decoded);
    let nonce = [0u8; 32];
    let sig = auth::ed25519(b"secret", &nonce);
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    assert!(key.verify(&nonce, &sig).is_ok());
}

/// Standard base64 without padding (as MariaDB stores ed25519 keys).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// caching_sha2_password's full authentication without TLS: what the agent sends
/// decrypts, with the server's private key and RSA-OAEP(SHA-1), to the password and its
/// NUL XORed with the 20-byte scramble (the NUL a switch appends is not part of it).
#[test]
fn rsa_full_authentication_decrypts_to_the_xored_password() {
    use rsa::pkcs8::DecodePrivateKey as _;
    let private =
        rsa::PrivateKey::from_pkcs8_pem(include_str!("testdata/rsa-test-key.pem")).unwrap();
    let public = auth::rsa_public_key(include_bytes!("testdata/rsa-test-public.pem")).unwrap();
    let scramble = b"0123456789abcdefghij\0";
    // Longer than the scramble: XORed cyclically.
    let password = b"a password longer than twenty bytes";
    let sent = auth::rsa_encrypted_password(&public, password, scramble).unwrap();
    assert_eq!(sent.len(), 256);
    let clear = private.oaep_decrypt::<sha1::Sha1>(&sent).unwrap();
    let unxored: Vec<u8> = clear
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ scramble[i % 20])
        .collect();
    assert_eq!(unxored, [&password[..], b"\0"].concat());
    // Randomised padding: never the same bytes twice.
    assert_ne!(
        auth::rsa_encrypted_password(&public, password, scramble).unwrap(),
        sent
    );
}

#[test]
fn rsa_public_keys_are_read_from_pem_or_refused_with_a_reason() {
    let spki = include_bytes!("testdata/rsa-test-public.pem");
    let pkcs1 = include_bytes!("testdata/rsa-test-public-pkcs1.pem");
    let a = auth::rsa_public_key(spki).unwrap();
    assert_eq!(auth::rsa_public_key(pkcs1).unwrap(), a);
    // As a server sends it in AuthMoreData: a trailing NUL is tolerated.
    let with_nul = [&spki[..], b"\0"].concat();
    assert_eq!(auth::rsa_public_key(&with_nul).unwrap(), a);
    let e = auth::rsa_public_key(b"hello").unwrap_err().to_string();
    assert!(e.contains("expected -----BEGIN PUBLIC KEY-----"), "{e}");
    let e = auth::rsa_public_key(include_bytes!("testdata/rsa-test-key.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a PEM public key"), "{e}");
    let e = auth::rsa_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an RSA public key in PEM"), "{e}");
    assert!(auth::rsa_public_key(&[0xff, 0xfe]).is_err());
}

/// Found by the `mysql` fuzz target: a binary TIME value's day count (4 bytes) times 24
/// overflowed u32 (a panic under overflow checks, wrapped hours otherwise).
#[test]
fn a_time_value_with_a_huge_day_count_reads_without_overflow() {
    let mut row = vec![0x00, 0x00];
    row.extend_from_slice(&[8, 0, 0xff, 0xff, 0xff, 0xff, 23, 59, 58]);
    let values = value::binary_row(&row, &[(value::ty::TIME, false)]).unwrap();
    let text = values[0].as_ref().unwrap().text.clone().unwrap();
    assert_eq!(text, b"103079215103:59:58");
    // And as a COM_STMT_EXECUTE parameter.
    let mut exec = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, value::ty::TIME, 0];
    exec.extend_from_slice(&[12, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0]);
    let e = value::Execute::parse(&exec, 1, None, &[false]).unwrap();
    assert_eq!(e.params, vec![Some(b"-103079215080:00:00.000001".to_vec())]);
}

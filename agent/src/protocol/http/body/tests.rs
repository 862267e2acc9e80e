//! Body kinds, codings, decoding, and masking of JSON / NDJSON / SSE / text bodies.
use std::io::Write;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::mask::{HashKey, MaskRule, RawMaskRule, SessionMasks, KEY_LEN, SECRET_MASK};

#[derive(Deserialize)]
struct File {
    mask: Vec<Spanned<RawMaskRule>>,
}

fn masks(text: &str) -> SessionMasks {
    let file: File = toml::from_str(text).expect("toml");
    let rules: Vec<MaskRule> = file
        .mask
        .into_iter()
        .map(|r| MaskRule::from_raw(r).expect("rule"))
        .collect();
    SessionMasks::new(rules, Arc::new(HashKey::from_bytes([7; KEY_LEN])))
}

const PII: &str = r#"
[[mask]]
name = "by-name"
columns = ["*email*", "password"]
[[mask]]
name = "content"
detectors = ["email", "credit_card", "private_key"]
strategy = "partial"
"#;

fn json(masks: &SessionMasks, body: &str) -> (String, BodyMasker) {
    let mut m = masks.body_masker();
    let out = m.mask_json(body.as_bytes(), None).expect("json");
    (
        out.map(|o| String::from_utf8(o).unwrap())
            .unwrap_or_else(|| body.to_owned()),
        m,
    )
}

#[test]
fn kinds_and_codings() {
    assert_eq!(BodyKind::of("application/json"), Some(BodyKind::Json));
    assert_eq!(
        BodyKind::of("Application/JSON; charset=utf-8"),
        Some(BodyKind::Json)
    );
    assert_eq!(
        BodyKind::of("application/problem+json"),
        Some(BodyKind::Json)
    );
    assert_eq!(BodyKind::of("application/x-ndjson"), Some(BodyKind::Ndjson));
    assert_eq!(BodyKind::of("application/jsonl"), Some(BodyKind::Ndjson));
    assert_eq!(BodyKind::of("text/event-stream"), Some(BodyKind::Sse));
    assert_eq!(BodyKind::of("text/plain"), Some(BodyKind::Text));
    assert_eq!(
        BodyKind::of("application/x-amz-json-1.1"),
        Some(BodyKind::Json)
    );
    assert_eq!(BodyKind::of("text/xml"), Some(BodyKind::Xml));
    assert_eq!(
        BodyKind::of("application/xml; charset=utf-8"),
        Some(BodyKind::Xml)
    );
    assert_eq!(BodyKind::of("application/atom+xml"), Some(BodyKind::Xml));
    assert_eq!(BodyKind::of("image/png"), None);
    assert_eq!(BodyKind::of("application/octet-stream"), None);
    assert_eq!(BodyKind::of("garbage"), None);

    assert_eq!(Coding::of([]), Ok(Coding::Identity));
    assert_eq!(Coding::of(["identity"]), Ok(Coding::Identity));
    assert_eq!(Coding::of(["GZIP"]), Ok(Coding::Gzip));
    assert_eq!(Coding::of(["br"]), Ok(Coding::Br));
    assert_eq!(Coding::of(["deflate"]), Ok(Coding::Deflate));
    assert!(Coding::of(["zstd"]).unwrap_err().contains("zstd"));
    assert!(Coding::of(["gzip, br"]).is_err());
    assert!(Coding::of(["gzip", "gzip"]).is_err());
}

#[test]
fn json_member_names_match_at_any_depth() {
    let m = masks(PII);
    let (out, masker) = json(
        &m,
        r#"{"user": {"id": 7, "contact": {"work_email": "bob", "Password": 12345, "tags": ["a"]}}, "password": null}"#,
    );
    assert_eq!(
        out,
        r#"{"user": {"id": 7, "contact": {"work_email": "[redacted]", "Password": "[redacted]", "tags": ["a"]}}, "password": null}"#
    );
    let masked = masker.masked();
    assert_eq!(masked.len(), 1);
    assert_eq!(masked[0].rule, "by-name");
    assert_eq!(masked[0].values, 2);
}

#[test]
fn a_matching_member_holding_an_object_is_masked_whole() {
    let m = masks(PII);
    let (out, _) = json(&m, r#"[{"email": {"a": "x@y.org", "b": [1, "}"]}}, 3]"#);
    assert_eq!(out, r#"[{"email": "[redacted]"}, 3]"#);
}

#[test]
fn detectors_read_every_string_and_card_numbers() {
    let m = masks(PII);
    let (out, masker) = json(
        &m,
        r#"{"note": "write to alice@example.com now", "list": ["carol@example.org"], "card": 4111111111111111, "n": 42, "ok": true}"#,
    );
    assert!(!out.contains("alice@example.com"), "{out}");
    assert!(!out.contains("carol@example.org"), "{out}");
    assert!(!out.contains("4111111111111111"), "{out}");
    assert!(out.contains(r#""card": "************1111""#), "{out}");
    assert!(out.contains(r#""n": 42, "ok": true"#), "{out}");
    serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
    assert_eq!(masker.masked_total(), 3);
}

#[test]
fn escaped_strings_are_read_decoded() {
    let m = masks(PII);
    // `\u0040` is '@': the detector sees the decoded text.
    let (out, _) = json(&m, r#"{"x": "mail alice\u0040example.com \"quoted\""}"#);
    assert!(!out.contains("alice"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["x"].as_str().unwrap().ends_with("\"quoted\""));
}

#[test]
fn member_names_are_scanned_too() {
    let m = masks(PII);
    let (out, _) = json(&m, r#"{"alice@example.com": 1}"#);
    assert!(!out.contains("alice@example.com"), "{out}");
}

#[test]
fn unchanged_json_is_not_copied() {
    let m = masks(PII);
    let mut masker = m.body_masker();
    assert_eq!(
        masker.mask_json(br#"{"a": [1, 2.5e3, "x"]}"#, None),
        Ok(None)
    );
}

#[test]
fn invalid_json_is_an_error() {
    let m = masks(PII);
    let mut masker = m.body_masker();
    assert!(masker.mask_json(br#"{"email": "x""#, None).is_err());
    assert!(masker.mask_json(b"{} trailing", None).is_err());
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert!(masker.mask_json(deep.as_bytes(), None).is_err());
}

#[test]
fn the_secret_is_masked_in_strings_and_text() {
    let m = SessionMasks::none();
    let mut masker = m.body_masker();
    let out = masker
        .mask_json(br#"{"echo": "Bearer tok-123", "k": "x"}"#, Some(b"tok-123"))
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(r#"{{"echo": "Bearer {SECRET_MASK}", "k": "x"}}"#)
    );
    let text = masker.mask_text(b"a tok-123 b tok-123", Some(b"tok-123"));
    assert_eq!(
        text.unwrap(),
        format!("a {SECRET_MASK} b {SECRET_MASK}").into_bytes()
    );
    assert_eq!(masker.secret_echoes(), 3);
}

fn lines(kind: BodyKind, masks: &SessionMasks, chunks: &[&str]) -> Result<String, BodyError> {
    let mut masker = masks.body_masker();
    let mut lm = LineMasker::new(kind, 64);
    let mut out = Vec::new();
    for chunk in chunks {
        lm.push(chunk.as_bytes(), &mut masker, None, &mut out)?;
    }
    lm.finish(&mut masker, None, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn ndjson_is_masked_line_by_line_across_chunks() {
    let m = masks(PII);
    let out = lines(
        BodyKind::Ndjson,
        &m,
        &[
            "{\"email\": \"a\"}\n{\"x\":",
            " \"bob@example.com\"}\r\n\n{\"y\": 1}",
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        "{\"email\": \"[redacted]\"}\n{\"x\": \"***********.com\"}\r\n\n{\"y\": 1}"
    );
    let err = lines(BodyKind::Ndjson, &m, &["{\"a\": 1}\nnot json\n"]).unwrap_err();
    assert!(
        matches!(err, BodyError::NdjsonLine { line: 2, .. }),
        "{err}"
    );
}

#[test]
fn sse_data_lines_are_masked_as_json_or_text() {
    let m = masks(PII);
    let out = lines(
        BodyKind::Sse,
        &m,
        &[
            "event: user\ndata: {\"email\": \"x\"}\n\n",
            "data:mail bob@example.com\n: comment carol@example.org\n\n",
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        "event: user\ndata: {\"email\": \"[redacted]\"}\n\ndata:mail ***********.com\n: comment *************.org\n\n"
    );
}

#[test]
fn a_partial_line_waits_and_a_long_one_is_refused() {
    let m = masks(PII);
    let mut masker = m.body_masker();
    let mut lm = LineMasker::new(BodyKind::Text, 64);
    let mut out = Vec::new();
    lm.push(b"first line\nsecond ", &mut masker, None, &mut out)
        .unwrap();
    assert_eq!(out, b"first line\n");
    lm.push(b"line\n", &mut masker, None, &mut out).unwrap();
    assert_eq!(out, b"first line\nsecond line\n");
    let err = lm
        .push(&[b'x'; 100], &mut masker, None, &mut out)
        .unwrap_err();
    assert_eq!(err, BodyError::LineTooLong { limit: 64 });
}

#[test]
fn a_multi_line_private_key_in_text_is_dropped() {
    let m = masks(PII);
    let mut masker = m.body_masker();
    let mut lm = LineMasker::new(BodyKind::Text, 1024);
    let mut out = Vec::new();
    let text = "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nsecretbase64\n-----END RSA PRIVATE KEY-----\nafter\n";
    lm.push(text.as_bytes(), &mut masker, None, &mut out)
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("MIIEpAIBAAKCAQEA"), "{out}");
    assert!(!out.contains("secretbase64"), "{out}");
    assert!(
        out.starts_with("before\n") && out.ends_with("after\n"),
        "{out}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn decode_all(coding: Coding, data: &[u8], cap: usize) -> Result<Vec<u8>, BodyError> {
    let mut d = Decoder::new(coding, cap, cap as u64);
    let mut out = Vec::new();
    // Byte by byte: decoders must carry state across any split.
    for b in data {
        d.feed(std::slice::from_ref(b))?;
        out.extend(d.take());
    }
    d.finish()?;
    out.extend(d.take());
    Ok(out)
}

#[test]
fn codings_decode_split_anywhere() {
    let text = b"{\"email\": \"alice@example.com\"}".repeat(50);
    assert_eq!(
        decode_all(Coding::Gzip, &gzip(&text), 1 << 20).unwrap(),
        text
    );

    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&text).unwrap();
    assert_eq!(
        decode_all(Coding::Deflate, &z.finish().unwrap(), 1 << 20).unwrap(),
        text
    );
    let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    raw.write_all(&text).unwrap();
    assert_eq!(
        decode_all(Coding::Deflate, &raw.finish().unwrap(), 1 << 20).unwrap(),
        text
    );

    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        w.write_all(&text).unwrap();
    }
    assert_eq!(decode_all(Coding::Br, &br, 1 << 20).unwrap(), text);
    assert_eq!(decode_all(Coding::Identity, &text, 1 << 20).unwrap(), text);
}

#[test]
fn a_bomb_stops_at_the_cap_and_truncation_is_an_error() {
    let zeros = vec![0u8; 10 << 20];
    let bomb = gzip(&zeros);
    let mut d = Decoder::new(Coding::Gzip, 1 << 20, 1 << 20);
    assert_eq!(d.feed(&bomb), Err(BodyError::TooLarge { limit: 1 << 20 }));

    let short = gzip(b"hello world, hello world");
    let err = decode_all(Coding::Gzip, &short[..short.len() - 4], 1024).unwrap_err();
    assert!(matches!(err, BodyError::Decode { .. }), "{err}");
    let err = decode_all(Coding::Gzip, b"not gzip at all", 1024).unwrap_err();
    assert!(matches!(err, BodyError::Decode { .. }), "{err}");
}

#[test]
fn mask_whole_bounds_and_masks() {
    let m = masks(PII);
    let mut masker = m.body_masker();
    let body = br#"{"email": "alice@example.com"}"#;
    assert_eq!(
        mask_whole(BodyKind::Json, body, 10, &mut masker, None),
        Err(BodyError::TooLarge { limit: 10 })
    );
    let out = mask_whole(BodyKind::Json, body, 1000, &mut masker, None)
        .unwrap()
        .unwrap();
    assert_eq!(out, br#"{"email": "[redacted]"}"#);
    assert!(matches!(
        mask_whole(BodyKind::Json, b"<html>", 1000, &mut masker, None),
        Err(BodyError::NotJson(_))
    ));
}

#[test]
fn excerpts_are_bounded_on_a_character() {
    let mut e = Excerpt::new(5);
    e.push("abcdé".as_bytes());
    assert!(e.truncated());
    assert_eq!(e.text(), "abcd");
    let mut e = Excerpt::new(100);
    e.push(b"short");
    assert!(!e.truncated());
    assert_eq!(e.text(), "short");
}

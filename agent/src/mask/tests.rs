//! Tests of masking: each detector (matches and near misses), each strategy, rows in
//! text and binary formats (every rewritten frame decoded again by the real decoder),
//! rule validation, and the key file.

use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use toml::Spanned;

use super::detect::{scan, Detector, DetectorSet};
use super::*;
use crate::protocol::postgres::encode::mask_data_row;
use crate::protocol::postgres::{encode, BackendDecoder, BackendMessage, DataRow};

// ---------------------------------------------------------------------------------------
// Helpers

#[derive(Deserialize)]
struct File {
    mask: Vec<Spanned<RawMaskRule>>,
}

/// Parses a configuration text holding `[[mask]]` tables and validates each.
fn parse(text: &str) -> Result<Vec<MaskRule>, MaskProblem> {
    let file: File = toml::from_str(text).map_err(|e| MaskProblem {
        span: e.span(),
        message: e.message().to_owned(),
    })?;
    file.mask.into_iter().map(MaskRule::from_raw).collect()
}

fn rules(text: &str) -> Vec<MaskRule> {
    match parse(text) {
        Ok(rules) => rules,
        Err(p) => panic!("rules should parse: {} at {:?}", p.message, p.span),
    }
}

/// The problem a configuration text has, and the text its span points at.
fn problem(text: &str) -> (String, Option<String>) {
    match parse(text) {
        Ok(_) => panic!("expected a problem in:\n{text}"),
        Err(p) => (p.message, p.span.map(|s| text[s].to_owned())),
    }
}

fn key(byte: u8) -> Arc<HashKey> {
    Arc::new(HashKey::from_bytes([byte; KEY_LEN]))
}

fn masks(text: &str) -> SessionMasks {
    SessionMasks::new(rules(text), key(7))
}

/// The substrings `detector` finds in `text`.
fn found(detector: Detector, text: &str) -> Vec<String> {
    let mut hits = Vec::new();
    scan(text.as_bytes(), [detector].into_iter().collect(), &mut hits);
    for (_, d) in &hits {
        assert_eq!(*d, detector);
    }
    hits.into_iter().map(|(r, _)| text[r].to_owned()).collect()
}

fn assert_found(detector: Detector, text: &str, expected: &[&str]) {
    assert_eq!(found(detector, text), expected, "{detector:?} in {text:?}");
}

fn assert_none(detector: Detector, text: &str) {
    assert_eq!(
        found(detector, text),
        Vec::<String>::new(),
        "{detector:?} in {text:?}"
    );
}

/// A DataRow as the decoder produces it from the frame of these values.
fn data_row(values: &[Option<&[u8]>]) -> DataRow {
    match decode_frame(&encode::data_row(values)) {
        BackendMessage::DataRow(row) => row,
        other => panic!("not a DataRow: {other:?}"),
    }
}

/// Decodes one whole frame with the real decoder; the frame must be consumed whole.
fn decode_frame(frame: &Bytes) -> BackendMessage {
    let mut buf = BytesMut::from(&frame[..]);
    let decoded = BackendDecoder::new()
        .decode(&mut buf)
        .expect("a valid frame")
        .expect("a whole frame");
    assert!(buf.is_empty(), "the frame is exactly one message");
    decoded.message
}

/// The values of a rewritten frame, decoded again.
fn values_of(frame: &Bytes) -> Vec<Option<Vec<u8>>> {
    match decode_frame(frame) {
        BackendMessage::DataRow(row) => row.values().map(|v| v.map(<[u8]>::to_vec)).collect(),
        other => panic!("not a DataRow: {other:?}"),
    }
}

fn text_col(name: &str) -> ColumnInfo<'_> {
    ColumnInfo {
        name,
        type_oid: 25,
        format: 0,
    }
}

fn col(name: &str, type_oid: u32, format: i16) -> ColumnInfo<'_> {
    ColumnInfo {
        name,
        type_oid,
        format,
    }
}

fn s(v: &Option<Vec<u8>>) -> &str {
    std::str::from_utf8(v.as_deref().expect("not NULL")).expect("UTF-8")
}

/// A number whose last digit makes it Luhn-valid, computed independently of the
/// detector (sum from the right, doubling every second digit of the payload).
fn luhn_complete(payload: &str) -> String {
    let mut sum = 0;
    for (i, c) in payload.chars().rev().enumerate() {
        let d = c.to_digit(10).expect("digits");
        sum += if i % 2 == 0 {
            (d * 2) / 10 + (d * 2) % 10
        } else {
            d
        };
    }
    format!("{payload}{}", (10 - sum % 10) % 10)
}

fn b64url(data: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

// ---------------------------------------------------------------------------------------
// Detectors

#[test]
fn email_matches_addresses() {
    use Detector::Email;
    assert_found(Email, "alice@example.com", &["alice@example.com"]);
    assert_found(
        Email,
        "mail <a.b+tag@sub.example.co.uk>, then bob_99@x-y.org.",
        &["a.b+tag@sub.example.co.uk", "bob_99@x-y.org"],
    );
    assert_found(
        Email,
        "[\"x@example.com\",\"y@example.net\"]",
        &["x@example.com", "y@example.net"],
    );
}

#[test]
fn email_near_misses() {
    use Detector::Email;
    for text in [
        "user@localhost",
        "pkg@1.2.3",
        "@handle",
        "a@b.c",
        "foo@-bar.com",
        "name@domain.",
        "x@.com",
        "no at sign here.com",
        "@",
    ] {
        assert_none(Email, text);
    }
}

#[test]
fn credit_card_matches_luhn_valid_numbers() {
    use Detector::CreditCard;
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "5555555555554444",
        "6011111111111117",
        "4222222222222",
    ] {
        assert_found(CreditCard, &format!("card: {card}."), &[card]);
    }
    // After other numbers of the same run, the card is still found alone.
    assert_found(
        CreditCard,
        "call 555 1234 4111 1111 1111 1111 now",
        &["4111 1111 1111 1111"],
    );
    // 19 digits (some Visa and UnionPay numbers).
    let long = luhn_complete("621234567890123456");
    assert_found(CreditCard, &long, &[&long]);
}

#[test]
fn credit_card_near_misses() {
    use Detector::CreditCard;
    let snowflake = luhn_complete("117592847123456789");
    for text in [
        "4111111111111112",       // Luhn fails
        "411111111111",           // 12 digits
        "41111111111111111111",   // 20 digits, not a card
        "x4111111111111111",      // glued to a word
        "4111111111111111abc",    // glued to a word
        "4111  1111 1111 1111",   // two separators in a row split the run
        "order 2024-01-15 12:30", // dates
        snowflake.as_str(),       // Luhn-valid, but starts with 1 (an id)
        "0000000000000000",       // Luhn-valid zeros
    ] {
        assert_none(CreditCard, text);
    }
    assert_eq!(snowflake.len(), 19);
}

#[test]
fn iban_matches_mod97_valid_numbers() {
    use Detector::Iban;
    for iban in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "NL91ABNA0417164300",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ] {
        assert_found(Iban, &format!("pay to {iban} EUR"), &[iban]);
    }
}

#[test]
fn iban_near_misses() {
    use Detector::Iban;
    for text in [
        "DE88370400440532013000",      // check digits wrong
        "DE8937040044053201300",       // one character short
        "DE893704004405320130001",     // one too many
        "XX89370400440532013000",      // no such country
        "de89370400440532013000",      // lower case
        "ADE89370400440532013000",     // glued to a letter
        "DE89 37040 044 0532 0130 00", // spaces not in groups of four
    ] {
        assert_none(Iban, text);
    }
}

#[test]
fn us_ssn_matches_issued_ranges() {
    use Detector::UsSsn;
    assert_found(UsSsn, "ssn 123-45-6789.", &["123-45-6789"]);
    assert_found(UsSsn, "078-05-1120", &["078-05-1120"]);
    assert_found(UsSsn, "a 899-99-9999 b", &["899-99-9999"]);
}

#[test]
fn us_ssn_near_misses() {
    use Detector::UsSsn;
    for text in [
        "000-12-3456",   // area 000
        "666-12-3456",   // area 666
        "900-12-3456",   // area 9xx
        "123-00-4567",   // group 00
        "123-45-0000",   // serial 0000
        "1123-45-6789",  // longer
        "123-45-67890",  // longer
        "123-45-6789-1", // part of a longer number
        "9-123-45-6789", // part of a longer number
        "2023-01-15",    // a date
        "123456789",     // no dashes
        "12a-45-6789",
    ] {
        assert_none(UsSsn, text);
    }
}

#[test]
fn phone_matches_formatted_numbers() {
    use Detector::Phone;
    for phone in [
        "+1 415 555 2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+49 (30) 1234567",
        "+33 1-23-45-67-89",
        "(415) 555-2671",
        "(415)555-2671",
        "415-555-2671",
        "415.555.2671",
        "415 555 2671",
        "1-800-555-0199",
        "1 (800) 555-0199",
    ] {
        assert_found(Phone, &format!("tel: {phone}."), &[phone]);
    }
}

#[test]
fn phone_near_misses() {
    use Detector::Phone;
    for text in [
        "4155552671",    // a bare run of digits
        "+1234567",      // 7 digits
        "+0123456789",   // E.164 country codes do not start with 0
        "1+14155552671", // arithmetic
        "version 1.2.3.4",
        "2023-10-12",
        "192.168.100.200",
        "015-555-2671",    // area codes start with 2-9
        "415-155-2671",    // exchanges start with 2-9
        "415-555.2671",    // mixed separators
        "12-415-555-2671", // part of a longer number
        "415-555-2671-99", // part of a longer number
        "id 4155552671000",
    ] {
        assert_none(Phone, text);
    }
}

fn jwt_of(header: &str, payload: &str, signature: &str) -> String {
    format!("{}.{}.{signature}", b64url(header), b64url(payload))
}

#[test]
fn jwt_matches_tokens_with_alg() {
    use Detector::Jwt;
    let token = jwt_of(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"sub":"1234567890"}"#,
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    );
    assert_found(Jwt, &format!("Authorization: Bearer {token}"), &[&token]);
    // typ first: the header still starts "eyJ".
    let typ_first = jwt_of(r#"{"typ":"JWT","alg":"RS256"}"#, "{}", "c2ln");
    assert_found(Jwt, &typ_first, &[&typ_first]);
    // An unsigned token (alg none) has an empty third segment.
    let unsigned = jwt_of(r#"{"alg":"none"}"#, r#"{"a":1}"#, "");
    assert_found(Jwt, &format!("t={unsigned} x"), &[&unsigned]);
    // JWE: five segments, all masked.
    let jwe = format!(
        "{}.a2V5.aXY.Y2lwaGVy.dGFn",
        b64url(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)
    );
    assert_found(Jwt, &jwe, &[&jwe]);
}

#[test]
fn jwt_near_misses() {
    use Detector::Jwt;
    let no_alg = jwt_of(r#"{"typ":"JWT"}"#, "{}", "c2ln");
    let two = format!("{}.{}", b64url(r#"{"alg":"HS256"}"#), b64url("{}"));
    let not_json = format!("eyJub3QganNvbg.{}.c2ln", b64url("{}"));
    for text in [
        no_alg.as_str(),
        two.as_str(),
        not_json.as_str(),
        "eyJhbGciOi",
        "x.eyJ.y",
    ] {
        assert_none(Jwt, text);
    }
}

#[test]
fn aws_key_matches_ids_and_labelled_secrets() {
    use Detector::AwsKey;
    assert_found(
        AwsKey,
        "key=AKIAIOSFODNN7EXAMPLE;",
        &["AKIAIOSFODNN7EXAMPLE"],
    );
    assert_found(AwsKey, "ASIAY34FZKBOKMUTVV7A", &["ASIAY34FZKBOKMUTVV7A"]);
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for labelled in [
        format!("aws_secret_access_key = {secret}"),
        format!("AWS_SECRET_ACCESS_KEY={secret}"),
        format!("{{\"SecretAccessKey\": \"{secret}\"}}"),
    ] {
        assert_found(AwsKey, &labelled, &[secret]);
    }
}

#[test]
fn aws_key_near_misses() {
    use Detector::AwsKey;
    for text in [
        "AKIAIOSFODNN7EXAMPL",                      // 19
        "AKIAIOSFODNN7EXAMPLEX",                    // 21
        "XAKIAIOSFODNN7EXAMPLE",                    // glued
        "akiaiosfodnn7example",                     // lower case
        "AKIAiosfodnn7EXAMPLE",                     // lower case body
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", // a secret without a label
        "secret_access_key = short",
        "secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYTOOLONG",
    ] {
        assert_none(AwsKey, text);
    }
}

#[test]
fn gcp_key_matches_api_keys() {
    use Detector::GcpKey;
    let key = format!("AIza{}", "SyD-aGmWKa4JsXZ_HjGw7ISLn3namBGewQe");
    assert_eq!(key.len(), 39);
    assert_found(GcpKey, &format!("?key={key}&x=1"), &[&key]);
}

#[test]
fn gcp_key_near_misses() {
    use Detector::GcpKey;
    let body = "SyD-aGmWKa4JsXZ_HjGw7ISLn3namBGewQe";
    for text in [
        format!("AIza{}", &body[1..]), // 34
        format!("AIza{body}x"),        // 36
        format!("xAIza{body}"),        // glued
        format!("AIZA{body}"),         // wrong case
    ] {
        assert_none(GcpKey, &text);
    }
}

#[test]
fn github_token_matches_tokens() {
    use Detector::GithubToken;
    let body = "aBcD1234eFgH5678iJkL9012mNoP3456qRsT";
    assert_eq!(body.len(), 36);
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        let token = format!("{prefix}{body}");
        assert_found(GithubToken, &format!("token {token}\n"), &[&token]);
    }
    let pat =
        "github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123";
    assert_found(GithubToken, &format!("GH_TOKEN={pat}"), &[pat]);
}

#[test]
fn github_token_near_misses() {
    use Detector::GithubToken;
    let body = "aBcD1234eFgH5678iJkL9012mNoP3456qRsT";
    for text in [
        format!("ghp_{}", &body[1..]), // 35
        format!("ghx_{body}"),         // unknown kind
        format!("xghp_{body}"),        // glued
        format!("ghp_{body}_more"),    // continues as a word
        "github_pat_short".to_owned(),
    ] {
        assert_none(GithubToken, &text);
    }
}

#[test]
fn private_key_matches_pem_blocks() {
    use Detector::PrivateKey;
    for label in [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ] {
        let pem =
            format!("-----BEGIN {label}-----\nMIIEvQIBADANBgkq\nhkiG9w0B\n-----END {label}-----");
        assert_found(PrivateKey, &format!("key:\n{pem}\nrest"), &[&pem]);
    }
    // In service-account JSON the newlines are escapes; the key ends at its END line.
    let json = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n","client_email":"x"}"#;
    assert_found(
        PrivateKey,
        json,
        &[r#"-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----"#],
    );
    // Truncated: to the end of the value, or of the JSON string it is in.
    assert_found(
        PrivateKey,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow",
        &["-----BEGIN RSA PRIVATE KEY-----\nMIIEow"],
    );
    assert_found(
        PrivateKey,
        r#"{"k":"-----BEGIN PRIVATE KEY-----\nMIIE","n":1}"#,
        &[r#"-----BEGIN PRIVATE KEY-----\nMIIE"#],
    );
}

#[test]
fn private_key_near_misses() {
    use Detector::PrivateKey;
    for text in [
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "-----BEGIN PRIVATE KEY (no dashes)",
        "BEGIN PRIVATE KEY",
    ] {
        assert_none(PrivateKey, text);
    }
}

#[test]
fn overlapping_matches_merge_into_one_range() {
    // A US phone number shape inside an E.164 one, and an e-mail whose local part is
    // digits: each byte is masked once, nothing is left between overlapping hits.
    let all: DetectorSet = Detector::ALL.into_iter().collect();
    let mut hits = Vec::new();
    let text = "+1 415-555-2671";
    scan(text.as_bytes(), all, &mut hits);
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(&text[hits[0].0.clone()], text);
}

// ---------------------------------------------------------------------------------------
// Strategies

#[test]
fn redact_is_a_fixed_marker() {
    let k = key(1);
    assert_eq!(Strategy::Redact.apply(b"x", &k), b"[redacted]");
    assert_eq!(
        Strategy::Redact.apply(b"a much longer secret value", &k),
        Strategy::Redact.apply(b"x", &k),
        "the marker must not reveal the length"
    );
}

#[test]
fn partial_keeps_the_last_characters() {
    let k = key(1);
    let p = |keep, v: &str| {
        String::from_utf8(Strategy::Partial { keep }.apply(v.as_bytes(), &k)).expect("UTF-8")
    };
    assert_eq!(p(4, "4111111111111111"), "************1111");
    assert_eq!(p(0, "secret"), "******");
    assert_eq!(p(2, "héllo wörld"), "*********ld");
    assert_eq!(p(3, "wörld"), "**rld");
    assert_eq!(
        p(3, "päß"),
        "***",
        "a value no longer than keep is hidden whole"
    );
    assert_eq!(p(4, ""), "");
}

#[test]
fn hash_is_keyed_stable_and_truncated() {
    let (k1, k2) = (key(1), key(2));
    let h = |k: &HashKey, v: &[u8]| String::from_utf8(Strategy::Hash.apply(v, k)).expect("UTF-8");
    let a = h(&k1, b"alice@example.com");
    assert_eq!(a, h(&k1, b"alice@example.com"), "equal values stay equal");
    assert_ne!(a, h(&k1, b"bob@example.com"));
    assert_ne!(
        a,
        h(&k2, b"alice@example.com"),
        "another host key, another hash"
    );
    // The expected form, from the HMAC computed here.
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[1; KEY_LEN]).unwrap();
    mac.update(b"alice@example.com");
    let digest = mac.finalize().into_bytes();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(a, format!("hmac:{hex}"));
    assert_eq!(a.len(), 5 + 16);
}

// ---------------------------------------------------------------------------------------
// Rows

const CONTACT: &str = r#"
[[mask]]
name = "contact"
columns = ["email", "*_email", "card*"]
detectors = ["credit_card"]
"#;

#[test]
fn text_row_masks_columns_and_detected_substrings() {
    let m = masks(CONTACT);
    let mut plan = m.plan(&[
        col("id", 23, 0),
        text_col("EMAIL"),
        text_col("note"),
        text_col("Work_Email"),
        col("total", 20, 0),
    ]);
    assert!(!plan.is_noop());
    let row = data_row(&[
        Some(b"1"),
        Some(b"alice@example.com"),
        Some(b"paid with 4111 1111 1111 1111, thanks"),
        None,
        Some(b"4111111111111111"),
    ]);
    let frame = mask_data_row(&mut plan, &row).expect("changed");
    let v = values_of(&frame);
    assert_eq!(s(&v[0]), "1");
    assert_eq!(s(&v[1]), "[redacted]");
    assert_eq!(s(&v[2]), "paid with [redacted], thanks");
    assert_eq!(v[3], None, "NULL stays NULL");
    // A text-format int8 holding a card number becomes the marker.
    assert_eq!(s(&v[4]), "[redacted]");
    assert_eq!(
        plan.masked_columns(),
        vec![
            MaskedColumn {
                column: "EMAIL".into(),
                rule: "contact".into(),
                strategy: "redact".into(),
                values: 1
            },
            MaskedColumn {
                column: "note".into(),
                rule: "contact".into(),
                strategy: "redact".into(),
                values: 1
            },
            MaskedColumn {
                column: "total".into(),
                rule: "contact".into(),
                strategy: "redact".into(),
                values: 1
            },
        ]
    );
    // A clean row is not rebuilt, and NULLs are not counted.
    let clean = data_row(&[Some(b"2"), None, Some(b"nothing here"), None, Some(b"17")]);
    assert_eq!(mask_data_row(&mut plan, &clean), None);
    assert_eq!(plan.masked_columns()[0].values, 1);
}

#[test]
fn noop_plans_skip_everything() {
    let m = masks(
        r#"
[[mask]]
name = "ssn"
columns = ["ssn"]
"#,
    );
    let mut plan = m.plan(&[text_col("id"), text_col("name")]);
    assert!(plan.is_noop());
    let row = data_row(&[Some(b"123-45-6789"), Some(b"alice@example.com")]);
    assert_eq!(mask_data_row(&mut plan, &row), None);
    assert!(plan.masked_columns().is_empty());
    assert!(SessionMasks::none().plan(&[text_col("email")]).is_noop());
    assert!(SessionMasks::none().is_empty());
    assert!(!m.is_empty());
}

#[test]
fn detectors_make_a_plan_active_even_without_column_rules() {
    let m = masks("[[mask]]\nname = \"d\"\ndetectors = [\"email\"]\n");
    let mut plan = m.plan(&[text_col("a")]);
    assert!(!plan.is_noop());
    assert_eq!(mask_data_row(&mut plan, &data_row(&[Some(b"plain")])), None);
    // Binary columns of types detectors cannot read leave nothing to do, and neither
    // do text forms that cannot hold any detector's shape (timestamps, ints, uuids).
    assert!(m.plan(&[col("n", 23, 1), col("t", 1114, 1)]).is_noop());
    assert!(m
        .plan(&[col("at", 1184, 0), col("n", 23, 0), col("u", 2950, 0)])
        .is_noop());
}

#[test]
fn numeric_text_columns_are_scanned_for_cards_only() {
    let m = masks("[[mask]]\nname = \"d\"\ndetectors = [\"all\"]\n");
    let mut plan = m.plan(&[col("n", 1700, 0), col("i", 20, 0), col("t", 25, 0)]);
    let row = data_row(&[
        Some(b"4111111111111111"),
        Some(b"5555555555554444"),
        Some(b"4111111111111111"),
    ]);
    let v = values_of(&mask_data_row(&mut plan, &row).expect("changed"));
    assert!(v.iter().all(|x| s(x) == "[redacted]"), "{v:?}");
    // A numeric that is not a card is left alone.
    let row = data_row(&[Some(b"1234567890123.45"), Some(b"17"), Some(b"x")]);
    assert_eq!(mask_data_row(&mut plan, &row), None);
}

#[test]
fn each_strategy_on_rows() {
    let m = masks(
        r#"
[[mask]]
name = "cards"
columns = ["card"]
strategy = "partial"
keep = 4

[[mask]]
name = "emails"
columns = ["email"]
detectors = ["email"]
strategy = "hash"
"#,
    );
    let mut plan = m.plan(&[text_col("card"), text_col("email"), text_col("note")]);
    let row = data_row(&[
        Some(b"4111111111111111"),
        Some(b"alice@example.com"),
        Some(b"from alice@example.com to x"),
    ]);
    let v = values_of(&mask_data_row(&mut plan, &row).expect("changed"));
    assert_eq!(s(&v[0]), "************1111");
    let hashed = s(&v[1]).to_owned();
    assert!(
        hashed.starts_with("hmac:") && hashed.len() == 21,
        "{hashed}"
    );
    // The same address hashes the same whole or inside text: joinable.
    assert_eq!(s(&v[2]), format!("from {hashed} to x"));
    let stats = plan.masked_columns();
    assert_eq!(
        stats
            .iter()
            .map(|c| (
                c.column.as_str(),
                c.rule.as_str(),
                c.strategy.as_ref(),
                c.values
            ))
            .collect::<Vec<_>>(),
        vec![
            ("card", "cards", "partial", 1),
            ("email", "emails", "hash", 1),
            ("note", "emails", "hash", 1)
        ]
    );
}

#[test]
fn hashes_are_stable_across_sessions_and_separate_across_keys() {
    let text = "[[mask]]\nname = \"h\"\ncolumns = [\"email\"]\nstrategy = \"hash\"\n";
    let run = |k: Arc<HashKey>| {
        let m = SessionMasks::new(rules(text), k);
        let mut plan = m.plan(&[text_col("email")]);
        let frame =
            mask_data_row(&mut plan, &data_row(&[Some(b"alice@example.com")])).expect("changed");
        s(&values_of(&frame)[0]).to_owned()
    };
    assert_eq!(run(key(3)), run(key(3)));
    assert_ne!(run(key(3)), run(key(4)));
}

#[test]
fn first_rule_wins_for_columns_and_detectors() {
    let m = masks(
        r#"
[[mask]]
name = "first"
columns = ["e*"]
detectors = ["email"]

[[mask]]
name = "second"
columns = ["email"]
detectors = ["email", "us_ssn"]
strategy = "hash"
"#,
    );
    let mut plan = m.plan(&[text_col("email"), text_col("note")]);
    let row = data_row(&[Some(b"a@example.com"), Some(b"b@example.com 123-45-6789")]);
    let v = values_of(&mask_data_row(&mut plan, &row).expect("changed"));
    assert_eq!(s(&v[0]), "[redacted]");
    let note = s(&v[1]);
    assert!(note.starts_with("[redacted] hmac:"), "{note}");
    let rules: Vec<_> = plan
        .masked_columns()
        .into_iter()
        .map(|c| (c.column, c.rule))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("email".to_owned(), "first".to_owned()),
            ("note".to_owned(), "first".to_owned()),
            ("note".to_owned(), "second".to_owned()),
        ]
    );
}

#[test]
fn binary_columns_masked_whole_keep_their_type() {
    let m = masks("[[mask]]\nname = \"all\"\ncolumns = [\"*\"]\n");
    let columns = [
        col("t", 25, 1),
        col("v", 1043, 1),
        col("i2", 21, 1),
        col("i4", 23, 1),
        col("i8", 20, 1),
        col("f4", 700, 1),
        col("f8", 701, 1),
        col("b", 16, 1),
        col("num", 1700, 1),
        col("ts", 1114, 1),
        col("jb", 3802, 1),
        col("j", 114, 1),
        col("raw", 17, 1),
        col("hex", 17, 0),
        col("jt", 3802, 0),
    ];
    let mut plan = m.plan(&columns);
    let jsonb = [&[1u8][..], br#"{"a":"secret"}"#].concat();
    let numeric = [0u8, 1, 0, 0, 0, 0, 0, 0, 0, 42];
    let row = data_row(&[
        Some(b"secret"),
        Some(b"secret"),
        Some(&7i16.to_be_bytes()),
        Some(&7i32.to_be_bytes()),
        Some(&4111111111111111i64.to_be_bytes()),
        Some(&1.5f32.to_be_bytes()),
        Some(&1.5f64.to_be_bytes()),
        Some(&[1]),
        Some(&numeric),
        Some(&123456789i64.to_be_bytes()),
        Some(&jsonb),
        Some(br#"{"a":"secret"}"#),
        Some(b"\x00\x01secret"),
        Some(b"\\x736563726574"),
        Some(br#"{"a": "secret"}"#),
    ]);
    let v = values_of(&mask_data_row(&mut plan, &row).expect("changed"));
    assert_eq!(s(&v[0]), "[redacted]");
    assert_eq!(s(&v[1]), "[redacted]");
    assert_eq!(v[2].as_deref(), Some(&0i16.to_be_bytes()[..]));
    assert_eq!(v[3].as_deref(), Some(&0i32.to_be_bytes()[..]));
    assert_eq!(v[4].as_deref(), Some(&0i64.to_be_bytes()[..]));
    assert_eq!(v[5].as_deref(), Some(&0f32.to_be_bytes()[..]));
    assert_eq!(v[6].as_deref(), Some(&0f64.to_be_bytes()[..]));
    assert_eq!(v[7].as_deref(), Some(&[0u8][..]), "bool false");
    // numeric 0: ndigits 0, weight 0, sign +, dscale 0.
    assert_eq!(v[8].as_deref(), Some(&[0u8; 8][..]));
    assert_eq!(v[9], None, "a type without a trivial value becomes NULL");
    let jb = v[10].as_deref().expect("jsonb");
    assert_eq!(jb[0], 1, "jsonb version byte");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&jb[1..]).expect("valid JSON"),
        serde_json::json!("[redacted]")
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(v[11].as_deref().expect("json"))
            .expect("valid JSON"),
        serde_json::json!("[redacted]")
    );
    assert_eq!(s(&v[12]), "[redacted]");
    let hex = s(&v[13]).strip_prefix("\\x").expect("bytea hex format");
    let decoded: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(decoded, b"[redacted]");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(s(&v[14])).expect("valid JSON"),
        serde_json::json!("[redacted]")
    );
    // Every value counted once, including the one that became NULL.
    let stats = plan.masked_columns();
    assert_eq!(stats.len(), columns.len());
    assert!(stats.iter().all(|c| c.values == 1 && c.rule == "all"));
}

#[test]
fn binary_values_are_scanned_by_detectors() {
    let m = masks("[[mask]]\nname = \"d\"\ndetectors = [\"all\"]\n");
    let mut plan = m.plan(&[
        col("t", 25, 1),
        col("jb", 3802, 1),
        col("i8", 20, 1),
        col("other", 20, 1),
        col("i4", 23, 1),
    ]);
    let jsonb = [&[1u8][..], br#"{"mail": "a@example.com", "n": 1}"#].concat();
    let row = data_row(&[
        Some(b"mail a@example.com"),
        Some(&jsonb),
        Some(&4111111111111111i64.to_be_bytes()),
        Some(&4111111111111112i64.to_be_bytes()),
        Some(&411111111i32.to_be_bytes()),
    ]);
    let v = values_of(&mask_data_row(&mut plan, &row).expect("changed"));
    assert_eq!(s(&v[0]), "mail [redacted]");
    let jb = v[1].as_deref().expect("jsonb");
    assert_eq!(jb[0], 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&jb[1..]).expect("valid JSON"),
        serde_json::json!({"mail": "[redacted]", "n": 1})
    );
    assert_eq!(
        v[2].as_deref(),
        Some(&0i64.to_be_bytes()[..]),
        "card in int8"
    );
    assert_eq!(
        v[3].as_deref(),
        Some(&4111111111111112i64.to_be_bytes()[..]),
        "not a card"
    );
    assert_eq!(v[4].as_deref(), Some(&411111111i32.to_be_bytes()[..]));
}

#[test]
fn json_stays_valid_when_a_bare_number_is_masked() {
    let m = masks("[[mask]]\nname = \"d\"\ndetectors = [\"credit_card\", \"email\"]\n");
    let mut plan = m.plan(&[col("doc", 114, 0), col("docb", 3802, 0)]);
    let doc =
        br#"{"card": 4111111111111111, "note": "card 4111 1111 1111 1111 \"q\" a@example.com"}"#;
    let v =
        values_of(&mask_data_row(&mut plan, &data_row(&[Some(doc), Some(doc)])).expect("changed"));
    let expected = serde_json::json!({
        "card": "[redacted]",
        "note": "card [redacted] \"q\" [redacted]"
    });
    for value in &v {
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(value.as_deref().expect("json"))
                .expect("valid JSON"),
            expected
        );
    }
}

#[test]
fn rows_wider_or_narrower_than_the_plan() {
    let m = masks(CONTACT);
    let mut plan = m.plan(&[text_col("email"), text_col("note")]);
    assert_eq!(plan.columns(), 2);
    let wide = data_row(&[Some(b"a@example.com"), Some(b"x"), Some(b"extra"), None]);
    let v = values_of(&mask_data_row(&mut plan, &wide).expect("changed"));
    assert_eq!(s(&v[0]), "[redacted]");
    assert_eq!(s(&v[1]), "x");
    assert_eq!(v[2], None, "an unannounced column is NULLed");
    assert_eq!(v[3], None);
    let narrow = data_row(&[Some(b"b@example.com")]);
    let v = values_of(&mask_data_row(&mut plan, &narrow).expect("changed"));
    assert_eq!(v.len(), 1);
    assert_eq!(s(&v[0]), "[redacted]");
    let stats = plan.masked_columns();
    assert_eq!(
        stats.last(),
        Some(&MaskedColumn {
            column: "#3".into(),
            rule: "(unannounced column)".into(),
            strategy: "null".into(),
            values: 1
        })
    );
    assert_eq!(stats[0].values, 2);
    // An empty row and a zero-column plan do not panic.
    let mut empty = m.plan(&[]);
    assert!(empty.is_noop());
    assert_eq!(mask_data_row(&mut empty, &data_row(&[])), None);
}

#[test]
fn real_psql_capture_is_masked() {
    // The backend side of a real psql session (see protocol/postgres/testdata): the
    // first result set is `select 42 as answer, 'hello' as greeting, null::text`.
    let bytes = include_bytes!("../protocol/postgres/testdata/psql-session.backend.bin");
    let m = masks("[[mask]]\nname = \"greet\"\ncolumns = [\"GREETING\"]\n");
    let mut decoder = BackendDecoder::new();
    decoder.expect_ssl_answer();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut plan = None;
    let mut rewritten = Vec::new();
    while let Some(decoded) = decoder.decode(&mut buf).expect("valid capture") {
        match decoded.message {
            BackendMessage::RowDescription { fields } => {
                let columns: Vec<ColumnInfo<'_>> = fields
                    .iter()
                    .map(|f| ColumnInfo {
                        name: f.name.as_str(),
                        type_oid: f.type_oid,
                        format: f.format,
                    })
                    .collect();
                plan = Some(m.plan(&columns));
            }
            BackendMessage::DataRow(row) => {
                let plan = plan.as_mut().expect("a RowDescription first");
                if let Some(frame) = mask_data_row(plan, &row) {
                    rewritten.push(values_of(&frame));
                }
            }
            _ => {}
        }
    }
    assert_eq!(rewritten.len(), 1, "only the row with a greeting column");
    assert_eq!(s(&rewritten[0][0]), "42");
    assert_eq!(s(&rewritten[0][1]), "[redacted]");
    assert_eq!(rewritten[0][2], None);
}

#[test]
fn mask_text_runs_detectors_over_free_text() {
    let m =
        masks("[[mask]]\nname = \"d\"\ncolumns = [\"x\"]\ndetectors = [\"email\", \"aws_key\"]\n");
    let clean = "select * from t where id = 1";
    assert!(matches!(m.mask_text(clean), std::borrow::Cow::Borrowed(_)));
    assert_eq!(
        m.mask_text("insert into u values ('é@x', 'bob@example.com', 'AKIAIOSFODNN7EXAMPLE')"),
        "insert into u values ('é@x', '[redacted]', '[redacted]')"
    );
    assert!(matches!(
        SessionMasks::none().mask_text("bob@example.com"),
        std::borrow::Cow::Borrowed(_)
    ));
}

// ---------------------------------------------------------------------------------------
// Rule validation

#[test]
fn a_full_rule_parses() {
    let r = rules(
        r#"
[[mask]]
name = "contact-data"
workload = "billing-*"
target = "orders-db"
columns = ["email", "*_email", "card*"]
detectors = ["email", "credit_card"]
strategy = "partial"
keep = 2
"#,
    );
    let rule = &r[0];
    assert_eq!(rule.name(), "contact-data");
    assert_eq!(rule.strategy_name(), "partial");
    assert_eq!(rule.detector_names(), vec!["email", "credit_card"]);
    assert!(rule.applies_to("billing-api", "orders-db"));
    assert!(!rule.applies_to("billing-api", "orders-db-2"));
    assert!(!rule.applies_to("web", "orders-db"));
    assert!(rule.masks_column("Card_Number"));
    assert!(rule.masks_column("HOME_EMAIL"));
    assert!(!rule.masks_column("emails"));
    // Defaults: every workload and target, redact, and "all" detectors.
    let d = &rules("[[mask]]\nname = \"d\"\ndetectors = [\"all\"]\n")[0];
    assert!(d.applies_to("any/thing", "x"));
    assert_eq!(d.strategy_name(), "redact");
    assert_eq!(d.detector_names().len(), Detector::ALL.len());
    assert!(!d.masks_column("anything"));
}

#[test]
fn every_validation_error_names_its_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[mask]]\nname = \"  \"\ncolumns = [\"a\"]\n",
            "must not be empty",
            "\"  \"",
        ),
        (
            "[[mask]]\nname = \"n\"\n",
            "masks nothing",
            "[[mask]]\nname = \"n\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = []\ndetectors = []\n",
            "masks nothing",
            "[[mask]]\nname = \"n\"\ncolumns = []\ndetectors = []",
        ),
        (
            "[[mask]]\nname = \"n\"\ndetectors = [\"email\", \"emial\"]\n",
            "unknown detector \"emial\"",
            "\"emial\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\nstrategy = \"shred\"\n",
            "unknown strategy \"shred\"",
            "\"shred\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"ok\", \"[a\"]\n",
            "invalid column pattern \"[a\"",
            "\"[a\"",
        ),
        (
            "[[mask]]\nname = \"n\"\nworkload = \"{a\"\ncolumns = [\"a\"]\n",
            "invalid workload pattern",
            "\"{a\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ntarget = \"[z\"\ncolumns = [\"a\"]\n",
            "invalid target pattern",
            "\"[z\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ntarget = \"\"\ncolumns = [\"a\"]\n",
            "target must not be empty",
            "\"\"",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\nkeep = 3\n",
            "keep only applies to strategy = \"partial\"",
            "3",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\nstrategy = \"hash\"\nkeep = 3\n",
            "(this mask's strategy is \"hash\")",
            "3",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\nstrategy = \"partial\"\nkeep = -1\n",
            "keep must be between 0 and 64",
            "-1",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\nstrategy = \"partial\"\nkeep = 65\n",
            "keep must be between 0 and 64",
            "65",
        ),
        (
            "[[mask]]\nname = \"n\"\ncolumns = [\"a\"]\ncolumn = [\"b\"]\n",
            "unknown field `column`",
            "column",
        ),
        ("[[mask]]\ncolumns = [\"a\"]\n", "missing field `name`", ""),
    ];
    for (text, message, at) in cases {
        let (got, span) = problem(text);
        assert!(got.contains(message), "{text:?}: {got:?} lacks {message:?}");
        if !at.is_empty() {
            assert_eq!(span.as_deref(), Some(*at), "span of {text:?} ({got})");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The key file

#[test]
fn key_file_is_created_private_and_reloaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mask.key");
    let created = HashKey::load_or_create(&path).expect("created");
    let meta = std::fs::metadata(&path).expect("exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), KEY_LEN as u64);
    let loaded = HashKey::load_or_create(&path).expect("loaded");
    assert_eq!(
        created.bytes(),
        loaded.bytes(),
        "the same key after a restart"
    );
    assert_ne!(created.bytes(), &[0; KEY_LEN]);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("mask.key")]);
    // Another file, another key.
    let other = HashKey::load_or_create(&dir.path().join("other.key")).expect("created");
    assert_ne!(created.bytes(), other.bytes());
    assert_eq!(format!("{created:?}"), "HashKey([redacted])");
}

#[test]
fn key_file_with_wrong_permissions_or_length_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mask.key");
    std::fs::write(&path, [9u8; KEY_LEN]).expect("write");
    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        match HashKey::load_or_create(&path) {
            Err(MaskError::KeyPermissions { mode: m, .. }) => assert_eq!(m, mode),
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let key = HashKey::load_or_create(&path).expect("0400 is private");
    assert_eq!(key.bytes(), &[9; KEY_LEN]);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for len in [0usize, 31, 33] {
        std::fs::write(&path, vec![1u8; len]).expect("write");
        match HashKey::load_or_create(&path) {
            Err(e @ MaskError::KeyLength { .. }) => {
                assert!(e.to_string().contains(&format!("holds {len} bytes")), "{e}");
            }
            other => panic!("length {len}: {other:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read").len(), len, "left alone");
    }

    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).expect("mkdir");
    assert!(matches!(
        HashKey::load_or_create(&sub),
        Err(MaskError::NotAFile { .. })
    ));

    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    assert!(matches!(
        HashKey::load_or_create(&link),
        Err(MaskError::Io { op: "open", .. })
    ));

    let missing_dir = dir.path().join("nope").join("mask.key");
    assert!(matches!(
        HashKey::load_or_create(&missing_dir),
        Err(MaskError::Io { op: "create", .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Cost (not a test: run with --ignored --nocapture to print the figures)

#[test]
#[ignore = "prints timings; run explicitly"]
fn cost_per_row() {
    use std::time::Instant;
    const ROWS: u32 = 50_000;
    let all = masks("[[mask]]\nname = \"all\"\ndetectors = [\"all\"]\n");
    let with_column =
        masks("[[mask]]\nname = \"all\"\ncolumns = [\"email\"]\ndetectors = [\"all\"]\n");
    let none = masks("[[mask]]\nname = \"c\"\ncolumns = [\"ssn\"]\n");
    let column_only = masks("[[mask]]\nname = \"c\"\ncolumns = [\"email\"]\n");
    let columns = [
        text_col("id"),
        text_col("name"),
        text_col("email"),
        text_col("city"),
        text_col("created_at"),
    ];
    let row = data_row(&[
        Some(b"1234567"),
        Some(b"Alice Example"),
        Some(b"alice.example@example.com"),
        Some(b"Berlin, Germany"),
        Some(b"2024-05-17 12:34:56.789+00"),
    ]);
    let clean = data_row(&[
        Some(b"1234567"),
        Some(b"Alice Example"),
        Some(b"alice.example at example.com"),
        Some(b"Berlin, Germany"),
        Some(b"2024-05-17 12:34:56.789+00"),
    ]);
    for (label, m, row) in [
        ("no matching column, no detectors (is_noop)", &none, &row),
        ("all detectors, 5 text columns, nothing found", &all, &clean),
        (
            "all detectors, 5 text columns, one e-mail found",
            &all,
            &row,
        ),
        ("all detectors + masked column (email)", &with_column, &row),
        (
            "masked column (email) only, no detectors",
            &column_only,
            &row,
        ),
    ] {
        // The best of five runs: the machine is shared, the minimum is the least noisy.
        let mut per_row = f64::MAX;
        let mut changed = 0u32;
        for _ in 0..5 {
            let mut plan = m.plan(&columns);
            let start = Instant::now();
            changed = 0;
            for _ in 0..ROWS {
                if plan.is_noop() {
                    continue;
                }
                if mask_data_row(&mut plan, row).is_some() {
                    changed += 1;
                }
            }
            per_row = per_row.min(start.elapsed().as_secs_f64() * 1e6 / f64::from(ROWS));
        }
        println!("{label}: {per_row:.3} µs/row ({changed} rows rewritten)");
    }
}

// ---------------------------------------------------------------------------------------
// Originals kept for auditors

#[test]
fn collecting_masks_keep_each_original_with_its_masked_form_and_rule() {
    let originals = Arc::new(Originals::new(1 << 20));
    let mut m = masks(
        "[[mask]]\nname = \"contact\"\ncolumns = [\"email\"]\n\
         [[mask]]\nname = \"cards\"\ndetectors = [\"credit_card\"]\nstrategy = \"partial\"\n",
    );
    m.collect_originals(Some(Arc::clone(&originals)));
    // A whole column, and a detected substring of another.
    let mut rows = m.plan(&[col("email", 25, 0), col("note", 25, 0)]);
    let changes = rows
        .mask_values([
            Some(&b"alice@example.com"[..]),
            Some(&b"paid with 4111 1111 1111 1111 ok"[..]),
        ])
        .unwrap();
    assert_eq!(changes.len(), 2);
    // Free text (a parameter) and a JSON body.
    assert_ne!(
        m.mask_text("card 4111111111111111"),
        "card 4111111111111111"
    );
    let mut body = m.body_masker();
    body.mask_json(br#"{"email":"bob@example.org","n":1}"#, None)
        .unwrap()
        .unwrap();
    let batch = originals.take().expect("originals kept");
    let kept: Vec<(&str, &str, &str)> = batch
        .values
        .iter()
        .map(|o| (o.rule.as_str(), o.original.as_str(), o.masked.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            ("contact", "alice@example.com", "[redacted]"),
            ("cards", "4111 1111 1111 1111", "***************1111"),
            ("cards", "4111111111111111", "************1111"),
            ("contact", "bob@example.org", "[redacted]"),
        ]
    );
    assert_eq!(batch.omitted, 0);
    assert_eq!(originals.take(), None, "taken once");
    // Unchanged values keep nothing; masks without a collector keep nothing.
    assert_eq!(m.mask_text("nothing here"), "nothing here");
    assert_eq!(originals.take(), None);
}

#[test]
fn the_agents_own_rules_and_the_injected_secret_are_never_kept() {
    let originals = Arc::new(Originals::new(1 << 20));
    let mut m = SessionMasks::new(
        vec![
            MaskRule::builtin("aws-secrets", &["SecretAccessKey"]),
            rules("[[mask]]\nname = \"tokens\"\ncolumns = [\"token\"]\n").remove(0),
        ],
        key(7),
    );
    m.collect_originals(Some(Arc::clone(&originals)));
    let mut body = m.body_masker();
    let out = body
        .mask_json(
            br#"{"SecretAccessKey":"wJalrXUtnFEMI","token":"s3cr3t-injected","other":"x"}"#,
            Some(b"s3cr3t-injected"),
        )
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("wJalr"));
    assert_eq!(originals.take(), None, "{:?}", originals);
}

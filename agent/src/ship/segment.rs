//! Sealed segments on disk: `<journal dir>/segments/<seq>.db` + `<seq>.seal`, and the
//! seal's payload, read without its key (the shipper moves evidence, `verify` judges it).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::ShipError;

/// The directory of sealed segments, next to the live journal.
pub fn segments_dir(journal: &Path) -> PathBuf {
    journal
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("segments")
}

/// The file stem of segment `seq`: zero-padded to 10 digits.
pub fn file_stem(seq: u64) -> String {
    format!("{seq:010}")
}

/// The payload of a seal: the type the journal signs (`crate::evidence::seal`). The
/// shipper only reads it (without the key: checking signatures is `verify`'s job).
pub use crate::evidence::SealPayload;

/// Decodes the payload of a compact JWS (`header.payload.signature`) without checking
/// the signature. Errors say what is malformed; `what` names the file.
pub fn parse_seal(jws: &[u8], what: &Path) -> Result<SealPayload, ShipError> {
    let bad = |why: String| ShipError::BadSeal {
        path: what.to_owned(),
        why,
    };
    let text = std::str::from_utf8(jws).map_err(|_| bad("not UTF-8".into()))?;
    let parts: Vec<&str> = text.split('.').collect();
    let [_, payload, _] = parts.as_slice() else {
        return Err(bad(format!(
            "not a compact JWS (3 dot-separated parts, got {})",
            parts.len()
        )));
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| bad(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| bad(format!("payload: {e}")))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// One complete (sealed) segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub seq: u64,
    pub db: PathBuf,
    pub seal_path: PathBuf,
    /// The seal file's exact bytes.
    pub seal: Vec<u8>,
    /// SHA-256 of [`Segment::seal`], hex.
    pub seal_sha256: String,
    pub payload: SealPayload,
    /// Size of the `.db` file in bytes.
    pub db_len: u64,
}

/// What a scan of `segments/` found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Complete segments by journal id, in segment order.
    pub journals: BTreeMap<String, Vec<Segment>>,
    /// Files that cannot be shipped, with the reason: a `.db` without `.seal` below a
    /// sealed segment, a seal without its `.db`, an unreadable seal. Each is a gap.
    pub problems: Vec<(u64, String)>,
    /// The highest sequence number of a `.db` that has no seal yet (being sealed).
    pub unsealed: Vec<u64>,
}

/// Lists the complete segments (those whose `.seal` exists) in `dir`. A missing
/// directory is an empty scan (no rotation happened yet).
pub fn scan(dir: &Path) -> Result<Scan, ShipError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => {
            return Err(ShipError::Io {
                what: format!("listing {}", dir.display()),
                source: e,
            })
        }
    };
    let mut dbs = BTreeMap::new();
    let mut seals = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(seq) = stem.parse::<u64>() else {
            continue;
        };
        match ext {
            "db" => {
                dbs.insert(seq, entry.path());
            }
            "seal" => {
                seals.insert(seq, entry.path());
            }
            _ => {}
        }
    }
    let mut out = Scan::default();
    for (&seq, seal_path) in &seals {
        let Some(db) = dbs.get(&seq) else {
            out.problems
                .push((seq, format!("{} has no .db beside it", seal_path.display())));
            continue;
        };
        let segment = match read_segment(seq, db, seal_path) {
            Ok(s) => s,
            Err(e) => {
                out.problems.push((seq, e.to_string()));
                continue;
            }
        };
        out.journals
            .entry(segment.payload.journal_id.clone())
            .or_default()
            .push(segment);
    }
    for &seq in dbs.keys() {
        if !seals.contains_key(&seq) {
            out.unsealed.push(seq);
        }
    }
    Ok(out)
}

fn read_segment(seq: u64, db: &Path, seal_path: &Path) -> Result<Segment, ShipError> {
    let seal = fs::read(seal_path).map_err(|e| ShipError::Io {
        what: format!("reading {}", seal_path.display()),
        source: e,
    })?;
    let payload = parse_seal(&seal, seal_path)?;
    if payload.segment_seq != seq {
        return Err(ShipError::BadSeal {
            path: seal_path.to_owned(),
            why: format!(
                "its payload says segment {} but the file is segment {seq}",
                payload.segment_seq
            ),
        });
    }
    let db_len = fs::metadata(db)
        .map_err(|e| ShipError::Io {
            what: format!("reading {}", db.display()),
            source: e,
        })?
        .len();
    Ok(Segment {
        seq,
        db: db.to_owned(),
        seal_path: seal_path.to_owned(),
        seal_sha256: sha256_hex(&seal),
        seal,
        payload,
        db_len,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A compact JWS whose signature is not a real one: the shipper never checks it.
    pub(crate) fn fake_jws(payload: &SealPayload) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(br#"{"alg":"EdDSA","typ":"nhi-seal+jwt"}"#),
            e.encode(serde_json::to_vec(payload).unwrap()),
            e.encode([7u8; 64])
        )
    }

    pub(crate) fn payload(seq: u64, sealed_at_us: i64) -> SealPayload {
        SealPayload {
            v: 1,
            host_id: "host-1".into(),
            journal_id: "j-1".into(),
            segment_seq: seq,
            first_event_id: Some(seq as i64 * 10),
            last_event_id: Some(seq as i64 * 10 + 9),
            event_count: 10,
            first_at_us: Some(sealed_at_us - 1_000_000),
            last_at_us: Some(sealed_at_us - 1),
            prev_last_hash: "00".repeat(32),
            last_hash: format!("{seq:064x}"),
            prev_seal_sha256: None,
            sealed_at_us,
            reason: crate::evidence::SealReason::Size,
        }
    }

    /// Writes segment `seq` into `dir` (with `sealed` deciding whether the seal exists).
    pub(crate) fn write_segment(dir: &Path, seq: u64, sealed_at_us: i64, sealed: bool) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join(format!("{}.db", file_stem(seq))),
            format!("db {seq}"),
        )
        .unwrap();
        if sealed {
            fs::write(
                dir.join(format!("{}.seal", file_stem(seq))),
                fake_jws(&payload(seq, sealed_at_us)),
            )
            .unwrap();
        }
    }

    #[test]
    fn parses_payload_without_key() {
        let p = payload(3, 1_700_000_000_000_000);
        let jws = fake_jws(&p);
        assert_eq!(parse_seal(jws.as_bytes(), Path::new("x")).unwrap(), p);
        for bad in ["a.b", "a.!!!.c", "a.e30.c", "x.y.z.w"] {
            assert!(
                parse_seal(bad.as_bytes(), Path::new("x")).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn scan_takes_only_sealed_segments() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 1_000_000, true);
        write_segment(dir.path(), 2, 2_000_000, true);
        write_segment(dir.path(), 3, 3_000_000, false);
        fs::write(dir.path().join("junk.txt"), "x").unwrap();
        let scan = scan(dir.path()).unwrap();
        let segs = &scan.journals["j-1"];
        assert_eq!(segs.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(scan.unsealed, [3]);
        assert_eq!(
            segs[0].seal_sha256,
            sha256_hex(&fs::read(&segs[0].seal_path).unwrap())
        );
        assert_eq!(segs[1].db_len, 4);
        assert!(scan.problems.is_empty());
    }

    #[test]
    fn scan_reports_seal_for_wrong_segment() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 1_000_000, true);
        fs::copy(
            dir.path().join("0000000001.seal"),
            dir.path().join("0000000002.seal"),
        )
        .unwrap();
        fs::write(dir.path().join("0000000002.db"), "x").unwrap();
        let scan = scan(dir.path()).unwrap();
        assert_eq!(scan.journals["j-1"].len(), 1);
        assert_eq!(scan.problems.len(), 1);
        assert!(
            scan.problems[0].1.contains("segment 1"),
            "{:?}",
            scan.problems
        );
    }
}

//! Object keys and the high-water mark object. Pure.
use serde::{Deserialize, Serialize};

use super::segment::{file_stem, Segment};

/// The UTC date (`yyyy/mm/dd`) a segment is filed under: its first event's time, or its
/// seal time when it holds no event. Derived from the seal only, so a retry after a
/// crash computes the same key and overwrites the same object.
pub fn date_path(segment: &Segment) -> String {
    let us = segment
        .payload
        .first_at_us
        .unwrap_or(segment.payload.sealed_at_us);
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}/{:02}/{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// `<prefix>/<host-id>/<yyyy>/<mm>/<dd>/<seq>.<ext>`.
pub fn object_key(prefix: &str, segment: &Segment, ext: &str) -> String {
    format!(
        "{prefix}/{}/{}/{}.{ext}",
        key_component(&segment.payload.host_id),
        date_path(segment),
        file_stem(segment.seq)
    )
}

/// `<prefix>/<host-id>/hwm.json`.
pub fn hwm_key(prefix: &str, host_id: &str) -> String {
    format!("{prefix}/{}/hwm.json", key_component(host_id))
}

/// A host id as one key component: a `/` (or an empty id) would change the layout.
fn key_component(id: &str) -> String {
    if id.is_empty() {
        return "unknown-host".to_owned();
    }
    id.replace('/', "_")
}

/// The high-water mark object (contract format): the last segment shipped without a
/// gap before it and, once the live segment after it has a checkpoint, that checkpoint
/// (signed: its JWS is in the object). `verify --hwm FILE` compares a local journal
/// against both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hwm {
    pub host_id: String,
    pub journal_id: String,
    pub segment_seq: u64,
    pub last_event_id: Option<i64>,
    pub last_hash: String,
    pub seal_sha256: String,
    pub updated_at_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<HwmCheckpoint>,
}

pub use crate::journal::verify::HwmCheckpoint;

impl Hwm {
    /// The mark for `segment`, at `now_us`.
    pub fn for_segment(segment: &Segment, now_us: i64) -> Hwm {
        Hwm {
            host_id: segment.payload.host_id.clone(),
            journal_id: segment.payload.journal_id.clone(),
            segment_seq: segment.seq,
            last_event_id: segment.payload.last_event_id,
            last_hash: segment.payload.last_hash.clone(),
            seal_sha256: segment.seal_sha256.clone(),
            updated_at_us: now_us,
            checkpoint: None,
        }
    }

    /// This mark followed by the checkpoint `jws` of the segment after it (`None` when
    /// it is not a checkpoint of that segment of this journal).
    pub fn with_checkpoint(&self, jws: &str, now_us: i64) -> Option<Hwm> {
        let p = crate::journal::checkpoint::peek(jws)?;
        if p.journal_id != self.journal_id || p.segment_seq != self.segment_seq + 1 {
            return None;
        }
        Some(Hwm {
            checkpoint: Some(HwmCheckpoint {
                segment_seq: p.segment_seq,
                n: p.n,
                last_event_id: p.last_event_id,
                last_hash: p.last_hash,
                jws: jws.to_string(),
            }),
            updated_at_us: now_us,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::segment::tests::{fake_jws, payload};

    fn segment(seq: u64, first_at_us: Option<i64>, sealed_at_us: i64) -> Segment {
        let mut p = payload(seq, sealed_at_us);
        p.first_at_us = first_at_us;
        let seal = fake_jws(&p).into_bytes();
        Segment {
            seq,
            db: "/x.db".into(),
            seal_path: "/x.seal".into(),
            seal_sha256: crate::ship::segment::sha256_hex(&seal),
            seal,
            payload: p,
            db_len: 0,
        }
    }

    #[test]
    fn keys_follow_the_layout() {
        // 2024-02-29T23:59:59Z, then the seal a second later on 2024-03-01.
        let first = 1_709_251_199_000_000;
        let s = segment(42, Some(first), first + 1_000_000);
        assert_eq!(
            object_key("nhi", &s, "db"),
            "nhi/host-1/2024/02/29/0000000042.db"
        );
        assert_eq!(
            object_key("a/b", &s, "seal"),
            "a/b/host-1/2024/02/29/0000000042.seal"
        );
        // No event: the seal time decides.
        let empty = segment(43, None, first + 1_000_000);
        assert_eq!(
            object_key("nhi", &empty, "db"),
            "nhi/host-1/2024/03/01/0000000043.db"
        );
        assert_eq!(hwm_key("nhi", "h/1"), "nhi/h_1/hwm.json");
    }

    #[test]
    fn hwm_has_the_contract_fields() {
        let s = segment(7, Some(1), 2);
        let v = serde_json::to_value(Hwm::for_segment(&s, 99)).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "host_id",
                "journal_id",
                "last_event_id",
                "last_hash",
                "seal_sha256",
                "segment_seq",
                "updated_at_us"
            ]
        );
        assert_eq!(v["segment_seq"], 7);
        assert_eq!(v["seal_sha256"], s.seal_sha256.as_str());
        assert_eq!(v["last_hash"], s.payload.last_hash.as_str());
    }
}

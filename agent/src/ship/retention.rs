//! Which sealed segments may be deleted locally. Pure.
use std::time::Duration;

use super::{cursor::Cursor, segment::Segment};

/// Why a segment stays (or that it may go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Shipped, covered by a confirmed high-water mark, older than `keep`.
    Delete,
    /// No `keep` is configured: keep forever.
    KeepForever,
    /// Not shipped yet (or only beyond a gap, not covered by the high-water mark).
    NotShipped,
    /// Younger than `keep`.
    TooYoung,
}

/// The inputs of the retention rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// `[retention] keep`.
    pub keep: Option<Duration>,
    /// Whether `[shipping]` is configured.
    pub shipping: bool,
    /// `[retention] delete_unshipped` (only meaningful without shipping).
    pub delete_unshipped: bool,
}

/// Decides for one segment. With shipping: deleted only when the cursor covers it
/// (uploaded, and the high-water mark naming it or a later segment was confirmed,
/// which is when the cursor moves) AND it was sealed more than `keep` ago. Without
/// shipping: only with `delete_unshipped`, by age alone.
pub fn decide(rule: &Rule, cursor: &Cursor, segment: &Segment, now_us: i64) -> Decision {
    let Some(keep) = rule.keep else {
        return Decision::KeepForever;
    };
    if rule.shipping {
        if !cursor.is_covered(&segment.payload.journal_id, segment.seq) {
            return Decision::NotShipped;
        }
    } else if !rule.delete_unshipped {
        return Decision::NotShipped;
    }
    let keep_us = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
    if now_us.saturating_sub(segment.payload.sealed_at_us) > keep_us {
        Decision::Delete
    } else {
        Decision::TooYoung
    }
}

/// Where one live stream (`[[stream]]`) stands, for retention: a segment the stream has
/// not read past stays, so a SIEM that is down longer than `keep` still gets every event
/// once it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub name: String,
    /// The journal of the cursor and the last event the sink took; `None`: no cursor
    /// yet (the stream has not started, or reads from the oldest event).
    pub at: Option<(String, i64)>,
}

/// The stream that still needs `segment`, if any: one whose cursor is not in the
/// segment's journal at or past its last event.
pub fn held_by_stream<'s>(streams: &'s [StreamPosition], segment: &Segment) -> Option<&'s str> {
    let last = segment.payload.last_event_id?;
    streams
        .iter()
        .find(|s| match &s.at {
            Some((journal_id, event_id)) => {
                !(*journal_id == segment.payload.journal_id && *event_id >= last)
            }
            None => true,
        })
        .map(|s| s.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::{
        cursor::JournalCursor,
        segment::tests::{fake_jws, payload},
    };

    fn seg(seq: u64, sealed_at_us: i64) -> Segment {
        let p = payload(seq, sealed_at_us);
        Segment {
            seq,
            db: "/x".into(),
            seal_path: "/y".into(),
            seal: fake_jws(&p).into_bytes(),
            seal_sha256: String::new(),
            payload: p,
            db_len: 0,
        }
    }

    #[test]
    fn decisions() {
        let day = 86_400_000_000i64;
        let now = 100 * day;
        let mut cursor = Cursor::default();
        cursor.journals.insert(
            "j-1".into(),
            JournalCursor {
                segment_seq: 2,
                beyond_gap: [(4, String::new())].into(),
                ..Default::default()
            },
        );
        let keep = Some(Duration::from_secs(30 * 86_400));
        let shipping = Rule {
            keep,
            shipping: true,
            delete_unshipped: true,
        };
        assert_eq!(
            decide(&shipping, &cursor, &seg(1, 10 * day), now),
            Decision::Delete
        );
        assert_eq!(
            decide(&shipping, &cursor, &seg(2, 99 * day), now),
            Decision::TooYoung
        );
        assert_eq!(
            decide(&shipping, &cursor, &seg(3, day), now),
            Decision::NotShipped
        );
        // Uploaded beyond a gap: not covered by the high-water mark, so kept.
        assert_eq!(
            decide(&shipping, &cursor, &seg(4, day), now),
            Decision::NotShipped
        );
        let forever = Rule {
            keep: None,
            ..shipping
        };
        assert_eq!(
            decide(&forever, &cursor, &seg(1, 0), now),
            Decision::KeepForever
        );
        let local = Rule {
            keep,
            shipping: false,
            delete_unshipped: false,
        };
        assert_eq!(
            decide(&local, &Cursor::default(), &seg(1, 0), now),
            Decision::NotShipped
        );
        let local = Rule {
            delete_unshipped: true,
            ..local
        };
        assert_eq!(
            decide(&local, &Cursor::default(), &seg(1, 0), now),
            Decision::Delete
        );
        assert_eq!(
            decide(&local, &Cursor::default(), &seg(1, now), now),
            Decision::TooYoung
        );
    }

    #[test]
    fn a_segment_stays_until_every_stream_read_past_it() {
        let mut segment = seg(3, 0);
        segment.payload.journal_id = "j-1".into();
        segment.payload.last_event_id = Some(100);
        let at = |name: &str, j: &str, id: i64| StreamPosition {
            name: name.into(),
            at: Some((j.into(), id)),
        };
        assert_eq!(held_by_stream(&[], &segment), None);
        assert_eq!(held_by_stream(&[at("siem", "j-1", 100)], &segment), None);
        assert_eq!(held_by_stream(&[at("siem", "j-1", 250)], &segment), None);
        assert_eq!(
            held_by_stream(&[at("siem", "j-1", 250), at("hec", "j-1", 99)], &segment),
            Some("hec")
        );
        assert_eq!(
            held_by_stream(&[at("siem", "j-0", 1000)], &segment),
            Some("siem")
        );
        let fresh = StreamPosition {
            name: "new".into(),
            at: None,
        };
        assert_eq!(
            held_by_stream(std::slice::from_ref(&fresh), &segment),
            Some("new")
        );
        // An empty segment holds no event a stream could miss.
        segment.payload.last_event_id = None;
        assert_eq!(held_by_stream(&[fresh], &segment), None);
    }
}

//! The event hash chain (pure: no IO). The encoding is documented in [`super`].
use sha2::{Digest, Sha256};

/// Length of a chain hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// One link of the chain.
pub type Hash = [u8; HASH_LEN];

/// Domain tag of the event encoding.
pub const EVENT_TAG: &[u8] = b"nhi-event-v1";
/// Domain tag of the genesis hash.
pub const GENESIS_TAG: &[u8] = b"nhi-genesis-v1";

/// The `prev_hash` of the first event of the journal `journal_id`.
pub fn genesis(journal_id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(GENESIS_TAG);
    h.update(journal_id.as_bytes());
    h.finalize().into()
}

/// The fields of an `events` row that the chain covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainEvent<'a> {
    pub id: i64,
    pub session_id: Option<i64>,
    pub at_us: i64,
    pub kind: &'a [u8],
    pub direction: Option<&'a [u8]>,
    pub size: Option<i64>,
    pub data: Option<&'a [u8]>,
}

fn put_bytes(out: &mut impl Extend<u8>, b: &[u8]) {
    // Lengths above 4 GiB cannot be stored in SQLite (1 GiB limit), so this never saturates
    // in practice; saturating keeps the function total.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend(len.to_be_bytes());
    out.extend(b.iter().copied());
}

/// Appends the canonical encoding of `e` (domain tag included) to `out`.
pub fn canonical(e: &ChainEvent<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(EVENT_TAG);
    out.extend_from_slice(&e.id.to_be_bytes());
    match e.session_id {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
    out.extend_from_slice(&e.at_us.to_be_bytes());
    put_bytes(out, e.kind);
    match e.direction {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_bytes(out, d);
        }
    }
    match e.size {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
    match e.data {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_bytes(out, d);
        }
    }
}

/// SHA-256(`prev` || canonical(`e`)), with `scratch` reused between calls to avoid
/// allocating per event.
pub fn event_hash_with(prev: &Hash, e: &ChainEvent<'_>, scratch: &mut Vec<u8>) -> Hash {
    scratch.clear();
    canonical(e, scratch);
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&scratch[..]);
    h.finalize().into()
}

/// SHA-256(`prev` || canonical(`e`)).
pub fn event_hash(prev: &Hash, e: &ChainEvent<'_>) -> Hash {
    event_hash_with(prev, e, &mut Vec::with_capacity(128))
}

/// Where the writer is in the chain: the hash of the last event and the next ids to
/// assign. Copied before a savepoint or a batch, and put back when they are rolled back,
/// so that the chain never links to a row that was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    pub last_hash: Hash,
    pub next_event_id: i64,
    pub next_session_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden vector is built here byte by byte from the documented layout, not from
    /// `canonical`, so a change of the encoding fails this test.
    #[test]
    fn event_hash_matches_an_independently_built_encoding() {
        let prev = genesis("0123abcd");
        let mut expected_genesis = Sha256::new();
        expected_genesis.update(b"nhi-genesis-v1");
        expected_genesis.update(b"0123abcd");
        assert_eq!(prev, <Hash>::from(expected_genesis.finalize()));

        let e = ChainEvent {
            id: 7,
            session_id: Some(3),
            at_us: 1_700_000_000_000_001,
            kind: b"chunk",
            direction: Some(b"c2s"),
            size: Some(42),
            data: None,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&prev);
        bytes.extend_from_slice(b"nhi-event-v1");
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 3]);
        bytes.extend_from_slice(&1_700_000_000_000_001i64.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 5]);
        bytes.extend_from_slice(b"chunk");
        bytes.extend_from_slice(&[1, 0, 0, 0, 3]);
        bytes.extend_from_slice(b"c2s");
        bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 42]);
        bytes.push(0);
        let golden: Hash = Sha256::digest(&bytes).into();
        assert_eq!(event_hash(&prev, &e), golden);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let prev = genesis("j");
        let base = ChainEvent {
            id: 1,
            session_id: None,
            at_us: 5,
            kind: b"pg.query",
            direction: None,
            size: None,
            data: Some(b"{\"sql\":\"select 1\"}"),
        };
        let h = event_hash(&prev, &base);
        let variants = [
            ChainEvent { id: 2, ..base },
            ChainEvent {
                session_id: Some(0),
                ..base
            },
            ChainEvent { at_us: 6, ..base },
            ChainEvent {
                kind: b"pg.querz",
                ..base
            },
            ChainEvent {
                direction: Some(b""),
                ..base
            },
            ChainEvent {
                size: Some(0),
                ..base
            },
            ChainEvent { data: None, ..base },
            ChainEvent {
                data: Some(b""),
                ..base
            },
        ];
        for v in variants {
            assert_ne!(event_hash(&prev, &v), h, "{v:?}");
        }
        assert_ne!(event_hash(&genesis("k"), &base), h);
    }

    #[test]
    fn hex_round_trips() {
        let h = genesis("x");
        assert_eq!(
            super::super::parse_hex::<32>(&super::super::hex(&h)),
            Some(h)
        );
        assert_eq!(super::super::parse_hex::<2>("zz00"), None);
    }
}

//! Helpers shared by the fuzz targets: how a fuzz input is cut into the reads a proxy
//! would see, and the session set-up of the flow targets (`pg_flow`, `mysql_flow`).
//! Nothing here reimplements what a target exercises.
use std::sync::Arc;

use bytes::BytesMut;
use nhi_agent::config::{self, Config};
use nhi_agent::mask::{HashKey, SessionMasks};
use nhi_agent::session::{DecisionNote, HoldOutcome, SessionRules};

/// Splits `data` into a control byte and the rest. The control byte's low 7 bits are
/// the size of each read the proxy gets from its socket (0 = everything at once), so
/// one input exercises both whole and partial buffers; bit 7 is left to the target.
pub fn split_control(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&control, rest) = data.split_first()?;
    Some((control, rest))
}

/// The reads of `data` for a control byte: chunks of `control & 0x7f` bytes, or one.
pub fn reads(control: u8, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let size = usize::from(control & 0x7f);
    let size = if size == 0 { data.len().max(1) } else { size };
    data.chunks(size)
}

/// Appends one read to the proxy's buffer, as `read_buf` does.
pub fn append(buf: &mut BytesMut, read: &[u8]) {
    buf.extend_from_slice(read);
}

/// A flow target's configuration, parsed, with its masks (under a fixed key).
pub fn parse_config(text: &str) -> (Config, SessionMasks) {
    let config = config::parse(text, "fuzz.toml").expect("the fuzz config is valid");
    let masks = SessionMasks::new(config.masks.clone(), Arc::new(HashKey::from_bytes([7; 32])));
    (config, masks)
}

/// The rules of workload "bot"'s session on target "db" under `parsed`.
pub fn session_rules(parsed: &(Config, SessionMasks), enforce: bool) -> Arc<SessionRules> {
    let (config, masks) = parsed;
    let policy = config.policies.for_session("bot", "db", None).cloned();
    Arc::new(SessionRules {
        record_results: policy
            .as_ref()
            .map(|p| p.record_results)
            .unwrap_or_default(),
        policy,
        enforce,
        masks: masks.clone(),
    })
}

/// How a hold ends, from bits 5-6 of the control byte: approved, denied, expired, or
/// approved for the rest of the session.
pub fn hold_outcome(control: u8) -> HoldOutcome {
    let note = DecisionNote::default;
    match (control >> 5) & 3 {
        0 => HoldOutcome::Approved {
            by: "fuzz".into(),
            note: note(),
        },
        1 => HoldOutcome::Denied {
            by: "fuzz".into(),
            reason: Some("no".into()),
            note: note(),
        },
        2 => HoldOutcome::Expired,
        _ => HoldOutcome::Approved {
            by: "fuzz".into(),
            note: DecisionNote {
                scope: Some("session"),
                ..DecisionNote::default()
            },
        },
    }
}

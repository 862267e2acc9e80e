//! DataRow masking as the PostgreSQL flow runs it: a server stream decoded by
//! `BackendDecoder`; each RowDescription makes a plan (`SessionMasks::plan`, with the
//! columns' names, types and formats, as `Flow::start_result` does), each DataRow goes
//! through `RowMasker::mask_values` (`encode::mask_data_row`), and each CommandComplete reads `masked_columns`.
//!
//! The masks come from the input too: a header of 1 + 4 × N bytes is turned into
//! `[[mask]]` tables (detectors, column globs from a fixed list, strategy, keep),
//! parsed by `config::parse` as the agent parses its file. A masked row must decode
//! as a DataRow with the same number of columns.
#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::config;
use nhi_agent::mask::{ColumnInfo, Detector, HashKey, RowMasker, SessionMasks};
use nhi_agent::protocol::postgres::{encode, BackendDecoder, BackendMessage};
use nhi_agent_fuzz::{append, reads};

/// Column globs a rule may list (bit i of the rule's column byte).
const COLUMNS: [&str; 8] = [
    "email", "*_email", "card*", "name", "*", "id", "[a-c]*", "?",
];
const STRATEGIES: [&str; 4] = ["redact", "partial", "hash", "partial"];

/// `[[mask]]` tables for a header (cached: the same header makes the same masks).
fn masks_for(header: &[u8]) -> SessionMasks {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, SessionMasks>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(masks) = cache.get(header) {
        return masks.clone();
    }
    let mut text = String::from(
        "[agent]\nmode = \"enforce\"\njournal = \"/nonexistent/j.db\"\n\
         [[target]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\nprotocol = \"postgres\"\n",
    );
    for (n, rule) in header.chunks_exact(4).enumerate() {
        let detectors = u16::from_le_bytes([rule[0], rule[1]]) & 0x3ff;
        let mut detectors: Vec<String> = Detector::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| detectors & (1 << i) != 0)
            .map(|(_, d)| format!("\"{}\"", d.name()))
            .collect();
        let columns: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .filter(|(i, _)| rule[2] & (1 << i) != 0)
            .map(|(_, c)| format!("\"{c}\""))
            .collect();
        if detectors.is_empty() && columns.is_empty() {
            detectors.push("\"all\"".into());
        }
        let strategy = STRATEGIES[usize::from(rule[1] >> 6)];
        let _ = writeln!(
            text,
            "[[mask]]\nname = \"m{n}\"\ncolumns = [{}]\ndetectors = [{}]\nstrategy = \"{strategy}\"",
            columns.join(", "),
            detectors.join(", ")
        );
        if strategy == "partial" && rule[3] & 0x80 != 0 {
            let _ = writeln!(text, "keep = {}", rule[3] % 65);
        }
    }
    let config = config::parse(&text, "fuzz masks").expect("the generated masks are valid");
    let masks = SessionMasks::new(config.masks, Arc::new(HashKey::from_bytes([7; 32])));
    if cache.len() > 64 {
        cache.clear();
    }
    cache.insert(header.to_vec(), masks.clone());
    masks
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // Control byte: bits 0-1 the number of rules (1-4), the rest the read size.
    let rules = 1 + usize::from(control & 3);
    let Some((header, stream)) = rest.split_at_checked(rules * 4) else {
        return;
    };
    let masks = masks_for(header);
    let mut decoder = BackendDecoder::new();
    let mut masker: Option<RowMasker> = None;
    let mut buf = BytesMut::new();
    for read in reads(control >> 2, stream) {
        append(&mut buf, read);
        loop {
            let message = match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => decoded.message,
                Ok(None) => break,
                Err(_) => return,
            };
            match message {
                BackendMessage::RowDescription { fields } => {
                    let infos: Vec<ColumnInfo<'_>> = fields
                        .iter()
                        .map(|f| ColumnInfo {
                            name: f.name.as_str(),
                            type_oid: f.type_oid,
                            format: f.format,
                        })
                        .collect();
                    masker = Some(masks.plan(&infos)).filter(|m| !m.is_noop());
                }
                BackendMessage::DataRow(row) => {
                    let Some(masker) = masker.as_mut() else {
                        continue;
                    };
                    if let Some(frame) = encode::mask_data_row(masker, &row) {
                        let mut masked = BytesMut::from(&frame[..]);
                        match BackendDecoder::new().decode(&mut masked) {
                            Ok(Some(d)) => match d.message {
                                BackendMessage::DataRow(new) => {
                                    assert_eq!(new.len(), row.len(), "same number of columns")
                                }
                                other => panic!("a masked row decodes as {other:?}"),
                            },
                            other => panic!("a masked row does not decode: {other:?}"),
                        }
                        assert!(masked.is_empty(), "a masked row is one frame");
                    }
                }
                BackendMessage::CommandComplete { .. } => {
                    if let Some(masker) = masker.take() {
                        let _ = masker.masked_columns();
                    }
                }
                _ => {}
            }
        }
    }
});

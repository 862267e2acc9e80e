//! The formats of a live stream (`crate::stream`): the same JSON as `nhi-agent export
//! --format jsonl` or the same OCSF as `--format ocsf` (both call the export's functions:
//! [`super::export::jsonl_line`], [`super::ocsf::OcsfMapper::push`]), each record with the
//! journal id, event id and event hash it stands for. It lives in `cli` with the export it
//! shares; `cli::run` hands [`make`] to the streams, which import nothing of `cli`.
//!
//! OCSF folds a request and what completes it (a statement and its `statement_end`) into
//! one event, so the mapper holds a request until its end is read. The cursor never
//! passes the oldest request held ([`Formatter::safe_cursor`]): after a restart it is
//! read again, and the events completed between it and the cursor are sent again (at
//! least once).
use std::collections::HashMap;

use serde_json::Value;

use super::ocsf::{event_identity, OcsfMapper};
use super::select::Selected;
use crate::stream::config::{Filters, Format};
use crate::stream::format::{Formatter, Record};
use crate::stream::source::Item;

/// The formatter of a stream (what `crate::stream::Streams` is started with).
pub fn make(format: Format, filters: Filters) -> Box<dyn Formatter> {
    Box::new(ExportFormatter::new(format, filters))
}

/// What a request event that the OCSF mapper holds was: its kind and whether it passed
/// the filters.
struct Held {
    kind: String,
    pass: bool,
}

/// Formats the events of one stream in journal order, as the export does.
pub struct ExportFormatter {
    format: Format,
    filters: Filters,
    mapper: OcsfMapper,
    held: HashMap<i64, Held>,
}

impl ExportFormatter {
    pub fn new(format: Format, filters: Filters) -> ExportFormatter {
        ExportFormatter {
            format,
            filters,
            mapper: OcsfMapper::new(),
            held: HashMap::new(),
        }
    }
}

impl Formatter for ExportFormatter {
    fn push(&mut self, item: &Item) -> Vec<Record> {
        let selected = Selected {
            segment: &item.segment,
            session: item.session.as_deref(),
            event: item.event.clone(),
        };
        let e = &item.event;
        let verdict = e
            .data
            .as_ref()
            .and_then(|d| d.get("verdict"))
            .and_then(Value::as_str);
        let workload = selected.who().workload;
        let pass = self.filters.pass(e.kind.as_str(), verdict, workload);
        match self.format {
            Format::Json => {
                if !pass {
                    return Vec::new();
                }
                let line = super::export::jsonl_line(&selected);
                let body = serde_json::to_string(&line).unwrap_or_else(|err| {
                    // Values read from the journal always serialize; say so if not.
                    serde_json::json!({"error": err.to_string(), "id": e.id}).to_string()
                });
                vec![Record {
                    journal_id: item.segment.journal_id.clone(),
                    event_id: e.id,
                    event_hash: e.hash.clone(),
                    kind: e.kind.as_str().to_owned(),
                    time_ms: super::ocsf::ms(e.at),
                    severity: severity_of(e.kind.as_str(), verdict),
                    body,
                }]
            }
            Format::Ocsf => {
                let out = self.mapper.push(&selected);
                if super::views::request_events_of(e.kind.as_str()).is_some() {
                    self.held.insert(
                        e.id,
                        Held {
                            kind: e.kind.as_str().to_owned(),
                            pass,
                        },
                    );
                }
                let mut records = Vec::new();
                for value in out {
                    let (journal_id, event_id, event_hash) = event_identity(&value)
                        .unwrap_or_else(|| (item.segment.journal_id.clone(), e.id, e.hash.clone()));
                    let (kind, pass) = match self.held.remove(&event_id) {
                        Some(h) => (h.kind, h.pass),
                        None if event_id == e.id => (e.kind.as_str().to_owned(), pass),
                        None => (e.kind.as_str().to_owned(), true),
                    };
                    if !pass {
                        continue;
                    }
                    let severity = match value.get("severity_id").and_then(Value::as_u64) {
                        Some(0 | 1) | None => 6,
                        Some(2) => 5,
                        Some(3) => 4,
                        Some(4) => 3,
                        Some(_) => 2,
                    };
                    records.push(Record {
                        journal_id,
                        event_id,
                        event_hash,
                        kind,
                        time_ms: value
                            .get("time")
                            .and_then(Value::as_i64)
                            .unwrap_or_else(|| super::ocsf::ms(e.at)),
                        severity,
                        body: value.to_string(),
                    });
                }
                // Requests older than the oldest one held can no longer come out.
                match self.mapper.oldest_pending() {
                    Some(oldest) => self.held.retain(|id, _| *id >= oldest),
                    None => self.held.clear(),
                }
                records
            }
        }
    }

    fn safe_cursor(&self, last_read: i64) -> i64 {
        match self.mapper.oldest_pending() {
            Some(oldest) => last_read.min(oldest - 1),
            None => last_read,
        }
    }
}

/// The syslog severity of a journal event: a denial or a loss is a warning, a held
/// request a notice, the rest informational.
pub(crate) fn severity_of(kind: &str, verdict: Option<&str>) -> u8 {
    match (kind, verdict) {
        (_, Some("deny")) | ("lineage_lost", _) => 4,
        (_, Some("approve")) => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::source::read_after;

    /// Both formats of the sample PostgreSQL journal: JSON is one record per event, equal
    /// to the export's line, and OCSF one per OCSF event with the first event's identity;
    /// the cursor stays before a statement whose end is not read yet.
    #[tokio::test]
    async fn json_and_ocsf_records_carry_the_journal_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let _ = crate::cli::select::tests::pg_journal(&path).await;
        let batch = read_after(&path, None, 0, 1000).expect("read");
        let exported = crate::cli::export::tests::export(&path, &["--format", "jsonl"]);
        let mut json = ExportFormatter::new(Format::Json, Filters::default());
        let records: Vec<Record> = batch.items.iter().flat_map(|i| json.push(i)).collect();
        assert_eq!(records.len(), batch.items.len());
        assert_eq!(records.len(), exported.len());
        for (r, line) in records.iter().zip(&exported) {
            let body: Value = serde_json::from_str(&r.body).expect("json");
            assert_eq!(&body, line, "the same line as the export");
            assert_eq!(body["id"], r.event_id);
            assert_eq!(body["journal_id"], r.journal_id.as_str());
            assert_eq!(body["hash"].as_str(), r.event_hash.as_deref());
            assert_eq!(r.event_hash.as_ref().map(String::len), Some(64));
        }

        let ocsf_export = crate::cli::export::tests::export(&path, &["--format", "ocsf"]);
        let mut ocsf = ExportFormatter::new(Format::Ocsf, Filters::default());
        let mut records = Vec::new();
        let mut statement_id = None;
        for item in &batch.items {
            records.extend(ocsf.push(item));
            if item.event.kind.as_str() == "statement" && statement_id.is_none() {
                statement_id = Some(item.event.id);
                assert_eq!(
                    ocsf.safe_cursor(item.event.id),
                    item.event.id - 1,
                    "held: the cursor stays before it"
                );
            }
        }
        let bodies: Vec<Value> = records
            .iter()
            .map(|r| serde_json::from_str(&r.body).expect("json"))
            .collect();
        assert_eq!(bodies, ocsf_export, "the same events as the export");
        let statement = records
            .iter()
            .find(|r| r.kind == "statement")
            .expect("a statement");
        assert_eq!(
            Some(statement.event_id),
            statement_id,
            "its first event's id"
        );
        let by_id: HashMap<i64, &Option<String>> = batch
            .items
            .iter()
            .map(|i| (i.event.id, &i.event.hash))
            .collect();
        for r in &records {
            assert_eq!(by_id[&r.event_id], &r.event_hash, "{r:?}");
        }

        // Filters: only denied statements of workload bot.
        let filters = Filters {
            verdicts: vec!["deny".into()],
            workloads: vec![globset::Glob::new("b*").expect("glob").compile_matcher()],
            ..Filters::default()
        };
        let mut json = ExportFormatter::new(Format::Json, filters.clone());
        let denied: Vec<Record> = batch.items.iter().flat_map(|i| json.push(i)).collect();
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0].kind, "statement");
        assert_eq!(denied[0].severity, 4);
        let mut ocsf = ExportFormatter::new(Format::Ocsf, filters);
        let denied: Vec<Record> = batch.items.iter().flat_map(|i| ocsf.push(i)).collect();
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert!(denied[0].body.contains("\"status_code\":\"42501\""));
    }
}

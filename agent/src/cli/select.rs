//! Selecting sessions and events from a set of journals with a [`Filter`]: what `sessions`,
//! `events` and `export` share.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::filter::{end_has_masks, Filter, InputArgs, VerdictClass, Who};
use super::views::{self, RequestEvents};
use crate::journal::{
    EventRow, EventScan, JournalSet, SegmentInfo, SessionId, SetSession, TextScan,
};
use crate::proxy::postgres::events::kind;

/// A statement's identity across files: journal, session, statement sequence number.
type StatementKey = (String, SessionId, u64);

/// The opened journals and their merged sessions, indexed.
pub struct Selection {
    pub set: JournalSet,
    pub sessions: Vec<SetSession>,
    index: HashMap<String, HashMap<SessionId, usize>>,
}

/// One event with the session it belongs to (if any) and the file it came from.
pub struct Selected<'a> {
    pub segment: &'a SegmentInfo,
    pub session: Option<&'a SetSession>,
    pub event: EventRow,
}

/// An event as `events --json` prints it: the stored event, then its context.
#[derive(Serialize)]
pub struct EventLine<'a> {
    #[serde(flatten)]
    pub event: &'a EventRow,
    pub journal_id: &'a str,
    pub host_id: Option<&'a str>,
    /// The session reference (`ID` or `PREFIX:ID`); null for events of no session.
    pub session: Option<&'a str>,
    pub workload: Option<&'a str>,
    pub target: Option<&'a str>,
    pub protocol: Option<&'a str>,
}

impl<'a> Selected<'a> {
    /// Whom the event is about: its session, or what an event of no session names.
    pub fn who(&self) -> Who<'_> {
        match self.session {
            Some(s) => Who::of_session(&s.row),
            None if self.event.session_id.is_none() => Who::of_event_data(self.event.data.as_ref()),
            None => Who::default(),
        }
    }

    pub fn line(&self) -> EventLine<'_> {
        EventLine {
            event: &self.event,
            journal_id: &self.segment.journal_id,
            host_id: self.segment.host_id.as_deref(),
            session: self.session.map(|s| s.session_ref.as_str()),
            workload: self.who().workload,
            target: self.who().target,
            protocol: self.who().protocol,
        }
    }
}

/// A note for each input file with a `segments/` directory next to it that no input
/// covers: the sealed segments are not read unless asked for (explicit is better), but the
/// reader should know they are there.
fn segment_hints(inputs: &[std::path::PathBuf]) -> Vec<String> {
    let mut hints = Vec::new();
    for input in inputs.iter().filter(|p| p.is_file()) {
        let Some(dir) = input.parent() else { continue };
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        let segments = dir.join("segments");
        let covered = inputs.iter().any(|i| {
            i.is_dir()
                && match (i.canonicalize(), segments.canonicalize()) {
                    (Ok(i), Ok(s)) => s.starts_with(i),
                    _ => false,
                }
        });
        if segments.is_dir() && !covered {
            hints.push(format!(
                "note: {} exists next to {}; its sealed segments are not read (give the \
                 directory, e.g. --journal {}, to include them)",
                segments.display(),
                input.display(),
                dir.display()
            ));
        }
    }
    hints
}

impl Selection {
    /// Opens the inputs and merges their sessions; `open_totals`: see
    /// [`JournalSet::sessions`].
    pub fn open(inputs: &InputArgs, open_totals: bool) -> anyhow::Result<Selection> {
        let inputs = inputs.all()?;
        for hint in segment_hints(&inputs) {
            eprintln!("{hint}");
        }
        let set = JournalSet::open(&inputs)?;
        let sessions = set.sessions(open_totals)?;
        let mut index: HashMap<String, HashMap<SessionId, usize>> = HashMap::new();
        for (i, s) in sessions.iter().enumerate() {
            index
                .entry(s.journal_id.clone())
                .or_default()
                .insert(s.row.id, i);
        }
        Ok(Selection {
            set,
            sessions,
            index,
        })
    }

    /// The merged session `id` of journal `journal_id`.
    pub fn session(&self, journal_id: &str, id: SessionId) -> Option<&SetSession> {
        self.index
            .get(journal_id)
            .and_then(|m| m.get(&id))
            .and_then(|&i| self.sessions.get(i))
    }

    /// The session a reference (`ID` or `PREFIX:ID`) names.
    pub fn resolve(&self, reference: &str) -> anyhow::Result<&SetSession> {
        Ok(self.set.resolve(&self.sessions, reference)?)
    }

    /// The sessions passing `filter`, oldest first; with statement conditions, those
    /// having at least one matching statement.
    pub fn matching_sessions(&self, filter: &Filter) -> anyhow::Result<Vec<&SetSession>> {
        let with_statement: Option<HashSet<(String, SessionId)>> = if filter.has_request() {
            // The time range applies to the session's start here, not to its statements.
            let statements = Filter {
                since: None,
                until: None,
                limit: None,
                workload: None,
                target: None,
                protocol: None,
                ..filter.clone()
            };
            let mut found = HashSet::new();
            self.for_each_event(&statements, &[], None, |selected| {
                if let Some(id) = selected.event.session_id {
                    found.insert((selected.segment.journal_id.clone(), id));
                }
                Ok(())
            })?;
            Some(found)
        } else {
            None
        };
        let mut tail = super::filter::Tail::new(filter.limit);
        for s in &self.sessions {
            let statement_ok = with_statement
                .as_ref()
                .is_none_or(|found| found.contains(&(s.journal_id.clone(), s.row.id)));
            if filter.session_matches(&s.row) && statement_ok {
                tail.push(s);
            }
        }
        Ok(tail.into_vec())
    }

    /// Statements whose `statement_end` recorded masked values.
    fn masked_statements(
        &self,
        session: Option<SessionId>,
    ) -> anyhow::Result<HashSet<StatementKey>> {
        let scan = EventScan {
            session,
            kinds: vec![kind::STATEMENT_END.to_string()],
            ..EventScan::default()
        };
        let mut masked = HashSet::new();
        self.set
            .scan_events(&scan, |segment, event| -> anyhow::Result<()> {
                if let (Some(id), Some(data)) = (event.session_id, &event.data) {
                    if end_has_masks(data) {
                        if let Some(seq) = data.get("seq").and_then(|v| v.as_u64()) {
                            masked.insert((segment.journal_id.clone(), id, seq));
                        }
                    }
                }
                Ok(())
            })?;
        Ok(masked)
    }

    /// Streams the events passing `filter`, the `kinds` (any when empty) and, when given,
    /// belonging to `session`; in reading order (journal, segment, id). `filter.limit` is
    /// left to the caller.
    pub fn for_each_event<'s>(
        &'s self,
        filter: &Filter,
        kinds: &[String],
        session: Option<&'s SetSession>,
        mut f: impl FnMut(Selected<'s>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut kinds = kinds.to_vec();
        let requests: Vec<RequestEvents> = views::request_events()
            .filter(|r| kinds.is_empty() || kinds.iter().any(|k| k == r.kind))
            .collect();
        if filter.has_request() {
            // Request conditions select requests only (of the kinds asked for).
            if requests.is_empty() {
                return Ok(());
            }
            kinds = requests.iter().map(|r| r.kind.to_string()).collect();
        }
        let masked = if filter.verdict == Some(VerdictClass::Masked) {
            self.masked_statements(session.map(|s| s.row.id))?
        } else {
            HashSet::new()
        };
        let scan = EventScan {
            session: session.map(|s| s.row.id),
            kinds,
            since: filter.since,
            until: filter.until,
            text: filter.text.as_ref().map(|needle| TextScan {
                needle: needle.clone(),
                kinds: requests
                    .iter()
                    .map(|r| {
                        let texts = r
                            .texts
                            .iter()
                            .map(|members| members.iter().map(|m| m.to_string()).collect())
                            .collect();
                        (r.kind.to_string(), texts)
                    })
                    .collect(),
            }),
        };
        self.set
            .scan_events(&scan, |segment, event| -> anyhow::Result<()> {
                if session.is_some_and(|s| s.journal_id != segment.journal_id) {
                    return Ok(());
                }
                let context = event
                    .session_id
                    .and_then(|id| self.session(&segment.journal_id, id));
                if filter.has_identity() {
                    let who = match (event.session_id, context) {
                        (_, Some(s)) => Who::of_session(&s.row),
                        // An event of a session this selection does not hold (a segment
                        // read without the one that has the session row).
                        (Some(_), None) => Who::default(),
                        (None, None) => Who::of_event_data(event.data.as_ref()),
                    };
                    if !filter.who_matches(&who) {
                        return Ok(());
                    }
                }
                if filter.has_request() {
                    let (Some(data), Some(requests)) =
                        (&event.data, views::request_events_of(event.kind.as_str()))
                    else {
                        return Ok(());
                    };
                    let is_masked =
                        match (event.session_id, data.get("seq").and_then(|v| v.as_u64())) {
                            (Some(id), Some(seq)) => {
                                masked.contains(&(segment.journal_id.clone(), id, seq))
                            }
                            _ => false,
                        };
                    if !filter.request_matches(requests, data, is_masked) {
                        return Ok(());
                    }
                }
                f(Selected {
                    segment,
                    session: context,
                    event,
                })
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;

    #[test]
    fn a_live_file_with_segments_next_to_it_gets_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("journal.db");
        std::fs::write(&live, b"").expect("write");
        assert!(super::segment_hints(std::slice::from_ref(&live)).is_empty());
        std::fs::create_dir(dir.path().join("segments")).expect("mkdir");
        let hints = super::segment_hints(std::slice::from_ref(&live));
        assert_eq!(hints.len(), 1);
        assert!(hints[0].contains("segments"), "{hints:?}");
        let with_dir = [live, dir.path().join("segments")];
        assert!(
            super::segment_hints(&with_dir).is_empty(),
            "covered by an input"
        );
    }
    use std::path::Path;

    use crate::journal::tests::{at_us, sample_start};
    use crate::journal::{self, Event, JournalOptions, SessionEnd, SessionId};

    /// A PostgreSQL session of workload `bot` with the events `proxy/postgres/flow.rs`
    /// journals: an allowed select with a masked column, a refused drop, a held delete
    /// that gets approved, plus an opaque TCP session of workload `backup`.
    pub(crate) async fn pg_journal(path: &Path) -> (SessionId, SessionId) {
        let j = journal::open(path, JournalOptions::default()).expect("open");
        let h = j.handle();
        let mut start = sample_start("bot", "pg", at_us(0));
        std::sync::Arc::make_mut(&mut start.identity).protocol = "postgres".into();
        let pg = h.start_session(start).await.expect("start");
        let tcp = h
            .start_session(sample_start("backup", "s3", at_us(10)))
            .await
            .expect("start");
        let events: Vec<(i64, &str, &str)> = vec![
            (
                100,
                "pg_startup",
                r#"{"user":"app","database":"shop","db_user":"app"}"#,
            ),
            (
                200,
                "statement",
                r#"{"seq":1,"protocol":"simple","text":"select email from users","kinds":["select"],"tables":["users"],"verdict":"allow","enforced":true,"action":"forwarded"}"#,
            ),
            (
                300,
                "statement_end",
                r#"{"seq":1,"duration_us":900,"tag":"SELECT 1","rows":1,"columns":["email"],"masked":[{"column":"email","rule":"pii","strategy":"hash","values":1}]}"#,
            ),
            (
                400,
                "statement",
                r#"{"seq":2,"protocol":"simple","text":"drop table users","kinds":["drop"],"tables":["users"],"verdict":"deny","rule":"no-ddl","enforced":true,"action":"refused"}"#,
            ),
            (
                500,
                "statement_end",
                r#"{"seq":2,"duration_us":0,"error":{"sqlstate":"42501","message":"nhi-agent: statement is not allowed"}}"#,
            ),
            (
                600,
                "statement",
                r#"{"seq":3,"protocol":"simple","text":"delete from carts where id = 1","kinds":["delete"],"tables":["carts"],"verdict":"approve","rule":"ask","enforced":true,"action":"held"}"#,
            ),
            (
                700,
                "approval",
                r#"{"seq":3,"decision":"approved","by":"alice"}"#,
            ),
            (
                800,
                "statement_end",
                r#"{"seq":3,"duration_us":1500,"tag":"DELETE 1"}"#,
            ),
        ];
        let records: Vec<Event> = events
            .into_iter()
            .map(|(us, kind, data)| Event {
                session: pg,
                at: at_us(us),
                kind: Cow::Owned(kind.to_string()),
                data: data.to_string(),
            })
            .collect();
        h.record(&records).expect("record");
        // Process lineage: an event of no session.
        h.record(&[Event {
            session: journal::NO_SESSION,
            at: at_us(900),
            kind: Cow::Borrowed("exec"),
            data: r#"{"pid":77,"exe":"/usr/bin/psql"}"#.to_string(),
        }])
        .expect("record");
        h.flush().await.expect("flush");
        for (id, us) in [(pg, 1_000), (tcp, 2_000)] {
            h.end_session(SessionEnd {
                id,
                ended_at: at_us(us),
                bytes_from_client: 10,
                bytes_from_server: 20,
                close_reason: "client closed".into(),
            })
            .await
            .expect("end");
        }
        h.flush().await.expect("flush");
        tokio::task::spawn_blocking(move || j.close())
            .await
            .expect("join")
            .expect("close");
        (pg, tcp)
    }
}

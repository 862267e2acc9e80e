//! Journal files from elsewhere are untrusted input: `nhi-agent sessions | events |
//! replay | export` read them with `JournalSet` and `nhi-agent verify` checks them with
//! `evidence::verify::verify_files`. The input is written to a file and both run on it;
//! a corrupt file must give errors or damage findings, never a panic or a hang.
//!
//! The file lives in a directory of this process (under /dev/shm when there is one), and
//! SQLite's side files are removed before each run so one input cannot affect the next.
//! `verify` checks seals with the public key in the PEM file `$NHI_FUZZ_JOURNAL_KEY`
//! (`cargo xtask fuzz` sets it to the seed journal's key, so the seed's seal verifies
//! and the checks behind it run), or with a fresh key.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nhi_agent::evidence::{HostKey, PublicKey};
use nhi_agent::journal::{checkpoint, verify};
use nhi_agent::journal::{EventScan, JournalError, JournalSet};

struct Scratch {
    file: PathBuf,
    side_files: Vec<PathBuf>,
    key: PublicKey,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("nhi-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        let file = dir.join("journal.db");
        let side_files = ["-wal", "-shm", "-journal"]
            .iter()
            .map(|s| dir.join(format!("journal.db{s}")))
            .chain([dir.join("journal.seal")])
            .collect();
        let key = std::env::var_os("NHI_FUZZ_JOURNAL_KEY")
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|pem| PublicKey::parse(&pem).ok())
            .unwrap_or_else(|| HostKey::generate().expect("an Ed25519 key").public());
        Scratch {
            file,
            side_files,
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    for side in &s.side_files {
        let _ = std::fs::remove_file(side);
    }
    std::fs::write(&s.file, data).expect("writing the scratch journal");

    // The readers of `sessions`, `events`, `replay`, `export`.
    if let Ok(set) = JournalSet::open(std::slice::from_ref(&s.file)) {
        let _ = set.segments().count();
        if let Ok(sessions) = set.sessions(true) {
            for session in &sessions {
                let _ = set.for_each_session_event(&session.journal_id, session.row.id, |e| {
                    let _ = serde_json_len(&e);
                    Ok::<(), JournalError>(())
                });
            }
        }
        let _ = set.sessions(false);
        let _ = set.scan_events(&EventScan::default(), |_, e| {
            let _ = serde_json_len(&e);
            Ok::<(), JournalError>(())
        });
        let scan = EventScan {
            kinds: vec!["statement".into()],
            text: Some(nhi_agent::journal::TextScan {
                needle: "SELECT".into(),
                kinds: vec![
                    ("statement".into(), vec![vec!["text".into()]]),
                    (
                        "http_request".into(),
                        vec![vec!["method".into(), "target".into()], vec!["method".into(), "path".into()]],
                    ),
                ],
            }),
            ..EventScan::default()
        };
        let _ = set.scan_events(&scan, |_, _| Ok::<(), JournalError>(()));
    }

    // `nhi-agent verify`.
    let files = std::slice::from_ref(&s.file);
    let checkpoints = checkpoint::collect(files);
    let report = verify::verify_files(files, &checkpoints, &s.key, None);
    let _ = report.damages.len();
});

/// What `--json` does with an event row.
fn serde_json_len(event: &nhi_agent::journal::EventRow) -> usize {
    serde_json::to_string(event).map_or(0, |s| s.len())
}

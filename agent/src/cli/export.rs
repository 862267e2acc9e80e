//! `nhi-agent export --format ocsf|jsonl [filters] [PATH...] [--out FILE]`: the selected
//! events for a SIEM or an archive.
//!
//! - `jsonl`: one journal event per line, as `events --json` prints it, plus the whole
//!   session it belongs to under `session_row` (null for events of no session).
//! - `ocsf`: OCSF 1.3.0 events, one per line (see [`super::ocsf`] for the mapping).
//!   Statements are completed by their `statement_end`, so a filter that leaves the ends
//!   out (e.g. `--text`, `--kind statement`) exports statements with status Unknown.
//!
//! `--out FILE` writes to a temporary file next to FILE and renames it when complete, so
//! a failed export never leaves a truncated file that looks complete.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::events::{select, EventSelectArgs};
use super::filter::{Filter, FilterArgs, InputArgs};
use super::ocsf::OcsfMapper;
use super::select::{EventLine, Selection};
use super::sessions::finish_output;
use crate::journal::SetSession;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// OCSF 1.3.0 JSON events, one per line.
    Ocsf,
    /// Journal events with their session, one per line.
    Jsonl,
}

/// Arguments of `nhi-agent export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The output format.
    #[arg(long, value_enum)]
    pub format: Format,

    /// Write to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub events: EventSelectArgs,
}

#[derive(Serialize)]
struct JsonlLine<'a> {
    #[serde(flatten)]
    line: EventLine<'a>,
    session_row: Option<&'a SetSession>,
}

/// Runs `nhi-agent export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    match &args.out {
        None => {
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            finish_output(write_export(args, &mut out), &mut out)
        }
        Some(path) => {
            // Same directory, so the rename is atomic.
            let mut tmp_name = path.as_os_str().to_owned();
            tmp_name.push(format!(".partial-{}", std::process::id()));
            let tmp = PathBuf::from(tmp_name);
            let result = write_file(args, &tmp).and_then(|()| {
                std::fs::rename(&tmp, path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

fn write_file(args: &ExportArgs, tmp: &std::path::Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = io::BufWriter::new(file);
    write_export(args, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", tmp.display()))
}

/// Writes the export for `args` to `out`.
pub(crate) fn write_export(args: &ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let filter = Filter::new(&args.filter)?;
    let selection = Selection::open(&args.inputs)?;
    let write_line = |out: &mut dyn Write, value: &dyn erased::Json| -> anyhow::Result<()> {
        value.write(out).context("cannot encode an event")?;
        writeln!(out).context("cannot write the output")
    };
    match args.format {
        Format::Jsonl => select(&selection, &filter, &args.events, |s| {
            let line = JsonlLine {
                line: s.line(),
                session_row: s.session,
            };
            write_line(out, &line)
        }),
        Format::Ocsf => {
            let mut mapper = OcsfMapper::new();
            select(&selection, &filter, &args.events, |s| {
                for event in mapper.push(s) {
                    write_line(out, &event)?;
                }
                Ok(())
            })?;
            for event in mapper.finish() {
                write_line(out, &event)?;
            }
            Ok(())
        }
    }
}

/// Object-safe JSON writing, so one closure serves both line types.
mod erased {
    use std::io::Write;

    pub trait Json {
        fn write(&self, out: &mut dyn Write) -> serde_json::Result<()>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut dyn Write) -> serde_json::Result<()> {
            serde_json::to_writer(out, self)
        }
    }
}

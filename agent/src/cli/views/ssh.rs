//! SSH sessions (`protocol = "ssh"`), read from the typed events of
//! `proxy::ssh::events` (`ssh_login`, `ssh_exec`, `ssh_channel`, `ssh_data`, `sftp_op`):
//!
//! - `replay`: a terminal transcript. The login in one line (client user and method,
//!   whom the agent logged in as, the host key, the outcome); each exec as a prompt,
//!   `$ uname -a`, followed by the judgement when it is not a plain allow (`[deny by
//!   rule no-rm: refused]`); channel requests and ends as short bracketed lines
//!   (`[channel 0: pty xterm 120x40]`, `[channel 0: exit status 3; 0 B in, 41 B out]`);
//!   one line per SFTP request (`sftp open /srv/x [write,create]`, `sftp close /srv/x:
//!   67108864 bytes written`). Channel data is shown as the terminal showed it, one
//!   line of output per line of the transcript, indented under the command: stdout as
//!   is, stderr behind a `!` and stdin (what the client sent) behind a `>`, except on a
//!   channel with a terminal (pty), where the terminal's echo on stdout already shows
//!   what was typed (and does not show what it hid, passwords). Lines split across
//!   chunks are joined; a carriage return, a backspace and terminal escape sequences
//!   (colours, titles) act as on a terminal (overwrite, erase, dropped), other control
//!   characters are shown escaped: nothing from the journal reaches the viewer's
//!   terminal as a control sequence. A line is written when it ends (or when another
//!   event comes first), so a timed replay (`replay --speed`) is paced line by line.
//! - `events`: one line per event of any of these kinds.
//! - request events: `ssh_exec`, found by its command (`--text 'rm -rf'`), judged by
//!   `verdict` and `action`. The view registers one kind of request events; `sftp_op`
//!   events (also judged) are selected with `--kind sftp_op` and the other filters.
//! - OCSF: **SSH Activity** (4007) per start request (exec, shell, subsystem), see
//!   [`SshActivity`].
//! - `export --format asciicast`: [`write_cast`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::opaque::Timeline;
use super::{OcsfRequests, ProtocolView, Replay, RequestEvents};
use crate::cli::ocsf::{base, context_unmapped, ms, outcome, request_members};
use crate::cli::replay::{format_offset_us, us_since_epoch};
use crate::cli::select::Selected;
use crate::cli::sessions::sanitize;
use crate::journal::{EventRow, SessionId, SessionRow, SetSession};
use crate::proxy::ssh::events::{kind, SftpOp, SshChannel, SshData, SshExec, SshLogin};

/// The `protocol` of SSH sessions.
pub const PROTOCOL: &str = "ssh";

/// OCSF SSH Activity.
pub const SSH_ACTIVITY: u64 = 4007;

/// The SSH view.
pub struct Ssh;

impl ProtocolView for Ssh {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn replay(&self, session: &SessionRow) -> Box<dyn Replay> {
        Box::new(Transcript::new(session))
    }

    fn ocsf(&self) -> Option<Box<dyn OcsfRequests>> {
        Some(Box::<SshActivity>::default())
    }

    /// `ssh_exec`: `--text 'rm -rf'` finds a command. One kind per view: `sftp_op`
    /// events, judged too, are found with `--kind sftp_op` (and `--session`, `--since`,
    /// ...), not by the request conditions.
    fn requests(&self) -> Option<RequestEvents> {
        Some(RequestEvents {
            kind: kind::EXEC,
            texts: &[&["command"]],
            action: "action",
        })
    }

    fn detail(&self, kind: &str, data: &Value) -> Option<String> {
        match kind {
            kind::LOGIN => read::<SshLogin>(data).map(|l| login_line(&l)),
            kind::EXEC => read::<SshExec>(data).map(|e| {
                let mut line = e.command.replace('\n', " ");
                if e.verdict != "allow" || e.action != "forwarded" {
                    line = format!("[{} {}] {line}", e.verdict, e.action);
                }
                line
            }),
            kind::CHANNEL => read::<SshChannel>(data).map(|c| {
                let (line, note) = channel_line(&c);
                match note {
                    Some(note) => format!("{line} [{note}]"),
                    None => line,
                }
            }),
            kind::DATA => read::<SshData>(data).map(|d| {
                format!(
                    "channel {} {} {} B \"{}\"",
                    d.channel, d.stream, d.bytes, d.text
                )
            }),
            kind::SFTP_OP => read::<SftpOp>(data).map(|op| {
                let (line, note) = sftp_line(&op);
                match note {
                    Some(note) => format!("{line} [{note}]"),
                    None => line,
                }
            }),
            _ => None,
        }
    }
}

/// One of these events' data; `None` if it is not one.
fn read<T: DeserializeOwned>(data: &Value) -> Option<T> {
    T::deserialize(data).ok()
}

/// The judgement of a request that is not a plain allow (`deny by rule no-rm: refused`).
fn judgement_note(
    verdict: &str,
    rule: Option<&str>,
    action: &str,
    enforced: bool,
    reason: Option<&str>,
) -> Option<String> {
    if verdict == "allow" && action == "forwarded" {
        return None;
    }
    let rule = rule.map(|r| format!(" by rule {r}")).unwrap_or_default();
    let mode = if enforced {
        ""
    } else {
        ", observe mode: not enforced"
    };
    let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
    Some(format!("{verdict}{rule}: {action}{mode}{why}"))
}

/// A login in one line: `login bot (publickey SHA256:..) as deploy (agent key
/// SHA256:.., certificate), host key SHA256:..: ok`.
fn login_line(l: &SshLogin) -> String {
    let mut line = format!("login {} ({}", l.user, l.method);
    if let Some(key) = &l.client_key {
        line.push_str(&format!(" {key}"));
    }
    line.push_str(&format!(") as {}", l.upstream_user));
    if !l.agent_key.is_empty() || l.agent_cert {
        let cert = if l.agent_cert { ", certificate" } else { "" };
        line.push_str(&format!(" (agent key {}{cert})", l.agent_key));
    }
    if let Some(host) = &l.host_key {
        line.push_str(&format!(", host key {host}"));
    }
    line.push_str(&format!(": {}", l.outcome));
    if let Some(reason) = &l.reason {
        line.push_str(&format!(": {reason}"));
    }
    line
}

/// How a channel ended: `exit status 3; 0 B in, 41 B out`, `killed by signal TERM`,
/// with what was not recorded and the reason the agent gave.
fn channel_end(c: &SshChannel) -> String {
    let mut parts = vec![match (c.exit_status, &c.exit_signal) {
        (_, Some(signal)) => format!("killed by signal {signal}"),
        (Some(status), None) => format!("exit status {status}"),
        (None, None) => "closed".to_owned(),
    }];
    if c.bytes_in.is_some() || c.bytes_out.is_some() {
        parts.push(format!(
            "{} B in, {} B out",
            c.bytes_in.unwrap_or(0),
            c.bytes_out.unwrap_or(0)
        ));
    }
    if c.truncated {
        parts.push("data not all recorded (record_results budget)".to_owned());
    }
    let mut line = parts.join("; ");
    if let Some(reason) = &c.reason {
        line.push_str(&format!(": {reason}"));
    }
    line
}

/// A channel event in one line (without brackets), and the judgement of a judged
/// request that is not a plain allow.
fn channel_line(c: &SshChannel) -> (String, Option<String>) {
    // Forwarding requests of no channel (tcpip-forward, direct-tcpip) carry u32::MAX.
    let who = if c.channel == u32::MAX {
        String::new()
    } else {
        format!("channel {}: ", c.channel)
    };
    let size = match (c.cols, c.rows) {
        (Some(cols), Some(rows)) => Some(format!("{cols}x{rows}")),
        _ => None,
    };
    match c.event.as_str() {
        "open" => (format!("{who}open {}", c.kind), None),
        "close" => (format!("{who}{}", channel_end(c)), None),
        _ => {
            let mut what = match c.kind.as_str() {
                "window-change" => "window".to_owned(),
                other => other.to_owned(),
            };
            for part in [c.detail.clone(), size].into_iter().flatten() {
                what.push(' ');
                what.push_str(&part);
            }
            let note = c.verdict.as_deref().and_then(|verdict| {
                let action = c.action.as_deref().unwrap_or("");
                let enforced = !(verdict == "deny" && action == "forwarded");
                judgement_note(
                    verdict,
                    c.rule.as_deref(),
                    action,
                    enforced,
                    c.reason.as_deref(),
                )
            });
            (format!("{who}{what}"), note)
        }
    }
}

/// An SFTP request in one line (`sftp open /srv/x [write,create]`, `sftp close /srv/x:
/// 67108864 bytes written`, `sftp rename /a -> /b`, `sftp stat /x: failed (2: No such
/// file)`), and its judgement when it is not a plain allow.
fn sftp_line(op: &SftpOp) -> (String, Option<String>) {
    let mut line = format!("sftp {}", op.op);
    if let Some(path) = &op.path {
        line.push_str(&format!(" {path}"));
    }
    if let Some(target) = &op.target {
        line.push_str(&format!(" -> {target}"));
    }
    if op.op == "close" {
        let moved = match (op.read, op.written) {
            (Some(r), Some(w)) => format!("{r} bytes read, {w} bytes written"),
            (Some(r), None) => format!("{r} bytes read"),
            (None, Some(w)) => format!("{w} bytes written"),
            (None, None) => format!("{} bytes", op.bytes.unwrap_or(0)),
        };
        line.push_str(&format!(": {moved}"));
    } else if !op.flags.is_empty() {
        line.push_str(&format!(" [{}]", op.flags.join(",")));
    }
    if op.action == "failed" {
        line.push_str(": failed");
        if let Some(status) = &op.status {
            line.push_str(&format!(" ({status})"));
        }
        return (line, None);
    }
    let note = judgement_note(&op.verdict, op.rule.as_deref(), &op.action, true, None);
    (line, note)
}

/// Indentation of a data line's marker (` ` stdout, `!` stderr, `>` stdin): its text
/// starts under the command of the `$` line.
const DATA_PAD: &str = "              ";

/// Indentation of the continuation lines of a multi-line command.
const COMMAND_PAD: &str = "                ";

/// One line of channel data as a terminal would show it: carriage return and backspace
/// move the cursor (what follows overwrites), escape sequences (CSI, OSC, string
/// controls, two- and three-byte escapes) are dropped, a tab is kept, and any other
/// control character is shown escaped (`\u{7}`).
pub(crate) fn terminal_line(raw: &str) -> String {
    let mut cells: Vec<char> = Vec::new();
    let mut cursor = 0usize;
    let put = |cells: &mut Vec<char>, cursor: &mut usize, c: char| {
        if *cursor < cells.len() {
            cells[*cursor] = c;
        } else {
            cells.push(c);
        }
        *cursor += 1;
    };
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => cursor = 0,
            '\u{8}' => cursor = cursor.saturating_sub(1),
            '\t' => put(&mut cells, &mut cursor, c),
            '\u{1b}' | '\u{9b}' => {
                let introducer = if c == '\u{9b}' {
                    Some('[')
                } else {
                    chars.next()
                };
                match introducer {
                    // CSI: parameters and intermediates up to a final byte.
                    Some('[') => {
                        for c in chars.by_ref() {
                            if ('\u{40}'..='\u{7e}').contains(&c) {
                                break;
                            }
                        }
                    }
                    // OSC and string controls: up to BEL or ST (ESC \).
                    Some(']' | 'P' | 'X' | '^' | '_') => {
                        while let Some(c) = chars.next() {
                            if c == '\u{7}' || c == '\u{9c}' {
                                break;
                            }
                            if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                                chars.next();
                                break;
                            }
                        }
                    }
                    // Character set designations: one more byte.
                    Some('(' | ')' | '*' | '+' | '#' | '%') => {
                        chars.next();
                    }
                    _ => {}
                }
            }
            c if c.is_control() => {
                for e in c.escape_default() {
                    put(&mut cells, &mut cursor, e);
                }
            }
            c => put(&mut cells, &mut cursor, c),
        }
    }
    cells.into_iter().collect()
}

/// Channel data not ended by a newline yet.
struct OpenLine {
    channel: u32,
    stream: String,
    text: String,
}

/// The replay of an SSH session (see the module documentation).
struct Transcript {
    start_us: i64,
    timeline: Timeline,
    /// Channels with a terminal.
    pty: HashSet<u32>,
    /// Channels running an exec (not refused), for the count of non-zero exits.
    exec_channels: HashSet<u32>,
    open: Option<OpenLine>,
    execs: u64,
    refused: u64,
    nonzero: u64,
    starts: u64,
    sftp: u64,
    sftp_refused: u64,
    sftp_failed: u64,
}

impl Transcript {
    fn new(session: &SessionRow) -> Self {
        Transcript {
            start_us: us_since_epoch(session.started_at),
            timeline: Timeline::new(session),
            pty: HashSet::new(),
            exec_channels: HashSet::new(),
            open: None,
            execs: 0,
            refused: 0,
            nonzero: 0,
            starts: 0,
            sftp: 0,
            sftp_refused: 0,
            sftp_failed: 0,
        }
    }

    fn data_line(out: &mut dyn Write, stream: &str, raw: &str) -> io::Result<()> {
        let marker = match stream {
            "stderr" => '!',
            "stdin" => '>',
            _ => ' ',
        };
        let line = format!("{DATA_PAD}{marker} {}", terminal_line(raw));
        writeln!(out, "{}", line.trim_end())
    }

    /// Writes the open line, if any.
    fn flush(&mut self, out: &mut dyn Write) -> io::Result<()> {
        match self.open.take() {
            Some(open) if !open.text.is_empty() => Self::data_line(out, &open.stream, &open.text),
            _ => Ok(()),
        }
    }

    /// Channel data: appended to the open line of its channel and stream, complete lines
    /// written.
    fn data(&mut self, out: &mut dyn Write, d: SshData) -> io::Result<()> {
        let same = self
            .open
            .as_ref()
            .is_some_and(|o| o.channel == d.channel && o.stream == d.stream);
        if same {
            if let Some(open) = &mut self.open {
                open.text.push_str(&d.text);
            }
        } else {
            self.flush(out)?;
            self.open = Some(OpenLine {
                channel: d.channel,
                stream: d.stream,
                text: d.text,
            });
        }
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        if let Some(end) = open.text.rfind('\n') {
            let rest = open.text.split_off(end + 1);
            let complete = std::mem::replace(&mut open.text, rest);
            for line in complete[..end].split('\n') {
                Self::data_line(out, &open.stream, line)?;
            }
        }
        Ok(())
    }

    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        let null = Value::Null;
        let data = event.data.as_ref().unwrap_or(&null);
        if event.kind.as_str() == kind::DATA {
            if let Some(d) = read::<SshData>(data) {
                // On a terminal, what was typed is on stdout as the terminal echoed it.
                if d.stream == "stdin" && self.pty.contains(&d.channel) {
                    return Ok(());
                }
                return self.data(out, d);
            }
        }
        self.flush(out)?;
        let offset = format_offset_us(us_since_epoch(event.at).saturating_sub(self.start_us));
        let note = |note: Option<String>| {
            note.map(|n| format!("   [{}]", sanitize(&n)))
                .unwrap_or_default()
        };
        match event.kind.as_str() {
            kind::LOGIN if read::<SshLogin>(data).is_some() => {
                let login = read::<SshLogin>(data).expect("checked");
                writeln!(out, "  {offset}  {}", sanitize(&login_line(&login)))
            }
            kind::EXEC if read::<SshExec>(data).is_some() => {
                let exec = read::<SshExec>(data).expect("checked");
                self.execs += 1;
                if exec.action == "refused" {
                    self.refused += 1;
                } else {
                    self.exec_channels.insert(exec.channel);
                }
                if exec.pty {
                    self.pty.insert(exec.channel);
                }
                let command: Vec<String> = exec
                    .command
                    .split('\n')
                    .map(|l| sanitize(l).into_owned())
                    .collect();
                let judgement = judgement_note(
                    &exec.verdict,
                    exec.rule.as_deref(),
                    &exec.action,
                    exec.enforced,
                    exec.reason.as_deref(),
                );
                writeln!(
                    out,
                    "  {offset}  $ {}{}",
                    command.join(&format!("\n{COMMAND_PAD}")),
                    note(judgement)
                )
            }
            kind::CHANNEL if read::<SshChannel>(data).is_some() => {
                let c = read::<SshChannel>(data).expect("checked");
                match (c.event.as_str(), c.kind.as_str()) {
                    ("request", "pty") if c.action.as_deref() != Some("refused") => {
                        self.pty.insert(c.channel);
                    }
                    ("request", "shell" | "subsystem") if c.seq.is_some() => self.starts += 1,
                    ("close", _) => {
                        self.pty.remove(&c.channel);
                        if self.exec_channels.remove(&c.channel)
                            && (c.exit_status.is_some_and(|s| s != 0) || c.exit_signal.is_some())
                        {
                            self.nonzero += 1;
                        }
                    }
                    _ => {}
                }
                let (line, judgement) = channel_line(&c);
                writeln!(out, "  {offset}  [{}]{}", sanitize(&line), note(judgement))
            }
            kind::SFTP_OP if read::<SftpOp>(data).is_some() => {
                let op = read::<SftpOp>(data).expect("checked");
                match op.action.as_str() {
                    "failed" => self.sftp_failed += 1,
                    _ => {
                        // A close reports a handle; the request was its open.
                        if op.op != "close" {
                            self.sftp += 1;
                        }
                        if op.action == "refused" {
                            self.sftp_refused += 1;
                        }
                    }
                }
                let (line, judgement) = sftp_line(&op);
                writeln!(out, "  {offset}  {}{}", sanitize(&line), note(judgement))
            }
            crate::session::gate::APPROVAL => writeln!(
                out,
                "  {offset}  approval: {}{}",
                sanitize(data.get("decision").and_then(Value::as_str).unwrap_or("")),
                data.get("by")
                    .and_then(Value::as_str)
                    .map(|b| format!(" by {}", sanitize(b)))
                    .unwrap_or_default()
            ),
            _ => self.timeline.event(out, event),
        }
    }

    fn finish(mut self, out: &mut dyn Write) -> io::Result<()> {
        self.flush(out)?;
        writeln!(
            out,
            "  {} commands: {} refused, {} exited non-zero; {} shell or subsystem requests; \
             {} sftp requests: {} refused, {} failed",
            self.execs,
            self.refused,
            self.nonzero,
            self.starts,
            self.sftp,
            self.sftp_refused,
            self.sftp_failed
        )
    }
}

impl Replay for Transcript {
    fn event(&mut self, out: &mut dyn Write, event: &EventRow) -> io::Result<()> {
        Transcript::event(self, out, event)
    }

    fn finish(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        Transcript::finish(*self, out)
    }
}

/// A start request (exec, shell, subsystem) as the OCSF mapping reads it, from an
/// `ssh_exec` or a judged `ssh_channel` request.
struct StartRequest {
    /// "exec", "shell", "subsystem".
    what: String,
    channel: u32,
    seq: u64,
    /// The command of an exec, the subsystem's name.
    detail: Option<String>,
    verdict: String,
    rule: Option<String>,
    enforced: bool,
    action: String,
    pty: bool,
    reason: Option<String>,
}

impl StartRequest {
    fn of(e: &EventRow) -> Option<StartRequest> {
        let data = e.data.as_ref()?;
        match e.kind.as_str() {
            kind::EXEC => {
                let x = read::<SshExec>(data)?;
                Some(StartRequest {
                    what: "exec".into(),
                    channel: x.channel,
                    seq: x.seq,
                    detail: Some(x.command),
                    verdict: x.verdict,
                    rule: x.rule,
                    enforced: x.enforced,
                    action: x.action,
                    pty: x.pty,
                    reason: x.reason,
                })
            }
            kind::CHANNEL => {
                let c = read::<SshChannel>(data)?;
                let start =
                    c.event == "request" && matches!(c.kind.as_str(), "shell" | "subsystem");
                let (true, Some(seq)) = (start, c.seq) else {
                    return None;
                };
                let verdict = c.verdict.unwrap_or_default();
                let action = c.action.unwrap_or_default();
                Some(StartRequest {
                    what: c.kind,
                    channel: c.channel,
                    seq,
                    detail: c.detail,
                    // The channel request does not say; a deny that was forwarded was
                    // only observed.
                    enforced: !(verdict == "deny" && action == "forwarded"),
                    verdict,
                    rule: c.rule,
                    action,
                    pty: false,
                    reason: c.reason,
                })
            }
            _ => None,
        }
    }

    /// The request in one line: the command, `shell`, `subsystem sftp`.
    fn shown(&self) -> String {
        match (self.what.as_str(), &self.detail) {
            ("exec", Some(command)) => command.clone(),
            (what, Some(detail)) => format!("{what} {detail}"),
            (what, None) => what.to_owned(),
        }
    }
}

/// A channel's key across files: journal, session, channel.
type ChannelKey = (String, SessionId, u32);

/// A start request waiting for its channel's close.
struct Pending {
    /// Arrival order, for those that never got their close.
    n: u64,
    journal_id: String,
    host_id: Option<String>,
    session: SetSession,
    request: EventRow,
    approval: Option<Value>,
}

/// SSH start requests as OCSF **SSH Activity** (4007, category 4 Network Activity): one
/// per `ssh_exec`, and per judged `shell` or `subsystem` request (an interactive shell,
/// an SFTP session), completed by the `ssh_channel` close of the same channel (its exit
/// status) and by the `approval` of a held one (same `seq`); one whose channel never
/// closed in the export comes at the end, status Unknown.
///
/// - `activity_id` 99 Other (the network activities, Open, Close, Traffic, ..., are
///   about the connection, which `session_start`/`session_end` report as Network
///   Activity), `activity_name` `Exec`, `Shell` or `Subsystem`; `type_uid` 400799,
///   `type_name` `SSH Activity: Other`.
/// - The command: `message` (`uname -a: exit status 3`, with the judgement when it is
///   not a plain allow) and `unmapped.ssh_command` (the command of an exec, as
///   journaled: through the mask detectors; the subsystem's name). SSH Activity 1.3.0
///   has no attribute for a command run on the server, and `actor.process` is the
///   workload's process, the client.
/// - `status_id` 1 Success (exit status 0), 2 Failure (a non-zero exit status, a
///   signal, or a close with a reason and neither: the host refused the channel), 0
///   Unknown (no close in the export, or a close with no exit status); `status_code`
///   the exit status (`"3"`); `status_detail` `exit status 3`, `killed by signal TERM`,
///   followed by the agent's reason (a refusal: `nhi-agent: command refused by policy
///   rule "no-rm"`, exit status 126).
/// - `action`, `disposition` and `severity` as for every request (`cli::ocsf::outcome`,
///   from `action`, `verdict`, `enforced` and the approval decision).
/// - `auth_type_id` from the session's `ssh_login` method (password 5, publickey 6,
///   keyboard-interactive 4, none 99 Other), when the export holds it; `protocol_ver`
///   `2.0`; `connection_info` as for the session's Network Activity; `traffic` the
///   channel's bytes (`bytes_out` from the client, `bytes_in` to it); `start_time`,
///   `end_time` and `duration` from the request to the close.
/// - `actor`, `src_endpoint`, `dst_endpoint`, `metadata` as for every request
///   (`metadata.uid` names the request event, `correlation_uid` the session).
///   `unmapped`: the session context, `ssh_request`, `ssh_command`, `ssh_channel`,
///   `ssh_pty`, the judgement (`request_verdict`, `request_rule`, `request_enforced`,
///   `request_action`, `request_reason`), `approval`, the end (`ssh_exit_status`,
///   `ssh_exit_signal`, `ssh_close_reason`, `ssh_truncated`) and the login
///   (`ssh_user`, `ssh_upstream_user`, `ssh_client_key`, `ssh_agent_key`,
///   `ssh_host_key`).
#[derive(Default)]
pub(super) struct SshActivity {
    pending: HashMap<ChannelKey, Pending>,
    arrived: u64,
    logins: HashMap<(String, SessionId), SshLogin>,
}

impl OcsfRequests for SshActivity {
    fn push(&mut self, s: &Selected<'_>) -> Vec<Value> {
        let Some(session) = s.session else {
            return Vec::new();
        };
        let e = &s.event;
        let journal_id = &s.segment.journal_id;
        let null = Value::Null;
        let data = e.data.as_ref().unwrap_or(&null);
        match e.kind.as_str() {
            kind::LOGIN => {
                if let Some(login) = read::<SshLogin>(data) {
                    self.logins
                        .insert((journal_id.clone(), session.row.id), login);
                }
                Vec::new()
            }
            kind::EXEC | kind::CHANNEL => {
                if let Some(request) = StartRequest::of(e) {
                    let key = (journal_id.clone(), session.row.id, request.channel);
                    // A second start on a channel still pending: the first never got
                    // its close; export it as it is.
                    let out = self
                        .pending
                        .remove(&key)
                        .map(|old| self.activity(&old, None))
                        .into_iter()
                        .collect();
                    self.arrived += 1;
                    self.pending.insert(
                        key,
                        Pending {
                            n: self.arrived,
                            journal_id: journal_id.clone(),
                            host_id: s.segment.host_id.clone(),
                            session: session.clone(),
                            request: e.clone(),
                            approval: None,
                        },
                    );
                    return out;
                }
                match read::<SshChannel>(data) {
                    Some(c) if c.event == "close" => self
                        .pending
                        .remove(&(journal_id.clone(), session.row.id, c.channel))
                        .map(|p| self.activity(&p, Some(e)))
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                }
            }
            crate::session::gate::APPROVAL => {
                let seq = data.get("seq").and_then(Value::as_u64);
                let held = self.pending.iter_mut().find(|((j, id, _), p)| {
                    j == journal_id
                        && *id == session.row.id
                        && StartRequest::of(&p.request).is_some_and(|r| Some(r.seq) == seq)
                });
                if let Some((_, p)) = held {
                    p.approval = e.data.clone();
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn oldest_pending(&self) -> Option<i64> {
        self.pending.values().map(|p| p.request.id).min()
    }

    fn session_ended(&mut self, journal_id: &str, session: SessionId) {
        let held = self
            .pending
            .keys()
            .any(|(j, s, _)| j == journal_id && *s == session);
        if !held {
            self.logins.remove(&(journal_id.to_owned(), session));
        }
    }

    fn finish(mut self: Box<Self>) -> Vec<Value> {
        let mut left: Vec<Pending> = std::mem::take(&mut self.pending).into_values().collect();
        left.sort_by_key(|p| p.n);
        left.iter().map(|p| self.activity(p, None)).collect()
    }
}

/// `auth_type_id` and its caption for an SSH authentication method.
fn auth_type(method: &str) -> (u64, &'static str) {
    match method {
        "password" => (5, "Password"),
        "publickey" => (6, "Public Key"),
        "keyboard-interactive" => (4, "Keyboard Interactive"),
        "hostbased" => (3, "Host Based"),
        "gssapi-with-mic" | "gssapi-keyex" => (2, "GSSAPI"),
        _ => (99, "Other"),
    }
}

impl SshActivity {
    /// One SSH Activity: a start request, its channel's close if it came.
    fn activity(&self, p: &Pending, close: Option<&EventRow>) -> Value {
        let request = StartRequest::of(&p.request).unwrap_or(StartRequest {
            what: String::new(),
            channel: 0,
            seq: 0,
            detail: None,
            verdict: String::new(),
            rule: None,
            enforced: true,
            action: String::new(),
            pty: false,
            reason: None,
        });
        let end = close
            .and_then(|c| c.data.as_ref())
            .and_then(read::<SshChannel>);
        let decision = p
            .approval
            .as_ref()
            .and_then(|a| a.get("decision"))
            .and_then(Value::as_str);
        let judged = outcome(
            &request.action,
            &request.verdict,
            request.enforced,
            decision,
        );
        let (severity_id, severity) = judged.severity;
        let (status_id, status) = match &end {
            None => (0, "Unknown"),
            Some(c) if c.exit_signal.is_some() => (2, "Failure"),
            Some(c) => match c.exit_status {
                Some(0) => (1, "Success"),
                Some(_) => (2, "Failure"),
                None if c.reason.is_some() => (2, "Failure"),
                None => (0, "Unknown"),
            },
        };
        let activity_name = match request.what.as_str() {
            "exec" => "Exec",
            "shell" => "Shell",
            "subsystem" => "Subsystem",
            _ => "Other",
        };
        let session = &p.session;
        let start = ms(p.request.at);
        let mut event = base(
            SSH_ACTIVITY,
            "SSH Activity",
            4,
            "Network Activity",
            99,
            activity_name,
            start,
            (severity_id, severity),
        );
        // The caption of type_uid 400799; activity_name says which request it was.
        event.insert("type_name".into(), json!("SSH Activity: Other"));
        let mut message = request.shown();
        if let Some(note) = judgement_note(
            &request.verdict,
            request.rule.as_deref(),
            &request.action,
            request.enforced,
            None,
        ) {
            message = format!("{message} [{note}]");
        }
        if let Some(c) = &end {
            message = format!("{message}: {}", channel_end(c));
        }
        let login = self.logins.get(&(p.journal_id.clone(), session.row.id));
        let mut unmapped = context_unmapped(&p.journal_id, p.host_id.as_deref(), session);
        for (key, value) in [
            ("ssh_request", json!(request.what)),
            ("ssh_command", json!(request.detail)),
            ("ssh_channel", json!(request.channel)),
            ("ssh_pty", json!(request.pty.then_some(true))),
            ("request_verdict", json!(request.verdict)),
            ("request_rule", json!(request.rule)),
            ("request_enforced", json!(request.enforced)),
            ("request_action", json!(request.action)),
            ("request_reason", json!(request.reason)),
            (
                "ssh_exit_status",
                json!(end.as_ref().and_then(|c| c.exit_status)),
            ),
            (
                "ssh_exit_signal",
                json!(end.as_ref().and_then(|c| c.exit_signal.clone())),
            ),
            (
                "ssh_close_reason",
                json!(end.as_ref().and_then(|c| c.reason.clone())),
            ),
            (
                "ssh_truncated",
                json!(end.as_ref().is_some_and(|c| c.truncated).then_some(true)),
            ),
            ("ssh_user", json!(login.map(|l| &l.user))),
            ("ssh_upstream_user", json!(login.map(|l| &l.upstream_user))),
            (
                "ssh_client_key",
                json!(login.and_then(|l| l.client_key.as_ref())),
            ),
            ("ssh_agent_key", json!(login.map(|l| &l.agent_key))),
            (
                "ssh_host_key",
                json!(login.and_then(|l| l.host_key.as_ref())),
            ),
        ] {
            if !value.is_null() && value != json!("") {
                unmapped.insert(key.into(), value);
            }
        }
        if let Some(a) = &p.approval {
            unmapped.insert("approval".into(), a.clone());
        }
        for (k, v) in request_members(
            message,
            (status_id, status),
            &judged,
            Some((p.journal_id.as_str(), &p.request)),
            session,
        )
        .into_iter()
        .chain([
            (
                "connection_info",
                json!({
                    "protocol_name": "tcp",
                    "direction_id": 2,
                    "direction": "Outbound",
                    "uid": session.session_ref,
                }),
            ),
            ("protocol_ver", json!("2.0")),
        ]) {
            event.insert(k.into(), v);
        }
        if let Some(l) = login {
            let (id, caption) = auth_type(&l.method);
            event.insert("auth_type_id".into(), json!(id));
            event.insert("auth_type".into(), json!(caption));
        }
        if let (Some(c), Some(row)) = (&end, close) {
            if let Some(status) = c.exit_status {
                event.insert("status_code".into(), json!(status.to_string()));
            }
            event.insert("status_detail".into(), json!(channel_end(c)));
            if c.bytes_in.is_some() || c.bytes_out.is_some() {
                let mut traffic = Map::new();
                if let Some(n) = c.bytes_in {
                    traffic.insert("bytes_out".into(), json!(n));
                }
                if let Some(n) = c.bytes_out {
                    traffic.insert("bytes_in".into(), json!(n));
                }
                event.insert("traffic".into(), Value::Object(traffic));
            }
            event.insert("start_time".into(), json!(start));
            event.insert("end_time".into(), json!(ms(row.at)));
            event.insert("duration".into(), json!(ms(row.at).saturating_sub(start)));
        }
        event.insert("unmapped".into(), Value::Object(unmapped));
        Value::Object(event)
    }
}

/// What an asciicast needs from the whole session (whatever the filters selected):
/// its terminal and the channels that have one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Terminal {
    /// The first terminal granted: columns, rows, `TERM`.
    pub size: Option<(u32, u32, Option<String>)>,
    pub pty_channels: HashSet<u32>,
}

impl Terminal {
    /// Reads one event of the session (in journal order).
    pub fn push(&mut self, event: &EventRow) {
        let Some(data) = event.data.as_ref() else {
            return;
        };
        match event.kind.as_str() {
            kind::CHANNEL => {
                let Some(c) = read::<SshChannel>(data) else {
                    return;
                };
                if c.event == "request" && c.kind == "pty" && c.action.as_deref() != Some("refused")
                {
                    self.pty_channels.insert(c.channel);
                    if let (None, Some(cols), Some(rows)) = (&self.size, c.cols, c.rows) {
                        self.size = Some((cols, rows, c.detail.clone()));
                    }
                }
            }
            kind::EXEC => {
                if let Some(x) = read::<SshExec>(data).filter(|x| x.pty) {
                    self.pty_channels.insert(x.channel);
                }
            }
            _ => {}
        }
    }
}

/// Writes one SSH session's events as an asciicast v2 recording
/// (docs.asciinema.org/manual/asciicast/v2): a header (the first terminal's size, else
/// 80x24; `timestamp` the first event's time; its `TERM`), then one `[offset, "o",
/// text]` per `ssh_data` of stdout or stderr, its text as journaled (masked) with, on a
/// channel without a terminal, each bare newline made `\r\n` as the client's terminal
/// would; `[offset, "r", "COLSxROWS"]` per window change; `[offset, "m", label]` per
/// start request (`$ uname -a`, `shell`, with the judgement when it is not a plain
/// allow), markers a player lists as chapters, and a marker at the close of a channel
/// whose data was not all recorded. What the client typed (stdin) is not written.
/// Offsets are seconds from the first of `events`, never decreasing.
pub(crate) fn write_cast(
    out: &mut dyn Write,
    session: &SetSession,
    events: &[EventRow],
    terminal: &Terminal,
) -> io::Result<()> {
    let first_us = events.first().map(|e| us_since_epoch(e.at)).unwrap_or(0);
    let (width, height, term) = terminal.size.clone().unwrap_or((80, 24, None));
    let mut env = Map::new();
    if let Some(term) = term {
        env.insert("TERM".into(), json!(term));
    }
    let identity = &session.row.identity;
    let header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": first_us.div_euclid(1_000_000),
        "title": format!(
            "{} → {} (nhi-agent session {})",
            identity.workload, identity.target, session.session_ref
        ),
        "env": env,
    });
    serde_json::to_writer(&mut *out, &header)?;
    writeln!(out)?;
    let mut last_us = 0i64;
    for e in events {
        let Some(data) = e.data.as_ref() else {
            continue;
        };
        let line = match e.kind.as_str() {
            kind::DATA => match read::<SshData>(data) {
                Some(d) if d.stream == "stdout" || d.stream == "stderr" => {
                    let text = if terminal.pty_channels.contains(&d.channel) {
                        d.text
                    } else {
                        crlf(&d.text)
                    };
                    Some(("o", text))
                }
                _ => None,
            },
            kind::CHANNEL => read::<SshChannel>(data).and_then(|c| {
                match (c.event.as_str(), c.kind.as_str(), c.cols, c.rows) {
                    ("request", "window-change", Some(cols), Some(rows)) => {
                        Some(("r", format!("{cols}x{rows}")))
                    }
                    ("close", _, _, _) if c.truncated => Some((
                        "m",
                        format!(
                            "channel {}: data not all recorded (record_results budget)",
                            c.channel
                        ),
                    )),
                    _ => StartRequest::of(e).map(|r| ("m", marker(&r))),
                }
            }),
            kind::EXEC => StartRequest::of(e).map(|r| ("m", marker(&r))),
            _ => None,
        };
        let Some((code, text)) = line else {
            continue;
        };
        last_us = last_us.max(us_since_epoch(e.at).saturating_sub(first_us));
        let offset = last_us as f64 / 1e6;
        serde_json::to_writer(&mut *out, &json!([offset, code, text]))?;
        writeln!(out)?;
    }
    Ok(())
}

/// A start request as an asciicast marker.
fn marker(r: &StartRequest) -> String {
    let shown = match r.what.as_str() {
        "exec" => format!("$ {}", r.shown()),
        _ => r.shown(),
    };
    match judgement_note(&r.verdict, r.rule.as_deref(), &r.action, r.enforced, None) {
        Some(note) => format!("{shown} [{note}]"),
        None => shown,
    }
}

/// Text with each newline not preceded by a carriage return made `\r\n`.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous = None;
    for c in text.chars() {
        if c == '\n' && previous != Some('\r') {
            out.push('\r');
        }
        out.push(c);
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::cli::views::http::tests::journal_with;
    use crate::journal::tests::at_us;

    fn to_json(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).expect("serialize")
    }

    fn open(channel: u32) -> String {
        to_json(&SshChannel {
            channel,
            event: "open".into(),
            kind: "session".into(),
            ..SshChannel::default()
        })
    }

    fn request(channel: u32, kind: &str, detail: Option<&str>) -> SshChannel {
        SshChannel {
            channel,
            event: "request".into(),
            kind: kind.into(),
            detail: detail.map(str::to_owned),
            action: Some("forwarded".into()),
            ..SshChannel::default()
        }
    }

    fn close(channel: u32, exit_status: u32, bytes_in: u64, bytes_out: u64) -> SshChannel {
        SshChannel {
            channel,
            event: "close".into(),
            kind: "session".into(),
            exit_status: Some(exit_status),
            bytes_in: Some(bytes_in),
            bytes_out: Some(bytes_out),
            ..SshChannel::default()
        }
    }

    fn exec(seq: u64, channel: u32, command: &str) -> SshExec {
        SshExec {
            seq,
            channel,
            command: command.into(),
            verdict: "allow".into(),
            enforced: true,
            action: "forwarded".into(),
            ..SshExec::default()
        }
    }

    fn data(channel: u32, stream: &str, text: &str) -> String {
        to_json(&SshData {
            channel,
            stream: stream.into(),
            text: text.into(),
            bytes: text.len() as u64,
        })
    }

    fn sftp(op: &str, path: &str) -> SftpOp {
        SftpOp {
            channel: 3,
            id: 1,
            op: op.into(),
            path: Some(path.into()),
            verdict: "allow".into(),
            action: "forwarded".into(),
            ..SftpOp::default()
        }
    }

    /// An SSH session as the proxy journals it: the login; on channel 0 an allowed
    /// `uname -a` whose output (stdout in two chunks, stderr) ends with exit status 3;
    /// on channel 1 an `rm -rf /srv` refused by a rule (exit status 126); on channel 2
    /// an interactive shell on a terminal (pty 120x40, what was typed echoed, a window
    /// change); on channel 3 an SFTP session (an upload, a rename, a refused remove, a
    /// remove the host failed).
    async fn ssh_journal(path: &Path) -> SessionId {
        let refused = SshExec {
            verdict: "deny".into(),
            rule: Some("no-rm".into()),
            action: "refused".into(),
            ..exec(2, 1, "rm -rf /srv")
        };
        let refusal = SshChannel {
            reason: Some("nhi-agent: command refused by policy rule \"no-rm\"".into()),
            ..close(1, 126, 0, 0)
        };
        let pty = SshChannel {
            cols: Some(120),
            rows: Some(40),
            verdict: Some("allow".into()),
            ..request(2, "pty", Some("xterm-256color"))
        };
        let shell = SshChannel {
            seq: Some(3),
            verdict: Some("allow".into()),
            ..request(2, "shell", None)
        };
        let window = SshChannel {
            cols: Some(100),
            rows: Some(30),
            ..request(2, "window-change", None)
        };
        let subsystem = SshChannel {
            seq: Some(4),
            verdict: Some("allow".into()),
            ..request(3, "subsystem", Some("sftp"))
        };
        let upload = SftpOp {
            flags: vec!["write".into(), "create".into(), "truncate".into()],
            seq: Some(5),
            ..sftp("open", "/srv/up/data.bin")
        };
        let uploaded = SftpOp {
            flags: vec!["write".into(), "create".into(), "truncate".into()],
            bytes: Some(67_108_864),
            written: Some(67_108_864),
            ..sftp("close", "/srv/up/data.bin")
        };
        let rename = SftpOp {
            target: Some("/srv/up/b".into()),
            seq: Some(6),
            ..sftp("rename", "/srv/up/a")
        };
        let forbidden = SftpOp {
            seq: Some(7),
            verdict: "deny".into(),
            rule: Some("no-etc".into()),
            action: "refused".into(),
            ..sftp("remove", "/etc/passwd")
        };
        let gone = SftpOp {
            seq: Some(8),
            ..sftp("remove", "/srv/up/gone")
        };
        let failed = SftpOp {
            action: "failed".into(),
            status: Some("2: No such file".into()),
            ..sftp("remove", "/srv/up/gone")
        };
        let login = SshLogin {
            user: "bot".into(),
            method: "publickey".into(),
            client_key: Some("SHA256:client".into()),
            upstream_user: "deploy".into(),
            agent_key: "SHA256:agent".into(),
            agent_cert: true,
            host_key: Some("SHA256:host".into()),
            outcome: "ok".into(),
            reason: None,
        };
        journal_with(
            path,
            PROTOCOL,
            vec![
                (100, kind::LOGIN, to_json(&login)),
                (200, kind::CHANNEL, open(0)),
                (
                    250,
                    kind::CHANNEL,
                    to_json(&request(0, "env", Some("LANG"))),
                ),
                (300, kind::EXEC, to_json(&exec(1, 0, "uname -a"))),
                (400, kind::DATA, data(0, "stdout", "Linux build-7 ")),
                (450, kind::DATA, data(0, "stdout", "6.1.0 x86_64\n")),
                (500, kind::DATA, data(0, "stderr", "uname: warning\n")),
                (600, kind::CHANNEL, to_json(&close(0, 3, 0, 41))),
                (700, kind::CHANNEL, open(1)),
                (800, kind::EXEC, to_json(&refused)),
                (900, kind::CHANNEL, to_json(&refusal)),
                (1_000, kind::CHANNEL, open(2)),
                (1_050, kind::CHANNEL, to_json(&pty)),
                (1_100, kind::CHANNEL, to_json(&shell)),
                (
                    1_150,
                    kind::DATA,
                    data(2, "stdout", "\u{1b}[01;32mbot@host\u{1b}[0m:~$ "),
                ),
                (1_200, kind::DATA, data(2, "stdin", "ls\r")),
                (1_250, kind::DATA, data(2, "stdout", "ls\r\n")),
                (1_300, kind::DATA, data(2, "stdout", "a.txt\r\n")),
                (1_350, kind::CHANNEL, to_json(&window)),
                (1_400, kind::CHANNEL, to_json(&close(2, 0, 3, 40))),
                (1_500, kind::CHANNEL, open(3)),
                (1_550, kind::CHANNEL, to_json(&subsystem)),
                (1_600, kind::SFTP_OP, to_json(&upload)),
                (1_700, kind::SFTP_OP, to_json(&uploaded)),
                (1_800, kind::SFTP_OP, to_json(&rename)),
                (1_900, kind::SFTP_OP, to_json(&forbidden)),
                (2_000, kind::SFTP_OP, to_json(&gone)),
                (2_050, kind::SFTP_OP, to_json(&failed)),
                (2_500, kind::CHANNEL, to_json(&close(3, 0, 1_000, 2_000))),
            ],
        )
        .await
    }

    #[tokio::test]
    async fn replay_reads_like_a_terminal_transcript() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = ssh_journal(&path).await;
        let timeline = &super::super::replay_timeline(&path, id);
        assert_eq!(
            timeline,
            "timeline\n\
             \x20 +0.000000s  session start\n\
             \x20 +0.000100s  login bot (publickey SHA256:client) as deploy (agent key SHA256:agent, certificate), host key SHA256:host: ok\n\
             \x20 +0.000200s  [channel 0: open session]\n\
             \x20 +0.000250s  [channel 0: env LANG]\n\
             \x20 +0.000300s  $ uname -a\n\
             \x20               Linux build-7 6.1.0 x86_64\n\
             \x20             ! uname: warning\n\
             \x20 +0.000600s  [channel 0: exit status 3; 0 B in, 41 B out]\n\
             \x20 +0.000700s  [channel 1: open session]\n\
             \x20 +0.000800s  $ rm -rf /srv   [deny by rule no-rm: refused]\n\
             \x20 +0.000900s  [channel 1: exit status 126; 0 B in, 0 B out: nhi-agent: command refused by policy rule \"no-rm\"]\n\
             \x20 +0.001000s  [channel 2: open session]\n\
             \x20 +0.001050s  [channel 2: pty xterm-256color 120x40]\n\
             \x20 +0.001100s  [channel 2: shell]\n\
             \x20               bot@host:~$ ls\n\
             \x20               a.txt\n\
             \x20 +0.001350s  [channel 2: window 100x30]\n\
             \x20 +0.001400s  [channel 2: exit status 0; 3 B in, 40 B out]\n\
             \x20 +0.001500s  [channel 3: open session]\n\
             \x20 +0.001550s  [channel 3: subsystem sftp]\n\
             \x20 +0.001600s  sftp open /srv/up/data.bin [write,create,truncate]\n\
             \x20 +0.001700s  sftp close /srv/up/data.bin: 67108864 bytes written\n\
             \x20 +0.001800s  sftp rename /srv/up/a -> /srv/up/b\n\
             \x20 +0.001900s  sftp remove /etc/passwd   [deny by rule no-etc: refused]\n\
             \x20 +0.002000s  sftp remove /srv/up/gone\n\
             \x20 +0.002050s  sftp remove /srv/up/gone: failed (2: No such file)\n\
             \x20 +0.002500s  [channel 3: exit status 0; 1000 B in, 2000 B out]\n\
             \x20 +0.003000s  session end: client closed\n\
             \x20 2 commands: 1 refused, 1 exited non-zero; 2 shell or subsystem requests; \
             4 sftp requests: 1 refused, 1 failed\n"
        );
    }

    #[tokio::test]
    async fn timed_replay_waits_between_the_data_events() {
        use crate::cli::replay::{write_replay, Pace, ReplayArgs};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = ssh_journal(&path).await;
        let args = ReplayArgs {
            session: id.to_string(),
            inputs: crate::cli::filter::InputArgs {
                journal: vec![path.clone()],
                paths: Vec::new(),
            },
            json: false,
            speed: Some(2.0),
            instant: false,
        };
        let pace = Some(Pace {
            speed: 2.0,
            max_wait: None,
        });
        let mut waits = Vec::new();
        write_replay(&args, &mut Vec::new(), pace, &mut |d| waits.push(d), None).expect("replay");
        // Every event is waited for at half its recorded gap, data included: 100 µs
        // between the first two chunks of stdout (400, 450 µs: 25 µs at speed 2).
        let total: std::time::Duration = waits.iter().sum();
        assert_eq!(total, std::time::Duration::from_micros(1_500), "{waits:?}");
        assert_eq!(
            waits[4..7],
            [50, 25, 25].map(std::time::Duration::from_micros)
        );
    }

    #[test]
    fn terminal_lines_act_on_the_cursor_and_drop_escapes() {
        assert_eq!(terminal_line("plain text"), "plain text");
        assert_eq!(
            terminal_line("\u{1b}]0;bot@host: ~\u{7}\u{1b}[01;32mbot\u{1b}[0m$ ls\r"),
            "bot$ ls"
        );
        assert_eq!(terminal_line(" 50%\r100%"), "100%");
        assert_eq!(terminal_line("abcdef\rXY"), "XYcdef");
        assert_eq!(terminal_line("pa\u{8} \u{8}ssw"), "pssw");
        assert_eq!(terminal_line("a\tb\u{7}c"), "a\tb\\u{7}c");
        assert_eq!(terminal_line("\u{1b}(Bok\u{1b}=\u{9b}2Kx"), "okx");
        assert_eq!(terminal_line("cut \u{1b}["), "cut ");
    }

    #[test]
    fn the_events_table_reads_every_kind_in_one_line() {
        let line = |kind: &str, data: String| {
            let value: Value = serde_json::from_str(&data).expect("JSON");
            Ssh.detail(kind, &value).expect("a line")
        };
        let refused = SshExec {
            verdict: "deny".into(),
            action: "refused".into(),
            ..exec(2, 1, "rm -rf /srv\necho done")
        };
        assert_eq!(
            line(kind::EXEC, to_json(&refused)),
            "[deny refused] rm -rf /srv echo done"
        );
        assert_eq!(line(kind::EXEC, to_json(&exec(1, 0, "id"))), "id");
        assert_eq!(
            line(
                kind::LOGIN,
                to_json(&SshLogin {
                    user: "bot".into(),
                    method: "password".into(),
                    upstream_user: "deploy".into(),
                    outcome: "failed".into(),
                    reason: Some("host key mismatch".into()),
                    ..SshLogin::default()
                })
            ),
            "login bot (password) as deploy: failed: host key mismatch"
        );
        let forward = SshChannel {
            channel: u32::MAX,
            seq: Some(9),
            verdict: Some("deny".into()),
            action: Some("refused".into()),
            ..request(0, "tcpip-forward", Some("0.0.0.0:8080"))
        };
        assert_eq!(
            line(kind::CHANNEL, to_json(&forward)),
            "tcpip-forward 0.0.0.0:8080 [deny: refused]"
        );
        let killed = SshChannel {
            exit_status: None,
            exit_signal: Some("TERM".into()),
            truncated: true,
            ..close(4, 0, 5, 6)
        };
        assert_eq!(
            line(kind::CHANNEL, to_json(&killed)),
            "channel 4: killed by signal TERM; 5 B in, 6 B out; data not all recorded \
             (record_results budget)"
        );
        assert_eq!(
            line(kind::DATA, data(0, "stderr", "oops\n")),
            "channel 0 stderr 5 B \"oops\n\""
        );
        let read = SftpOp {
            read: Some(10),
            written: Some(2),
            ..sftp("close", "/x")
        };
        assert_eq!(
            line(kind::SFTP_OP, to_json(&read)),
            "sftp close /x: 10 bytes read, 2 bytes written"
        );
        let held = SftpOp {
            verdict: "approve".into(),
            rule: Some("ask".into()),
            action: "held".into(),
            ..sftp("mkdir", "/srv/new")
        };
        assert_eq!(
            line(kind::SFTP_OP, to_json(&held)),
            "sftp mkdir /srv/new [approve by rule ask: held]"
        );
        assert_eq!(Ssh.detail(kind::EXEC, &json!({"seq": 1})), None);
        assert_eq!(Ssh.detail("session_end", &json!({})), None);
    }

    #[tokio::test]
    async fn ocsf_is_ssh_activity_per_command_with_its_exit_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = ssh_journal(&path).await;
        let all = crate::cli::export::tests::export(&path, &["--format", "ocsf"]);
        for e in &all {
            assert_eq!(
                crate::cli::ocsf::check_required(e),
                Vec::<String>::new(),
                "{e:#}"
            );
        }
        let ssh: Vec<&Value> = all
            .iter()
            .filter(|e| e["class_uid"] == SSH_ACTIVITY)
            .collect();
        // Two execs, a shell and a subsystem; the session's open and close besides.
        assert_eq!(ssh.len(), 4, "{ssh:#?}");
        assert_eq!(all.len(), 6);
        let (uname, rm, shell, sftp) = (ssh[0], ssh[1], ssh[2], ssh[3]);
        assert_eq!(uname["category_uid"], 4);
        assert_eq!(uname["type_uid"], 400799);
        assert_eq!(uname["activity_name"], "Exec");
        assert_eq!(uname["unmapped"]["ssh_command"], "uname -a");
        assert_eq!(
            uname["message"],
            "uname -a: exit status 3; 0 B in, 41 B out"
        );
        assert_eq!(
            (
                uname["status_id"].as_u64(),
                uname["status_code"].as_str(),
                uname["status_detail"].as_str()
            ),
            (Some(2), Some("3"), Some("exit status 3; 0 B in, 41 B out"))
        );
        assert_eq!(uname["unmapped"]["ssh_exit_status"], 3);
        assert_eq!(
            (
                uname["action_id"].as_u64(),
                uname["disposition_id"].as_u64(),
                uname["severity_id"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(uname["traffic"], json!({"bytes_out": 0, "bytes_in": 41}));
        assert_eq!(
            (uname["auth_type_id"].as_u64(), uname["auth_type"].as_str()),
            (Some(6), Some("Public Key"))
        );
        assert_eq!(uname["unmapped"]["ssh_upstream_user"], "deploy");
        assert_eq!(uname["unmapped"]["ssh_host_key"], "SHA256:host");
        assert_eq!(uname["actor"]["app_name"], "bot");
        assert_eq!(uname["dst_endpoint"]["svc_name"], "api");
        let jid = uname["unmapped"]["journal_id"]
            .as_str()
            .expect("journal id");
        assert_eq!(uname["metadata"]["correlation_uid"], format!("{jid}:{id}"));
        assert!(
            uname["metadata"]["original_time"]
                .as_str()
                .is_some_and(|t| t.ends_with(":00.000300Z")),
            "the exec is the event: {uname:#}"
        );

        assert_eq!(rm["unmapped"]["ssh_command"], "rm -rf /srv");
        assert_eq!(
            (
                rm["action_id"].as_u64(),
                rm["disposition"].as_str(),
                rm["severity_id"].as_u64()
            ),
            (Some(2), Some("Blocked"), Some(3))
        );
        assert_eq!(rm["status_code"], "126");
        assert_eq!(rm["unmapped"]["request_rule"], "no-rm");
        assert_eq!(
            rm["unmapped"]["ssh_close_reason"],
            "nhi-agent: command refused by policy rule \"no-rm\""
        );

        assert_eq!(shell["activity_name"], "Shell");
        assert_eq!(shell["status_id"], 1);
        assert!(shell["unmapped"].get("ssh_command").is_none(), "{shell:#}");
        assert_eq!(sftp["activity_name"], "Subsystem");
        assert_eq!(sftp["unmapped"]["ssh_command"], "sftp");

        // Without the closes: status Unknown, at the end of the export.
        let alone =
            crate::cli::export::tests::export(&path, &["--format", "ocsf", "--kind", "ssh_exec"]);
        assert_eq!(alone.len(), 2, "{alone:#?}");
        assert_eq!(alone[0]["status_id"], 0);
        assert!(alone[0].get("status_code").is_none());
        assert!(alone[0].get("auth_type_id").is_none(), "no login exported");
    }

    #[tokio::test]
    async fn a_held_exec_is_completed_by_its_approval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let held = SshExec {
            verdict: "approve".into(),
            rule: Some("ask".into()),
            action: "held".into(),
            ..exec(1, 0, "systemctl restart app")
        };
        let killed = SshChannel {
            exit_status: None,
            exit_signal: Some("TERM".into()),
            ..close(0, 0, 0, 0)
        };
        journal_with(
            &path,
            PROTOCOL,
            vec![
                (100, kind::EXEC, to_json(&held)),
                (
                    200,
                    crate::session::gate::APPROVAL,
                    to_json(&json!({"seq": 1, "decision": "approved", "by": "alice"})),
                ),
                (300, kind::CHANNEL, to_json(&killed)),
                // Never closed.
                (400, kind::EXEC, to_json(&exec(2, 1, "sleep 1000"))),
            ],
        )
        .await;
        let ssh: Vec<Value> = crate::cli::export::tests::export(&path, &["--format", "ocsf"])
            .into_iter()
            .filter(|e| e["class_uid"] == SSH_ACTIVITY)
            .collect();
        assert_eq!(ssh.len(), 2, "{ssh:#?}");
        assert_eq!(ssh[0]["disposition"], "Approved");
        assert_eq!(ssh[0]["unmapped"]["approval"]["by"], "alice");
        assert_eq!(
            (
                ssh[0]["status_id"].as_u64(),
                ssh[0]["status_detail"].as_str()
            ),
            (Some(2), Some("killed by signal TERM; 0 B in, 0 B out"))
        );
        assert_eq!(ssh[1]["unmapped"]["ssh_command"], "sleep 1000");
        assert_eq!(ssh[1]["status"], "Unknown");
    }

    /// `export --format asciicast ARGS...` as lines of JSON, or its error.
    fn cast(args: &[&str]) -> anyhow::Result<Vec<Value>> {
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: crate::cli::export::ExportArgs,
        }
        let mut argv = vec!["export", "--format", "asciicast"];
        argv.extend_from_slice(args);
        let args = Cli::try_parse_from(argv).expect("arguments").args;
        let mut out = Vec::new();
        crate::cli::export::write_export(&args, &mut out)?;
        Ok(String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
            .collect())
    }

    #[tokio::test]
    async fn asciicast_has_the_terminal_output_with_its_timing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        let id = ssh_journal(&path).await;
        let p = path.to_str().expect("utf-8");
        let lines = cast(&[p, "--session", &id.to_string()]).expect("cast");
        let start = at_us(0)
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert_eq!(
            lines[0],
            json!({"version": 2, "width": 120, "height": 40, "timestamp": start,
                   "title": format!("bot → api (nhi-agent session {id})"),
                   "env": {"TERM": "xterm-256color"}})
        );
        let events = &lines[1..];
        let offsets: Vec<f64> = events
            .iter()
            .map(|e| e[0].as_f64().expect("offset"))
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
        assert_eq!(offsets[0], 0.0003, "from the session's start");
        let shown: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e[1].as_str().expect("code"), e[2].as_str().expect("data")))
            .collect();
        assert_eq!(
            shown,
            [
                ("m", "$ uname -a"),
                // No terminal on channel 0: its newlines as the client's terminal shows them.
                ("o", "Linux build-7 "),
                ("o", "6.1.0 x86_64\r\n"),
                ("o", "uname: warning\r\n"),
                ("m", "$ rm -rf /srv [deny by rule no-rm: refused]"),
                ("m", "shell"),
                // A terminal: as the host wrote it; what was typed is in its echo.
                ("o", "\u{1b}[01;32mbot@host\u{1b}[0m:~$ "),
                ("o", "ls\r\n"),
                ("o", "a.txt\r\n"),
                ("r", "100x30"),
                ("m", "subsystem sftp"),
            ]
        );
        assert_eq!(events[1][0], 0.0004);
        assert_eq!(events[10][0], 0.00155);

        // A part of the session: offsets from its first event, the terminal still known.
        let part = cast(&[p, "--since", "2026-11-22T10:00:00.001200Z"]).expect("cast");
        assert_eq!(part[0]["width"], 120);
        assert_eq!(part[1], json!([0.00005, "o", "ls\r\n"]));
    }

    #[tokio::test]
    async fn asciicast_wants_one_ssh_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two, pg) = (
            dir.path().join("one.db"),
            dir.path().join("two.db"),
            dir.path().join("pg.db"),
        );
        ssh_journal(&one).await;
        ssh_journal(&two).await;
        crate::cli::select::tests::pg_journal(&pg).await;
        let (one, two, pg) = (
            one.to_str().expect("utf-8"),
            two.to_str().expect("utf-8"),
            pg.to_str().expect("utf-8"),
        );
        let err = cast(&[one, two]).expect_err("two SSH sessions");
        assert!(
            format!("{err:#}").contains("several SSH sessions"),
            "{err:#}"
        );
        let err = cast(&[pg]).expect_err("no SSH session");
        assert!(
            format!("{err:#}").contains("no event of an SSH session"),
            "{err:#}"
        );
        // Other protocols in the selection are left out.
        let lines = cast(&[one, pg]).expect("one SSH session");
        assert_eq!(lines[0]["width"], 120);
        assert_eq!(lines.len(), 12);
        // Without a terminal: 80x24, no TERM.
        let bare = dir.path().join("bare.db");
        journal_with(
            &bare,
            PROTOCOL,
            vec![
                (100, kind::EXEC, to_json(&exec(1, 0, "id"))),
                (200, kind::DATA, data(0, "stdout", "uid=1000\n")),
                (
                    300,
                    kind::CHANNEL,
                    to_json(&SshChannel {
                        truncated: true,
                        ..close(0, 0, 0, 9)
                    }),
                ),
            ],
        )
        .await;
        let lines = cast(&[bare.to_str().expect("utf-8")]).expect("cast");
        assert_eq!(
            (&lines[0]["width"], &lines[0]["height"], &lines[0]["env"]),
            (&json!(80), &json!(24), &json!({}))
        );
        assert_eq!(lines[2], json!([0.0002, "o", "uid=1000\r\n"]));
        assert_eq!(
            lines[3],
            json!([
                0.0003,
                "m",
                "channel 0: data not all recorded (record_results budget)"
            ])
        );
        assert_eq!(lines.len(), 4);
    }

    #[tokio::test]
    async fn commands_are_found_by_text_and_verdict() {
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: crate::cli::events::EventsArgs,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        ssh_journal(&path).await;
        let events = |extra: &[&str]| -> Vec<String> {
            let mut argv = vec!["events", "--json", path.to_str().expect("utf-8")];
            argv.extend_from_slice(extra);
            let args = Cli::try_parse_from(argv).expect("arguments").args;
            let mut out = Vec::new();
            crate::cli::events::write_events(&args, &mut out).expect("events");
            String::from_utf8(out)
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
                .map(|e| {
                    format!(
                        "{} {}",
                        e["kind"].as_str().unwrap_or(""),
                        e["data"]["command"].as_str().unwrap_or("")
                    )
                })
                .collect()
        };
        assert_eq!(events(&["--text", "uname"]), ["ssh_exec uname -a"]);
        assert_eq!(events(&["--regex", "^rm "]), ["ssh_exec rm -rf /srv"]);
        assert_eq!(events(&["--verdict", "denied"]), ["ssh_exec rm -rf /srv"]);
        assert_eq!(events(&["--verdict", "allowed"]), ["ssh_exec uname -a"]);
        // Output and SFTP paths are not request texts.
        assert!(events(&["--text", "x86_64"]).is_empty());
        assert_eq!(events(&["--kind", "sftp_op"]).len(), 6);
    }
}

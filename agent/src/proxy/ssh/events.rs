//! The journal events of an SSH session: their kinds and payloads, written by the proxy
//! and read back by the CLI.
use serde::{Deserialize, Serialize};

/// The event kinds of an SSH session.
pub mod kind {
    /// [`super::SshLogin`]: how the client authenticated (never its secret) and how the
    /// agent logged into the host.
    pub const LOGIN: &str = "ssh_login";
    /// [`super::SshExec`]: an exec request, judged, before it is forwarded or refused.
    pub const EXEC: &str = "ssh_exec";
    /// [`super::SshChannel`]: a channel opened, a request on it (pty, shell, subsystem,
    /// env, signal, forwarding), or its end (exit status, bytes).
    pub const CHANNEL: &str = "ssh_channel";
    /// [`super::SshData`]: channel data (stdin, stdout, stderr), masked, before it is
    /// relayed; bounded per session by `record_results`.
    pub const DATA: &str = "ssh_data";
    /// [`super::SftpOp`]: one SFTP request and its status.
    pub const SFTP_OP: &str = "sftp_op";
}

/// Kind [`kind::LOGIN`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshLogin {
    /// The user the client asked for.
    pub user: String,
    /// The client's method: "none", "password", "publickey", "keyboard-interactive".
    pub method: String,
    /// The client's key, for "publickey" (its SHA256 fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Who the agent logged into the host as.
    pub upstream_user: String,
    /// The agent's login key (fingerprint) and whether a certificate was used.
    pub agent_key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_cert: bool,
    /// The host's key as verified (fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// "ok"; "failed" (the host refused, its key did not verify, it could not be
    /// reached); "refused" (the agent refused the session: disk budget, connection
    /// limit).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Kind [`kind::EXEC`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshExec {
    pub seq: u64,
    /// The client's channel number.
    pub channel: u32,
    /// The command line, through the mask detectors.
    pub command: String,
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub enforced: bool,
    /// "forwarded", "refused", "held".
    pub action: String,
    /// Whether the channel has a terminal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Kind [`kind::CHANNEL`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshChannel {
    /// The channel's number; 4294967295 for a request of no channel (`tcpip-forward`,
    /// `streamlocal`, a refused channel open).
    pub channel: u32,
    /// "open", "request", "close".
    pub event: String,
    /// Open: "session", "direct-tcpip", ...; request: "pty", "shell", "subsystem",
    /// "env", "window-change", "signal", "x11", "agent", "tcpip-forward", ...
    pub kind: String,
    /// What the request names: the subsystem, the variable, the signal, host:port; at
    /// the close of a session channel, what it ran (`exec`, `shell`, `subsystem sftp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Judged requests: the verdict, rule and what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Terminal size (pty, window-change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u32>,
    /// Close: how the command ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
    /// Close: bytes from the client (stdin) and to it (stdout + stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Close: some channel data was not recorded (the session's `record_results`
    /// budget ran out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Kind [`kind::DATA`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SshData {
    pub channel: u32,
    /// "stdin", "stdout", "stderr".
    pub stream: String,
    /// The bytes as text (invalid UTF-8 replaced), through the mask detectors.
    pub text: String,
    /// The chunk's size in bytes (before masking).
    pub bytes: u64,
}

/// Kind [`kind::SFTP_OP`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftpOp {
    pub channel: u32,
    /// The SFTP request id.
    pub id: u32,
    /// "open", "read", "write", "remove", "rename", "mkdir", "rmdir", "stat", ...
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// rename / symlink: the second path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// open: "read", "write", "create", "truncate", "append" flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// close: bytes read and written through the handle (and their sum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
    /// The session's request number (judged requests: open, remove, rename, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// "forwarded", "refused", "held"; "failed" for the host's failure answer to a
    /// journaled request (with `status`).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

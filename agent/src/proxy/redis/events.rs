//! The journal events of a Redis session: kinds and payloads, written by the session
//! ([`super::session`]) and read back by `replay`, `export`, `events` and the filters
//! (through `cli::views::redis`). Readers are lenient: new fields must be optional.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::mask::MaskedColumn;

/// The event kinds of a Redis session.
pub mod kind {
    /// How the agent authenticated upstream (its credential, or the client's own AUTH).
    pub const AUTH: &str = "redis_auth";
    /// Which legs of the session are TLS (`client_tls`: terminated by the agent;
    /// `server_tls`: the target's `tls` mode), journaled when either is.
    pub const TLS: &str = "redis_tls";
    /// [`super::RedisCommandEvent`]: one command, judged, before it is forwarded or
    /// refused.
    pub const COMMAND: &str = "redis_command";
    /// [`super::RedisReply`]: the reply to the command of the same `seq`.
    pub const REPLY: &str = "redis_reply";
    /// [`super::RedisPush`]: out-of-band data from the server (pub/sub messages, RESP3
    /// pushes), before the client gets it.
    pub const PUSH: &str = "redis_push";
}

/// Kind [`kind::COMMAND`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisCommandEvent<'a> {
    #[serde(default)]
    pub seq: u64,
    /// The command's name, upper case.
    #[serde(borrow)]
    pub command: Cow<'a, str>,
    /// `NAME SUBCOMMAND` for commands with subcommands (`CONFIG SET`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub subcommand: Option<Cow<'a, str>>,
    /// The key arguments (through the detectors); absent when the agent does not know
    /// which arguments are keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// Arguments after the name, as many as the record keeps ([`MAX_ARGS`]): keys and
    /// values through the detectors, values of keys a mask names `[masked]`, secrets
    /// (AUTH, HELLO ... AUTH, CONFIG SET requirepass, ...) `[redacted]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Number of arguments after the name.
    #[serde(default)]
    pub argc: usize,
    /// Byte size of each recorded argument (same order as `args`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<usize>,
    /// Bytes of all arguments after the name.
    #[serde(default)]
    pub bytes: u64,
    /// Sent as an inline command (forwarded in its array form).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// Queued in a MULTI transaction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_multi: bool,
    /// allow | deny | approve.
    #[serde(borrow, default)]
    pub verdict: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Cow<'a, str>>,
    /// What the agent did: forwarded | refused | held | answered (by the agent itself,
    /// e.g. AUTH with the agent's credential) | rewritten (HELLO's AUTH removed, EXEC
    /// of a transaction with a refused command sent as DISCARD).
    #[serde(borrow, default)]
    pub action: Cow<'a, str>,
    /// Whether the verdict was acted on (enforce mode).
    #[serde(default)]
    pub enforced: bool,
}

/// How many arguments a `redis_command` event lists (sizes and counts cover all).
pub const MAX_ARGS: usize = 32;
/// How many characters of one argument it keeps.
pub const MAX_ARG_CHARS: usize = 256;

impl<'a> RedisCommandEvent<'a> {
    pub fn read(data: &'a serde_json::Value) -> Option<RedisCommandEvent<'a>> {
        RedisCommandEvent::deserialize(data).ok()
    }
}

/// Kind [`kind::REPLY`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisReply<'a> {
    #[serde(default)]
    pub seq: u64,
    /// The reply's RESP type (simple, error, integer, bulk, array, map, set, null, ...).
    #[serde(borrow, default)]
    pub r#type: Cow<'a, str>,
    /// Bytes the client got.
    #[serde(default)]
    pub bytes: u64,
    /// Elements of an aggregate reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<u64>,
    /// A short excerpt (after masking): an error's or a simple string's text, an
    /// integer, the first characters of a bulk string.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<Cow<'a, str>>,
    /// What masking changed, per key (or field) and rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedColumn>,
}

impl<'a> RedisReply<'a> {
    pub fn read(data: &'a serde_json::Value) -> Option<RedisReply<'a>> {
        RedisReply::deserialize(data).ok()
    }
}

/// Kind [`kind::PUSH`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisPush<'a> {
    /// `message`, `pmessage`, `smessage`, `invalidate`, ...
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default)]
    pub bytes: u64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedColumn>,
}

impl<'a> RedisPush<'a> {
    pub fn read(data: &'a serde_json::Value) -> Option<RedisPush<'a>> {
        RedisPush::deserialize(data).ok()
    }
}

//! The control socket's format: one JSON object per line each way.
//!
//! ```text
//! {"op":"list"}                              -> {"ok":true,"pending":[...]}
//! {"op":"show","id":"a-1"}                   -> {"ok":true,"request":{...}}
//! {"op":"approve","id":"a-1","reason":"..."} -> {"ok":true,"request":{...},"by":"uid 0 (root)"}
//! {"op":"deny","id":"a-1","reason":"..."}    -> {"ok":true,"request":{...},"by":"uid 0 (root)"}
//! anything refused                           -> {"ok":false,"error":"..."}
//! ```
use serde::{Deserialize, Serialize};

use crate::journal::SessionId;

/// The longest request line the server reads; longer ones end the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// A request to the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    List,
    Show {
        id: String,
    },
    Approve {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Deny {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A statement waiting for a decision, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub session: SessionId,
    pub workload: String,
    pub target: String,
    /// The statement's sequence number in its session (as journaled).
    pub seq: u64,
    pub statement: String,
    pub rule: Option<String>,
    /// RFC 3339, UTC.
    pub requested_at: String,
    /// RFC 3339, UTC: when the hold counts as denied ("not approved in time").
    pub expires_at: String,
}

/// The server's answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<Pending>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Pending>,
    /// Who decided ("uid N (name)"), for approve/deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Answer {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }
}

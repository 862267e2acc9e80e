//! The control socket's format: one JSON object per line each way.
//!
//! ```text
//! {"op":"list"}                              -> {"ok":true,"pending":[...]}
//! {"op":"show","id":"a-1"}                   -> {"ok":true,"request":{...}}
//! {"op":"approve","id":"a-1","reason":"..."} -> {"ok":true,"request":{...},"by":"uid 0 (root)"}
//! {"op":"approve","id":"a-1","scope":"grant","for":"15m"}
//!                                            -> {"ok":true,"request":{...},"by":"...","grant":{...}}
//! {"op":"deny","id":"a-1","reason":"..."}    -> {"ok":true,"request":{...},"by":"uid 0 (root)"}
//! {"op":"submit","token":"eyJ..."}           -> {"ok":true,"request":{...},"by":"jwt:alice (kid k1)"}
//! {"op":"grants"}                            -> {"ok":true,"grants":[...]}
//! {"op":"revoke","id":"g-1"}                 -> {"ok":true,"grant":{...}}
//! {"op":"status"}                            -> {"ok":true,"status":{...}}   (approvers)
//! {"op":"reload"}                            -> {"ok":true,"reload":"..."}   (root only;
//!                                               ok false with the reason when rejected)
//! anything refused                           -> {"ok":false,"error":"..."}
//! ```
use serde::{Deserialize, Serialize};

pub use super::scope::{Grant, Scope};

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
        /// How far the approval reaches (default `once`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
        /// The length of a `grant` ("15m").
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        grant_for: Option<String>,
    },
    Deny {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A signed decision token (its signature is the authority; no approver group needed).
    Submit {
        token: String,
    },
    /// The active grants.
    Grants,
    /// Ends a grant before its time.
    Revoke {
        id: String,
    },
    /// The running agent's state (`nhi-agent status`).
    Status,
    /// Re-read the configuration file and answer the verdict (`nhi-agent reload`).
    Reload,
}

pub use crate::session::approval::{Pending, Process};

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
    /// Active grants, for `grants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    /// The grant created (approve with scope grant) or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// The agent's state, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// What an applied reload changed, for `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
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

//! The journal events of a MySQL session besides `statement` / `statement_end` (which
//! have PostgreSQL's shape, `proxy::postgres::events`, so `events`, `replay` and the
//! OCSF export read them unchanged).
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub mod kind {
    /// [`super::Login`]: the client's handshake response, once, before anything of the
    /// client reaches the server.
    pub const LOGIN: &str = "mysql_login";
    /// Authentication: plugin, whether the agent answered with its credential, error.
    pub const AUTH: &str = "mysql_auth";
    /// COM_CHANGE_USER (relayed): the user, database and plugin asked for; its
    /// outcome is the next `mysql_auth` (with `change_user: true`).
    pub const CHANGE_USER: &str = "mysql_change_user";
}

/// Kind [`kind::LOGIN`]. The client's authentication data is never part of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Login<'a> {
    /// The user the client asked for.
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    /// The user the agent logged in as (differs when it holds the credential).
    #[serde(borrow)]
    pub db_user: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub server_version: Cow<'a, str>,
    #[serde(default)]
    pub connection_id: u32,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_plugin: Option<Cow<'a, str>>,
    /// Connection attributes (`_client_name`, `program_name`, ...), in order.
    #[serde(borrow, default)]
    pub attributes: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The client's capability flags, as it sent them.
    #[serde(default)]
    pub capabilities: u32,
    #[serde(default)]
    pub client_tls: bool,
    #[serde(default)]
    pub credential_injected: bool,
}

impl<'a> Login<'a> {
    pub fn read(data: &'a serde_json::Value) -> Option<Login<'a>> {
        Login::deserialize(data).ok()
    }
}

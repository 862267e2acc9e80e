//! The MySQL / MariaDB client/server protocol, sans IO.
//!
//! Framing ([`frame`]): a packet is a 3-byte little-endian payload length, a sequence id
//! and the payload; a payload of exactly 0xFFFFFF bytes continues in the next packet.
//! [`frame::PacketDecoder`] returns one *logical* packet (continuations joined) with its
//! exact original bytes, once all of it is buffered, and refuses a packet longer than its
//! bound as soon as the headers say so (before the body is buffered).
//!
//! Messages ([`message`]): the handshake (v10 greeting, SSL request, HandshakeResponse41,
//! auth switch and more-data), the generic answers (OK, ERR, EOF), column definitions,
//! text and binary result rows, `COM_STMT_PREPARE`'s OK and `COM_STMT_EXECUTE`'s
//! parameters. Each decoder reads only what the proxy needs and keeps the rest as bytes;
//! encoders exist for what the agent rewrites or answers itself.
//!
//! `auth`: the scrambles of `mysql_native_password` and `caching_sha2_password`.
//!
//! The `mysql_common` crate was considered: its packet types own their buffers and pull
//! in a large dependency tree (chrono, regex, num-bigint, serde helpers, flate2 features)
//! for what is here a few hundred lines of bounded, zero-copy reads; the scrambles are
//! ten lines each over `sha1`/`sha2`, which the agent already builds.
pub mod auth;
pub mod frame;
pub mod message;
pub mod value;

#[cfg(test)]
mod tests;

pub use frame::{Packet, PacketDecoder, MAX_PAYLOAD};
pub use message::*;

/// Capability flags (`CLIENT_*`), as in the server's `mysql_com.h`.
pub mod caps {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    pub const ZSTD_COMPRESSION: u32 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
    pub const MULTI_FACTOR_AUTHENTICATION: u32 = 1 << 28;
    pub const SSL_VERIFY_SERVER_CERT: u32 = 1 << 30;
    pub const REMEMBER_OPTIONS: u32 = 1 << 31;

    /// What the agent never lets the two sides agree on: compression (the agent reads
    /// every packet), zstd, query attributes (parameters outside the statement text),
    /// optional result-set metadata (rows without their column definitions, which
    /// masking needs), multi-factor authentication (not relayed).
    pub const STRIPPED: u32 = COMPRESS
        | ZSTD_COMPRESSION
        | QUERY_ATTRIBUTES
        | OPTIONAL_RESULTSET_METADATA
        | MULTI_FACTOR_AUTHENTICATION;
}

/// Server status flags (`SERVER_*`) of OK and EOF packets.
pub mod status {
    pub const IN_TRANS: u16 = 1;
    pub const AUTOCOMMIT: u16 = 1 << 1;
    pub const MORE_RESULTS_EXISTS: u16 = 1 << 3;
    pub const CURSOR_EXISTS: u16 = 1 << 6;
    pub const NO_BACKSLASH_ESCAPES: u16 = 1 << 9;
    pub const SESSION_STATE_CHANGED: u16 = 1 << 14;
}

/// Command bytes (`COM_*`).
pub mod command {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const CONNECT: u8 = 0x0b;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;

    /// The command's name, for the journal and errors.
    pub fn name(code: u8) -> &'static str {
        match code {
            SLEEP => "COM_SLEEP",
            QUIT => "COM_QUIT",
            INIT_DB => "COM_INIT_DB",
            QUERY => "COM_QUERY",
            FIELD_LIST => "COM_FIELD_LIST",
            CREATE_DB => "COM_CREATE_DB",
            DROP_DB => "COM_DROP_DB",
            REFRESH => "COM_REFRESH",
            SHUTDOWN => "COM_SHUTDOWN",
            STATISTICS => "COM_STATISTICS",
            PROCESS_INFO => "COM_PROCESS_INFO",
            CONNECT => "COM_CONNECT",
            PROCESS_KILL => "COM_PROCESS_KILL",
            DEBUG => "COM_DEBUG",
            PING => "COM_PING",
            CHANGE_USER => "COM_CHANGE_USER",
            BINLOG_DUMP => "COM_BINLOG_DUMP",
            STMT_PREPARE => "COM_STMT_PREPARE",
            STMT_EXECUTE => "COM_STMT_EXECUTE",
            STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
            STMT_CLOSE => "COM_STMT_CLOSE",
            STMT_RESET => "COM_STMT_RESET",
            SET_OPTION => "COM_SET_OPTION",
            STMT_FETCH => "COM_STMT_FETCH",
            RESET_CONNECTION => "COM_RESET_CONNECTION",
            _ => "COM_UNKNOWN",
        }
    }
}

/// A packet the decoders cannot read: the connection must close with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("packet of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            what,
            why: why.into(),
        }
    }
}

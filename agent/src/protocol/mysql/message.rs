//! Decoders and encoders of the messages the proxy reads or writes.
use bytes::{BufMut, Bytes, BytesMut};

use super::{caps, ProtocolError};

/// A cursor over a payload; every read is bounds-checked and names what it read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.remaining() < n {
            return Err(ProtocolError::Truncated { what });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-encoded integer; `None` for the NULL marker 0xFB.
    pub fn lenenc(&mut self, what: &'static str) -> Result<Option<u64>, ProtocolError> {
        let first = self.u8(what)?;
        Ok(Some(match first {
            0..=0xFA => u64::from(first),
            0xFB => return Ok(None),
            0xFC => u64::from(self.u16(what)?),
            0xFD => {
                let b = self.take(3, what)?;
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
            }
            0xFE => {
                let b = self.take(8, what)?;
                u64::from_le_bytes(b.try_into().expect("8 bytes"))
            }
            0xFF => return Err(ProtocolError::malformed(what, "0xFF length prefix")),
        }))
    }

    /// A length-encoded integer that must not be NULL.
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        self.lenenc(what)?
            .ok_or_else(|| ProtocolError::malformed(what, "unexpected NULL"))
    }

    /// A length-encoded string; `None` for NULL.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, ProtocolError> {
        match self.lenenc(what)? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| ProtocolError::Truncated { what })?;
                Ok(Some(self.take(n, what)?))
            }
        }
    }

    pub fn lenenc_str(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        self.lenenc_bytes(what)?
            .ok_or_else(|| ProtocolError::malformed(what, "unexpected NULL"))
    }

    /// Bytes up to a NUL (consumed, not returned).
    pub fn nul_str(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.buf[self.pos..];
        let n = memchr::memchr(0, rest).ok_or(ProtocolError::Truncated { what })?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    /// Bytes up to a NUL, or to the end when there is none.
    pub fn nul_or_end(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        match memchr::memchr(0, rest) {
            Some(n) => {
                self.pos += n + 1;
                &rest[..n]
            }
            None => {
                self.pos = self.buf.len();
                rest
            }
        }
    }
}

pub fn put_lenenc(out: &mut BytesMut, n: u64) {
    match n {
        0..=0xFA => out.put_u8(n as u8),
        0xFB..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(n as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(n);
        }
    }
}

pub fn put_lenenc_bytes(out: &mut BytesMut, b: &[u8]) {
    put_lenenc(out, b.len() as u64);
    out.put_slice(b);
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ------------------------------------------------------------------------ handshake

/// The server's greeting (Initial Handshake Packet, protocol version 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    /// Both parts of the scramble (20 bytes for the usual plugins), without the NUL.
    pub scramble: Vec<u8>,
    /// The server's capabilities (lower and upper 16 bits).
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// MariaDB's extended capabilities (the last 4 of the 10 reserved bytes), which
    /// apply when the server does not set `CLIENT_LONG_PASSWORD` ("CLIENT_MYSQL").
    pub mariadb_caps: u32,
    pub auth_plugin: Option<String>,
}

impl Greeting {
    pub fn parse(payload: &[u8]) -> Result<Greeting, ProtocolError> {
        const W: &str = "server greeting";
        let mut r = Reader::new(payload);
        let version = r.u8(W)?;
        if version != 10 {
            return Err(ProtocolError::malformed(
                W,
                format!("protocol version {version} (only 10 is supported)"),
            ));
        }
        let server_version = lossy(r.nul_str(W)?);
        let connection_id = r.u32(W)?;
        let mut scramble = r.take(8, W)?.to_vec();
        r.u8(W)?;
        let lower = r.u16(W)?;
        let charset = r.u8(W)?;
        let status = r.u16(W)?;
        let upper = r.u16(W)?;
        let capabilities = u32::from(lower) | u32::from(upper) << 16;
        let auth_len = r.u8(W)?;
        let reserved = r.take(10, W)?;
        let mariadb_caps = u32::from_le_bytes(reserved[6..10].try_into().expect("4 bytes"));
        if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = (usize::from(auth_len).saturating_sub(8)).max(13);
            let part2 = r.take(n, W)?;
            // The second part ends with a NUL that is not part of the scramble.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            scramble.extend_from_slice(part2);
        }
        let auth_plugin = if capabilities & caps::PLUGIN_AUTH != 0 {
            Some(lossy(r.nul_or_end()))
        } else {
            None
        };
        Ok(Greeting {
            server_version,
            connection_id,
            scramble,
            capabilities,
            charset,
            status,
            mariadb_caps,
            auth_plugin,
        })
    }

    /// The greeting as the agent sends it to the client: its own capabilities, MariaDB
    /// extended capabilities cleared, and its own scramble and plugin.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(96);
        out.put_u8(10);
        out.put_slice(self.server_version.as_bytes());
        out.put_u8(0);
        out.put_u32_le(self.connection_id);
        let mut scramble = self.scramble.clone();
        scramble.resize(scramble.len().max(20), 0);
        out.put_slice(&scramble[..8]);
        out.put_u8(0);
        out.put_u16_le(self.capabilities as u16);
        out.put_u8(self.charset);
        out.put_u16_le(self.status);
        out.put_u16_le((self.capabilities >> 16) as u16);
        if self.capabilities & caps::PLUGIN_AUTH != 0 {
            out.put_u8((scramble.len() + 1) as u8);
        } else {
            out.put_u8(0);
        }
        out.put_slice(&[0; 6]);
        out.put_u32_le(self.mariadb_caps);
        if self.capabilities & caps::SECURE_CONNECTION != 0 {
            out.put_slice(&scramble[8..]);
            out.put_u8(0);
        }
        if let Some(plugin) = &self.auth_plugin {
            out.put_slice(plugin.as_bytes());
            out.put_u8(0);
        }
        out.freeze()
    }
}

/// The client's HandshakeResponse41 (or, when `ssl_request`, the 32-byte SSL request
/// that precedes it on a TLS connection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub mariadb_caps: u32,
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    pub auth_plugin: Option<String>,
    /// Connection attributes, in order (program name, client version, ...).
    pub attributes: Vec<(String, String)>,
    /// The 32-byte SSL request: only the fixed part was sent.
    pub ssl_request: bool,
}

impl HandshakeResponse {
    pub fn parse(payload: &[u8]) -> Result<HandshakeResponse, ProtocolError> {
        const W: &str = "handshake response";
        let mut r = Reader::new(payload);
        let capabilities = r.u32(W)?;
        if capabilities & caps::PROTOCOL_41 == 0 {
            return Err(ProtocolError::malformed(
                W,
                "the pre-4.1 protocol is not supported",
            ));
        }
        let max_packet = r.u32(W)?;
        let charset = r.u8(W)?;
        let filler = r.take(23, W)?;
        let mariadb_caps = u32::from_le_bytes(filler[19..23].try_into().expect("4 bytes"));
        let mut out = HandshakeResponse {
            capabilities,
            max_packet,
            charset,
            mariadb_caps,
            ..HandshakeResponse::default()
        };
        if r.is_empty() {
            if capabilities & caps::SSL == 0 {
                return Err(ProtocolError::Truncated { what: W });
            }
            out.ssl_request = true;
            return Ok(out);
        }
        out.user = lossy(r.nul_str(W)?);
        out.auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_str(W)?.to_vec()
        } else if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = r.u8(W)?;
            r.take(usize::from(n), W)?.to_vec()
        } else {
            r.nul_str(W)?.to_vec()
        };
        if capabilities & caps::CONNECT_WITH_DB != 0 && !r.is_empty() {
            out.database = Some(lossy(r.nul_str(W)?));
        }
        if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
            out.auth_plugin = Some(lossy(r.nul_or_end()));
        }
        if capabilities & caps::CONNECT_ATTRS != 0 && !r.is_empty() {
            let len = r.lenenc_int(W)? as usize;
            let mut attrs = Reader::new(r.take(len, W)?);
            while !attrs.is_empty() {
                let k = lossy(attrs.lenenc_str(W)?);
                let v = lossy(attrs.lenenc_str(W)?);
                out.attributes.push((k, v));
            }
        }
        Ok(out)
    }

    /// The response as the agent sends it (to the server).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        out.put_u32_le(self.capabilities);
        out.put_u32_le(self.max_packet);
        out.put_u8(self.charset);
        out.put_slice(&[0; 19]);
        out.put_u32_le(self.mariadb_caps);
        if self.ssl_request {
            return out.freeze();
        }
        out.put_slice(self.user.as_bytes());
        out.put_u8(0);
        if self.capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if self.capabilities & caps::SECURE_CONNECTION != 0 {
            out.put_u8(self.auth_response.len() as u8);
            out.put_slice(&self.auth_response);
        } else {
            out.put_slice(&self.auth_response);
            out.put_u8(0);
        }
        if self.capabilities & caps::CONNECT_WITH_DB != 0 {
            out.put_slice(self.database.as_deref().unwrap_or("").as_bytes());
            out.put_u8(0);
        }
        if self.capabilities & caps::PLUGIN_AUTH != 0 {
            out.put_slice(self.auth_plugin.as_deref().unwrap_or("").as_bytes());
            out.put_u8(0);
        }
        if self.capabilities & caps::CONNECT_ATTRS != 0 {
            let mut attrs = BytesMut::new();
            for (k, v) in &self.attributes {
                put_lenenc_bytes(&mut attrs, k.as_bytes());
                put_lenenc_bytes(&mut attrs, v.as_bytes());
            }
            put_lenenc_bytes(&mut out, &attrs);
        }
        out.freeze()
    }
}

/// What the server says during authentication, after the client's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    Ok(OkPacket),
    Err(ErrPacket),
    /// 0xFE: use another plugin, with its scramble.
    Switch {
        plugin: String,
        data: Vec<u8>,
    },
    /// 0x01: plugin-specific data (caching_sha2: fast auth result, public key).
    MoreData(Vec<u8>),
}

impl AuthReply {
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<AuthReply, ProtocolError> {
        const W: &str = "authentication reply";
        match payload.first() {
            Some(0x00) => Ok(AuthReply::Ok(OkPacket::parse(payload, capabilities)?)),
            Some(0xFF) => Ok(AuthReply::Err(ErrPacket::parse(payload)?)),
            Some(0xFE) => {
                let mut r = Reader::new(&payload[1..]);
                let plugin = lossy(r.nul_or_end());
                // As sent: the scramble plugins read their first 20 bytes (a NUL follows
                // them), client_ed25519 signs all 32 bytes of its nonce, NULs included.
                let data = r.rest().to_vec();
                Ok(AuthReply::Switch { plugin, data })
            }
            Some(0x01) => Ok(AuthReply::MoreData(payload[1..].to_vec())),
            Some(other) => Err(ProtocolError::malformed(W, format!("header 0x{other:02x}"))),
            None => Err(ProtocolError::Truncated { what: W }),
        }
    }
}

// ------------------------------------------------------------------------ generic answers

/// OK (0x00, or 0xFE ending a result set under `CLIENT_DEPRECATE_EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: String,
}

impl OkPacket {
    pub fn parse(payload: &[u8], _capabilities: u32) -> Result<OkPacket, ProtocolError> {
        const W: &str = "OK packet";
        let mut r = Reader::new(payload);
        r.u8(W)?;
        let affected_rows = r.lenenc_int(W)?;
        let last_insert_id = r.lenenc_int(W)?;
        let status = r.u16(W)?;
        let warnings = r.u16(W)?;
        // The info text (and session-state changes) are not needed; keep what is text.
        let info = match r.lenenc_bytes(W) {
            Ok(Some(b)) => lossy(b),
            _ => String::new(),
        };
        Ok(OkPacket {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info,
        })
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        out.put_u8(0);
        put_lenenc(&mut out, self.affected_rows);
        put_lenenc(&mut out, self.last_insert_id);
        out.put_u16_le(self.status);
        out.put_u16_le(self.warnings);
        out.freeze()
    }
}

/// ERR (0xFF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// The SQLSTATE (`HY000` when the server sent none).
    pub sqlstate: String,
    pub message: String,
}

impl ErrPacket {
    pub fn new(code: u16, sqlstate: &str, message: impl Into<String>) -> ErrPacket {
        ErrPacket {
            code,
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
        }
    }

    pub fn parse(payload: &[u8]) -> Result<ErrPacket, ProtocolError> {
        const W: &str = "ERR packet";
        let mut r = Reader::new(payload);
        r.u8(W)?;
        let code = r.u16(W)?;
        let mut sqlstate = "HY000".to_owned();
        if r.remaining() >= 6 && payload[r.pos()] == b'#' {
            r.u8(W)?;
            sqlstate = lossy(r.take(5, W)?);
        }
        let message = lossy(r.rest());
        Ok(ErrPacket {
            code,
            sqlstate,
            message,
        })
    }

    /// The payload (with the SQLSTATE marker: every 4.1 client reads it).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16 + self.message.len());
        out.put_u8(0xFF);
        out.put_u16_le(self.code);
        out.put_u8(b'#');
        let mut state = self.sqlstate.as_bytes().to_vec();
        state.resize(5, b'0');
        out.put_slice(&state[..5]);
        out.put_slice(self.message.as_bytes());
        out.freeze()
    }
}

/// Whether `payload` is an EOF packet (0xFE, shorter than 9 bytes), or, with
/// `CLIENT_DEPRECATE_EOF`, the OK packet with a 0xFE header that ends rows (shorter than
/// a 16 MiB packet; a row starting with 0xFE is a string of 16 MiB or more).
pub fn is_eof(payload: &[u8], deprecate_eof: bool) -> bool {
    payload.first() == Some(&0xFE)
        && if deprecate_eof {
            payload.len() < super::MAX_PAYLOAD
        } else {
            payload.len() < 9
        }
}

/// The status flags of an EOF packet or of an OK packet with the 0xFE header.
pub fn eof_status(payload: &[u8], deprecate_eof: bool) -> u16 {
    if deprecate_eof && payload.len() >= 7 {
        OkPacket::parse(payload, 0).map(|ok| ok.status).unwrap_or(0)
    } else if payload.len() >= 5 {
        u16::from_le_bytes([payload[3], payload[4]])
    } else {
        0
    }
}

// ------------------------------------------------------------------------ result sets

/// A column definition (Protocol::ColumnDefinition41).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnDef {
    pub schema: String,
    /// The table alias and the table it comes from (empty for a derived column).
    pub table: String,
    pub org_table: String,
    /// The column name or alias, and the table column it comes from (empty for an
    /// expression).
    pub name: String,
    pub org_name: String,
    pub charset: u16,
    pub length: u32,
    pub column_type: u8,
    pub flags: u16,
    pub decimals: u8,
}

impl ColumnDef {
    pub fn parse(payload: &[u8]) -> Result<ColumnDef, ProtocolError> {
        const W: &str = "column definition";
        let mut r = Reader::new(payload);
        let catalog = r.lenenc_str(W)?;
        if catalog != b"def" {
            return Err(ProtocolError::malformed(W, "catalog is not \"def\""));
        }
        let schema = lossy(r.lenenc_str(W)?);
        let table = lossy(r.lenenc_str(W)?);
        let org_table = lossy(r.lenenc_str(W)?);
        let name = lossy(r.lenenc_str(W)?);
        let org_name = lossy(r.lenenc_str(W)?);
        let fixed = r.lenenc_int(W)?;
        if fixed < 0x0c {
            return Err(ProtocolError::malformed(W, "short fixed-length fields"));
        }
        let charset = r.u16(W)?;
        let length = r.u32(W)?;
        let column_type = r.u8(W)?;
        let flags = r.u16(W)?;
        let decimals = r.u8(W)?;
        Ok(ColumnDef {
            schema,
            table,
            org_table,
            name,
            org_name,
            charset,
            length,
            column_type,
            flags,
            decimals,
        })
    }
}

/// The values of a text result row, in order (`None`: NULL).
pub fn text_row(payload: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.lenenc_bytes("text row")?);
    }
    Ok(out)
}

/// A text result row's payload.
pub fn encode_text_row(values: &[Option<&[u8]>]) -> Bytes {
    let mut out = BytesMut::new();
    for v in values {
        match v {
            None => out.put_u8(0xFB),
            Some(b) => put_lenenc_bytes(&mut out, b),
        }
    }
    out.freeze()
}

/// `COM_STMT_PREPARE`'s OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
    pub warnings: u16,
}

impl PrepareOk {
    pub fn parse(payload: &[u8]) -> Result<PrepareOk, ProtocolError> {
        const W: &str = "COM_STMT_PREPARE OK";
        let mut r = Reader::new(payload);
        if r.u8(W)? != 0 {
            return Err(ProtocolError::malformed(W, "header is not 0x00"));
        }
        let statement_id = r.u32(W)?;
        let columns = r.u16(W)?;
        let params = r.u16(W)?;
        r.u8(W)?;
        let warnings = if r.remaining() >= 2 { r.u16(W)? } else { 0 };
        Ok(PrepareOk {
            statement_id,
            columns,
            params,
            warnings,
        })
    }
}

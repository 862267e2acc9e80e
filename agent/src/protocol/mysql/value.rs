//! Column types, and values in the binary protocol (`COM_STMT_EXECUTE` parameters and
//! the rows it answers).
use bytes::{BufMut, Bytes, BytesMut};

use super::message::{put_lenenc_bytes, Reader};
use super::ProtocolError;

/// Column type codes (`MYSQL_TYPE_*`).
pub mod ty {
    pub const DECIMAL: u8 = 0x00;
    pub const TINY: u8 = 0x01;
    pub const SHORT: u8 = 0x02;
    pub const LONG: u8 = 0x03;
    pub const FLOAT: u8 = 0x04;
    pub const DOUBLE: u8 = 0x05;
    pub const NULL: u8 = 0x06;
    pub const TIMESTAMP: u8 = 0x07;
    pub const LONGLONG: u8 = 0x08;
    pub const INT24: u8 = 0x09;
    pub const DATE: u8 = 0x0a;
    pub const TIME: u8 = 0x0b;
    pub const DATETIME: u8 = 0x0c;
    pub const YEAR: u8 = 0x0d;
    pub const NEWDATE: u8 = 0x0e;
    pub const VARCHAR: u8 = 0x0f;
    pub const BIT: u8 = 0x10;
    pub const TIMESTAMP2: u8 = 0x11;
    pub const DATETIME2: u8 = 0x12;
    pub const TIME2: u8 = 0x13;
    pub const JSON: u8 = 0xf5;
    pub const NEWDECIMAL: u8 = 0xf6;
    pub const ENUM: u8 = 0xf7;
    pub const SET: u8 = 0xf8;
    pub const TINY_BLOB: u8 = 0xf9;
    pub const MEDIUM_BLOB: u8 = 0xfa;
    pub const LONG_BLOB: u8 = 0xfb;
    pub const BLOB: u8 = 0xfc;
    pub const VAR_STRING: u8 = 0xfd;
    pub const STRING: u8 = 0xfe;
    pub const GEOMETRY: u8 = 0xff;
}

/// How a value of a type is laid out in the binary protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Fixed width, little-endian (1, 2, 4 or 8 bytes).
    Int(usize),
    Float,
    Double,
    /// One length byte, then that many bytes (dates, datetimes, times).
    Temporal,
    /// A length-encoded string (text, blobs, decimals, JSON, enums, bits).
    Bytes,
    /// No bytes at all.
    Null,
}

pub fn layout(column_type: u8) -> Result<Layout, ProtocolError> {
    Ok(match column_type {
        ty::TINY => Layout::Int(1),
        ty::SHORT | ty::YEAR => Layout::Int(2),
        ty::LONG | ty::INT24 => Layout::Int(4),
        ty::LONGLONG => Layout::Int(8),
        ty::FLOAT => Layout::Float,
        ty::DOUBLE => Layout::Double,
        ty::NULL => Layout::Null,
        ty::DATE
        | ty::DATETIME
        | ty::TIMESTAMP
        | ty::TIME
        | ty::NEWDATE
        | ty::TIMESTAMP2
        | ty::DATETIME2
        | ty::TIME2 => Layout::Temporal,
        ty::DECIMAL
        | ty::NEWDECIMAL
        | ty::VARCHAR
        | ty::BIT
        | ty::JSON
        | ty::ENUM
        | ty::SET
        | ty::TINY_BLOB
        | ty::MEDIUM_BLOB
        | ty::LONG_BLOB
        | ty::BLOB
        | ty::VAR_STRING
        | ty::STRING
        | ty::GEOMETRY => Layout::Bytes,
        other => {
            return Err(ProtocolError::malformed(
                "binary value",
                format!("unknown column type 0x{other:02x}"),
            ))
        }
    })
}

/// Whether values of the type are character or byte strings (a masked value can be
/// sent as a string of the same type); other types are masked to NULL in binary rows.
pub fn is_string(column_type: u8) -> bool {
    matches!(
        column_type,
        ty::VARCHAR
            | ty::VAR_STRING
            | ty::STRING
            | ty::TINY_BLOB
            | ty::MEDIUM_BLOB
            | ty::LONG_BLOB
            | ty::BLOB
            | ty::JSON
            | ty::ENUM
            | ty::SET
    )
}

/// The PostgreSQL type the masks treat a MySQL column like (the masks are
/// protocol-neutral but name types by pg_type OID): strings as `text`, integers as
/// `int8` (scanned for card numbers only), decimals as `numeric`, floats as `float8`,
/// temporal types as `timestamp` (never scanned), JSON as `json`.
pub fn mask_type_oid(column_type: u8) -> u32 {
    match column_type {
        ty::TINY | ty::SHORT | ty::YEAR | ty::LONG | ty::INT24 | ty::LONGLONG => 20,
        ty::DECIMAL | ty::NEWDECIMAL => 1700,
        ty::FLOAT | ty::DOUBLE => 701,
        ty::DATE
        | ty::DATETIME
        | ty::TIMESTAMP
        | ty::TIME
        | ty::NEWDATE
        | ty::TIMESTAMP2
        | ty::DATETIME2
        | ty::TIME2 => 1114,
        ty::JSON => 114,
        _ => 25,
    }
}

/// One binary value, as bytes of its wire form (`raw`) and as text (`text`: what the
/// text protocol would have sent, for masking and the journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryValue<'a> {
    pub raw: &'a [u8],
    pub text: Option<Vec<u8>>,
}

/// Reads one value of `column_type` (`unsigned`: the UNSIGNED flag) from `r`.
pub fn read_value<'a>(
    r: &mut Reader<'a>,
    column_type: u8,
    unsigned: bool,
) -> Result<BinaryValue<'a>, ProtocolError> {
    const W: &str = "binary value";
    let start = r.pos();
    let (raw, text) = match layout(column_type)? {
        Layout::Int(n) => {
            let b = r.take(n, W)?;
            let mut le = [0u8; 8];
            le[..n].copy_from_slice(b);
            let u = u64::from_le_bytes(le);
            let text = if unsigned {
                u.to_string()
            } else {
                let shift = 64 - 8 * n as u32;
                (((u << shift) as i64) >> shift).to_string()
            };
            (b, text.into_bytes())
        }
        Layout::Float => {
            let b = r.take(4, W)?;
            let f = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            (b, f.to_string().into_bytes())
        }
        Layout::Double => {
            let b = r.take(8, W)?;
            let f = f64::from_le_bytes(b.try_into().expect("8 bytes"));
            (b, f.to_string().into_bytes())
        }
        Layout::Temporal => {
            let n = usize::from(r.u8(W)?);
            let b = r.take(n, W)?;
            (b, temporal_text(column_type, b).into_bytes())
        }
        Layout::Bytes => {
            let b = r.lenenc_str(W)?;
            (b, b.to_vec())
        }
        Layout::Null => (&[][..], Vec::new()),
    };
    let _ = start;
    Ok(BinaryValue {
        raw,
        text: (layout(column_type)? != Layout::Null).then_some(text),
    })
}

fn temporal_text(column_type: u8, b: &[u8]) -> String {
    if matches!(column_type, ty::TIME | ty::TIME2) {
        if b.len() < 8 {
            return "00:00:00".to_owned();
        }
        let neg = b[0] == 1;
        // Servers send at most 34 days (TIME's range is ±838:59:59), but the 4 bytes
        // allow 2^32: widened, so a hostile value cannot overflow.
        let days = u64::from(u32::from_le_bytes([b[1], b[2], b[3], b[4]]));
        let hours = u64::from(b[5]) + days * 24;
        let mut s = format!(
            "{}{:02}:{:02}:{:02}",
            if neg { "-" } else { "" },
            hours,
            b[6],
            b[7]
        );
        if b.len() >= 12 {
            let us = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
            s.push_str(&format!(".{us:06}"));
        }
        return s;
    }
    let year = if b.len() >= 2 {
        u16::from_le_bytes([b[0], b[1]])
    } else {
        0
    };
    let (month, day) = if b.len() >= 4 { (b[2], b[3]) } else { (0, 0) };
    let mut s = format!("{year:04}-{month:02}-{day:02}");
    if matches!(column_type, ty::DATE | ty::NEWDATE) {
        return s;
    }
    let (h, m, sec) = if b.len() >= 7 {
        (b[4], b[5], b[6])
    } else {
        (0, 0, 0)
    };
    s.push_str(&format!(" {h:02}:{m:02}:{sec:02}"));
    if b.len() >= 11 {
        let us = u32::from_le_bytes([b[7], b[8], b[9], b[10]]);
        s.push_str(&format!(".{us:06}"));
    }
    s
}

/// A binary result row: values in column order (`None`: NULL), each with its bytes.
pub fn binary_row<'a>(
    payload: &'a [u8],
    columns: &[(u8, bool)],
) -> Result<Vec<Option<BinaryValue<'a>>>, ProtocolError> {
    const W: &str = "binary row";
    let mut r = Reader::new(payload);
    if r.u8(W)? != 0 {
        return Err(ProtocolError::malformed(W, "header is not 0x00"));
    }
    let bitmap = r.take((columns.len() + 7 + 2) / 8, W)?;
    let mut out = Vec::with_capacity(columns.len());
    for (i, &(column_type, unsigned)) in columns.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            out.push(None);
        } else {
            out.push(Some(read_value(&mut r, column_type, unsigned)?));
        }
    }
    if !r.is_empty() {
        return Err(ProtocolError::malformed(W, "bytes after the last column"));
    }
    Ok(out)
}

/// A binary row rebuilt: each column either its original bytes, a new string (for
/// string types), or NULL.
pub enum NewValue<'a> {
    Same(&'a [u8], Layout),
    String(&'a [u8]),
    Null,
}

pub fn encode_binary_row(values: &[NewValue<'_>]) -> Bytes {
    let mut bitmap = vec![0u8; (values.len() + 7 + 2) / 8];
    let mut body = BytesMut::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            NewValue::Null => {
                let bit = i + 2;
                bitmap[bit / 8] |= 1 << (bit % 8);
            }
            NewValue::String(b) => put_lenenc_bytes(&mut body, b),
            NewValue::Same(raw, layout) => match layout {
                Layout::Bytes => put_lenenc_bytes(&mut body, raw),
                Layout::Temporal => {
                    body.put_u8(raw.len() as u8);
                    body.put_slice(raw);
                }
                _ => body.put_slice(raw),
            },
        }
    }
    let mut out = BytesMut::with_capacity(1 + bitmap.len() + body.len());
    out.put_u8(0);
    out.put_slice(&bitmap);
    out.put_slice(&body);
    out.freeze()
}

/// `COM_STMT_EXECUTE`'s fixed part and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub statement_id: u32,
    pub flags: u8,
    /// Parameter values as text (`None`: NULL; `Some(None)`: sent as long data before).
    pub params: Vec<Option<Vec<u8>>>,
    /// The types bound with this execute (`None`: the previous ones apply).
    pub types: Option<Vec<(u8, bool)>>,
}

impl Execute {
    /// Decodes an execute of a statement with `nparams` parameters; `previous`: the
    /// types the last execute of the statement bound; `long_data`: parameters sent
    /// with COM_STMT_SEND_LONG_DATA (their values are not in the packet).
    pub fn parse(
        payload: &[u8],
        nparams: usize,
        previous: Option<&[(u8, bool)]>,
        long_data: &[bool],
    ) -> Result<Execute, ProtocolError> {
        const W: &str = "COM_STMT_EXECUTE";
        let mut r = Reader::new(payload);
        r.u8(W)?;
        let statement_id = r.u32(W)?;
        let flags = r.u8(W)?;
        r.u32(W)?;
        let mut params = Vec::with_capacity(nparams);
        let mut types = None;
        if nparams > 0 {
            let bitmap = r.take(nparams.div_ceil(8), W)?;
            let bound = r.u8(W)?;
            if bound == 1 {
                let mut t = Vec::with_capacity(nparams);
                for _ in 0..nparams {
                    let column_type = r.u8(W)?;
                    let flag = r.u8(W)?;
                    t.push((column_type, flag & 0x80 != 0));
                }
                types = Some(t);
            }
            let Some(use_types) = types.as_deref().or(previous) else {
                return Err(ProtocolError::malformed(
                    W,
                    "parameters without types (none bound before)",
                ));
            };
            if use_types.len() != nparams {
                return Err(ProtocolError::malformed(W, "parameter count changed"));
            }
            for (i, &(column_type, unsigned)) in use_types.iter().enumerate() {
                if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                    params.push(None);
                } else if long_data.get(i).copied().unwrap_or(false) {
                    params.push(Some(b"(long data)".to_vec()));
                } else {
                    let v = read_value(&mut r, column_type, unsigned)?;
                    params.push(Some(v.text.unwrap_or_default()));
                }
            }
        }
        Ok(Execute {
            statement_id,
            flags,
            params,
            types,
        })
    }
}

//! Helpers shared by the fuzz targets: how a fuzz input is cut into the reads a proxy
//! would see. Nothing here reimplements what a target exercises.
use bytes::BytesMut;

/// Splits `data` into a control byte and the rest. The control byte's low 7 bits are
/// the size of each read the proxy gets from its socket (0 = everything at once), so
/// one input exercises both whole and partial buffers; bit 7 is left to the target.
pub fn split_control(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&control, rest) = data.split_first()?;
    Some((control, rest))
}

/// The reads of `data` for a control byte: chunks of `control & 0x7f` bytes, or one.
pub fn reads(control: u8, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let size = usize::from(control & 0x7f);
    let size = if size == 0 { data.len().max(1) } else { size };
    data.chunks(size)
}

/// Appends one read to the proxy's buffer, as `read_buf` does.
pub fn append(buf: &mut BytesMut, read: &[u8]) {
    buf.extend_from_slice(read);
}

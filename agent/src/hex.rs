//! Lower-case hex, the one encoder of the agent (digests in the journal, seals, SigV4,
//! PostgreSQL MD5 passwords, key ids, bytea display).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    encode_to_slice(bytes, &mut out);
    // Only ASCII digits were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the lower-case hex of `bytes` into `out`, which must be twice as long
/// (a shorter `out` gets the hex of the bytes that fit).
pub fn encode_to_slice(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Appends the lower-case hex of `bytes` to `out`.
pub fn encode_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    encode_to_slice(bytes, &mut out[start..]);
}

/// Parses lower- or upper-case hex of exactly `N` bytes.
pub fn decode<const N: usize>(text: impl AsRef<[u8]>) -> Option<[u8; N]> {
    let text = text.as_ref();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lower_case_and_decodes_either_case() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let mut buf = b"\\x".to_vec();
        encode_into(&mut buf, &[0xde, 0xad]);
        assert_eq!(buf, b"\\xdead");
        let mut fixed = [0u8; 4];
        encode_to_slice(&[0xbe, 0xef], &mut fixed);
        assert_eq!(&fixed, b"beef");
        assert_eq!(decode::<2>("BEef"), Some([0xbe, 0xef]));
        assert_eq!(decode::<2>("beefa"), None, "length");
        assert_eq!(decode::<2>("bexf"), None, "digit");
        assert_eq!(decode::<2>("+1ef"), None, "sign");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode::<256>(encode(&all)).map(|a| a.to_vec()), Some(all));
    }
}

//! Inline commands (`PING`, `SET k "a b"` typed into telnet): split as Redis's
//! `sdssplitargs` splits them, so the agent judges the arguments the server would read.
//! What Redis refuses ("unbalanced quotes") is refused here too.

/// Splits one inline command line into its arguments.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    // `sdssplitargs` reads a C string: the server stops at a NUL and never sees what
    // follows it. Two readings of one line: refused (and a NUL never starts or ends an
    // argument here, which looped without consuming it: a fuzzer found the agent
    // growing without bound on `s\0`).
    if line.contains(&0) {
        return Err("a NUL byte in an inline command".into());
    }
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                if i >= n {
                    return Err("unbalanced quotes in an inline command".into());
                }
                if line[i] == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    current.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if line[i] == b'\\' && i + 1 < n {
                    i += 1;
                    current.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if line[i] == b'"' {
                    // The closing quote must be followed by a space or the end.
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return Err("unbalanced quotes in an inline command".into());
                    }
                    in_dq = false;
                    i += 1;
                    break;
                } else {
                    current.push(line[i]);
                }
            } else if in_sq {
                if i >= n {
                    return Err("unbalanced quotes in an inline command".into());
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    current.push(b'\'');
                } else if line[i] == b'\'' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return Err("unbalanced quotes in an inline command".into());
                    }
                    in_sq = false;
                    i += 1;
                    break;
                } else {
                    current.push(line[i]);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => current.push(c),
                }
            }
            i += 1;
        }
        debug_assert!(!in_dq && !in_sq);
        args.push(current);
    }
}

fn is_space(b: u8) -> bool {
    // isspace() in the C locale.
    matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c)
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::split_args;

    fn split(s: &str) -> Result<Vec<String>, String> {
        split_args(s.as_bytes()).map(|v| {
            v.into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect()
        })
    }

    #[test]
    fn splits_like_sdssplitargs() {
        assert_eq!(split("PING").unwrap(), ["PING"]);
        assert_eq!(split("  set  k   v ").unwrap(), ["set", "k", "v"]);
        assert_eq!(split(r#"SET k "a b""#).unwrap(), ["SET", "k", "a b"]);
        assert_eq!(split(r#"SET k "a\x41\n""#).unwrap(), ["SET", "k", "aA\n"]);
        assert_eq!(split(r"SET k 'it\'s'").unwrap(), ["SET", "k", "it's"]);
        assert_eq!(split(r#"SET k """#).unwrap(), ["SET", "k", ""]);
        assert!(split("").unwrap().is_empty());
        assert!(split(r#"SET k "a"b"#).is_err(), "a quote glued to text");
        assert!(split(r#"SET k "ab"#).is_err(), "unterminated");
        assert!(split("SET k 'ab").is_err());
    }
}

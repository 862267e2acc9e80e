//! Content detectors: find sensitive substrings (e-mail addresses, card numbers, keys)
//! in a value's bytes.
//!
//! Every detector matches ASCII only, so the ranges it reports start and end on ASCII
//! bytes (or at the end of the value) and therefore on UTF-8 character boundaries: a
//! value that was UTF-8 stays UTF-8 after the ranges are replaced. Detectors work on
//! bytes rather than `&str` so that a value is never validated as UTF-8 just to be
//! scanned.
//!
//! Cost: [`scan`] first makes one pass over the value that classifies each byte with a
//! lookup table (digits counted, '@', '-', upper-case letters, ... noted). A detector
//! whose necessary bytes are absent, or whose shortest match is longer than the value,
//! is skipped without looking further. The literal-prefix detectors (keys, tokens, JWT,
//! PEM) then use `memchr::memmem` finders built once per process.

use std::ops::Range;
use std::sync::LazyLock;

use base64::Engine as _;
use memchr::memmem;

/// One content detector. The names are those of the `detectors` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// `local@domain.tld`: a local part of `[A-Za-z0-9._%+-]`, a domain of at least two
    /// labels, a top-level label of at least two letters.
    Email,
    /// 13 to 19 digits, single spaces or dashes allowed between them, Luhn-valid, first
    /// digit 2-6 (see [`card_at`] for why).
    CreditCard,
    /// An IBAN: country code, two check digits, the country's length, mod-97 valid.
    Iban,
    /// A US social security number written `AAA-GG-SSSS`, outside the ranges the SSA
    /// never issues.
    UsSsn,
    /// A phone number: `+` and 8 to 15 digits (E.164) with optional separators, or a US
    /// number with separators (`(415) 555-2671`, `415-555-2671`, `1.415.555.2671`).
    Phone,
    /// A JWT (JWS or JWE): base64url segments joined by dots whose header decodes to a
    /// JSON object with `"alg"`.
    Jwt,
    /// An AWS access key id (`AKIA`/`ASIA` + 16 upper-case letters or digits), and an
    /// AWS secret access key (40 characters) when labelled `secret_access_key` or
    /// `SecretAccessKey`.
    AwsKey,
    /// A Google API key: `AIza` + 35 characters of `[A-Za-z0-9_-]`.
    GcpKey,
    /// A GitHub token: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + at least 36 letters or digits,
    /// or `github_pat_` + at least 22 of `[A-Za-z0-9_]`.
    GithubToken,
    /// A PEM private key, from `-----BEGIN ... PRIVATE KEY-----` to the end of its
    /// `-----END ...-----` line, or, when truncated, to the first `"` or the end of the
    /// value.
    PrivateKey,
}

impl Detector {
    /// Every detector, in the order the `"all"` keyword expands to.
    pub const ALL: [Detector; 10] = [
        Detector::Email,
        Detector::CreditCard,
        Detector::Iban,
        Detector::UsSsn,
        Detector::Phone,
        Detector::Jwt,
        Detector::AwsKey,
        Detector::GcpKey,
        Detector::GithubToken,
        Detector::PrivateKey,
    ];

    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::Iban => "iban",
            Detector::UsSsn => "us_ssn",
            Detector::Phone => "phone",
            Detector::Jwt => "jwt",
            Detector::AwsKey => "aws_key",
            Detector::GcpKey => "gcp_key",
            Detector::GithubToken => "github_token",
            Detector::PrivateKey => "private_key",
        }
    }

    /// The detector called `name`, if any.
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of detectors, as a bit set (there are ten).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorSet(u16);

impl DetectorSet {
    pub fn insert(&mut self, d: Detector) {
        self.0 |= d.bit();
    }

    pub fn contains(self, d: Detector) -> bool {
        self.0 & d.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// This set with only `d` (if it was in it).
    pub fn only(self, d: Detector) -> DetectorSet {
        DetectorSet(self.0 & d.bit())
    }

    pub fn iter(self) -> impl Iterator<Item = Detector> {
        Detector::ALL.into_iter().filter(move |d| self.contains(*d))
    }
}

impl FromIterator<Detector> for DetectorSet {
    fn from_iter<I: IntoIterator<Item = Detector>>(iter: I) -> Self {
        let mut set = DetectorSet::default();
        for d in iter {
            set.insert(d);
        }
        set
    }
}

/// One match: the byte range and the detector that found it.
pub type Hit = (Range<usize>, Detector);

/// Finds every match of the detectors in `active` in `text` and appends them to `out`
/// (cleared first) sorted by start, overlapping matches merged into one (attributed to
/// the detector of the earliest), so that replacing each range leaves nothing of a match
/// behind.
pub fn scan(text: &[u8], active: DetectorSet, out: &mut Vec<Hit>) {
    out.clear();
    if active.is_empty() || text.is_empty() {
        return;
    }
    let f = features(text);
    let len = text.len();
    let on = |d: Detector| active.contains(d);
    let (digits, upper, lower) = (f[DIGIT], f[UPPER], f[LOWER]);
    let alnum = digits + upper + lower;

    // Each gate is a necessary condition of the detector's shortest match, read off
    // the byte counts.
    if on(Detector::Email) && f[AT] > 0 && f[DOT] > 0 && len >= 6 {
        email(text, out);
    }
    if on(Detector::CreditCard) && digits >= 13 {
        credit_card(text, out);
    }
    if on(Detector::Iban) && upper >= 2 && digits >= 2 && upper + digits >= 15 {
        iban(text, out);
    }
    if on(Detector::UsSsn) && digits >= 9 && f[DASH] >= 2 {
        us_ssn(text, out);
    }
    if on(Detector::Phone) && digits >= 8 && (f[PLUS] > 0 || digits >= 10) {
        phone(text, f, out);
    }
    // "eyJ" and two dots.
    if on(Detector::Jwt) && f[DOT] >= 2 && upper >= 1 && lower >= 2 && len >= 20 {
        jwt(text, out);
    }
    if on(Detector::AwsKey) {
        // "AKIA"/"ASIA" + 16 upper-case letters or digits; or a 40-character secret
        // after a label of at least 15 letters.
        let id = upper >= 4 && upper + digits >= 20;
        let secret = len >= 55 && upper + lower >= 15;
        if id || secret {
            aws_key(text, id, secret, out);
        }
    }
    if on(Detector::GcpKey) && upper >= 2 && len >= 39 && alnum + f[DASH] + f[UNDERSCORE] >= 39 {
        gcp_key(text, out);
    }
    if on(Detector::GithubToken) && f[UNDERSCORE] > 0 && lower >= 3 && len >= 33 && alnum >= 30 {
        github_token(text, out);
    }
    // "-----BEGIN " + "PRIVATE KEY-----": ten dashes, fifteen capitals.
    if on(Detector::PrivateKey) && f[DASH] >= 10 && upper >= 15 {
        private_key(text, out);
    }
    normalise(out);
}

/// Sorts hits by start and merges overlapping ones.
fn normalise(out: &mut Vec<Hit>) {
    if out.len() < 2 {
        return;
    }
    out.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<Hit> = Vec::with_capacity(out.len());
    for (range, detector) in out.drain(..) {
        match merged.last_mut() {
            Some((last, _)) if range.start < last.end => last.end = last.end.max(range.end),
            _ => merged.push((range, detector)),
        }
    }
    *out = merged;
}

// Byte classes: indexes into [`Features`].
const OTHER: usize = 0;
const DIGIT: usize = 1;
const UPPER: usize = 2;
const LOWER: usize = 3;
const AT: usize = 4;
const DASH: usize = 5;
const DOT: usize = 6;
const UNDERSCORE: usize = 7;
const PLUS: usize = 8;
/// Space and parentheses, which formatted phone numbers use.
const SPACE_PAREN: usize = 9;
const CLASSES: usize = 10;

static CLASS: [u8; 256] = {
    let mut t = [OTHER as u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let class = if b.is_ascii_digit() {
            DIGIT
        } else if b.is_ascii_uppercase() {
            UPPER
        } else if b.is_ascii_lowercase() {
            LOWER
        } else {
            match b {
                b'@' => AT,
                b'-' => DASH,
                b'.' => DOT,
                b'_' => UNDERSCORE,
                b'+' => PLUS,
                b' ' | b'(' | b')' => SPACE_PAREN,
                _ => OTHER,
            }
        };
        t[i] = class as u8;
        i += 1;
    }
    t
};

/// One pass over a value: how many bytes of each class it holds.
type Features = [usize; CLASSES];

fn features(text: &[u8]) -> Features {
    let mut counts = [0usize; CLASSES];
    for &b in text {
        counts[usize::from(CLASS[usize::from(b)])] += 1;
    }
    counts
}

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// A letter, digit or '_': what must not touch a match for it to be a whole token.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when position `i` does not continue a word: the start, or a non-word byte before.
fn word_start(text: &[u8], i: usize) -> bool {
    i == 0 || !is_word(text[i - 1])
}

/// True when position `end` ends a word: the end, or a non-word byte there.
fn word_end(text: &[u8], end: usize) -> bool {
    text.get(end).is_none_or(|&b| !is_word(b))
}

/// Length of the run of bytes satisfying `f` starting at `from`.
fn run(text: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    text.get(from..)
        .map_or(0, |rest| rest.iter().take_while(|&&b| f(b)).count())
}

// ---------------------------------------------------------------------------- email

fn email(text: &[u8], out: &mut Vec<Hit>) {
    fn local(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
    }
    fn domain(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
    }
    let mut skip_to = 0;
    for at in memchr::memchr_iter(b'@', text) {
        if at < skip_to {
            continue;
        }
        // The local part: at most 64 bytes (RFC 5321), no leading dot.
        let mut start = at;
        while start > 0 && at - start < 64 && local(text[start - 1]) {
            start -= 1;
        }
        while start < at && text[start] == b'.' {
            start += 1;
        }
        if start == at {
            continue;
        }
        let mut end = at + 1 + run(text, at + 1, domain).min(253);
        while end > at + 1 && matches!(text[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if valid_domain(&text[at + 1..end]) {
            out.push((start..end, Detector::Email));
            skip_to = end;
        }
    }
}

/// At least two labels of 1..=63 bytes not starting or ending with '-', the last one
/// two or more letters (so `pkg@1.2.3` and `user@localhost` are not addresses).
fn valid_domain(domain: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label.first() == Some(&b'-')
            || label.last() == Some(&b'-')
        {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------- credit_card

/// Digit runs in which single spaces or dashes may separate groups of digits. Every
/// window of whole groups holding 13 to 19 digits is a candidate, leftmost-longest
/// first, so a card number written after other numbers ("call 555 1234 4111...") is
/// still found. The first digit must be 2-6: the major industry identifiers of payment
/// cards (Visa 4, Mastercard 2/5, Amex/Diners/JCB 3, Discover/UnionPay/Maestro 6).
/// This keeps out 18-19 digit ids that start with 1 (Twitter/Discord snowflakes),
/// which pass Luhn one time in ten; the few cards it misses (UATP airline cards,
/// starting with 1) are the price.
fn credit_card(text: &[u8], out: &mut Vec<Hit>) {
    let mut i = 0;
    let mut groups: Vec<Range<usize>> = Vec::new();
    while i < text.len() {
        if !is_digit(text[i]) {
            i += 1;
            continue;
        }
        // A run: digit groups joined by one separator each. Walked once to count its
        // digits; only a run that could hold a card is cut into groups.
        let run_start = i;
        let mut digits = 0;
        loop {
            let n = run(text, i, is_digit);
            digits += n;
            i += n;
            match (text.get(i), text.get(i + 1)) {
                (Some(b' ' | b'-'), Some(&next)) if is_digit(next) => i += 1,
                _ => break,
            }
        }
        let run_end = i;
        if digits < 13 || !word_start(text, run_start) || !word_end(text, run_end) {
            continue;
        }
        groups.clear();
        let mut j = run_start;
        while j < run_end {
            let n = run(text, j, is_digit);
            groups.push(j..j + n);
            j += n + 1;
        }
        let mut g = 0;
        while g < groups.len() {
            let mut found = None;
            let mut count = 0;
            for (e, group) in groups.iter().enumerate().skip(g) {
                count += group.len();
                if count > 19 {
                    break;
                }
                if count >= 13 && card_at(text, groups[g].start..group.end, count) {
                    found = Some(e);
                }
            }
            match found {
                Some(e) => {
                    out.push((groups[g].start..groups[e].end, Detector::CreditCard));
                    g = e + 1;
                }
                None => g += 1,
            }
        }
    }
}

/// The `count` digits in `range` (separators skipped) start with 2-6 and pass Luhn.
fn card_at(text: &[u8], range: Range<usize>, count: usize) -> bool {
    let digits = text[range].iter().filter(|b| is_digit(**b));
    let mut first = 0;
    let mut sum = 0u32;
    for (i, &b) in digits.enumerate() {
        let d = u32::from(b - b'0');
        if i == 0 {
            first = d;
        }
        // Double every second digit counting from the right (the check digit is 0).
        let from_right = count - 1 - i;
        sum += if from_right % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    (2..=6).contains(&first) && sum.is_multiple_of(10)
}

/// Whether a decimal rendering of an integer is a card number (for binary int8).
pub fn is_card_number(decimal: &[u8]) -> bool {
    let n = decimal.len();
    (13..=19).contains(&n) && decimal.iter().all(|b| is_digit(*b)) && card_at(decimal, 0..n, n)
}

// ----------------------------------------------------------------------------- iban

/// IBAN lengths by country code (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn iban_length(country: &[u8]) -> Option<usize> {
    IBAN_LENGTHS
        .binary_search_by(|(code, _)| code.as_slice().cmp(country))
        .ok()
        .map(|i| IBAN_LENGTHS[i].1)
}

/// Upper-case IBANs, written solid or in the print format (groups of four separated by
/// single spaces), exactly as long as their country's, mod-97 valid.
fn iban(text: &[u8], out: &mut Vec<Hit>) {
    fn alnum_upper(b: u8) -> bool {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    }
    let mut i = 0;
    while i + 15 <= text.len() {
        let head = &text[i..i + 4];
        if !(head[0].is_ascii_uppercase()
            && head[1].is_ascii_uppercase()
            && is_digit(head[2])
            && is_digit(head[3])
            && word_start(text, i))
        {
            i += 1;
            continue;
        }
        let Some(want) = iban_length(&head[..2]) else {
            i += 1;
            continue;
        };
        let mut pos = i + 4;
        let mut count = 4;
        while count < want {
            match text.get(pos) {
                Some(&b) if alnum_upper(b) => {
                    count += 1;
                    pos += 1;
                }
                Some(b' ')
                    if count % 4 == 0 && text.get(pos + 1).is_some_and(|&b| alnum_upper(b)) =>
                {
                    pos += 1
                }
                _ => break,
            }
        }
        if count == want && word_end(text, pos) && iban_mod97(&text[i..pos]) {
            out.push((i..pos, Detector::Iban));
            i = pos;
        } else {
            i += 1;
        }
    }
}

/// ISO 13616: move the first four characters to the end, letters to 10..=35, the
/// number mod 97 must be 1. Computed digit by digit so nothing overflows.
fn iban_mod97(iban: &[u8]) -> bool {
    let chars = iban.iter().copied().filter(|&b| b != b' ');
    let rotated = chars.clone().skip(4).chain(chars.take(4));
    let mut rem = 0u32;
    for b in rotated {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

// --------------------------------------------------------------------------- us_ssn

/// `AAA-GG-SSSS`, not touching other digits, dashes or letters, outside the ranges the
/// SSA never issues: area 000, 666 or 900-999, group 00, serial 0000.
fn us_ssn(text: &[u8], out: &mut Vec<Hit>) {
    let mut skip_to = 0;
    for dash in memchr::memchr_iter(b'-', text) {
        if dash < 3 || dash < skip_to + 3 {
            continue;
        }
        let start = dash - 3;
        let end = start + 11;
        let Some(s) = text.get(start..end) else {
            break;
        };
        let digits_at = |r: Range<usize>| s[r].iter().all(|b| is_digit(*b));
        if !(digits_at(0..3) && digits_at(4..6) && s[6] == b'-' && digits_at(7..11)) {
            continue;
        }
        if !word_start(text, start)
            || (start > 0 && text[start - 1] == b'-')
            || !word_end(text, end)
            || (text.get(end) == Some(&b'-') && text.get(end + 1).is_some_and(|b| is_digit(*b)))
        {
            continue;
        }
        let area = &s[0..3];
        if area == b"000" || area == b"666" || area[0] == b'9' || &s[4..6] == b"00" {
            continue;
        }
        if &s[7..11] == b"0000" {
            continue;
        }
        out.push((start..end, Detector::UsSsn));
        skip_to = end;
    }
}

// ---------------------------------------------------------------------------- phone

fn phone(text: &[u8], f: Features, out: &mut Vec<Hit>) {
    if f[PLUS] > 0 {
        for plus in memchr::memchr_iter(b'+', text) {
            if let Some(end) = e164_at(text, plus) {
                out.push((plus..end, Detector::Phone));
            }
        }
    }
    // A US number needs 10 digits and at least one separator.
    if f[DIGIT] < 10 || f[DASH] + f[DOT] + f[SPACE_PAREN] == 0 {
        return;
    }
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let starts = (is_digit(b) || b == b'(')
            && word_start(text, i)
            && !(i > 0 && text[i - 1] == b'+')
            // Not the middle of a longer dotted or dashed number ("12-415-555-2671").
            && !(i >= 2 && matches!(text[i - 1], b'-' | b'.') && is_digit(text[i - 2]));
        if starts {
            if let Some(end) = us_phone_at(text, i) {
                out.push((i..end, Detector::Phone));
                i = end;
                continue;
            }
        }
        i += 1;
    }
}

/// `+` then digit groups (1-9 first), each group optionally in parentheses, joined by
/// at most one of ' ', '-', '.'; 8 to 15 digits in all (E.164). The longest prefix
/// ending at a group boundary that is also a word boundary wins.
fn e164_at(text: &[u8], plus: usize) -> Option<usize> {
    if !word_start(text, plus)
        || !text
            .get(plus + 1)
            .is_some_and(|b| (b'1'..=b'9').contains(b))
    {
        return None;
    }
    let mut i = plus + 1;
    let mut digits = 0;
    let mut best = None;
    loop {
        let paren = text.get(i) == Some(&b'(');
        if paren {
            i += 1;
        }
        let n = run(text, i, is_digit);
        if n == 0 {
            break;
        }
        i += n;
        if paren {
            if text.get(i) != Some(&b')') {
                break;
            }
            i += 1;
        }
        digits += n;
        if digits > 15 {
            break;
        }
        if digits >= 8 && word_end(text, i) {
            best = Some(i);
        }
        match (text.get(i), text.get(i + 1)) {
            (Some(b' ' | b'-' | b'.'), Some(&next)) if is_digit(next) || next == b'(' => i += 1,
            (Some(_), _) if paren && text.get(i).is_some_and(|b| is_digit(*b)) => {}
            _ => break,
        }
    }
    best
}

/// `[1 sep] (NXX) NXX-XXXX`, `[1 sep] NXX sep NXX sep XXXX` with sep one of ' ', '-',
/// '.' used consistently, N = 2-9. A bare run of ten digits is not taken: too many
/// other numbers look like that.
fn us_phone_at(text: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize, n: usize| -> bool {
        text.get(from..from + n)
            .is_some_and(|s| s.iter().all(|b| is_digit(*b)))
    };
    let nxx = |from: usize| digits(from, 3) && text[from] >= b'2';
    let sep = |at: usize| {
        text.get(at)
            .copied()
            .filter(|b| matches!(b, b' ' | b'-' | b'.'))
    };

    let try_from = |mut i: usize| -> Option<usize> {
        let first_sep;
        if text.get(i) == Some(&b'(') {
            if !(nxx(i + 1) && text.get(i + 4) == Some(&b')')) {
                return None;
            }
            i += 5;
            if text.get(i) == Some(&b' ') {
                i += 1;
            }
            first_sep = None;
        } else {
            if !nxx(i) {
                return None;
            }
            first_sep = Some(sep(i + 3)?);
            i += 4;
        }
        if !nxx(i) {
            return None;
        }
        i += 3;
        let second = sep(i)?;
        if first_sep.is_some_and(|s| s != second) {
            return None;
        }
        i += 1;
        if !digits(i, 4) {
            return None;
        }
        i += 4;
        let continues = matches!(text.get(i), Some(b'-' | b'.'))
            && text.get(i + 1).is_some_and(|b| is_digit(*b));
        (word_end(text, i) && !continues).then_some(i)
    };

    // An optional leading country code "1" and a separator.
    if text[start] == b'1' && sep(start + 1).is_some() {
        if let Some(end) = try_from(start + 2) {
            return Some(end);
        }
    }
    try_from(start)
}

// ------------------------------------------------------------------------------ jwt

static EYJ: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("eyJ"));

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `eyJ...` (base64url of `{"`) `.` segment `.` segment [`.` segment ...]: three
/// (JWS) or more (JWE has five) base64url segments, the last may be empty (an unsigned
/// `alg: none` token); the first must decode to a JSON object with an `alg` member.
fn jwt(text: &[u8], out: &mut Vec<Hit>) {
    let mut from = 0;
    while let Some(found) = EYJ.find(&text[from..]) {
        let start = from + found;
        from = start + 3;
        if start > 0 && (is_b64url(text[start - 1]) || text[start - 1] == b'.') {
            continue;
        }
        let header_end = start + run(text, start, is_b64url);
        let mut end = header_end;
        let mut segments = 1;
        while text.get(end) == Some(&b'.') {
            let n = run(text, end + 1, is_b64url);
            if n == 0 && segments < 2 {
                break;
            }
            end += 1 + n;
            segments += 1;
            if n == 0 {
                break;
            }
        }
        if segments < 3 || !jwt_header(&text[start..header_end]) {
            continue;
        }
        out.push((start..end, Detector::Jwt));
        from = end;
    }
}

fn jwt_header(segment: &[u8]) -> bool {
    // A header is small; anything huge is not one, and is not worth decoding.
    if segment.len() > 4096 {
        return false;
    }
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT.decode(segment)
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|header| header.contains_key("alg"))
}

// -------------------------------------------------------------------------- aws_key

static AKIA: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("AKIA"));
static ASIA: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("ASIA"));

fn aws_key(text: &[u8], id: bool, secret: bool, out: &mut Vec<Hit>) {
    fn upper_alnum(b: u8) -> bool {
        b.is_ascii_uppercase() || b.is_ascii_digit()
    }
    for finder in [&*AKIA, &*ASIA].into_iter().filter(|_| id) {
        for start in finder.find_iter(text) {
            let end = start + 20;
            if end <= text.len()
                && !(start > 0 && text[start - 1].is_ascii_alphanumeric())
                && text[start + 4..end].iter().all(|b| upper_alnum(*b))
                && text.get(end).is_none_or(|b| !b.is_ascii_alphanumeric())
            {
                out.push((start..end, Detector::AwsKey));
            }
        }
    }
    if secret {
        aws_secret(text, out);
    }
}

/// A 40-character secret access key after a label: `secret_access_key`,
/// `secret-access-key` or `SecretAccessKey` in any case (so `AWS_SECRET_ACCESS_KEY=`,
/// `aws_secret_access_key = ` and the JSON `"SecretAccessKey": "` all count), then at
/// most eight bytes of quotes, spaces, ':' or '='. Only the key is masked.
fn aws_secret(text: &[u8], out: &mut Vec<Hit>) {
    fn secret_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
    }
    let eq = |at: usize, word: &[u8]| {
        text.get(at..at + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    let joiner = |at: usize| usize::from(matches!(text.get(at), Some(b'_' | b'-')));
    for s in memchr::memchr2_iter(b's', b'S', text) {
        if !eq(s, b"secret") {
            continue;
        }
        let mut i = s + 6;
        i += joiner(i);
        if !eq(i, b"access") {
            continue;
        }
        i += 6;
        i += joiner(i);
        if !eq(i, b"key") {
            continue;
        }
        i += 3;
        let gap = run(text, i, |b| {
            matches!(b, b'"' | b'\'' | b' ' | b'\t' | b':' | b'=')
        });
        if gap > 8 {
            continue;
        }
        i += gap;
        let n = run(text, i, secret_char);
        if n == 40 && text.get(i + n) != Some(&b'=') {
            out.push((i..i + 40, Detector::AwsKey));
        }
    }
}

// -------------------------------------------------------------------------- gcp_key

static AIZA: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("AIza"));

fn gcp_key(text: &[u8], out: &mut Vec<Hit>) {
    for start in AIZA.find_iter(text) {
        let end = start + 39;
        if end <= text.len()
            && !(start > 0 && is_b64url(text[start - 1]))
            && text[start + 4..end].iter().all(|b| is_b64url(*b))
            && text.get(end).is_none_or(|b| !is_b64url(*b))
        {
            out.push((start..end, Detector::GcpKey));
        }
    }
}

// --------------------------------------------------------------------- github_token

static GH: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("gh"));
static GITHUB_PAT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new("github_pat_"));

fn github_token(text: &[u8], out: &mut Vec<Hit>) {
    // Classic tokens: `gh?_` + 36 characters today; a longer run is still masked whole
    // rather than missed.
    for start in GH.find_iter(text) {
        if word_start(text, start)
            && matches!(text.get(start + 2), Some(b'p' | b'o' | b'u' | b's' | b'r'))
            && text.get(start + 3) == Some(&b'_')
        {
            let n = run(text, start + 4, |b| b.is_ascii_alphanumeric());
            if n >= 36 && word_end(text, start + 4 + n) {
                out.push((start..start + 4 + n, Detector::GithubToken));
            }
        }
    }
    // Fine-grained tokens: `github_pat_` + 22 characters, '_', 59 characters.
    for start in GITHUB_PAT.find_iter(text) {
        let n = run(text, start + 11, is_word);
        if word_start(text, start) && n >= 22 {
            out.push((start..start + 11 + n, Detector::GithubToken));
        }
    }
}

// ---------------------------------------------------------------------- private_key

static BEGIN: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new("-----BEGIN "));
static END: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("-----END "));

fn private_key(text: &[u8], out: &mut Vec<Hit>) {
    let mut from = 0;
    while let Some(found) = BEGIN.find(&text[from..]) {
        let start = from + found;
        from = start + 11;
        // The label: upper-case words on the same line, ending "PRIVATE KEY" (PKCS#8,
        // RSA, EC, DSA, OPENSSH, ENCRYPTED) or "PRIVATE KEY BLOCK" (PGP).
        let label_start = start + 11;
        let n = run(text, label_start, |b| {
            b.is_ascii_uppercase() || b == b' ' || is_digit(b)
        });
        let label = &text[label_start..label_start + n];
        if n > 64
            || !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
            || !text[label_start + n..].starts_with(b"-----")
        {
            continue;
        }
        let body = label_start + n + 5;
        let end = match END.find(&text[body..]) {
            Some(e) => {
                let footer = body + e + 9;
                let m = run(text, footer, |b| {
                    b.is_ascii_uppercase() || b == b' ' || is_digit(b)
                });
                if text[footer + m..].starts_with(b"-----") {
                    footer + m + 5
                } else {
                    truncated_end(text, body)
                }
            }
            None => truncated_end(text, body),
        };
        out.push((start..end, Detector::PrivateKey));
        from = end;
    }
}

/// Where a key without its END line stops: a PEM body never holds '"', so the first one
/// ends the JSON string the key was cut inside; otherwise the end of the value.
fn truncated_end(text: &[u8], body: usize) -> usize {
    memchr::memchr(b'"', &text[body..]).map_or(text.len(), |q| body + q)
}

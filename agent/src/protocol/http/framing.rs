//! HTTP/1.1 request framing, followed on the raw bytes a client sends, before hyper
//! parses them, to refuse what hyper's parser resolves silently or only notices once the
//! head is already forwarded:
//! - a head with both `Content-Length` and `Transfer-Encoding`: RFC 9112 §6.3 lets a
//!   server let `Transfer-Encoding` win (hyper drops the length and closes the connection
//!   after the response), but two lengths for one body are the classic request-smuggling
//!   shape;
//! - `Transfer-Encoding` other than exactly `chunked` (`identity, chunked`, `gzip,
//!   chunked`: hyper accepts any list that ends in `chunked`, and would hand the server
//!   the coded bytes without their coding) or on two header lines;
//! - two `Host` headers (RFC 9112 §3.2: 400; policy and server could read different
//!   ones);
//! - a malformed chunked body (a size that is not hex or overflows, bare LF line ends,
//!   data longer than its size): hyper hands the request to the proxy at its head and
//!   fails only while the body streams, after the head went upstream;
//! - and, should hyper ever accept them, a `Content-Length` it cannot read and a head
//!   httparse rejects.
//!
//! The agent refuses ambiguous or malformed input rather than pick a reading.
//!
//! [`RequestFraming`] is a sans-IO state machine fed every byte the client sends, in
//! order, however the reads split them. It finds each request head with `httparse` (the
//! parser hyper uses, with hyper's default configuration), then skips the body as hyper
//! frames it: `Content-Length` bytes, or chunks parsed with the same strict rules as
//! hyper's decoder (CRLF line ends, hex sizes, extensions, trailers). Heads are numbered
//! from 0 in the order they arrive, which is the order hyper hands HTTP/1 requests to the
//! service, so the proxy asks [`RequestFraming::ambiguity`] with its request's number.
//! A malformed chunked body is caught before the request is judged when its bytes
//! arrived with the head (one read); when they come later, hyper's own decoder fails the
//! body, the upstream request is cut short (the server never gets a complete request),
//! and the connection closes.
//!
//! It stops following after a refusal (the proxy closes the connection), a `CONNECT`
//! (refused too), HTTP/2's preface, a head longer than hyper accepts, and when the proxy
//! says the connection switched protocols ([`RequestFraming::switched`], on a `101`). An
//! `Upgrade` request the server does not accept leaves an HTTP/1.1 connection that goes
//! on, so it is followed like any other.
use std::collections::VecDeque;

/// The longest request head the agent accepts: the proxy gives hyper's read buffer this
/// limit (a longer head gets 431), and heads longer than this are not followed.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers per head httparse is given room for (hyper's default is 100).
const MAX_HEADERS: usize = 128;
/// Ambiguous heads remembered but not yet asked for (a client pipelining many).
const MAX_PENDING: usize = 64;

#[derive(Debug)]
pub struct RequestFraming {
    state: State,
    /// Bytes of the head being read.
    head: Vec<u8>,
    /// Heads complete so far (the next head's number).
    heads: u64,
    /// (head number, why it is ambiguous), oldest first.
    ambiguous: VecDeque<(u64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Bytes of a `Content-Length` body still to come.
    Body(u64),
    Chunk(Chunk),
    /// Not following any more (see the module documentation).
    Stopped,
}

/// Where in a chunked body the bytes are (hyper's `ChunkedState`, same transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Default for RequestFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestFraming {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
            ambiguous: VecDeque::new(),
        }
    }

    /// Whether it still follows the stream (false: every later byte is ignored).
    pub fn following(&self) -> bool {
        self.state != State::Stopped
    }

    /// Request heads seen so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Why request head number `index` (from 0) is ambiguous, if it is. Forgets what it
    /// knew of heads before `index`: ask in increasing order.
    pub fn ambiguity(&mut self, index: u64) -> Option<String> {
        while let Some((at, _)) = self.ambiguous.front() {
            if *at > index {
                return None;
            }
            let (at, why) = self.ambiguous.pop_front()?;
            if at == index {
                return Some(why);
            }
        }
        None
    }

    /// Follows the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Stopped => return,
                State::Head => {
                    // What was buffered is an incomplete head: a complete one ends in
                    // these bytes.
                    let had = self.head.len();
                    self.head.extend_from_slice(bytes);
                    // A head ends with a line end: parse only when one arrived.
                    let parsed = if bytes.contains(&b'\n') {
                        self.parse_head()
                    } else {
                        None
                    };
                    match parsed {
                        Some(used) => {
                            // The rest is body or the next head: go round again on it.
                            bytes = match used.checked_sub(had) {
                                Some(fresh) => &bytes[fresh..],
                                None => {
                                    self.stop();
                                    return;
                                }
                            };
                            self.head.clear();
                        }
                        None => {
                            bytes = &[];
                            if self.head.len() > MAX_HEAD_BYTES {
                                self.stop();
                            }
                        }
                    }
                }
                State::Body(remaining) => {
                    let n = remaining.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.state = match remaining - n {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::Chunk(Chunk::Data(remaining)) => {
                    let n = remaining.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.state = State::Chunk(match remaining - n {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    });
                }
                State::Chunk(chunk) => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.state = match next_chunk_state(chunk, byte) {
                        Some(Some(next)) => State::Chunk(next),
                        Some(None) => State::Head,
                        None => {
                            // The body belongs to the last head.
                            let index = self.heads.saturating_sub(1);
                            self.refuse(
                                index,
                                format!("a malformed chunked body (unexpected byte {byte:#04x})"),
                            );
                            return;
                        }
                    };
                }
            }
        }
    }

    /// The connection switched protocols (a `101`): nothing after this is a request.
    pub fn switched(&mut self) {
        self.stop();
    }

    /// Remembers why head `index` is refused and stops following.
    fn refuse(&mut self, index: u64, why: String) {
        if self.ambiguous.len() >= MAX_PENDING {
            self.ambiguous.pop_front();
        }
        self.ambiguous.push_back((index, why));
        self.stop();
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.head = Vec::new();
    }

    /// Parses the buffered head. `Some(length)` when it is complete (the state then says
    /// how its body is framed); `None` while incomplete, or when it stopped following.
    fn parse_head(&mut self) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let used = match request.parse(&self.head) {
            // Longer than hyper reads (however the bytes arrived): hyper answers 431.
            Ok(httparse::Status::Complete(used)) if used > MAX_HEAD_BYTES => {
                self.stop();
                return None;
            }
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => {
                // hyper answers 400 and closes (or it is h2's preface, which hyper
                // detects before any HTTP/1 request is asked about).
                self.refuse(
                    self.heads,
                    format!("a request head that does not parse ({e})"),
                );
                return None;
            }
        };
        let index = self.heads;
        self.heads += 1;
        let mut content_length: Option<u64> = None;
        let mut has_content_length = false;
        let mut transfer_encoding = false;
        let mut hosts = 0;
        let mut refusal: Option<String> = None;
        let mut refuse = |why: String| {
            refusal.get_or_insert(why);
        };
        for header in request.headers.iter() {
            let value = String::from_utf8_lossy(header.value);
            if header.name.eq_ignore_ascii_case("content-length") {
                has_content_length = true;
                match parse_content_length(header.value) {
                    Some(n) if content_length.is_none_or(|m| m == n) => content_length = Some(n),
                    _ => refuse(format!("an invalid or second Content-Length ({value:?})")),
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if transfer_encoding {
                    refuse("Transfer-Encoding on two header lines".into());
                }
                transfer_encoding = true;
                if !value.trim().eq_ignore_ascii_case("chunked") {
                    refuse(format!(
                        "Transfer-Encoding {value:?} (only \"chunked\" is accepted)"
                    ));
                }
            } else if header.name.eq_ignore_ascii_case("host") {
                hosts += 1;
                if hosts == 2 {
                    refuse("two Host headers".into());
                }
            }
        }
        if has_content_length && transfer_encoding {
            // hyper closes the connection after this request: nothing after it counts.
            self.refuse(
                index,
                "the request has both Content-Length and Transfer-Encoding (two lengths for \
                 one body)"
                    .into(),
            );
            return Some(used);
        }
        if let Some(why) = refusal {
            self.refuse(index, why);
            return Some(used);
        }
        self.state = if request.method == Some("CONNECT") {
            // Refused by the proxy, which closes the connection.
            State::Stopped
        } else if transfer_encoding {
            State::Chunk(Chunk::Size(0))
        } else {
            match content_length {
                Some(0) | None => State::Head,
                Some(n) => State::Body(n),
            }
        };
        Some(used)
    }
}

/// The state after `byte` in a chunked body: `Some(Some(next))`, `Some(None)` when the
/// body ended (a head comes next), `None` where hyper's decoder fails.
fn next_chunk_state(chunk: Chunk, byte: u8) -> Option<Option<Chunk>> {
    let next = match (chunk, byte) {
        (Chunk::Size(size), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
            let digit = (byte as char).to_digit(16)?;
            Chunk::Size(size.checked_mul(16)?.checked_add(u64::from(digit))?)
        }
        (Chunk::Size(size) | Chunk::SizeLws(size), b'\t' | b' ') => Chunk::SizeLws(size),
        (Chunk::Size(size) | Chunk::SizeLws(size), b';') => Chunk::Extension(size),
        (Chunk::Size(size) | Chunk::SizeLws(size) | Chunk::Extension(size), b'\r') => {
            Chunk::SizeLf(size)
        }
        (Chunk::Extension(_), b'\n') => return None,
        (Chunk::Extension(size), _) => Chunk::Extension(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size(0),
        (Chunk::EndCr, b'\r') => Chunk::EndLf,
        (Chunk::EndCr | Chunk::Trailer, b'\n') => return None,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
        (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
        (Chunk::EndLf, b'\n') => return Some(None),
        _ => return None,
    };
    Some(Some(next))
}

/// A `Content-Length` value as hyper reads it: digits, optionally a list of equal
/// values (`5, 5`).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut length = None;
    for part in text.split(',') {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        if length.is_some_and(|m| m != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every position (and byte by byte), checking each split
    /// gives the same result.
    fn follow(input: &[u8]) -> (u64, Vec<(u64, String)>, bool) {
        let run = |parts: &[&[u8]]| {
            let mut f = RequestFraming::new();
            for p in parts {
                f.feed(p);
            }
            (
                f.heads,
                f.ambiguous.iter().cloned().collect(),
                f.following(),
            )
        };
        let whole = run(&[input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(run(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn pipelined_requests_with_bodies_are_counted() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /\
            POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let (heads, ambiguous, following) = follow(input);
        assert_eq!(heads, 4);
        assert!(ambiguous.is_empty());
        assert!(following);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous_in_either_order() {
        for head in [
            "POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /both HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        ] {
            let input = format!(
                "GET /first HTTP/1.1\r\nHost: x\r\n\r\n{head}0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
            );
            let (heads, ambiguous, following) = follow(input.as_bytes());
            assert_eq!(heads, 2, "{head:?}");
            assert_eq!(ambiguous.len(), 1);
            assert_eq!(ambiguous[0].0, 1);
            assert!(ambiguous[0].1.contains("both Content-Length and Transfer-Encoding"));
            assert!(!following, "nothing after it is a request of this connection");
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_one() {
        // The body of the first request holds an ambiguous-looking head: it is body.
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /next HTTP/1.1\r\n\r\n",
            body.len()
        );
        let (heads, ambiguous, following) = follow(input.as_bytes());
        assert_eq!((heads, ambiguous.len(), following), (2, 0, true));
    }

    #[test]
    fn it_stops_where_the_protocol_changes() {
        let (heads, ambiguous, following) = follow(b"CONNECT x:443 HTTP/1.1\r\n\r\n\x16\x03\x01");
        assert_eq!((heads, ambiguous.len(), following), (1, 0, false));
        let mut f = RequestFraming::new();
        f.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(f.following());
        f.switched();
        f.feed(b"\x81\x05hello");
        assert!(!f.following());
    }

    #[test]
    fn a_declined_upgrade_leaves_a_connection_that_is_followed() {
        let input =
            b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (heads, ambiguous, following) = follow(input);
        assert_eq!((heads, following), (2, false));
        assert_eq!(ambiguous[0].0, 1);
    }

    #[test]
    fn malformed_framing_is_refused_for_its_request() {
        let chunked = |body: &str| {
            format!("GET /a HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
        };
        let head = |line: &str| format!("GET /a HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\n{line}\r\n\r\n");
        for (input, why) in [
            (chunked("zz\r\n"), "malformed chunked body"),
            (chunked("1ffffffffffffffff\r\n"), "malformed chunked body"),
            (chunked("0x3\r\nabc\r\n"), "malformed chunked body"),
            (chunked("3\nabc"), "malformed chunked body"),
            (chunked("3\r\nabcdef\r\n"), "malformed chunked body"),
            (head("Transfer-Encoding: gzip"), "only \"chunked\""),
            (
                head("Transfer-Encoding: identity, chunked"),
                "only \"chunked\"",
            ),
            (
                head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
                "two header lines",
            ),
            (
                head("Content-Length: 1\r\nContent-Length: 2"),
                "second Content-Length",
            ),
            (
                head("Content-Length: -1"),
                "invalid or second Content-Length",
            ),
            (head("Host: a\r\nHost: b"), "two Host headers"),
            (
                "GET /a HTTP/1.1\r\n\r\n\x00\x01garbage\r\n\r\n".into(),
                "does not parse",
            ),
            (
                "GET /a HTTP/1.1\r\n\r\nGET  /b HTTP/1.1\r\n\r\n".into(),
                "does not parse",
            ),
        ] {
            let (_, ambiguous, following) = follow(input.as_bytes());
            assert!(!following, "{input:?}");
            assert_eq!(ambiguous.len(), 1, "{input:?}");
            assert_eq!(ambiguous[0].0, 1, "{input:?}");
            assert!(
                ambiguous[0].1.contains(why),
                "{input:?}: {}",
                ambiguous[0].1
            );
        }
    }

    #[test]
    fn ambiguity_is_asked_by_request_number() {
        let mut f = RequestFraming::new();
        f.feed(b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(f.ambiguity(0), None);
        assert!(f.ambiguity(1).is_some());
        assert_eq!(f.ambiguity(1), None, "answered once");
    }

    #[test]
    fn many_pipelined_heads_in_one_read() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
        let mut f = RequestFraming::new();
        f.feed(&input);
        assert_eq!((f.heads, f.following()), (20_000, true));
    }

    #[test]
    fn an_endless_head_is_not_buffered_forever() {
        let mut f = RequestFraming::new();
        f.feed(b"GET / HTTP/1.1\r\n");
        let line = [b'a'; 1024];
        for _ in 0..(MAX_HEAD_BYTES / 1024 + 2) {
            f.feed(&line);
        }
        assert!(!f.following());
        assert!(f.head.capacity() == 0);
    }

    /// Found by the fuzzer: a head longer than hyper reads, arriving in one read,
    /// completed (byte by byte it was refused).
    #[test]
    fn a_long_head_is_refused_however_it_arrives() {
        // Fewer headers than httparse is given room for, more bytes than hyper reads.
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for n in 0..110 {
            input.extend_from_slice(format!("X-H{n}: {}\r\n", "v".repeat(4000)).as_bytes());
        }
        assert!(input.len() > MAX_HEAD_BYTES);
        input.extend_from_slice(b"\r\nGET / HTTP/1.1\r\n\r\n");
        let mut whole = RequestFraming::new();
        whole.feed(&input);
        let mut drip = RequestFraming::new();
        for chunk in input.chunks(1000) {
            drip.feed(chunk);
        }
        assert_eq!((whole.heads(), whole.following()), (0, false));
        assert_eq!((drip.heads(), drip.following()), (0, false));
    }

    #[test]
    fn content_length_values_read_as_hyper_reads_them() {
        assert_eq!(parse_content_length(b"12"), Some(12));
        assert_eq!(parse_content_length(b"5, 5"), Some(5));
        assert_eq!(parse_content_length(b"5, 6"), None);
        assert_eq!(parse_content_length(b"+5"), None);
        assert_eq!(parse_content_length(b""), None);
    }
}

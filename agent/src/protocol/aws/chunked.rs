//! S3 `aws-chunked` request bodies whose chunks are signed one by one
//! (`x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD` and
//! `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`), re-signed with the agent's key while they
//! stream.
//!
//! The client signs its request with a placeholder key that the agent knows. The agent
//! re-signs the request head with its real key (elsewhere), which changes the head's
//! signature, and the chunk signatures chain from it: the string to sign of chunk n holds
//! the signature of chunk n-1, and that of the first chunk holds the head's ("seed")
//! signature. So every chunk, and the trailer after them, has to be re-signed too, or S3
//! rejects the body at its first chunk.
//!
//! The body, as the S3 documentation gives it
//! (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html>,
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming-trailers.html>) and
//! the AWS SDKs write it:
//!
//! ```text
//! <hex size>;chunk-signature=<64 hex>\r\n<size bytes>\r\n    one or more data chunks
//! 0;chunk-signature=<64 hex>\r\n                             the final, empty chunk
//! \r\n                                                       end of the body
//! ```
//!
//! and, in the `-TRAILER` variant, after the final chunk's line:
//!
//! ```text
//! x-amz-checksum-crc32:<value>\r\n                           trailer headers
//! x-amz-trailer-signature:<64 hex>\r\n
//! \r\n
//! ```
//!
//! [`ChunkSigner`] computes the chained signatures. [`ChunkResigner`] is a sans-IO state
//! machine: the proxy pushes the client's body bytes in, however the reads split them, and
//! takes out the same body with every chunk signature and the trailer signature replaced
//! by the agent's.
//!
//! A chunk's signature comes before its data and covers the hash of all of it, so a chunk
//! is held back until its last data byte and the CRLF after it have arrived: only then can
//! its new header be written. The same holding means that, when the client's signatures
//! are checked, no byte of a chunk goes out before its signature has been found good. The
//! trailer section is held the same way until its signature line. Chunk sizes are bounded
//! by `max_chunk`, header and trailer lines by [`MAX_LINE`], the trailer section by
//! [`MAX_TRAILER_SECTION`] and [`MAX_TRAILERS`], so what is held never exceeds `max_chunk`
//! plus a small constant, whatever the client sends.
//!
//! Signatures are always 64 hex digits and everything else is copied as the client sent
//! it (the size digits with their case and leading zeros, the trailer lines), so the
//! re-signed body has exactly the length of the original: the head's `Content-Length` and
//! `x-amz-decoded-content-length` stay valid.
//!
//! An error ends the body: the caller aborts the upstream request rather than end its body
//! normally, and nothing more comes out of the resigner (released bytes not yet taken are
//! dropped too).
//!
//! The parser is strict, because it faces whatever a bot sends: CRLF line ends only, a
//! size of 1 to 16 hex digits without sign or blanks, exactly one extension
//! (`chunk-signature=` with 64 lowercase hex digits), trailer names that are HTTP tokens,
//! values of visible ASCII, space and tab, no trailer name twice, and nothing after the
//! end of the body. Anything else ends the body with an error rather than pick a reading.

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Longest header line (chunk header or trailer line, without its CRLF) accepted. A valid
/// chunk header is at most 97 bytes; the limit keeps a line that never ends from growing
/// memory.
pub const MAX_LINE: usize = 1024;
/// Largest trailer section accepted, counting every trailer line (the signature line
/// included) with its CRLF.
pub const MAX_TRAILER_SECTION: usize = 16 * 1024;
/// Most trailer headers accepted, the `x-amz-trailer-signature` line not counted.
pub const MAX_TRAILERS: usize = 16;

/// Most hex digits in a chunk size: 16 digits fill a `u64`.
const MAX_SIZE_DIGITS: usize = 16;
const SIGNATURE_LEN: usize = 64;
const CHUNK_SIGNATURE: &[u8] = b"chunk-signature=";
const TRAILER_SIGNATURE: &[u8] = b"x-amz-trailer-signature";
const PAYLOAD_ALGORITHM: &[u8] = b"AWS4-HMAC-SHA256-PAYLOAD";
const TRAILER_ALGORITHM: &[u8] = b"AWS4-HMAC-SHA256-TRAILER";
/// Hex SHA-256 of the empty string: a fixed line of every chunk's string to sign, before
/// the hash of the chunk's data.
const EMPTY_SHA256_HEX: &[u8] = b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a body (or the parameters of a signer) was refused. Chunks are numbered from 1 in
/// the order they arrive, the final empty chunk included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A parameter given to [`ChunkSigner::new`] cannot be part of a SigV4 scope or chain.
    #[error("invalid chunk signing parameter: {0}")]
    InvalidParameter(&'static str),
    /// The framing of a chunk is broken: size, extension, signature or line ends.
    #[error("malformed aws-chunked body at chunk {chunk}: {what}")]
    Malformed { chunk: u64, what: &'static str },
    /// The chunk declares more data than the resigner holds for one chunk.
    #[error("aws-chunked chunk {chunk} declares {size} bytes, more than the {max} accepted")]
    ChunkTooLarge { chunk: u64, size: u64, max: usize },
    /// The client's signature of this chunk is not the one its key gives.
    #[error("aws-chunked chunk {chunk}: the client's chunk signature does not match")]
    SignatureMismatch { chunk: u64 },
    /// A trailer line is broken, repeated, or the section lacks its signature.
    #[error("malformed aws-chunked trailer: {0}")]
    MalformedTrailer(&'static str),
    /// The trailer section is longer than [`MAX_TRAILER_SECTION`].
    #[error("aws-chunked trailer section longer than {MAX_TRAILER_SECTION} bytes")]
    TrailerTooLarge,
    /// More trailer headers than [`MAX_TRAILERS`].
    #[error("more than {MAX_TRAILERS} aws-chunked trailer headers")]
    TooManyTrailers,
    /// The client's `x-amz-trailer-signature` is not the one its key gives.
    #[error("the client's aws-chunked trailer signature does not match")]
    TrailerSignatureMismatch,
    /// The chunk sizes disagree with `x-amz-decoded-content-length` (see
    /// [`ChunkResigner::expect_decoded_length`]); `actual` counts the chunks up to the one
    /// that showed it.
    #[error(
        "aws-chunked chunks carry {actual} bytes, x-amz-decoded-content-length says {declared}"
    )]
    DecodedLength { declared: u64, actual: u64 },
    /// Bytes came after the end of the body.
    #[error("data after the final aws-chunked chunk")]
    DataAfterFinal,
    /// The client's body ended before the final chunk (and trailer) was complete.
    #[error("aws-chunked body ended early: {within} {chunk}")]
    Truncated { chunk: u64, within: &'static str },
    /// An earlier error already ended this body.
    #[error("an earlier error ended this aws-chunked body")]
    Poisoned,
}

/// Signs the chunks of one request: the SigV4 signing key (derived once), the request's
/// date-time ("20130524T000000Z") and scope ("20130524/us-east-1/s3/aws4_request"), and the
/// running signature (initially the seed signature of the request head).
///
/// Each signature computed becomes the running one, because the next chunk's string to
/// sign holds it: a signer follows one body, in order, and cannot be reused.
pub struct ChunkSigner {
    key: [u8; 32],
    date_time: String,
    scope: String,
    running: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for ChunkSigner {
    /// Leaves the signing key out: it signs for the whole day and scope.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkSigner")
            .field("date_time", &self.date_time)
            .field("scope", &self.scope)
            .field("running", &self.signature())
            .finish_non_exhaustive()
    }
}

impl ChunkSigner {
    /// `secret`: the secret access key; derives the signing key for (date, region, service).
    ///
    /// `date_time` must be `YYYYMMDDTHHMMSSZ` (its first 8 characters are the scope's
    /// date), `region` and `service` non-empty runs of ASCII letters, digits, `-`, `_` and
    /// `.`, and `seed_signature` 64 lowercase hex digits: anything else could make the
    /// newline-separated string to sign mean something else.
    pub fn new(
        secret: &str,
        date_time: &str,
        region: &str,
        service: &str,
        seed_signature: &str,
    ) -> Result<ChunkSigner, ChunkError> {
        if !is_date_time(date_time) {
            return Err(ChunkError::InvalidParameter(
                "date-time is not YYYYMMDDTHHMMSSZ",
            ));
        }
        if !is_scope_part(region) {
            return Err(ChunkError::InvalidParameter("region"));
        }
        if !is_scope_part(service) {
            return Err(ChunkError::InvalidParameter("service"));
        }
        let running = parse_signature(seed_signature.as_bytes()).ok_or(
            ChunkError::InvalidParameter("seed signature is not 64 lowercase hex digits"),
        )?;
        let date = &date_time[..8];
        let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        for part in [region, service, "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        Ok(ChunkSigner {
            key,
            date_time: date_time.to_owned(),
            scope: format!("{date}/{region}/{service}/aws4_request"),
            running,
        })
    }

    /// The running signature: the seed until a chunk is signed, then the last signature.
    pub fn signature(&self) -> &str {
        std::str::from_utf8(&self.running).expect("hex digits are ASCII")
    }

    /// Signs the next chunk's data (the final chunk is empty), advancing the running signature.
    pub fn sign_chunk(&mut self, data: &[u8]) -> String {
        self.sign_chunk_digest(&Sha256::digest(data).into())
    }

    /// [`ChunkSigner::sign_chunk`] for a chunk whose SHA-256 is already known, so that a
    /// chunk hashed while it streamed is not hashed again.
    pub fn sign_chunk_digest(&mut self, sha256: &[u8; 32]) -> String {
        let signature = self.advance(self.chunk_mac(sha256));
        String::from_utf8(signature.to_vec()).expect("hex digits are ASCII")
    }

    /// Signs the trailer (canonical trailer headers, per the trailer doc), advancing.
    ///
    /// The canonical form is that of `aws_sigv4::sign::v4::sign_trailer`, which the AWS
    /// SDK for Rust signs with: each header as `lowercase(name):trim(value)\n`, sorted by
    /// lowercase name (a stable sort, so repeated names keep their order).
    pub fn sign_trailer(&mut self, trailers: &[(String, String)]) -> String {
        let signature = self.advance(self.trailer_mac(trailers));
        String::from_utf8(signature.to_vec()).expect("hex digits are ASCII")
    }

    /// Checks a client's chunk signature in constant time (by `hmac`'s `verify_slice`), and
    /// makes it the running signature when it matches; on a mismatch nothing changes.
    fn verify_chunk_digest(&mut self, sha256: &[u8; 32], client: &[u8; SIGNATURE_LEN]) -> bool {
        let mac = self.chunk_mac(sha256);
        self.verify(mac, client)
    }

    /// As [`ChunkSigner::verify_chunk_digest`], for the trailer signature.
    fn verify_trailer(
        &mut self,
        trailers: &[(String, String)],
        client: &[u8; SIGNATURE_LEN],
    ) -> bool {
        let mac = self.trailer_mac(trailers);
        self.verify(mac, client)
    }

    fn chunk_mac(&self, sha256: &[u8; 32]) -> HmacSha256 {
        let mut mac = self.string_to_sign(PAYLOAD_ALGORITHM);
        mac.update(EMPTY_SHA256_HEX);
        mac.update(b"\n");
        mac.update(&hex(sha256));
        mac
    }

    fn trailer_mac(&self, trailers: &[(String, String)]) -> HmacSha256 {
        let mut sorted: Vec<(String, &str)> = trailers
            .iter()
            .map(|(name, value)| (name.to_lowercase(), value.trim()))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut canonical = Sha256::new();
        for (name, value) in &sorted {
            canonical.update(name.as_bytes());
            canonical.update(b":");
            canonical.update(value.as_bytes());
            canonical.update(b"\n");
        }
        let mut mac = self.string_to_sign(TRAILER_ALGORITHM);
        mac.update(&hex(&canonical.finalize().into()));
        mac
    }

    /// An HMAC keyed with the signing key, fed the string to sign up to the line that
    /// follows the previous signature.
    fn string_to_sign(&self, algorithm: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        for part in [
            algorithm,
            self.date_time.as_bytes(),
            self.scope.as_bytes(),
            &self.running,
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac
    }

    fn advance(&mut self, mac: HmacSha256) -> [u8; SIGNATURE_LEN] {
        self.running = hex(&mac.finalize().into_bytes().into());
        self.running
    }

    fn verify(&mut self, mac: HmacSha256, client: &[u8; SIGNATURE_LEN]) -> bool {
        let Some(raw) = unhex(client) else {
            return false;
        };
        if mac.verify_slice(&raw).is_err() {
            return false;
        }
        self.running = *client;
        true
    }
}

/// Where the resigner is in the client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk header line into `line`.
    Header,
    /// Reading the chunk's data: `remaining` bytes to go.
    Data { remaining: usize },
    /// Reading the CRLF after the chunk's data; `matched` bytes of it seen.
    DataEnd { matched: usize },
    /// Reading trailer lines into `line` (the `-TRAILER` variant, after the final chunk).
    Trailers,
    /// Reading the CRLF that ends the body; `matched` bytes of it seen.
    End { matched: usize },
    /// The body is complete: any further byte is an error.
    Done,
    /// An error ended the body.
    Failed,
}

/// Sans-IO: bytes of the client's aws-chunked body in, re-signed bytes out.
///
/// Output keeps the input's order and length. What has been pushed but not yet released
/// is the chunk in progress (its header, the data so far and the CRLF), or the trailer
/// lines before the signature line, plus a partial header line: see
/// [`ChunkResigner::buffered`]. Released bytes accumulate until
/// [`ChunkResigner::take_output`], so the caller takes them after every push.
///
/// After an error every call fails with [`ChunkError::Poisoned`] and no byte comes out
/// any more, held or released: the caller must abort the upstream request rather than end
/// its body.
pub struct ChunkResigner {
    verify: Option<ChunkSigner>,
    sign: ChunkSigner,
    trailer: bool,
    max_chunk: usize,
    expected_decoded: Option<u64>,
    state: State,
    /// The header or trailer line being read, without its CRLF (a final CR may be there).
    line: Vec<u8>,
    /// Released bytes (`..ready`) followed by the held ones (`ready..`).
    out: BytesMut,
    ready: usize,
    /// Offset of the chunk signature from the start of the held bytes.
    signature_at: usize,
    /// The client's signature of the chunk in progress.
    client_signature: [u8; SIGNATURE_LEN],
    /// SHA-256 of the chunk data read so far: both signatures are computed from it.
    hasher: Sha256,
    trailers: Vec<(String, String)>,
    trailer_bytes: usize,
    decoded: u64,
    chunks: u64,
}

impl fmt::Debug for ChunkResigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkResigner")
            .field("state", &self.state)
            .field("trailer", &self.trailer)
            .field("max_chunk", &self.max_chunk)
            .field("verifying", &self.verify.is_some())
            .field("chunks", &self.chunks)
            .field("decoded", &self.decoded)
            .field("released", &self.ready)
            .field("buffered", &self.buffered())
            .finish_non_exhaustive()
    }
}

impl ChunkResigner {
    /// `verify`: the signer with the client's (placeholder) key, checking each client chunk
    /// signature (constant-time compare) — None to skip checking. `sign`: the agent's signer.
    /// `trailer`: whether the -TRAILER variant is expected. `max_chunk`: largest chunk accepted.
    ///
    /// Without `verify` the client's signatures are still checked for form (64 lowercase
    /// hex digits) but not for value; S3 then only sees the agent's signatures, so nothing
    /// ties the data to the client's key.
    pub fn new(
        verify: Option<ChunkSigner>,
        sign: ChunkSigner,
        trailer: bool,
        max_chunk: usize,
    ) -> ChunkResigner {
        ChunkResigner {
            verify,
            sign,
            trailer,
            max_chunk,
            expected_decoded: None,
            state: State::Header,
            line: Vec::new(),
            out: BytesMut::new(),
            ready: 0,
            signature_at: 0,
            client_signature: [0; SIGNATURE_LEN],
            hasher: Sha256::new(),
            trailers: Vec::new(),
            trailer_bytes: 0,
            decoded: 0,
            chunks: 0,
        }
    }

    /// Refuses a body whose chunk sizes do not add up to `len`, the request's
    /// `x-amz-decoded-content-length`: at the header of the first chunk that takes the
    /// sum past it, before reading its data, or at the final chunk when the sum falls
    /// short, before releasing that chunk. Either way the body never reaches its end
    /// upstream, so S3 never stores an object of another length than the head declared.
    pub fn expect_decoded_length(mut self, len: u64) -> ChunkResigner {
        self.expected_decoded = Some(len);
        self
    }

    /// Feeds client bytes. Output becomes available via `take_output`.
    pub fn push(&mut self, input: &[u8]) -> Result<(), ChunkError> {
        if self.state == State::Failed {
            return Err(ChunkError::Poisoned);
        }
        let mut input = input;
        while !input.is_empty() {
            if let Err(error) = self.step(&mut input) {
                self.fail();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Re-signed bytes ready to send (possibly empty).
    ///
    /// Only whole chunks (and the whole trailer section) come out; the part of the body
    /// after them stays held, see [`ChunkResigner::buffered`].
    pub fn take_output(&mut self) -> Bytes {
        let ready = std::mem::take(&mut self.ready);
        self.out.split_to(ready).freeze()
    }

    /// Called at the end of the client's body: Ok only if the final chunk (and trailer) was complete.
    pub fn finish(&mut self) -> Result<(), ChunkError> {
        let within = match self.state {
            State::Done => return Ok(()),
            State::Failed => return Err(ChunkError::Poisoned),
            State::Header => "in the header of chunk",
            State::Data { .. } => "in the data of chunk",
            State::DataEnd { .. } => "in the CRLF after the data of chunk",
            State::Trailers => "in the trailer section after chunk",
            State::End { .. } => "before the CRLF that ends the body, after chunk",
        };
        let chunk = match self.state {
            State::Header | State::Data { .. } | State::DataEnd { .. } => self.chunks + 1,
            _ => self.chunks,
        };
        self.fail();
        Err(ChunkError::Truncated { chunk, within })
    }

    /// Decoded payload bytes seen so far (for x-amz-decoded-content-length checks and the journal).
    ///
    /// Counts the data of the chunk in progress too, held back or not.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// Number of chunks re-signed.
    ///
    /// The final empty chunk counts: the doc's 66560-byte example has 3.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The trailer headers read so far, as the client sent them (name and value, not
    /// trimmed). They have passed the client's trailer signature only once the body is
    /// complete ([`ChunkResigner::finish`] is Ok). This module does not compare them with
    /// the head's `x-amz-trailer`: the caller does, and may journal the checksum.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Bytes pushed but not yet released: at most [`MAX_LINE`] + 1 while a chunk header
    /// line is read, `max_chunk` + 101 (header, data and CRLF) once it is, and
    /// [`MAX_TRAILER_SECTION`] + [`MAX_LINE`] + 1 in the trailer section. Released bytes
    /// waiting for [`ChunkResigner::take_output`] are not counted.
    pub fn buffered(&self) -> usize {
        self.out.len() - self.ready + self.line.len()
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.out = BytesMut::new();
        self.ready = 0;
        self.line = Vec::new();
    }

    /// Consumes a part of `input`, at least one byte.
    fn step(&mut self, input: &mut &[u8]) -> Result<(), ChunkError> {
        match self.state {
            State::Header => {
                let chunk = self.chunks + 1;
                if read_line(&mut self.line, input)
                    .map_err(|what| ChunkError::Malformed { chunk, what })?
                {
                    self.chunk_header()?;
                }
            }
            State::Data { remaining } => {
                let (data, rest) = input.split_at(remaining.min(input.len()));
                self.out.extend_from_slice(data);
                self.hasher.update(data);
                self.decoded += data.len() as u64;
                let remaining = remaining - data.len();
                *input = rest;
                self.state = if remaining == 0 {
                    State::DataEnd { matched: 0 }
                } else {
                    State::Data { remaining }
                };
            }
            State::DataEnd { matched } => {
                let matched = self
                    .read_crlf(input, matched)
                    .ok_or(ChunkError::Malformed {
                        chunk: self.chunks + 1,
                        what: "chunk data not followed by CRLF (data longer than its size?)",
                    })?;
                if matched == 2 {
                    self.complete_chunk()?;
                    self.state = State::Header;
                } else {
                    self.state = State::DataEnd { matched };
                }
            }
            State::Trailers => {
                if read_line(&mut self.line, input).map_err(ChunkError::MalformedTrailer)? {
                    self.trailer_line()?;
                }
            }
            State::End { matched } => {
                let matched = self.read_crlf(input, matched).ok_or(if self.trailer {
                    ChunkError::MalformedTrailer("trailer section not ended by an empty line")
                } else {
                    ChunkError::Malformed {
                        chunk: self.chunks,
                        what: "final chunk not followed by CRLF",
                    }
                })?;
                if matched == 2 {
                    self.ready = self.out.len();
                    self.state = State::Done;
                } else {
                    self.state = State::End { matched };
                }
            }
            State::Done => return Err(ChunkError::DataAfterFinal),
            State::Failed => return Err(ChunkError::Poisoned),
        }
        Ok(())
    }

    /// Reads what `input` has of the rest of a CRLF of which `matched` bytes were seen,
    /// into the held bytes, and returns how much of it is now seen; `None` if a byte
    /// differs.
    fn read_crlf(&mut self, input: &mut &[u8], mut matched: usize) -> Option<usize> {
        while matched < 2 {
            let Some((&byte, rest)) = input.split_first() else {
                break;
            };
            if byte != b"\r\n"[matched] {
                return None;
            }
            self.out.extend_from_slice(&[byte]);
            *input = rest;
            matched += 1;
        }
        Some(matched)
    }

    /// A chunk header line is complete in `line`: checks it, holds it with room for the
    /// new signature, and starts the chunk's data (or completes the final chunk).
    fn chunk_header(&mut self) -> Result<(), ChunkError> {
        let chunk = self.chunks + 1;
        let header =
            parse_chunk_header(&self.line).map_err(|what| ChunkError::Malformed { chunk, what })?;
        if header.size > self.max_chunk as u64 {
            return Err(ChunkError::ChunkTooLarge {
                chunk,
                size: header.size,
                max: self.max_chunk,
            });
        }
        if let Some(declared) = self.expected_decoded {
            // `decoded` is the sum of the previous chunks' sizes.
            let actual = self.decoded.saturating_add(header.size);
            if actual > declared || (header.size == 0 && actual != declared) {
                return Err(ChunkError::DecodedLength { declared, actual });
            }
        }
        let size = usize::try_from(header.size).expect("bounded by max_chunk");
        self.signature_at = header.digits + 1 + CHUNK_SIGNATURE.len();
        self.client_signature = header.signature;
        // The whole chunk is held: one allocation for it rather than growth as it comes.
        self.out.reserve(self.line.len() + 2 + size + 2);
        self.out.extend_from_slice(&self.line);
        self.out.extend_from_slice(b"\r\n");
        self.line.clear();
        if size > 0 {
            self.state = State::Data { remaining: size };
        } else {
            // The final chunk: no data, and in the -TRAILER variant no CRLF before the
            // trailer lines, so it is complete with its header.
            self.complete_chunk()?;
            self.state = if self.trailer {
                State::Trailers
            } else {
                State::End { matched: 0 }
            };
        }
        Ok(())
    }

    /// The chunk in progress is all held: checks the client's signature, writes the
    /// agent's in its place and releases the chunk.
    fn complete_chunk(&mut self) -> Result<(), ChunkError> {
        let sha256: [u8; 32] = self.hasher.finalize_reset().into();
        if let Some(verify) = self.verify.as_mut() {
            if !verify.verify_chunk_digest(&sha256, &self.client_signature) {
                return Err(ChunkError::SignatureMismatch {
                    chunk: self.chunks + 1,
                });
            }
        }
        let signature = self.sign.advance(self.sign.chunk_mac(&sha256));
        let at = self.ready + self.signature_at;
        self.out[at..at + SIGNATURE_LEN].copy_from_slice(&signature);
        self.ready = self.out.len();
        self.chunks += 1;
        Ok(())
    }

    /// A trailer line is complete in `line`: holds a trailer header, or checks and
    /// re-signs the signature line and releases the section.
    fn trailer_line(&mut self) -> Result<(), ChunkError> {
        if self.line.is_empty() {
            // An empty section (no trailer at all, as the AWS SDK for Rust writes when it
            // has none) has nothing to sign; trailers without their signature are refused.
            if !self.trailers.is_empty() {
                return Err(ChunkError::MalformedTrailer(
                    "trailer section without x-amz-trailer-signature",
                ));
            }
            self.out.extend_from_slice(b"\r\n");
            self.ready = self.out.len();
            self.state = State::Done;
            return Ok(());
        }
        self.trailer_bytes += self.line.len() + 2;
        if self.trailer_bytes > MAX_TRAILER_SECTION {
            return Err(ChunkError::TrailerTooLarge);
        }
        let colon = memchr::memchr(b':', &self.line)
            .ok_or(ChunkError::MalformedTrailer("trailer line without ':'"))?;
        let (name, value) = (&self.line[..colon], &self.line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ChunkError::MalformedTrailer(
                "trailer name is not an HTTP token",
            ));
        }
        if name.eq_ignore_ascii_case(TRAILER_SIGNATURE) {
            let client = parse_signature(value).ok_or(ChunkError::MalformedTrailer(
                "x-amz-trailer-signature is not 64 lowercase hex digits",
            ))?;
            if let Some(verify) = self.verify.as_mut() {
                if !verify.verify_trailer(&self.trailers, &client) {
                    return Err(ChunkError::TrailerSignatureMismatch);
                }
            }
            let signature = self.sign.advance(self.sign.trailer_mac(&self.trailers));
            self.out.extend_from_slice(name);
            self.out.extend_from_slice(b":");
            self.out.extend_from_slice(&signature);
            self.out.extend_from_slice(b"\r\n");
            self.ready = self.out.len();
            // The signature line is the last: the empty line must follow.
            self.state = State::End { matched: 0 };
        } else {
            if !value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(ChunkError::MalformedTrailer(
                    "trailer value with a byte other than visible ASCII, space or tab",
                ));
            }
            if self.trailers.len() == MAX_TRAILERS {
                return Err(ChunkError::TooManyTrailers);
            }
            // Two lines of one name have no agreed canonical form (one line each, or
            // values joined by commas, depending on the SDK).
            if self
                .trailers
                .iter()
                .any(|(seen, _)| seen.as_bytes().eq_ignore_ascii_case(name))
            {
                return Err(ChunkError::MalformedTrailer("trailer name repeated"));
            }
            let ascii = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("checked ASCII");
            self.trailers.push((ascii(name), ascii(value)));
            self.out.extend_from_slice(&self.line);
            self.out.extend_from_slice(b"\r\n");
        }
        self.line.clear();
        Ok(())
    }
}

/// What a chunk header line says.
struct ChunkHeader {
    size: u64,
    /// Number of hex digits of the size, as sent.
    digits: usize,
    signature: [u8; SIGNATURE_LEN],
}

/// Parses `<hex size>;chunk-signature=<64 lowercase hex>` (the line without its CRLF).
fn parse_chunk_header(line: &[u8]) -> Result<ChunkHeader, &'static str> {
    let Some(semicolon) = memchr::memchr(b';', line) else {
        return Err(if line.is_empty() {
            "chunk size missing"
        } else if line.iter().all(u8::is_ascii_hexdigit) {
            "chunk-signature missing"
        } else {
            "chunk size is not hex"
        });
    };
    let digits = &line[..semicolon];
    if digits.is_empty() {
        return Err("chunk size missing");
    }
    if digits.len() > MAX_SIZE_DIGITS {
        return Err("chunk size longer than 16 hex digits");
    }
    let mut size: u64 = 0;
    for &digit in digits {
        // `to_digit` takes 0-9, a-f and A-F only: no sign, no blank.
        let value = char::from(digit)
            .to_digit(16)
            .ok_or("chunk size is not hex")?;
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(u64::from(value)))
            .ok_or("chunk size overflows")?;
    }
    let extension = &line[semicolon + 1..];
    let Some(value) = extension.strip_prefix(CHUNK_SIGNATURE) else {
        return Err("chunk extension other than chunk-signature");
    };
    if memchr::memchr(b';', value).is_some() {
        return Err("chunk extension other than chunk-signature");
    }
    let signature =
        parse_signature(value).ok_or("chunk-signature is not 64 lowercase hex digits")?;
    Ok(ChunkHeader {
        size,
        digits: digits.len(),
        signature,
    })
}

/// Accumulates `input` into `line` up to a CRLF, which it consumes and leaves out.
/// Returns whether the line is complete. Refuses a line longer than [`MAX_LINE`] as soon
/// as it is, a bare LF, and a CR anywhere but before the LF.
fn read_line(line: &mut Vec<u8>, input: &mut &[u8]) -> Result<bool, &'static str> {
    const TOO_LONG: &str = "line longer than 1024 bytes";
    // One more than MAX_LINE: the CR of the CRLF lands in `line` when the LF comes later.
    let room = MAX_LINE + 1 - line.len();
    match memchr::memchr(b'\n', input) {
        Some(lf) => {
            if lf > room {
                return Err(TOO_LONG);
            }
            line.extend_from_slice(&input[..lf]);
            *input = &input[lf + 1..];
            if line.pop() != Some(b'\r') {
                return Err("line ended by LF without CR");
            }
            if memchr::memchr(b'\r', line).is_some() {
                return Err("CR without LF in a line");
            }
            Ok(true)
        }
        None => {
            if input.len() > room {
                return Err(TOO_LONG);
            }
            line.extend_from_slice(input);
            *input = &[];
            Ok(false)
        }
    }
}

fn parse_signature(value: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
    let signature: [u8; SIGNATURE_LEN] = value.try_into().ok()?;
    signature
        .iter()
        .all(|&b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(signature)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_date_time(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
}

fn is_scope_part(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
    let mut out = [0; SIGNATURE_LEN];
    crate::hex::encode_to_slice(bytes, &mut out);
    out
}

fn unhex(digits: &[u8; SIGNATURE_LEN]) -> Option<[u8; 32]> {
    crate::hex::decode(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;
    use aws_smithy_runtime_api::http::Headers;
    use std::time::{Duration, SystemTime};

    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DOC_TIME: &str = "20130524T000000Z";
    const KEY_A: &str = "placeholder/key/the+client+signed+with";
    const KEY_B: &str = "agent/real/secret+key";
    const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";

    fn signer(secret: &str, seed: &str) -> ChunkSigner {
        ChunkSigner::new(secret, DOC_TIME, "us-east-1", "s3", seed).unwrap()
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    /// A client's body: the chunks of `sizes` (which must add up to `data`), the final
    /// chunk, and the trailers when given, each signed by `signer`.
    fn encode(
        signer: &mut ChunkSigner,
        data: &[u8],
        sizes: &[usize],
        trailers: Option<&[(String, String)]>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        let mut at = 0;
        for &size in sizes.iter().chain([0].iter()) {
            let chunk = &data[at..at + size];
            at += size;
            let signature = signer.sign_chunk(chunk);
            body.extend_from_slice(format!("{size:x};chunk-signature={signature}\r\n").as_bytes());
            body.extend_from_slice(chunk);
            if size > 0 {
                body.extend_from_slice(b"\r\n");
            }
        }
        assert_eq!(at, data.len());
        if let Some(trailers) = trailers {
            for (name, value) in trailers {
                body.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
            }
            let signature = signer.sign_trailer(trailers);
            body.extend_from_slice(format!("x-amz-trailer-signature:{signature}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    /// Pushes `body` in the pieces `splits` gives, taking the output after each push.
    fn resign(
        resigner: &mut ChunkResigner,
        body: &[u8],
        mut splits: impl FnMut() -> usize,
    ) -> Result<Vec<u8>, ChunkError> {
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(splits().clamp(1, rest.len()));
            resigner.push(piece)?;
            out.extend_from_slice(&resigner.take_output());
            rest = tail;
        }
        resigner.finish()?;
        out.extend_from_slice(&resigner.take_output());
        Ok(out)
    }

    fn whole() -> impl FnMut() -> usize {
        || usize::MAX
    }

    /// xorshift64*: a fixed-seed generator, so that failures repeat.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn resigner_ab(trailer: bool, max_chunk: usize) -> ChunkResigner {
        ChunkResigner::new(
            Some(signer(KEY_A, SEED)),
            signer(KEY_B, SEED),
            trailer,
            max_chunk,
        )
    }

    #[test]
    fn reproduces_the_documented_chunk_signatures() {
        let mut s = signer(DOC_SECRET, SEED);
        assert_eq!(
            s.sign_chunk(&[b'a'; 65536]),
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        assert_eq!(
            s.sign_chunk(&[b'a'; 1024]),
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        assert_eq!(
            s.sign_chunk(&[]),
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
        assert_eq!(
            s.signature(),
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    /// The documented body: Content-Length 66824, and re-signing it with the same key
    /// (checking the client's signatures with it too) gives it back unchanged.
    #[test]
    fn documented_body_resigns_to_itself() {
        let data = vec![b'a'; 66560];
        let body = encode(&mut signer(DOC_SECRET, SEED), &data, &[65536, 1024], None);
        assert_eq!(body.len(), 66824);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(
            "10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
        ));
        assert!(text.ends_with(
            "\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
        ));
        let mut resigner = ChunkResigner::new(
            Some(signer(DOC_SECRET, SEED)),
            signer(DOC_SECRET, SEED),
            false,
            65536,
        )
        .expect_decoded_length(66560);
        assert_eq!(resign(&mut resigner, &body, whole()).unwrap(), body);
        assert_eq!(resigner.chunks(), 3);
        assert_eq!(resigner.decoded_bytes(), 66560);
    }

    /// The trailer document's example: seed, chunk and trailer signatures, and the body
    /// (66946 bytes with its trailer) through the resigner.
    #[test]
    fn reproduces_the_documented_trailer_signatures() {
        let seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
        let mut s = signer(DOC_SECRET, seed);
        assert_eq!(
            s.sign_chunk(&[b'a'; 65536]),
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"
        );
        assert_eq!(
            s.sign_chunk(&[b'a'; 1024]),
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"
        );
        assert_eq!(
            s.sign_chunk(&[]),
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
        );
        assert_eq!(
            s.sign_trailer(&[pair("x-amz-checksum-crc32c", "sOO8/Q==")]),
            "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
        );

        let data = vec![b'a'; 66560];
        let trailers = [pair("x-amz-checksum-crc32c", "sOO8/Q==")];
        let body = encode(
            &mut signer(DOC_SECRET, seed),
            &data,
            &[65536, 1024],
            Some(&trailers),
        );
        assert_eq!(body.len(), 66946);
        assert!(String::from_utf8_lossy(&body).ends_with(
            "\r\n0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n\
             x-amz-checksum-crc32c:sOO8/Q==\r\n\
             x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n"
        ));
        let mut resigner = ChunkResigner::new(
            Some(signer(DOC_SECRET, seed)),
            signer(DOC_SECRET, seed),
            true,
            65536,
        );
        assert_eq!(resign(&mut resigner, &body, whole()).unwrap(), body);
        assert_eq!(resigner.trailers(), &trailers);
    }

    /// Days since 1970-01-01 to (year, month, day), for the random dates below.
    fn civil(days: u64) -> (u64, u64, u64) {
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        (year, month, day)
    }

    #[test]
    fn matches_aws_sigv4_on_random_input() {
        let mut rng = Rng(0x5eed_0001);
        for round in 0..20 {
            let secs = 1_000_000_000 + rng.below(2_000_000_000);
            let (year, month, day) = civil(secs / 86400);
            let in_day = secs % 86400;
            let date_time = format!(
                "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
                in_day / 3600,
                in_day / 60 % 60,
                in_day % 60
            );
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let secret = format!("secret/{}", rng.next());
            let region = ["us-east-1", "eu-west-3", "ap-southeast-2"][round % 3];
            let service = ["s3", "s3-outposts"][round % 2];
            let digest: [u8; 32] = Sha256::digest(rng.bytes(8)).into();
            let seed = String::from_utf8(hex(&digest).to_vec()).unwrap();

            let identity: Identity = Credentials::new("AKID", &secret, None, None, "test").into();
            let params = v4::SigningParams::<()>::builder()
                .identity(&identity)
                .region(region)
                .name(service)
                .time(time)
                .settings(())
                .build()
                .unwrap();

            let mut ours = ChunkSigner::new(&secret, &date_time, region, service, &seed).unwrap();
            let mut running = seed.clone();
            for _ in 0..3 {
                let len = [0, 1, 63, 64, 65, 1000, 8192][rng.below(7) as usize];
                let data = rng.bytes(len);
                let theirs = v4::sign_chunk(&Bytes::from(data.clone()), &running, &params)
                    .unwrap()
                    .signature()
                    .to_owned();
                assert_eq!(ours.sign_chunk(&data), theirs, "{date_time} chunk of {len}");
                running = theirs;
            }
            // Mixed-case names, untrimmed values, out of order: canonicalised the same way.
            let trailers = vec![
                pair("X-Amz-Checksum-SHA256", &format!(" {:x} ", rng.next())),
                pair("x-amz-checksum-crc32", &format!("{:x}", rng.next())),
                pair("x-amz-meta-b", "\tvalue with spaces\t"),
            ];
            let mut headers = Headers::new();
            for (name, value) in &trailers {
                headers.append(name.clone(), value.clone());
            }
            let theirs = v4::sign_trailer(&headers, &running, &params)
                .unwrap()
                .signature()
                .to_owned();
            assert_eq!(ours.sign_trailer(&trailers), theirs, "{date_time} trailer");
        }
    }

    #[test]
    fn signer_refuses_bad_parameters() {
        let bad = |date_time: &str, region: &str, service: &str, seed: &str| {
            matches!(
                ChunkSigner::new("k", date_time, region, service, seed),
                Err(ChunkError::InvalidParameter(_))
            )
        };
        assert!(bad("20130524", "us-east-1", "s3", SEED));
        assert!(bad("20130524T000000", "us-east-1", "s3", SEED));
        assert!(bad("2013-05-24T00:00", "us-east-1", "s3", SEED));
        assert!(bad(DOC_TIME, "", "s3", SEED));
        assert!(bad(DOC_TIME, "us/east", "s3", SEED));
        assert!(bad(DOC_TIME, "us-east-1", "s3\n", SEED));
        assert!(bad(DOC_TIME, "us-east-1", "s3", &SEED.to_uppercase()));
        assert!(bad(DOC_TIME, "us-east-1", "s3", &SEED[1..]));
        assert!(!bad(DOC_TIME, "us-east-1", "s3", SEED));
        // The key stays out of Debug.
        let debug = format!("{:?}", signer(DOC_SECRET, SEED));
        assert!(debug.contains(SEED) && !debug.contains("key"));
    }

    /// A body signed with key A, re-signed with key B, is the body signed with key B.
    #[test]
    fn resigns_from_key_a_to_key_b() {
        let mut rng = Rng(0x5eed_0002);
        let data = rng.bytes(10_000);
        let sizes = [4096, 4096, 1808];
        let from_a = encode(&mut signer(KEY_A, SEED), &data, &sizes, None);
        let from_b = encode(&mut signer(KEY_B, SEED), &data, &sizes, None);
        assert_ne!(from_a, from_b);
        let mut resigner = resigner_ab(false, 4096).expect_decoded_length(10_000);
        let out = resign(&mut resigner, &from_a, whole()).unwrap();
        assert_eq!(out.len(), from_a.len());
        assert_eq!(out, from_b);
        assert_eq!(resigner.chunks(), 4);
        assert_eq!(resigner.decoded_bytes(), 10_000);
    }

    /// Uppercase size digits (as the AWS SDK for Rust writes them) and leading zeros are
    /// kept as sent, so the length stays the same.
    #[test]
    fn keeps_size_digits_as_sent() {
        let body_for = |key: &str| {
            let mut s = signer(key, SEED);
            let data = [7u8; 0x1ab];
            let mut body =
                format!("000001AB;chunk-signature={}\r\n", s.sign_chunk(&data)).into_bytes();
            body.extend_from_slice(&data);
            body.extend_from_slice(
                format!(
                    "\r\n0000000000000000;chunk-signature={}\r\n\r\n",
                    s.sign_chunk(&[])
                )
                .as_bytes(),
            );
            body
        };
        let out = resign(&mut resigner_ab(false, 1024), &body_for(KEY_A), whole()).unwrap();
        assert_eq!(out, body_for(KEY_B));
    }

    #[test]
    fn any_split_gives_the_same_output() {
        let mut rng = Rng(0x5eed_0003);
        let data = rng.bytes(3000);
        let sizes = [1000, 1, 999, 1000];
        let trailers = [
            pair("x-amz-checksum-crc32", "AAAAAA=="),
            pair("x-amz-meta-note", " spaced "),
        ];
        for trailer in [false, true] {
            let trailers = trailer.then_some(&trailers[..]);
            let from_a = encode(&mut signer(KEY_A, SEED), &data, &sizes, trailers);
            let from_b = encode(&mut signer(KEY_B, SEED), &data, &sizes, trailers);
            let byte_by_byte = resign(&mut resigner_ab(trailer, 1000), &from_a, || 1).unwrap();
            assert_eq!(byte_by_byte, from_b);
            for round in 0..50 {
                let max = [2, 7, 64, 1500][round % 4];
                let out = resign(&mut resigner_ab(trailer, 1000), &from_a, || {
                    rng.below(max) as usize + 1
                })
                .unwrap();
                assert_eq!(out, from_b, "round {round}");
            }
        }
    }

    /// Changed data or a changed signature fails the chunk it is in, and no byte of that
    /// chunk comes out.
    #[test]
    fn tampering_fails_the_chunk_it_touches() {
        let data = Rng(0x5eed_0004).bytes(3000);
        let sizes = [1000, 1000, 1000];
        let body = encode(&mut signer(KEY_A, SEED), &data, &sizes, None);
        let header = |n: usize| format!("3e8;chunk-signature={}\r\n", "x".repeat(64)).len() * n;
        let chunk_start = |n: usize| header(n) + 1002 * n; // chunk n, from 0
        for chunk in 0..4 {
            // A data byte (the final chunk has none: its signature instead).
            let mut changed = body.clone();
            if chunk < 3 {
                changed[chunk_start(chunk) + header(1) + 500] ^= 1;
            } else {
                let at = chunk_start(3) + 2 + CHUNK_SIGNATURE.len() + 10;
                changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
            }
            // A signature digit.
            let mut resigned = body.clone();
            let size_field = if chunk < 3 { "3e8;".len() } else { "0;".len() };
            let at = chunk_start(chunk) + size_field + CHUNK_SIGNATURE.len() + 63;
            resigned[at] = if resigned[at] == b'0' { b'1' } else { b'0' };
            for tampered in [changed, resigned] {
                let mut resigner = resigner_ab(false, 1000);
                let error = resigner.push(&tampered).unwrap_err();
                assert_eq!(
                    error,
                    ChunkError::SignatureMismatch {
                        chunk: chunk as u64 + 1
                    }
                );
                assert!(resigner.take_output().is_empty());
                assert_eq!(resigner.push(b"x"), Err(ChunkError::Poisoned));
                assert_eq!(resigner.finish(), Err(ChunkError::Poisoned));

                // Pushed chunk by chunk, the chunks before it came out.
                let mut resigner = resigner_ab(false, 1000);
                let mut out = Vec::new();
                let mut error = None;
                for piece in tampered.chunks(1002 + header(1)) {
                    if let Err(e) = resigner.push(piece) {
                        error = Some(e);
                        break;
                    }
                    out.extend_from_slice(&resigner.take_output());
                }
                assert!(error.is_some());
                assert_eq!(out.len(), chunk_start(chunk));
            }
        }
    }

    /// Without a verifying signer, the client's signatures are not checked (but re-signed).
    #[test]
    fn without_verify_signatures_are_only_checked_for_form() {
        let data = [1u8; 100];
        let mut body = encode(&mut signer(KEY_A, SEED), &data, &[100], None);
        body[30] = if body[30] == b'0' { b'1' } else { b'0' };
        let expected = encode(&mut signer(KEY_B, SEED), &data, &[100], None);
        let mut resigner = ChunkResigner::new(None, signer(KEY_B, SEED), false, 100);
        assert_eq!(resign(&mut resigner, &body, whole()).unwrap(), expected);
    }

    #[test]
    fn every_truncation_fails_at_finish() {
        let data = Rng(0x5eed_0005).bytes(300);
        let trailers = [pair("x-amz-checksum-crc32", "AAAAAA==")];
        for trailer in [false, true] {
            let body = encode(
                &mut signer(KEY_A, SEED),
                &data,
                &[100, 200],
                trailer.then_some(&trailers[..]),
            );
            for len in 0..body.len() {
                let mut resigner = resigner_ab(trailer, 200);
                resigner.push(&body[..len]).unwrap();
                let error = resigner.finish().unwrap_err();
                assert!(
                    matches!(error, ChunkError::Truncated { .. }),
                    "{len}: {error}"
                );
                assert!(resigner.take_output().is_empty());
            }
            let mut resigner = resigner_ab(trailer, 200);
            resigner.push(&body).unwrap();
            resigner.finish().unwrap();
        }
        let mut resigner = resigner_ab(false, 200);
        resigner.push(b"64;chunk-signature=").unwrap();
        assert_eq!(
            resigner.finish(),
            Err(ChunkError::Truncated {
                chunk: 1,
                within: "in the header of chunk"
            })
        );
    }

    #[test]
    fn refuses_oversize_chunks_at_their_header() {
        let sig = "0".repeat(64);
        let mut resigner = resigner_ab(false, 1000);
        assert_eq!(
            resigner.push(format!("3e9;chunk-signature={sig}\r\n").as_bytes()),
            Err(ChunkError::ChunkTooLarge {
                chunk: 1,
                size: 1001,
                max: 1000
            })
        );
        // 16 digits at their largest: no overflow, just too large.
        let mut resigner = resigner_ab(false, 1 << 20);
        assert_eq!(
            resigner.push(format!("ffffffffffffffff;chunk-signature={sig}\r\n").as_bytes()),
            Err(ChunkError::ChunkTooLarge {
                chunk: 1,
                size: u64::MAX,
                max: 1 << 20
            })
        );
        // A chunk exactly at the limit is fine.
        let data = [9u8; 1000];
        let body = encode(&mut signer(KEY_A, SEED), &data, &[1000], None);
        resign(&mut resigner_ab(false, 1000), &body, whole()).unwrap();
    }

    #[test]
    fn refuses_malformed_chunk_headers() {
        let sig = "0123456789abcdef".repeat(4);
        let cases: Vec<(String, &str)> = vec![
            (
                format!("+64;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (
                format!("-64;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (
                format!(" 64;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (
                format!("64 ;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (
                format!("0x64;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (
                format!("g;chunk-signature={sig}\r\n"),
                "chunk size is not hex",
            ),
            (format!(";chunk-signature={sig}\r\n"), "chunk size missing"),
            (
                format!("00000000000000064;chunk-signature={sig}\r\n"),
                "chunk size longer than 16 hex digits",
            ),
            ("64\r\n".to_owned(), "chunk-signature missing"),
            ("\r\n".to_owned(), "chunk size missing"),
            (
                format!("64;chunk-signature={}\r\n", sig.to_uppercase()),
                "chunk-signature is not 64 lowercase hex digits",
            ),
            (
                format!("64;chunk-signature={}\r\n", &sig[1..]),
                "chunk-signature is not 64 lowercase hex digits",
            ),
            (
                format!("64;chunk-signature={sig}0\r\n"),
                "chunk-signature is not 64 lowercase hex digits",
            ),
            (
                format!("64;chunk-signature= {}\r\n", &sig[1..]),
                "chunk-signature is not 64 lowercase hex digits",
            ),
            (
                format!("64;chunk-signature={sig};x=y\r\n"),
                "chunk extension other than chunk-signature",
            ),
            (
                format!("64;x=y;chunk-signature={sig}\r\n"),
                "chunk extension other than chunk-signature",
            ),
            (
                format!("64;Chunk-Signature={sig}\r\n"),
                "chunk extension other than chunk-signature",
            ),
            (
                format!("64; chunk-signature={sig}\r\n"),
                "chunk extension other than chunk-signature",
            ),
            (
                format!("64;chunk-signature={sig}\n"),
                "line ended by LF without CR",
            ),
            (
                format!("64;chunk-signature={sig}\r\r\n"),
                "CR without LF in a line",
            ),
            (
                format!("64\r;chunk-signature={sig}\r\n"),
                "CR without LF in a line",
            ),
        ];
        for (input, what) in cases {
            let mut resigner = resigner_ab(false, 1000);
            assert_eq!(
                resigner.push(input.as_bytes()),
                Err(ChunkError::Malformed { chunk: 1, what }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_line_that_never_ends_is_refused_at_the_limit() {
        let mut resigner = resigner_ab(false, 1000);
        resigner.push(&[b'0'; MAX_LINE]).unwrap();
        resigner.push(b"\r").unwrap();
        assert_eq!(resigner.buffered(), MAX_LINE + 1);
        assert!(matches!(
            resigner.push(b"0"),
            Err(ChunkError::Malformed {
                chunk: 1,
                what: "line longer than 1024 bytes"
            })
        ));
        // In one push, before it is copied.
        let mut resigner = resigner_ab(false, 1000);
        assert!(resigner.push(&vec![b'a'; 1 << 20]).is_err());
        assert_eq!(resigner.buffered(), 0);
        let mut long = vec![b'a'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\n");
        assert!(resigner_ab(false, 1000).push(&long).is_err());
    }

    #[test]
    fn refuses_bad_data_framing_and_data_after_the_end() {
        let data = [5u8; 100];
        let body = encode(&mut signer(KEY_A, SEED), &data, &[100], None);
        let first_end = body.len() - (2 + CHUNK_SIGNATURE.len() + 64 + 2 + 2) - 2;
        // Data longer than its size: the byte after the data is not CR.
        let mut longer = body[..first_end].to_vec();
        longer.push(b'x');
        assert!(matches!(
            resigner_ab(false, 100).push(&longer),
            Err(ChunkError::Malformed { chunk: 1, .. })
        ));
        // The final chunk without its CRLF, then something else.
        let mut last = body[..body.len() - 2].to_vec();
        last.extend_from_slice(b"x-amz-checksum-crc32:AAAAAA==\r\n");
        assert!(matches!(
            resigner_ab(false, 100).push(&last),
            Err(ChunkError::Malformed {
                chunk: 2,
                what: "final chunk not followed by CRLF"
            })
        ));
        // Anything after the end.
        let mut resigner = resigner_ab(false, 100);
        resigner.push(&body).unwrap();
        assert_eq!(resigner.push(b"\r\n"), Err(ChunkError::DataAfterFinal));
        assert!(resigner.take_output().is_empty());
        let mut after = body.clone();
        after.extend_from_slice(b"0");
        assert_eq!(
            resign(&mut resigner_ab(false, 100), &after, || 1),
            Err(ChunkError::DataAfterFinal)
        );
    }

    #[test]
    fn checks_the_decoded_length() {
        let data = [3u8; 300];
        let body = encode(&mut signer(KEY_A, SEED), &data, &[100, 200], None);
        let run = |len| {
            resign(
                &mut resigner_ab(false, 200).expect_decoded_length(len),
                &body,
                || 1,
            )
        };
        assert!(run(300).is_ok());
        assert_eq!(
            run(299),
            Err(ChunkError::DecodedLength {
                declared: 299,
                actual: 300
            })
        );
        assert_eq!(
            run(301),
            Err(ChunkError::DecodedLength {
                declared: 301,
                actual: 300
            })
        );
        // Refused at the header of the chunk that goes past, before its data came.
        let mut resigner = resigner_ab(false, 200).expect_decoded_length(150);
        assert_eq!(
            resigner.push(&body[..body.len() - 250]),
            Err(ChunkError::DecodedLength {
                declared: 150,
                actual: 300
            })
        );
    }

    #[test]
    fn trailer_variant_end_to_end() {
        let mut rng = Rng(0x5eed_0006);
        let data = rng.bytes(5000);
        let sizes = [2048, 2048, 904];
        let trailers = [
            pair("x-amz-checksum-crc32c", "sOO8/Q=="),
            pair("X-Amz-Meta-Extra", "one two"),
        ];
        let from_a = encode(&mut signer(KEY_A, SEED), &data, &sizes, Some(&trailers));
        let from_b = encode(&mut signer(KEY_B, SEED), &data, &sizes, Some(&trailers));
        let mut resigner = resigner_ab(true, 2048).expect_decoded_length(5000);
        let out = resign(&mut resigner, &from_a, || 333).unwrap();
        assert_eq!(out.len(), from_a.len());
        assert_eq!(out, from_b);
        assert_eq!(resigner.trailers(), &trailers);
        assert_eq!(resigner.chunks(), 4);

        // A changed trailer value, or signature, is refused, and the trailer stays held.
        let tail = from_a.len() - 2 - 2 - 64 - TRAILER_SIGNATURE.len() - 1 - 2;
        for at in [tail - 5, from_a.len() - 10] {
            let mut tampered = from_a.clone();
            tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
            let mut resigner = resigner_ab(true, 2048);
            let mut out = Vec::new();
            let error = tampered
                .chunks(100)
                .try_for_each(|piece| {
                    resigner.push(piece)?;
                    out.extend_from_slice(&resigner.take_output());
                    Ok::<_, ChunkError>(())
                })
                .unwrap_err();
            assert_eq!(error, ChunkError::TrailerSignatureMismatch);
            let first_trailer = from_a.len()
                - 2
                - 2
                - 64
                - TRAILER_SIGNATURE.len()
                - 1
                - trailers
                    .iter()
                    .map(|(n, v)| n.len() + 1 + v.len() + 2)
                    .sum::<usize>();
            assert_eq!(out.len(), first_trailer);
        }

        // The trailer variant without any trailer (no signature either) is complete.
        let bare = encode(&mut signer(KEY_A, SEED), &data, &sizes, None);
        let bare_b = encode(&mut signer(KEY_B, SEED), &data, &sizes, None);
        let mut resigner = resigner_ab(true, 2048);
        assert_eq!(resign(&mut resigner, &bare, || 1).unwrap(), bare_b);
        // A signature with no trailer header is signed over the empty set.
        let only_sig = encode(&mut signer(KEY_A, SEED), &data, &sizes, Some(&[]));
        let only_sig_b = encode(&mut signer(KEY_B, SEED), &data, &sizes, Some(&[]));
        assert_eq!(
            resign(&mut resigner_ab(true, 2048), &only_sig, whole()).unwrap(),
            only_sig_b
        );
        // Trailers where none are expected.
        assert!(matches!(
            resign(&mut resigner_ab(false, 2048), &from_a, whole()),
            Err(ChunkError::Malformed { chunk: 4, .. })
        ));
    }

    #[test]
    fn refuses_malformed_trailers() {
        let data = [4u8; 10];
        let final_part = |lines: &str| {
            let mut s = signer(KEY_A, SEED);
            let mut body = encode(&mut s, &data, &[10], Some(&[]));
            // Drop the signature line and the end; put `lines` instead.
            body.truncate(body.len() - (TRAILER_SIGNATURE.len() + 1 + 64 + 2 + 2));
            body.extend_from_slice(lines.as_bytes());
            body
        };
        let sig = "0".repeat(64);
        let cases: Vec<(String, ChunkError)> = vec![
            (
                "x-amz-checksum-crc32:AAAAAA==\r\n\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer section without x-amz-trailer-signature"),
            ),
            (
                "x-amz-checksum-crc32 AAAAAA==\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer line without ':'"),
            ),
            (
                "x-amz-checksum crc32:AAAAAA==\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer name is not an HTTP token"),
            ),
            (
                " x-amz-checksum-crc32:AAAAAA==\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer name is not an HTTP token"),
            ),
            (
                ":AAAAAA==\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer name is not an HTTP token"),
            ),
            (
                "x-amz-checksum-crc32:AA\u{7f}AA==\r\n".to_owned(),
                ChunkError::MalformedTrailer(
                    "trailer value with a byte other than visible ASCII, space or tab",
                ),
            ),
            (
                "x-amz-checksum-crc32:AAÄ==\r\n".to_owned(),
                ChunkError::MalformedTrailer(
                    "trailer value with a byte other than visible ASCII, space or tab",
                ),
            ),
            (
                "x-amz-checksum-crc32:A\r\nX-AMZ-CHECKSUM-CRC32:B\r\n".to_owned(),
                ChunkError::MalformedTrailer("trailer name repeated"),
            ),
            (
                format!("x-amz-trailer-signature: {}\r\n", &sig[1..]),
                ChunkError::MalformedTrailer(
                    "x-amz-trailer-signature is not 64 lowercase hex digits",
                ),
            ),
            (
                "x-amz-checksum-crc32:A\n".to_owned(),
                ChunkError::MalformedTrailer("line ended by LF without CR"),
            ),
            (
                (0..=MAX_TRAILERS)
                    .map(|i| format!("x-amz-meta-{i}:v\r\n"))
                    .collect(),
                ChunkError::TooManyTrailers,
            ),
            (
                (0..MAX_TRAILERS)
                    .map(|i| format!("x-amz-meta-{i}:{}\r\n", "v".repeat(1010)))
                    .collect(),
                ChunkError::TrailerTooLarge,
            ),
        ];
        for (lines, expected) in cases {
            let body = final_part(&lines);
            let mut resigner = ChunkResigner::new(None, signer(KEY_B, SEED), true, 10);
            assert_eq!(resigner.push(&body), Err(expected), "{lines:?}");
        }
        // The signature line is the last: anything but the empty line after it fails.
        let mut s = signer(KEY_A, SEED);
        let mut body = encode(&mut s, &data, &[10], Some(&[pair("x-amz-meta-a", "1")]));
        body.truncate(body.len() - 2);
        body.extend_from_slice(b"x-amz-meta-b:2\r\n\r\n");
        assert_eq!(
            resigner_ab(true, 10).push(&body),
            Err(ChunkError::MalformedTrailer(
                "trailer section not ended by an empty line"
            ))
        );
    }

    /// What is held never exceeds max_chunk plus a constant, whatever the pieces.
    #[test]
    fn buffered_bytes_stay_bounded() {
        let mut rng = Rng(0x5eed_0007);
        let data = rng.bytes(20_000);
        let trailers: Vec<_> = (0..MAX_TRAILERS)
            .map(|i| pair(&format!("x-amz-meta-{i}"), &"v".repeat(900)))
            .collect();
        let body = encode(
            &mut signer(KEY_A, SEED),
            &data,
            &[4096, 4096, 4096, 4096, 3616],
            Some(&trailers),
        );
        let mut resigner = resigner_ab(true, 4096);
        let mut most = 0;
        let mut rest = &body[..];
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at((rng.below(700) as usize + 1).min(rest.len()));
            resigner.push(piece).unwrap();
            most = most.max(resigner.buffered());
            resigner.take_output();
            rest = tail;
        }
        resigner.finish().unwrap();
        assert_eq!(resigner.buffered(), 0);
        assert!(most >= 4096);
        assert!(
            most <= (4096 + 101).max(MAX_TRAILER_SECTION + MAX_LINE + 1),
            "{most}"
        );
    }
}

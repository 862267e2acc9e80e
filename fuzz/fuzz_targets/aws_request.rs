//! What the AWS proxy (`proxy::http::aws::inspect`, `sign_upstream`, the response path)
//! does with a client's request and a server's answer, on arbitrary bytes:
//! `sigv4::client_signature` and the checks after it (`check_time`, `payload_mode`,
//! `verify` over the request as the proxy builds it), `action::needs_body` and
//! `action::classify`, `error::error_code` and `error::request_id`, a
//! `chunked::ChunkResigner` fed the body in the reads the control byte chooses, and
//! `BodyMasker::mask_xml` with the masks of an AWS target.
//!
//! Input: a control byte, then a request as lines (`\n`): method, host (empty: none),
//! path, query (`?` first: present, even empty; otherwise none), headers (`name: value`)
//! up to an empty line, then the body (any bytes, to the end). Control: bits 0-4 the size
//! of the body's reads (0: whole), bit 5 the trailer variant when the request does not
//! say it (`x-amz-content-sha256`), bit 6 the agent signs with the verifying key (a
//! resigning that must give the body back unchanged), bit 7 the client's chunk
//! signatures are verified (with the key of the AWS documentation's examples, so its
//! example bodies pass).
//!
//! Properties: nothing panics or hangs; `classify` never asks for a body `needs_body`
//! said it does not need; a call names its service in its action and stays within the
//! parameter and resource bounds; the resigner holds at most what its documentation
//! says, releases nothing after an error, and a body it accepts whole comes out with the
//! same length (the identity resigning: the same bytes); a masked XML document is still
//! one the masker accepts.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use nhi_agent::config;
use nhi_agent::mask::{HashKey, MaskRule, SessionMasks};
use nhi_agent::protocol::aws::action::{self, ClassifyError};
use nhi_agent::protocol::aws::chunked::{
    ChunkError, ChunkResigner, ChunkSigner, MAX_LINE, MAX_TRAILER_SECTION,
};
use nhi_agent::protocol::aws::sigv4::{self, Location, PayloadMode, Signable};
use nhi_agent::protocol::aws::{error, AWS_SECRET_FIELDS, AWS_SECRET_FIELDS_RULE};
use nhi_agent_fuzz::reads;

/// The secret access key of the AWS documentation's examples: the client's key here.
const CLIENT_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The agent's key.
const AGENT_SECRET: &str = "nhi-agent/fuzz/agent+secret+key";
/// The parameters of the documentation's aws-chunked example, for requests whose own
/// signature cannot be read.
const DOC_TIME: &str = "20130524T000000Z";
const DOC_SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
/// What the agent injects, whose echoes the masker replaces.
const SECRET: &[u8] = b"AKIAFUZZSECRETVALUE";
/// The largest chunk the resigner takes (the documentation's example has 64 KiB ones).
const MAX_CHUNK: usize = 64 << 10;
/// Signing services for a request whose signature cannot be read (chosen by its length).
const SERVICES: &[&str] = &[
    "s3",
    "iam",
    "sts",
    "secretsmanager",
    "dynamodb",
    "monitoring",
    "execute-api",
    "lambda",
];

/// An AWS target's masks: the configuration's (detectors, a column glob hashed; parsed
/// with an HTTP target, which needs no credential) and the built-in secret fields, as
/// `PgRuntime::rules_for` adds them for an AWS target.
fn masks() -> &'static SessionMasks {
    static MASKS: OnceLock<SessionMasks> = OnceLock::new();
    MASKS.get_or_init(|| {
        let text = r#"
[agent]
mode = "enforce"
journal = "/nonexistent/j.db"

[[target]]
name = "api"
address = "127.0.0.1:443"
protocol = "http"

[[mask]]
name = "pii"
detectors = ["all"]
strategy = "redact"

[[mask]]
name = "owners"
columns = ["Owner*", "*Name"]
strategy = "hash"
"#;
        let config = config::parse(text, "fuzz aws masks").expect("the masks are valid");
        let mut rules = config.masks;
        rules.push(MaskRule::builtin(AWS_SECRET_FIELDS_RULE, AWS_SECRET_FIELDS));
        SessionMasks::new(rules, Arc::new(HashKey::from_bytes([7; 32])))
    })
}

/// The request an input describes.
struct Input<'a> {
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

/// The next line of `rest` (without its `\n`), as text.
fn line<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let end = rest.iter().position(|&b| b == b'\n')?;
    let (line, tail) = rest.split_at(end);
    *rest = &tail[1..];
    std::str::from_utf8(line).ok()
}

fn parse(mut rest: &[u8]) -> Option<Input<'_>> {
    let method = line(&mut rest)?;
    let host = Some(line(&mut rest)?).filter(|h| !h.is_empty());
    let path = line(&mut rest)?;
    let query = line(&mut rest)?.strip_prefix('?');
    let mut headers = Vec::new();
    loop {
        let l = line(&mut rest)?;
        if l.is_empty() {
            break;
        }
        // A line that is not `name: value` is left out, as hyper would refuse it.
        if let Some((name, value)) = l.split_once(':') {
            headers.push((name, value.trim_start()));
        }
    }
    Some(Input {
        method,
        host,
        path,
        query,
        headers,
        body: rest,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Some(req) = parse(rest) else {
        return;
    };
    let headers = &req.headers[..];

    // The client's signature, and what `inspect` checks after it.
    let sig = sigv4::client_signature(headers, req.query);
    let claimed = sigv4::single_header(headers, "x-amz-content-sha256");
    let mode = match claimed {
        Ok(Some(v)) => sigv4::payload_mode(v).ok(),
        _ => None,
    };
    let presigned = matches!(&sig, Ok(s) if matches!(s.location, Location::Query { .. }));
    let query = match req.query {
        Some(q) if presigned => Some(sigv4::strip_presign_params(q)),
        other => other.map(str::to_owned),
    }
    .filter(|q| !q.is_empty());
    if let Ok(sig) = &sig {
        let _ = sig.scope();
        let _ = sig.check_time(SystemTime::now());
        let payload_hash = match claimed {
            Ok(Some(v)) => v.to_owned(),
            _ => sigv4::sha256_hex(req.body),
        };
        let host = req.host.unwrap_or("127.0.0.1");
        let uri = format!(
            "http://{host}{}{}{}",
            req.path,
            if query.is_some() { "?" } else { "" },
            query.as_deref().unwrap_or("")
        );
        let mut signed = Vec::new();
        for name in &sig.signed_headers {
            match name.as_str() {
                "x-amz-date" | "x-amz-security-token" => {}
                "host" => signed.push(("host", host)),
                other => signed.extend(
                    headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(other))
                        .map(|(_, v)| (other, *v)),
                ),
            }
        }
        let signable = Signable {
            method: req.method,
            uri: &uri,
            headers: signed,
            payload_hash: &payload_hash,
            region: &sig.region,
            service: &sig.service,
        };
        let _ = sigv4::verify(sig, &signable);
    }

    // Which call it is.
    let service = match &sig {
        Ok(s) => s.service.as_str(),
        Err(_) => SERVICES[rest.len() % SERVICES.len()],
    };
    let region = sig.as_ref().map_or("us-east-1", |s| s.region.as_str());
    let needs_body = action::needs_body(service, req.method, headers);
    let call = action::classify(&action::Request {
        method: req.method,
        host: req.host,
        path: req.path,
        query: query.as_deref(),
        headers,
        body: needs_body.then_some(req.body),
        signing_service: service,
        region,
    });
    match &call {
        Ok(call) => {
            assert!(
                call.action()
                    .strip_prefix(call.service.as_str())
                    .is_some_and(|op| op.starts_with(':')),
                "{call:?}"
            );
            assert!(
                call.params.len() <= action::MAX_PARAMS,
                "{}",
                call.params.len()
            );
            assert!(call.resources.len() <= action::MAX_RESOURCES);
        }
        Err(ClassifyError::BodyRequired) => {
            panic!("classify asked for a body needs_body said it does not need")
        }
        Err(_) => {}
    }

    // The answer's error code and request id (the body read as a response).
    if let Some(code) = error::error_code(headers, Some(req.body)) {
        assert!(!code.is_empty());
    }
    let _ = error::request_id(headers);

    // The body as an aws-chunked one, signed again as it streams.
    let trailer = match mode {
        Some(PayloadMode::StreamingSigned { trailer }) => trailer,
        _ => control & 0x20 != 0,
    };
    let verifying = control & 0x80 != 0;
    let identity = verifying && control & 0x40 != 0;
    let params = match &sig {
        Ok(s) => (
            s.date_time.as_str(),
            s.region.as_str(),
            s.service.as_str(),
            s.signature.as_str(),
        ),
        Err(_) => (DOC_TIME, "us-east-1", "s3", DOC_SEED),
    };
    let signer = |secret| ChunkSigner::new(secret, params.0, params.1, params.2, params.3);
    let doc_signer = |secret| ChunkSigner::new(secret, DOC_TIME, "us-east-1", "s3", DOC_SEED);
    let (verify, sign) = match (signer(CLIENT_SECRET), signer(AGENT_SECRET)) {
        (Ok(v), Ok(s)) => (v, s),
        // Parameters a signer refuses (the proxy refuses the request then): the
        // documentation's instead, so that the body is still read.
        _ => (
            doc_signer(CLIENT_SECRET).expect("the documented parameters"),
            doc_signer(AGENT_SECRET).expect("the documented parameters"),
        ),
    };
    let sign = if identity {
        match signer(CLIENT_SECRET) {
            Ok(s) => s,
            Err(_) => doc_signer(CLIENT_SECRET).expect("the documented parameters"),
        }
    } else {
        sign
    };
    let mut resigner = ChunkResigner::new(verifying.then_some(verify), sign, trailer, MAX_CHUNK);
    let declared = sigv4::single_header(headers, "x-amz-decoded-content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        resigner = resigner.expect_decoded_length(len);
    }
    let bound = (MAX_LINE + 1)
        .max(MAX_CHUNK + 101)
        .max(MAX_TRAILER_SECTION + MAX_LINE + 1);
    let mut out = Vec::new();
    let mut failed = None;
    for read in reads(control & 0x1f, req.body) {
        match resigner.push(read) {
            Ok(()) => {
                out.extend_from_slice(&resigner.take_output());
                assert!(resigner.buffered() <= bound, "{resigner:?}");
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    match failed {
        None => match resigner.finish() {
            Ok(()) => {
                out.extend_from_slice(&resigner.take_output());
                assert_eq!(
                    out.len(),
                    req.body.len(),
                    "a resigned body keeps its length"
                );
                if identity {
                    assert!(
                        out == req.body,
                        "resigned with the client's key: the same body"
                    );
                }
                if let Some(len) = declared {
                    assert_eq!(resigner.decoded_bytes(), len);
                }
            }
            Err(_) => assert!(resigner.take_output().is_empty()),
        },
        Some(_) => {
            assert!(resigner.take_output().is_empty(), "nothing after an error");
            assert_eq!(resigner.push(b"0"), Err(ChunkError::Poisoned));
        }
    }

    // The body as an XML answer, masked as the proxy masks query and REST-XML ones.
    let mut masker = masks().body_masker();
    if let Ok(Some(masked)) = masker.mask_xml(req.body, Some(SECRET)) {
        let mut again = masks().body_masker();
        if let Err(e) = again.mask_xml(&masked, Some(SECRET)) {
            panic!(
                "a masked document is not XML any more ({e}):\n{}",
                String::from_utf8_lossy(&masked)
            );
        }
    }
});

//! What the HTTP proxy does with a client's bytes before hyper forwards a request:
//! `protocol::http::framing::RequestFraming` follows the raw byte stream (the check
//! that refuses Content-Length with Transfer-Encoding), and each request head's target
//! goes through `protocol::http::path::normalize` and `Policy::decide_http`, as
//! `proxy::http::handle` runs them.
//!
//! Properties: nothing panics or hangs; how the stream is cut into reads changes
//! nothing the follower reports (the control byte chooses the read size); a normal form
//! is a fixed point of `normalize`, spelled as a request target (the policy sees one
//! spelling per resource); judging
//! a normal path twice gives the same verdict.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nhi_agent::config;
use nhi_agent::policy::http::HttpRequestInfo;
use nhi_agent::policy::Policy;
use nhi_agent::protocol::http::framing::RequestFraming;
use nhi_agent::protocol::http::path;
use nhi_agent_fuzz::reads;

/// A policy with every HTTP rule key, as `config::parse` builds it.
fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = r#"
[agent]
mode = "enforce"
journal = "/nonexistent/j.db"

[[target]]
name = "api"
address = "127.0.0.1:8080"
protocol = "http"

[[policy]]
name = "api"
default = "allow"

[[policy.rule]]
name = "no-admin-deletes"
verdict = "deny"
methods = ["DELETE", "put"]
paths = ["/admin/**", "/v1/*/secrets/{a,b}*"]

[[policy.rule]]
name = "prod-keys"
verdict = "approve"
paths = ["/v1/*/keys"]
hosts = ["*.corp"]
headers = { "X-Env" = "prod*" }

[[policy.rule]]
name = "billing"
verdict = "approve"
hosts = ["billing.internal"]
"#;
        let mut config = config::parse(text, "fuzz http policy").expect("the policy is valid");
        config.policies.policies.remove(0)
    })
}

/// What the follower reports once it has seen every read: how many request heads, and
/// which of them (the first 64) are ambiguous: what the proxy asks, for requests hyper
/// parsed, so for complete heads only. (When it notices a bad head may differ: it parses
/// when a line end arrives, so a bad head still being read is noticed at its next line
/// end, and one never completed is never asked about.)
fn follow<'a>(parts: impl Iterator<Item = &'a [u8]>) -> (u64, Vec<(u64, String)>) {
    let mut framing = RequestFraming::new();
    for part in parts {
        framing.feed(part);
    }
    let heads = framing.heads();
    let ambiguous = (0..heads.min(64))
        .filter_map(|i| framing.ambiguity(i).map(|why| (i, why)))
        .collect();
    (heads, ambiguous)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    // The same stream whole, then cut as the control byte says, then byte by byte for
    // short inputs: the follower must report the same thing.
    let whole = follow(std::iter::once(stream));
    let cut = follow(reads(control, stream));
    assert_eq!(whole, cut, "read size {} changed the framing", control & 0x7f);
    if stream.len() <= 256 {
        assert_eq!(whole, follow(stream.chunks(1)), "byte-by-byte reads");
    }

    // Every request head in the stream, as hyper would hand it to the proxy.
    let mut rest = stream;
    for _ in 0..16 {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let used = match request.parse(rest) {
            Ok(httparse::Status::Complete(used)) => used,
            _ => break,
        };
        let (Some(method), Some(target)) = (request.method, request.path) else {
            break;
        };
        let pairs: Vec<(&str, &str)> = request
            .headers
            .iter()
            .filter_map(|h| std::str::from_utf8(h.value).ok().map(|v| (h.name, v)))
            .collect();
        let host = pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| *v);
        if let Ok(normal) = path::normalize(target) {
            // A normal form is decoded: spelled as a request target again (what may not
            // appear raw percent-encoded), it normalises to itself.
            let respelled = percent_encode(&normal.path);
            match path::normalize(&respelled) {
                Ok(again) => assert_eq!(again.path, normal.path, "{target:?} -> {respelled:?}"),
                Err(e) => panic!("{target:?} -> {:?} -> {respelled:?}: {e}", normal.path),
            }
            let info = HttpRequestInfo {
                method,
                host,
                path: &normal.path,
                headers: &pairs,
            };
            let first = policy().decide_http(&info);
            assert_eq!(first, policy().decide_http(&info));
        }
        rest = &rest[used..];
    }
});

/// `path` as a request target: bytes that may not appear raw in one percent-encoded.
fn percent_encode(path: &str) -> String {
    if path == "*" {
        return path.into();
    }
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

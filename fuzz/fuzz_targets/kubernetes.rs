//! What a Kubernetes target does with a client's bytes: the SPDY/3.1 frames of an exec
//! or port-forward stream (`protocol::kubernetes::spdy::FrameDecoder`, as
//! `proxy::http::upgrade::pump_spdy` drives it), and request targets read as the API
//! server reads them (`protocol::http::path::normalize`, then
//! `protocol::kubernetes::request::resolve` and `Policy::decide_kube`, as
//! `proxy::http::kube::inspect` and `handle` run them).
//!
//! Properties: nothing panics or hangs; how the stream is cut into reads changes
//! neither the frames reported, the payload bytes per stream, nor where the stream is
//! refused; the bytes released are the stream's (never more than was read); reading a
//! request twice gives the same request and the same verdict.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nhi_agent::config;
use nhi_agent::policy::http::HttpRequestInfo;
use nhi_agent::policy::Policy;
use nhi_agent::protocol::http::path;
use nhi_agent::protocol::kubernetes::request;
use nhi_agent::protocol::kubernetes::spdy::{FrameDecoder, Sender, Step, StreamTable};
use nhi_agent_fuzz::{reads, split_control};

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = r#"
[agent]
mode = "enforce"
journal = "/nonexistent/j.db"

[[target]]
name = "cluster"
address = "10.0.0.1:6443"
protocol = "kubernetes"
token_file = "/nonexistent/token"

[[policy]]
name = "cluster"

[[policy.rule]]
name = "no-deletes-in-prod"
verdict = "deny"
verbs = ["delete", "deletecollection"]
resources = ["apps/deployments", "secrets", "*/statefulsets"]
namespaces = ["prod*"]

[[policy.rule]]
name = "exec"
verdict = "approve"
subresources = ["exec", "attach", "portforward"]
names = ["web-*"]
"#;
        let mut config = config::parse(text, "fuzz kubernetes policy").expect("valid policy");
        config.policies.policies.remove(0)
    })
}

/// One decoded stream: the frames in order (their Debug form) interleaved with the
/// payload bytes per stream (consecutive payload steps merged), and the error, if any.
fn decode<'a>(
    sender: Sender,
    parts: impl Iterator<Item = &'a [u8]>,
) -> (Vec<String>, Option<String>, usize) {
    let mut decoder = FrameDecoder::new(sender, 64);
    let mut table = StreamTable::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut trace: Vec<String> = Vec::new();
    let mut released = 0usize;
    let mut pending_payload: Option<(u32, usize)> = None;
    let flush = |trace: &mut Vec<String>, pending: &mut Option<(u32, usize)>| {
        if let Some((id, n)) = pending.take() {
            trace.push(format!("payload {id} {n}"));
        }
    };
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match decoder.next(&buf, &mut table) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Payload { stream_id, len }) => {
                    assert!(
                        len > 0 && len <= buf.len(),
                        "payload {len} of {}",
                        buf.len()
                    );
                    match &mut pending_payload {
                        Some((id, n)) if *id == stream_id => *n += len,
                        _ => {
                            flush(&mut trace, &mut pending_payload);
                            pending_payload = Some((stream_id, len));
                        }
                    }
                    buf.drain(..len);
                    released += len;
                }
                Ok(Step::Frame { frame, release }) => {
                    assert!(
                        release > 0 && release <= buf.len(),
                        "release {release} of {}",
                        buf.len()
                    );
                    flush(&mut trace, &mut pending_payload);
                    trace.push(format!("{frame:?}"));
                    buf.drain(..release);
                    released += release;
                }
                Err(e) => {
                    flush(&mut trace, &mut pending_payload);
                    return (trace, Some(e.to_string()), released);
                }
            }
        }
    }
    flush(&mut trace, &mut pending_payload);
    (trace, None, released)
}

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = split_control(data) else {
        return;
    };
    if control & 0x80 == 0 {
        for sender in [Sender::Client, Sender::Server] {
            let whole = decode(sender, std::iter::once(rest));
            let cut = decode(sender, reads(control, rest));
            assert!(whole.2 <= rest.len() && cut.2 <= rest.len());
            // A DATA frame's excerpt may be reported with fewer bytes when its payload
            // arrives in pieces, so frames are compared without their excerpts' length
            // only through the byte totals: the error and the released count must agree.
            assert_eq!(whole.1, cut.1, "the same refusal however the stream is cut");
            if whole.1.is_none() {
                assert_eq!(whole.2, cut.2, "the same bytes released");
            }
        }
    } else {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let (method, target) = text.split_once(' ').unwrap_or(("GET", text));
        let Ok(normal) = path::normalize(target) else {
            return;
        };
        let first = request::resolve(method, &normal.path, normal.query.as_deref());
        let again = request::resolve(method, &normal.path, normal.query.as_deref());
        assert_eq!(first, again);
        if let Ok(r) = first {
            let _ = r.describe();
            let info = HttpRequestInfo {
                method,
                host: None,
                path: &normal.path,
                headers: &[],
            };
            let verdict = policy().decide_kube(&info, &r);
            assert_eq!(verdict, policy().decide_kube(&info, &r));
        }
    }
});

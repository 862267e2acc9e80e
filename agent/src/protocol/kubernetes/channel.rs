//! The channel protocols of `exec`, `attach` and `portforward` over WebSocket
//! (k8s.io/apimachinery `pkg/util/wsstream`, KEP-4006), sans IO.
//!
//! The subprotocol the server chose (`Sec-WebSocket-Protocol` of its `101`) says how a
//! frame's payload is laid out:
//! - `v5.channel.k8s.io`, `v4.channel.k8s.io`, `v3.channel.k8s.io`,
//!   `v2.channel.k8s.io`, `channel.k8s.io`: binary frames whose first byte is the
//!   channel (exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255,
//!   "close": the payload's next byte is the stream the sender will not write again);
//! - `base64.channel.k8s.io` and `v4.base64.channel.k8s.io`: text frames whose first
//!   byte is the channel as an ASCII digit and whose rest is base64;
//! - `portforward.k8s.io` (and `v4.channel.k8s.io` on `portforward`): per port asked
//!   for, channel 2i carries data and 2i+1 errors;
//! - `SPDY/3.1+portforward.k8s.io` (kubectl's port-forward since 1.31, KEP-4006): no
//!   channels: the binary messages carry a SPDY/3.1 connection, cut anywhere
//!   ([`Framing::SpdyTunnel`]; its streams are read by `spdy`).
//!
//! From v4 on the error channel carries a `metav1.Status` ([`exit_status`]): `Success`,
//! or `Failure` with reason `NonZeroExitCode` and the code in `details.causes` (reason
//! `ExitCode`); earlier versions write the error as plain text.
use base64::Engine;
use serde::Serialize;

/// How frames of an upgraded `exec`/`attach`/`portforward` connection carry channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Binary frames, channel in the first byte; `version` 1 (`channel.k8s.io`) to 5.
    Binary { version: u8 },
    /// Text frames, channel as an ASCII digit, payload base64.
    Base64 { version: u8 },
    /// Binary messages whose bytes, joined, are a SPDY/3.1 connection.
    SpdyTunnel,
}

impl Framing {
    /// The framing of the subprotocol the server chose; `None`: not a channel protocol.
    pub fn of_subprotocol(protocol: &str) -> Option<Framing> {
        Some(match protocol.trim() {
            "v5.channel.k8s.io" => Framing::Binary { version: 5 },
            "v4.channel.k8s.io" => Framing::Binary { version: 4 },
            "v3.channel.k8s.io" => Framing::Binary { version: 3 },
            "v2.channel.k8s.io" => Framing::Binary { version: 2 },
            "channel.k8s.io" | "portforward.k8s.io" => Framing::Binary { version: 1 },
            "v4.base64.channel.k8s.io" => Framing::Base64 { version: 4 },
            "base64.channel.k8s.io" | "base64.binary.k8s.io" => Framing::Base64 { version: 1 },
            "SPDY/3.1+portforward.k8s.io" => Framing::SpdyTunnel,
            _ => return None,
        })
    }

    fn version(self) -> u8 {
        match self {
            Framing::Binary { version } | Framing::Base64 { version } => version,
            // Port-forward: its error streams carry text.
            Framing::SpdyTunnel => 1,
        }
    }

    /// Whether the error channel carries a `metav1.Status` (v4 and later).
    pub fn status_on_error_channel(self) -> bool {
        self.version() >= 4
    }

    /// Splits a frame's payload (text or binary, unmasked) into its channel and data.
    /// `None`: an empty payload (no channel), or base64 that does not decode.
    pub fn split(self, payload: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (&first, rest) = payload.split_first()?;
        match self {
            Framing::SpdyTunnel => None,
            Framing::Binary { .. } => Some((first, rest.to_vec())),
            Framing::Base64 { .. } => {
                let channel = first.checked_sub(b'0').filter(|c| *c <= 9)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, data))
            }
        }
    }
}

/// v5's close signal channel (its payload: the stream closed).
pub const CLOSE: u8 = 255;

/// The name of channel `n` of a connection to `subresource` (`exec`, `attach`,
/// `portforward`) with `ports` asked for.
pub fn channel_name(subresource: &str, ports: &[String], n: u8) -> String {
    if subresource == "portforward" {
        let port = ports
            .get(usize::from(n / 2))
            .map(String::as_str)
            .unwrap_or("?");
        return if n.is_multiple_of(2) {
            format!("port {port} data")
        } else {
            format!("port {port} error")
        };
    }
    match n {
        0 => "stdin".into(),
        1 => "stdout".into(),
        2 => "stderr".into(),
        3 => "error".into(),
        4 => "resize".into(),
        255 => "close".into(),
        other => format!("channel {other}"),
    }
}

/// How an exec ended, from what the server wrote on the error channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExitStatus {
    /// The command's exit code: 0 on `Success`, the `ExitCode` cause on
    /// `NonZeroExitCode`; absent when the server reported another failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `Success` or `Failure` (or the text of a pre-v4 error).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads the error channel's content (`framing` says whether it is a `Status`).
pub fn exit_status(framing: Framing, data: &[u8]) -> ExitStatus {
    if !framing.status_on_error_channel() {
        let text = String::from_utf8_lossy(data).trim().to_owned();
        return ExitStatus {
            exit_code: None,
            status: "Failure".into(),
            reason: None,
            message: (!text.is_empty()).then_some(text),
        };
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return ExitStatus {
            status: "unreadable".into(),
            message: Some(String::from_utf8_lossy(data).into_owned()),
            ..ExitStatus::default()
        };
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let status = value.get("status").and_then(text).unwrap_or_default();
    let reason = value.get("reason").and_then(text);
    let exit_code = if status == "Success" {
        Some(0)
    } else if reason.as_deref() == Some("NonZeroExitCode") {
        value
            .pointer("/details/causes")
            .and_then(|c| c.as_array())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))
            })
            .and_then(|c| c.get("message"))
            .and_then(|m| m.as_str())
            .and_then(|m| m.trim().parse().ok())
    } else {
        None
    };
    ExitStatus {
        exit_code,
        status,
        reason,
        message: value.get("message").and_then(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocols_name_their_framing() {
        assert_eq!(
            Framing::of_subprotocol("v5.channel.k8s.io"),
            Some(Framing::Binary { version: 5 })
        );
        assert_eq!(
            Framing::of_subprotocol("v4.base64.channel.k8s.io"),
            Some(Framing::Base64 { version: 4 })
        );
        assert_eq!(Framing::of_subprotocol("chat"), None);
        let tunnel = Framing::of_subprotocol("SPDY/3.1+portforward.k8s.io");
        assert_eq!(tunnel, Some(Framing::SpdyTunnel));
        assert_eq!(Framing::SpdyTunnel.split(b"\x01abc"), None);
        let binary = Framing::Binary { version: 5 };
        assert_eq!(
            binary.split(b"\x01uid=0(root)\n"),
            Some((1, b"uid=0(root)\n".to_vec()))
        );
        assert_eq!(binary.split(b""), None);
        let text = Framing::Base64 { version: 4 };
        assert_eq!(text.split(b"1aGVsbG8="), Some((1, b"hello".to_vec())));
        assert_eq!(text.split(b"1!!"), None);
        assert_eq!(text.split(b"x"), None);
    }

    #[test]
    fn channels_are_named_per_subresource() {
        assert_eq!(channel_name("exec", &[], 0), "stdin");
        assert_eq!(channel_name("exec", &[], 2), "stderr");
        assert_eq!(channel_name("exec", &[], 255), "close");
        let ports = vec!["5432".to_owned(), "80".to_owned()];
        assert_eq!(channel_name("portforward", &ports, 0), "port 5432 data");
        assert_eq!(channel_name("portforward", &ports, 3), "port 80 error");
        assert_eq!(channel_name("portforward", &ports, 9), "port ? error");
    }

    #[test]
    fn the_status_on_the_error_channel_gives_the_exit_code() {
        let v5 = Framing::Binary { version: 5 };
        let ok = exit_status(v5, br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!((ok.exit_code, ok.status.as_str()), (Some(0), "Success"));
        let failed = exit_status(
            v5,
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        );
        assert_eq!(failed.exit_code, Some(3));
        assert_eq!(failed.reason.as_deref(), Some("NonZeroExitCode"));
        let other = exit_status(
            v5,
            br#"{"status":"Failure","message":"container not found","reason":"InternalError"}"#,
        );
        assert_eq!(
            (other.exit_code, other.message.as_deref()),
            (None, Some("container not found"))
        );
        let old = exit_status(Framing::Binary { version: 2 }, b"exit status 1\n");
        assert_eq!(
            (old.exit_code, old.message.as_deref()),
            (None, Some("exit status 1"))
        );
        assert_eq!(exit_status(v5, b"{not json").status, "unreadable");
    }
}

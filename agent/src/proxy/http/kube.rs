//! Kubernetes API targets (`protocol = "kubernetes"`): the agent is the API server the
//! bot talks to (TLS terminated with a leaf of the agent CA) and a client of the real
//! one with its own credential.
//!
//! Per request, before it is judged ([`inspect`]): impersonation headers from the client
//! are refused (who a workload acts as is the agent's to say), the path must already be
//! in its normal form (the API server splits the raw path: a `..` or `//` the agent
//! resolved would be read differently there), and the request is read as the API server
//! reads it ([`crate::protocol::kubernetes::request`]). Policy judges it with
//! `Policy::decide_kube`; a refusal is a Kubernetes `Status` (403 `Forbidden` naming
//! the rule), which kubectl prints as `Error from server (Forbidden): ...`.
//!
//! On the way to the server ([`upstream_headers`]): the client's `Authorization` is
//! replaced by the agent's token (or removed, when the agent authenticates with a client
//! certificate), the workload's `kube_impersonate` is sent as `Impersonate-User` /
//! `Impersonate-Group`, and `Accept` asks for JSON, never protobuf, so masks can read
//! every answer.
//!
//! Answers: Secrets' `data` and `stringData` values (and the `last-applied-configuration`
//! annotation, which holds a copy of them) are masked in every answer to a request
//! about `secrets` ([`KubeSession::masks_for`], [`secret::mask_values`]: `data` stays
//! valid base64, so typed clients still decode it), list and watch streams included; an
//! answer about Secrets that is not JSON is refused (502), never passed. Each request
//! ends with a `k8s_request` event ([`K8sRequest`]): verb, resource, namespace, name,
//! the object's uid, the status, and who the agent acted as.
//!
//! exec/attach/portforward over WebSocket are relayed frame by frame
//! (`upgrade.rs`): the command's argv is journaled with the request, before the stream
//! opens; each frame is journaled with its channel (stdin, stdout, stderr, ...) and a
//! bounded, masked excerpt before it is relayed, and the exec's end (`k8s_exec`) with
//! the exit code the server wrote on the error channel.
use std::time::Instant;

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::body::Body;
use crate::config::KubeImpersonation;
use crate::mask::SessionMasks;
use crate::protocol::http::path::NormalPath;
use crate::protocol::kubernetes::channel::ExitStatus;
use crate::protocol::kubernetes::request::{self, KubeRequest};
use crate::protocol::kubernetes::secret;

/// The event kinds of Kubernetes targets.
pub mod kind {
    /// [`super::K8sRequest`]: one API request, once its answer's head is known (or the
    /// agent answered it).
    pub const K8S_REQUEST: &str = "k8s_request";
    /// [`super::K8sExec`]: the end of an exec/attach/portforward stream.
    pub const K8S_EXEC: &str = "k8s_exec";
}

/// The name of the built-in mask rule for Secrets' values.
pub const SECRET_DATA_RULE: &str = "kubernetes-secret-data";

/// Media types that mean protobuf (never asked for: masks cannot read them).
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// What the requests of one Kubernetes session share.
pub(super) struct KubeSession {
    /// The workload's impersonation, sent on every request.
    pub impersonate: Option<KubeImpersonation>,
    /// The session's masks plus [`secret::mask_values`]: for answers about Secrets.
    secret_masks: SessionMasks,
    /// Who the server sees, as the journal says it: the impersonated user, else the
    /// agent's credential (`bearer token`, `client certificate CN=...`).
    pub acted_as: String,
}

impl KubeSession {
    pub fn new(
        masks: &SessionMasks,
        impersonate: Option<KubeImpersonation>,
        acting_as: &str,
    ) -> KubeSession {
        let acted_as = match &impersonate {
            Some(i) => format!("{} (impersonated by the agent's {acting_as})", i.user),
            None => acting_as.to_owned(),
        };
        KubeSession {
            impersonate,
            secret_masks: masks.with_json_transform(SECRET_DATA_RULE, secret::mask_values),
            acted_as,
        }
    }

    /// The masks for the answer to `request`: the session's, plus Secrets' values for
    /// requests about Secrets.
    pub fn masks_for(&self, request: &KubeRequest, session: &SessionMasks) -> SessionMasks {
        if request.is_secrets() {
            self.secret_masks.clone()
        } else {
            session.clone()
        }
    }
}

/// A request refused before it is judged.
pub(super) struct Refused {
    pub status: StatusCode,
    /// The `Status` reason (`Forbidden`, `BadRequest`).
    pub reason: &'static str,
    pub message: String,
    /// What the request was, when it could be read.
    pub request: Option<Box<KubeRequest>>,
}

/// Reads a request (see the module documentation). `target` is the raw request target.
pub(super) fn inspect(
    headers: &HeaderMap,
    method: &str,
    target: &str,
    normal: &NormalPath,
) -> Result<KubeRequest, Refused> {
    let raw_path = target.split('?').next().unwrap_or(target);
    if raw_path != normal.path {
        return Err(Refused {
            status: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: format!(
                "nhi-agent: the request path {raw_path:?} is not in its normal form ({:?}); the API server would read it differently",
                normal.path
            ),
            request: None,
        });
    }
    let request =
        request::resolve(method, &normal.path, normal.query.as_deref()).map_err(|e| Refused {
            status: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: format!("nhi-agent: ambiguous request: {e}"),
            request: None,
        })?;
    if let Some(name) = headers
        .keys()
        .find(|name| name.as_str().starts_with("impersonate-"))
    {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: format!(
                "nhi-agent: impersonation headers from the client are refused ({name}); the agent decides who a workload acts as (kube_impersonate)"
            ),
            request: Some(Box::new(request)),
        });
    }
    Ok(request)
}

/// What the agent changes in a request to the API server (after the client's headers
/// and the injected token are in `headers`): no client credential when the agent
/// authenticates by certificate, its impersonation, JSON asked for.
pub(super) fn upstream_headers(session: &KubeSession, headers: &mut HeaderMap, injected: bool) {
    if !injected {
        headers.remove(header::AUTHORIZATION);
    }
    let impersonation: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in impersonation {
        headers.remove(name);
    }
    if let Some(i) = &session.impersonate {
        if let Ok(v) = HeaderValue::from_str(&i.user) {
            headers.insert("impersonate-user", v);
        }
        for group in &i.groups {
            if let Ok(v) = HeaderValue::from_str(group) {
                headers.append("impersonate-group", v);
            }
        }
    }
    ask_for_json(headers);
}

/// Rewrites `Accept` without protobuf; `application/json` when nothing is left.
fn ask_for_json(headers: &mut HeaderMap) {
    let values: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|range| !range.is_empty())
        .map(str::to_owned)
        .collect();
    let kept: Vec<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|range| {
            let essence = range.split(';').next().unwrap_or("").trim();
            !essence.eq_ignore_ascii_case(PROTOBUF) && !essence.eq_ignore_ascii_case("*/*")
        })
        .collect();
    let value = if kept.is_empty() {
        "application/json".to_owned()
    } else {
        kept.join(", ")
    };
    headers.remove(header::ACCEPT);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT, v);
    }
}

/// Whether an answer about Secrets can be masked: JSON (a watch stream is JSON lines).
pub(super) fn maskable(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        })
}

/// Whether an answer is in an object encoding masks cannot read (protobuf, CBOR,
/// YAML), which the agent asked the server not to use.
pub(super) fn unreadable_encoding(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence.starts_with(PROTOBUF)
                || essence == "application/cbor"
                || essence == "application/yaml"
        })
}

/// A `Status` answer of the agent's.
pub(super) fn status_response(
    status: StatusCode,
    reason: &str,
    message: &str,
    request: Option<&KubeRequest>,
) -> http::Response<Body> {
    super::agent_response(
        status,
        crate::protocol::kubernetes::status(status.as_u16(), reason, message, request),
    )
}

/// The uid of the object a single-object answer holds (`metadata.uid`).
pub(super) fn object_uid(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Object {
        metadata: Option<Metadata>,
    }
    #[derive(Deserialize)]
    struct Metadata {
        uid: Option<String>,
    }
    serde_json::from_slice::<Object>(body)
        .ok()?
        .metadata?
        .uid
        .filter(|u| !u.is_empty())
}

/// Kind [`kind::K8S_REQUEST`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct K8sRequest {
    pub seq: u64,
    #[serde(flatten)]
    pub request: KubeRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default)]
    pub enforced: bool,
    /// `forwarded`, `refused`, `not approved`, `upstream failed`, `answer not masked`.
    pub outcome: String,
    pub status: u16,
    /// `metadata.uid` of the object answered (single-object answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Who the server saw (the impersonated user, the agent's credential); absent when
    /// the request never reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acted_as: Option<String>,
    #[serde(default)]
    pub duration_us: u64,
}

impl K8sRequest {
    /// The record of `request` (its argv through the session's masks).
    pub(super) fn new(
        seq: u64,
        request: &KubeRequest,
        headers: &HeaderMap,
        masks: &SessionMasks,
    ) -> K8sRequest {
        K8sRequest {
            seq,
            request: journaled(request, masks),
            user_agent: headers.get(header::USER_AGENT).map(|v| {
                masks
                    .mask_text(&String::from_utf8_lossy(v.as_bytes()))
                    .into_owned()
            }),
            ..K8sRequest::default()
        }
    }

    pub(super) fn ended(
        &self,
        outcome: &str,
        status: u16,
        acted_as: Option<String>,
        started: Instant,
    ) -> K8sRequest {
        K8sRequest {
            outcome: outcome.to_owned(),
            status,
            acted_as,
            duration_us: started.elapsed().as_micros() as u64,
            ..self.clone()
        }
    }
}

/// The request as journaled: the exec argv through the detectors.
pub(super) fn journaled(request: &KubeRequest, masks: &SessionMasks) -> KubeRequest {
    let mut out = request.clone();
    for arg in &mut out.command {
        *arg = masks.mask_text(arg).into_owned();
    }
    out
}

/// Kind [`kind::K8S_EXEC`]: how an exec/attach/portforward stream ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct K8sExec {
    pub seq: u64,
    /// The WebSocket subprotocol the server chose (`v5.channel.k8s.io`).
    pub protocol: String,
    /// Payload bytes per channel name, in the order channels first appeared.
    pub bytes: Vec<(String, u64)>,
    /// From the error channel; absent when the server wrote none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// Channel data beyond what the journal keeps per channel was counted, not kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub duration_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn normal(target: &str) -> NormalPath {
        crate::protocol::http::path::normalize(target).unwrap()
    }

    #[test]
    fn impersonation_from_the_client_and_paths_out_of_normal_form_are_refused() {
        let t = "/api/v1/namespaces/prod/secrets";
        let refused = inspect(
            &headers(&[("Impersonate-User", "admin")]),
            "GET",
            t,
            &normal(t),
        )
        .err()
        .unwrap();
        assert_eq!(
            (refused.status, refused.reason),
            (StatusCode::FORBIDDEN, "Forbidden")
        );
        assert!(refused.message.contains("impersonate-user"));
        let refused = inspect(
            &headers(&[("impersonate-extra-scopes", "x")]),
            "GET",
            t,
            &normal(t),
        );
        assert!(refused.is_err());
        for odd in [
            "/api/v1/namespaces/prod/../default/secrets",
            "/api/v1/namespaces//prod/secrets",
            "/api/v1/namespaces/pr%6Fd/secrets",
        ] {
            let refused = inspect(&HeaderMap::new(), "GET", odd, &normal(odd))
                .err()
                .unwrap();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{odd}");
        }
        let ok = inspect(
            &HeaderMap::new(),
            "GET",
            "/api/v1/namespaces/prod/secrets?watch=1",
            &normal("/api/v1/namespaces/prod/secrets?watch=1"),
        )
        .ok()
        .unwrap();
        assert_eq!(ok.verb, "watch");
        let bad = inspect(
            &HeaderMap::new(),
            "GET",
            "/api/v1/pods?watch=maybe",
            &normal("/api/v1/pods?watch=maybe"),
        );
        assert_eq!(bad.err().unwrap().reason, "BadRequest");
    }

    #[test]
    fn upstream_requests_ask_for_json_and_carry_the_agents_impersonation() {
        let session = KubeSession::new(
            &SessionMasks::none(),
            Some(KubeImpersonation {
                user: "system:serviceaccount:ci:deployer".into(),
                groups: vec!["system:serviceaccounts".into(), "ci".into()],
            }),
            "bearer token",
        );
        let mut h = headers(&[
            ("accept", "application/vnd.kubernetes.protobuf, */*"),
            ("authorization", "Bearer bot"),
        ]);
        upstream_headers(&session, &mut h, false);
        assert_eq!(h.get("accept").unwrap(), "application/json");
        assert!(
            h.get("authorization").is_none(),
            "a client credential never goes on"
        );
        assert_eq!(
            h.get("impersonate-user").unwrap(),
            "system:serviceaccount:ci:deployer"
        );
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["system:serviceaccounts", "ci"]);
        let mut h = headers(&[(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )]);
        upstream_headers(&session, &mut h, true);
        assert_eq!(
            h.get("accept").unwrap(),
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
        );
        let mut h = HeaderMap::new();
        ask_for_json(&mut h);
        assert_eq!(h.get("accept").unwrap(), "application/json");
        assert_eq!(
            session.acted_as,
            "system:serviceaccount:ci:deployer (impersonated by the agent's bearer token)"
        );
    }

    #[test]
    fn secrets_answers_get_the_secret_masks_and_others_the_sessions() {
        let session = KubeSession::new(&SessionMasks::none(), None, "bearer token");
        let secrets = request::resolve("GET", "/api/v1/namespaces/a/secrets/x", None).unwrap();
        let pods = request::resolve("GET", "/api/v1/namespaces/a/pods/x", None).unwrap();
        assert!(!session
            .masks_for(&secrets, &SessionMasks::none())
            .is_empty());
        assert!(session.masks_for(&pods, &SessionMasks::none()).is_empty());
        let masks = session.masks_for(&secrets, &SessionMasks::none());
        // A request body cut short is withheld rather than masked as text.
        assert!(masks.has_column_rules());
        let body = br#"{"kind":"Secret","metadata":{"name":"x","uid":"u-1","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"p\":\"czNjcjN0\"}}"}},"data":{"p":"czNjcjN0"},"stringData":{"q":"plain"}}"#;
        let masked = masks.body_masker().mask_json(body, None).unwrap().unwrap();
        let text = String::from_utf8(masked.to_vec()).unwrap();
        assert!(
            !text.contains("czNjcjN0") && !text.contains("plain"),
            "{text}"
        );
        assert!(text.contains(r#""name":"x""#), "{text}");
        assert_eq!(object_uid(&masked).as_deref(), Some("u-1"));
        assert_eq!(object_uid(br#"{"kind":"PodList","items":[]}"#), None);
    }

    #[test]
    fn only_json_answers_about_secrets_are_maskable() {
        assert!(maskable(&headers(&[("content-type", "application/json")])));
        assert!(maskable(&headers(&[(
            "content-type",
            "application/json;stream=watch"
        )])));
        assert!(!maskable(&headers(&[("content-type", PROTOBUF)])));
        assert!(!maskable(&HeaderMap::new()));
        assert!(unreadable_encoding(&headers(&[("content-type", PROTOBUF)])));
        assert!(unreadable_encoding(&headers(&[(
            "content-type",
            "application/cbor"
        )])));
        assert!(!unreadable_encoding(&headers(&[(
            "content-type",
            "text/plain"
        )])));
        assert!(!unreadable_encoding(&headers(&[(
            "content-type",
            "application/json"
        )])));
    }
}

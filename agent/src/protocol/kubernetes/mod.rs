//! The Kubernetes API, sans IO: what a request does ([`request`]: verb, group,
//! resource, subresource, namespace, name, the argv of an exec), the channel protocols
//! of `exec`/`attach`/`portforward` over WebSocket ([`channel`]), and the `Status`
//! objects the agent answers with ([`status`]), and Secrets' values masked in answers
//! ([`secret`]).
pub mod channel;
pub mod request;
pub mod secret;
pub mod spdy;

/// The `Status` object (`meta.k8s.io/v1`) the API server answers errors with, which
/// kubectl prints as `Error from server (<reason>): <message>`.
pub fn status(
    code: u16,
    reason: &str,
    message: &str,
    request: Option<&request::KubeRequest>,
) -> serde_json::Value {
    let mut status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(r) = request.filter(|r| r.resource_request) {
        let mut details = serde_json::Map::new();
        if !r.name.is_empty() {
            details.insert("name".into(), r.name.clone().into());
        }
        if !r.group.is_empty() {
            details.insert("group".into(), r.group.clone().into());
        }
        if !r.resource.is_empty() {
            details.insert("kind".into(), r.resource.clone().into());
        }
        status["details"] = details.into();
    }
    status
}

//! What a Kubernetes API request does, read from its method, path and query the way the
//! API server's own `RequestInfoFactory` reads it (k8s.io/apiserver
//! `pkg/endpoints/request/requestinfo.go`): verb, API group and version, resource,
//! subresource, namespace and name; or, for everything outside `/api` and `/apis`
//! (discovery roots, `/version`, `/healthz`, `/openapi/...`), a non-resource request
//! named by its path and the method's verb.
//!
//! The rules, as the API server applies them:
//! - `/api/VERSION/...` is the core group (`""`), `/apis/GROUP/VERSION/...` a named
//!   group; `/api`, `/apis`, `/api/v1` and `/apis/GROUP[/VERSION]` are discovery
//!   (non-resource) requests.
//! - The verb comes from the method: GET and HEAD `get`, POST `create`, PUT `update`,
//!   PATCH `patch`, DELETE `delete`. A `get` without a name is a `list`, or a `watch`
//!   with `watch=true` (or `1`); a `delete` without a name is a `deletecollection`. The
//!   deprecated `/watch/` path prefix makes a `watch` and `/proxy/` a `proxy`.
//! - `namespaces/NS/RESOURCE/...` names the namespace; `namespaces/NS` alone (or with
//!   the `status` and `finalize` subresources) is the namespace object itself.
//! - After the resource come the name and the subresource (`pods/web-0/exec`).
//! - A list with `fieldSelector=metadata.name=X` names `X` (how `kubectl get pod X -w`
//!   watches one object), as the API server does for authorization.
//!
//! One deliberate difference: `exec`, `attach` and `portforward` over GET (a WebSocket
//! upgrade) are `create`, as the API server authorizes them since Kubernetes 1.30
//! (`AuthorizePodWebsocketUpgradeCreatePermission`), so a rule on `create` covers both
//! transports kubectl uses.
//!
//! Ambiguity is refused, never guessed ([`KubeRequestError`]): a path that is not
//! already in its normal form (the caller checks it against
//! `protocol::http::path::normalize`), empty segments inside the resource part, a
//! query parameter the verb depends on given twice (`watch`, `fieldSelector`), a
//! `watch` value that is not a boolean.
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Subresources of a namespace object (`namespaces/NS/status`), not resources in it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// The subresources that open a stream to a container.
pub const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward"];

/// One Kubernetes API request, as policy and the journal see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` (and `proxy`) for resource requests; the method in lower case
    /// for non-resource ones.
    pub verb: String,
    /// A request about a resource (else a non-resource request such as discovery).
    pub resource_request: bool,
    /// `""` for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The path of a non-resource request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `exec`: the command's argv (`command=` parameters, in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `exec`, `attach`, `log`: the container named (`container=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `exec`, `attach`: whether stdin is attached and a terminal asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// `portforward`: the ports asked for (`ports=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

impl KubeRequest {
    /// The resource as policy's `resources` globs see it: `resource` for the core
    /// group, `group/resource` for the others (`apps/deployments`).
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.group, self.resource)
        }
    }

    /// Whether the request opens a stream to a container (exec, attach, port-forward).
    pub fn is_connect(&self) -> bool {
        self.resource_request
            && self.group.is_empty()
            && self.resource == "pods"
            && CONNECT_SUBRESOURCES.contains(&self.subresource.as_str())
    }

    /// Whether the request is about core Secrets (their values are masked).
    pub fn is_secrets(&self) -> bool {
        self.resource_request && self.group.is_empty() && self.resource == "secrets"
    }

    /// A one-line description: `delete apps/deployments prod/web`,
    /// `create pods/exec prod/web-0 [sh -c id]`, `get /version`.
    pub fn describe(&self) -> String {
        if !self.resource_request {
            return format!("{} {}", self.verb, self.path);
        }
        let mut out = format!("{} {}", self.verb, self.qualified_resource());
        if !self.subresource.is_empty() {
            out.push('/');
            out.push_str(&self.subresource);
        }
        match (self.namespace.is_empty(), self.name.is_empty()) {
            (false, false) => out.push_str(&format!(" {}/{}", self.namespace, self.name)),
            (false, true) => out.push_str(&format!(" -n {}", self.namespace)),
            (true, false) => out.push_str(&format!(" {}", self.name)),
            (true, true) => {}
        }
        if !self.command.is_empty() {
            out.push_str(&format!(" {:?}", self.command));
        }
        out
    }
}

/// Why a request cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KubeRequestError {
    #[error("empty path segment in a resource path ({0:?})")]
    EmptySegment(String),
    #[error("query parameter `{0}` given more than once")]
    Repeated(&'static str),
    #[error("query parameter `watch` is {0:?}, not a boolean")]
    BadWatch(String),
    #[error("query parameter `fieldSelector` is not valid UTF-8 once decoded")]
    BadQuery,
}

/// Reads a request. `path` is the request's path in normal form (see the module
/// documentation), `query` its raw query string.
pub fn resolve(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<KubeRequest, KubeRequestError> {
    let params = Query::parse(query.unwrap_or(""))?;
    let non_resource = || KubeRequest {
        verb: method.to_ascii_lowercase(),
        resource_request: false,
        path: path.to_owned(),
        ..KubeRequest::default()
    };
    let trimmed = path.trim_matches('/');
    let mut parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    // `/api/v1/...` or `/apis/group/version/...`, with something after the version.
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, _, ..] => ("", *version, 2),
        ["apis", group, version, _, ..] => (*group, *version, 3),
        _ => return Ok(non_resource()),
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(KubeRequestError::EmptySegment(path.to_owned()));
    }
    parts.drain(..rest);
    let mut request = KubeRequest {
        resource_request: true,
        group: group.to_owned(),
        version: version.to_owned(),
        ..KubeRequest::default()
    };
    let mut special = None;
    if matches!(parts.first(), Some(&"watch") | Some(&"proxy")) {
        special = Some(parts.remove(0));
    }
    let mut verb = match special {
        Some(v) => v.to_owned(),
        None => match method.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => {
                return Ok(KubeRequest {
                    verb: other.to_ascii_lowercase(),
                    ..request
                })
            }
        }
        .to_owned(),
    };
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        request.namespace = parts[1].to_owned();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts.drain(..2);
        }
    }
    // resource / name / subresource / (more, not interpreted)
    if let Some(resource) = parts.first() {
        request.resource = (*resource).to_owned();
    }
    if let Some(name) = parts.get(1) {
        request.name = (*name).to_owned();
    }
    if parts.len() >= 3 && verb != "proxy" {
        request.subresource = parts[2].to_owned();
    }
    if request.name.is_empty() && verb == "get" {
        verb = if params.watch()? { "watch" } else { "list" }.to_owned();
    }
    if request.name.is_empty() && matches!(verb.as_str(), "list" | "watch") {
        if let Some(name) = params.field_name()? {
            request.name = name;
        }
    }
    if request.name.is_empty() && verb == "delete" {
        verb = "deletecollection".to_owned();
    }
    if request.is_connect() {
        // Authorized as `create` whatever the transport (see the module docs).
        verb = "create".to_owned();
        request.command = params.all("command");
        request.stdin = params.flag("stdin");
        request.tty = params.flag("tty");
        request.ports = params.all("ports");
    }
    if request.group.is_empty()
        && request.resource == "pods"
        && matches!(request.subresource.as_str(), "exec" | "attach" | "log")
    {
        request.container = params.all("container").into_iter().next();
    }
    request.verb = verb;
    Ok(request)
}

/// A query string, decoded (`application/x-www-form-urlencoded`, as Go's
/// `url.ParseQuery`).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Result<Query, KubeRequestError> {
        Ok(Query(
            url::form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The one value of `key`; a second one is refused.
    fn single(&self, key: &'static str) -> Result<Option<&str>, KubeRequestError> {
        let mut values = self.0.iter().filter(|(k, _)| k == key);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(KubeRequestError::Repeated(key));
        }
        Ok(first)
    }

    /// `watch`, as the API server converts it (`true`/`1` or `false`/`0`/empty).
    fn watch(&self) -> Result<bool, KubeRequestError> {
        match self.single("watch")? {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(KubeRequestError::BadWatch(other.to_owned())),
        }
    }

    /// A boolean parameter of exec/attach (`stdin=true`, `stdin=1`).
    fn flag(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1"))
    }

    /// The name a field selector requires exactly (`metadata.name=X` or `==X`), if
    /// that is all or part of it.
    fn field_name(&self) -> Result<Option<String>, KubeRequestError> {
        let Some(selector) = self.single("fieldSelector")? else {
            return Ok(None);
        };
        for term in selector.split(',') {
            let term = term.trim();
            let value = term
                .strip_prefix("metadata.name==")
                .or_else(|| term.strip_prefix("metadata.name="));
            if let Some(value) = value {
                if !value.is_empty() && !value.starts_with('=') && !value.contains('\\') {
                    return Ok(Some(value.to_owned()));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> KubeRequest {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        resolve(method, path, query).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    fn short(r: &KubeRequest) -> (String, String, String, String, String, String) {
        (
            r.verb.clone(),
            r.qualified_resource(),
            r.subresource.clone(),
            r.namespace.clone(),
            r.name.clone(),
            r.version.clone(),
        )
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn the_api_servers_examples_resolve_as_it_resolves_them() {
        // The cases of requestinfo_test.go (verb, resource, subresource, namespace, name).
        let cases: &[(&str, &str, [&str; 5])] = &[
            (
                "GET",
                "/api/v1/namespaces",
                ["list", "namespaces", "", "", ""],
            ),
            (
                "GET",
                "/api/v1/namespaces/other",
                ["get", "namespaces", "", "other", "other"],
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods",
                ["list", "pods", "", "other", ""],
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo",
                ["get", "pods", "", "other", "foo"],
            ),
            (
                "HEAD",
                "/api/v1/namespaces/other/pods/foo",
                ["get", "pods", "", "other", "foo"],
            ),
            ("GET", "/api/v1/pods", ["list", "pods", "", "", ""]),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/status",
                ["get", "pods", "status", "other", "foo"],
            ),
            ("GET", "/api/v1/watch/pods", ["watch", "pods", "", "", ""]),
            (
                "GET",
                "/api/v1/pods?watch=true",
                ["watch", "pods", "", "", ""],
            ),
            (
                "GET",
                "/api/v1/pods?watch=false",
                ["list", "pods", "", "", ""],
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/other/pods",
                ["watch", "pods", "", "other", ""],
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods?watch=1",
                ["watch", "pods", "", "other", ""],
            ),
            (
                "POST",
                "/api/v1/namespaces/other/pods",
                ["create", "pods", "", "other", ""],
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/pods/foo",
                ["update", "pods", "", "other", "foo"],
            ),
            (
                "PATCH",
                "/api/v1/namespaces/other/pods/foo",
                ["patch", "pods", "", "other", "foo"],
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods/foo",
                ["delete", "pods", "", "other", "foo"],
            ),
            (
                "DELETE",
                "/api/v1/namespaces/other/pods",
                ["deletecollection", "pods", "", "other", ""],
            ),
            (
                "GET",
                "/apis/extensions/v1beta1/namespaces/other/pods",
                ["list", "extensions/pods", "", "other", ""],
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/prod/deployments/web",
                ["get", "apps/deployments", "", "prod", "web"],
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/prod/deployments/web",
                ["delete", "apps/deployments", "", "prod", "web"],
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/prod/deployments/web/scale",
                ["update", "apps/deployments", "scale", "prod", "web"],
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/finalize",
                ["update", "namespaces", "finalize", "other", "other"],
            ),
            (
                "PUT",
                "/api/v1/namespaces/other/status",
                ["update", "namespaces", "status", "other", "other"],
            ),
            (
                "GET",
                "/api/v1/proxy/namespaces/other/pods/foo/a/b",
                ["proxy", "pods", "", "other", "foo"],
            ),
            (
                "GET",
                "/api/v1/namespaces/other/pods/foo/proxy/a/b",
                ["get", "pods", "proxy", "other", "foo"],
            ),
            (
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                ["list", "rbac.authorization.k8s.io/clusterroles", "", "", ""],
            ),
        ];
        for (method, target, [verb, resource, sub, ns, name]) in cases {
            let r = req(method, target);
            assert!(r.resource_request, "{method} {target}");
            assert_eq!(
                (
                    r.verb.as_str(),
                    r.qualified_resource().as_str(),
                    r.subresource.as_str(),
                    r.namespace.as_str(),
                    r.name.as_str()
                ),
                (*verb, *resource, *sub, *ns, *name),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource_requests() {
        for (method, target) in [
            ("GET", "/"),
            ("GET", "/api"),
            ("GET", "/api/v1"),
            ("GET", "/apis"),
            ("GET", "/apis/apps"),
            ("GET", "/apis/apps/v1"),
            ("GET", "/version"),
            ("GET", "/healthz"),
            ("GET", "/openapi/v3/apis/apps/v1?hash=abc"),
            ("POST", "/apis/authorization.k8s.io"),
        ] {
            let r = req(method, target);
            assert!(!r.resource_request, "{target}");
            assert_eq!(r.verb, method.to_ascii_lowercase());
            assert_eq!(r.path, target.split('?').next().unwrap());
            assert_eq!(r.describe(), format!("{} {}", r.verb, r.path));
        }
    }

    #[test]
    fn a_field_selector_on_the_name_names_the_object() {
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/pods?fieldSelector=metadata.name%3Dweb-0&watch=true",
        );
        assert_eq!(
            short(&r),
            (s("watch"), s("pods"), s(""), s("prod"), s("web-0"), s("v1"))
        );
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/secrets?fieldSelector=type%3DOpaque,metadata.name%3D%3Ddb",
        );
        assert_eq!(r.name, "db");
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/secrets?fieldSelector=metadata.name!%3Ddb",
        );
        assert_eq!((r.verb.as_str(), r.name.as_str()), ("list", ""));
    }

    #[test]
    fn exec_attach_and_portforward_are_create_with_their_command() {
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/pods/web-0/exec?command=sh&command=-c&command=id%3B+cat+%2Fetc%2Fhostname&container=app&stdin=true&stdout=true&stderr=true",
        );
        assert_eq!(
            short(&r),
            (
                s("create"),
                s("pods"),
                s("exec"),
                s("prod"),
                s("web-0"),
                s("v1")
            )
        );
        assert_eq!(r.command, ["sh", "-c", "id; cat /etc/hostname"]);
        assert_eq!(r.container.as_deref(), Some("app"));
        assert!(r.stdin && !r.tty);
        assert!(r.is_connect());
        assert_eq!(
            r.describe(),
            r#"create pods/exec prod/web-0 ["sh", "-c", "id; cat /etc/hostname"]"#
        );
        let r = req(
            "POST",
            "/api/v1/namespaces/prod/pods/web-0/attach?stdin=1&tty=1",
        );
        assert_eq!(
            (r.verb.as_str(), r.subresource.as_str(), r.stdin, r.tty),
            ("create", "attach", true, true)
        );
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/pods/web-0/portforward?ports=5432&ports=8080",
        );
        assert_eq!(
            (r.verb.as_str(), r.ports.clone()),
            ("create", vec![s("5432"), s("8080")])
        );
        // Logs are an ordinary get.
        let r = req(
            "GET",
            "/api/v1/namespaces/prod/pods/web-0/log?container=app&follow=true",
        );
        assert_eq!(
            (
                r.verb.as_str(),
                r.subresource.as_str(),
                r.container.as_deref()
            ),
            ("get", "log", Some("app"))
        );
        assert!(!r.is_connect());
    }

    #[test]
    fn what_the_verb_depends_on_is_refused_when_ambiguous() {
        assert_eq!(
            resolve("GET", "/api/v1/pods", Some("watch=true&watch=false")),
            Err(KubeRequestError::Repeated("watch"))
        );
        assert_eq!(
            resolve("GET", "/api/v1/pods", Some("watch=yes")),
            Err(KubeRequestError::BadWatch("yes".into()))
        );
        assert_eq!(
            resolve(
                "GET",
                "/api/v1/pods",
                Some("fieldSelector=metadata.name%3Da&fieldSelector=metadata.name%3Db")
            ),
            Err(KubeRequestError::Repeated("fieldSelector"))
        );
        assert!(matches!(
            resolve("GET", "/api/v1/namespaces//pods", None),
            Err(KubeRequestError::EmptySegment(_))
        ));
        // With a name, `watch` is not what decides the verb; still not refused.
        assert_eq!(
            req("GET", "/api/v1/namespaces/a/pods/b?watch=true").verb,
            "get"
        );
    }

    /// Every request real kubectl 1.32 made for the commands of
    /// `tests/kube/testdata/kubectl-requests.jsonl` (how they were captured: its README)
    /// reads as the operation the command is.
    #[test]
    fn kubectls_captured_requests_read_as_their_commands() {
        let golden = include_str!("../../../../tests/kube/testdata/kubectl-requests.jsonl");
        let mut seen = std::collections::BTreeSet::new();
        for line in golden.lines().filter(|l| !l.trim().is_empty()) {
            let capture: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = |k: &str| capture[k].as_str().unwrap_or("").to_owned();
            let (command, method, path) = (text("command"), text("method"), text("path"));
            let query = capture["query"].as_str().filter(|q| !q.is_empty());
            let r = resolve(&method, &path, query).unwrap_or_else(|e| panic!("{line}: {e}"));
            seen.insert(format!("{command} => {}", r.describe()));
        }
        let seen: Vec<String> = seen.into_iter().collect();
        let expect = |needle: &str| {
            assert!(
                seen.iter().any(|s| s == needle),
                "no {needle:?} among:\n{}",
                seen.join("\n")
            )
        };
        expect("kubectl get pods -n prod => list pods -n prod");
        expect("kubectl get pods -n prod => get /version");
        expect("kubectl get pods -n prod => get /api");
        expect("kubectl get pods -n prod -w => watch pods -n prod");
        expect("kubectl get secret db-creds -n prod -o yaml => get secrets prod/db-creds");
        expect("kubectl get secrets -A => list secrets");
        expect("kubectl delete deployment web -n prod => delete apps/deployments prod/web");
        expect(
            "kubectl create secret generic x --from-literal=a=b -n staging => create secrets -n staging",
        );
        expect("kubectl logs web-0 -n prod => get pods/log prod/web-0");
        expect(
            r#"kubectl exec web-0 -n prod -- sh -c 'id; cat /etc/hostname' => create pods/exec prod/web-0 ["sh", "-c", "id; cat /etc/hostname"]"#,
        );
        expect(
            r#"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl exec web-0 -n prod -- sh -c 'id; cat /etc/hostname' => create pods/exec prod/web-0 ["sh", "-c", "id; cat /etc/hostname"]"#,
        );
        expect(
            "kubectl auth can-i get secrets -n prod => create authorization.k8s.io/selfsubjectaccessreviews",
        );
    }

    #[test]
    fn unknown_methods_keep_their_name() {
        let r = req("OPTIONS", "/api/v1/namespaces/a/pods");
        assert_eq!(r.verb, "options");
        assert!(r.resource_request);
    }
}

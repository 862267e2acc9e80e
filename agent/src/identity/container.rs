//! Identity of a containerised workload: which container a cgroup belongs to (from
//! the cgroup path alone), and what the runtime says about it (name, image, labels,
//! Kubernetes pod) when its Docker Engine API socket can be read.
//!
//! Looking a container up must never hold a connection back for long: every
//! request to a runtime has a hard timeout, answers are cached per container id,
//! and concurrent lookups of one id share a single request.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::UnixStream, sync::OnceCell};

/// The container runtime that made a container (as told by its cgroup path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// Docker Engine (`docker-<id>.scope`, `docker/<id>`).
    Docker,
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`, or a bare id in a
    /// cgroupfs-driver pod cgroup).
    Containerd,
    /// Podman, rootful or rootless (`libpod-<id>.scope`, `libpod_parent/libpod-<id>`).
    Podman,
    /// CRI-O (`crio-<id>.scope`).
    CriO,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Podman => "podman",
            Runtime::CriO => "cri-o",
        })
    }
}

/// A container as its cgroup path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime whose naming scheme the path follows.
    pub runtime: Runtime,
    /// The full container id: 64 lowercase hex digits.
    pub id: String,
    /// The Kubernetes pod UID when the container sits in a kubepods cgroup
    /// (underscores of the systemd slice name turned back into dashes).
    pub pod_uid: Option<String>,
}

/// The container a process in cgroup `path` (relative to the cgroup2 root, with or
/// without a leading `/`) belongs to, or `None` for a process outside containers.
///
/// Recognised, for each runtime's systemd and cgroupfs drivers:
///  - Docker: `docker-<id>.scope` (systemd), `docker/<id>` (cgroupfs);
///  - Podman: `libpod-<id>.scope` wherever it is (`machine.slice`, a rootless user's
///    `user@UID.service/...`), `libpod-<id>` (cgroupfs, under `libpod_parent`); not
///    `libpod-conmon-<id>.scope`, the container's monitor process;
///  - containerd: `cri-containerd-<id>.scope`; with the cgroupfs driver a bare
///    `<id>` directly in a `kubepods/.../pod<uid>` cgroup (a runtime that puts bare
///    ids there, cri-dockerd, is indistinguishable from the path and taken for
///    containerd, the common case since Kubernetes 1.24);
///  - CRI-O: `crio-<id>.scope` or `crio-<id>` (not `crio-conmon-<id>`).
///
/// A process in a cgroup nested below a container's (`docker-<id>.scope/init.scope`,
/// a container's own sub-cgroups) belongs to that container; with containers nested
/// in containers the innermost one wins. Ids are exactly 64 lowercase hex digits;
/// anything else is not taken for a container id.
pub fn container_of_cgroup(path: &str) -> Option<ContainerRef> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (index, runtime, id) =
        components.iter().enumerate().rev().find_map(|(i, c)| {
            container_component(&components[..i], c).map(|(r, id)| (i, r, id))
        })?;
    let pod_uid = components[..index]
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| pod_uid_of(&components[..i], c));
    Some(ContainerRef {
        runtime,
        id: id.to_owned(),
        pod_uid,
    })
}

/// The runtime and id `component` names, given the components above it.
fn container_component<'a>(parents: &[&str], component: &'a str) -> Option<(Runtime, &'a str)> {
    // systemd driver: one scope unit per container (`.scope` optional where the
    // runtime's cgroupfs driver uses the same name without it).
    let named: [(&str, Runtime, bool); 4] = [
        ("docker-", Runtime::Docker, true),
        ("cri-containerd-", Runtime::Containerd, true),
        ("crio-", Runtime::CriO, false),
        ("libpod-", Runtime::Podman, false),
    ];
    for (prefix, runtime, scope_required) in named {
        let Some(rest) = component.strip_prefix(prefix) else {
            continue;
        };
        let id = match rest.strip_suffix(".scope") {
            Some(id) => id,
            None if scope_required => continue,
            None => rest,
        };
        if is_container_id(id) {
            return Some((runtime, id));
        }
    }
    // cgroupfs driver: a bare id under `docker/`, or directly in a pod's cgroup.
    if is_container_id(component) {
        let parent = parents.last().copied().unwrap_or("");
        if parent == "docker" {
            return Some((Runtime::Docker, component));
        }
        if pod_uid_of(&parents[..parents.len().saturating_sub(1)], parent).is_some() {
            return Some((Runtime::Containerd, component));
        }
    }
    None
}

/// The pod UID a kubepods pod cgroup names: `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// or `kubepods-pod<uid>.slice` (systemd), `pod<uid>` under a `kubepods` component
/// (cgroupfs).
fn pod_uid_of(parents: &[&str], component: &str) -> Option<String> {
    let uid = if let Some(stem) = component
        .strip_prefix("kubepods-")
        .and_then(|c| c.strip_suffix(".slice"))
    {
        let after = match stem.split_once("-pod") {
            Some(("burstable" | "besteffort", uid)) => uid,
            _ => stem.strip_prefix("pod")?,
        };
        after.replace('_', "-")
    } else {
        let under_kubepods = parents
            .iter()
            .any(|p| *p == "kubepods" || *p == "kubepods.slice");
        if !under_kubepods {
            return None;
        }
        component.strip_prefix("pod")?.to_owned()
    };
    // UUIDs (36 characters), or the 32 hex digits of a static pod's config hash.
    let valid = (32..=36).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
    valid.then_some(uid)
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What is known about a container: always its runtime and id, and what its
/// runtime's API told when it could be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// The runtime that made the container.
    pub runtime: Runtime,
    /// The full container id.
    pub id: String,
    /// The container's name (`docker ps` NAMES), without Docker's leading `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image as given when the container was created (`.Config.Image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The container's labels (image labels included, as the runtime reports them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes pod, from the kubelet's labels and the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodInfo>,
}

/// The Kubernetes pod a container belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PodInfo {
    /// `io.kubernetes.pod.name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `io.kubernetes.pod.namespace`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `io.kubernetes.pod.uid`, or the UID in the kubepods cgroup path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The pod's service account. The kubelet puts none in the labels it gives the
    /// runtime (only pod name, namespace, UID and container name), so this is only
    /// set when a `io.kubernetes.pod.serviceAccountName` label is present, which an
    /// admission webhook or a pod label of that name can add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// `io.kubernetes.container.name`: the container's name in the pod spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
const LABEL_SERVICE_ACCOUNT: &str = "io.kubernetes.pod.serviceAccountName";

/// What a runtime API reports about a container (`GET /containers/<id>/json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Metadata {
    name: Option<String>,
    image: Option<String>,
    labels: BTreeMap<String, String>,
}

impl Metadata {
    /// Extracts `.Name`, `.Config.Image` and `.Config.Labels` from an inspect document.
    fn from_inspect(body: &[u8]) -> Result<Self, serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_slice(body)?;
        let non_empty = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let name = non_empty(doc.get("Name")).map(|n| n.strip_prefix('/').unwrap_or(&n).to_owned());
        let config = doc.get("Config");
        let image = non_empty(config.and_then(|c| c.get("Image")));
        let labels = config
            .and_then(|c| c.get("Labels"))
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Metadata {
            name,
            image,
            labels,
        })
    }
}

/// Builds the info for `r` from what the runtime said (`None`: nothing).
fn container_info(r: &ContainerRef, meta: Option<&Metadata>) -> ContainerInfo {
    let labels = meta.map(|m| m.labels.clone()).unwrap_or_default();
    let label = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
    let pod_name = label(LABEL_POD_NAME);
    let uid = label(LABEL_POD_UID).or_else(|| r.pod_uid.clone());
    let pod = (pod_name.is_some() || uid.is_some()).then(|| PodInfo {
        name: pod_name.unwrap_or_default(),
        namespace: label(LABEL_POD_NAMESPACE).unwrap_or_default(),
        uid: uid.unwrap_or_default(),
        service_account: label(LABEL_SERVICE_ACCOUNT),
        container: label(LABEL_CONTAINER_NAME),
    });
    ContainerInfo {
        runtime: r.runtime,
        id: r.id.clone(),
        name: meta.and_then(|m| m.name.clone()),
        image: meta.and_then(|m| m.image.clone()),
        labels,
        pod,
    }
}

/// Longest a runtime may take to answer one lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);
/// Largest inspect document read (a container with huge labels is cut off, not read).
pub const MAX_BODY: usize = 1 << 20;
/// Containers whose answers are kept; past this the least recently used go.
pub const CACHE_CAPACITY: usize = 4096;
/// How long "nothing known" (no socket, 404, timeout, error) is kept before asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// One cached answer: `Some` from the runtime, `None` for nothing known.
#[derive(Debug)]
struct Answer {
    meta: Option<Arc<Metadata>>,
    at: Instant,
}

struct Entry {
    cell: Arc<OnceCell<Answer>>,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    clock: u64,
}

/// Resolves container ids to their runtime's metadata over the runtimes' Docker
/// Engine API sockets (Docker, and Podman's compatible service), with a timeout,
/// a bounded cache and one request in flight per id.
pub struct ContainerDirectory {
    sockets: Vec<(Runtime, PathBuf)>,
    timeout: Duration,
    negative_ttl: Duration,
    capacity: usize,
    cache: Mutex<Cache>,
}

impl ContainerDirectory {
    /// A directory asking `sockets`: for each container, the sockets of its runtime,
    /// in order, until one knows it. containerd and CRI-O speak only gRPC (CRI), so
    /// their containers get no metadata here beyond the cgroup path's.
    pub fn new(sockets: Vec<(Runtime, PathBuf)>) -> Self {
        ContainerDirectory {
            sockets,
            timeout: LOOKUP_TIMEOUT,
            negative_ttl: NEGATIVE_TTL,
            capacity: CACHE_CAPACITY,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The usual places: Docker's `/var/run/docker.sock` and rootful Podman's API
    /// service `/run/podman/podman.sock` (`podman.socket`).
    pub fn default_sockets() -> Vec<(Runtime, PathBuf)> {
        vec![
            (Runtime::Docker, PathBuf::from("/var/run/docker.sock")),
            (Runtime::Podman, PathBuf::from("/run/podman/podman.sock")),
        ]
    }

    /// What is known about `r`. Never fails and never takes much longer than
    /// [`LOOKUP_TIMEOUT`]: without an answer the info has the runtime, the id and
    /// the pod UID of the cgroup path only.
    pub async fn lookup(&self, r: &ContainerRef) -> ContainerInfo {
        let cell = self.cell(&r.id);
        let answer = cell.get_or_init(|| self.ask(r)).await;
        container_info(r, answer.meta.as_deref())
    }

    /// The cache cell for `id`, fresh when there was none or it held an expired
    /// negative answer; marks it used.
    fn cell(&self, id: &str) -> Arc<OnceCell<Answer>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        if let Some(entry) = cache.entries.get_mut(id) {
            let expired = entry
                .cell
                .get()
                .is_some_and(|a| a.meta.is_none() && a.at.elapsed() >= self.negative_ttl);
            if !expired {
                entry.last_used = now;
                return entry.cell.clone();
            }
            cache.entries.remove(id);
        }
        if cache.entries.len() >= self.capacity {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.entries.remove(&oldest);
            }
        }
        let cell = Arc::new(OnceCell::new());
        cache.entries.insert(
            id.to_owned(),
            Entry {
                cell: cell.clone(),
                last_used: now,
            },
        );
        cell
    }

    /// Asks the sockets of `r`'s runtime in turn, within the timeout altogether.
    async fn ask(&self, r: &ContainerRef) -> Answer {
        let sockets = self.sockets.iter().filter(|(rt, _)| *rt == r.runtime);
        let asked = tokio::time::timeout(self.timeout, async {
            for (_, socket) in sockets {
                match inspect(socket, &r.id).await {
                    Ok(Some(meta)) => return Some(meta),
                    Ok(None) => {
                        tracing::debug!(socket = %socket.display(), id = %r.id, "container unknown to runtime")
                    }
                    Err(why) => {
                        tracing::debug!(socket = %socket.display(), id = %r.id, %why, "no container metadata")
                    }
                }
            }
            None
        })
        .await;
        let meta = asked.unwrap_or_else(|_| {
            tracing::debug!(
                runtime = %r.runtime,
                id = %r.id,
                timeout_ms = self.timeout.as_millis() as u64,
                "container runtime did not answer in time; no container metadata"
            );
            None
        });
        Answer {
            meta: meta.map(Arc::new),
            at: Instant::now(),
        }
    }
}

/// `GET /containers/<id>/json` on the Docker Engine API at `socket`: `Ok(None)` for
/// 404 (no such container), `Err` with the reason for anything else not 200.
async fn inspect(socket: &std::path::Path, id: &str) -> Result<Option<Metadata>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = hyper::Request::get(format!("/containers/{id}/json"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != hyper::StatusCode::OK {
            return Err(format!("status {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Metadata::from_inspect(&body)
            .map(Some)
            .map_err(|e| format!("inspect document: {e}"))
    };
    // The connection is driven here rather than in a spawned task, so a timeout
    // (dropping this future) also closes the socket.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            // Once the connection ends, the exchange finishes with what was read
            // or with the connection's error.
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::UnixListener,
    };

    use super::*;

    const ID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "0d5e8f2a-1b2c-4d3e-9f00-123456789abc";
    const UID_: &str = "0d5e8f2a_1b2c_4d3e_9f00_123456789abc";

    fn of(path: &str) -> Option<(Runtime, String, Option<String>)> {
        container_of_cgroup(path).map(|r| (r.runtime, r.id, r.pod_uid))
    }

    fn plain(runtime: Runtime, id: &str) -> Option<(Runtime, String, Option<String>)> {
        Some((runtime, id.to_owned(), None))
    }

    fn in_pod(runtime: Runtime, id: &str) -> Option<(Runtime, String, Option<String>)> {
        Some((runtime, id.to_owned(), Some(UID.to_owned())))
    }

    #[test]
    fn docker_paths() {
        assert_eq!(
            of(&format!("system.slice/docker-{ID}.scope")),
            plain(Runtime::Docker, ID)
        );
        assert_eq!(
            of(&format!("/system.slice/docker-{ID}.scope")),
            plain(Runtime::Docker, ID)
        );
        assert_eq!(of(&format!("docker/{ID}")), plain(Runtime::Docker, ID));
        assert_eq!(of(&format!("/docker/{ID}")), plain(Runtime::Docker, ID));
        // Nested below the container's own cgroup.
        assert_eq!(
            of(&format!("system.slice/docker-{ID}.scope/init.scope")),
            plain(Runtime::Docker, ID)
        );
        assert_eq!(
            of(&format!("system.slice/docker-{ID}.scope/a/b/c")),
            plain(Runtime::Docker, ID)
        );
        // Docker in Docker: the inner container.
        assert_eq!(
            of(&format!("docker/{ID}/docker/{ID2}")),
            plain(Runtime::Docker, ID2)
        );
        assert_eq!(
            of(&format!("system.slice/docker-{ID}.scope/docker/{ID2}/init")),
            plain(Runtime::Docker, ID2)
        );
    }

    #[test]
    fn podman_paths() {
        assert_eq!(
            of(&format!("machine.slice/libpod-{ID}.scope")),
            plain(Runtime::Podman, ID)
        );
        assert_eq!(
            of(&format!("machine.slice/libpod-{ID}.scope/container")),
            plain(Runtime::Podman, ID)
        );
        assert_eq!(
            of(&format!(
                "user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            plain(Runtime::Podman, ID)
        );
        assert_eq!(
            of(&format!(
                "user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope/container"
            )),
            plain(Runtime::Podman, ID)
        );
        // cgroupfs manager (what rootful podman does on this hybrid host).
        assert_eq!(
            of(&format!("libpod_parent/libpod-{ID}")),
            plain(Runtime::Podman, ID)
        );
        // The monitor is not the container.
        assert_eq!(of(&format!("machine.slice/libpod-conmon-{ID}.scope")), None);
        assert_eq!(of(&format!("libpod_parent/libpod-conmon-{ID}")), None);
    }

    #[test]
    fn kubernetes_paths() {
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            in_pod(Runtime::Containerd, ID)
        );
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
            )),
            in_pod(Runtime::CriO, ID)
        );
        // Guaranteed QoS: no QoS slice.
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            in_pod(Runtime::Containerd, ID)
        );
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"
            )),
            in_pod(Runtime::Docker, ID)
        );
        // cgroupfs driver.
        assert_eq!(
            of(&format!("kubepods/burstable/pod{UID}/{ID}")),
            in_pod(Runtime::Containerd, ID)
        );
        assert_eq!(
            of(&format!("kubepods/pod{UID}/{ID}")),
            in_pod(Runtime::Containerd, ID)
        );
        assert_eq!(
            of(&format!("kubepods/besteffort/pod{UID}/crio-{ID}")),
            in_pod(Runtime::CriO, ID)
        );
        // Static pods: the UID is a 32-digit hash.
        assert_eq!(
            of(&format!(
                "kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"
            )),
            Some((
                Runtime::Containerd,
                ID.to_owned(),
                Some("0123456789abcdef0123456789abcdef".to_owned())
            ))
        );
        // Nested below the container.
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope/sub"
            )),
            in_pod(Runtime::Containerd, ID)
        );
        assert_eq!(
            of(&format!("system.slice/crio-{ID}.scope")),
            plain(Runtime::CriO, ID)
        );
        // The pod's own cgroup, its monitor, and a pod outside kubepods are no container.
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            )),
            None
        );
        assert_eq!(
            of(&format!(
                "kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );
        assert_eq!(of(&format!("pod{UID}/{ID}")), None);
    }

    #[test]
    fn look_alikes_are_not_containers() {
        let upper = ID.to_ascii_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        let not_hex = format!("{}g", &ID[..63]);
        for path in [
            "/".to_owned(),
            String::new(),
            "system.slice/docker.service".to_owned(),
            "system.slice/containerd.service".to_owned(),
            "system.slice/docker.socket".to_owned(),
            "user.slice/user-1000.slice/session-3.scope".to_owned(),
            format!("system.slice/docker-{upper}.scope"),
            format!("system.slice/docker-{short}.scope"),
            format!("system.slice/docker-{long}.scope"),
            format!("system.slice/docker-{not_hex}.scope"),
            format!("system.slice/docker-{ID}.service"),
            format!("system.slice/docker-{ID}"),
            format!("system.slice/docker-{ID}.scope.bak"),
            format!("system.slice/xdocker-{ID}.scope"),
            format!("system.slice/containerd-{ID}.scope"),
            format!("system.slice/cri-containerd-{short}.scope"),
            format!("machine.slice/libpod-{short}.scope"),
            format!("machine.slice/libpod-{ID}.slice"),
            format!("docker/{upper}"),
            format!("docker/{short}"),
            format!("mydocker/{ID}"),
            format!("system.slice/{ID}"),
            ID.to_owned(),
            format!("kubepods/burstable/pod{UID}"),
            format!("kubepods/burstable/podnot-a-uid/{ID}"),
            format!("kubepods/burstable/{ID}"),
        ] {
            assert_eq!(container_of_cgroup(&path), None, "{path}");
        }
    }

    #[test]
    fn runtime_names() {
        let all = [
            Runtime::Docker,
            Runtime::Containerd,
            Runtime::Podman,
            Runtime::CriO,
        ];
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["docker", "containerd", "podman", "cri-o"]);
        for r in all {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.to_string())
            );
        }
    }

    /// Trimmed from `docker inspect` of a container the kubelet started through
    /// cri-dockerd, with the fields around the ones read kept.
    const INSPECT: &str = r#"{
        "Id": "4f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff",
        "Created": "2026-11-30T09:12:44.118237412Z",
        "Path": "/usr/local/bin/billing",
        "Args": ["--listen", ":8080"],
        "State": {"Status": "running", "Running": true, "Pid": 4242},
        "Image": "sha256:9c7a54a9a43cca047013b82af109fe963fde787f63f9e016fdc3384500c2823d",
        "Name": "/k8s_billing_billing-7d4b9c6f5-x2x8q_payments_0d5e8f2a-1b2c-4d3e-9f00-123456789abc_0",
        "RestartCount": 0,
        "HostConfig": {"NetworkMode": "container:abc", "CgroupParent": "kubepods-burstable-pod0d5e8f2a_1b2c_4d3e_9f00_123456789abc.slice"},
        "Config": {
            "Hostname": "billing-7d4b9c6f5-x2x8q",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Image": "registry.example/payments/billing:1.4.2",
            "Labels": {
                "annotation.io.kubernetes.container.hash": "5c4bd0f1",
                "io.kubernetes.container.name": "billing",
                "io.kubernetes.docker.type": "container",
                "io.kubernetes.pod.name": "billing-7d4b9c6f5-x2x8q",
                "io.kubernetes.pod.namespace": "payments",
                "io.kubernetes.pod.uid": "0d5e8f2a-1b2c-4d3e-9f00-123456789abc",
                "io.kubernetes.sandbox.id": "7e0d1c2b3a4958677685a4b3c2d1e0f0ffeeddccbbaa99887766554433221100"
            }
        },
        "NetworkSettings": {"Networks": {}}
    }"#;

    #[test]
    fn extracts_name_image_labels_and_pod() {
        let meta = Metadata::from_inspect(INSPECT.as_bytes()).unwrap();
        let r = ContainerRef {
            runtime: Runtime::Docker,
            id: ID.to_owned(),
            pod_uid: Some(UID.to_owned()),
        };
        let info = container_info(&r, Some(&meta));
        assert_eq!(
            info.name.as_deref(),
            Some("k8s_billing_billing-7d4b9c6f5-x2x8q_payments_0d5e8f2a-1b2c-4d3e-9f00-123456789abc_0")
        );
        assert_eq!(
            info.image.as_deref(),
            Some("registry.example/payments/billing:1.4.2")
        );
        assert_eq!(info.labels.len(), 7);
        assert_eq!(info.labels["io.kubernetes.docker.type"], "container");
        assert_eq!(
            info.pod,
            Some(PodInfo {
                name: "billing-7d4b9c6f5-x2x8q".to_owned(),
                namespace: "payments".to_owned(),
                uid: UID.to_owned(),
                service_account: None,
                container: Some("billing".to_owned()),
            })
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["runtime"], "docker");
        assert_eq!(json["pod"]["namespace"], "payments");
        assert!(json["pod"].get("service_account").is_none());
    }

    #[test]
    fn plain_container_and_nothing_known() {
        // `docker run --name web nginx` without labels: `"Labels": null` in older
        // engines, `{}` in newer.
        let meta = Metadata::from_inspect(
            br#"{"Name":"/web","Config":{"Image":"nginx:1.27","Labels":null}}"#,
        )
        .unwrap();
        let r = ContainerRef {
            runtime: Runtime::Podman,
            id: ID.to_owned(),
            pod_uid: None,
        };
        let info = container_info(&r, Some(&meta));
        assert_eq!(info.name.as_deref(), Some("web"));
        assert_eq!(info.image.as_deref(), Some("nginx:1.27"));
        assert!(info.labels.is_empty() && info.pod.is_none());
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({"runtime": "podman", "id": ID, "name": "web", "image": "nginx:1.27"})
        );
        // Nothing from the runtime: only the cgroup path's facts, the pod UID included.
        let r = ContainerRef {
            runtime: Runtime::Containerd,
            id: ID.to_owned(),
            pod_uid: Some(UID.to_owned()),
        };
        assert_eq!(
            serde_json::to_value(container_info(&r, None)).unwrap(),
            serde_json::json!({"runtime": "containerd", "id": ID, "pod": {"uid": UID}})
        );
        assert!(Metadata::from_inspect(b"not json").is_err());
    }

    /// How the fake runtime answers.
    #[derive(Clone, Copy)]
    enum Mode {
        Inspect,
        NotFound,
        /// Reads the request and never answers.
        Hang,
        /// A 200 with a body larger than [`MAX_BODY`].
        Huge,
    }

    /// A fake Docker Engine API on a unix socket in a temp dir: answers every request
    /// per `mode` and counts the requests it read.
    struct FakeRuntime {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        requests: Arc<AtomicUsize>,
        paths: Arc<Mutex<Vec<String>>>,
    }

    impl FakeRuntime {
        fn start(mode: Mode) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("docker.sock");
            let listener = UnixListener::bind(&socket).unwrap();
            let requests = Arc::new(AtomicUsize::new(0));
            let paths = Arc::new(Mutex::new(Vec::new()));
            let (count, seen) = (requests.clone(), paths.clone());
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let (count, seen) = (count.clone(), seen.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = stream.read(&mut buf).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            head.extend_from_slice(&buf[..n]);
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap()
                            .to_owned();
                        seen.lock().unwrap().push(line);
                        let body = match mode {
                            Mode::Inspect => INSPECT.to_owned(),
                            Mode::NotFound => r#"{"message":"No such container"}"#.to_owned(),
                            Mode::Huge => format!(
                                r#"{{"Name":"/big","Config":{{"Labels":{{"x":"{}"}}}}}}"#,
                                "a".repeat(MAX_BODY)
                            ),
                            Mode::Hang => {
                                // Keep the connection open until the client gives up.
                                let _ = stream.read(&mut buf).await;
                                return;
                            }
                        };
                        let status = match mode {
                            Mode::NotFound => "404 Not Found",
                            _ => "200 OK",
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            });
            FakeRuntime {
                _dir: dir,
                socket,
                requests,
                paths,
            }
        }

        fn directory(&self) -> ContainerDirectory {
            ContainerDirectory::new(vec![(Runtime::Docker, self.socket.clone())])
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    fn docker_ref(id: &str) -> ContainerRef {
        ContainerRef {
            runtime: Runtime::Docker,
            id: id.to_owned(),
            pod_uid: None,
        }
    }

    #[tokio::test]
    async fn asks_the_socket_and_caches_the_answer() {
        let fake = FakeRuntime::start(Mode::Inspect);
        let directory = fake.directory();
        let info = directory.lookup(&docker_ref(ID)).await;
        assert_eq!(
            info.image.as_deref(),
            Some("registry.example/payments/billing:1.4.2")
        );
        assert_eq!(info.pod.as_ref().unwrap().name, "billing-7d4b9c6f5-x2x8q");
        assert_eq!(
            *fake.paths.lock().unwrap(),
            [format!("GET /containers/{ID}/json HTTP/1.1")]
        );
        // Second lookup: from the cache, no second request.
        assert_eq!(directory.lookup(&docker_ref(ID)).await, info);
        assert_eq!(fake.requests(), 1);
        // Another id is asked for.
        directory.lookup(&docker_ref(ID2)).await;
        assert_eq!(fake.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_request() {
        let fake = FakeRuntime::start(Mode::Inspect);
        let directory = Arc::new(fake.directory());
        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let directory = directory.clone();
                tokio::spawn(async move { directory.lookup(&docker_ref(ID)).await })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.unwrap().name.is_some());
        }
        assert_eq!(fake.requests(), 1);
    }

    #[tokio::test]
    async fn not_found_gives_no_metadata_and_is_cached_briefly() {
        let fake = FakeRuntime::start(Mode::NotFound);
        let mut directory = fake.directory();
        let info = directory.lookup(&docker_ref(ID)).await;
        assert_eq!(info, container_info(&docker_ref(ID), None));
        directory.lookup(&docker_ref(ID)).await;
        assert_eq!(fake.requests(), 1, "the negative answer is cached");
        // Once the negative answer is older than its TTL, the runtime is asked again.
        directory.negative_ttl = Duration::ZERO;
        directory.lookup(&docker_ref(ID)).await;
        assert_eq!(fake.requests(), 2);
    }

    #[tokio::test]
    async fn a_hung_runtime_times_out() {
        let fake = FakeRuntime::start(Mode::Hang);
        let directory = fake.directory();
        let started = Instant::now();
        let info = directory.lookup(&docker_ref(ID)).await;
        let took = started.elapsed();
        assert_eq!(info.name, None);
        assert_eq!(info.id, ID);
        assert_eq!(fake.requests(), 1, "the request reached the server");
        assert!(took >= LOOKUP_TIMEOUT, "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The timeout is a cached negative answer: the next connection does not ask
        // (and so does not wait) again.
        directory.lookup(&docker_ref(ID)).await;
        assert_eq!(fake.requests(), 1);
    }

    #[tokio::test]
    async fn an_oversized_answer_is_not_read() {
        let fake = FakeRuntime::start(Mode::Huge);
        let info = fake.directory().lookup(&docker_ref(ID)).await;
        assert_eq!(fake.requests(), 1);
        assert_eq!(info.name, None);
    }

    #[tokio::test]
    async fn a_missing_socket_is_no_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let directory = ContainerDirectory::new(vec![
            (Runtime::Docker, dir.path().join("absent.sock")),
            (Runtime::Podman, dir.path().join("absent.sock")),
        ]);
        let r = docker_ref(ID);
        assert_eq!(directory.lookup(&r).await, container_info(&r, None));
        // A runtime without any socket (containerd speaks CRI only).
        let r = ContainerRef {
            runtime: Runtime::Containerd,
            id: ID.to_owned(),
            pod_uid: Some(UID.to_owned()),
        };
        assert_eq!(directory.lookup(&r).await.pod.unwrap().uid, UID);
    }

    #[tokio::test]
    async fn only_sockets_of_the_containers_runtime_are_asked() {
        let fake = FakeRuntime::start(Mode::Inspect);
        let directory = ContainerDirectory::new(vec![(Runtime::Podman, fake.socket.clone())]);
        let info = directory.lookup(&docker_ref(ID)).await;
        assert_eq!(info.name, None);
        assert_eq!(fake.requests(), 0);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let fake = FakeRuntime::start(Mode::Inspect);
        let mut directory = fake.directory();
        directory.capacity = 2;
        let ids: Vec<String> = (0..3).map(|i| format!("{i:064x}")).collect();
        directory.lookup(&docker_ref(&ids[0])).await;
        directory.lookup(&docker_ref(&ids[1])).await;
        directory.lookup(&docker_ref(&ids[0])).await; // ids[0] used more recently than ids[1]
        directory.lookup(&docker_ref(&ids[2])).await; // evicts ids[1]
        assert_eq!(fake.requests(), 3);
        assert_eq!(directory.cache.lock().unwrap().entries.len(), 2);
        directory.lookup(&docker_ref(&ids[0])).await;
        assert_eq!(fake.requests(), 3, "ids[0] stayed");
        directory.lookup(&docker_ref(&ids[1])).await;
        assert_eq!(fake.requests(), 4, "ids[1] was evicted");
    }
}

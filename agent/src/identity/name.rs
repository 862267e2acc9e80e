//! Workload names derived from cgroup paths, for workloads the config leaves unnamed.

/// Name for a cgroup when the config gives none. The first rule that applies wins,
/// looking at the path components (relative to the cgroup2 mount):
///  - a container (as [`super::container_of_cgroup`] reads it: docker
///    `docker-<id>.scope` or `docker/<id>`, containerd `cri-containerd-<id>.scope`,
///    CRI-O `crio-<id>.scope`, podman `libpod-<id>.scope` or `libpod_parent/libpod-<id>`,
///    kubepods `.../pod<uid>/<id>`): `"container:<first 12 hex>"`, the short id
///    `docker ps` and `crictl ps` show; the deepest one wins, so a container inside a
///    container is named after the inner one;
///  - the deepest systemd `*.service` that is not a user manager
///    (`user@UID.service`): the unit name, e.g. `"backup.service"`;
///  - a login session scope (`session-N.scope` under `user-UID.slice`): the user
///    slice, e.g. `"user-1000.slice"`, because session numbers change every login;
///  - the deepest `*.scope` (systemd-run --scope, CI job scopes): its name;
///  - otherwise the last path component, or `"/"` for the root.
pub fn derive_workload_name(cgroup_path: &str) -> String {
    let components: Vec<&str> = cgroup_path.split('/').filter(|c| !c.is_empty()).collect();

    // The same reading of container cgroups as the session's container identity.
    if let Some(c) = super::container::container_of_cgroup(cgroup_path) {
        return format!("container:{}", &c.id[..12]);
    }

    let service = components
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") && !is_user_manager(c));
    if let Some(service) = service {
        return (*service).to_owned();
    }

    let session = components
        .windows(2)
        .rev()
        .find(|w| is_user_slice(w[0]) && is_session_scope(w[1]));
    if let Some(pair) = session {
        return pair[0].to_owned();
    }

    if let Some(scope) = components.iter().rev().find(|c| c.ends_with(".scope")) {
        return (*scope).to_owned();
    }

    components
        .last()
        .map_or_else(|| "/".to_owned(), |c| (*c).to_owned())
}

/// `user@1000.service`, the per-user systemd instance: the user's services run
/// below it and are the better name.
fn is_user_manager(component: &str) -> bool {
    component
        .strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// `user-1000.slice`.
fn is_user_slice(component: &str) -> bool {
    component
        .strip_prefix("user-")
        .and_then(|rest| rest.strip_suffix(".slice"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// `session-3.scope`, or `session-c1.scope` (logind names greeter sessions so).
fn is_session_scope(component: &str) -> bool {
    component
        .strip_prefix("session-")
        .and_then(|rest| rest.strip_suffix(".scope"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::derive_workload_name as name;

    const ID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";

    #[test]
    fn containers() {
        assert_eq!(
            name(&format!("system.slice/docker-{ID}.scope")),
            "container:4f1e2d3c4b5a"
        );
        assert_eq!(name(&format!("docker/{ID}")), "container:4f1e2d3c4b5a");
        assert_eq!(
            name(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d5e8f2a_1b2c_4d3e_9f00_123456789abc.slice/cri-containerd-{ID}.scope"
            )),
            "container:4f1e2d3c4b5a"
        );
        assert_eq!(
            name(&format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/crio-{ID}.scope"
            )),
            "container:4f1e2d3c4b5a"
        );
        assert_eq!(
            name(&format!("machine.slice/libpod-{ID}.scope/container")),
            "container:4f1e2d3c4b5a"
        );
        assert_eq!(
            name(&format!("libpod_parent/libpod-{ID}")),
            "container:4f1e2d3c4b5a",
            "podman's cgroupfs manager"
        );
        assert_ne!(
            name(&format!("libpod_parent/libpod-conmon-{ID}")),
            "container:4f1e2d3c4b5a",
            "the monitor is not the container"
        );
        assert_eq!(
            name(&format!(
                "kubepods/burstable/pod0d5e8f2a-1b2c-4d3e-9f00-123456789abc/{ID}"
            )),
            "container:4f1e2d3c4b5a"
        );
        // systemd running inside a container: still the container.
        assert_eq!(
            name(&format!(
                "system.slice/docker-{ID}.scope/system.slice/nginx.service"
            )),
            "container:4f1e2d3c4b5a"
        );
    }

    #[test]
    fn not_containers() {
        // podman's conmon monitor is not the container.
        assert_eq!(
            name(&format!("machine.slice/libpod-conmon-{ID}.scope")),
            format!("libpod-conmon-{ID}.scope")
        );
        // A short hex directory under docker/ is not a container id.
        assert_eq!(name("docker/abc123"), "abc123");
        // Nor is a 64-hex directory outside container runtimes' trees.
        assert_eq!(name(&format!("nhi-demo/{ID}")), ID);
        // Runtimes name containers in lower-case hex only; the session's container
        // identity reads the same way, so the two never disagree.
        let upper = ID.to_ascii_uppercase();
        assert_eq!(name(&format!("docker/{upper}")), upper);
    }

    #[test]
    fn systemd_services() {
        assert_eq!(name("system.slice/backup.service"), "backup.service");
        assert_eq!(name("/system.slice/backup.service/"), "backup.service");
        assert_eq!(
            name("system.slice/system-backup.slice/backup@nightly.service"),
            "backup@nightly.service"
        );
        assert_eq!(
            name("user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service"),
            "syncthing.service"
        );
        // A service's own child cgroups (delegation) are named after the service.
        assert_eq!(
            name("system.slice/gitlab-runner.service/job-42"),
            "gitlab-runner.service"
        );
    }

    #[test]
    fn login_sessions() {
        assert_eq!(
            name("user.slice/user-1000.slice/session-3.scope"),
            "user-1000.slice"
        );
        assert_eq!(
            name("user.slice/user-0.slice/session-c1.scope"),
            "user-0.slice"
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(name("system.slice/run-r3d2f1.scope"), "run-r3d2f1.scope");
        assert_eq!(
            name("user.slice/user-1000.slice/user@1000.service/init.scope"),
            "init.scope"
        );
        assert_eq!(name("ci.slice/job-17.scope/step"), "job-17.scope");
    }

    #[test]
    fn fallbacks() {
        assert_eq!(name("nhi-demo"), "nhi-demo");
        assert_eq!(name("nhi-demo/worker"), "worker");
        assert_eq!(name(""), "/");
        assert_eq!(name("/"), "/");
    }
}

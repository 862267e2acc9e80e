//! The cgroup2 tree: where it is mounted, and the mapping between cgroup ids and
//! paths.
//!
//! The eBPF program knows a cgroup only by its id, which is the inode number of
//! its directory in the cgroup2 filesystem (`bpf_get_current_cgroup_id()` returns
//! the kernfs node id, which cgroupfs also reports as `st_ino`). Paths are what the
//! config matches and what people read, so we walk the tree to translate.
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};

use super::IdentityError;

/// A cgroup2 hierarchy, with a cache of cgroup id to path.
#[derive(Debug)]
pub struct CgroupFs {
    root: PathBuf,
    /// id -> path relative to `root`. Cgroup ids are 64-bit and never reused
    /// while the machine is up, so a cached entry can be stale (the cgroup was
    /// removed) but never wrong; each full walk replaces the map, which drops the
    /// entries of removed cgroups.
    cache: Mutex<HashMap<u64, String>>,
}

impl CgroupFs {
    /// Finds the cgroup2 mount from /proc/self/mountinfo, or uses `override_root`
    /// (the config's `cgroup_root`) after checking that it is a cgroup2 filesystem:
    /// anything else would yield inode numbers that are not cgroup ids.
    pub fn discover(override_root: Option<&Path>) -> Result<Self, IdentityError> {
        let root = match override_root {
            Some(root) => root.to_owned(),
            None => {
                let path = PathBuf::from("/proc/self/mountinfo");
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| IdentityError::Io { path, source })?;
                find_cgroup2_mount(&text).ok_or(IdentityError::NoCgroup2Mount)?
            }
        };
        match statfs(&root) {
            Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
            Ok(_) => return Err(IdentityError::NotCgroup2 { path: root }),
            Err(errno) => {
                return Err(IdentityError::Io {
                    path: root,
                    source: errno.into(),
                })
            }
        }
        Ok(CgroupFs {
            root,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The cgroup2 mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walks the whole tree: (cgroup id, relative path) for every cgroup, the root
    /// (`""`) first and every parent before its children. Cgroups that vanish
    /// while we walk, or that we may not read, are skipped: the tree changes under
    /// us all the time and a partial answer is better than none. Also refreshes the
    /// cache used by [`CgroupFs::path_of`].
    pub fn walk(&self) -> Vec<(u64, String)> {
        let cgroups = self.scan();
        let mut cache = self.lock_cache();
        *cache = cgroups.iter().cloned().collect();
        cgroups
    }

    /// The relative path of the cgroup with this id. On a cache miss the tree is
    /// walked again, because the cgroup may have been created since the last walk.
    /// `None` if no such cgroup exists (any more).
    ///
    /// This blocks on file system access: call it from a blocking context
    /// (`tokio::task::spawn_blocking`) in async code.
    pub fn path_of(&self, id: u64) -> Option<String> {
        // Walking with the lock held makes concurrent misses wait for one walk
        // instead of each doing their own.
        let mut cache = self.lock_cache();
        if let Some(path) = cache.get(&id) {
            return Some(path.clone());
        }
        *cache = self.scan().into_iter().collect();
        cache.get(&id).cloned()
    }

    /// The cached path of a cgroup id, without rescanning on a miss (cheap enough
    /// for the connection path; [`CgroupFs::path_of`] is the complete answer).
    pub fn cached_path_of(&self, id: u64) -> Option<String> {
        self.lock_cache().get(&id).cloned()
    }

    /// The id of the cgroup at `rel` (relative to the root; a leading '/' is
    /// ignored), or `None` if there is no such cgroup. Paths that would leave the
    /// cgroup2 mount (`..`) are refused.
    pub fn id_of(&self, rel: &str) -> Option<u64> {
        let rel = rel.trim_start_matches('/').trim_end_matches('/');
        if Path::new(rel)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let meta = std::fs::symlink_metadata(self.root.join(rel)).ok()?;
        if !meta.is_dir() {
            return None;
        }
        let id = meta.ino();
        self.lock_cache().insert(id, rel.to_owned());
        Some(id)
    }

    /// The relative cgroup2 path of a process, from the `0::` line of
    /// /proc/PID/cgroup; `None` if the process is gone or has no cgroup2 line
    /// (a pure cgroup v1 machine).
    pub fn cgroup_of_pid(pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        parse_proc_cgroup(&text)
    }

    fn lock_cache(&self) -> MutexGuard<'_, HashMap<u64, String>> {
        // The map is replaced or extended whole under the lock, so a panic while
        // it was held cannot leave it inconsistent: keep using it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The walk itself, without touching the cache.
    fn scan(&self) -> Vec<(u64, String)> {
        let mut found = Vec::new();
        let root_id = match std::fs::symlink_metadata(&self.root) {
            Ok(meta) => meta.ino(),
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "cannot stat the cgroup2 root");
                return found;
            }
        };
        found.push((root_id, String::new()));
        // Depth-first with an explicit stack: cgroup trees can be deep enough
        // (nested containers) that recursion is not worth the risk.
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.join(&rel);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    skip(&dir, &e);
                    continue;
                }
            };
            let mut children = Vec::new();
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        skip(&dir, &e);
                        continue;
                    }
                };
                // Cgroups are the directories; the files are their controls.
                // DirEntry::file_type does not stat on cgroupfs (d_type is set).
                match entry.file_type() {
                    Ok(t) if t.is_dir() => {}
                    _ => continue,
                }
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) => {
                        skip(&entry.path(), &e);
                        continue;
                    }
                };
                // Cgroup names are UTF-8 in practice (systemd escapes the rest);
                // a lossy name is still better for a human than none.
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                children.push((meta.ino(), child));
            }
            children.sort_by(|a, b| a.1.cmp(&b.1));
            // Reverse onto the stack so that children come out in sorted order.
            for (_, child) in children.iter().rev() {
                stack.push(child.clone());
            }
            found.extend(children);
        }
        found
    }
}

/// Logs why part of the tree was skipped; vanished cgroups are routine.
fn skip(path: &Path, error: &std::io::Error) {
    if error.kind() == ErrorKind::NotFound {
        tracing::trace!(path = %path.display(), "cgroup vanished during the walk");
    } else {
        tracing::debug!(path = %path.display(), %error, "skipping unreadable cgroup");
    }
}

/// The mount point of the first cgroup2 filesystem in mountinfo text, preferring
/// one that shows the whole hierarchy (its root field is "/").
fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // Format (proc(5)): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        if *root == "/" {
            return Some(mount_point);
        }
        fallback.get_or_insert(mount_point);
    }
    fallback
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(value) = bytes.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte three octal digits stand for, if they are octal digits and fit a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u16 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u16::from(d - b'0');
    }
    u8::try_from(value).ok()
}

/// The cgroup2 path from /proc/PID/cgroup text, without its leading '/'.
fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_start_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let hybrid = "\
25 31 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            find_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            find_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A bind mount of a sub-tree is used only when nothing better exists, and
        // escapes are undone.
        let odd = "\
40 30 0:26 /system.slice /mnt/part rw - cgroup2 cgroup2 rw
41 30 0:26 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2_mount(odd),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            find_cgroup2_mount(odd.lines().next().expect("line")),
            Some(PathBuf::from("/mnt/part"))
        );
        assert_eq!(
            find_cgroup2_mount("25 31 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(
            parse_proc_cgroup("12:pids:/x\n0::/system.slice/backup.service\n"),
            Some("system.slice/backup.service".to_owned())
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some(String::new()));
        assert_eq!(parse_proc_cgroup("4:memory:/\n"), None);
    }

    fn real() -> CgroupFs {
        CgroupFs::discover(None).expect("this machine has a cgroup2 mount")
    }

    fn mountinfo_cgroup2_mount() -> PathBuf {
        // Independent of find_cgroup2_mount: the mount point is field 5 of the
        // line whose filesystem type is cgroup2.
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = text
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .expect("a cgroup2 line");
        PathBuf::from(line.split_whitespace().nth(4).expect("field 5"))
    }

    #[test]
    fn discovers_the_real_mount() {
        let fs = real();
        assert_eq!(fs.root(), mountinfo_cgroup2_mount());
        assert!(fs.root().join("cgroup.procs").exists());
        let explicit = CgroupFs::discover(Some(fs.root())).expect("override");
        assert_eq!(explicit.root(), fs.root());
        match CgroupFs::discover(Some(Path::new("/proc"))) {
            Err(IdentityError::NotCgroup2 { path }) => assert_eq!(path, Path::new("/proc")),
            other => panic!("expected NotCgroup2, got {other:?}"),
        }
    }

    #[test]
    fn walk_includes_the_root_with_its_inode() {
        let fs = real();
        let cgroups = fs.walk();
        let root_ino = std::fs::metadata(fs.root()).expect("stat root").ino();
        assert_eq!(cgroups.first(), Some(&(root_ino, String::new())));
        // Every entry names an existing directory with that inode (or one that
        // vanished since), and no path starts with '/'.
        for (id, path) in cgroups.iter().skip(1).take(50) {
            assert!(!path.starts_with('/'), "{path}");
            if let Ok(meta) = std::fs::metadata(fs.root().join(path)) {
                assert_eq!(meta.ino(), *id, "{path}");
            }
        }
        assert_eq!(fs.id_of(""), Some(root_ino));
        assert_eq!(fs.path_of(root_ino).as_deref(), Some(""));
    }

    /// A cgroup created for a test under the real cgroup2 root, removed on drop
    /// (children first, since a cgroup with children cannot be removed).
    struct TempCgroup {
        dirs: Vec<PathBuf>,
    }

    impl TempCgroup {
        fn new(root: &Path) -> Self {
            let name = format!(
                "nhi-agent-test-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            let dir = root.join(name);
            std::fs::create_dir(&dir).expect("create a cgroup (are we root?)");
            TempCgroup { dirs: vec![dir] }
        }

        fn child(&mut self, name: &str) -> PathBuf {
            let dir = self.dirs.last().expect("a dir").join(name);
            std::fs::create_dir(&dir).expect("create a child cgroup");
            self.dirs.push(dir.clone());
            dir
        }
    }

    impl Drop for TempCgroup {
        fn drop(&mut self) {
            for dir in self.dirs.iter().rev() {
                if let Err(e) = std::fs::remove_dir(dir) {
                    eprintln!("cannot remove test cgroup {}: {e}", dir.display());
                }
            }
        }
    }

    #[test]
    fn ids_and_paths_agree_with_stat_even_for_new_cgroups() {
        // Creating cgroups needs root; like the integration tests, skip with a reason
        // unless NHI_REQUIRE_PRIVILEGED=1 makes that a failure.
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("NHI_REQUIRE_PRIVILEGED").as_deref(),
                Ok("1"),
                "this test creates cgroups and needs root"
            );
            eprintln!("SKIPPED ids_and_paths_agree_with_stat_even_for_new_cgroups: not root");
            return;
        }
        let fs = real();
        let mut temp = TempCgroup::new(fs.root());
        let top = temp.dirs[0].clone();
        let top_rel = top
            .strip_prefix(fs.root())
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let top_ino = std::fs::metadata(&top).expect("stat").ino();

        let walked = fs.walk();
        assert!(walked.contains(&(top_ino, top_rel.clone())));
        assert_eq!(fs.id_of(&top_rel), Some(top_ino));
        assert_eq!(fs.id_of(&format!("/{top_rel}")), Some(top_ino));
        assert_eq!(fs.path_of(top_ino), Some(top_rel.clone()));

        // Created after the walk: path_of must miss the cache and rescan.
        let late = temp.child("late");
        let late_ino = std::fs::metadata(&late).expect("stat").ino();
        assert_eq!(fs.path_of(late_ino), Some(format!("{top_rel}/late")));
        assert_eq!(fs.id_of(&format!("{top_rel}/late")), Some(late_ino));

        // Paths that do not exist, leave the mount, or are files.
        assert_eq!(fs.id_of(&format!("{top_rel}/missing")), None);
        assert_eq!(fs.id_of(&format!("{top_rel}/../{top_rel}")), None);
        assert_eq!(fs.id_of("cgroup.procs"), None);

        // Once removed, a cgroup is no longer found after a walk.
        drop(temp);
        fs.walk();
        assert_eq!(fs.path_of(late_ino), None);
        assert_eq!(fs.path_of(top_ino), None);
    }

    #[test]
    fn cgroup_of_our_process() {
        let fs = real();
        let own = CgroupFs::cgroup_of_pid(std::process::id()).expect("our cgroup");
        assert!(!own.starts_with('/'));
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("read");
        assert!(text.contains(&format!("0::/{own}\n")), "{text}");
        assert!(
            fs.id_of(&own).is_some(),
            "our cgroup {own:?} exists under the root"
        );
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        assert_eq!(CgroupFs::cgroup_of_pid(pid), None);
    }
}

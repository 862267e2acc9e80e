//! Writing a file so that readers see either its old contents or all of the new: the
//! one implementation behind the seals and checkpoints, the state files, the shipping
//! cursor and the agent's CA and SSH keys.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Which step of [`write`] failed, on which path.
#[derive(Debug)]
pub struct AtomicWriteError {
    /// `"cannot create"`, `"cannot write"`, `"cannot rename into place"`, ...
    pub op: &'static str,
    /// The temporary file, the target, or the directory.
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `contents` to `path` through `<path>.tmp`, created with `mode` (less the
/// umask; a leftover of a crash is removed first, so the mode is never an old file's),
/// fsynced and renamed into place; then fsyncs the directory so the rename survives a
/// power loss. A key written with 0600 is never readable by others, not even briefly.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let fail = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { op, path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot remove the leftover", &tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail("cannot create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(fail("cannot write", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(fail("cannot rename into place", path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("cannot fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_the_file_whole_with_the_mode_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        // A leftover temporary file with a wide mode, as a crash would leave.
        fs::write(dir.path().join("key.pem.tmp"), "stale").expect("write");
        fs::set_permissions(
            dir.path().join("key.pem.tmp"),
            fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        write(&path, b"first", 0o600).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"first");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write(&path, b"second", 0o600).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["key.pem"], "no temporary file left");
    }

    #[test]
    fn a_failure_names_the_step_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("state.json");
        let err = write(&path, b"x", 0o600).expect_err("no directory");
        assert_eq!(err.op, "cannot create");
        assert_eq!(
            err.path,
            dir.path().join("missing-dir").join("state.json.tmp")
        );
        assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
    }
}

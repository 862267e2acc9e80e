//! Credentials the agent injects on behalf of a workload: a [`Secret`] that cannot be
//! printed, and the [`CredentialSource`] it is loaded from.
//!
//! A proxy target may hold a database password so that the intercepted client needs
//! none: the agent answers the server's authentication challenge itself. The secret
//! must never reach the client, the journal or the logs, so:
//!
//! * [`Secret`] has a redacting `Debug`, no `Display` and no `Serialize`; the bytes are
//!   only reachable through [`Secret::expose`], which makes every use greppable, and
//!   they are zeroized when the last copy is dropped.
//! * [`CredentialError`] names paths and credential names, never file content.
//!
//! **Architecture invariant: secrets the agent injects never reach the client, the
//! journal or the logs.**
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The environment variable systemd sets for a unit with `LoadCredential=` /
/// `SetCredential=`: the directory holding one file per credential.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The largest secret file accepted. A password or token is a few hundred bytes at
/// most; the bound keeps a misconfigured path (a log, a device) from being read into
/// memory whole.
pub const MAX_SECRET_LEN: u64 = 64 * 1024;

/// A secret value: zeroized on drop; `Debug` prints `Secret([redacted])`; no `Display`,
/// no `Serialize`.
///
/// Cloning is allowed (a connection may need its own copy); each copy zeroizes its own
/// buffer when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: Zeroizing<Vec<u8>>,
}

impl Secret {
    /// Takes ownership of `bytes` (no copy is made, so no un-zeroized copy is left
    /// behind by this call).
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// The secret bytes. Every call site is a place where the secret leaves this type:
    /// keep them few and never pass the result to a logger or the journal.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// The secret as UTF-8 text.
    pub fn expose_str(&self) -> Result<&str, CredentialError> {
        std::str::from_utf8(&self.bytes).map_err(|_| CredentialError::NotUtf8)
    }

    /// The length in bytes (not secret in itself, and useful in diagnostics).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty (a loaded secret never is).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where a target's password comes from. Configuration: `password_file = "/path"`
/// ([`CredentialSource::File`]) or `credential = "name"` ([`CredentialSource::Systemd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A file holding the secret, readable by its owner only.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=name:/path` in the unit): the file
    /// `$CREDENTIALS_DIRECTORY/name`.
    Systemd(String),
}

impl fmt::Display for CredentialSource {
    /// Where the secret comes from, for logs and errors (never the secret itself).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::File(path) => write!(f, "password file {}", path.display()),
            CredentialSource::Systemd(name) => write!(f, "systemd credential {name:?}"),
        }
    }
}

impl CredentialSource {
    /// Reads the secret.
    ///
    /// * `File`: the whole file minus ONE trailing `"\n"` or `"\r\n"` (an editor's final
    ///   newline is not part of a password; any other whitespace is kept). Refused: a
    ///   file whose mode grants the group or others any permission (`mode & 0o077 != 0`,
    ///   libpq's rule for `.pgpass` and ssh's for private keys), anything but a regular
    ///   file (symlinks are followed, so a mounted secret's `..data` link works), a file
    ///   over [`MAX_SECRET_LEN`], an empty secret, and a secret containing a NUL byte
    ///   (no protocol the agent answers for can carry one; refusing it at load time
    ///   beats a login that fails later for no visible reason).
    /// * `Systemd`: the same rules for `$CREDENTIALS_DIRECTORY/<name>` (systemd writes
    ///   those files with mode 0400); an error naming the variable if it is unset, and
    ///   a name that is not a single path component is refused.
    ///
    /// Errors name the path, never the content.
    pub fn load(&self) -> Result<Secret, CredentialError> {
        match self {
            CredentialSource::File(path) => load_file(path),
            CredentialSource::Systemd(name) => {
                load_systemd(std::env::var_os(CREDENTIALS_DIRECTORY).as_deref(), name)
            }
        }
    }
}

/// Errors loading a credential. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be opened or read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file grants the group or others some permission.
    #[error(
        "secret file {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600 or 400)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// Not a regular file (a directory, FIFO, socket, device).
    #[error("secret file {path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    /// Larger than [`MAX_SECRET_LEN`].
    #[error("secret file {path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    /// Empty, or only a newline.
    #[error("secret file {path} holds an empty secret")]
    Empty { path: PathBuf },
    /// The secret contains a NUL byte.
    #[error("secret file {path} contains a NUL byte")]
    ContainsNul { path: PathBuf },
    /// `credential = "name"` but the agent was not started with systemd credentials.
    #[error(
        "systemd credential {name:?}: ${CREDENTIALS_DIRECTORY} is not set (add LoadCredential={name}:/path/to/secret to the unit)"
    )]
    NoCredentialsDirectory { name: String },
    /// A credential name that is not a single file name.
    #[error("invalid systemd credential name {name:?}: it must be a file name without '/'")]
    InvalidName { name: String },
    /// [`Secret::expose_str`] on a secret that is not UTF-8.
    #[error("the secret is not valid UTF-8")]
    NotUtf8,
}

/// `CredentialSource::Systemd` with the directory passed in, so tests need not touch
/// the process environment.
fn load_systemd(dir: Option<&OsStr>, name: &str) -> Result<Secret, CredentialError> {
    // systemd credential names are file names; anything that could walk out of the
    // directory is a configuration error, not something to resolve.
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(CredentialError::InvalidName {
            name: name.to_owned(),
        });
    }
    let dir =
        dir.filter(|d| !d.is_empty())
            .ok_or_else(|| CredentialError::NoCredentialsDirectory {
                name: name.to_owned(),
            })?;
    load_file(&Path::new(dir).join(name))
}

fn load_file(path: &Path) -> Result<Secret, CredentialError> {
    let read_err = |source| CredentialError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; on a
    // regular file it changes nothing. The checks run on the opened file (fstat), so a
    // rename between check and read cannot swap the file.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(CredentialError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_LEN {
        return Err(CredentialError::TooLarge {
            path: path.to_owned(),
            limit: MAX_SECRET_LEN,
        });
    }
    let bytes = read_bounded(&mut file, meta.len()).map_err(read_err)?;
    let mut bytes = match bytes {
        Some(bytes) => bytes,
        None => {
            return Err(CredentialError::TooLarge {
                path: path.to_owned(),
                limit: MAX_SECRET_LEN,
            })
        }
    };
    strip_one_newline(&mut bytes);
    if bytes.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_owned(),
        });
    }
    if bytes.contains(&0) {
        return Err(CredentialError::ContainsNul {
            path: path.to_owned(),
        });
    }
    // Moving the Vec out of its Zeroizing wrapper would leave the wrapper empty and the
    // buffer unprotected for no gain; `take` swaps in an empty Vec, so the one buffer
    // that ever held the secret goes straight into the Secret.
    Ok(Secret::new(std::mem::take(&mut *bytes)))
}

/// Reads the whole file into a buffer sized up front (so it is not reallocated, which
/// would leave un-zeroized copies on the heap), or `None` if it is over the limit.
fn read_bounded(file: &mut File, size_hint: u64) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    // +1 so that a file that grew since fstat is detected without reallocating.
    let capacity = usize::try_from(size_hint.min(MAX_SECRET_LEN) + 1).unwrap_or(1);
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_SECRET_LEN + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SECRET_LEN {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Removes one trailing "\n" or "\r\n". Truncation keeps the capacity, which the
/// Zeroizing wrapper wipes (spare capacity included) on drop.
fn strip_one_newline(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes `content` to `name` in `dir` with `mode`.
    fn secret_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn load(path: &Path) -> Result<Secret, CredentialError> {
        CredentialSource::File(path.to_owned()).load()
    }

    #[test]
    fn debug_is_redacted() {
        let secret = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret:#?}"), "Secret([redacted])");
        // Inside other Debug output too.
        let wrapped = format!("{:?}", Some(secret.clone()));
        assert!(!wrapped.contains("hunter2"), "{wrapped}");
        assert_eq!(secret.expose(), b"hunter2");
        assert_eq!(secret.clone().expose_str().unwrap(), "hunter2");
    }

    #[test]
    fn expose_str_refuses_non_utf8() {
        let secret = Secret::new(vec![0xff, 0xfe]);
        assert!(matches!(secret.expose_str(), Err(CredentialError::NotUtf8)));
        assert_eq!(secret.expose(), [0xff, 0xfe]);
    }

    #[test]
    fn strips_exactly_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &[u8]); 7] = [
            (b"pw", b"pw"),
            (b"pw\n", b"pw"),
            (b"pw\r\n", b"pw"),
            (b"pw\n\n", b"pw\n"),
            (b"pw\r\n\r\n", b"pw\r\n"),
            (b" pw \t\n", b" pw \t"),
            (b"pw\r", b"pw\r"),
        ];
        for (i, (content, want)) in cases.iter().enumerate() {
            let path = secret_file(dir.path(), &format!("s{i}"), content, 0o600);
            let secret = load(&path).unwrap();
            assert_eq!(secret.expose(), *want, "content {content:?}");
        }
    }

    #[test]
    fn refuses_group_or_world_access() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [
            0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o666, 0o610, 0o601,
        ] {
            let path = secret_file(dir.path(), "pw", b"topsecret\n", mode);
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, CredentialError::Permissions { mode: m, .. } if m == mode),
                "mode {mode:o}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(!msg.contains("topsecret"), "{msg}");
            std::fs::remove_file(&path).unwrap();
        }
        for mode in [0o600, 0o400, 0o700] {
            let path = secret_file(dir.path(), "pw", b"topsecret\n", mode);
            assert_eq!(load(&path).unwrap().expose(), b"topsecret", "mode {mode:o}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn refuses_empty_secret() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"\n", b"\r\n"] {
            let path = secret_file(dir.path(), "pw", content, 0o600);
            assert!(
                matches!(load(&path), Err(CredentialError::Empty { .. })),
                "{content:?}"
            );
        }
    }

    #[test]
    fn refuses_nul_and_oversized() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "nul", b"pass\0word", 0o600);
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, CredentialError::ContainsNul { .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("pass"));

        let big = vec![b'a'; MAX_SECRET_LEN as usize + 1];
        let path = secret_file(dir.path(), "big", &big, 0o600);
        assert!(matches!(load(&path), Err(CredentialError::TooLarge { .. })));
        let exact = vec![b'a'; MAX_SECRET_LEN as usize];
        let path = secret_file(dir.path(), "exact", &exact, 0o600);
        assert_eq!(load(&path).unwrap().len(), exact.len());
    }

    #[test]
    fn refuses_non_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            load(&sub),
            Err(CredentialError::NotRegularFile { .. })
        ));

        // A FIFO must be refused without blocking on open.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            load(&fifo),
            Err(CredentialError::NotRegularFile { .. })
        ));

        // A symlink to a good file is followed (mounted secrets use them).
        let target = secret_file(dir.path(), "target", b"linked\n", 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(load(&link).unwrap().expose(), b"linked");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = load(&path).unwrap_err();
        match &err {
            CredentialError::Read { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn systemd_credential_from_directory() {
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), "db-password", b"from-systemd\n", 0o400);
        let secret = load_systemd(Some(dir.path().as_os_str()), "db-password").unwrap();
        assert_eq!(secret.expose(), b"from-systemd");

        // Same file rules as password_file.
        secret_file(dir.path(), "loose", b"x", 0o644);
        assert!(matches!(
            load_systemd(Some(dir.path().as_os_str()), "loose"),
            Err(CredentialError::Permissions { .. })
        ));
        let err = load_systemd(Some(dir.path().as_os_str()), "absent").unwrap_err();
        assert!(
            err.to_string()
                .contains(&dir.path().join("absent").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn systemd_credential_without_directory_names_the_variable() {
        for dir in [None, Some(OsStr::new(""))] {
            let err = load_systemd(dir, "db-password").unwrap_err();
            assert!(
                matches!(&err, CredentialError::NoCredentialsDirectory { name } if name == "db-password"),
                "{err:?}"
            );
            assert!(err.to_string().contains("$CREDENTIALS_DIRECTORY"), "{err}");
        }
    }

    #[test]
    fn systemd_credential_name_must_be_a_file_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", ".", "..", "../etc/shadow", "a/b", "/abs"] {
            assert!(
                matches!(
                    load_systemd(Some(dir.path().as_os_str()), name),
                    Err(CredentialError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
    }

    /// `load()` reads the process environment. Tests never set it (setenv races with
    /// getenv in other threads); the directory-taking `load_systemd` is tested above,
    /// and this checks only that `load()` consults the variable.
    #[test]
    fn systemd_load_reads_credentials_directory() {
        let got = CredentialSource::Systemd("nhi-auth-test-absent".into()).load();
        match std::env::var_os(CREDENTIALS_DIRECTORY) {
            None => assert!(matches!(
                got,
                Err(CredentialError::NoCredentialsDirectory { .. })
            )),
            // Run under systemd with credentials: the name does not exist there.
            Some(dir) => match got {
                Err(CredentialError::Read { path, .. }) => {
                    assert_eq!(path, Path::new(&dir).join("nhi-auth-test-absent"))
                }
                other => panic!("{other:?}"),
            },
        }
    }

    #[test]
    fn display_names_the_source_not_the_secret() {
        assert_eq!(
            CredentialSource::File("/etc/nhi/pg.pw".into()).to_string(),
            "password file /etc/nhi/pg.pw"
        );
        assert_eq!(
            CredentialSource::Systemd("pg".into()).to_string(),
            "systemd credential \"pg\""
        );
    }
}

//! The host's secret key for the `hash` strategy, kept in a file. The only IO of the
//! masking module.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The key's length in bytes.
pub const KEY_LEN: usize = 32;

/// Errors of the masking subsystem (only the key file can fail; rules report
/// [`super::MaskProblem`]s).
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// Reading, creating or syncing the key file (or its directory) failed.
    #[error("mask hash key {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file exists but does not hold exactly 32 bytes.
    #[error(
        "mask hash key {path} holds {len} bytes, expected {expected}: it is not a key this agent wrote; \
         move it away to have a new key generated (hashes made with the old key will no longer match)"
    )]
    KeyLength {
        path: PathBuf,
        len: u64,
        expected: usize,
    },
    /// The file can be read or written by its group or by others.
    #[error(
        "mask hash key {path} has mode {mode:04o}: group and others must have no access; \
         run `chmod 600 {path}` if it was not exposed, otherwise replace it"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// The path exists but is not a regular file.
    #[error("mask hash key {path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// The operating system could not provide random bytes.
    #[error("mask hash key {path}: no random bytes for a new key: {source}")]
    Random {
        path: PathBuf,
        #[source]
        source: getrandom::Error,
    },
}

/// The host's secret for keyed hashes: 32 random bytes. Its `Debug` never shows them,
/// and it is not `Clone`: share it with an `Arc`.
pub struct HashKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey([redacted])")
    }
}

impl HashKey {
    /// A key from these bytes (tests, or a key provisioned by other means).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> HashKey {
        HashKey { bytes }
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Reads the key at `path`, or creates it if missing.
    ///
    /// An existing file must be a regular file (symlinks are not followed: the key
    /// is not something to redirect) of exactly 32 bytes with no group or other
    /// permission bits; anything else is refused with an error saying what to do, never
    /// silently replaced, because a new key would change every hash.
    ///
    /// A new key is written to a temporary file beside `path` (created with O_EXCL and
    /// mode 0600, written, fsynced), then hard-linked to `path`, which fails if another
    /// process created it first (then its key is read), and the directory is fsynced.
    /// So `path` never exists half-written, even after a crash.
    pub fn load_or_create(path: &Path) -> Result<HashKey, MaskError> {
        match Self::load(path) {
            Err(MaskError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|source| MaskError::Random {
            path: path.to_owned(),
            source,
        })?;
        let io = |op: &'static str| {
            move |source: io::Error| MaskError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        // A temporary file left by a crash of this same pid is stale.
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io("create"))?;
            file.write_all(&bytes).map_err(io("write"))?;
            file.sync_all().map_err(io("fsync"))?;
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io("link")(e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if !written? {
            // Another process won the race: use its key.
            return Self::load(path);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync directory"))?;
        }
        Ok(HashKey { bytes })
    }

    /// Loads an existing key (mode and length checked); never creates one.
    pub fn load(path: &Path) -> Result<HashKey, MaskError> {
        let io = |op: &'static str| {
            move |source: io::Error| MaskError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        if !meta.is_file() {
            return Err(MaskError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(MaskError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(MaskError::KeyLength {
                path: path.to_owned(),
                len: meta.len(),
                expected: KEY_LEN,
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        file.read_exact(&mut bytes).map_err(io("read"))?;
        Ok(HashKey { bytes })
    }
}

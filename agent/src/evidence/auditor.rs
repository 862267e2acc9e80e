//! Originals sealed for auditors (`[evidence] auditor_recipients`).
//!
//! Masking hides values from the bot and from whoever reads the journal on the host. An
//! auditor sometimes must see what was hidden: with `auditor_recipients` set, the
//! originals a session's masks replaced ([`crate::mask::originals`]) are encrypted with
//! age to those X25519 recipients and journaled as one `sealed_originals` event per
//! record, inside the hash chain, next to the events that carry the masked values. The
//! host holds only the public recipients: nobody on it can read the originals, and
//! `nhi-agent reveal --identity KEY SESSION` (run where the auditor's private key is)
//! shows them beside the masked transcript.
use std::io::{Read, Write};

use age::x25519;
use serde::{Deserialize, Serialize};

use crate::mask::originals::Batch;

/// The event kind of a sealed batch of originals.
pub const SEALED_ORIGINALS: &str = "sealed_originals";

/// The journaled form of one sealed batch: how many values it holds (public, so the
/// transcript can say so), the recipients it is sealed to, and the age file (binary
/// format, base64) whose plaintext is the [`Batch`] as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedOriginals {
    pub values: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
    pub recipients: Vec<String>,
    pub age: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The auditors originals are sealed to.
#[derive(Clone)]
pub struct Auditors {
    recipients: Vec<x25519::Recipient>,
    /// The recipients as configured, for the event.
    names: Vec<String>,
    /// The most original bytes one session seals (beyond it values are counted only).
    pub max_bytes_per_session: u64,
}

impl std::fmt::Debug for Auditors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditors")
            .field("recipients", &self.names)
            .field("max_bytes_per_session", &self.max_bytes_per_session)
            .finish()
    }
}

impl PartialEq for Auditors {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.max_bytes_per_session == other.max_bytes_per_session
    }
}

impl Eq for Auditors {}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditorError {
    #[error("{0:?} is not an age X25519 recipient (age1...): {1}")]
    Recipient(String, String),
    #[error("no auditor recipient given")]
    NoRecipients,
    #[error("cannot seal originals: {0}")]
    Seal(String),
    #[error("cannot read the identity file {path}: {reason}")]
    Identity { path: String, reason: String },
    #[error("the identity does not open these originals (sealed to {0})")]
    NotARecipient(String),
    #[error("sealed originals are damaged: {0}")]
    Damaged(String),
}

impl Auditors {
    /// Parses `age1...` recipients.
    pub fn parse(
        recipients: &[String],
        max_bytes_per_session: u64,
    ) -> Result<Auditors, AuditorError> {
        if recipients.is_empty() {
            return Err(AuditorError::NoRecipients);
        }
        let parsed = recipients
            .iter()
            .map(|r| {
                r.trim()
                    .parse::<x25519::Recipient>()
                    .map_err(|e| AuditorError::Recipient(r.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Auditors {
            names: parsed.iter().map(ToString::to_string).collect(),
            recipients: parsed,
            max_bytes_per_session,
        })
    }

    /// The recipients, as `age1...` strings.
    pub fn recipients(&self) -> &[String] {
        &self.names
    }

    /// Encrypts `batch` to every recipient.
    pub fn seal(&self, batch: &Batch) -> Result<SealedOriginals, AuditorError> {
        let plaintext = serde_json::to_vec(batch).map_err(|e| AuditorError::Seal(e.to_string()))?;
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| AuditorError::Seal(e.to_string()))?;
        let mut sealed = Vec::with_capacity(plaintext.len() + 256);
        let mut writer = encryptor
            .wrap_output(&mut sealed)
            .map_err(|e| AuditorError::Seal(e.to_string()))?;
        writer
            .write_all(&plaintext)
            .and_then(|()| writer.finish().map(|_| ()))
            .map_err(|e| AuditorError::Seal(e.to_string()))?;
        use base64::Engine as _;
        Ok(SealedOriginals {
            values: batch.values.len() as u64,
            omitted: batch.omitted,
            recipients: self.names.clone(),
            age: base64::engine::general_purpose::STANDARD.encode(sealed),
        })
    }
}

/// An auditor's private keys, from an age identity file (`age-keygen -o auditor.key`).
pub struct Identities {
    identities: Vec<Box<dyn age::Identity>>,
}

impl Identities {
    /// Reads an identity file (one `AGE-SECRET-KEY-1...` per line, `#` comments).
    pub fn from_file(path: &std::path::Path) -> Result<Identities, AuditorError> {
        let error = |reason: String| AuditorError::Identity {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let identities = age::IdentityFile::from_buffer(&text[..])
            .map_err(|e| error(e.to_string()))?
            .into_identities()
            .map_err(|e| error(e.to_string()))?;
        if identities.is_empty() {
            return Err(error("it holds no identity".into()));
        }
        Ok(Identities { identities })
    }

    /// Decrypts one sealed batch.
    pub fn open(&self, sealed: &SealedOriginals) -> Result<Batch, AuditorError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed.age)
            .map_err(|e| AuditorError::Damaged(e.to_string()))?;
        let decryptor =
            age::Decryptor::new(&bytes[..]).map_err(|e| AuditorError::Damaged(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => {
                    AuditorError::NotARecipient(sealed.recipients.join(", "))
                }
                other => AuditorError::Damaged(other.to_string()),
            })?;
        let mut plaintext = Vec::new();
        reader
            .read_to_end(&mut plaintext)
            .map_err(|e| AuditorError::Damaged(e.to_string()))?;
        serde_json::from_slice(&plaintext).map_err(|e| AuditorError::Damaged(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::originals::Original;
    use age::secrecy::ExposeSecret;

    fn batch() -> Batch {
        Batch {
            values: vec![Original {
                rule: "contact".into(),
                masked: "[redacted]".into(),
                original: "alice@example.com".into(),
            }],
            omitted: 2,
        }
    }

    fn identity_file(
        dir: &std::path::Path,
        name: &str,
        id: &x25519::Identity,
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("# test\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        path
    }

    #[test]
    fn a_recipient_opens_what_was_sealed_and_another_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let auditor = x25519::Identity::generate();
        let second = x25519::Identity::generate();
        let stranger = x25519::Identity::generate();
        let auditors = Auditors::parse(
            &[
                auditor.to_public().to_string(),
                second.to_public().to_string(),
            ],
            1 << 20,
        )
        .unwrap();
        let sealed = auditors.seal(&batch()).unwrap();
        assert_eq!(sealed.values, 1);
        assert_eq!(sealed.omitted, 2);
        assert!(!sealed.age.contains("alice"));
        for key in [&auditor, &second] {
            let ids = Identities::from_file(&identity_file(dir.path(), "k", key)).unwrap();
            assert_eq!(ids.open(&sealed).unwrap(), batch());
        }
        let ids = Identities::from_file(&identity_file(dir.path(), "s", &stranger)).unwrap();
        assert!(matches!(
            ids.open(&sealed),
            Err(AuditorError::NotARecipient(_))
        ));
        let mut damaged = sealed.clone();
        damaged.age.replace_range(80..84, "AAAA");
        assert!(ids.open(&damaged).is_err());
    }

    #[test]
    fn recipients_are_checked() {
        assert!(matches!(
            Auditors::parse(&[], 1),
            Err(AuditorError::NoRecipients)
        ));
        let e = Auditors::parse(&["age1nope".into()], 1).unwrap_err();
        assert!(e.to_string().contains("age1nope"), "{e}");
        let e = Auditors::parse(&["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO".into()], 1).unwrap_err();
        assert!(matches!(e, AuditorError::Recipient(..)));
    }
}

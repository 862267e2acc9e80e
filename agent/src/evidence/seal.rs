//! Segment seals: a compact JWS (EdDSA, `typ: nhi-seal+jwt`) over [`SealPayload`].
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use super::key::{HostKey, PublicKey};
use super::{hex, EvidenceError};

/// The JWS `typ` of a seal.
pub const SEAL_TYP: &str = "nhi-seal+jwt";

/// Why a segment was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealReason {
    Size,
    Age,
    Shutdown,
    Startup,
}

/// What a seal states about its segment (the segment contract's JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealPayload {
    pub v: u32,
    pub host_id: String,
    pub journal_id: String,
    pub segment_seq: u64,
    pub first_event_id: Option<i64>,
    pub last_event_id: Option<i64>,
    pub event_count: u64,
    pub first_at_us: Option<i64>,
    pub last_at_us: Option<i64>,
    /// Hex of the chain hash before this segment's first event.
    pub prev_last_hash: String,
    /// Hex of the hash of this segment's last event (`prev_last_hash` when it has none).
    pub last_hash: String,
    /// Hex SHA-256 of the previous segment's seal, `None` for the first segment.
    pub prev_seal_sha256: Option<String>,
    pub sealed_at_us: i64,
    pub reason: SealReason,
}

/// Signs `payload` with `key`: the compact JWS string (the exact bytes of a `.seal` file).
pub fn sign(payload: &SealPayload, key: &HostKey) -> Result<String, EvidenceError> {
    sign_typed(payload, key, SEAL_TYP)
}

/// Signs any payload as an EdDSA JWS of type `typ` (seals, checkpoints).
pub(crate) fn sign_typed<T: serde::Serialize>(
    payload: &T,
    key: &HostKey,
    typ: &str,
) -> Result<String, EvidenceError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(typ.to_string());
    jsonwebtoken::encode(&header, payload, &EncodingKey::from_ed_der(key.pkcs8()))
        .map_err(|source| EvidenceError::Sign { source })
}

/// Why a seal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealInvalid {
    #[error("not an EdDSA JWS of the expected type: {0}")]
    Format(String),
    #[error("the signature does not verify with the given key")]
    Signature,
}

/// Checks the signature and type of `jws` with `key` and returns its payload.
pub fn verify(jws: &str, key: &PublicKey) -> Result<SealPayload, SealInvalid> {
    verify_typed(jws, key, SEAL_TYP)
}

/// Checks an EdDSA JWS of type `typ` with `key` and returns its payload.
pub(crate) fn verify_typed<T: serde::de::DeserializeOwned>(
    jws: &str,
    key: &PublicKey,
    typ: &str,
) -> Result<T, SealInvalid> {
    let header =
        jsonwebtoken::decode_header(jws).map_err(|e| SealInvalid::Format(e.to_string()))?;
    if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(typ) {
        return Err(SealInvalid::Format(format!(
            "alg {:?}, typ {:?}",
            header.alg, header.typ
        )));
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    // A seal is evidence, not a session token: it never expires.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<T>(jws, &DecodingKey::from_ed_der(&key.0), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => SealInvalid::Signature,
            _ => SealInvalid::Format(e.to_string()),
        })
}

/// The contract's `seal_sha256`: hex SHA-256 of the seal's exact bytes.
pub fn seal_sha256(jws: &str) -> String {
    hex(&Sha256::digest(jws.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> SealPayload {
        SealPayload {
            v: 1,
            host_id: "h".into(),
            journal_id: "j".into(),
            segment_seq: 3,
            first_event_id: Some(10),
            last_event_id: Some(20),
            event_count: 11,
            first_at_us: Some(1),
            last_at_us: Some(2),
            prev_last_hash: "00".repeat(32),
            last_hash: "11".repeat(32),
            prev_seal_sha256: None,
            sealed_at_us: 5,
            reason: SealReason::Size,
        }
    }

    #[test]
    fn a_seal_verifies_with_its_key_only_and_not_after_any_change() {
        let key = HostKey::generate().unwrap();
        let jws = sign(&payload(), &key).unwrap();
        assert_eq!(jws.split('.').count(), 3);
        assert_eq!(verify(&jws, &key.public()).unwrap(), payload());
        let other = HostKey::generate().unwrap();
        assert_eq!(verify(&jws, &other.public()), Err(SealInvalid::Signature));
        // Any change of the payload part breaks the signature.
        let mut p = payload();
        p.event_count = 12;
        let forged = sign(&p, &other).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let forged_parts: Vec<&str> = forged.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
        assert!(verify(&spliced, &key.public()).is_err());
        assert_eq!(seal_sha256(&jws).len(), 64);
        assert_ne!(seal_sha256(&jws), seal_sha256(&forged));
    }

    #[test]
    fn the_payload_json_has_the_contract_field_names() {
        let json = serde_json::to_value(payload()).unwrap();
        for key in [
            "v",
            "host_id",
            "journal_id",
            "segment_seq",
            "first_event_id",
            "last_event_id",
            "event_count",
            "first_at_us",
            "last_at_us",
            "prev_last_hash",
            "last_hash",
            "prev_seal_sha256",
            "sealed_at_us",
            "reason",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["reason"], "size");
    }
}

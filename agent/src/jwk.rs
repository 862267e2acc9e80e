//! What a JWK is as a verification key: the one mapping from a JSON Web Key to the
//! algorithms it may verify, shared by OIDC attestation (`attest`) and approval
//! decision tokens (`approvals::token`).
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::Algorithm;

/// The kind of a public key a JWK holds. Symmetric (`oct`) keys and other curves have
/// none: a shared secret can mint tokens as well as verify them, so it is never trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The kind of `jwk`'s key, `None` when it is not a public key the agent trusts.
    pub fn of(jwk: &Jwk) -> Option<KeyKind> {
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(KeyKind::Rsa),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Some(KeyKind::P256),
                EllipticCurve::P384 => Some(KeyKind::P384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(p) => {
                (p.curve == EllipticCurve::Ed25519).then_some(KeyKind::Ed25519)
            }
            AlgorithmParameters::OctetKey(_) => None,
        }
    }

    /// Whether a signature made with `alg` can be checked with a key of this kind.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    /// The algorithm a key of this kind verifies when its JWK pins none.
    pub fn default_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;

    #[test]
    fn public_keys_have_a_kind_and_secrets_none() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-521", "x": "AQ", "y": "AQ"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl", "e": "AQAB"},
            {"kty": "oct", "k": "c2VjcmV0"}
        ]}))
        .expect("jwks");
        let kinds: Vec<_> = set.keys.iter().map(KeyKind::of).collect();
        assert_eq!(
            kinds,
            [
                Some(KeyKind::Ed25519),
                None,
                Some(KeyKind::P256),
                Some(KeyKind::Rsa),
                None
            ]
        );
        assert!(KeyKind::Rsa.verifies(Algorithm::PS512));
        assert!(!KeyKind::Rsa.verifies(Algorithm::ES256));
        assert!(!KeyKind::P256.verifies(Algorithm::ES384));
        assert!(!KeyKind::Ed25519.verifies(Algorithm::HS256));
        for kind in [KeyKind::Rsa, KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            assert!(kind.verifies(kind.default_algorithm()), "{kind:?}");
        }
    }
}

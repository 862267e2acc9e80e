//! `[[oidc_issuer]]` and `[attest]` as serde reads them, and their validation.
//!
//! ```toml
//! [[oidc_issuer]]
//! issuer = "https://token.actions.githubusercontent.com"  # required, unique; the token's `iss`
//! jwks_file = "/etc/nhi-agent/github-actions.jwks"        # required, absolute; fetched out of band
//! audience = "nhi-agent"                                  # required: a string or a list
//! claims = ["repository", "workflow", "ref", "run_id"]    # optional allow-list of claims to bind
//! algorithms = ["RS256"]                                  # optional; default RS256, ES256, EdDSA
//!
//! [attest]
//! socket = "/run/nhi-agent/attest.sock"                   # default; mode 0666
//! ```
//!
//! The JWKS file is not read here (validation is pure): the agent reads it when it starts
//! and at each reload, see [`super::load_issuers`].
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use toml::Spanned;

/// Default `[attest] socket`.
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/nhi-agent/attest.sock";

/// The algorithms accepted when an issuer does not list its own: what GitHub Actions,
/// GitLab and most OIDC providers sign with, and Ed25519.
pub const DEFAULT_ALGORITHMS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// One `[[oidc_issuer]]` table, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidcIssuer {
    issuer: Spanned<String>,
    jwks_file: Spanned<String>,
    audience: Spanned<RawAudience>,
    claims: Option<Spanned<Vec<String>>>,
    algorithms: Option<Vec<Spanned<String>>>,
}

/// `audience`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAudience {
    One(String),
    Many(Vec<String>),
}

/// The `[attest]` table, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttest {
    socket: Option<Spanned<String>>,
}

/// A validation problem in `[[oidc_issuer]]` / `[attest]`: a message and the byte span
/// of the value it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestProblem {
    /// Where the offending value is in the file.
    pub span: Option<std::ops::Range<usize>>,
    /// What is wrong.
    pub message: String,
}

impl AttestProblem {
    fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        AttestProblem {
            span: Some(value.span()),
            message: message.into(),
        }
    }
}

/// One validated `[[oidc_issuer]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// `issuer`: compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// `jwks_file`: the issuer's public keys (a JWKS document).
    pub jwks_file: PathBuf,
    /// `audience`: the token's `aud` must contain one of them.
    pub audience: Vec<String>,
    /// `claims`: the claims bound to the cgroup; `None`: every claim but the registered
    /// JWT ones that only describe the token (exp, iat, nbf, jti, aud).
    pub claims: Option<Vec<String>>,
    /// `algorithms`: the signature algorithms accepted (never HMAC, never `none`).
    pub algorithms: Vec<Algorithm>,
}

/// `[attest]` and every `[[oidc_issuer]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestConfig {
    /// `[attest] socket`: where `nhi-agent attest` reaches the agent.
    pub socket: PathBuf,
    /// The issuers, in file order; attestation is off when there is none.
    pub issuers: Vec<IssuerConfig>,
}

impl Default for AttestConfig {
    fn default() -> Self {
        AttestConfig {
            socket: PathBuf::from(DEFAULT_ATTEST_SOCKET),
            issuers: Vec::new(),
        }
    }
}

impl AttestConfig {
    /// Whether any issuer is configured (the agent serves the socket only then).
    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Validates the `[attest]` table and the `[[oidc_issuer]]` tables.
    pub fn from_raw(
        attest: Option<Spanned<RawAttest>>,
        issuers: Vec<Spanned<RawOidcIssuer>>,
    ) -> Result<AttestConfig, AttestProblem> {
        let socket = match attest.and_then(|a| a.into_inner().socket) {
            None => PathBuf::from(DEFAULT_ATTEST_SOCKET),
            Some(s) => absolute(&s, "socket")?,
        };
        let mut out: Vec<IssuerConfig> = Vec::with_capacity(issuers.len());
        for raw in issuers {
            let raw = raw.into_inner();
            let issuer = raw.issuer.get_ref().clone();
            if issuer.is_empty() {
                return Err(AttestProblem::at(&raw.issuer, "issuer must not be empty"));
            }
            if out.iter().any(|i| i.issuer == issuer) {
                return Err(AttestProblem::at(
                    &raw.issuer,
                    format!("duplicate issuer \"{issuer}\": each [[oidc_issuer]] must name a different issuer"),
                ));
            }
            let jwks_file = absolute(&raw.jwks_file, "jwks_file")?;
            let audience = match raw.audience.get_ref() {
                RawAudience::One(a) => vec![a.clone()],
                RawAudience::Many(list) => list.clone(),
            };
            if audience.is_empty() || audience.iter().any(String::is_empty) {
                return Err(AttestProblem::at(
                    &raw.audience,
                    "audience must be a non-empty string or a list of non-empty strings",
                ));
            }
            let claims = match raw.claims {
                None => None,
                Some(list)
                    if list.get_ref().is_empty() || list.get_ref().iter().any(String::is_empty) =>
                {
                    return Err(AttestProblem::at(
                        &list,
                        "claims = [] would bind nothing; remove it to bind every claim, or list claim names",
                    ));
                }
                Some(list) => Some(list.into_inner()),
            };
            let algorithms = match raw.algorithms {
                None => DEFAULT_ALGORITHMS.to_vec(),
                Some(list) if list.is_empty() => {
                    return Err(AttestProblem {
                        span: None,
                        message: format!("issuer \"{issuer}\": algorithms = [] accepts no token; remove it for the default"),
                    });
                }
                Some(list) => list
                    .iter()
                    .map(parse_algorithm)
                    .collect::<Result<Vec<_>, _>>()?,
            };
            out.push(IssuerConfig {
                issuer,
                jwks_file,
                audience,
                claims,
                algorithms,
            });
        }
        Ok(AttestConfig {
            socket,
            issuers: out,
        })
    }
}

/// An asymmetric JWS algorithm name. HMAC is refused: the agent would need the issuer's
/// shared secret, and anyone holding it could mint tokens.
fn parse_algorithm(value: &Spanned<String>) -> Result<Algorithm, AttestProblem> {
    let name = value.get_ref().as_str();
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "HS256" | "HS384" | "HS512" => Err(AttestProblem::at(
            value,
            format!("algorithm \"{name}\" is HMAC (a shared secret): only public-key algorithms are accepted"),
        )),
        other => Err(AttestProblem::at(
            value,
            format!("unknown algorithm \"{other}\": expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
        )),
    }
}

fn absolute(value: &Spanned<String>, key: &str) -> Result<PathBuf, AttestProblem> {
    let path = PathBuf::from(value.get_ref());
    if value.get_ref().is_empty() || !path.is_absolute() {
        return Err(AttestProblem::at(
            value,
            format!(
                "{key} must be an absolute path (got \"{}\")",
                value.get_ref()
            ),
        ));
    }
    Ok(path)
}

//! AWS APIs as the agent sees them, sans IO: SigV4 signatures (the client's, checked
//! against the placeholder key; the agent's own), which API call a request is
//! ([`action`]), aws-chunked bodies signed chunk by chunk ([`chunked`]), and AWS-shaped
//! errors and the error codes and request ids of responses ([`error`]).
pub mod action;
pub mod chunked;
pub mod error;
pub mod imds;
pub mod sigv4;

/// The name of the mask rule the agent adds to every session of an AWS target.
pub const AWS_SECRET_FIELDS_RULE: &str = "aws-secret-fields";

/// Fields of AWS requests and responses (JSON members, XML elements) that hold secrets,
/// masked for every AWS target: Secrets Manager values, access keys and session tokens
/// (IAM CreateAccessKey, STS), passwords (RDS, IAM login profiles, Directory Service),
/// EC2 key pairs and Windows password data, KMS plaintexts, Cognito client secrets,
/// ECR authorisation tokens.
pub const AWS_SECRET_FIELDS: &[&str] = &[
    "SecretString",
    "SecretBinary",
    "SecretAccessKey",
    "SessionToken",
    "*Password",
    "PasswordData",
    "PrivateKey",
    "KeyMaterial",
    "Plaintext",
    "ClientSecret",
    "AuthorizationToken",
];

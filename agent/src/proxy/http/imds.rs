//! Metadata-service targets (`protocol = "aws-imds"`): the agent answers an intercepted
//! workload's requests for AWS credentials with the *placeholder* credential, so an
//! unmodified SDK's default credential chain finds a credential, signs with it, and
//! the agent (an `aws` target) signs again with the real one. The real secret never
//! enters the workload.
//!
//! Answered (each journaled as an `http_request` with `action = "answered"` and the
//! agent's `http_response`, after policy allowed it like any request):
//! * EC2 instance metadata (IMDSv1 and IMDSv2): `PUT /latest/api/token` (a session
//!   token, accepted back but not required), `GET /latest/meta-data/iam/info`,
//!   `/latest/meta-data/iam/security-credentials/` (the role's name) and
//!   `/latest/meta-data/iam/security-credentials/<role>` (the credential document),
//!   and, with `aws_region`, `/latest/meta-data/placement/region` and
//!   `/latest/meta-data/placement/availability-zone` (`<region>a`); `latest` may be a
//!   dated version.
//! * Container credentials (ECS `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` /
//!   `FULL_URI`, EKS Pod Identity): any other `GET` outside the instance-metadata tree
//!   gets the credential document in the container endpoints' shape.
//!
//! Everything else under the metadata tree (instance identity, user data, network)
//! is forwarded to the real metadata service when policy allows it, refused when a
//! rule denies it.
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::body::Body;
use crate::protocol::aws::sigv4::{PLACEHOLDER_KEY_ID, PLACEHOLDER_SECRET};

/// The session token of the placeholder credential (SDKs send it back as
/// `X-Amz-Security-Token`; an `aws` target drops it).
pub const PLACEHOLDER_TOKEN: &str = "nhi-agent-placeholder-session-token";

/// How long a placeholder credential is said to be valid: SDKs refresh before expiry,
/// and each refresh is journaled.
const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// Per-target state of a metadata-service target.
#[derive(Debug, Clone)]
pub struct ImdsRuntime {
    /// `aws_region`: answered for placement requests (else they are forwarded).
    pub region: Option<String>,
    /// `aws_role_name` (`"nhi-agent"`): the role name the instance appears to have.
    pub role_name: String,
}

/// What the agent answers to one request, if it answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    /// What it is, for the log (`credentials`, `token`, `role name`, ...).
    pub what: &'static str,
}

/// The answer to `method path` (the normalised path), or `None` when the request is
/// not one the agent answers (it is forwarded, if policy allows).
pub fn answer(rt: &ImdsRuntime, method: &str, path: &str, now: SystemTime) -> Option<Answer> {
    let text = |what, body: String| Answer {
        status: StatusCode::OK,
        content_type: "text/plain",
        body,
        what,
    };
    let json = |what, body: serde_json::Value| Answer {
        status: StatusCode::OK,
        content_type: "application/json",
        body: body.to_string(),
        what,
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let metadata_tree = segments
        .first()
        .is_some_and(|v| *v == "latest" || is_version(v));
    if !metadata_tree {
        // Container credential endpoints have no fixed path (ECS gives each task its
        // own relative URI); everything there is a credential request.
        return (method == "GET" && path != "/").then(|| {
            json(
                "container credentials",
                serde_json::json!({
                    "AccessKeyId": PLACEHOLDER_KEY_ID,
                    "SecretAccessKey": PLACEHOLDER_SECRET,
                    "Token": PLACEHOLDER_TOKEN,
                    "Expiration": rfc3339(now + CREDENTIAL_LIFETIME),
                    "RoleArn": format!("arn:aws:iam::000000000000:role/{}", rt.role_name),
                }),
            )
        });
    }
    let rest: Vec<&str> = segments[1..]
        .iter()
        .copied()
        .filter(|s| !s.is_empty())
        .collect();
    match (method, rest.as_slice()) {
        ("PUT", ["api", "token"]) => Some(text("token", PLACEHOLDER_TOKEN.to_owned())),
        ("GET", ["meta-data", "iam", "security-credentials"]) => {
            Some(text("role name", rt.role_name.clone()))
        }
        ("GET", ["meta-data", "iam", "security-credentials", role]) if *role == rt.role_name => {
            Some(json(
                "credentials",
                serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": rfc3339(now),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": PLACEHOLDER_KEY_ID,
                    "SecretAccessKey": PLACEHOLDER_SECRET,
                    "Token": PLACEHOLDER_TOKEN,
                    "Expiration": rfc3339(now + CREDENTIAL_LIFETIME),
                }),
            ))
        }
        ("GET", ["meta-data", "iam", "security-credentials", _]) => Some(Answer {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain",
            body: "Not Found".into(),
            what: "unknown role",
        }),
        ("GET", ["meta-data", "iam", "info"]) => Some(json(
            "instance profile",
            serde_json::json!({
                "Code": "Success",
                "LastUpdated": rfc3339(now),
                "InstanceProfileArn": format!("arn:aws:iam::000000000000:instance-profile/{}", rt.role_name),
                "InstanceProfileId": "AIPANHIAGENTPLACEHOLD",
            }),
        )),
        ("GET", ["meta-data", "placement", "region"]) => {
            rt.region.clone().map(|r| text("region", r))
        }
        ("GET", ["meta-data", "placement", "availability-zone"]) => rt
            .region
            .as_ref()
            .map(|r| text("availability zone", format!("{r}a"))),
        _ => None,
    }
}

/// `2021-07-15`: a dated metadata version.
fn is_version(segment: &str) -> bool {
    let b = segment.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// `2026-12-06T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The HTTP response of an answer.
pub(super) fn response(answer: &Answer) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(answer.body.clone()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = answer.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> ImdsRuntime {
        ImdsRuntime {
            region: Some("eu-west-1".into()),
            role_name: "ci-runner".into(),
        }
    }

    #[test]
    fn the_credential_chain_of_an_sdk_gets_the_placeholder() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_022_400);
        let token = answer(&rt(), "PUT", "/latest/api/token", now).unwrap();
        assert_eq!(token.body, PLACEHOLDER_TOKEN);
        let role = answer(
            &rt(),
            "GET",
            "/latest/meta-data/iam/security-credentials/",
            now,
        )
        .unwrap();
        assert_eq!(role.body, "ci-runner");
        let creds = answer(
            &rt(),
            "GET",
            "/latest/meta-data/iam/security-credentials/ci-runner",
            now,
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&creds.body).unwrap();
        assert_eq!(doc["AccessKeyId"], PLACEHOLDER_KEY_ID);
        assert_eq!(doc["SecretAccessKey"], PLACEHOLDER_SECRET);
        assert_eq!(doc["LastUpdated"], "2025-12-06T12:00:00Z");
        assert_eq!(doc["Expiration"], "2025-12-06T18:00:00Z");
        assert_eq!(
            answer(
                &rt(),
                "GET",
                "/latest/meta-data/iam/security-credentials/other",
                now
            )
            .unwrap()
            .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(&rt(), "GET", "/2021-07-15/meta-data/placement/region", now)
                .unwrap()
                .body,
            "eu-west-1"
        );
        // ECS / EKS container endpoints: any path.
        let ecs = answer(&rt(), "GET", "/v2/credentials/5f0c-4d1e", now).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&ecs.body).unwrap();
        assert_eq!(doc["Token"], PLACEHOLDER_TOKEN);
        // Not answered: forwarded when policy allows.
        for (method, path) in [
            ("GET", "/latest/dynamic/instance-identity/document"),
            ("GET", "/latest/user-data"),
            ("POST", "/latest/meta-data/iam/info"),
            ("GET", "/"),
        ] {
            assert_eq!(answer(&rt(), method, path, now), None, "{method} {path}");
        }
        let no_region = ImdsRuntime {
            region: None,
            ..rt()
        };
        assert_eq!(
            answer(&no_region, "GET", "/latest/meta-data/placement/region", now),
            None
        );
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}

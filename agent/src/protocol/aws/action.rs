//! Which AWS API call a request is: the service (IAM action prefix), the operation, the
//! resources it names and its parameters, read from one HTTP request as an AWS SDK or the
//! CLI sent it (already SigV4-signed). Sans IO: the proxy hands over the request head, the
//! body when [`needs_body`] asked for it, and the service and region of the signature's
//! credential scope; policy and journaling are the caller's.
//!
//! The request faces hostile clients, so anything a server could read in more than one way
//! is refused ([`ClassifyError::Ambiguous`]) rather than guessed: a policy that allows
//! `s3:GetObjectAcl` must not be met by a request S3 executes as something else. That covers
//! two `Action` or `X-Amz-Target` values, duplicate JSON members, S3 query parameters that
//! select two operations or one this module does not know, an `x-id` hint naming another
//! operation, a copy source on an operation that does not copy, and a host under
//! `amazonaws.com` that is not an S3 endpoint shape this module parses (the bucket would
//! otherwise be taken from the wrong place).
//!
//! Protocols, decided in this order:
//!
//! - S3 (signing service `s3`, `s3-object-lambda`, `s3express`): REST-XML, the operation
//!   from the method, the path shape (service, bucket or object) and the query subresources;
//!   the bucket from the host when it is virtual-hosted, else from the first path segment.
//!   The body is never read (objects, possibly huge), so `DeleteObjects` names only its
//!   bucket: its keys are in the XML body.
//! - Smithy RPC v2 CBOR (`smithy-protocol` header or `application/cbor`, which newer SDKs
//!   use for CloudWatch): refused as [`ClassifyError::Unsupported`], since without decoding
//!   the CBOR body the resources it names cannot be seen.
//! - JSON (`X-Amz-Target: Prefix.Operation`): the body is a JSON object whose members are
//!   the parameters.
//! - Query (`Action=` in a form-encoded body or in the query string).
//! - API Gateway (`execute-api`) and Lambda function URLs carry the customer's own API:
//!   `execute-api:Invoke` and `lambda:InvokeFunctionUrl`, whatever the request holds.
//! - Anything else is REST: [`REST_ROUTES`] maps the few routes this module knows, other
//!   requests are reported with `operation: None` for the caller's policy to decide. An
//!   `Action` in the query string of such a service, on a path other than `/`, is
//!   ambiguous (a REST parameter of that name, or a query-protocol call).
//!
//! Bounds: at most [`MAX_PARAMS`] parameters and [`MAX_RESOURCES`] resources, beyond which
//! the request is [`ClassifyError::Malformed`] (truncating could hide a resource from
//! policy). Names and values are kept as given; the caller bounds the body size.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Most parameters one request may carry (query pairs, form pairs, JSON top-level members).
pub const MAX_PARAMS: usize = 1000;
/// Most resources one request may name.
pub const MAX_RESOURCES: usize = 1000;

/// How an API shapes requests and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiProtocol {
    /// awsQuery / ec2Query: `Action=` parameters; XML responses, errors in
    /// `<ErrorResponse><Error><Code>` (EC2: `<Response><Errors><Error><Code>`).
    Query,
    /// awsJson 1.0/1.1: `X-Amz-Target` and a JSON body; errors are JSON with `__type`.
    Json,
    /// restXml (S3, CloudFront, Route 53): errors are `<Error><Code>` XML.
    RestXml,
    /// restJson1: errors are JSON, the code also in the `X-Amzn-ErrorType` header.
    RestJson,
}

/// One AWS API call, as far as the request shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// IAM action prefix: "s3", "iam", "sts", "secretsmanager", "dynamodb", "cloudwatch", ...
    pub service: String,
    /// API operation name as in the API reference ("GetObject", "ListObjectsV2",
    /// "CreateUser", "GetSecretValue"); None when the request is well-formed but not
    /// recognised (REST APIs other than S3 that this module has no mapping for).
    pub operation: Option<String>,
    pub protocol: ApiProtocol,
    /// Resources the request names: for S3 both "bucket" / "bucket/key" and the ARN
    /// "arn:aws:s3:::bucket" / "arn:aws:s3:::bucket/key" (keys percent-decoded; the ARN's
    /// partition follows the region); for other APIs the values of the parameters in
    /// [`RESOURCE_PARAMS`] as given (names or ARNs). Without duplicates; the order carries
    /// no meaning.
    pub resources: Vec<String>,
    /// Request parameters: query-protocol form/query pairs (minus Action and Version), the
    /// JSON body's top-level object for JSON protocols, for S3 the bucket ("Bucket"), key
    /// ("Key") and query parameters plus the headers in [`S3_PARAM_HEADERS`]. Values as JSON
    /// strings (an array of them for a repeated name), or the JSON value for JSON bodies.
    /// SigV4 query authentication parameters (`X-Amz-Credential`, `X-Amz-Security-Token`,
    /// ...) are never included. The caller masks them before journaling.
    pub params: Map<String, Value>,
}

impl Call {
    /// "s3:GetObject"; "lambda:?" when the operation was not recognised (the caller decides
    /// the policy for those).
    pub fn action(&self) -> String {
        match &self.operation {
            Some(operation) => format!("{}:{operation}", self.service),
            None => format!("{}:?", self.service),
        }
    }
}

/// One HTTP request as the client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Host header value (may include ":port"), lower or mixed case.
    pub host: Option<&'a str>,
    /// The request path exactly as sent (percent-encoded), starting with '/'.
    pub path: &'a str,
    /// The raw query string without '?', if any.
    pub query: Option<&'a str>,
    /// All request headers (names in any case).
    pub headers: &'a [(&'a str, &'a str)],
    /// The whole body when the caller buffered it (see [`needs_body`]), else None. It must
    /// be the decoded content: a body still under a `Content-Encoding` does not parse.
    pub body: Option<&'a [u8]>,
    /// Service name from the SigV4 credential scope ("s3", "iam", "sts", "secretsmanager",
    /// "monitoring", "email", "execute-api", ...).
    pub signing_service: &'a str,
    pub region: &'a str,
}

/// Why a request was not classified. The caller should refuse all of them: each is a
/// request whose meaning to AWS this module cannot state with confidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The request can be read as more than one call (or as a call this module cannot
    /// tell from another), e.g. two `Action` values or conflicting S3 subresources.
    #[error("ambiguous AWS request: {0}")]
    Ambiguous(String),
    /// The request is not well-formed for its protocol (bad encoding, no `Action`, a JSON
    /// body that is not an object, an S3 method or path that names no operation).
    #[error("malformed AWS request: {0}")]
    Malformed(String),
    /// [`needs_body`] is true for this request but `body` was None: a caller error.
    #[error("the request body is needed to classify the request but was not buffered")]
    BodyRequired,
    /// A protocol this module recognises but does not decode (Smithy RPC v2 CBOR).
    #[error("unsupported AWS protocol: {0}")]
    Unsupported(String),
}

use ClassifyError::{Ambiguous, Malformed};

/// Signing names whose IAM action prefix differs from the name. Any other signing name is
/// its own prefix (most services sign with their IAM prefix: "iam", "sts", "kms", ...).
/// S3 Object Lambda and S3 Express sign as "s3-object-lambda" and "s3express"; they are
/// folded into "s3" because their requests are the S3 REST API, classified by the same
/// mapping and matched by the same policies (IAM itself has separate prefixes for them).
pub const SERVICE_PREFIXES: &[(&str, &str)] = &[
    ("email", "ses"),
    ("iotdata", "iot"),
    ("monitoring", "cloudwatch"),
    ("s3-object-lambda", "s3"),
    ("s3express", "s3"),
];

/// The IAM action prefix of a SigV4 signing service name (see [`SERVICE_PREFIXES`]).
pub fn service_prefix(signing_service: &str) -> &str {
    SERVICE_PREFIXES
        .iter()
        .find(|(name, _)| *name == signing_service)
        .map_or(signing_service, |(_, prefix)| prefix)
}

/// Parameters whose values name a resource, with the services where they do (empty: every
/// service). Query-protocol list members match by their base name: `InstanceId.1` and
/// `Names.member.2` count as `InstanceId` and `Names`. JSON members match at the top level
/// only (a string, or each string of an array), plus the table names of DynamoDB's
/// `RequestItems` keys and `TransactItems[].<Action>.TableName`; resources nested deeper
/// are not seen, so policy on resources is only as complete as this table.
pub const RESOURCE_PARAMS: &[(&str, &[&str])] = &[
    ("AliasName", &["kms"]),
    ("Arn", &[]),
    ("BucketName", &[]),
    ("DBClusterIdentifier", &[]),
    ("DBInstanceIdentifier", &[]),
    ("DestinationKeyId", &["kms"]),
    ("FunctionName", &[]),
    ("GroupName", &[]),
    ("InstanceId", &[]),
    ("InstanceIds", &[]),
    ("InstanceProfileName", &[]),
    ("KeyId", &["kms"]),
    ("LogGroupIdentifier", &[]),
    ("LogGroupName", &[]),
    ("Name", &["secretsmanager", "ssm"]),
    ("Names", &["ssm"]),
    ("OpenIDConnectProviderArn", &[]),
    ("PolicyArn", &[]),
    ("PolicyName", &[]),
    ("QueueName", &[]),
    ("QueueUrl", &[]),
    ("RepositoryName", &[]),
    ("ResourceARN", &[]),
    ("ResourceArn", &[]),
    ("RoleArn", &[]),
    ("RoleName", &[]),
    ("SAMLProviderArn", &[]),
    ("SecretId", &[]),
    ("SecretIdList", &["secretsmanager"]),
    ("SourceKeyId", &["kms"]),
    ("StackName", &[]),
    ("StateMachineArn", &[]),
    ("StreamARN", &[]),
    ("StreamName", &[]),
    ("SubscriptionArn", &[]),
    ("TableName", &[]),
    ("TargetArn", &[]),
    ("TargetKeyId", &["kms"]),
    ("TopicArn", &[]),
    ("UserName", &[]),
];

/// Services (IAM prefixes) that speak only the query protocol (or JSON with
/// `X-Amz-Target`, or CBOR): a request to them without `Action` is malformed, not REST.
const QUERY_SERVICES: &[&str] = &[
    "autoscaling",
    "cloudformation",
    "cloudwatch",
    "ec2",
    "elasticache",
    "elasticbeanstalk",
    "elasticloadbalancing",
    "iam",
    "rds",
    "redshift",
    "sdb",
    "sns",
    "sqs",
    "sts",
];

/// REST services whose protocol is REST-XML; other unmapped REST services are REST-JSON.
const REST_XML_SERVICES: &[&str] = &["cloudfront", "route53", "s3-outposts"];

/// A REST route this module maps to an operation. Path segments are literal, except
/// `{Name}`, which captures one percent-decoded segment as parameter `Name` (a resource
/// when `Name` is in [`RESOURCE_PARAMS`]). Extending the mapping for another REST API is
/// adding rows here.
pub struct RestRoute {
    pub service: &'static str,
    pub method: &'static str,
    pub path: &'static [&'static str],
    pub operation: &'static str,
}

/// The REST routes mapped outside S3.
pub const REST_ROUTES: &[RestRoute] = &[
    RestRoute {
        service: "lambda",
        method: "POST",
        path: &["2015-03-31", "functions", "{FunctionName}", "invocations"],
        operation: "Invoke",
    },
    RestRoute {
        service: "lambda",
        method: "POST",
        path: &[
            "2021-11-15",
            "functions",
            "{FunctionName}",
            "response-streaming-invocations",
        ],
        operation: "InvokeWithResponseStream",
    },
];

/// SigV4 query authentication (presigned URLs): credentials and signature, not API
/// parameters, and the session token is a secret. Compared without regard to case.
const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-Region-Set",
    "X-Amz-S3session-Token",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
    "X-Amz-SignedHeaders",
];

/// S3 request headers that change what a call does (its ACL, encryption, copy source,
/// object lock, ...), reported in `params` under their lower-case names. User metadata
/// (`x-amz-meta-*`) and checksums are left out.
pub const S3_PARAM_HEADERS: &[&str] = &[
    "x-amz-acl",
    "x-amz-bucket-object-lock-enabled",
    "x-amz-bypass-governance-retention",
    "x-amz-copy-source",
    "x-amz-copy-source-range",
    "x-amz-expected-bucket-owner",
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write",
    "x-amz-grant-write-acp",
    "x-amz-metadata-directive",
    "x-amz-mfa",
    "x-amz-object-lock-legal-hold",
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-ownership",
    "x-amz-request-payer",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
    "x-amz-server-side-encryption-context",
    "x-amz-source-expected-bucket-owner",
    "x-amz-storage-class",
    "x-amz-tagging",
    "x-amz-tagging-directive",
    "x-amz-website-redirect-location",
];

/// S3 query parameters that never change the operation: list paging and filtering,
/// versions, response header overrides. Any other name must be a subresource of
/// [`S3_RULES`], an `x-amz-*` header moved into the query, SigV4 authentication or `x-id`.
const S3_NEUTRAL_PARAMS: &[&str] = &[
    "bucket-region",
    "continuation-token",
    "delimiter",
    "encoding-type",
    "fetch-owner",
    "key-marker",
    "marker",
    "max-buckets",
    "max-directory-buckets",
    "max-keys",
    "max-parts",
    "max-uploads",
    "part-number-marker",
    "prefix",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "start-after",
    "upload-id-marker",
    "version-id-marker",
    "versionId",
];

/// What an S3 request path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// `/` without a bucket: ListBuckets.
    Service,
    Bucket,
    Object,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Service => "the service",
            Level::Bucket => "a bucket",
            Level::Object => "an object",
        })
    }
}

/// One S3 operation: the method, the level and the exact set of subresources (query
/// parameter names, values ignored) that select it; `copies` when it is the variant with
/// an `x-amz-copy-source`.
struct S3Rule {
    level: Level,
    method: &'static str,
    sub: &'static [&'static str],
    copies: bool,
    op: &'static str,
}

const fn rule(
    level: Level,
    method: &'static str,
    sub: &'static [&'static str],
    op: &'static str,
) -> S3Rule {
    S3Rule {
        level,
        method,
        sub,
        copies: false,
        op,
    }
}

const fn copy_rule(
    level: Level,
    method: &'static str,
    sub: &'static [&'static str],
    op: &'static str,
) -> S3Rule {
    S3Rule {
        level,
        method,
        sub,
        copies: true,
        op,
    }
}

const SVC: Level = Level::Service;
const BKT: Level = Level::Bucket;
const OBJ: Level = Level::Object;

/// The S3 operations this module maps. A request matches a rule when its level, method and
/// subresource set are the rule's exactly; no match, with subresources present, is
/// ambiguous.
#[rustfmt::skip]
const S3_RULES: &[S3Rule] = &[
    rule(SVC, "GET", &[], "ListBuckets"),
    // Bucket: lists and the bucket itself.
    rule(BKT, "GET", &[], "ListObjects"),
    rule(BKT, "GET", &["list-type"], "ListObjectsV2"),
    rule(BKT, "GET", &["versions"], "ListObjectVersions"),
    rule(BKT, "GET", &["uploads"], "ListMultipartUploads"),
    rule(BKT, "GET", &["location"], "GetBucketLocation"),
    rule(BKT, "GET", &["session"], "CreateSession"),
    rule(BKT, "PUT", &[], "CreateBucket"),
    rule(BKT, "DELETE", &[], "DeleteBucket"),
    rule(BKT, "HEAD", &[], "HeadBucket"),
    rule(BKT, "POST", &["delete"], "DeleteObjects"),
    // Bucket configuration.
    rule(BKT, "GET", &["policy"], "GetBucketPolicy"),
    rule(BKT, "PUT", &["policy"], "PutBucketPolicy"),
    rule(BKT, "DELETE", &["policy"], "DeleteBucketPolicy"),
    rule(BKT, "GET", &["policyStatus"], "GetBucketPolicyStatus"),
    rule(BKT, "GET", &["acl"], "GetBucketAcl"),
    rule(BKT, "PUT", &["acl"], "PutBucketAcl"),
    rule(BKT, "GET", &["versioning"], "GetBucketVersioning"),
    rule(BKT, "PUT", &["versioning"], "PutBucketVersioning"),
    rule(BKT, "GET", &["tagging"], "GetBucketTagging"),
    rule(BKT, "PUT", &["tagging"], "PutBucketTagging"),
    rule(BKT, "DELETE", &["tagging"], "DeleteBucketTagging"),
    rule(BKT, "GET", &["lifecycle"], "GetBucketLifecycleConfiguration"),
    rule(BKT, "PUT", &["lifecycle"], "PutBucketLifecycleConfiguration"),
    rule(BKT, "DELETE", &["lifecycle"], "DeleteBucketLifecycle"),
    rule(BKT, "GET", &["cors"], "GetBucketCors"),
    rule(BKT, "PUT", &["cors"], "PutBucketCors"),
    rule(BKT, "DELETE", &["cors"], "DeleteBucketCors"),
    rule(BKT, "GET", &["encryption"], "GetBucketEncryption"),
    rule(BKT, "PUT", &["encryption"], "PutBucketEncryption"),
    rule(BKT, "DELETE", &["encryption"], "DeleteBucketEncryption"),
    rule(BKT, "GET", &["publicAccessBlock"], "GetPublicAccessBlock"),
    rule(BKT, "PUT", &["publicAccessBlock"], "PutPublicAccessBlock"),
    rule(BKT, "DELETE", &["publicAccessBlock"], "DeletePublicAccessBlock"),
    rule(BKT, "GET", &["website"], "GetBucketWebsite"),
    rule(BKT, "PUT", &["website"], "PutBucketWebsite"),
    rule(BKT, "DELETE", &["website"], "DeleteBucketWebsite"),
    rule(BKT, "GET", &["logging"], "GetBucketLogging"),
    rule(BKT, "PUT", &["logging"], "PutBucketLogging"),
    rule(BKT, "GET", &["notification"], "GetBucketNotificationConfiguration"),
    rule(BKT, "PUT", &["notification"], "PutBucketNotificationConfiguration"),
    rule(BKT, "GET", &["replication"], "GetBucketReplication"),
    rule(BKT, "PUT", &["replication"], "PutBucketReplication"),
    rule(BKT, "DELETE", &["replication"], "DeleteBucketReplication"),
    rule(BKT, "GET", &["requestPayment"], "GetBucketRequestPayment"),
    rule(BKT, "PUT", &["requestPayment"], "PutBucketRequestPayment"),
    rule(BKT, "GET", &["accelerate"], "GetBucketAccelerateConfiguration"),
    rule(BKT, "PUT", &["accelerate"], "PutBucketAccelerateConfiguration"),
    rule(BKT, "GET", &["ownershipControls"], "GetBucketOwnershipControls"),
    rule(BKT, "PUT", &["ownershipControls"], "PutBucketOwnershipControls"),
    rule(BKT, "DELETE", &["ownershipControls"], "DeleteBucketOwnershipControls"),
    rule(BKT, "GET", &["object-lock"], "GetObjectLockConfiguration"),
    rule(BKT, "PUT", &["object-lock"], "PutObjectLockConfiguration"),
    rule(BKT, "GET", &["analytics"], "ListBucketAnalyticsConfigurations"),
    rule(BKT, "GET", &["analytics", "id"], "GetBucketAnalyticsConfiguration"),
    rule(BKT, "PUT", &["analytics", "id"], "PutBucketAnalyticsConfiguration"),
    rule(BKT, "DELETE", &["analytics", "id"], "DeleteBucketAnalyticsConfiguration"),
    rule(BKT, "GET", &["metrics"], "ListBucketMetricsConfigurations"),
    rule(BKT, "GET", &["metrics", "id"], "GetBucketMetricsConfiguration"),
    rule(BKT, "PUT", &["metrics", "id"], "PutBucketMetricsConfiguration"),
    rule(BKT, "DELETE", &["metrics", "id"], "DeleteBucketMetricsConfiguration"),
    rule(BKT, "GET", &["inventory"], "ListBucketInventoryConfigurations"),
    rule(BKT, "GET", &["inventory", "id"], "GetBucketInventoryConfiguration"),
    rule(BKT, "PUT", &["inventory", "id"], "PutBucketInventoryConfiguration"),
    rule(BKT, "DELETE", &["inventory", "id"], "DeleteBucketInventoryConfiguration"),
    rule(BKT, "GET", &["intelligent-tiering"], "ListBucketIntelligentTieringConfigurations"),
    rule(BKT, "GET", &["intelligent-tiering", "id"], "GetBucketIntelligentTieringConfiguration"),
    rule(BKT, "PUT", &["intelligent-tiering", "id"], "PutBucketIntelligentTieringConfiguration"),
    rule(BKT, "DELETE", &["intelligent-tiering", "id"], "DeleteBucketIntelligentTieringConfiguration"),
    // Objects.
    rule(OBJ, "GET", &[], "GetObject"),
    rule(OBJ, "GET", &["partNumber"], "GetObject"),
    rule(OBJ, "HEAD", &[], "HeadObject"),
    rule(OBJ, "HEAD", &["partNumber"], "HeadObject"),
    rule(OBJ, "PUT", &[], "PutObject"),
    copy_rule(OBJ, "PUT", &[], "CopyObject"),
    rule(OBJ, "DELETE", &[], "DeleteObject"),
    rule(OBJ, "GET", &["acl"], "GetObjectAcl"),
    rule(OBJ, "PUT", &["acl"], "PutObjectAcl"),
    rule(OBJ, "GET", &["tagging"], "GetObjectTagging"),
    rule(OBJ, "PUT", &["tagging"], "PutObjectTagging"),
    rule(OBJ, "DELETE", &["tagging"], "DeleteObjectTagging"),
    rule(OBJ, "GET", &["attributes"], "GetObjectAttributes"),
    rule(OBJ, "GET", &["retention"], "GetObjectRetention"),
    rule(OBJ, "PUT", &["retention"], "PutObjectRetention"),
    rule(OBJ, "GET", &["legal-hold"], "GetObjectLegalHold"),
    rule(OBJ, "PUT", &["legal-hold"], "PutObjectLegalHold"),
    rule(OBJ, "GET", &["torrent"], "GetObjectTorrent"),
    rule(OBJ, "POST", &["restore"], "RestoreObject"),
    rule(OBJ, "POST", &["select", "select-type"], "SelectObjectContent"),
    // Multipart uploads.
    rule(OBJ, "POST", &["uploads"], "CreateMultipartUpload"),
    rule(OBJ, "PUT", &["partNumber", "uploadId"], "UploadPart"),
    copy_rule(OBJ, "PUT", &["partNumber", "uploadId"], "UploadPartCopy"),
    rule(OBJ, "POST", &["uploadId"], "CompleteMultipartUpload"),
    rule(OBJ, "DELETE", &["uploadId"], "AbortMultipartUpload"),
    rule(OBJ, "GET", &["uploadId"], "ListParts"),
];

/// Whether the body must be read (whole, bounded by the caller) to classify the request:
/// query-protocol requests (content-type `application/x-www-form-urlencoded`) and
/// JSON-protocol requests (`X-Amz-Target` present, or content-type
/// `application/x-amz-json-1.0/1.1`). Never for S3 (bodies are objects, possibly huge), for
/// Smithy RPC v2 CBOR (not decoded), nor for API Gateway and Lambda function URLs (the
/// customer's own API, whose Host header `headers` must then hold). The method is not
/// consulted: a form body is read whatever the method, since servers differ on whether they
/// honour a body on a GET.
pub fn needs_body(signing_service: &str, method: &str, headers: &[(&str, &str)]) -> bool {
    let _ = method;
    let service = service_prefix(signing_service);
    let host = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| *value);
    if service == "s3" || is_rpc_v2(headers) || user_endpoint(service, host).is_some() {
        return false;
    }
    headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("x-amz-target")
            || (name.eq_ignore_ascii_case("content-type") && {
                let essence = media_essence(value);
                is_form(essence) || is_amz_json(essence)
            })
    })
}

/// Says which AWS API call a request is. See the module documentation for the protocols
/// and for what is refused.
pub fn classify(req: &Request<'_>) -> Result<Call, ClassifyError> {
    let service = service_prefix(req.signing_service);
    if service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(Malformed(format!(
            "signing service {}",
            snippet(req.signing_service)
        )));
    }
    if service == "s3" {
        return classify_s3(req);
    }
    if let Some(operation) = user_endpoint(service, req.host) {
        let query = match req.query {
            Some(q) => form_pairs(q)?,
            None => Vec::new(),
        };
        return Ok(Call {
            service: service.to_owned(),
            operation: Some(operation.to_owned()),
            protocol: ApiProtocol::RestJson,
            resources: Vec::new(),
            params: query_params(query),
        });
    }
    let content_type = single_header(req.headers, "content-type")?.map(media_essence);
    if is_rpc_v2(req.headers)
        || content_type.is_some_and(|ct| ct.eq_ignore_ascii_case("application/cbor"))
    {
        return Err(ClassifyError::Unsupported(format!(
            "Smithy RPC v2 CBOR request to {service} ({}): the CBOR body is not decoded",
            snippet(req.path)
        )));
    }
    let form = content_type.is_some_and(is_form);
    if form {
        check_form_charset(req.headers)?;
    }
    let query = match req.query {
        Some(q) => form_pairs(q)?,
        None => Vec::new(),
    };

    if let Some(target) = single_header(req.headers, "x-amz-target")? {
        if form {
            return Err(Ambiguous(
                "X-Amz-Target with a form-encoded (query protocol) body".into(),
            ));
        }
        if query.iter().any(|(name, _)| is_action(name)) {
            return Err(Ambiguous("both X-Amz-Target and Action".into()));
        }
        let body = req.body.ok_or(ClassifyError::BodyRequired)?;
        return json_call(service, target, body);
    }
    if content_type.is_some_and(is_amz_json) {
        return Err(Malformed(
            "AWS JSON content type without X-Amz-Target".into(),
        ));
    }

    let body = if form {
        let body = req.body.ok_or(ClassifyError::BodyRequired)?;
        let text = std::str::from_utf8(body)
            .map_err(|_| Malformed("form-encoded body is not UTF-8".into()))?;
        form_pairs(text)?
    } else {
        Vec::new()
    };
    if query.len() + body.len() > MAX_PARAMS {
        return Err(too_many_params());
    }
    match action(&query, &body)? {
        // Query-protocol requests go to `/`, or for SQS to a queue URL; elsewhere an
        // `Action` in the query string may be a REST API's own parameter.
        Some(action) if form || req.path == "/" || QUERY_SERVICES.contains(&service) => {
            query_call(service, action, query, body)
        }
        Some(action) => Err(Ambiguous(format!(
            "Action {} on path {} of {service}, not known to speak the query protocol",
            snippet(&action),
            snippet(req.path)
        ))),
        None if form || QUERY_SERVICES.contains(&service) => {
            Err(Malformed(format!("{service} request without Action")))
        }
        None => rest_call(req, service, query),
    }
}

// ---------------------------------------------------------------------------------------
// JSON protocol

/// The operation of `X-Amz-Target: Prefix.Operation` (the prefix may itself contain dots).
fn target_operation(target: &str) -> Result<&str, ClassifyError> {
    let target = target.trim_matches([' ', '\t']);
    if target.contains(',') {
        return Err(Ambiguous(format!(
            "X-Amz-Target {} holds more than one value",
            snippet(target)
        )));
    }
    let bad = || Malformed(format!("X-Amz-Target {}", snippet(target)));
    let (prefix, operation) = target.rsplit_once('.').ok_or_else(bad)?;
    let prefix_ok = !prefix.is_empty()
        && prefix.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !prefix_ok || !is_operation_name(operation) {
        return Err(bad());
    }
    Ok(operation)
}

fn json_call(service: &str, target: &str, body: &[u8]) -> Result<Call, ClassifyError> {
    let operation = target_operation(target)?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Strict>(body) {
            Ok(Strict(Value::Object(members))) => members,
            Ok(_) => return Err(Malformed("JSON body is not an object".into())),
            Err(e) if e.to_string().starts_with(DUPLICATE_MEMBER) => {
                return Err(Ambiguous(format!("JSON body: {e}")))
            }
            Err(e) => return Err(Malformed(format!("JSON body: {e}"))),
        }
    };
    if params.len() > MAX_PARAMS {
        return Err(too_many_params());
    }
    let mut resources = Vec::new();
    for (name, value) in &params {
        if is_resource_param(service, name) {
            match value {
                Value::String(s) => push_resource(&mut resources, s)?,
                Value::Array(items) => {
                    for item in items {
                        if let Value::String(s) = item {
                            push_resource(&mut resources, s)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if service == "dynamodb" {
        dynamodb_tables(&params, &mut resources)?;
    }
    Ok(Call {
        service: service.to_owned(),
        operation: Some(operation.to_owned()),
        protocol: ApiProtocol::Json,
        resources,
        params,
    })
}

/// DynamoDB batch and transaction calls name their tables below the top level:
/// `RequestItems: {"<table>": ...}` (BatchGetItem, BatchWriteItem) and
/// `TransactItems: [{"Put": {"TableName": ...}}, ...]` (TransactGetItems/TransactWriteItems).
fn dynamodb_tables(
    params: &Map<String, Value>,
    out: &mut Vec<String>,
) -> Result<(), ClassifyError> {
    if let Some(Value::Object(items)) = params.get("RequestItems") {
        for table in items.keys() {
            push_resource(out, table)?;
        }
    }
    if let Some(Value::Array(items)) = params.get("TransactItems") {
        for item in items {
            let Value::Object(item) = item else { continue };
            for action in item.values() {
                if let Some(Value::String(table)) = action.get("TableName") {
                    push_resource(out, table)?;
                }
            }
        }
    }
    Ok(())
}

/// The start of the error [`Strict`] raises for a repeated member.
const DUPLICATE_MEMBER: &str = "duplicate JSON member";

/// A JSON value like [`Value`], but refusing an object with a repeated member at any
/// depth: `serde_json` keeps the last one silently, while another parser may keep the
/// first, so `{"SecretId":"a","SecretId":"b"}` would name one secret to policy and another
/// to AWS. Depth is bounded by `serde_json`'s recursion limit.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(A::Error::custom(format!(
                    "{DUPLICATE_MEMBER} {}",
                    snippet(&name)
                )));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

// ---------------------------------------------------------------------------------------
// Query protocol

/// The one `Action` of a query-protocol request: at most once in the query string and
/// at most once in the body, the same value when in both. Names are compared without
/// regard to case, so that `action=` cannot smuggle a second value past the check.
fn action(
    query: &[(String, String)],
    body: &[(String, String)],
) -> Result<Option<String>, ClassifyError> {
    let one = |pairs: &[(String, String)], place: &str| -> Result<Option<String>, ClassifyError> {
        let mut found = pairs.iter().filter(|(name, _)| is_action(name));
        let first = found.next();
        if found.next().is_some() {
            return Err(Ambiguous(format!(
                "Action given more than once in the {place}"
            )));
        }
        Ok(first.map(|(_, value)| value.clone()))
    };
    let action = match (one(query, "query string")?, one(body, "body")?) {
        (Some(q), Some(b)) if q != b => {
            return Err(Ambiguous(format!(
                "Action {} in the query string and {} in the body",
                snippet(&q),
                snippet(&b)
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Ok(None),
    };
    if !is_operation_name(&action) {
        return Err(Malformed(format!("Action {}", snippet(&action))));
    }
    Ok(Some(action))
}

fn query_call(
    service: &str,
    action: String,
    query: Vec<(String, String)>,
    body: Vec<(String, String)>,
) -> Result<Call, ClassifyError> {
    let mut params = Map::new();
    let mut resources = Vec::new();
    for (name, value) in query.into_iter().chain(body) {
        if is_action(&name) || name.eq_ignore_ascii_case("Version") || is_presign(&name) {
            continue;
        }
        if is_resource_param(service, list_base(&name)) {
            push_resource(&mut resources, &value)?;
        }
        push_param(&mut params, name, Value::String(value));
    }
    Ok(Call {
        service: service.to_owned(),
        operation: Some(action),
        protocol: ApiProtocol::Query,
        resources,
        params,
    })
}

/// The member name of a query-protocol list entry: `InstanceId.3` and `Names.member.1`
/// are `InstanceId` and `Names`; any other name is itself.
fn list_base(name: &str) -> &str {
    let Some((base, rest)) = name.split_once('.') else {
        return name;
    };
    let index = rest.strip_prefix("member.").unwrap_or(rest);
    if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
        base
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------------
// Other REST APIs

fn rest_call(
    req: &Request<'_>,
    service: &str,
    query: Vec<(String, String)>,
) -> Result<Call, ClassifyError> {
    let protocol = if REST_XML_SERVICES.contains(&service) {
        ApiProtocol::RestXml
    } else {
        ApiProtocol::RestJson
    };
    let mut params = Map::new();
    let mut resources = Vec::new();
    let mut operation = None;
    if let Some((route, captures)) = rest_route(req, service)? {
        operation = Some(route.operation.to_owned());
        for (name, value) in captures {
            if is_resource_param(service, name) {
                push_resource(&mut resources, &value)?;
            }
            push_param(&mut params, name.to_owned(), Value::String(value));
        }
    }
    if query.len() + params.len() > MAX_PARAMS {
        return Err(too_many_params());
    }
    for (name, value) in query_params(query) {
        push_param(&mut params, name, value);
    }
    Ok(Call {
        service: service.to_owned(),
        operation,
        protocol,
        resources,
        params,
    })
}

/// Query pairs as parameters, repeated names as arrays, SigV4 authentication left out.
fn query_params(query: Vec<(String, String)>) -> Map<String, Value> {
    let mut params = Map::new();
    for (name, value) in query {
        if !is_presign(&name) {
            push_param(&mut params, name, Value::String(value));
        }
    }
    params
}

/// Endpoints that serve the customer's own HTTP API rather than an AWS API: API Gateway
/// (signed as `execute-api`) and Lambda function URLs (`<id>.lambda-url.<region>.on.aws`,
/// signed as `lambda`). Their paths, query parameters, headers and bodies belong to the
/// customer's API, so an `Action`, an `X-Amz-Target` or a form body means nothing to AWS
/// there; every request is the one IAM action returned here, and names no resource this
/// module can see (the API id or function is behind the host, not in the request).
fn user_endpoint(service: &str, host: Option<&str>) -> Option<&'static str> {
    match service {
        "execute-api" => Some("Invoke"),
        "lambda" if host.is_some_and(is_function_url_host) => Some("InvokeFunctionUrl"),
        _ => None,
    }
}

fn is_function_url_host(host: &str) -> bool {
    let host = strip_port(host.trim()).to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let labels: Vec<&str> = host.split('.').collect();
    matches!(
        labels.as_slice(),
        [id, "lambda-url", region, "on", "aws"] if !id.is_empty() && is_region(region)
    )
}

type Captures = Vec<(&'static str, String)>;

/// The route of [`REST_ROUTES`] the request takes, with its decoded captures. Literal
/// segments are compared as sent (an escaped literal matches nothing, which leaves the
/// request unmapped rather than misread).
fn rest_route(
    req: &Request<'_>,
    service: &str,
) -> Result<Option<(&'static RestRoute, Captures)>, ClassifyError> {
    let Some(path) = req.path.strip_prefix('/') else {
        return Err(Malformed(format!("path {}", snippet(req.path))));
    };
    'routes: for route in REST_ROUTES {
        if route.service != service || route.method != req.method {
            continue;
        }
        let mut segments = path.split('/');
        let mut captures = Vec::new();
        for pattern in route.path {
            let Some(segment) = segments.next() else {
                continue 'routes;
            };
            match pattern.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    if segment.is_empty() {
                        continue 'routes;
                    }
                    let value = percent_decode(segment, false)?;
                    if value.contains('/') {
                        return Err(Ambiguous(format!(
                            "{name} {} holds an encoded '/'",
                            snippet(&value)
                        )));
                    }
                    captures.push((name, value));
                }
                None if segment == *pattern => {}
                None => continue 'routes,
            }
        }
        if segments.next().is_none() {
            return Ok(Some((route, captures)));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// S3

/// Where an S3 request's bucket comes from, by the shape of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum S3Host {
    /// The bucket is the first path segment (`s3.<region>.amazonaws.com`, no host, or a
    /// host outside amazonaws.com: MinIO, LocalStack, a test server).
    PathStyle,
    /// S3 Express regional endpoint: path-style, and `GET /` is ListDirectoryBuckets.
    ExpressControl,
    /// Virtual-hosted: the bucket is in the host, the whole path is the key.
    Virtual(String),
    /// An access point or Object Lambda access point host: the path is the key, resources
    /// are the access point's ARN.
    AccessPoint(String),
    /// The S3 Control API (account-level access points, jobs, ...): not mapped.
    Control,
}

fn classify_s3(req: &Request<'_>) -> Result<Call, ClassifyError> {
    let host = s3_host(req.host, req.region)?;
    let partition = partition(req.host, req.region);
    if host == S3Host::Control {
        let query = match req.query {
            Some(q) => form_pairs(q)?,
            None => Vec::new(),
        };
        let mut call = rest_call(req, "s3", query)?;
        call.protocol = ApiProtocol::RestXml;
        return Ok(call);
    }
    if !matches!(req.method, "GET" | "HEAD" | "PUT" | "POST" | "DELETE") {
        return Err(Malformed(format!("S3 method {}", snippet(req.method))));
    }
    let Some(path) = req.path.strip_prefix('/') else {
        return Err(Malformed(format!("path {}", snippet(req.path))));
    };
    if path.contains(['?', '#']) {
        return Err(Malformed(format!(
            "path {} holds '?' or '#'",
            snippet(req.path)
        )));
    }

    // Bucket (as the request names it) and key.
    let (bucket, key) = match &host {
        S3Host::PathStyle | S3Host::ExpressControl => match path.split_once('/') {
            _ if path.is_empty() => (None, None),
            Some((bucket, key)) => (
                Some(path_bucket(bucket)?),
                non_empty(percent_decode(key, false)?),
            ),
            None => (Some(path_bucket(path)?), None),
        },
        S3Host::Virtual(bucket) | S3Host::AccessPoint(bucket) => (
            Some(bucket.clone()),
            non_empty(percent_decode(path, false)?),
        ),
        // Answered above, before the path is read.
        S3Host::Control => (None, None),
    };
    let level = match (&bucket, &key) {
        (None, _) => Level::Service,
        (Some(_), None) => Level::Bucket,
        (Some(_), Some(_)) => Level::Object,
    };

    // Query: each name at most once; split into subresources and the rest.
    let mut params = Map::new();
    let mut subresources: Vec<&str> = Vec::new();
    let mut x_id = None;
    let mut query_copy_source = None;
    let pairs = match req.query {
        Some(q) => form_pairs(q)?,
        None => Vec::new(),
    };
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(other, _)| other == name) {
            return Err(Ambiguous(format!(
                "S3 query parameter {} given twice",
                snippet(name)
            )));
        }
    }
    let mut list_type = None;
    let mut select_type = None;
    for (name, value) in &pairs {
        if is_presign(name) {
            continue;
        }
        if name == "x-id" {
            x_id = Some(value.as_str());
            continue;
        }
        if name.len() > 6 && name.as_bytes()[..6].eq_ignore_ascii_case(b"x-amz-") {
            // A header moved into the query (presigned URLs do this): S3 honours it as
            // the header.
            let lower = name.to_ascii_lowercase();
            if lower == "x-amz-copy-source" {
                query_copy_source = Some(value.as_str());
            }
            push_param(&mut params, lower, Value::String(value.clone()));
            continue;
        }
        if let Some(sub) = S3_RULES
            .iter()
            .flat_map(|rule| rule.sub.iter())
            .find(|sub| **sub == name)
        {
            subresources.push(*sub);
            match *sub {
                "list-type" => list_type = Some(value.as_str()),
                "select-type" => select_type = Some(value.as_str()),
                _ => {}
            }
        } else if !S3_NEUTRAL_PARAMS.contains(&name.as_str()) {
            return Err(Ambiguous(format!(
                "unknown S3 query parameter {}",
                snippet(name)
            )));
        }
        push_param(&mut params, name.clone(), Value::String(value.clone()));
    }

    let header_copy_source = single_header(req.headers, "x-amz-copy-source")?;
    let copy_source = match (header_copy_source, query_copy_source) {
        (Some(_), Some(_)) => {
            return Err(Ambiguous(
                "x-amz-copy-source both as a header and in the query".into(),
            ))
        }
        (a, b) => a.or(b),
    };

    // The operation.
    let shape: Vec<&S3Rule> = S3_RULES
        .iter()
        .filter(|rule| {
            rule.level == level
                && rule.method == req.method
                && rule.sub.len() == subresources.len()
                && rule.sub.iter().all(|sub| subresources.contains(sub))
        })
        .collect();
    let Some(rule) = shape
        .iter()
        .find(|rule| rule.copies == copy_source.is_some())
    else {
        return Err(match shape.first() {
            Some(rule) => Ambiguous(format!("x-amz-copy-source on {}", rule.op)),
            None if subresources.is_empty() => Malformed(format!(
                "no S3 operation is {} on {level}",
                snippet(req.method)
            )),
            None => Ambiguous(format!(
                "S3 subresources {} select no single operation for {} on {level}",
                snippet(&subresources.join("&")),
                snippet(req.method)
            )),
        });
    };
    if let Some(value) = list_type.filter(|v| *v != "2") {
        return Err(Malformed(format!("list-type {}", snippet(value))));
    }
    if let Some(value) = select_type.filter(|v| *v != "2") {
        return Err(Malformed(format!("select-type {}", snippet(value))));
    }
    let mut operation = rule.op;
    if level == Level::Service && host == S3Host::ExpressControl {
        operation = "ListDirectoryBuckets";
    }
    if let Some(x_id) = x_id {
        if x_id != operation {
            return Err(Ambiguous(format!(
                "x-id {} on a request that is {operation}",
                snippet(x_id)
            )));
        }
    }

    // Resources and the remaining parameters.
    let mut resources = Vec::new();
    match (&host, &bucket, &key) {
        (S3Host::AccessPoint(arn), _, None) => push_resource(&mut resources, arn)?,
        (S3Host::AccessPoint(arn), _, Some(key)) => {
            push_resource(&mut resources, &format!("{arn}/object/{key}"))?;
        }
        (_, Some(bucket), None) => {
            push_resource(&mut resources, bucket)?;
            push_resource(&mut resources, &format!("arn:{partition}:s3:::{bucket}"))?;
        }
        (_, Some(bucket), Some(key)) => {
            push_resource(&mut resources, &format!("{bucket}/{key}"))?;
            push_resource(
                &mut resources,
                &format!("arn:{partition}:s3:::{bucket}/{key}"),
            )?;
        }
        (_, None, _) => {}
    }
    if let Some(source) = copy_source {
        for resource in copy_source_resources(source, partition)? {
            push_resource(&mut resources, &resource)?;
        }
    }
    for (name, value) in req.headers {
        if let Some(known) = S3_PARAM_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(name))
        {
            push_param(
                &mut params,
                (*known).to_owned(),
                Value::String((*value).to_owned()),
            );
        }
    }
    if let Some(bucket) = bucket {
        params.insert("Bucket".into(), Value::String(bucket));
    }
    if let Some(key) = key {
        params.insert("Key".into(), Value::String(key));
    }
    Ok(Call {
        service: "s3".into(),
        operation: Some(operation.to_owned()),
        protocol: ApiProtocol::RestXml,
        resources,
        params,
    })
}

/// A path-style bucket segment, decoded and checked.
fn path_bucket(segment: &str) -> Result<String, ClassifyError> {
    let bucket = percent_decode(segment, false)?;
    if !is_bucket_name(&bucket) {
        return Err(Malformed(format!("bucket name {}", snippet(&bucket))));
    }
    Ok(bucket)
}

/// Bucket names as S3 has allowed them (legacy us-east-1 names included: upper case and
/// `_`, up to 255 characters). What matters here is that no separator or escape slips in.
fn is_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The resources of an `x-amz-copy-source`: `bucket/key` or `/bucket/key` (URL-encoded,
/// optionally `?versionId=...`), or an access point ARN `arn:...:accesspoint/x/object/key`.
fn copy_source_resources(source: &str, partition: &str) -> Result<Vec<String>, ClassifyError> {
    let bad = || Malformed(format!("x-amz-copy-source {}", snippet(source)));
    let (path, version) = match source.split_once('?') {
        Some((path, version)) => (path, Some(version)),
        None => (source, None),
    };
    if let Some(version) = version {
        if !version.starts_with("versionId=") || version.contains('&') {
            return Err(bad());
        }
    }
    let decoded = percent_decode(path.strip_prefix('/').unwrap_or(path), false)?;
    if decoded.starts_with("arn:") {
        if !decoded.contains("/object/") {
            return Err(bad());
        }
        return Ok(vec![decoded]);
    }
    match decoded.split_once('/') {
        Some((bucket, key)) if is_bucket_name(bucket) && !key.is_empty() => Ok(vec![
            format!("{bucket}/{key}"),
            format!("arn:{partition}:s3:::{bucket}/{key}"),
        ]),
        _ => Err(bad()),
    }
}

/// The shape of an S3 host. Hosts under amazonaws.com(.cn) must be an S3 endpoint this
/// function knows, since a virtual-hosted request misread as path-style would name the
/// wrong bucket; any other host (or none) is taken as path-style.
///
/// Known shapes, `[...]` optional, `<b>` a bucket (dots allowed):
/// `[<b>.]s3[-fips][.dualstack].<region>`, `[<b>.]s3[-<region>|-external-1]` (legacy),
/// `<name>-<account>.s3-accesspoint[-fips][.dualstack].<region>`,
/// `<name>-<account>.s3-object-lambda[-fips].<region>`,
/// `[<account>.]s3-control[-fips][.dualstack].<region>`, `<b>.s3express-<zone>.<region>`,
/// `s3express-control.<region>`, and PrivateLink
/// `[<b>.]bucket|accesspoint|control.vpce-<id>.s3.<region>.vpce`.
fn s3_host(host: Option<&str>, region: &str) -> Result<S3Host, ClassifyError> {
    let Some(raw) = host else {
        return Ok(S3Host::PathStyle);
    };
    let lower = strip_port(raw.trim()).to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let Some(rest) = name
        .strip_suffix(".amazonaws.com")
        .or_else(|| name.strip_suffix(".amazonaws.com.cn"))
    else {
        return Ok(S3Host::PathStyle);
    };
    let partition = partition(host, region);
    let unknown = || {
        Ambiguous(format!(
            "host {} is not an S3 endpoint this proxy knows",
            snippet(raw)
        ))
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let n = labels.len();

    // PrivateLink: [<b>.]<kind>.vpce-<id>.s3.<region>.vpce
    if labels[n - 1] == "vpce" {
        if n < 5
            || !is_region(labels[n - 2])
            || labels[n - 3] != "s3"
            || !labels[n - 4].starts_with("vpce-")
        {
            return Err(unknown());
        }
        let prefix = &labels[..n - 5];
        return match labels[n - 5] {
            "bucket" => bucket_host(prefix).ok_or_else(unknown),
            "accesspoint" => {
                access_point(prefix, partition, "s3", labels[n - 2]).ok_or_else(unknown)
            }
            "control" => Ok(S3Host::Control),
            _ => Err(unknown()),
        };
    }

    if is_region(labels[n - 1]) && n >= 2 {
        let region = labels[n - 1];
        let (endpoint, prefix, dualstack) = if labels[n - 2] == "dualstack" {
            if n < 3 {
                return Err(unknown());
            }
            (labels[n - 3], &labels[..n - 3], true)
        } else {
            (labels[n - 2], &labels[..n - 2], false)
        };
        return match endpoint {
            "s3" | "s3-fips" => bucket_host(prefix).ok_or_else(unknown),
            "s3-accesspoint" | "s3-accesspoint-fips" => {
                access_point(prefix, partition, "s3", region).ok_or_else(unknown)
            }
            "s3-object-lambda" | "s3-object-lambda-fips" if !dualstack => {
                access_point(prefix, partition, "s3-object-lambda", region).ok_or_else(unknown)
            }
            "s3-control" | "s3-control-fips" if prefix.len() <= 1 => Ok(S3Host::Control),
            "s3express-control" | "s3express-control-fips" if prefix.is_empty() && !dualstack => {
                Ok(S3Host::ExpressControl)
            }
            zonal if zonal.starts_with("s3express-") && !prefix.is_empty() && !dualstack => {
                bucket_host(prefix).ok_or_else(unknown)
            }
            _ => Err(unknown()),
        };
    }

    // Legacy single-label endpoints.
    let endpoint = labels[n - 1];
    let legacy = endpoint == "s3"
        || endpoint == "s3-external-1"
        || endpoint.strip_prefix("s3-fips-").is_some_and(is_region)
        || endpoint.strip_prefix("s3-").is_some_and(is_region);
    if legacy {
        bucket_host(&labels[..n - 1]).ok_or_else(unknown)
    } else {
        Err(unknown())
    }
}

/// A bucket endpoint with `prefix` before it: path-style when empty, else the bucket.
fn bucket_host(prefix: &[&str]) -> Option<S3Host> {
    if prefix.is_empty() {
        return Some(S3Host::PathStyle);
    }
    let bucket = prefix.join(".");
    let valid = prefix.iter().all(|label| !label.is_empty()) && is_bucket_name(&bucket);
    valid.then_some(S3Host::Virtual(bucket))
}

/// An access point host label `<name>-<account>` (account: 12 digits) as its ARN.
fn access_point(prefix: &[&str], partition: &str, service: &str, region: &str) -> Option<S3Host> {
    let [label] = prefix else { return None };
    let (name, account) = label.rsplit_once('-')?;
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (account_ok && name_ok).then(|| {
        S3Host::AccessPoint(format!(
            "arn:{partition}:{service}:{region}:{account}:accesspoint/{name}"
        ))
    })
}

/// An AWS region name: `us-east-1`, `us-gov-west-1`, `cn-north-1`, `eusc-de-east-1`.
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    !middle.is_empty()
        && (2..=4).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// The ARN partition: `aws-cn` for China (by host or region), `aws-us-gov`, `aws-iso`,
/// `aws-iso-b`, `aws-eusc` by region, else `aws`.
fn partition(host: Option<&str>, region: &str) -> &'static str {
    let china_host = host.is_some_and(|h| {
        let h = strip_port(h.trim());
        let h = h.strip_suffix('.').unwrap_or(h);
        h.len() >= 17 && h.as_bytes()[h.len() - 17..].eq_ignore_ascii_case(b".amazonaws.com.cn")
    });
    if china_host || region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("eusc-") {
        "aws-eusc"
    } else {
        "aws"
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers

/// Smithy RPC v2 requests carry `smithy-protocol: rpc-v2-cbor`.
fn is_rpc_v2(headers: &[(&str, &str)]) -> bool {
    headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("smithy-protocol"))
}

/// The value of a header that must appear at most once (two could be read either way).
fn single_header<'a>(
    headers: &[(&str, &'a str)],
    name: &str,
) -> Result<Option<&'a str>, ClassifyError> {
    let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let first = found.next().map(|(_, value)| *value);
    if found.next().is_some() {
        return Err(Ambiguous(format!("header {name} given more than once")));
    }
    Ok(first)
}

/// The media type of a Content-Type value without parameters, trimmed (case kept; the
/// predicates compare without regard to case).
fn media_essence(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

fn is_form(essence: &str) -> bool {
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

fn is_amz_json(essence: &str) -> bool {
    const PREFIX: &[u8] = b"application/x-amz-json-";
    essence.len() > PREFIX.len() && essence.as_bytes()[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

/// A form body is decoded as UTF-8: another declared charset would make the server read
/// other characters than policy sees.
fn check_form_charset(headers: &[(&str, &str)]) -> Result<(), ClassifyError> {
    let Some(value) = single_header(headers, "content-type")? else {
        return Ok(());
    };
    for param in value.split(';').skip(1) {
        let Some((name, charset)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = charset.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(Malformed(format!(
                    "form body in charset {}",
                    snippet(charset)
                )));
            }
        }
    }
    Ok(())
}

fn is_action(name: &str) -> bool {
    name.eq_ignore_ascii_case("Action")
}

fn is_presign(name: &str) -> bool {
    PRESIGN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// API operation names are `PascalCase` identifiers.
fn is_operation_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_resource_param(service: &str, name: &str) -> bool {
    RESOURCE_PARAMS.iter().any(|(param, services)| {
        *param == name && (services.is_empty() || services.contains(&service))
    })
}

fn push_resource(resources: &mut Vec<String>, value: &str) -> Result<(), ClassifyError> {
    if value.is_empty() || resources.iter().any(|r| r == value) {
        return Ok(());
    }
    if resources.len() >= MAX_RESOURCES {
        return Err(Malformed(format!("more than {MAX_RESOURCES} resources")));
    }
    resources.push(value.to_owned());
    Ok(())
}

/// Adds a parameter; a repeated name collects its values into an array, in order.
fn push_param(params: &mut Map<String, Value>, name: String, value: Value) {
    match params.get_mut(&name) {
        Some(Value::Array(values)) => values.push(value),
        Some(old) => {
            let first = old.take();
            *old = Value::Array(vec![first, value]);
        }
        None => {
            params.insert(name, value);
        }
    }
}

fn too_many_params() -> ClassifyError {
    Malformed(format!("more than {MAX_PARAMS} parameters"))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `application/x-www-form-urlencoded` pairs: `&`-separated (empty pieces skipped), `+`
/// is a space, `%XX` escapes must be valid and decode to UTF-8, a name must not be empty.
/// More than [`MAX_PARAMS`] pairs is malformed.
fn form_pairs(text: &str) -> Result<Vec<(String, String)>, ClassifyError> {
    let mut pairs = Vec::new();
    for piece in text.split('&').filter(|piece| !piece.is_empty()) {
        if pairs.len() == MAX_PARAMS {
            return Err(too_many_params());
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = percent_decode(name, true)?;
        if name.is_empty() {
            return Err(Malformed(format!(
                "parameter without a name: {}",
                snippet(piece)
            )));
        }
        pairs.push((name, percent_decode(value, true)?));
    }
    Ok(pairs)
}

/// Percent-decoding (`+` as a space only in form encoding; in a path it is a `+`). An
/// invalid escape or bytes that are not UTF-8 once decoded are malformed: a lenient
/// decoder would show policy other characters than the server acts on.
fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ClassifyError> {
    if !(text.contains('%') || (plus_is_space && text.contains('+'))) {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_digit(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_digit(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Malformed(format!(
                        "invalid percent-escape in {}",
                        snippet(text)
                    )));
                };
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Malformed(format!("{} is not UTF-8 once decoded", snippet(text))))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Client-controlled text for an error message: quoted and escaped, at most 64 characters.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_HEADERS: &[(&str, &str)] = &[];
    const FORM: (&str, &str) = (
        "Content-Type",
        "application/x-www-form-urlencoded; charset=utf-8",
    );

    fn request<'a>(
        service: &'a str,
        method: &'a str,
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a [(&'a str, &'a str)],
        body: Option<&'a [u8]>,
    ) -> Request<'a> {
        Request {
            method,
            host,
            path,
            query,
            headers,
            body,
            signing_service: service,
            region: "us-east-1",
        }
    }

    /// An S3 request, path-style against the regional endpoint.
    fn s3(
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Call, ClassifyError> {
        classify(&request(
            "s3",
            method,
            Some("s3.us-east-1.amazonaws.com"),
            path,
            query,
            headers,
            None,
        ))
    }

    fn s3_host(
        method: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> Result<Call, ClassifyError> {
        classify(&request(
            "s3",
            method,
            Some(host),
            path,
            query,
            NO_HEADERS,
            None,
        ))
    }

    /// A query-protocol POST with a form body.
    fn form(service: &str, body: &str) -> Result<Call, ClassifyError> {
        classify(&request(
            service,
            "POST",
            Some("example.amazonaws.com"),
            "/",
            None,
            &[FORM],
            Some(body.as_bytes()),
        ))
    }

    /// A JSON-protocol POST.
    fn json(service: &str, target: &str, body: &str) -> Result<Call, ClassifyError> {
        classify(&request(
            service,
            "POST",
            Some("example.amazonaws.com"),
            "/",
            None,
            &[
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            Some(body.as_bytes()),
        ))
    }

    fn op(result: Result<Call, ClassifyError>) -> String {
        match result {
            Ok(call) => call.action(),
            Err(e) => format!("error: {e}"),
        }
    }

    fn is_ambiguous(result: &Result<Call, ClassifyError>) -> bool {
        matches!(result, Err(ClassifyError::Ambiguous(_)))
    }

    fn is_malformed(result: &Result<Call, ClassifyError>) -> bool {
        matches!(result, Err(ClassifyError::Malformed(_)))
    }

    // -- service prefixes and Call ------------------------------------------------------

    #[test]
    fn signing_names_map_to_iam_prefixes() {
        assert_eq!(service_prefix("monitoring"), "cloudwatch");
        assert_eq!(service_prefix("email"), "ses");
        assert_eq!(service_prefix("s3-object-lambda"), "s3");
        assert_eq!(service_prefix("s3express"), "s3");
        assert_eq!(service_prefix("iotdata"), "iot");
        for same in [
            "s3",
            "iam",
            "sts",
            "execute-api",
            "lambda",
            "dynamodb",
            "made-up",
        ] {
            assert_eq!(service_prefix(same), same);
        }
        let call = form("monitoring", "Action=PutMetricData&Namespace=App").unwrap();
        assert_eq!(call.action(), "cloudwatch:PutMetricData");
        let call = form("email", "Action=SendEmail&Source=a%40b.example").unwrap();
        assert_eq!(call.action(), "ses:SendEmail");
        assert_eq!(call.params["Source"], json!("a@b.example"));
    }

    #[test]
    fn action_text() {
        let mut call = Call {
            service: "s3".into(),
            operation: Some("GetObject".into()),
            protocol: ApiProtocol::RestXml,
            resources: vec![],
            params: Map::new(),
        };
        assert_eq!(call.action(), "s3:GetObject");
        call.service = "lambda".into();
        call.operation = None;
        assert_eq!(call.action(), "lambda:?");
    }

    #[test]
    fn signing_service_must_be_a_name() {
        for service in ["", "s3:evil", "i am", "iam/x", "sts\n"] {
            let r = classify(&request(service, "GET", None, "/", None, NO_HEADERS, None));
            assert!(is_malformed(&r), "{service:?}: {r:?}");
        }
    }

    // -- needs_body -----------------------------------------------------------------------

    #[test]
    fn body_is_needed_for_query_and_json_only() {
        let form_ct = [("content-type", "application/x-www-form-urlencoded")];
        let json_ct = [("Content-Type", "application/x-amz-json-1.0")];
        let target = [("x-amz-target", "secretsmanager.GetSecretValue")];
        let rest_json = [("Content-Type", "application/json")];
        let cbor = [
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Type", "application/cbor"),
        ];
        assert!(needs_body("iam", "POST", &form_ct));
        assert!(needs_body("iam", "GET", &form_ct));
        assert!(needs_body("dynamodb", "POST", &json_ct));
        assert!(needs_body("secretsmanager", "POST", &target));
        assert!(needs_body("monitoring", "POST", &form_ct));
        assert!(!needs_body("s3", "POST", &form_ct));
        assert!(!needs_body("s3", "POST", &target));
        assert!(!needs_body("s3express", "PUT", &form_ct));
        assert!(!needs_body("lambda", "POST", &rest_json));
        assert!(!needs_body("monitoring", "POST", &cbor));
        assert!(!needs_body("sts", "GET", NO_HEADERS));
    }

    // -- S3: operations -------------------------------------------------------------------

    type S3Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    /// (method, path, query, copy source, operation): every operation the mapping must
    /// cover, path-style; `s3_operations_virtual_hosted` replays them virtual-hosted.
    const S3_CASES: &[S3Case] = &[
        ("GET", "/", None, None, "ListBuckets"),
        ("GET", "/", Some("max-buckets=10&continuation-token=x"), None, "ListBuckets"),
        ("PUT", "/b1", None, None, "CreateBucket"),
        ("PUT", "/b1/", None, None, "CreateBucket"),
        ("DELETE", "/b1", None, None, "DeleteBucket"),
        ("HEAD", "/b1", None, None, "HeadBucket"),
        ("GET", "/b1", None, None, "ListObjects"),
        ("GET", "/b1", Some("prefix=a%2F&delimiter=%2F&max-keys=5&marker=m&encoding-type=url"), None, "ListObjects"),
        ("GET", "/b1", Some("list-type=2"), None, "ListObjectsV2"),
        ("GET", "/b1", Some("list-type=2&prefix=p&continuation-token=t&start-after=s&fetch-owner=true"), None, "ListObjectsV2"),
        ("GET", "/b1", Some("versions"), None, "ListObjectVersions"),
        ("GET", "/b1", Some("versions=&key-marker=a&version-id-marker=v"), None, "ListObjectVersions"),
        ("GET", "/b1", Some("uploads"), None, "ListMultipartUploads"),
        ("GET", "/b1", Some("uploads&upload-id-marker=u&key-marker=k&max-uploads=2"), None, "ListMultipartUploads"),
        ("GET", "/b1", Some("location"), None, "GetBucketLocation"),
        ("GET", "/b1", Some("policy"), None, "GetBucketPolicy"),
        ("PUT", "/b1", Some("policy"), None, "PutBucketPolicy"),
        ("DELETE", "/b1", Some("policy"), None, "DeleteBucketPolicy"),
        ("GET", "/b1", Some("policyStatus"), None, "GetBucketPolicyStatus"),
        ("GET", "/b1", Some("acl"), None, "GetBucketAcl"),
        ("PUT", "/b1", Some("acl"), None, "PutBucketAcl"),
        ("GET", "/b1", Some("versioning"), None, "GetBucketVersioning"),
        ("PUT", "/b1", Some("versioning"), None, "PutBucketVersioning"),
        ("GET", "/b1", Some("tagging"), None, "GetBucketTagging"),
        ("PUT", "/b1", Some("tagging"), None, "PutBucketTagging"),
        ("DELETE", "/b1", Some("tagging"), None, "DeleteBucketTagging"),
        ("GET", "/b1", Some("lifecycle"), None, "GetBucketLifecycleConfiguration"),
        ("PUT", "/b1", Some("lifecycle"), None, "PutBucketLifecycleConfiguration"),
        ("DELETE", "/b1", Some("lifecycle"), None, "DeleteBucketLifecycle"),
        ("GET", "/b1", Some("cors"), None, "GetBucketCors"),
        ("PUT", "/b1", Some("cors"), None, "PutBucketCors"),
        ("DELETE", "/b1", Some("cors"), None, "DeleteBucketCors"),
        ("GET", "/b1", Some("encryption"), None, "GetBucketEncryption"),
        ("PUT", "/b1", Some("encryption"), None, "PutBucketEncryption"),
        ("DELETE", "/b1", Some("encryption"), None, "DeleteBucketEncryption"),
        ("GET", "/b1", Some("publicAccessBlock"), None, "GetPublicAccessBlock"),
        ("PUT", "/b1", Some("publicAccessBlock"), None, "PutPublicAccessBlock"),
        ("DELETE", "/b1", Some("publicAccessBlock"), None, "DeletePublicAccessBlock"),
        ("POST", "/b1", Some("delete"), None, "DeleteObjects"),
        ("POST", "/b1", Some("delete&x-id=DeleteObjects"), None, "DeleteObjects"),
        ("GET", "/b1", Some("analytics&id=a1"), None, "GetBucketAnalyticsConfiguration"),
        ("GET", "/b1", Some("analytics"), None, "ListBucketAnalyticsConfigurations"),
        ("GET", "/b1", Some("session"), None, "CreateSession"),
        ("GET", "/b1/k/1", None, None, "GetObject"),
        ("GET", "/b1/k/1", Some("x-id=GetObject"), None, "GetObject"),
        ("GET", "/b1/k/1", Some("versionId=v1&partNumber=2&response-content-type=text%2Fplain&response-content-disposition=attachment"), None, "GetObject"),
        ("HEAD", "/b1/k/1", None, None, "HeadObject"),
        ("HEAD", "/b1/k/1", Some("partNumber=1&versionId=v"), None, "HeadObject"),
        ("PUT", "/b1/k/1", None, None, "PutObject"),
        ("PUT", "/b1/k/1", Some("x-id=PutObject"), None, "PutObject"),
        ("PUT", "/b1/k/1", None, Some("src/a.txt"), "CopyObject"),
        ("PUT", "/b1/k/1", Some("x-id=CopyObject"), Some("/src/a.txt?versionId=v2"), "CopyObject"),
        ("DELETE", "/b1/k/1", None, None, "DeleteObject"),
        ("DELETE", "/b1/k/1", Some("versionId=v1"), None, "DeleteObject"),
        ("GET", "/b1/k/1", Some("acl"), None, "GetObjectAcl"),
        ("GET", "/b1/k/1", Some("acl&versionId=v"), None, "GetObjectAcl"),
        ("PUT", "/b1/k/1", Some("acl"), None, "PutObjectAcl"),
        ("GET", "/b1/k/1", Some("tagging"), None, "GetObjectTagging"),
        ("PUT", "/b1/k/1", Some("tagging"), None, "PutObjectTagging"),
        ("DELETE", "/b1/k/1", Some("tagging"), None, "DeleteObjectTagging"),
        ("GET", "/b1/k/1", Some("attributes"), None, "GetObjectAttributes"),
        ("POST", "/b1/k/1", Some("uploads"), None, "CreateMultipartUpload"),
        ("POST", "/b1/k/1", Some("uploads=&x-id=CreateMultipartUpload"), None, "CreateMultipartUpload"),
        ("PUT", "/b1/k/1", Some("partNumber=1&uploadId=u1"), None, "UploadPart"),
        ("PUT", "/b1/k/1", Some("uploadId=u1&partNumber=1&x-id=UploadPart"), None, "UploadPart"),
        ("PUT", "/b1/k/1", Some("partNumber=2&uploadId=u1"), Some("src/a.txt"), "UploadPartCopy"),
        ("POST", "/b1/k/1", Some("uploadId=u1"), None, "CompleteMultipartUpload"),
        ("DELETE", "/b1/k/1", Some("uploadId=u1"), None, "AbortMultipartUpload"),
        ("GET", "/b1/k/1", Some("uploadId=u1"), None, "ListParts"),
        ("GET", "/b1/k/1", Some("uploadId=u1&max-parts=10&part-number-marker=3"), None, "ListParts"),
        ("POST", "/b1/k/1", Some("restore"), None, "RestoreObject"),
        ("POST", "/b1/k/1", Some("select&select-type=2"), None, "SelectObjectContent"),
        ("GET", "/b1/k/1", Some("retention"), None, "GetObjectRetention"),
        ("PUT", "/b1/k/1", Some("legal-hold"), None, "PutObjectLegalHold"),
    ];

    fn run_case(
        host: &str,
        method: &str,
        path: &str,
        query: Option<&str>,
        copy: Option<&str>,
    ) -> Result<Call, ClassifyError> {
        let headers: Vec<(&str, &str)> =
            copy.map(|c| ("x-amz-copy-source", c)).into_iter().collect();
        classify(&request(
            "s3",
            method,
            Some(host),
            path,
            query,
            &headers,
            None,
        ))
    }

    #[test]
    fn s3_operations_path_style() {
        for (method, path, query, copy, expected) in S3_CASES {
            let call = run_case("s3.us-east-1.amazonaws.com", method, path, *query, *copy)
                .unwrap_or_else(|e| panic!("{method} {path}?{query:?}: {e}"));
            assert_eq!(call.service, "s3");
            assert_eq!(call.protocol, ApiProtocol::RestXml);
            assert_eq!(
                call.operation.as_deref(),
                Some(*expected),
                "{method} {path}?{query:?}"
            );
            let mut want = Vec::new();
            if let Some(key) = path.strip_prefix("/b1/").filter(|key| !key.is_empty()) {
                want.push(format!("b1/{key}"));
                want.push(format!("arn:aws:s3:::b1/{key}"));
            } else if *path != "/" {
                want.push("b1".to_owned());
                want.push("arn:aws:s3:::b1".to_owned());
            }
            if copy.is_some() {
                want.push("src/a.txt".into());
                want.push("arn:aws:s3:::src/a.txt".into());
            }
            assert_eq!(call.resources, want, "{method} {path}?{query:?}");
        }
    }

    #[test]
    fn s3_operations_virtual_hosted() {
        for (method, path, query, copy, expected) in S3_CASES {
            if *path == "/" {
                continue;
            }
            let rest = &path[1..];
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let host = format!("{bucket}.s3.us-east-1.amazonaws.com");
            let virtual_path = format!("/{key}");
            let virtual_call = run_case(&host, method, &virtual_path, *query, *copy)
                .unwrap_or_else(|e| panic!("{method} {host}{virtual_path}?{query:?}: {e}"));
            let path_call = run_case("s3.amazonaws.com", method, path, *query, *copy).unwrap();
            assert_eq!(virtual_call.operation.as_deref(), Some(*expected));
            assert_eq!(virtual_call, path_call, "{method} {path}?{query:?}");
        }
    }

    #[test]
    fn s3_every_rule_is_reachable() {
        for rule in S3_RULES {
            let path = match rule.level {
                Level::Service => "/",
                Level::Bucket => "/b1",
                Level::Object => "/b1/k",
            };
            let query: Vec<String> = rule
                .sub
                .iter()
                .map(|sub| match *sub {
                    "list-type" | "select-type" => format!("{sub}=2"),
                    "id" | "uploadId" | "partNumber" => format!("{sub}=1"),
                    _ => (*sub).to_owned(),
                })
                .collect();
            let query = query.join("&");
            let copy = rule.copies.then_some("src/a");
            let call = run_case("s3.amazonaws.com", rule.method, path, Some(&query), copy)
                .unwrap_or_else(|e| panic!("{}: {e}", rule.op));
            assert_eq!(call.operation.as_deref(), Some(rule.op));
        }
    }

    #[test]
    fn s3_rules_are_distinct() {
        for (i, a) in S3_RULES.iter().enumerate() {
            for b in &S3_RULES[..i] {
                let same_sub =
                    a.sub.len() == b.sub.len() && a.sub.iter().all(|s| b.sub.contains(s));
                assert!(
                    !(a.level == b.level
                        && a.method == b.method
                        && same_sub
                        && a.copies == b.copies),
                    "{} and {} share a shape",
                    a.op,
                    b.op
                );
            }
            for sub in a.sub {
                assert!(
                    !S3_NEUTRAL_PARAMS.contains(sub),
                    "{sub} is both neutral and a subresource"
                );
            }
        }
    }

    // -- S3: hosts, keys, resources -------------------------------------------------------

    #[test]
    fn s3_keys_are_percent_decoded() {
        let call = s3(
            "GET",
            "/b1/dir%2Fsub/a%20b+c/%E2%82%AC%25.txt",
            None,
            NO_HEADERS,
        )
        .unwrap();
        assert_eq!(
            call.resources,
            [
                "b1/dir/sub/a b+c/€%.txt",
                "arn:aws:s3:::b1/dir/sub/a b+c/€%.txt"
            ]
        );
        assert_eq!(call.params["Key"], json!("dir/sub/a b+c/€%.txt"));
        assert_eq!(call.params["Bucket"], json!("b1"));

        let call = s3("PUT", "/b1/日本/é file", None, NO_HEADERS).unwrap();
        assert_eq!(call.action(), "s3:PutObject");
        assert_eq!(call.resources[0], "b1/日本/é file");

        // A key that starts with '/' or is only '/'.
        let call = s3("GET", "/b1//lead", None, NO_HEADERS).unwrap();
        assert_eq!(call.resources[0], "b1//lead");
        let call = s3_host("GET", "b1.s3.amazonaws.com", "//", None).unwrap();
        assert_eq!(call.action(), "s3:GetObject");
        assert_eq!(call.resources[0], "b1//");
        // Dot segments are names to S3, not resolved.
        let call = s3("GET", "/b1/a/../b", None, NO_HEADERS).unwrap();
        assert_eq!(call.resources[0], "b1/a/../b");
    }

    #[test]
    fn s3_virtual_hosted_names() {
        for (host, bucket, arn) in [
            ("b1.s3.amazonaws.com", "b1", "arn:aws:s3:::b1/k"),
            ("B1.S3.AmazonAWS.com:443", "b1", "arn:aws:s3:::b1/k"),
            ("b1.s3.amazonaws.com.", "b1", "arn:aws:s3:::b1/k"),
            (
                "my.dotted.bucket.s3.amazonaws.com",
                "my.dotted.bucket",
                "arn:aws:s3:::my.dotted.bucket/k",
            ),
            ("s3.s3.amazonaws.com", "s3", "arn:aws:s3:::s3/k"),
            ("b1.s3.us-west-2.amazonaws.com", "b1", "arn:aws:s3:::b1/k"),
            ("b1.s3-us-west-2.amazonaws.com", "b1", "arn:aws:s3:::b1/k"),
            ("b1.s3-external-1.amazonaws.com", "b1", "arn:aws:s3:::b1/k"),
            (
                "b1.s3.dualstack.eu-west-1.amazonaws.com",
                "b1",
                "arn:aws:s3:::b1/k",
            ),
            (
                "a.s3.b.s3.dualstack.eu-west-1.amazonaws.com",
                "a.s3.b",
                "arn:aws:s3:::a.s3.b/k",
            ),
            (
                "b1.s3-fips.us-east-2.amazonaws.com",
                "b1",
                "arn:aws:s3:::b1/k",
            ),
            (
                "b1.s3.cn-north-1.amazonaws.com.cn",
                "b1",
                "arn:aws-cn:s3:::b1/k",
            ),
            (
                "b1.bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",
                "b1",
                "arn:aws:s3:::b1/k",
            ),
        ] {
            let call = s3_host("GET", host, "/k", None).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(call.action(), "s3:GetObject", "{host}");
            assert_eq!(call.params["Bucket"], json!(bucket), "{host}");
            assert_eq!(
                call.resources,
                [format!("{bucket}/k"), arn.to_owned()],
                "{host}"
            );
        }
        // Bucket-level on a virtual host: the path is "/".
        let call = s3_host(
            "GET",
            "my.bucket.s3.us-east-1.amazonaws.com",
            "/",
            Some("list-type=2"),
        )
        .unwrap();
        assert_eq!(call.action(), "s3:ListObjectsV2");
        assert_eq!(call.resources, ["my.bucket", "arn:aws:s3:::my.bucket"]);
        // The whole path is the key: a first segment is not a bucket.
        let call = s3_host("DELETE", "b1.s3.amazonaws.com", "/b2/k", None).unwrap();
        assert_eq!(call.resources[0], "b1/b2/k");
    }

    #[test]
    fn s3_path_style_hosts() {
        for host in [
            "s3.amazonaws.com",
            "s3.us-west-2.amazonaws.com",
            "S3.US-WEST-2.AMAZONAWS.COM",
            "s3-us-west-2.amazonaws.com",
            "s3.dualstack.us-east-1.amazonaws.com",
            "s3-fips.dualstack.us-gov-west-1.amazonaws.com",
            "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",
            "localhost:9000",
            "127.0.0.1:4566",
            "[::1]:9000",
            "minio.internal",
        ] {
            let call =
                s3_host("GET", host, "/b1/k", None).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(call.params["Bucket"], json!("b1"), "{host}");
            assert_eq!(call.params["Key"], json!("k"), "{host}");
        }
        let call = classify(&request("s3", "GET", None, "/b1/k", None, NO_HEADERS, None)).unwrap();
        assert_eq!(call.resources, ["b1/k", "arn:aws:s3:::b1/k"]);
    }

    #[test]
    fn s3_partition_follows_region() {
        let mut req = request(
            "s3",
            "GET",
            Some("s3.us-gov-west-1.amazonaws.com"),
            "/b1",
            None,
            NO_HEADERS,
            None,
        );
        req.region = "us-gov-west-1";
        assert_eq!(
            classify(&req).unwrap().resources[1],
            "arn:aws-us-gov:s3:::b1"
        );
        req.host = Some("s3.cn-northwest-1.amazonaws.com.cn");
        req.region = "cn-northwest-1";
        assert_eq!(classify(&req).unwrap().resources[1], "arn:aws-cn:s3:::b1");
    }

    #[test]
    fn s3_unknown_amazonaws_hosts_are_ambiguous() {
        for host in [
            "sts.amazonaws.com",
            "b1.example.amazonaws.com",
            "b1.s3-website-us-east-1.amazonaws.com",
            "b1.s3-website.us-east-1.amazonaws.com",
            "us-east-1.amazonaws.com",
            "b1..s3.amazonaws.com",
            "b_1%2F.s3.amazonaws.com",
            "dualstack.us-east-1.amazonaws.com",
            "x.s3-object-lambda.dualstack.us-east-1.amazonaws.com",
            "myap.s3-accesspoint.us-east-1.amazonaws.com",
            "myap-12345.s3-accesspoint.us-east-1.amazonaws.com",
            "a.b-123456789012.s3-accesspoint.us-east-1.amazonaws.com",
            "x.vpce-1.s3.us-east-1.vpce.amazonaws.com",
            "mrap.accesspoint.s3-global.amazonaws.com",
            ".amazonaws.com",
        ] {
            let r = s3_host("GET", host, "/k", None);
            assert!(is_ambiguous(&r), "{host}: {r:?}");
        }
    }

    #[test]
    fn s3_access_points() {
        let call = s3_host(
            "GET",
            "finance-123456789012.s3-accesspoint.us-west-2.amazonaws.com",
            "/reports/q1.csv",
            None,
        )
        .unwrap();
        assert_eq!(call.action(), "s3:GetObject");
        assert_eq!(
            call.resources,
            ["arn:aws:s3:us-west-2:123456789012:accesspoint/finance/object/reports/q1.csv"]
        );
        assert_eq!(
            call.params["Bucket"],
            json!("arn:aws:s3:us-west-2:123456789012:accesspoint/finance")
        );
        let call = s3_host(
            "GET",
            "finance-123456789012.s3-accesspoint.dualstack.us-west-2.amazonaws.com",
            "/",
            Some("list-type=2"),
        )
        .unwrap();
        assert_eq!(call.action(), "s3:ListObjectsV2");
        assert_eq!(
            call.resources,
            ["arn:aws:s3:us-west-2:123456789012:accesspoint/finance"]
        );

        let req = request(
            "s3-object-lambda",
            "GET",
            Some("redact-123456789012.s3-object-lambda.eu-west-1.amazonaws.com"),
            "/k",
            None,
            NO_HEADERS,
            None,
        );
        let call = classify(&req).unwrap();
        assert_eq!(call.action(), "s3:GetObject");
        assert_eq!(
            call.resources,
            ["arn:aws:s3-object-lambda:eu-west-1:123456789012:accesspoint/redact/object/k"]
        );
    }

    #[test]
    fn s3_control_is_unmapped() {
        let call = s3_host(
            "GET",
            "123456789012.s3-control.us-east-1.amazonaws.com",
            "/v20180820/accesspoint",
            Some("maxResults=10"),
        )
        .unwrap();
        assert_eq!(call.action(), "s3:?");
        assert_eq!(call.protocol, ApiProtocol::RestXml);
        assert!(call.resources.is_empty());
        assert_eq!(call.params["maxResults"], json!("10"));
    }

    #[test]
    fn s3_express() {
        let req = request(
            "s3express",
            "GET",
            Some("logs--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com"),
            "/",
            Some("session"),
            NO_HEADERS,
            None,
        );
        let call = classify(&req).unwrap();
        assert_eq!(call.action(), "s3:CreateSession");
        assert_eq!(
            call.resources,
            ["logs--usw2-az1--x-s3", "arn:aws:s3:::logs--usw2-az1--x-s3"]
        );
        let call = s3_host(
            "GET",
            "s3express-control.us-west-2.amazonaws.com",
            "/",
            None,
        )
        .unwrap();
        assert_eq!(call.action(), "s3:ListDirectoryBuckets");
        let call = s3_host(
            "PUT",
            "s3express-control.us-west-2.amazonaws.com",
            "/logs--usw2-az1--x-s3",
            None,
        )
        .unwrap();
        assert_eq!(call.action(), "s3:CreateBucket");
        assert_eq!(call.resources[0], "logs--usw2-az1--x-s3");
    }

    #[test]
    fn s3_copy_sources() {
        for (source, want) in [
            ("src/a.txt", ["src/a.txt", "arn:aws:s3:::src/a.txt"]),
            ("/src/a.txt", ["src/a.txt", "arn:aws:s3:::src/a.txt"]),
            (
                "src/dir%2Fsub/my%20file%E2%82%AC.txt?versionId=3%2Fx",
                [
                    "src/dir/sub/my file€.txt",
                    "arn:aws:s3:::src/dir/sub/my file€.txt",
                ],
            ),
        ] {
            let call = s3("PUT", "/b1/k", None, &[("X-Amz-Copy-Source", source)]).unwrap();
            assert_eq!(call.action(), "s3:CopyObject");
            assert_eq!(call.resources[..2], ["b1/k", "arn:aws:s3:::b1/k"]);
            assert_eq!(call.resources[2..], want, "{source}");
            assert_eq!(call.params["x-amz-copy-source"], json!(source));
        }
        let arn =
            "arn%3Aaws%3As3%3Aus-west-2%3A123456789012%3Aaccesspoint%2Fap%2Fobject%2Fr%2Fa.pdf";
        let call = s3(
            "PUT",
            "/b1/k",
            Some("partNumber=1&uploadId=u"),
            &[("x-amz-copy-source", arn)],
        )
        .unwrap();
        assert_eq!(call.action(), "s3:UploadPartCopy");
        assert_eq!(
            call.resources[2],
            "arn:aws:s3:us-west-2:123456789012:accesspoint/ap/object/r/a.pdf"
        );
        // A presigned CopyObject carries the header in the query.
        let call = s3(
            "PUT",
            "/b1/k",
            Some("x-amz-copy-source=src%2Fa"),
            NO_HEADERS,
        )
        .unwrap();
        assert_eq!(call.action(), "s3:CopyObject");
        assert_eq!(call.resources[2], "src/a");

        for bad in [
            "src",
            "src/",
            "/",
            "",
            "sr%2/k",
            "src/k?uploadId=1",
            "src/k?versionId=1&x=2",
            "arn:aws:s3:::b",
        ] {
            let r = s3("PUT", "/b1/k", None, &[("x-amz-copy-source", bad)]);
            assert!(is_malformed(&r), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn s3_params() {
        let call = s3(
            "PUT",
            "/b1/k",
            Some("x-id=PutObject&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Security-Token=secret&X-Amz-Signature=ab&X-Amz-Date=20250101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host"),
            &[
                ("X-Amz-Acl", "public-read"),
                ("x-amz-server-side-encryption", "aws:kms"),
                ("x-amz-meta-owner", "alice"),
                ("Authorization", "AWS4-HMAC-SHA256 ..."),
            ],
        )
        .unwrap();
        assert_eq!(call.action(), "s3:PutObject");
        let want = json!({
            "Bucket": "b1",
            "Key": "k",
            "x-amz-acl": "public-read",
            "x-amz-server-side-encryption": "aws:kms",
        });
        assert_eq!(Value::Object(call.params), want);

        let call = s3(
            "GET",
            "/b1",
            Some("list-type=2&prefix=a+b%2Fc&max-keys=3"),
            NO_HEADERS,
        )
        .unwrap();
        let want = json!({"Bucket": "b1", "list-type": "2", "prefix": "a b/c", "max-keys": "3"});
        assert_eq!(Value::Object(call.params), want);
        assert_eq!(s3("GET", "/", None, NO_HEADERS).unwrap().params, Map::new());
    }

    #[test]
    fn s3_ambiguous_requests() {
        let copy = [("x-amz-copy-source", "src/a")];
        let two_copies = [
            ("x-amz-copy-source", "src/a"),
            ("X-Amz-Copy-Source", "src/b"),
        ];
        for (method, path, query, headers) in [
            ("GET", "/b1", "acl&policy", NO_HEADERS),
            ("GET", "/b1", "foo", NO_HEADERS),
            ("GET", "/b1", "prefix=a&foo=b", NO_HEADERS),
            ("GET", "/b1", "Acl", NO_HEADERS),
            ("GET", "/b1", "acl&acl", NO_HEADERS),
            ("GET", "/b1", "prefix=a&prefix=b", NO_HEADERS),
            ("GET", "/b1", "delete", NO_HEADERS),
            ("GET", "/b1", "id=1", NO_HEADERS),
            ("GET", "/b1", "list-type=2&versions", NO_HEADERS),
            ("GET", "/b1", "x-id=ListObjectsV2", NO_HEADERS),
            ("PUT", "/b1", "analytics", NO_HEADERS),
            ("GET", "/b1/k", "uploads", NO_HEADERS),
            ("GET", "/b1/k", "versions", NO_HEADERS),
            ("GET", "/b1/k", "acl&tagging", NO_HEADERS),
            ("GET", "/b1/k", "uploadId=1&partNumber=1", NO_HEADERS),
            ("PUT", "/b1/k", "partNumber=1", NO_HEADERS),
            ("GET", "/b1/k", "x-id=PutObject", NO_HEADERS),
            ("HEAD", "/b1/k", "x-id=GetObject", NO_HEADERS),
            ("GET", "/b1/k", "x-id=GetObject&x-id=GetObject", NO_HEADERS),
            ("PUT", "/b1/k", "x-id=CopyObject", NO_HEADERS),
            ("PUT", "/b1/k", "x-id=PutObject", &copy),
            ("GET", "/b1/k", "", &copy),
            ("PUT", "/b1/k", "tagging", &copy),
            ("PUT", "/b1/k", "", &two_copies),
            ("PUT", "/b1/k", "x-amz-copy-source=src%2Fb", &copy),
            ("GET", "/", "acl", NO_HEADERS),
        ] {
            let r = s3(method, path, Some(query), headers);
            assert!(is_ambiguous(&r), "{method} {path}?{query}: {r:?}");
        }
    }

    #[test]
    fn s3_malformed_requests() {
        for (method, path, query) in [
            ("PATCH", "/b1/k", ""),
            ("get", "/b1/k", ""),
            ("OPTIONS", "/b1", ""),
            ("POST", "/b1/k", ""),
            ("PUT", "/", ""),
            ("GET", "/b1", "list-type=1"),
            ("POST", "/b1/k", "select&select-type=1"),
            ("GET", "/b%2F1/k", ""),
            ("GET", "/b%201", ""),
            ("GET", "//k", ""),
            ("GET", "/b1/%ZZ", ""),
            ("GET", "/b1/%", ""),
            ("GET", "/b1/%FF%FE", ""),
            ("GET", "b1/k", ""),
            ("GET", "/b1/k?acl", ""),
            ("GET", "/b1/k#frag", ""),
            ("GET", "/b1", "prefix=%G0"),
            ("GET", "/b1", "=x"),
        ] {
            let r = s3(method, path, Some(query), NO_HEADERS);
            assert!(is_malformed(&r), "{method} {path}?{query}: {r:?}");
        }
    }

    // -- Query protocol -------------------------------------------------------------------

    #[test]
    fn query_form_body() {
        let call = form(
            "iam",
            "Action=CreateUser&UserName=bob&Version=2010-05-08&Path=%2Fbots%2F&Tags.member.1.Key=team",
        )
        .unwrap();
        assert_eq!(call.action(), "iam:CreateUser");
        assert_eq!(call.protocol, ApiProtocol::Query);
        assert_eq!(call.resources, ["bob"]);
        assert_eq!(
            Value::Object(call.params),
            json!({"UserName": "bob", "Path": "/bots/", "Tags.member.1.Key": "team"})
        );
    }

    #[test]
    fn query_string_get_with_presign_params() {
        let call = classify(&request(
            "sts",
            "GET",
            Some("sts.amazonaws.com"),
            "/",
            Some("Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20250101%2Fus-east-1%2Fsts%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&x-amz-security-token=tok&X-Amz-Signature=abc"),
            &[("x-k8s-aws-id", "cluster")],
            None,
        ))
        .unwrap();
        assert_eq!(call.action(), "sts:GetCallerIdentity");
        assert!(call.params.is_empty(), "{:?}", call.params);
        assert!(call.resources.is_empty());
    }

    #[test]
    fn form_encoding_edge_cases() {
        let call = form(
            "iam",
            "&&Action=PutUserPolicy&PolicyName=a+b&PolicyDocument=%7B%22x%22%3A1%2B2%7D&UserName=c%2Bd&Empty=&Bare&",
        )
        .unwrap();
        assert_eq!(call.action(), "iam:PutUserPolicy");
        assert_eq!(call.params["PolicyName"], json!("a b"));
        assert_eq!(call.params["PolicyDocument"], json!("{\"x\":1+2}"));
        assert_eq!(call.params["UserName"], json!("c+d"));
        assert_eq!(call.params["Empty"], json!(""));
        assert_eq!(call.params["Bare"], json!(""));
        assert_eq!(call.resources, ["a b", "c+d"]);
        let call = form("iam", "Action=GetUser&UserName=%C3%A9l%C3%A8ve%20%E2%9C%93").unwrap();
        assert_eq!(call.resources, ["élève ✓"]);
    }

    #[test]
    fn query_repeated_names_and_lists() {
        let call = form(
            "ec2",
            "Action=DescribeInstances&InstanceId.1=i-1&InstanceId.2=i-2&InstanceId.3=i-1&Filter.1.Name=tag%3Aa&Foo=x&Foo=y&Foo=z",
        )
        .unwrap();
        assert_eq!(call.resources, ["i-1", "i-2"]);
        assert_eq!(call.params["Foo"], json!(["x", "y", "z"]));
        assert_eq!(call.params["InstanceId.2"], json!("i-2"));
        assert_eq!(call.params["Filter.1.Name"], json!("tag:a"));
        // The same name in the query string and the body: both values, query first.
        let call = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            Some("UserName=a"),
            &[FORM],
            Some(b"Action=DeleteUser&UserName=b"),
        ))
        .unwrap();
        assert_eq!(call.action(), "iam:DeleteUser");
        assert_eq!(call.params["UserName"], json!(["a", "b"]));
        assert_eq!(call.resources, ["a", "b"]);
    }

    #[test]
    fn list_member_names() {
        assert_eq!(list_base("InstanceId.1"), "InstanceId");
        assert_eq!(list_base("Names.member.12"), "Names");
        assert_eq!(list_base("UserName"), "UserName");
        assert_eq!(
            list_base("PolicyArns.member.1.arn"),
            "PolicyArns.member.1.arn"
        );
        assert_eq!(list_base("InstanceId."), "InstanceId.");
        assert_eq!(list_base("InstanceId.member."), "InstanceId.member.");
        assert_eq!(list_base("InstanceId.x"), "InstanceId.x");
        let call = form(
            "sns",
            "Action=Publish&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A1%3At&Message=hi",
        )
        .unwrap();
        assert_eq!(call.resources, ["arn:aws:sns:us-east-1:1:t"]);
        // Service-scoped names: Name is a resource for ssm and secretsmanager only.
        assert!(form("iam", "Action=X&Name=n").unwrap().resources.is_empty());
        assert!(form("kms", "Action=X&KeyId=k").unwrap().resources == ["k"]);
        assert!(form("iam", "Action=X&KeyId=k")
            .unwrap()
            .resources
            .is_empty());
    }

    #[test]
    fn query_action_rules() {
        // Missing Action.
        for (service, body) in [
            ("iam", "UserName=bob"),
            ("iam", ""),
            ("lambda", "UserName=bob"),
            ("sts", "Version=1"),
        ] {
            let r = form(service, body);
            assert!(is_malformed(&r), "{service} {body}: {r:?}");
        }
        let r = classify(&request("ec2", "GET", None, "/", None, NO_HEADERS, None));
        assert!(is_malformed(&r), "{r:?}");
        let r = classify(&request(
            "sqs",
            "GET",
            None,
            "/",
            Some("QueueUrl=x"),
            NO_HEADERS,
            None,
        ));
        assert!(is_malformed(&r), "{r:?}");
        // Twice, in any case.
        for body in [
            "Action=ListUsers&Action=ListUsers",
            "Action=ListUsers&action=DeleteUser",
            "ACTION=a&Action=b",
        ] {
            assert!(is_ambiguous(&form("iam", body)), "{body}");
        }
        // In the query string and the body.
        let both = |query: &str, body: &'static [u8]| {
            classify(&request(
                "iam",
                "POST",
                None,
                "/",
                Some(query),
                &[FORM],
                Some(body),
            ))
        };
        assert!(is_ambiguous(&both(
            "Action=ListUsers",
            b"Action=DeleteUser"
        )));
        assert_eq!(
            op(both("Action=ListUsers", b"Action=ListUsers")),
            "iam:ListUsers"
        );
        assert_eq!(op(both("Action=ListUsers", b"MaxItems=1")), "iam:ListUsers");
        assert_eq!(op(both("MaxItems=1", b"Action=ListUsers")), "iam:ListUsers");
        assert!(is_ambiguous(&both(
            "Action=ListUsers&Action=ListUsers",
            b""
        )));
        // Not an operation name.
        for body in [
            "Action=",
            "Action=Get%20User",
            "Action=Get.User",
            "Action=1Get",
            "Action=%00",
        ] {
            assert!(is_malformed(&form("iam", body)), "{body}");
        }
        // A lower-case `action` alone still names the operation.
        assert_eq!(op(form("iam", "action=ListRoles")), "iam:ListRoles");
    }

    #[test]
    fn query_malformed_encoding() {
        for body in [
            "Action=GetUser&UserName=%FF",
            "Action=GetUser&UserName=%C3",
            "Action=GetUser&UserName=%G1",
            "Action=GetUser&UserName=%",
            "Action=GetUser&UserName=%4",
            "Action=GetUser&=bob",
            "Action=GetUser&%FF=1",
        ] {
            assert!(is_malformed(&form("iam", body)), "{body}");
        }
        let r = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            None,
            &[FORM],
            Some(b"Action=GetUser&UserName=\xff"),
        ));
        assert!(is_malformed(&r), "{r:?}");
        let latin1 = [(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=ISO-8859-1",
        )];
        let r = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            None,
            &latin1,
            Some(b"Action=GetUser"),
        ));
        assert!(is_malformed(&r), "{r:?}");
        let utf8 = [(
            "content-type",
            "Application/X-WWW-Form-Urlencoded;charset=\"UTF-8\"",
        )];
        let r = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            None,
            &utf8,
            Some(b"Action=GetUser"),
        ));
        assert_eq!(op(r), "iam:GetUser");
        let two = [FORM, FORM];
        let r = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            None,
            &two,
            Some(b"Action=GetUser"),
        ));
        assert!(is_ambiguous(&r), "{r:?}");
    }

    #[test]
    fn query_needs_its_body() {
        let r = classify(&request("iam", "POST", None, "/", None, &[FORM], None));
        assert_eq!(r, Err(ClassifyError::BodyRequired));
    }

    #[test]
    fn parameter_bounds() {
        let mut body = String::from("Action=DescribeInstances");
        for i in 1..MAX_PARAMS {
            body.push_str(&format!("&InstanceId.{i}=i-{i}"));
        }
        let call = form("ec2", &body).unwrap();
        assert_eq!(call.params.len(), MAX_PARAMS - 1);
        assert_eq!(call.resources.len(), MAX_PARAMS - 1);
        body.push_str("&One=more");
        assert!(is_malformed(&form("ec2", &body)));
        // Split between the query string and the body.
        let query = "a=1&".repeat(600);
        let r = classify(&request(
            "iam",
            "POST",
            None,
            "/",
            Some(&query),
            &[FORM],
            Some(query.as_bytes()),
        ));
        assert!(is_malformed(&r), "{r:?}");
        let s3_query = (0..=MAX_PARAMS)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(is_malformed(&s3("GET", "/b1", Some(&s3_query), NO_HEADERS)));
        let members: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("\"m{i}\":1")).collect();
        let body = format!("{{{}}}", members.join(","));
        assert!(is_malformed(&json(
            "dynamodb",
            "DynamoDB_20120810.GetItem",
            &body
        )));
        let names: Vec<String> = (0..=MAX_RESOURCES).map(|i| format!("\"n{i}\"")).collect();
        let body = format!("{{\"Names\":[{}]}}", names.join(","));
        assert!(is_malformed(&json("ssm", "AmazonSSM.GetParameters", &body)));
    }

    // -- JSON protocol --------------------------------------------------------------------

    #[test]
    fn json_targets() {
        let call = json(
            "secretsmanager",
            "secretsmanager.GetSecretValue",
            r#"{"SecretId":"prod/db","VersionStage":"AWSCURRENT"}"#,
        )
        .unwrap();
        assert_eq!(call.action(), "secretsmanager:GetSecretValue");
        assert_eq!(call.protocol, ApiProtocol::Json);
        assert_eq!(call.resources, ["prod/db"]);
        assert_eq!(
            Value::Object(call.params),
            json!({"SecretId": "prod/db", "VersionStage": "AWSCURRENT"})
        );
        for (service, target, action) in [
            ("dynamodb", "DynamoDB_20120810.GetItem", "dynamodb:GetItem"),
            (
                "cognito-idp",
                "AWSCognitoIdentityProviderService.InitiateAuth",
                "cognito-idp:InitiateAuth",
            ),
            ("kms", "TrentService.Decrypt", "kms:Decrypt"),
            ("logs", " Logs_20140328.PutLogEvents\t", "logs:PutLogEvents"),
            (
                "monitoring",
                "GraniteServiceVersion20100801.GetMetricData",
                "cloudwatch:GetMetricData",
            ),
            ("x", "com.amazonaws.x.v1.Do_It", "x:Do_It"),
            ("x", "a-b.Op", "x:Op"),
        ] {
            assert_eq!(op(json(service, target, "{}")), action, "{target}");
        }
    }

    #[test]
    fn json_bad_targets() {
        for target in [
            "",
            " ",
            "GetSecretValue",
            ".GetSecretValue",
            "secretsmanager.",
            "a..GetX",
            "a.b c",
            "a.b/c",
            "a.1Op",
            "a.Op\0",
            "é.Op",
        ] {
            let r = json("secretsmanager", target, "{}");
            assert!(is_malformed(&r), "{target:?}: {r:?}");
        }
        let r = json("secretsmanager", "a.GetSecretValue, a.DeleteSecret", "{}");
        assert!(is_ambiguous(&r), "{r:?}");
        let two = [
            ("X-Amz-Target", "a.GetSecretValue"),
            ("x-amz-target", "a.DeleteSecret"),
        ];
        let r = classify(&request(
            "secretsmanager",
            "POST",
            None,
            "/",
            None,
            &two,
            Some(b"{}"),
        ));
        assert!(is_ambiguous(&r), "{r:?}");
        // With query-protocol markers beside it.
        let target = ("X-Amz-Target", "AmazonSQS.SendMessage");
        let r = classify(&request(
            "sqs",
            "POST",
            None,
            "/",
            None,
            &[target, FORM],
            Some(b"Action=DeleteQueue"),
        ));
        assert!(is_ambiguous(&r), "{r:?}");
        let r = classify(&request(
            "sqs",
            "POST",
            None,
            "/",
            Some("Action=DeleteQueue"),
            &[target],
            Some(b"{}"),
        ));
        assert!(is_ambiguous(&r), "{r:?}");
        // JSON content type but no target.
        let ct = [("Content-Type", "application/x-amz-json-1.0")];
        let r = classify(&request(
            "dynamodb",
            "POST",
            None,
            "/",
            None,
            &ct,
            Some(b"{}"),
        ));
        assert!(is_malformed(&r), "{r:?}");
        let r = classify(&request(
            "dynamodb",
            "POST",
            None,
            "/",
            None,
            &[target],
            None,
        ));
        assert_eq!(r, Err(ClassifyError::BodyRequired));
    }

    #[test]
    fn json_bodies() {
        let target = "secretsmanager.ListSecrets";
        for body in ["", "  \r\n", "{}", " { } "] {
            let call = json("secretsmanager", target, body).unwrap();
            assert!(call.params.is_empty(), "{body:?}");
        }
        for body in [
            "[]",
            "null",
            "\"x\"",
            "1",
            "{",
            "{} {}",
            "{}x",
            "\u{feff}{}",
            "{\"a\":}",
            "{'a':1}",
            "\u{0}",
        ] {
            let r = json("secretsmanager", target, body);
            assert!(is_malformed(&r), "{body:?}: {r:?}");
        }
        let r = classify(&request(
            "kms",
            "POST",
            None,
            "/",
            None,
            &[("X-Amz-Target", "TrentService.Decrypt")],
            Some(b"{\"KeyId\":\"\xff\"}"),
        ));
        assert!(is_malformed(&r), "{r:?}");
        for body in [
            r#"{"SecretId":"allowed","SecretId":"other"}"#,
            r#"{"a":{"b":1,"b":2}}"#,
            r#"{"a":[{"x":1},{"y":1,"y":1}]}"#,
        ] {
            let r = json("secretsmanager", target, body);
            assert!(is_ambiguous(&r), "{body}: {r:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(is_malformed(&json("secretsmanager", target, &deep)));
        let call = json(
            "secretsmanager",
            target,
            r#"{"MaxResults":10,"Filters":[{"Key":"name","Values":["a"]}],"Big":1e400,"Neg":-1,"F":1.5,"T":true,"N":null}"#,
        );
        // 1e400 is out of range for f64: serde_json refuses it.
        assert!(is_malformed(&call));
        let call = json(
            "secretsmanager",
            target,
            r#"{"MaxResults":10,"Filters":[{"Key":"name","Values":["a"]}],"Neg":-1,"F":1.5,"T":true,"N":null,"U":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(
            Value::Object(call.params),
            json!({"MaxResults":10,"Filters":[{"Key":"name","Values":["a"]}],"Neg":-1,"F":1.5,"T":true,"N":null,"U":18446744073709551615u64})
        );
    }

    #[test]
    fn json_resources() {
        let call = json(
            "ssm",
            "AmazonSSM.GetParameters",
            r#"{"Names":["/a","/b","/a"],"WithDecryption":true}"#,
        )
        .unwrap();
        assert_eq!(call.resources, ["/a", "/b"]);
        let call = json("ssm", "AmazonSSM.GetParameter", r#"{"Name":"/db/pw"}"#).unwrap();
        assert_eq!(call.resources, ["/db/pw"]);
        let call = json(
            "logs",
            "Logs_20140328.CreateLogGroup",
            r#"{"logGroupName":"x","Name":"n","LogGroupName":"g"}"#,
        )
        .unwrap();
        assert_eq!(call.resources, ["g"]);
        let call = json(
            "kms",
            "TrentService.Encrypt",
            r#"{"KeyId":"alias/app","Plaintext":"eA=="}"#,
        )
        .unwrap();
        assert_eq!(call.resources, ["alias/app"]);
        let call = json(
            "secretsmanager",
            "secretsmanager.GetSecretValue",
            r#"{"SecretId":7}"#,
        )
        .unwrap();
        assert!(call.resources.is_empty());
        let call = json(
            "dynamodb",
            "DynamoDB_20120810.BatchGetItem",
            r#"{"RequestItems":{"Users":{"Keys":[]},"Orders":{"Keys":[]}}}"#,
        )
        .unwrap();
        let mut tables = call.resources.clone();
        tables.sort();
        assert_eq!(tables, ["Orders", "Users"]);
        let call = json(
            "dynamodb",
            "DynamoDB_20120810.TransactWriteItems",
            r#"{"TransactItems":[{"Put":{"TableName":"A","Item":{}}},{"Delete":{"TableName":"B"}},{"ConditionCheck":{"TableName":"A"}},7]}"#,
        )
        .unwrap();
        assert_eq!(call.resources, ["A", "B"]);
        let call = json(
            "dynamodb",
            "DynamoDB_20120810.Query",
            r#"{"TableName":"arn:aws:dynamodb:us-east-1:1:table/T"}"#,
        )
        .unwrap();
        assert_eq!(call.resources, ["arn:aws:dynamodb:us-east-1:1:table/T"]);
    }

    #[test]
    fn cbor_is_unsupported() {
        let headers = [
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Type", "application/cbor"),
        ];
        let r = classify(&request(
            "monitoring",
            "POST",
            None,
            "/service/GraniteServiceVersion20100801/operation/PutMetricData",
            None,
            &headers,
            None,
        ));
        assert!(
            matches!(&r, Err(ClassifyError::Unsupported(m)) if m.contains("cloudwatch")),
            "{r:?}"
        );
        let r = classify(&request(
            "x",
            "POST",
            None,
            "/",
            None,
            &[("content-type", "Application/CBOR")],
            None,
        ));
        assert!(matches!(r, Err(ClassifyError::Unsupported(_))));
    }

    // -- Other REST APIs ------------------------------------------------------------------

    #[test]
    fn lambda_invoke_is_mapped() {
        let call = classify(&request(
            "lambda",
            "POST",
            Some("lambda.us-east-1.amazonaws.com"),
            "/2015-03-31/functions/my-fn/invocations",
            Some("Qualifier=prod&X-Amz-Signature=x"),
            &[("Content-Type", "application/json")],
            None,
        ))
        .unwrap();
        assert_eq!(call.action(), "lambda:Invoke");
        assert_eq!(call.protocol, ApiProtocol::RestJson);
        assert_eq!(call.resources, ["my-fn"]);
        assert_eq!(
            Value::Object(call.params),
            json!({"FunctionName": "my-fn", "Qualifier": "prod"})
        );

        let arn = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Amy-fn%3A3/invocations";
        let call = classify(&request(
            "lambda", "POST", None, arn, None, NO_HEADERS, None,
        ))
        .unwrap();
        assert_eq!(
            call.resources,
            ["arn:aws:lambda:us-east-1:123456789012:function:my-fn:3"]
        );
        let call = classify(&request(
            "lambda",
            "POST",
            None,
            "/2021-11-15/functions/f/response-streaming-invocations",
            None,
            NO_HEADERS,
            None,
        ))
        .unwrap();
        assert_eq!(call.action(), "lambda:InvokeWithResponseStream");

        for (method, path) in [
            ("GET", "/2015-03-31/functions/my-fn"),
            ("GET", "/2015-03-31/functions/my-fn/invocations"),
            ("POST", "/2015-03-31/functions/my-fn/invocations/"),
            ("POST", "/2015-03-31/functions//invocations"),
            ("POST", "/2015-03-31/functions/my-fn/invocations/x"),
            ("POST", "/%32015-03-31/functions/my-fn/invocations"),
            ("POST", "/"),
        ] {
            let call = classify(&request(
                "lambda", method, None, path, None, NO_HEADERS, None,
            ))
            .unwrap();
            assert_eq!(call.action(), "lambda:?", "{method} {path}");
            assert!(call.resources.is_empty());
        }
        let r = classify(&request(
            "lambda",
            "POST",
            None,
            "/2015-03-31/functions/a%2Fb/invocations",
            None,
            NO_HEADERS,
            None,
        ));
        assert!(is_ambiguous(&r), "{r:?}");
        let r = classify(&request(
            "lambda",
            "POST",
            None,
            "/2015-03-31/functions/a%FF/invocations",
            None,
            NO_HEADERS,
            None,
        ));
        assert!(is_malformed(&r), "{r:?}");
    }

    #[test]
    fn other_rest_apis_are_unmapped() {
        let call = classify(&request(
            "cloudfront",
            "GET",
            None,
            "/2020-05-31/distribution",
            Some("MaxItems=10&Marker=a&Marker=b"),
            NO_HEADERS,
            None,
        ))
        .unwrap();
        assert_eq!(call.action(), "cloudfront:?");
        assert_eq!(call.protocol, ApiProtocol::RestXml);
        assert_eq!(
            Value::Object(call.params),
            json!({"MaxItems": "10", "Marker": ["a", "b"]})
        );
        let call = classify(&request(
            "route53",
            "GET",
            None,
            "/2013-04-01/hostedzone",
            None,
            NO_HEADERS,
            None,
        ))
        .unwrap();
        assert_eq!(call.protocol, ApiProtocol::RestXml);
        let call = classify(&request(
            "apigateway",
            "POST",
            None,
            "/restapis",
            None,
            &[("content-type", "application/json")],
            Some(b"{}"),
        ))
        .unwrap();
        assert_eq!(call.action(), "apigateway:?");
        let r = classify(&request(
            "lambda",
            "GET",
            None,
            "/x",
            Some("a=%FF"),
            NO_HEADERS,
            None,
        ));
        assert!(is_malformed(&r));
        let r = classify(&request("lambda", "GET", None, "x", None, NO_HEADERS, None));
        assert!(is_malformed(&r));
    }

    #[test]
    fn customer_apis_are_one_action() {
        let target = [
            ("X-Amz-Target", "secretsmanager.DeleteSecret"),
            ("Host", "abc.execute-api.us-east-1.amazonaws.com"),
        ];
        let form_host = [FORM, ("host", "xyz.lambda-url.eu-west-1.on.aws")];
        for (service, host, path, query, headers, body) in [
            (
                "execute-api",
                Some("abc.execute-api.us-east-1.amazonaws.com"),
                "/prod/pets",
                Some("Action=DeleteUser&q=1"),
                NO_HEADERS,
                None,
            ),
            (
                "execute-api",
                Some("api.example.com"),
                "/",
                None,
                &target[..],
                Some(&b"{}"[..]),
            ),
            ("execute-api", None, "/", None, &[FORM][..], None),
            (
                "lambda",
                Some("xyz.lambda-url.eu-west-1.on.aws"),
                "/2015-03-31/functions/f/invocations",
                Some("Action=DeleteFunction"),
                &form_host[..],
                None,
            ),
            (
                "lambda",
                Some("XYZ.Lambda-Url.eu-west-1.on.aws:443"),
                "/hook",
                None,
                &form_host[..],
                Some(&b"a=1&Action=x"[..]),
            ),
        ] {
            let call =
                classify(&request(service, "POST", host, path, query, headers, body)).unwrap();
            let want = if service == "lambda" {
                "lambda:InvokeFunctionUrl"
            } else {
                "execute-api:Invoke"
            };
            assert_eq!(call.action(), want, "{host:?} {path}");
            assert_eq!(call.protocol, ApiProtocol::RestJson);
            assert!(call.resources.is_empty());
            if query.is_some_and(|q| q.contains("q=1")) {
                assert_eq!(
                    Value::Object(call.params.clone()),
                    json!({"Action": "DeleteUser", "q": "1"})
                );
            }
        }
        assert!(!needs_body("execute-api", "POST", &target));
        assert!(!needs_body("lambda", "POST", &form_host));
        assert!(needs_body(
            "lambda",
            "POST",
            &[FORM, ("host", "lambda.eu-west-1.amazonaws.com")]
        ));
        // Not a function URL host: the ordinary Lambda API.
        let call = classify(&request(
            "lambda",
            "GET",
            Some("lambda-url.eu-west-1.on.aws"),
            "/",
            None,
            NO_HEADERS,
            None,
        ))
        .unwrap();
        assert_eq!(call.action(), "lambda:?");
    }

    #[test]
    fn action_off_the_root_path() {
        // A REST service with a parameter called Action on a REST path: not guessed.
        let r = classify(&request(
            "lambda",
            "GET",
            None,
            "/2015-03-31/functions",
            Some("Action=DeleteFunction"),
            NO_HEADERS,
            None,
        ));
        assert!(is_ambiguous(&r), "{r:?}");
        // At the root, an unknown service's Action is the query protocol.
        let r = classify(&request(
            "cloudsearch",
            "GET",
            None,
            "/",
            Some("Action=DescribeDomains"),
            NO_HEADERS,
            None,
        ));
        assert_eq!(op(r), "cloudsearch:DescribeDomains");
        // SQS's query protocol addresses the queue URL.
        let r = classify(&request(
            "sqs",
            "POST",
            None,
            "/123456789012/jobs",
            None,
            &[FORM],
            Some(b"Action=SendMessage&MessageBody=hi"),
        ));
        assert_eq!(op(r), "sqs:SendMessage");
        let r = classify(&request(
            "sqs",
            "GET",
            None,
            "/123456789012/jobs",
            Some("Action=ReceiveMessage"),
            NO_HEADERS,
            None,
        ));
        assert_eq!(op(r), "sqs:ReceiveMessage");
        // A form body is the query protocol wherever it is sent.
        let r = classify(&request(
            "newsvc",
            "POST",
            None,
            "/x",
            None,
            &[FORM],
            Some(b"Action=Do"),
        ));
        assert_eq!(op(r), "newsvc:Do");
    }

    // -- Hostile input --------------------------------------------------------------------

    #[test]
    fn odd_inputs_never_panic() {
        let services = [
            "s3",
            "s3express",
            "iam",
            "sts",
            "secretsmanager",
            "lambda",
            "monitoring",
            "x",
            "",
        ];
        let methods = [
            "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "", "G\u{e9}T",
        ];
        let hosts = [
            None,
            Some(""),
            Some(":"),
            Some("["),
            Some("."),
            Some(".."),
            Some("amazonaws.com"),
            Some(".amazonaws.com"),
            Some("s3.amazonaws.com:"),
            Some("b.s3.amazonaws.com:99999999999999999999"),
            Some("é.s3.amazonaws.com"),
            Some("b.s3.us-east-1.amazonaws.com"),
            Some("-123456789012.s3-accesspoint.us-east-1.amazonaws.com"),
            Some("vpce.amazonaws.com"),
            Some("a.vpce.amazonaws.com"),
            Some("dualstack.amazonaws.com"),
            Some("s3-.amazonaws.com"),
            Some("x-.s3-accesspoint.us-east-1.amazonaws.com"),
        ];
        let paths = [
            "/",
            "",
            "//",
            "/%",
            "/b/%E2%82",
            "/b/\u{0}",
            "/é/é",
            "/b?x",
            "/2015-03-31/functions/%/invocations",
            "/a/b/c/d/e",
        ];
        let queries = [
            None,
            Some(""),
            Some("&"),
            Some("="),
            Some("%"),
            Some("a=%zz"),
            Some("acl&acl"),
            Some("Action"),
            Some("Action=%C3"),
            Some("x-id"),
            Some("list-type=%FF"),
        ];
        let header_sets: [&[(&str, &str)]; 7] = [
            NO_HEADERS,
            &[FORM],
            &[("x-amz-target", ".")],
            &[
                ("X-Amz-Target", "a.B"),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            &[("content-type", ";;;=;charset")],
            &[("x-amz-copy-source", "%")],
            &[("smithy-protocol", "")],
        ];
        let bodies: [Option<&[u8]>; 6] = [
            None,
            Some(b""),
            Some(b"\xff\xfe"),
            Some(b"Action=A&Action"),
            Some(b"{\"a\":"),
            Some(b"[[[[[["),
        ];
        let mut count = 0;
        for service in services {
            for method in methods {
                for host in hosts {
                    for path in paths {
                        for (i, query) in queries.iter().enumerate() {
                            let headers = header_sets[(i + path.len()) % header_sets.len()];
                            let body = bodies[(i + method.len()) % bodies.len()];
                            let mut req =
                                request(service, method, host, path, *query, headers, body);
                            req.region = "cn-north-1";
                            let needed = needs_body(service, method, headers);
                            req.body = None;
                            if classify(&req) == Err(ClassifyError::BodyRequired) {
                                assert!(needed, "{service} {method} {headers:?}");
                            }
                            req.body = body;
                            let _ = classify(&req);
                            count += 1;
                        }
                    }
                }
            }
        }
        assert!(count > 10_000);

        // Random strings over an alphabet of characters that matter to the parsers.
        let alphabet = [
            "%",
            "+",
            "&",
            "=",
            "/",
            "?",
            "#",
            ".",
            ":",
            "-",
            "a",
            "Z",
            "0",
            "F",
            "2",
            "é",
            "€",
            "\u{0}",
            " ",
            "[",
            "]",
            "{",
            "}",
            "\"",
            ",",
            "Action",
            "x-id",
            "acl",
            "s3",
            "amazonaws",
            "com",
            "%2F",
            "%FF",
            "uploadId",
            "us-east-1",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut parts: Vec<String> = Vec::new();
            for _ in 0..4 {
                let len = next(12);
                parts.push((0..len).map(|_| alphabet[next(alphabet.len())]).collect());
            }
            let path = format!("/{}", parts[0]);
            let headers = [
                ("x-amz-copy-source", parts[3].as_str()),
                (
                    "Content-Type",
                    if next(2) == 0 {
                        "application/x-www-form-urlencoded"
                    } else {
                        "application/x-amz-json-1.0"
                    },
                ),
            ];
            let with_target = [("x-amz-target", parts[3].as_str())];
            let service = services[next(services.len())];
            let method = methods[next(4)];
            let host = format!("{}.amazonaws.com", parts[1]);
            let headers: &[(&str, &str)] = if next(2) == 0 { &headers } else { &with_target };
            let req = request(
                service,
                method,
                Some(&host),
                &path,
                Some(&parts[2]),
                headers,
                Some(parts[2].as_bytes()),
            );
            let _ = classify(&req);
            let req = request(
                service,
                method,
                Some(&parts[1]),
                &path,
                Some(&parts[3]),
                headers,
                Some(parts[0].as_bytes()),
            );
            let _ = classify(&req);
        }
    }

    #[test]
    fn error_messages_quote_client_text_briefly() {
        let long = "x".repeat(500);
        let r = s3("GET", "/b1", Some(&format!("{long}\n")), NO_HEADERS);
        let Err(ClassifyError::Ambiguous(message)) = r else {
            panic!("{r:?}")
        };
        assert!(message.len() < 150, "{message}");
        assert!(!message.contains('\n'));
    }
}

//! AWS for the tests: moto's server as a real AWS endpoint (IAM, STS, Secrets Manager,
//! S3, ...) on loopback with IAM authentication enforced, and the AWS CLI and boto3 as
//! real clients, all from the venv `cargo xtask setup` makes at `target/venv`.
//!
//! How moto enforces authentication: every action handled before
//! `INITIAL_NO_AUTH_ACTION_COUNT` actions have been seen is served without any check
//! (moto/core/authorization.py); from then on each request's SigV4 `Authorization`
//! header is checked against the access keys of moto's own IAM users (and STS sessions),
//! and the action against their policies. [`Moto::start`] sets the count to exactly the
//! [`BOOTSTRAP_ACTIONS`] it needs to create the admin user, its policy and its key, then
//! checks that a placeholder key is refused and the admin key accepted.
//!
//! What moto 5.2.6 checks, once enforcing (tried by hand): the key id must be a key of
//! an IAM user or an STS session (else InvalidClientTokenId, InvalidAccessKeyId for S3,
//! AuthFailure for EC2), and the SigV4 signature is recomputed with its secret (a wrong
//! secret or a changed body gives SignatureDoesNotMatch; STS session tokens are
//! compared too); then the policies. It does not check the request's date (an old
//! signature is accepted), nor an S3 body against its signed `x-amz-content-sha256`. A
//! request without an `Authorization` header fails with a 500 (S3: 403); presigned
//! URLs are not supported (500). Role trust policies must name the user's ARN (the
//! account root as principal is not honoured). REST-JSON GET operations (Lambda
//! ListFunctions, API Gateway GetRestApis, EKS ListClusters) are refused with
//! SignatureDoesNotMatch even when correctly signed. `POST /moto-api/reset-auth`
//! (unauthenticated) would reopen the server: tests must not call it.
use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{free_port, workspace_root, TestCgroup};

/// The region every client and the server use.
pub const REGION: &str = "us-east-1";

/// The IAM user [`Moto::start`] creates, allowed everything.
pub const ADMIN_USER: &str = "nhi-agent-admin";

/// Unauthenticated actions moto serves before enforcing IAM: CreateUser, PutUserPolicy,
/// CreateAccessKey, the bootstrap of [`Moto::start`], and not one more.
pub const BOOTSTRAP_ACTIONS: u32 = 3;

/// An access key id and its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKey {
    pub id: String,
    pub secret: String,
}

impl AwsKey {
    /// The placeholder a workload holds instead of a real key: moto does not know it.
    pub fn placeholder() -> AwsKey {
        AwsKey {
            id: "AKIANHIAGENTPLACEHLD".into(),
            secret: "nhi-agent/placeholder/NOT-A-SECRET-000000".into(),
        }
    }
}

/// `<workspace>/target/venv/bin/<name>` if it exists.
pub fn venv_bin(name: &str) -> Option<PathBuf> {
    let path = workspace_root().join("target/venv/bin").join(name);
    path.exists().then_some(path)
}

fn require_venv_bin(name: &str) -> PathBuf {
    venv_bin(name).unwrap_or_else(|| {
        panic!(
            "{name} not found in {}: run `cargo xtask setup` (it installs the AWS CLI, boto3 \
             and moto into target/venv)",
            workspace_root().join("target/venv/bin").display()
        )
    })
}

/// A clean environment for an AWS client: only PATH from ours; HOME (so no ~/.aws of
/// the user running the tests), the region, the key or none (the SDK's default chain),
/// the CA bundle.
fn client_env<'c>(
    cmd: &'c mut Command,
    home: &Path,
    key: Option<&AwsKey>,
    ca: Option<&Path>,
) -> &'c mut Command {
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", home).env("AWS_DEFAULT_REGION", REGION);
    if let Some(key) = key {
        cmd.env("AWS_ACCESS_KEY_ID", &key.id)
            .env("AWS_SECRET_ACCESS_KEY", &key.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    if let Some(ca) = ca {
        cmd.env("AWS_CA_BUNDLE", ca);
    }
    cmd
}

/// An AWS CLI command (the venv's `aws`, v1) prepared to run inside `cg`
/// ([`TestCgroup::command`]), with a clean environment: `HOME=home`,
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from `key` (None: unset, so the SDK's
/// default credential chain is used, and `AWS_EC2_METADATA_DISABLED` is unset too: the
/// chain ends at IMDS), `AWS_DEFAULT_REGION=us-east-1`, `AWS_CA_BUNDLE` when `ca` is Some,
/// no proxy variables, PATH kept. Add `--endpoint-url` (or `AWS_ENDPOINT_URL`) and the
/// arguments.
pub fn aws_cli(cg: &TestCgroup, home: &Path, key: Option<&AwsKey>, ca: Option<&Path>) -> Command {
    let mut cmd = cg.command(require_venv_bin("aws"));
    client_env(&mut cmd, home, key, ca);
    cmd
}

/// The same environment as [`aws_cli`] for the venv's python (for boto3 scripts: add
/// `-c CODE`).
pub fn boto3_python(
    cg: &TestCgroup,
    home: &Path,
    key: Option<&AwsKey>,
    ca: Option<&Path>,
) -> Command {
    let mut cmd = cg.command(require_venv_bin("python"));
    client_env(&mut cmd, home, key, ca);
    cmd
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn checked_stdout(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the indentation common to every non-blank line, so that a snippet written
/// indented in a Rust string is valid Python.
fn dedent(code: &str) -> String {
    let indent = code
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    code.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bootstrap of [`Moto::start`]: exactly [`BOOTSTRAP_ACTIONS`] unauthenticated
/// actions (no retries), then proof that authentication is enforced. argv: endpoint,
/// user name, placeholder key id, placeholder secret. Prints the admin key as JSON.
const BOOTSTRAP: &str = r#"
import json, sys
import boto3, botocore.config, botocore.exceptions

endpoint, user, placeholder = sys.argv[1], sys.argv[2], (sys.argv[3], sys.argv[4])
once = botocore.config.Config(retries={"total_max_attempts": 1})

def client(service, key):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key[0], aws_secret_access_key=key[1], config=once)

# The unauthenticated window (INITIAL_NO_AUTH_ACTION_COUNT=3): three actions.
iam = client("iam", placeholder)
iam.create_user(UserName=user)
iam.put_user_policy(UserName=user, PolicyName="allow-everything", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName=user)["AccessKey"]
admin = (key["AccessKeyId"], key["SecretAccessKey"])

# Closed now: the placeholder is refused, the admin key works.
try:
    client("sts", placeholder).get_caller_identity()
    sys.exit("moto served an unknown key after the bootstrap: IAM authentication is not enforced")
except botocore.exceptions.ClientError as e:
    code = e.response["Error"]["Code"]
    if code != "InvalidClientTokenId":
        sys.exit(f"the placeholder key was refused with {code}, not InvalidClientTokenId")
arn = client("sts", admin).get_caller_identity()["Arn"]
if not arn.endswith(":user/" + user):
    sys.exit(f"the admin key is {arn}")
client("iam", admin).get_user(UserName=user)
print(json.dumps({"id": admin[0], "secret": admin[1]}))
"#;

/// Prepended to [`Moto::admin_python`] snippets.
const ADMIN_PRELUDE: &str = "import json, os, boto3\n\
ENDPOINT = os.environ['AWS_ENDPOINT_URL']\n\
c = boto3.session.Session()\n\
def client(service):\n    return c.client(service, endpoint_url=ENDPOINT)\n";

/// moto's server (`moto_server`) on 127.0.0.1 with IAM authentication enforced and an
/// admin user [`ADMIN_USER`] whose key [`Moto::admin`] is allowed everything. State is in
/// memory; the server's log is `dir/moto.log`. Killed on drop.
pub struct Moto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The access key of [`ADMIN_USER`] (policy: `"Action":"*","Resource":"*"`).
    pub admin: AwsKey,
    child: Child,
}

impl Moto {
    /// Starts moto_server on 127.0.0.1:<free port> with IAM authentication ENFORCED
    /// (`INITIAL_NO_AUTH_ACTION_COUNT`=[`BOOTSTRAP_ACTIONS`]), so that a request signed with
    /// an unknown key (e.g. [`AwsKey::placeholder`]) is refused (InvalidClientTokenId /
    /// 403) while one signed with `admin` succeeds; creates the IAM user [`ADMIN_USER`] with
    /// an access key and an inline policy allowing everything, and checks both.
    pub fn start() -> Moto {
        let bin = require_venv_bin("moto_server");
        let dir = tempfile::Builder::new()
            .prefix("nhi-moto-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        fs::create_dir_all(&home).expect("mkdir home");
        let log = fs::File::create(dir.path().join("moto.log")).expect("moto.log");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_clear()
            .env("HOME", &home)
            .env(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                BOOTSTRAP_ACTIONS.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().expect("start moto_server");
        let mut moto = Moto {
            port,
            dir,
            admin: AwsKey {
                id: String::new(),
                secret: String::new(),
            },
            child,
        };
        moto.wait_listening();
        let placeholder = AwsKey::placeholder();
        let out = moto
            .python_command(&placeholder)
            .args(["-c", BOOTSTRAP, &moto.endpoint(), ADMIN_USER])
            .args([&placeholder.id, &placeholder.secret])
            .stdin(Stdio::null())
            .output()
            .expect("run the venv's python");
        assert!(
            out.status.success(),
            "bootstrapping moto failed ({}):\n{}{}\nmoto.log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            moto.log_text()
        );
        let out = String::from_utf8_lossy(&out.stdout);
        let key: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("bootstrap output is not JSON ({e}): {out}"));
        moto.admin = AwsKey {
            id: key["id"].as_str().expect("id").to_string(),
            secret: key["secret"].as_str().expect("secret").to_string(),
        };
        moto
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 30 s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (one line per request).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// The venv's python with `key`, the region and `AWS_ENDPOINT_URL` set, outside any
    /// test cgroup.
    fn python_command(&self, key: &AwsKey) -> Command {
        let mut cmd = Command::new(require_venv_bin("python"));
        client_env(&mut cmd, &self.dir.path().join("home"), Some(key), None)
            .env("AWS_ENDPOINT_URL", self.endpoint());
        cmd
    }

    /// Runs a python snippet with the venv's python and boto3 against the server with the
    /// admin key (for test setup: create a secret, a bucket, ...), returns stdout; panics
    /// on failure. The snippet may be indented; `json`, `os`, `boto3` are imported,
    /// `ENDPOINT` is the endpoint, `c` a boto3 session with the admin key and
    /// `client(service)` a client of it for the endpoint (`c.client(service)` and plain
    /// `boto3.client(service)` reach it too, through `AWS_ENDPOINT_URL`).
    pub fn admin_python(&self, code: &str) -> String {
        let code = dedent(code);
        let script = format!("{ADMIN_PRELUDE}{code}\n");
        checked_stdout(
            self.python_command(&self.admin).args(["-c", &script]),
            &format!("admin python\n{code}\n"),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::OsStr,
        io::{Read as _, Write as _},
    };

    use super::*;

    /// Runs the venv's `aws` (outside any cgroup) with the clean client environment.
    fn aws_here(home: &Path, key: &AwsKey, args: &[impl AsRef<OsStr>]) -> std::process::Output {
        let mut cmd = Command::new(require_venv_bin("aws"));
        client_env(&mut cmd, home, Some(key), None)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run aws")
    }

    /// The status code of a raw HTTP request to `moto` without any `Authorization` header.
    fn unsigned_status(moto: &Moto, request_target: &str) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", moto.port)).expect("connect moto");
        write!(
            s,
            "GET {request_target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            moto.port
        )
        .expect("write");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {response}"))
    }

    #[test]
    fn dedent_strips_common_indentation() {
        assert_eq!(
            dedent("\n    a = 1\n    if a:\n        b = 2\n"),
            "\na = 1\nif a:\n    b = 2"
        );
    }

    /// The AWS CLI against moto: every call with a placeholder key, with the admin key id
    /// and a wrong secret, and without a signature is refused; with the admin key it works.
    #[test]
    fn moto_enforces_iam_authentication() {
        let moto = Moto::start();
        let home = moto.dir.path().join("home");
        let endpoint = moto.endpoint();
        moto.admin_python(
            r#"
            client("secretsmanager").create_secret(Name="nhi/db", SecretString="hunter2")
            c.client("s3").create_bucket(Bucket="nhi-bucket")
            "#,
        );
        let wrong_secret = AwsKey {
            id: moto.admin.id.clone(),
            secret: AwsKey::placeholder().secret,
        };
        let calls: [&[&str]; 4] = [
            &["sts", "get-caller-identity"],
            &["iam", "list-users"],
            &["secretsmanager", "list-secrets"],
            &["s3", "ls"],
        ];
        for call in calls {
            let args = [&["--endpoint-url", endpoint.as_str()][..], call].concat();
            let text = |out: &std::process::Output| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            let out = aws_here(&home, &moto.admin, &args);
            assert!(out.status.success(), "admin {call:?}: {}", text(&out));
            let expected = match call[0] {
                "sts" | "iam" => ADMIN_USER,
                "secretsmanager" => "nhi/db",
                _ => "nhi-bucket",
            };
            assert!(
                text(&out).contains(expected),
                "admin {call:?}: {}",
                text(&out)
            );
            for (who, key, error) in [
                ("placeholder", AwsKey::placeholder(), "InvalidClientTokenId"),
                (
                    "wrong secret",
                    wrong_secret.clone(),
                    "SignatureDoesNotMatch",
                ),
            ] {
                let out = aws_here(&home, &key, &args);
                assert!(!out.status.success(), "{who} {call:?}: {}", text(&out));
                // S3 names an unknown key InvalidAccessKeyId.
                let error = if call[0] == "s3" && who == "placeholder" {
                    "InvalidAccessKeyId"
                } else {
                    error
                };
                assert!(text(&out).contains(error), "{who} {call:?}: {}", text(&out));
            }
        }
        // No Authorization header at all: moto fails the request (500 for the query and
        // JSON protocols, 403 for S3), never serves it.
        for target in [
            "/?Action=GetCallerIdentity&Version=2011-06-15",
            "/?Action=ListUsers&Version=2010-05-08",
            "/nhi-bucket",
        ] {
            let status = unsigned_status(&moto, target);
            assert!(status >= 400, "unsigned {target}: {status}");
        }
    }
}

//! The AWS part of `cargo xtask bench`: boto3 calls per second against moto's server
//! with IAM authentication enforced (`nhi_tests::aws::Moto`, from the venv `cargo xtask
//! setup` makes), two ways: directly, signed with the real admin key, and through the
//! agent as an `aws` target, signed with the placeholder key over HTTPS to the agent
//! (its CA), the agent checking the placeholder signature, naming and judging the call,
//! journaling it and signing it again with the admin key from its credentials file.
//!
//! Each run is one Python process: one boto3 client (keep-alive: one pooled
//! connection), one call to warm up (connection, TLS, credentials), then N sequential
//! calls timed. Two calls: `sts:GetCallerIdentity` (query protocol, small XML answer)
//! and `s3:GetObject` of a 1 KiB object (REST-XML, the object streamed untouched). Runs
//! are interleaved; the medians of calls/s and of mean and p99 latency are printed, the
//! agent's as a ratio to direct. Direct is plain HTTP (moto serves no TLS), so the
//! ratio includes the client's TLS to the agent, as a real SDK's HTTPS to AWS would.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nhi_tests::aws::{boto3_python, AwsKey, Moto};
use nhi_tests::TestCgroup;
use serde_json::Value;

use crate::bench_http::{median_run, Run};
use crate::bench_targets::Reported;

/// The bucket and key of the object `s3:GetObject` reads, and its size.
const BUCKET: &str = "nhi-bench";
const KEY: &str = "one-kib.bin";
const OBJECT_BYTES: usize = 1024;

/// argv: call (`sts` or `s3`), endpoint, calls. Prints one JSON object.
const CLIENT: &str = r#"
import json, sys, time
import boto3, botocore.config

call, endpoint, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = botocore.config.Config(retries={"total_max_attempts": 1}, max_pool_connections=1)
if call == "sts":
    sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", config=config)
    def one():
        sts.get_caller_identity()
else:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)
    def one():
        body = s3.get_object(Bucket=sys.argv[4], Key=sys.argv[5])["Body"].read()
        if len(body) != int(sys.argv[6]):
            sys.exit(f"GetObject read {len(body)} bytes")
try:
    one()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        one()
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - start
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
latencies.sort()
print(json.dumps({
    "per_sec": n / total,
    "mean_us": total / n * 1e6,
    "p99_us": latencies[min(n - 1, n * 99 // 100)] * 1e6,
}))
"#;

/// moto with IAM enforced, the 1 KiB object, and the agent's credentials file (the
/// admin key, mode 0600).
pub struct AwsServer {
    pub moto: Moto,
    pub credentials: PathBuf,
}

impl AwsServer {
    /// Starts moto (`None` when the venv has no moto: `cargo xtask setup` installs it).
    pub fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        if nhi_tests::aws::venv_bin("moto_server").is_none() {
            return Ok(None);
        }
        let moto = Moto::start();
        moto.admin_python(&format!(
            "s3 = client('s3')\n\
             s3.create_bucket(Bucket='{BUCKET}')\n\
             s3.put_object(Bucket='{BUCKET}', Key='{KEY}', Body=b'x' * {OBJECT_BYTES})\n"
        ));
        std::fs::create_dir_all(dir)?;
        let credentials = dir.join("aws-credentials");
        std::fs::write(
            &credentials,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                moto.admin.id, moto.admin.secret
            ),
        )?;
        std::fs::set_permissions(
            &credentials,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(Some(Self { moto, credentials }))
    }

    /// The `[[target]]` and `[[policy]]` of the agent's config: the AWS target with a
    /// policy whose rule the bench's calls never meet.
    pub fn config(&self) -> String {
        format!(
            r#"
[[target]]
name = "aws"
address = "127.0.0.1:{port}"
protocol = "aws"
aws_credentials_file = "{credentials}"

[[policy]]
name = "bench-aws"
workload = "*"
target = "aws"
mode = "enforce"
default = "allow"
record_results = "summary"

[[policy.rule]]
name = "no-iam-users"
verdict = "deny"
actions = ["iam:CreateUser", "iam:DeleteUser"]
"#,
            port = self.moto.port,
            credentials = self.credentials.display(),
        )
    }
}

pub struct AwsBench<'a> {
    pub server: &'a AwsServer,
    /// The agent's CA certificate (`<state_dir>/tls/ca.crt`).
    pub ca: &'a Path,
    /// An empty HOME for the clients (no ~/.aws).
    pub home: &'a Path,
    pub direct_cg: &'a TestCgroup,
    pub agent_cg: &'a TestCgroup,
    pub runs: usize,
    pub calls: u64,
}

impl AwsBench<'_> {
    /// Runs both calls both ways, prints the table and returns the agent's ratios to
    /// direct (calls/s).
    pub fn run(&self) -> anyhow::Result<Vec<Reported>> {
        let moto = &self.server.moto;
        println!(
            "\nAWS: boto3, one client (keep-alive), {} sequential calls per run, {} interleaved runs, medians;\n\
             direct: moto over HTTP with the admin key; agent: HTTPS to the agent with the placeholder key, the agent signs",
            self.calls, self.runs
        );
        println!(
            "{:<36} {:>10} {:>8} {:>10} {:>10}",
            "", "calls/s", "ratio", "mean us", "p99 us"
        );
        let mut reported = Vec::new();
        for (call, label) in [
            ("sts", "sts:GetCallerIdentity"),
            ("s3", "s3:GetObject 1 KiB"),
        ] {
            let (mut direct, mut agent) = (Vec::new(), Vec::new());
            for _ in 0..self.runs {
                direct.push(self.one(self.direct_cg, &moto.admin, None, &moto.endpoint(), call)?);
                agent.push(self.one(
                    self.agent_cg,
                    &AwsKey::placeholder(),
                    Some(self.ca),
                    &format!("https://127.0.0.1:{}", moto.port),
                    call,
                )?);
            }
            let (d, a) = (median_run(&direct), median_run(&agent));
            for (route, m) in [("direct", d), ("agent aws", a)] {
                println!(
                    "{:<36} {:>10.0} {:>7.2}x {:>10.0} {:>10.0}",
                    format!("{label} {route}"),
                    m.per_sec,
                    m.per_sec / d.per_sec,
                    m.mean_us,
                    m.p99_us
                );
            }
            reported.push(Reported {
                what: format!("{label}, agent aws"),
                ratio: a.per_sec / d.per_sec,
            });
        }
        Ok(reported)
    }

    fn one(
        &self,
        cg: &TestCgroup,
        key: &AwsKey,
        ca: Option<&Path>,
        endpoint: &str,
        call: &str,
    ) -> anyhow::Result<Run> {
        let out = boto3_python(cg, self.home, Some(key), ca)
            .args(["-c", CLIENT, call, endpoint, &self.calls.to_string()])
            .args([BUCKET, KEY, &OBJECT_BYTES.to_string()])
            .output()
            .context("running the venv's python")?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "boto3 said: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(e) = v.get("error") {
            bail!("boto3 {call} via {endpoint}: {e}");
        }
        let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        Ok(Run {
            per_sec: f("per_sec")?,
            mean_us: f("mean_us")?,
            p99_us: f("p99_us")?,
        })
    }
}

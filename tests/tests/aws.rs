//! AWS targets (`protocol = "aws"`): the real AWS CLI and boto3 (from the venv `cargo
//! xtask setup` makes) in an intercepted cgroup, holding only the agent's placeholder
//! key, against moto's server with IAM authentication enforced (a call signed with the
//! placeholder is refused when sent directly). The agent checks the placeholder
//! signature, judges the call by action, signs it again with the key of its own
//! credentials file and journals it; the key's secret appears nowhere else.
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nhi_tests::aws::{aws_cli, boto3_python, AwsKey, Moto};
use nhi_tests::*;
use serde_json::Value;

fn placeholder() -> AwsKey {
    AwsKey::placeholder()
}

/// A shared-credentials file (mode 0600, kept until the test removes it) holding `id`
/// and `secret` as the default profile.
fn credentials_file(id: &str, secret: &str) -> PathBuf {
    let path = tempfile::NamedTempFile::new()
        .expect("credentials file")
        .into_temp_path()
        .keep()
        .expect("keep credentials file");
    std::fs::write(
        &path,
        format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .expect("write credentials");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod credentials");
    path
}

/// An agent with one AWS target for `moto`, the agent's own key in a 0600 credentials
/// file, and `rules` as the policy's rules.
fn agent_for(moto: &Moto, cg: &TestCgroup, rules: &str) -> (Agent, PathBuf) {
    agent_with(moto, cg, "", "", rules)
}

/// [`agent_for`] with more keys for the workload and the AWS target.
fn agent_with(
    moto: &Moto,
    cg: &TestCgroup,
    workload_keys: &str,
    target_keys: &str,
    rules: &str,
) -> (Agent, PathBuf) {
    let path = credentials_file(&moto.admin.id, &moto.admin.secret);
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n{workload_keys}\n\
         [[target]]\nname = \"aws\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"aws\"\n\
         aws_credentials_file = \"{}\"\n{target_keys}\n\
         [[policy]]\nname = \"bots\"\n\n{rules}",
        cg.rel(),
        moto.port,
        path.display()
    ));
    (agent, path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the AWS CLI in `cg` with `key` against the agent (HTTPS, the agent CA).
fn cli(cg: &TestCgroup, home: &Path, ca: &Path, moto: &Moto, args: &[&str]) -> Output {
    cli_as(&placeholder(), cg, home, ca, moto, args)
}

/// [`cli`] signing with `key`.
fn cli_as(
    key: &AwsKey,
    cg: &TestCgroup,
    home: &Path,
    ca: &Path,
    moto: &Moto,
    args: &[&str],
) -> Output {
    aws_cli(cg, home, Some(key), Some(ca))
        .args([
            "--endpoint-url",
            &format!("https://127.0.0.1:{}", moto.port),
        ])
        .args(["--region", "us-east-1", "--output", "json"])
        .args(args)
        .output()
        .expect("run aws")
}

/// A key that is not the placeholder: what a bot should not hold.
fn other_key() -> AwsKey {
    AwsKey {
        id: "AKIAOTHERKEY00000001".into(),
        secret: "a-key-the-bot-should-not-hold".into(),
    }
}

fn aws_calls(agent: &Agent) -> Vec<Value> {
    http::data_of_kind(agent, "aws_call")
}

/// The events of `kind` once `done` holds for them (at most 20 s; then as they are, for
/// the assertions to show). A client's answer can come before the journal's writer has
/// committed the events journaled for it (written to the pre-log first), and it
/// commits in order: waiting for the last expected event waits for all before it.
fn events_when(agent: &Agent, kind: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = http::data_of_kind(agent, kind);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `aws_call` records once `done` holds for them.
fn calls_when(agent: &Agent, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    events_when(agent, "aws_call", done)
}

/// Whether `calls` hold a call of `action`.
fn has(calls: &[Value], action: &str) -> bool {
    calls.iter().any(|c| c["action"] == action)
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn the_aws_cli_holds_a_placeholder_and_the_agent_signs_for_it() {
    privileged!("the_aws_cli_holds_a_placeholder_and_the_agent_signs_for_it");
    let moto = Moto::start();
    let secret_value = "correct-horse-battery-staple-4711";
    moto.admin_python(&format!(
        "c.client('secretsmanager').create_secret(Name='db-password', SecretString='{secret_value}')\n\
         c.client('s3').create_bucket(Bucket='artifacts')\n"
    ));
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let (agent, creds) = agent_for(
        &moto,
        &cg,
        "[[policy.rule]]\nname = \"no-iam-users\"\nverdict = \"deny\"\nactions = [\"iam:CreateUser\", \"iam:DeleteUser\"]\n",
    );
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");

    // Sent directly (not intercepted), the placeholder is refused by the server.
    let direct = aws_cli(
        &TestCgroup::create(&unique("nhi-direct")),
        home.path(),
        Some(&placeholder()),
        None,
    )
    .args(["--endpoint-url", &moto.endpoint(), "--region", "us-east-1"])
    .args(["sts", "get-caller-identity"])
    .output()
    .expect("aws");
    assert!(!direct.status.success(), "{}", text(&direct));

    // Through the agent: the server sees the agent's identity.
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &["sts", "get-caller-identity"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        who["Arn"]
            .as_str()
            .unwrap()
            .ends_with("user/nhi-agent-admin"),
        "{who}"
    );

    // A secret's value is masked for the bot (and the journal).
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &[
            "secretsmanager",
            "get-secret-value",
            "--secret-id",
            "db-password",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["Name"], "db-password");
    assert_eq!(
        got["SecretString"],
        "[redacted]",
        "{:#?}",
        http::data_of_kind(&agent, "http_response")
    );
    assert!(!text(&out).contains(secret_value), "{}", text(&out));

    // A denied action: AccessDenied naming the rule, nothing reaches the server.
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &["iam", "create-user", "--user-name", "mallory"],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("AccessDenied"), "{said}");
    assert!(said.contains("no-iam-users"), "{said}");
    let users =
        moto.admin_python("print([u['UserName'] for u in c.client('iam').list_users()['Users']])");
    assert!(!users.contains("mallory"), "{users}");

    // S3 both ways (the CLI's PutObject body is aws-chunked with an unsigned trailer).
    let local = home.path().join("upload.bin");
    let data: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let cp = |from: &str, to: &str| {
        let out = cli(&cg, home.path(), &ca, &moto, &["s3", "cp", from, to]);
        assert!(out.status.success(), "{}", text(&out));
    };
    cp(local.to_str().unwrap(), "s3://artifacts/build/app.bin");
    let back = home.path().join("download.bin");
    cp("s3://artifacts/build/app.bin", back.to_str().unwrap());
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the object came back unchanged"
    );
    // S3 reads a key literally: `%` and `//` are part of it, not escapes to refuse.
    cp(local.to_str().unwrap(), "s3://artifacts/odd/100%//key.bin");
    let keys = moto.admin_python("print(sorted(o['Key'] for o in c.client('s3').list_objects_v2(Bucket='artifacts')['Contents']))");
    assert!(keys.contains("'odd/100%//key.bin'"), "{keys}");

    let calls = calls_when(&agent, |c| {
        c.iter().filter(|c| c["action"] == "s3:PutObject").count() == 2
    });
    let action_of =
        |a: &str| -> Vec<&Value> { calls.iter().filter(|c| c["action"] == a).collect() };
    let sts = action_of("sts:GetCallerIdentity");
    assert_eq!(sts.len(), 1, "{calls:#?}");
    assert_eq!(sts[0]["status"], 200);
    assert_eq!(sts[0]["outcome"], "forwarded");
    assert_eq!(sts[0]["workload"], "bot");
    assert_eq!(sts[0]["client_key_id"], placeholder().id.as_str());
    assert!(
        sts[0]["signed_as"]
            .as_str()
            .unwrap()
            .starts_with(&moto.admin.id),
        "{}",
        sts[0]
    );
    assert!(
        sts[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{}",
        sts[0]
    );
    let denied = action_of("iam:CreateUser");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["outcome"], "refused");
    assert_eq!(denied[0]["rule"], "no-iam-users");
    assert_eq!(denied[0]["error_code"], "AccessDenied");
    assert_eq!(denied[0]["params"]["UserName"], "mallory");
    let get = action_of("secretsmanager:GetSecretValue");
    assert_eq!(get.len(), 1);
    assert_eq!(get[0]["resources"], serde_json::json!(["db-password"]));
    let put = action_of("s3:PutObject");
    assert_eq!(put.len(), 2, "{calls:#?}");
    assert!(
        put[1]["resources"]
            .as_array()
            .unwrap()
            .contains(&Value::from("arn:aws:s3:::artifacts/odd/100%//key.bin")),
        "{}",
        put[1]
    );
    assert!(put[0]["resources"]
        .as_array()
        .unwrap()
        .contains(&Value::from("arn:aws:s3:::artifacts/build/app.bin")));
    assert_eq!(action_of("s3:GetObject").len(), 1);

    // The CLI reads the calls: searched by action, replayed, exported as OCSF API
    // Activity (6003).
    let journal = agent.journal.to_str().unwrap().to_string();
    let out = agent.cli(&[
        "events",
        "--journal",
        &journal,
        "--text",
        "iam:CreateUser",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let found: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        found
            .iter()
            .any(|e| e["kind"] == "aws_call" && e["data"]["rule"] == "no-iam-users"),
        "{found:#?}"
    );
    let out = agent.cli(&["export", "--format", "ocsf", "--journal", &journal]);
    assert!(out.status.success(), "{}", text(&out));
    let ocsf = String::from_utf8_lossy(&out.stdout);
    let activities: Vec<Value> = ocsf
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["class_uid"] == 6003)
        .collect();
    let create = activities
        .iter()
        .find(|e| e["api"]["operation"] == "CreateUser")
        .unwrap_or_else(|| panic!("{ocsf}"));
    assert_eq!(create["api"]["service"]["name"], "iam");
    assert_eq!(create["cloud"]["provider"], "AWS");
    let get = activities
        .iter()
        .find(|e| e["api"]["operation"] == "GetCallerIdentity")
        .unwrap_or_else(|| panic!("{ocsf}"));
    // The AWS request id, CloudTrail's join key.
    assert_eq!(get["api"]["request"]["uid"], sts[0]["request_id"], "{get}");
    let session = agent.sessions()[0]["id"].to_string();
    let out = agent.cli(&["replay", &session, "--journal", &journal, "--instant"]);
    assert!(out.status.success(), "{}", text(&out));
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(replay.contains("sts:GetCallerIdentity"), "{replay}");

    // The agent's secret key and the secret's value are in no journal file or log, and
    // no client output.
    agent.wait_sessions_ended(1);
    let mut agent = agent;
    agent.terminate();
    for needle in [moto.admin.secret.as_str(), secret_value] {
        let found: Vec<PathBuf> = files_holding(agent.dir.path(), needle)
            .into_iter()
            .filter(|p| p != &creds)
            .collect();
        assert!(found.is_empty(), "{needle:?} found in {found:?}");
    }
    let _ = std::fs::remove_file(&creds);
}

#[test]
fn boto3_calls_are_held_for_approval_and_journaled() {
    privileged!("boto3_calls_are_held_for_approval_and_journaled");
    let moto = Moto::start();
    moto.admin_python("c.client('iam').create_user(UserName='deployer')\n");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let (agent, creds) = agent_for(
        &moto,
        &cg,
        "[[policy.rule]]\nname = \"keys-need-a-human\"\nverdict = \"approve\"\nactions = [\"iam:CreateAccessKey\"]\n",
    );
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");
    let script = format!(
        "import boto3, json\n\
         iam = boto3.client('iam', endpoint_url='https://127.0.0.1:{port}', region_name='us-east-1')\n\
         key = iam.create_access_key(UserName='deployer')['AccessKey']\n\
         print(json.dumps({{'id': key['AccessKeyId'], 'secret': key['SecretAccessKey']}}))\n",
        port = moto.port
    );
    let child = boto3_python(&cg, home.path(), Some(&placeholder()), Some(&ca))
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let socket = agent.dir.path().join("approvals.sock");
    let pending = wait_pending(&socket);
    assert_eq!(pending["rule"], "keys-need-a-human");
    let keys = moto.admin_python(
        "print(len(c.client('iam').list_access_keys(UserName='deployer')['AccessKeyMetadata']))",
    );
    assert_eq!(keys.trim(), "0", "nothing reached the server while held");
    let id = pending["id"].as_str().unwrap().to_string();
    let out = approvals(&socket, &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(key["id"].as_str().unwrap().starts_with("AKIA"), "{key}");
    // The new key's secret is masked for the bot: SecretAccessKey is an AWS secret field.
    let real = moto.admin_python("print(c.client('iam').list_access_keys(UserName='deployer')['AccessKeyMetadata'][0]['AccessKeyId'])");
    assert_eq!(key["id"].as_str().unwrap(), real.trim());
    assert_eq!(key["secret"], "[redacted]", "{key}");
    let calls = calls_when(&agent, |c| has(c, "iam:CreateAccessKey"));
    let call = calls
        .iter()
        .find(|c| c["action"] == "iam:CreateAccessKey")
        .expect("aws_call");
    assert_eq!(call["status"], 200);
    assert_eq!(call["outcome"], "forwarded");
    assert_eq!(call["rule"], "keys-need-a-human");
    let decisions: Vec<Value> = http::data_of_kind(&agent, "approval");
    assert!(
        decisions.iter().any(|d| d["decision"] == "approved"),
        "{decisions:#?}"
    );

    // A call signed with any key but the placeholder is refused: a bot should hold no
    // real key (accept_any_client_key lets such calls through, see below).
    let out = cli_as(
        &other_key(),
        &cg,
        home.path(),
        &ca,
        &moto,
        &["sts", "get-caller-identity"],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("InvalidClientTokenId"), "{said}");
    assert!(said.contains("accept_any_client_key"), "{said}");
    let _ = std::fs::remove_file(&creds);
}

#[test]
fn an_sdk_with_no_credentials_gets_the_placeholder_from_the_metadata_target() {
    privileged!("an_sdk_with_no_credentials_gets_the_placeholder_from_the_metadata_target");
    let moto = Moto::start();
    moto.admin_python("c.client('s3').create_bucket(Bucket='cache')\n");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    // Nothing listens at the metadata addresses: the agent answers there. (Loopback
    // addresses stand in for 169.254.169.254 and 169.254.170.2, which SDKs are pointed
    // at by the variables they read.)
    let imds = format!("127.0.0.{}:{}", 100 + std::process::id() % 100, free_port());
    let ecs = format!("127.0.0.{}:{}", 200 + std::process::id() % 50, free_port());
    let (agent, creds) = agent_for(
        &moto,
        &cg,
        &format!(
            "[[policy.rule]]\nname = \"no-user-data\"\nverdict = \"deny\"\npaths = [\"/latest/user-data\"]\n\n\
             [[target]]\nname = \"imds\"\naddress = \"{imds}\"\nprotocol = \"aws-imds\"\n\
             aws_region = \"us-east-1\"\naws_role_name = \"ci-runner\"\n\n\
             [[target]]\nname = \"ecs\"\naddress = \"{ecs}\"\nprotocol = \"aws-imds\"\n"
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");
    let script = format!(
        "import boto3, json, urllib.request\n\
         s = boto3.Session()\n\
         c = s.get_credentials().get_frozen_credentials()\n\
         sts = s.client('sts', endpoint_url='https://127.0.0.1:{port}')\n\
         s3 = s.client('s3', endpoint_url='https://127.0.0.1:{port}')\n\
         s3.put_object(Bucket='cache', Key='k', Body=b'hello')\n\
         try:\n    urllib.request.urlopen('http://{imds}/latest/user-data')\n    ud = 'read'\n\
         except urllib.error.HTTPError as e:\n    ud = e.code\n\
         print(json.dumps({{'key': c.access_key, 'arn': sts.get_caller_identity()['Arn'], 'user_data': ud}}))\n",
        port = moto.port
    );
    let out = boto3_python(&cg, home.path(), None, Some(&ca))
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{imds}/"),
        )
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["key"], placeholder().id.as_str(), "{got}");
    assert!(
        got["arn"]
            .as_str()
            .unwrap()
            .ends_with("user/nhi-agent-admin"),
        "{got}"
    );
    assert_eq!(
        got["user_data"], 403,
        "a rule refuses the rest of the metadata tree"
    );
    let stored = moto.admin_python(
        "print(c.client('s3').get_object(Bucket='cache', Key='k')['Body'].read().decode())",
    );
    assert_eq!(stored.trim(), "hello");

    // ECS-style container credentials (a full URI on loopback, as SDKs allow).
    let out = boto3_python(&cg, home.path(), None, Some(&ca))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("http://{ecs}/v2/credentials/task-1"))
        .args(["-c", &format!(
            "import boto3\nprint(boto3.client('sts', endpoint_url='https://127.0.0.1:{}').get_caller_identity()['Arn'])\n",
            moto.port
        )])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .ends_with("user/nhi-agent-admin"));

    let calls = calls_when(&agent, |c| c.len() == 3);
    let requests = http::data_of_kind(&agent, "http_request");
    let answered: Vec<&str> = requests
        .iter()
        .filter(|r| r["action"] == "answered")
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(answered.contains(&"/latest/api/token"), "{answered:?}");
    assert!(
        answered.contains(&"/latest/meta-data/iam/security-credentials/ci-runner"),
        "{answered:?}"
    );
    assert!(answered.contains(&"/v2/credentials/task-1"), "{answered:?}");
    let refused: Vec<&Value> = requests
        .iter()
        .filter(|r| r["rule"] == "no-user-data")
        .collect();
    assert_eq!(refused.len(), 1, "{requests:#?}");
    assert_eq!(calls.iter().filter(|c| c["status"] == 200).count(), 3);
    let _ = std::fs::remove_file(&creds);
}

#[test]
fn a_workload_role_is_assumed_per_session_and_names_it() {
    privileged!("a_workload_role_is_assumed_per_session_and_names_it");
    let moto = Moto::start();
    let role = moto.admin_python(
        "import json\n\
         iam = c.client('iam')\n\
         admin = iam.get_user(UserName='nhi-agent-admin')['User']['Arn']\n\
         trust = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'AWS': admin}, 'Action': 'sts:AssumeRole'}]}\n\
         arn = iam.create_role(RoleName='ci-deployer', AssumeRolePolicyDocument=json.dumps(trust))['Role']['Arn']\n\
         iam.put_role_policy(RoleName='ci-deployer', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
         print(arn)\n",
    );
    let role = role.trim().to_string();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let (agent, creds) = agent_with(
        &moto,
        &cg,
        &format!("aws_role_arn = \"{role}\"\n"),
        &format!(
            "aws_sts_endpoint = \"{}\"\nmask_body_limit = \"1KiB\"\naccept_any_client_key = true\n",
            moto.endpoint()
        ),
        "",
    );
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &["sts", "get-caller-identity"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arn = who["Arn"].as_str().unwrap();
    let session = agent.sessions()[0]["id"].as_i64().unwrap();
    assert_eq!(
        arn,
        format!("arn:aws:sts::123456789012:assumed-role/ci-deployer/nhi-{session}-bot"),
        "the role session names the journal session and the workload"
    );
    let calls = calls_when(&agent, |c| !c.is_empty());
    let signed_as = calls[0]["signed_as"].as_str().unwrap();
    assert!(signed_as.contains(&role), "{signed_as}");
    assert!(
        signed_as.contains(&format!("nhi-{session}-bot")),
        "{signed_as}"
    );

    // With accept_any_client_key, a call signed with another key is checked for its
    // shape only and signed by the agent all the same.
    let out = cli_as(
        &other_key(),
        &cg,
        home.path(),
        &ca,
        &moto,
        &["sts", "get-caller-identity"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("assumed-role/ci-deployer/nhi-"),
        "{}",
        text(&out)
    );
    let calls = calls_when(&agent, |c| c.len() == 2);
    assert_eq!(calls[1]["client_key_id"], "AKIAOTHERKEY00000001");

    // An answer that must be masked and cannot be (over mask_body_limit) is a 502 for
    // the bot, never raw, and the call still has its record.
    moto.admin_python(&format!(
        "c.client('secretsmanager').create_secret(Name='big', SecretString='{}')\n",
        "x".repeat(2048)
    ));
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &["secretsmanager", "get-secret-value", "--secret-id", "big"],
    );
    assert!(!out.status.success());
    assert!(!text(&out).contains(&"x".repeat(100)), "{}", text(&out));
    // ... in the shape the SDK reads (an AWS error, not the HTTP targets' JSON).
    assert!(text(&out).contains("InternalFailure"), "{}", text(&out));
    let calls = calls_when(&agent, |c| has(c, "secretsmanager:GetSecretValue"));
    let big = calls
        .iter()
        .find(|c| c["action"] == "secretsmanager:GetSecretValue")
        .expect("the call's record");
    assert_eq!(big["outcome"], "answer not masked", "{big}");
    assert_eq!(big["status"], 502);
    let _ = std::fs::remove_file(&creds);
}

/// The SHA-256 of a file, hex.
fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn s3_streaming_uploads_of_64_mib_are_signed_again_chunk_by_chunk() {
    privileged!("s3_streaming_uploads_of_64_mib_are_signed_again_chunk_by_chunk");
    let s3 = S3Server::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let (agent, creds) = s3_agent(&s3, &cg);
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");
    let client = workspace_root().join("tests/clients/s3_chunked_put.py");
    let key = placeholder();
    // The client's run for `object` with `extra` arguments.
    let run = |object: &str, extra: &[&str]| -> Output {
        boto3_python(&cg, home.path(), None, Some(&ca))
            .arg(&client)
            .arg(format!(
                "https://127.0.0.1:{}/{}/{object}",
                s3.port, s3.bucket
            ))
            .args([&key.id, &key.secret, &(64 << 20).to_string(), "--ca"])
            .arg(&ca)
            .args(extra)
            .output()
            .expect("python")
    };
    // Its status line, the SHA-256 of what it sent, and the rest of its output.
    let put = |object: &str, extra: &[&str]| -> (String, String, String) {
        let out = run(object, extra);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = stdout.splitn(3, '\n');
        (
            lines.next().unwrap_or("").to_string(),
            lines.next().unwrap_or("").to_string(),
            lines.next().unwrap_or("").to_string(),
        )
    };

    // STREAMING-AWS4-HMAC-SHA256-PAYLOAD: 1024 chunks of 64 KiB, each signed by the
    // client with the placeholder, checked and signed again by the agent; s3s-fs checks
    // every chunk signature against the agent's key.
    let (status, sent, said) = put("chunked.bin", &[]);
    assert_eq!(
        status,
        "200",
        "{said}\n{:#?}\n{}",
        http::data_of_kind(&agent, "http_request"),
        agent.log_text()
    );
    assert_eq!(sha256_file(&s3.object_path("chunked.bin")), sent);

    // One byte of one chunk changed after the client signed it: the agent stops the
    // upload at that chunk; nothing is stored.
    let (status, _, said) = put("tampered.bin", &["--tamper", "300"]);
    assert_ne!(status, "200", "{said}");
    assert!(!s3.object_path("tampered.bin").exists());

    // A client killed in the middle of its upload: the agent does not end the upstream
    // body as if it were whole; nothing is stored, and the agent serves the next one.
    let out = run("killed.bin", &["--die-after", "200"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let cut = calls_when(&agent, |c| {
        c.iter()
            .filter(|c| c["payload"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
            .count()
            == 3
    });
    assert_eq!(
        cut.last().unwrap()["outcome"],
        "upstream failed",
        "{cut:#?}"
    );
    assert!(!s3.object_path("killed.bin").exists());

    // The AWS CLI: a 64 MiB multipart upload (8 MiB parts) and the download.
    let local = home.path().join("big.bin");
    let data: Vec<u8> = (0..(64u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let s3_cli = |args: &[&str]| {
        aws_cli(&cg, home.path(), Some(&key), Some(&ca))
            .args([
                "--endpoint-url",
                &format!("https://127.0.0.1:{}", s3.port),
                "--region",
                "us-east-1",
            ])
            .args(args)
            .output()
            .expect("aws")
    };
    let target = format!("s3://{}/multi/big.bin", s3.bucket);
    let out = s3_cli(&["s3", "cp", local.to_str().unwrap(), &target]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        sha256_file(&s3.object_path("multi/big.bin")),
        sha256_file(&local)
    );
    let back = home.path().join("back.bin");
    let out = s3_cli(&["s3", "cp", &target, back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256_file(&back), sha256_file(&local));

    let calls = calls_when(&agent, |c| has(c, "s3:GetObject"));
    let count = |action: &str| calls.iter().filter(|c| c["action"] == action).count();
    assert_eq!(count("s3:CreateMultipartUpload"), 1, "{calls:#?}");
    assert_eq!(count("s3:UploadPart"), 8, "{calls:#?}");
    assert_eq!(count("s3:CompleteMultipartUpload"), 1, "{calls:#?}");
    let chunked: Vec<&Value> = calls
        .iter()
        .filter(|c| c["payload"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        .collect();
    assert_eq!(chunked.len(), 3, "{calls:#?}");
    assert_eq!(chunked[0]["status"], 200);
    assert_eq!(chunked[1]["outcome"], "upstream failed", "{calls:#?}");
    assert_eq!(
        chunked[0]["signed_as"],
        format!(
            "{} (profile default of {})",
            S3Server::ACCESS_KEY,
            creds.display()
        )
    );
    let _ = std::fs::remove_file(&creds);
}

/// An agent whose AWS target for `port` signs with the S3 server's key.
fn s3_agent(s3: &S3Server, cg: &TestCgroup) -> (Agent, PathBuf) {
    let creds = credentials_file(S3Server::ACCESS_KEY, S3Server::SECRET_KEY);
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
         [[target]]\nname = \"s3\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"aws\"\n\
         aws_credentials_file = \"{}\"\n",
        cg.rel(),
        s3.port,
        creds.display()
    ));
    (agent, creds)
}

#[test]
fn presigned_urls_are_presigned_again_for_the_time_they_had_left() {
    privileged!("presigned_urls_are_presigned_again_for_the_time_they_had_left");
    let s3 = S3Server::start();
    std::fs::write(s3.object_path("report.txt"), b"quarterly numbers\n").unwrap();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let (agent, creds) = s3_agent(&s3, &cg);
    let home = tempfile::tempdir().unwrap();
    let ca = agent.dir.path().join("tls/ca.crt");
    let presign = |expires: u32| -> String {
        let out = boto3_python(&cg, home.path(), Some(&placeholder()), Some(&ca))
            .args(["-c", &format!(
                "import boto3, botocore.config\nprint(boto3.client('s3', endpoint_url='https://127.0.0.1:{}', config=botocore.config.Config(signature_version='s3v4')).generate_presigned_url('get_object', Params={{'Bucket': '{}', 'Key': 'report.txt'}}, ExpiresIn={expires}))\n",
                s3.port, s3.bucket
            )])
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let url = presign(600);
    assert!(
        url.contains("X-Amz-Credential=AKIANHIAGENTPLACEHLD"),
        "{url}"
    );
    let ca_arg = ca.to_str().unwrap();
    let (status, body) = http::curl(&cg, &["--cacert", ca_arg, &url]);
    assert_eq!((status, body.as_str()), (200, "quarterly numbers\n"));
    // Expired: refused by the agent as S3 would.
    let url = presign(1);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, body) = http::curl(&cg, &["--cacert", ca_arg, &url]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(body.contains("expired"), "{body}");
    // A presigned URL whose signature does not match what it asks for.
    let url = presign(600).replace("report.txt", "other.txt");
    let (status, body) = http::curl(&cg, &["--cacert", ca_arg, &url]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");

    // A path that is no path at all is refused before the call is read, in AWS's shape.
    let (status, body) = http::curl(
        &cg,
        &[
            "--cacert",
            ca_arg,
            &format!("https://127.0.0.1:{}/audit/%zz", s3.port),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("<Code>InvalidRequest</Code>"), "{body}");

    let requests = events_when(&agent, "http_request", |r| r.len() == 4);
    assert_eq!(requests.len(), 4);
    let calls = aws_calls(&agent);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["presigned"], true);
    assert_eq!(calls[0]["status"], 200);
    assert!(requests[1]["reason"].as_str().unwrap().contains("expired"));
    let _ = std::fs::remove_file(&creds);
}

/// A metadata service on loopback for the agent itself, serving `credentials` (a JSON
/// document) as the instance role `agent-role`. Killed on drop.
struct FakeImds {
    child: std::process::Child,
    port: u16,
}

impl FakeImds {
    fn start(credentials: &str) -> FakeImds {
        let port = free_port();
        let script = format!(
            "import http.server\n\
             DOC = {credentials:?}\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def answer(self, body):\n\
             \x20       self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body.encode())\n\
             \x20   def do_PUT(self):\n\
             \x20       self.answer('token-1' if self.path == '/latest/api/token' else '')\n\
             \x20   def do_GET(self):\n\
             \x20       assert self.headers['x-aws-ec2-metadata-token'] == 'token-1'\n\
             \x20       if self.path.endswith('/security-credentials/'): self.answer('agent-role')\n\
             \x20       elif self.path.endswith('/security-credentials/agent-role'): self.answer(DOC)\n\
             \x20       else: self.send_error(404)\n\
             http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
        );
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .stderr(Stdio::null())
            .spawn()
            .expect("python");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the fake metadata service did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeImds { child, port }
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agents_credential_comes_from_systemd_or_the_instance_role() {
    privileged!("the_agents_credential_comes_from_systemd_or_the_instance_role");
    let moto = Moto::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let home = tempfile::tempdir().unwrap();
    let target = |keys: &str| {
        format!(
            "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\n\
             [[target]]\nname = \"aws\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"aws\"\n{keys}\n",
            cg.rel(),
            moto.port
        )
    };

    // A systemd credential (LoadCredential=aws:...): the INI file in
    // $CREDENTIALS_DIRECTORY.
    let credentials = tempfile::tempdir().unwrap();
    let file = credentials.path().join("aws");
    std::fs::write(
        &file,
        format!(
            "[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.admin.id, moto.admin.secret
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let mut agent = Agent::configure(
        &target("credential = \"aws\"\naws_profile = \"ci\""),
        "",
        &[],
    );
    agent.set_env(
        "CREDENTIALS_DIRECTORY",
        credentials.path().to_str().unwrap(),
    );
    agent.spawn();
    let ca = agent.dir.path().join("tls/ca.crt");
    let out = cli(
        &cg,
        home.path(),
        &ca,
        &moto,
        &["sts", "get-caller-identity"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("user/nhi-agent-admin"),
        "{}",
        text(&out)
    );
    assert_eq!(
        calls_when(&agent, |c| !c.is_empty())[0]["signed_as"],
        format!("{} (profile ci of systemd credential aws)", moto.admin.id)
    );
    // Dropped (its pinned programs removed) before the next agent attaches its own.
    drop(agent);

    // The instance role: temporary credentials from the metadata service (IMDSv2), as
    // EC2 serves those of the instance profile's role.
    let temporary = moto.admin_python(
        "import json\n\
         iam = c.client('iam')\n\
         admin = iam.get_user(UserName='nhi-agent-admin')['User']['Arn']\n\
         trust = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'AWS': admin}, 'Action': 'sts:AssumeRole'}]}\n\
         arn = iam.create_role(RoleName='agent-role', AssumeRolePolicyDocument=json.dumps(trust))['Role']['Arn']\n\
         iam.put_role_policy(RoleName='agent-role', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
         t = c.client('sts').assume_role(RoleArn=arn, RoleSessionName='i-0123456789')['Credentials']\n\
         print(json.dumps({'Code': 'Success', 'Type': 'AWS-HMAC', 'AccessKeyId': t['AccessKeyId'], 'SecretAccessKey': t['SecretAccessKey'], 'Token': t['SessionToken'], 'Expiration': t['Expiration'].strftime('%Y-%m-%dT%H:%M:%SZ')}))\n",
    );
    let doc: Value = serde_json::from_str(temporary.trim()).unwrap();
    let imds = FakeImds::start(temporary.trim());
    let mut agent = Agent::configure(&target("aws_instance_role = true"), "", &[]);
    agent.set_env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        &format!("http://127.0.0.1:{}", imds.port),
    );
    agent.spawn();
    let ca = agent.dir.path().join("tls/ca.crt");
    for _ in 0..2 {
        let out = cli(
            &cg,
            home.path(),
            &ca,
            &moto,
            &["sts", "get-caller-identity"],
        );
        assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
    }
    let calls = calls_when(&agent, |c| c.len() == 2);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0]["signed_as"],
        format!(
            "{} (the instance role)",
            doc["AccessKeyId"].as_str().unwrap()
        )
    );
    // Fetched once, then reused until near its expiry.
    assert_eq!(
        agent.count_log("AWS credential of the instance role fetched"),
        1
    );
    for needle in [
        doc["SecretAccessKey"].as_str().unwrap(),
        doc["Token"].as_str().unwrap(),
    ] {
        assert!(
            files_holding(agent.dir.path(), needle).is_empty(),
            "{needle}"
        );
    }
}

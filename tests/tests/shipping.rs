//! Shipping sealed journal segments to a real S3-compatible server (`s3s-fs` on
//! loopback): uploads, outages, crashes between upload and cursor, rejected
//! credentials, retention; and the disk budget refusing new sessions (privileged).
//!
//! Segments are made the way the `evidence` rotation makes them (see the journal
//! segment contract): a journal written by `journal::open`, copied to
//! `segments/<seq>.db`, with its `meta` naming the journal, segment and host, and a
//! `<seq>.seal` that is a compact JWS (EdDSA, `typ: nhi-seal+jwt`) over the contract's
//! payload, signed with a test Ed25519 key.
use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use nhi_tests::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DAY_US: i64 = 86_400_000_000;
const HOST: &str = "test-host";
const JOURNAL_ID: &str = "journal-0001";

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A host's journal directory with sealed segments, and a config pointing at `s3`.
struct Host {
    dir: tempfile::TempDir,
    key: ring::signature::Ed25519KeyPair,
    key_der: Vec<u8>,
    template: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        // A real, empty journal written by the agent's journal code.
        let template = dir.path().join("template.db");
        let journal = nhi_agent::journal::open(&template, Default::default()).expect("journal");
        journal.close().expect("close");
        fs::create_dir_all(dir.path().join("segments")).unwrap();
        Host {
            dir,
            key,
            key_der: pkcs8.as_ref().to_vec(),
            template,
        }
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.db")
    }

    fn segments(&self) -> PathBuf {
        self.dir.path().join("segments")
    }

    fn db(&self, seq: u64) -> PathBuf {
        self.segments().join(format!("{seq:010}.db"))
    }

    fn seal(&self, seq: u64) -> PathBuf {
        self.segments().join(format!("{seq:010}.seal"))
    }

    fn cursor(&self) -> Option<Value> {
        let text = fs::read_to_string(self.dir.path().join("ship-cursor.json")).ok()?;
        Some(serde_json::from_str(&text).expect("cursor json"))
    }

    /// Writes sealed segment `seq` (sealed `age_us` ago), `pad` bytes of filler in it.
    fn segment(&self, seq: u64, age_us: i64, pad: usize) {
        let db = self.db(seq);
        fs::copy(&self.template, &db).expect("copy journal");
        let conn = rusqlite::Connection::open(&db).expect("open segment");
        for (k, v) in [
            ("journal_id", JOURNAL_ID.to_string()),
            ("segment_seq", seq.to_string()),
            ("host_id", HOST.to_string()),
            ("test_pad", "x".repeat(pad)),
        ] {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                (k, v),
            )
            .expect("meta");
        }
        conn.execute_batch("PRAGMA journal_mode = DELETE;").ok();
        drop(conn);
        let sealed_at = now_us() - age_us;
        let payload = json!({
            "v": 1, "host_id": HOST, "journal_id": JOURNAL_ID, "segment_seq": seq,
            "first_event_id": seq * 100, "last_event_id": seq * 100 + 99, "event_count": 100,
            "first_at_us": sealed_at - 60_000_000, "last_at_us": sealed_at - 1,
            "prev_last_hash": format!("{:064x}", seq - 1), "last_hash": format!("{seq:064x}"),
            "prev_seal_sha256": null, "sealed_at_us": sealed_at, "reason": "size",
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("nhi-seal+jwt".into());
        let jws = jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_ed_der(&self.key_der),
        )
        .expect("sign seal");
        // Check the seal really is a valid EdDSA JWS for our key.
        use ring::signature::KeyPair as _;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(
            &jws,
            &jsonwebtoken::DecodingKey::from_ed_der(self.key.public_key().as_ref()),
            &validation,
        )
        .expect("seal verifies");
        fs::write(self.seal(seq), jws).expect("write seal");
    }

    /// The `[shipping]` section for `s3` with `secret` (written to a 0600 file).
    fn shipping_section(&self, s3: &S3Server, secret: &str) -> String {
        let secret_path = self.dir.path().join("s3.secret");
        fs::write(&secret_path, secret).unwrap();
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "[shipping]\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\nsecret_file = \"{}\"\n\
             attempts = 3\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n",
            s3.endpoint(),
            s3.bucket,
            S3Server::ACCESS_KEY,
            secret_path.display()
        )
    }

    /// The agent config: shipping to `s3` with `secret`, plus `extra` sections.
    fn config(&self, s3: &S3Server, secret: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("agent.toml");
        fs::write(
            &path,
            format!(
                "[agent]\nmode = \"enforce\"\njournal = \"{}\"\n\n[[target]]\nname = \"t\"\naddress = \"127.0.0.1:9\"\n\n{}{extra}\n",
                self.journal().display(),
                self.shipping_section(s3, secret),
            ),
        )
        .unwrap();
        path
    }
}

fn ship(config: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(agent_bin())
        .args(["ship", "--once", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run nhi-agent ship")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The keys the contract's layout gives segments `seqs` (all sealed "now"-ish, so we
/// take the date from the stored seal's payload rather than guess it).
fn expected_keys(host: &Host, seqs: &[u64]) -> Vec<String> {
    let mut keys = vec![format!("nhi/{HOST}/hwm.json")];
    for &seq in seqs {
        let seal = fs::read_to_string(host.seal(seq)).expect("seal");
        let payload = seal.split('.').nth(1).unwrap();
        let payload: Value = serde_json::from_slice(&base64_url_decode(payload)).unwrap();
        let first = payload["first_at_us"].as_i64().unwrap();
        let date = civil_date(first.div_euclid(DAY_US));
        for ext in ["db", "seal"] {
            keys.push(format!("nhi/{HOST}/{date}/{seq:010}.{ext}"));
        }
    }
    keys.sort();
    keys
}

/// Days since the epoch -> "yyyy/mm/dd" (Howard Hinnant's civil_from_days), written
/// independently of the agent's own date code.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}/{m:02}/{d:02}")
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn hwm(s3: &S3Server) -> Value {
    let bytes = fs::read(s3.object_path(&format!("nhi/{HOST}/hwm.json"))).expect("hwm object");
    serde_json::from_slice(&bytes).expect("hwm json")
}

/// Every local segment file is byte-identical to its object.
fn assert_identical(host: &Host, s3: &S3Server, seqs: &[u64]) {
    for key in expected_keys(host, seqs) {
        if key.ends_with("hwm.json") {
            continue;
        }
        let file = key.rsplit('/').next().unwrap();
        let local = fs::read(host.segments().join(file)).expect("local segment file");
        let remote = fs::read(s3.object_path(&key)).expect("object");
        assert_eq!(sha256_hex(&local), sha256_hex(&remote), "{key}");
    }
}

#[test]
fn three_segments_upload_six_objects_and_the_high_water_mark() {
    let s3 = S3Server::start();
    let host = Host::new();
    for seq in 1..=3 {
        host.segment(seq, DAY_US, 10_000 * seq as usize);
    }
    // Being sealed right now: not shipped.
    fs::copy(&host.template, host.db(4)).unwrap();
    let config = host.config(&s3, S3Server::SECRET_KEY, "");
    let out = ship(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected_keys(&host, &[1, 2, 3]));
    assert_identical(&host, &s3, &[1, 2, 3]);
    let mark = hwm(&s3);
    assert_eq!(mark["segment_seq"], 3, "{mark}");
    assert_eq!(mark["host_id"], HOST);
    assert_eq!(mark["journal_id"], JOURNAL_ID);
    assert_eq!(mark["last_event_id"], 399);
    assert_eq!(mark["last_hash"], format!("{:064x}", 3));
    assert_eq!(
        mark["seal_sha256"],
        sha256_hex(&fs::read(host.seal(3)).unwrap())
    );
    let cursor = host.cursor().expect("cursor");
    assert_eq!(cursor["journals"][JOURNAL_ID]["segment_seq"], 3, "{cursor}");
    // Without `keep`, nothing is deleted.
    for seq in 1..=3 {
        assert!(host.db(seq).exists() && host.seal(seq).exists());
    }
    // A second pass has nothing to do.
    let again = ship(&config, &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("shipped 0 segment(s)"),
        "{}",
        text(&again)
    );
    // Status, as JSON.
    let status = Command::new(agent_bin())
        .args(["ship", "status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        status["journals"][0]["cursor"]["segment_seq"], 3,
        "{status}"
    );
    assert_eq!(status["journals"][0]["pending_segments"], json!([]));
    assert_eq!(status["unsealed"], json!([4]));
    assert_eq!(status["remote_hwm"]["segment_seq"], 3, "{status}");
}

#[test]
fn outage_fails_clearly_deletes_nothing_then_everything_arrives() {
    let mut s3 = S3Server::start();
    let host = Host::new();
    for seq in 1..=3 {
        host.segment(seq, 40 * DAY_US, 1000);
    }
    let config = host.config(&s3, S3Server::SECRET_KEY, "[retention]\nkeep = \"1d\"\n");
    s3.stop();
    let out = ship(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach") && stderr.contains(&s3.endpoint()),
        "{}",
        text(&out)
    );
    for seq in 1..=3 {
        assert!(
            host.db(seq).exists() && host.seal(seq).exists(),
            "segment {seq} deleted"
        );
    }
    assert!(host.cursor().is_none(), "the cursor must not move");

    s3.start_again();
    // The keys are computed from the local seals, which retention is about to delete.
    let expected = expected_keys(&host, &[1, 2, 3]);
    let out = ship(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected);
    assert_eq!(hwm(&s3)["segment_seq"], 3);
    // Shipped and older than `keep`: now they may go.
    for seq in 1..=3 {
        assert!(
            !host.db(seq).exists() && !host.seal(seq).exists(),
            "segment {seq} kept"
        );
    }
}

#[test]
fn crash_between_upload_and_cursor_reuploads_the_same_keys() {
    let s3 = S3Server::start();
    let host = Host::new();
    for seq in 1..=3 {
        host.segment(seq, DAY_US, 200_000);
    }
    let config = host.config(&s3, S3Server::SECRET_KEY, "");
    // PUTs: 1.db, 1.seal, hwm(1), 2.db -> abort before 2.seal and the cursor.
    let out = ship(&config, &[("NHI_SHIP_TEST_ABORT_AFTER_PUTS", "4")]);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{}", text(&out));
    assert_eq!(
        host.cursor().expect("cursor")["journals"][JOURNAL_ID]["segment_seq"],
        1
    );
    assert_eq!(hwm(&s3)["segment_seq"], 1);
    let partial = s3.keys();
    assert_eq!(partial.len(), 4, "{partial:?}");
    assert!(
        partial.iter().any(|k| k.ends_with("0000000002.db")),
        "{partial:?}"
    );

    let out = ship(&config, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected_keys(&host, &[1, 2, 3]));
    assert_identical(&host, &s3, &[1, 2, 3]);
    assert_eq!(hwm(&s3)["segment_seq"], 3);
    let cursor = host.cursor().expect("cursor");
    assert_eq!(cursor["journals"][JOURNAL_ID]["segment_seq"], 3);
    assert_eq!(
        cursor["journals"][JOURNAL_ID]["seal_sha256"],
        sha256_hex(&fs::read(host.seal(3)).unwrap())
    );
}

#[test]
fn wrong_secret_is_reported_as_rejected_credentials_and_nothing_is_deleted() {
    let s3 = S3Server::start();
    let host = Host::new();
    host.segment(1, 40 * DAY_US, 1000);
    let config = host.config(&s3, "not-the-secret", "[retention]\nkeep = \"1d\"\n");
    let out = ship(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream rejected our credentials"),
        "{}",
        text(&out)
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret leaked: {stderr}"
    );
    assert!(host.db(1).exists() && host.seal(1).exists());
    assert!(host.cursor().is_none());
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
}

#[test]
fn retention_deletes_shipped_old_segments_and_keeps_the_rest_and_gaps_are_loud() {
    let s3 = S3Server::start();
    let host = Host::new();
    host.segment(1, 40 * DAY_US, 1000);
    host.segment(2, 35 * DAY_US, 1000);
    host.segment(3, DAY_US, 1000); // too young
    host.segment(5, 33 * DAY_US, 1000); // after a gap (4 is missing)
    let config = host.config(&s3, S3Server::SECRET_KEY, "[retention]\nkeep = \"30d\"\n");
    let out = ship(&config, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a gap fails the pass: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gap") && stderr.contains("4..=4"),
        "{}",
        text(&out)
    );
    // Shipped and old: deleted. Young: kept. After the gap (not covered by the
    // high-water mark): uploaded, but kept.
    for seq in [1, 2] {
        assert!(
            !host.db(seq).exists() && !host.seal(seq).exists(),
            "segment {seq}"
        );
    }
    for seq in [3, 5] {
        assert!(
            host.db(seq).exists() && host.seal(seq).exists(),
            "segment {seq}"
        );
    }
    assert_eq!(hwm(&s3)["segment_seq"], 3, "the mark stops before the gap");
    let keys = s3.keys();
    assert!(
        keys.iter().any(|k| k.ends_with("0000000005.seal")),
        "{keys:?}"
    );
    let cursor = host.cursor().expect("cursor");
    assert_eq!(cursor["journals"][JOURNAL_ID]["segment_seq"], 3);
    assert!(
        cursor["journals"][JOURNAL_ID]["beyond_gap"]["5"].is_string(),
        "{cursor}"
    );

    // Without [shipping], `keep` alone deletes nothing.
    let local = Host::new();
    local.segment(1, 40 * DAY_US, 1000);
    let path = local.dir.path().join("local.toml");
    fs::write(
        &path,
        format!(
            "[agent]\nmode = \"enforce\"\njournal = \"{}\"\n[[target]]\nname = \"t\"\naddress = \"127.0.0.1:9\"\n[retention]\nkeep = \"1d\"\n",
            local.journal().display()
        ),
    )
    .unwrap();
    let out = ship(&path, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(local.db(1).exists() && local.seal(1).exists());
}

#[test]
fn over_disk_budget_new_tcp_sessions_are_refused() {
    privileged!("over_disk_budget_new_tcp_sessions_are_refused");
    let echo = EchoServer::start("127.0.0.2:0");
    let base = unique("nhi-test");
    let cg = TestCgroup::create(&format!("{base}/bot"));
    // The journal alone (SQLite schema + WAL) is larger than 1 KiB.
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n[[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [retention]\ndisk_budget = \"1KiB\"\nbudget_check_interval = \"100ms\"\n",
        cg.rel(),
        echo.addr
    ));
    let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "1000"]);
    assert!(r["error"].is_string(), "the session must be refused: {r}");
    assert!(echo.peers().is_empty(), "nothing reached the server");
    let log = agent.log_text();
    assert!(
        log.contains("refusing a new session: disk budget exceeded") && log.contains("disk_budget"),
        "{log}"
    );
    assert!(agent.sessions().is_empty(), "no session was opened");
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn running_agent_ships_sealed_segments_in_the_background() {
    privileged!("running_agent_ships_sealed_segments_in_the_background");
    let s3 = S3Server::start();
    let host = Host::new();
    host.segment(1, DAY_US, 1000);
    host.segment(2, DAY_US, 1000);
    let echo = EchoServer::start("127.0.0.2:0");
    let metrics_port = free_port();
    let mut agent = Agent::configure_journal(
        &format!(
            "[[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n{}interval = \"200ms\"\n",
            echo.addr,
            host.shipping_section(&s3, S3Server::SECRET_KEY)
        ),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n"),
        &[],
        Some(&host.journal()),
    );
    agent.spawn();
    let wait_hwm = |seq: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let path = s3.object_path(&format!("nhi/{HOST}/hwm.json"));
            let mark = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if mark.as_ref().is_some_and(|m| m["segment_seq"] == seq) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "segment {seq} not shipped within 20 s: {mark:?}\n{}",
                agent.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_hwm(2);
    // A segment sealed while the agent runs is picked up by a later pass.
    host.segment(3, 0, 1000);
    wait_hwm(3);
    assert_eq!(s3.keys(), expected_keys(&host, &[1, 2, 3]));
    assert_identical(&host, &s3, &[1, 2, 3]);
    // The shipping metrics tell the same: three uploaded, the last one 3, none pending.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let sample = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        let got = (
            sample("nhi_ship_segments_uploaded_total"),
            sample("nhi_ship_last_shipped_seq"),
            sample("nhi_ship_segments_pending"),
            sample("nhi_ship_errors_total"),
        );
        if got == (Some(3.0), Some(3.0), Some(0.0), Some(0.0)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn over_disk_budget_postgres_clients_get_a_disk_full_error() {
    privileged!("over_disk_budget_postgres_clients_get_a_disk_full_error");
    let pg = PgServer::start();
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n[[target]]\nname = \"db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n\
         [retention]\ndisk_budget = \"1KiB\"\n",
        cg.rel(),
        pg.addr()
    ));
    let out = cg
        .command("psql")
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.addr().port().to_string())
        .args(["-v", "VERBOSITY=verbose", "-c", "select 1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql must fail: {}", text(&out));
    assert!(
        stderr.contains("FATAL") && stderr.contains("disk budget"),
        "{}",
        text(&out)
    );
    // psql does not print a connection error's SQLSTATE: read the raw ErrorResponse.
    let script = format!(
        "import socket,struct,sys\n\
         s=socket.create_connection(('127.0.0.1',{}))\n\
         body=struct.pack('!i',196608)+b'user\\0postgres\\0\\0'\n\
         s.sendall(struct.pack('!i',len(body)+4)+body)\n\
         data=b''\n\
         while True:\n    c=s.recv(65536)\n    if not c: break\n    data+=c\n\
         sys.stdout.write(data.hex())\n",
        pg.addr().port()
    );
    let raw = cg
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    let hex = String::from_utf8_lossy(&raw.stdout).to_string();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        bytes.first(),
        Some(&b'E'),
        "an ErrorResponse: {}",
        text(&raw)
    );
    let fields = String::from_utf8_lossy(&bytes);
    assert!(
        fields.contains("SFATAL\0") && fields.contains("C53100\0"),
        "{fields:?}"
    );
    assert!(
        agent
            .log_text()
            .contains("refusing a new session: disk budget exceeded"),
        "{}",
        agent.log_text()
    );
}

/// The whole evidence path: a real agent's own segments (real sessions through eBPF,
/// rotated by size, sealed with the host key, the live file sealed by SIGTERM and moved
/// at the next start) arrive upstream; the upstream copy verifies against the host key
/// and the high-water mark; an upstream copy missing its last segment does not.
#[test]
fn real_segments_are_shipped_and_the_upstream_copy_verifies_against_the_high_water_mark() {
    privileged!(
        "real_segments_are_shipped_and_the_upstream_copy_verifies_against_the_high_water_mark"
    );
    let s3 = S3Server::start();
    let echo = EchoServer::start("127.0.0.2:0");
    let cg = TestCgroup::create(&format!("{}/bot", unique("nhi-test")));
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = secrets.path().join("s3.secret");
    fs::write(&secret, S3Server::SECRET_KEY).expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let host = "e2e-host";
    let mut agent = Agent::start(&format!(
        "[[workload]]\nname = \"bot\"\ncgroup = \"{}\"\n\
         [[target]]\nname = \"echo\"\naddress = \"{}\"\nprotocol = \"tcp\"\n\
         [evidence]\nsegment_max_bytes = \"48KiB\"\nhost_id = \"{host}\"\n\
         [shipping]\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\n\
         secret_file = \"{}\"\ninterval = \"200ms\"\nattempts = 3\n\
         backoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\n",
        cg.rel(),
        echo.addr,
        s3.endpoint(),
        s3.bucket,
        S3Server::ACCESS_KEY,
        secret.display()
    ));
    for _ in 0..30 {
        let r = cg.client(&["echo", &echo.addr.to_string(), "--bytes", "20000"]);
        assert_eq!(r["identical"], true, "{r}");
    }
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
    // The next start moves the live file (sealed by the stop) into segments/, where the
    // shipper finds it.
    agent.spawn();
    let segments_dir = agent.journal.parent().expect("dir").join("segments");
    let sealed = || {
        fs::read_dir(&segments_dir)
            .expect("segments/")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seal"))
            .count() as u64
    };
    let last = sealed();
    assert!(last >= 3, "only {last} sealed segments");
    let hwm = s3.object_path(&format!("nhi/{host}/hwm.json"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mark = fs::read(&hwm)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        // Sealed segments up to `last`, then the live segment's checkpoint after it.
        if mark.as_ref().is_some_and(|m| {
            m["segment_seq"] == last
                && m["checkpoint"]["segment_seq"] == last + 1
                && m["checkpoint"]["jws"]
                    .as_str()
                    .is_some_and(|j| j.split('.').count() == 3)
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "segment {last} and the checkpoint of {} not shipped: {mark:?}\n{}",
            last + 1,
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());

    let key = agent.export_public_key();
    let upstream = s3.object_path(&format!("nhi/{host}"));
    let verify = |dir: &Path| {
        agent.cli(&[
            "verify",
            dir.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--hwm",
            hwm.to_str().expect("utf-8"),
        ])
    };
    let out = verify(&upstream);
    assert!(out.status.success(), "upstream copy: {}", text(&out));
    // Upstream has no live segment: the mark's checkpoint is about the host's journal.
    assert!(
        text(&out).contains("checkpoint") && text(&out).contains("live segment"),
        "{}",
        text(&out)
    );
    // The host's journal reaches the mark's checkpoint.
    let out = verify(agent.journal.parent().expect("dir"));
    assert!(out.status.success(), "host journal: {}", text(&out));
    // Every sealed segment arrived, byte for byte.
    for seq in 1..=last {
        let name = format!("{seq:010}.db");
        let local = fs::read(segments_dir.join(&name)).expect("local segment");
        let remote: Vec<PathBuf> = s3
            .keys()
            .iter()
            .filter(|k| k.ends_with(&name))
            .map(|k| s3.object_path(k))
            .collect();
        assert_eq!(remote.len(), 1, "{name} upstream once: {remote:?}");
        assert_eq!(
            Sha256::digest(&local),
            Sha256::digest(fs::read(&remote[0]).expect("remote")),
            "{name}"
        );
    }

    // An upstream copy without its last segment is caught by the high-water mark.
    let cut = secrets.path().join("cut");
    for k in s3.keys() {
        if let Some(rel) = k.strip_prefix(&format!("nhi/{host}/")) {
            if rel == "hwm.json" || rel.contains(&format!("{last:010}.")) {
                continue;
            }
            let to = cut.join(rel);
            fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            fs::copy(s3.object_path(&k), &to).expect("copy");
        }
    }
    let out = verify(&cut);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("high-water mark"),
        "names the truncation: {}",
        text(&out)
    );
}

/// nginx terminating TLS with a certificate of a test CA in front of `s3`, on loopback;
/// stopped on drop.
struct TlsFront {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl TlsFront {
    fn start(s3: &S3Server) -> TlsFront {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=nhi test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {d}/leaf.pem;\n\
             ssl_certificate_key {d}/leaf.key;\n  client_max_body_size 0;\n\
             location / {{ proxy_pass http://127.0.0.1:{s3port}; proxy_set_header Host $http_host; \
             proxy_http_version 1.1; }}\n }}\n}}\n",
            d = d.display(),
            s3port = s3.port,
        );
        fs::write(d.join("nginx.conf"), conf).expect("conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .spawn()
            .expect("start nginx");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen: {}",
                fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsFront { dir, port, child }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An endpoint behind an internal CA (MinIO or Ceph behind the company's CA): refused
/// without `ca_file` (the system trust store does not know the CA), shipped with it;
/// a `ca_file` without a certificate is refused by name.
#[test]
fn an_https_endpoint_signed_by_an_internal_ca_is_trusted_through_ca_file() {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("skipping: nginx is not installed");
        return;
    }
    let s3 = S3Server::start();
    let front = TlsFront::start(&s3);
    let host = Host::new();
    for seq in 1..=2 {
        host.segment(seq, DAY_US, 10_000);
    }
    let endpoint = format!("https://127.0.0.1:{}", front.port);
    let config = |extra: &str| {
        let path = host.config(&s3, S3Server::SECRET_KEY, "");
        let text = fs::read_to_string(&path)
            .expect("config")
            .replace(&s3.endpoint(), &endpoint)
            .replace("[shipping]\n", &format!("[shipping]\n{extra}"));
        fs::write(&path, text).expect("config");
        path
    };

    let out = ship(&config(""), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));
    assert!(
        s3.keys().is_empty(),
        "nothing went through an untrusted endpoint"
    );

    let empty = host.dir.path().join("empty.pem");
    fs::write(&empty, "not a certificate\n").expect("write");
    let out = ship(
        &config(&format!("ca_file = \"{}\"\n", empty.display())),
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "[shipping] ca_file {}: no CERTIFICATE in it",
            empty.display()
        )),
        "{}",
        text(&out)
    );

    let out = ship(
        &config(&format!("ca_file = \"{}\"\n", front.ca().display())),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected_keys(&host, &[1, 2]));
    assert_identical(&host, &s3, &[1, 2]);
}

/// A fake EC2 metadata service on loopback (IMDSv2: a PUT for the session token, then
/// GETs that must carry it) handing out `access`/`secret` with a session token, the
/// credential expiring `offset` seconds from each answer (read from a file, so the test
/// can change it); counts how often the credential was fetched.
struct FakeImds {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl FakeImds {
    const SCRIPT: &'static str = r#"
import http.server, json, os, sys, time
d, access, secret = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header('content-length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_PUT(self):
        if self.path == '/latest/api/token' and self.headers.get('x-aws-ec2-metadata-token-ttl-seconds'):
            return self.answer(200, 'imds-session')
        self.answer(400, '')
    def do_GET(self):
        if self.headers.get('x-aws-ec2-metadata-token') != 'imds-session':
            return self.answer(401, '')
        base = '/latest/meta-data/iam/security-credentials/'
        if self.path == base:
            return self.answer(200, 'ship-role\n')
        if self.path == base + 'ship-role':
            with open(os.path.join(d, 'fetches'), 'a') as f:
                f.write('x')
            offset = int(open(os.path.join(d, 'offset')).read())
            expires = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + offset))
            return self.answer(200, json.dumps({'Code': 'Success', 'AccessKeyId': access,
                'SecretAccessKey': secret, 'Token': 'role-session-token', 'Expiration': expires}))
        self.answer(404, '')
srv = http.server.HTTPServer(('127.0.0.1', 0), H)
open(os.path.join(d, 'port.tmp'), 'w').write(str(srv.server_address[1]))
os.rename(os.path.join(d, 'port.tmp'), os.path.join(d, 'port'))
srv.serve_forever()
"#;

    fn start(access: &str, secret: &str) -> FakeImds {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("offset"), "3600").expect("offset");
        let child = Command::new("python3")
            .args(["-c", Self::SCRIPT])
            .arg(dir.path())
            .args([access, secret])
            .spawn()
            .expect("start python3");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let port = loop {
            if let Ok(p) = fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().expect("port");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fake IMDS did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        FakeImds { dir, port, child }
    }

    fn fetches(&self) -> usize {
        fs::read_to_string(self.dir.path().join("fetches"))
            .map(|s| s.len())
            .unwrap_or(0)
    }

    fn expire_in(&self, seconds: u64) {
        fs::write(self.dir.path().join("offset"), seconds.to_string()).expect("offset");
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `instance_profile = true`: the credential comes from the metadata service (IMDSv2)
/// at `imds_endpoint`, once while it is fresh, again before each request once it
/// expires within five minutes; a metadata service that does not answer fails the
/// pass with its name.
#[test]
fn instance_profile_credentials_come_from_the_metadata_service_and_are_refreshed() {
    let s3 = S3Server::start();
    let imds = FakeImds::start(S3Server::ACCESS_KEY, S3Server::SECRET_KEY);
    let host = Host::new();
    host.segment(1, DAY_US, 10_000);
    let config = |imds_port: u16| {
        let path = host.config(&s3, S3Server::SECRET_KEY, "");
        let text = fs::read_to_string(&path).expect("config");
        let start = text.find("access_key_id").expect("key");
        let end = text.find("attempts").expect("attempts");
        let text = format!(
            "{}instance_profile = true\nimds_endpoint = \"http://127.0.0.1:{imds_port}\"\n{}",
            &text[..start],
            &text[end..]
        );
        fs::write(&path, text).expect("config");
        path
    };
    let path = config(imds.port);
    let out = ship(&path, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected_keys(&host, &[1]));
    assert_identical(&host, &s3, &[1]);
    assert_eq!(imds.fetches(), 1, "a fresh credential is fetched once");

    // Expiring within the refresh margin: fetched again before each request.
    imds.expire_in(60);
    host.segment(2, DAY_US, 10_000);
    let out = ship(&path, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s3.keys(), expected_keys(&host, &[1, 2]));
    assert!(
        imds.fetches() >= 4,
        "refreshed per request: {}",
        imds.fetches()
    );

    // Nothing answers: the pass fails naming the metadata service.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    host.segment(3, DAY_US, 10_000);
    let out = ship(&config(dead), &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "[shipping] instance_profile: the instance role's credential from http://127.0.0.1:{dead}"
        )),
        "{}",
        text(&out)
    );
}

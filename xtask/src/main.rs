//! `cargo xtask`: the project's two front doors and their helpers.
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent).
//! - `cargo xtask run`:   setup, release build, start the agent with policies/example.toml.
//! - `cargo xtask test`:  setup, fmt check, clippy -D warnings, unit and integration tests.
//! - `cargo xtask demo`:  the tour: a bot's statements masked, refused, allowed, journaled.
//! - `cargo xtask fuzz`:  the libFuzzer targets of fuzz/ (cargo-fuzz, nightly), seeded from
//!   the golden captures, N seconds each.
//! - `cargo xtask bench`: relay throughput, connection rate and connect latency (direct,
//!   agent, a bare tokio proxy as the yardstick), pgbench direct / pgbouncer / bare proxy /
//!   agent (tcp, postgres) with p50/p99, HTTP, boto3 AWS calls and
//!   SSH, as ratios against direct; the agent's RSS idle and with N idle connections; then
//!   issue 16's targets beside the figures, met or not.
//! - `cargo xtask soak`: mixed traffic (opaque, PostgreSQL, HTTP) through the agent for N
//!   minutes: RSS, open fds, journal size and events/s each minute, leak bounds, verify.
//! - `cargo xtask package`: the Debian package (binary, systemd unit, example config, man
//!   pages, completions) in target/debian/.
//! - `cargo xtask vm`:  a QEMU/KVM test bed: the systemd unit under real systemd
//!   (`vm unit`) and the privileged tests on every kernel obtainable (`vm kernels`).
mod bench;
mod bench_aws;
mod bench_evidence;
mod bench_http;
mod bench_memory;
mod bench_mysql;
mod bench_redis;
mod bench_ssh;
mod bench_targets;
mod demo;
mod fuzz;
mod package;
mod run;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install apt packages, the nightly toolchain with rust-src, bpf-linker, s3s-fs, and
    /// the AWS CLI, boto3 and moto in target/venv; mount bpffs.
    Setup,
    /// Set up, build in release mode and run the agent with policies/example.toml.
    Run {
        /// Config file (default policies/example.toml).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Set up, then fmt check, clippy, unit tests and the root/eBPF integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The tour (as root): a throwaway PostgreSQL, the agent with policies/demo.toml, and a
    /// bot whose statements are masked, refused and allowed; then its journaled session.
    /// Exits non-zero if anything does not happen as shown.
    Demo,
    /// Run the fuzz targets of fuzz/ (cargo-fuzz on nightly, installed when missing), one
    /// after the other at nice 19, each seeded from the golden captures; fails on a crash,
    /// a hang or an OOM, whose input is left in fuzz/artifacts/TARGET/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop a target after this many executions (if sooner than --seconds).
        #[arg(long)]
        runs: Option<u64>,
        /// One target (default: all): pg_frontend, pg_backend, pg_auth, pg_flow,
        /// sql_analyze, mask_row, config, journal, http_request, aws_request, ssh, kubernetes.
        target: Option<String>,
    },
    /// Print benchmark figures (ratios against a baseline from the same run).
    Bench {
        /// Bytes per bulk transfer.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Connections for the connection-rate figure.
        #[arg(long, default_value_t = 2000)]
        conns: u64,
        /// Repetitions of each measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per pgbench run (0 skips the PostgreSQL figures).
        #[arg(long, default_value_t = 3)]
        pg_seconds: u64,
        /// Seconds per HTTP run (0 skips the HTTP figures).
        #[arg(long, default_value_t = 3)]
        http_seconds: u64,
        /// boto3 calls per AWS run, against moto directly and through the agent (0
        /// skips the AWS figures).
        #[arg(long, default_value_t = 300)]
        aws_calls: u64,
        /// `ssh host true` connections per SSH run, directly and through the agent (0
        /// skips the SSH figures).
        #[arg(long, default_value_t = 50)]
        ssh_conns: u64,
        /// Bytes of the SSH bulk upload (scp).
        #[arg(long, default_value_t = 256 << 20)]
        ssh_bytes: u64,
        /// Requests per command of each `redis-benchmark -t get,set -P 16` run, directly
        /// and through the agent (0 skips the Redis figures).
        #[arg(long, default_value_t = 200_000)]
        redis_requests: u64,
        /// Statement events for the journal ingest / verify / search figures (0 skips them).
        #[arg(long, default_value_t = 1_000_000)]
        evidence_events: u64,
        /// Only the journal evidence figures (no eBPF, no PostgreSQL).
        #[arg(long)]
        only_evidence: bool,
        /// Idle connections held open through the agent for the memory figure (its RSS
        /// with them, per connection); 0 skips it (the idle RSS is still measured).
        #[arg(long, default_value_t = 5000)]
        idle_conns: u64,
    },
    /// Mixed traffic through the agent for N minutes (as root): one line of figures per
    /// minute, then a summary; fails on a leak after warm-up, a client error or a journal
    /// that does not verify.
    Soak {
        /// Length of the run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Minutes before RSS is expected to be flat (default: a fifth of the run, 1 to 5).
        #[arg(long)]
        warmup_minutes: Option<u64>,
        /// pgbench's transaction rate (-R), across its 4 clients.
        #[arg(long, default_value_t = 50)]
        pg_tps: u32,
    },
    /// Build the Debian package: the release binary, the systemd unit (/usr/bin), the
    /// example config as /etc/nhi-agent/agent.toml, man pages and shell completions;
    /// inspects it and prints its path (target/debian/nhi-agent_VERSION_ARCH.deb).
    Package {
        /// Package the debug build (uncompressed): checks the packaging without a
        /// release build.
        #[arg(long)]
        debug: bool,
    },
    /// The QEMU/KVM test bed (as root): a cached Debian image with systemd and Debian's
    /// kernels; `unit` checks the systemd unit, `kernels` runs the privileged tests per kernel.
    #[command(subcommand)]
    Vm(vm::VmCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Run { config } => run::run(config),
        Cmd::Test { args } => test::test(&args),
        Cmd::Demo => demo::demo(),
        Cmd::Fuzz {
            seconds,
            runs,
            target,
        } => fuzz::fuzz(seconds, runs, target.as_deref()),
        Cmd::Vm(cmd) => vm::vm(cmd),
        Cmd::Package { debug } => package::package(if debug {
            package::Profile::Debug
        } else {
            package::Profile::Release
        })
        .map(|_| ()),
        Cmd::Soak {
            minutes,
            warmup_minutes,
            pg_tps,
        } => soak::soak(minutes, warmup_minutes, pg_tps),
        Cmd::Bench {
            bytes,
            conns,
            runs,
            pg_seconds,
            http_seconds,
            aws_calls,
            ssh_conns,
            ssh_bytes,
            redis_requests,
            evidence_events,
            only_evidence,
            idle_conns,
        } => {
            if only_evidence {
                setup::setup()?;
                let work = std::env::temp_dir().join(format!("nhi-bench-{}", std::process::id()));
                let result = bench_evidence::bench(evidence_events, runs, &work);
                let _ = std::fs::remove_dir_all(&work);
                result
            } else {
                bench::bench(
                    bytes,
                    conns,
                    runs,
                    pg_seconds,
                    http_seconds,
                    aws_calls,
                    ssh_conns,
                    ssh_bytes,
                    evidence_events,
                    idle_conns,
                    redis_requests,
                )
            }
        }
    }
}

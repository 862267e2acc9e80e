//! The configuration parser: `config::parse`, what `config::load` (agent start, SIGHUP
//! reload, `nhi-agent policy check`) runs on the file's text. Any text must give a
//! `Config` or a `ConfigError` whose message names a line and column; a valid config
//! answers the queries the agent makes of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nhi_agent::config;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file with `read_to_string`: non-UTF-8 is an I/O error there.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.workload_for("system.slice/backup-nightly.service", 0);
            let _ = config.cgroup_selection("nhi-demo/child");
            let _ = config.subtree_may_be_selected("user.slice");
            let _ = config.target_for("127.0.0.1:5432".parse().expect("an address"));
            let _ = config.target_for("[::1]:5432".parse().expect("an address"));
            let _ = config.policies.for_session("nhi-demo", "postgres-v4", None);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

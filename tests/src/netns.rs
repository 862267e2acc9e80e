//! A network namespace made by a test, joined to the host by a veth pair: the test's
//! own "container" network. Addresses come from 10.213.0.0/16 and exist only on the
//! veth pair the test created (host side `.1`, namespace side `.2` of one /30).
use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::TestCgroup;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with its loopback up and a veth pair to the host; removed on drop.
pub struct TestNetns {
    pub name: String,
    host_if: String,
    pub host_ip: IpAddr,
    pub ns_ip: IpAddr,
    /// `fd00:213:<n>::1` and `::2` (a /64 on the same veth pair).
    pub host_ip6: IpAddr,
    pub ns_ip6: IpAddr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    pub fn create() -> Self {
        // A /30 per namespace, from the pid and a counter, so concurrent test processes
        // and tests in one process do not collide.
        let n = (std::process::id().wrapping_mul(31) + NEXT.fetch_add(1, Ordering::SeqCst))
            % (64 * 256);
        let (hi, lo) = ((n / 64) as u8, ((n % 64) * 4) as u8);
        let host_ip = Ipv4Addr::new(10, 213, hi, lo + 1);
        let ns_ip = Ipv4Addr::new(10, 213, hi, lo + 2);
        let host_ip6 = std::net::Ipv6Addr::new(0xfd00, 0x213, n as u16, 0, 0, 0, 0, 1);
        let ns_ip6 = std::net::Ipv6Addr::new(0xfd00, 0x213, n as u16, 0, 0, 0, 0, 2);
        let tag = format!("{:x}{n:x}", std::process::id() % 0xffff);
        let name = format!("nhi-{tag}");
        let host_if = format!("nh{tag}");
        let ns_if = format!("nn{tag}");
        // A leftover of a killed earlier run with the same tag goes first.
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let this = TestNetns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: IpAddr::V4(host_ip),
            ns_ip: IpAddr::V4(ns_ip),
            host_ip6: IpAddr::V6(host_ip6),
            ns_ip6: IpAddr::V6(ns_ip6),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        // nodad: usable at once, without duplicate address detection's delay.
        let v6 = |ns: Option<&str>, addr: String, dev: &str| {
            let mut args = Vec::new();
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            args.extend(["-6", "addr", "add", &addr, "dev", dev, "nodad"]);
            ip(&args);
        };
        v6(None, format!("{host_ip6}/64"), &host_if);
        v6(Some(&name), format!("{ns_ip6}/64"), &ns_if);
        this
    }

    /// A listener on `addr` inside this namespace, made by a thread that entered it
    /// (the socket stays in the namespace it was created in).
    pub fn listen(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace file, for this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpListener::bind(addr)
        })
        .join()
        .expect("listener thread")
    }

    /// `program` started in cgroup `cg` and in this namespace.
    pub fn command(&self, cg: &TestCgroup, program: &str) -> Command {
        let mut cmd = cg.command("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

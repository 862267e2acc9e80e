//! A small, deterministic TCP client for the integration tests and benchmarks. It is
//! started inside test cgroups, so everything it does is what an intercepted workload
//! does. It prints one JSON object on stdout describing what it saw.
//!
//! ```text
//! nhi-testclient echo ADDR [--bytes N] [--seed S]      send N pseudo-random bytes, read the echo, compare
//! nhi-testclient many ADDR --conns C [--bytes N]       C concurrent echo connections
//! nhi-testclient reset ADDR [--bytes N]                send N bytes, then abort with RST
//! nhi-testclient silent ADDR [--hold-ms MS]            connect, send nothing, wait for the peer to close
//! nhi-testclient connect-rate ADDR --conns C           C sequential connect+1-byte echo round trips
//! nhi-testclient bulk ADDR --bytes N                   send N bytes one way (to a sink), report throughput
//! nhi-testclient hold ADDR --conns C [--threads T] [--hold-secs S]
//!                                                      open C echo connections at once (one round trip
//!                                                      each), print a JSON line, hold them until stdin
//!                                                      closes (or S seconds pass, if S > 0), then one
//!                                                      more round trip on each
//! nhi-testclient stall ADDR                            write to an echo server without ever reading
//!                                                      until the writes block, print a JSON line, hold
//!                                                      the connection until stdin closes
//! nhi-testclient stream ADDR --seconds S [--bytes N] [--pause-ms P]
//!                                                      one long connection: every P ms send N bytes and
//!                                                      read their echo back, for S seconds
//! nhi-testclient http-get ADDR --conns C --seconds S [--path P] [--host H]
//!                                                      C keep-alive HTTP/1.1 connections, each sending
//!                                                      GET P one after the other for S seconds: requests/s
//!                                                      and latency (every answer must be 200)
//! nhi-testclient bare-proxy --listen ADDR --to ADDR [--splice]
//!                                                      a minimal proxy, the yardstick of `cargo xtask
//!                                                      bench`: print {"listen": ADDR} once listening,
//!                                                      then relay each connection to --to until killed
//! ```
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({ "error": e }));
            ExitCode::FAILURE
        }
    }
}

fn text_flag(args: &[String], name: &str, default: &str) -> Result<String, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .cloned()
            .ok_or(format!("{name} needs a value")),
        None => Ok(default.to_string()),
    }
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}")),
        None => Ok(default),
    }
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let mode = args.first().ok_or("missing mode")?.as_str();
    if mode == "bare-proxy" {
        return bare_proxy(
            &text_flag(args, "--listen", "127.0.0.3:0")?,
            &text_flag(args, "--to", "")?,
            args.iter().any(|a| a == "--splice"),
        );
    }
    let addr: SocketAddr = args
        .get(1)
        .ok_or("missing address")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let bytes = flag(args, "--bytes", 1024)?;
    let seed = flag(args, "--seed", 1)?;
    match mode {
        "echo" => echo(addr, bytes, seed),
        "many" => {
            let conns = flag(args, "--conns", 100)?;
            let started = Instant::now();
            let handles: Vec<_> = (0..conns)
                .map(|i| thread::spawn(move || echo(addr, bytes, seed + i)))
                .collect();
            let mut ok = 0;
            let mut errors = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(Ok(v)) if v["identical"] == true => ok += 1,
                    Ok(Ok(v)) => errors.push(v.to_string()),
                    Ok(Err(e)) => errors.push(e),
                    Err(_) => errors.push("thread panicked".into()),
                }
            }
            errors.truncate(5);
            Ok(json!({ "conns": conns, "ok": ok, "errors": errors,
                       "elapsed_ms": started.elapsed().as_millis() as u64 }))
        }
        "reset" => {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            let data = payload(seed, bytes as usize);
            s.write_all(&data).map_err(|e| format!("write: {e}"))?;
            // Give the proxy a moment to start relaying, then abort.
            thread::sleep(Duration::from_millis(100));
            let sock = socket2_linger_zero(&s);
            drop(s);
            Ok(json!({ "sent": bytes, "linger_zero": sock }))
        }
        "silent" => {
            let hold = flag(args, "--hold-ms", 10_000)?;
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(hold)))
                .map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut buf = [0u8; 1024];
            let outcome = match s.read(&mut buf) {
                Ok(0) => "closed by peer".to_string(),
                Ok(n) => format!("received {n} bytes"),
                Err(e) => format!("error: {e}"),
            };
            Ok(json!({ "outcome": outcome, "waited_ms": started.elapsed().as_millis() as u64 }))
        }
        "connect-rate" => {
            let conns = flag(args, "--conns", 1000)?;
            let started = Instant::now();
            let mut connect_ns = Vec::with_capacity(conns as usize);
            let mut setup_ns = Vec::with_capacity(conns as usize);
            for _ in 0..conns {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                connect_ns.push(t.elapsed().as_nanos() as u64);
                s.set_nodelay(true).ok();
                s.write_all(b"x").map_err(|e| format!("write: {e}"))?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
                // Until the first byte is back: what a client waits for before it can
                // use a new connection (through the agent: accept, identity, journal
                // commit, upstream connect).
                setup_ns.push(t.elapsed().as_nanos() as u64);
            }
            let elapsed = started.elapsed();
            connect_ns.sort_unstable();
            setup_ns.sort_unstable();
            let pct = |v: &[u64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)] as f64 / 1000.0;
            Ok(json!({
                "conns": conns,
                "per_sec": conns as f64 / elapsed.as_secs_f64(),
                "connect_median_us": pct(&connect_ns, 50),
                "connect_p99_us": pct(&connect_ns, 99),
                "setup_median_us": pct(&setup_ns, 50),
                "setup_p99_us": pct(&setup_ns, 99),
            }))
        }
        "bulk" => {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            let block = payload(seed, 256 * 1024);
            let started = Instant::now();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                s.write_all(&block[..n])
                    .map_err(|e| format!("write: {e}"))?;
                left -= n as u64;
            }
            s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            // The sink answers with one byte once it has read everything.
            let mut b = [0u8; 1];
            s.read_exact(&mut b).map_err(|e| format!("read ack: {e}"))?;
            let secs = started.elapsed().as_secs_f64();
            Ok(
                json!({ "bytes": bytes, "secs": secs, "mib_per_sec": bytes as f64 / secs / 1048576.0 }),
            )
        }
        "hold" => hold(
            addr,
            flag(args, "--conns", 100)?,
            flag(args, "--threads", 32)?,
            match flag(args, "--hold-secs", 0)? {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
        ),
        "stall" => stall(addr),
        "http-get" => {
            let path = text_flag(args, "--path", "/")?;
            let host = text_flag(args, "--host", &addr.to_string())?;
            http_get(
                addr,
                flag(args, "--conns", 1)?,
                Duration::from_secs(flag(args, "--seconds", 5)?),
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"),
            )
        }
        "stream" => stream(
            addr,
            Duration::from_secs(flag(args, "--seconds", 60)?),
            bytes as usize,
            Duration::from_millis(flag(args, "--pause-ms", 100)?),
            seed,
        ),
        other => Err(format!("unknown mode {other}")),
    }
}

/// Buffer of the copying relay (one per direction), as the agent's.
const BARE_CHUNK: usize = 64 * 1024;
/// Pipe size of the splice relay, as the agent's.
const BARE_PIPE: usize = 256 * 1024;

/// A minimal proxy: what relaying costs with nothing of the agent's (no eBPF, no
/// identity, no policy, no journal, no log), so that `cargo xtask bench` can tell the
/// agent's own cost from what any userspace proxy costs on the machine. Prints
/// `{"listen": ADDR}` once listening and serves until killed. Each connection: TCP_NODELAY
/// on both sockets, a connection to `to`, then bytes both ways with half-close, through
/// 64 KiB buffers (`copy_bidirectional`) or, with `splice`, socket -> pipe -> socket with
/// splice(2) (the agent's bulk path). A multi-threaded runtime with the default worker
/// count, as the agent's.
fn bare_proxy(listen: &str, to: &str, splice: bool) -> Result<serde_json::Value, String> {
    let listen: SocketAddr = listen.parse().map_err(|e| format!("--listen: {e}"))?;
    let to: SocketAddr = to.parse().map_err(|e| format!("--to: {e}"))?;
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("{}", json!({ "listen": local.to_string() }));
        let _ = std::io::stdout().flush();
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                // The client gave up before the accept: not the listener's failure.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(format!("accept: {e}")),
            };
            tokio::spawn(async move {
                // A failed connection is the client's to see (closed or reset).
                let _ = bare_relay(client, to, splice).await;
            });
        }
    })
}

async fn bare_relay(
    mut client: tokio::net::TcpStream,
    to: SocketAddr,
    splice: bool,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = tokio::net::TcpStream::connect(to).await?;
    server.set_nodelay(true)?;
    if splice {
        let (client_r, client_w) = client.split();
        let (server_r, server_w) = server.split();
        tokio::try_join!(
            splice_one_way(client_r, server_w),
            splice_one_way(server_r, client_w)
        )?;
    } else {
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BARE_CHUNK, BARE_CHUNK)
            .await?;
    }
    Ok(())
}

/// One direction of the splice relay, until EOF (passed on as a FIN) or an error: the
/// shape of the agent's `run_splice` (agent/src/proxy/relay.rs), without its journal.
async fn splice_one_way(
    from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::{AsyncWriteExt, Interest};

    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, owned at once below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just opened by pipe2 and belong to nothing else.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own. The default pipe is 64 KiB; a failure leaves it so.
    unsafe {
        libc::fcntl(
            pipe_w.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            BARE_PIPE as libc::c_int,
        )
    };
    let src: &tokio::net::TcpStream = from.as_ref();
    loop {
        // Socket -> pipe. The pipe is empty here, so EAGAIN means "no data yet".
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice_fds(src.as_raw_fd(), pipe_w.as_raw_fd(), BARE_PIPE)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // Half-close: pass the FIN on, the other direction goes on.
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Pipe -> socket, until the pipe is empty again.
        let dst: &tokio::net::TcpStream = to.as_ref();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice_fds(pipe_r.as_raw_fd(), dst.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// splice(2) of up to `len` bytes, non-blocking, no offsets.
fn splice_fds(from: i32, to: i32, len: usize) -> std::io::Result<usize> {
    // SAFETY: splice between two open descriptors, with no offset pointers.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends `bytes` pseudo-random bytes while reading the echo on another thread, and
/// checks the echo is byte-identical.
fn echo(addr: SocketAddr, bytes: u64, seed: u64) -> Result<serde_json::Value, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let peer = s.peer_addr().map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let mut writer = s;
    let sender = thread::spawn(move || -> Result<(), String> {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut rng = Rng::new(seed);
    let mut expected = vec![0u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    let mut identical = true;
    let mut pending = 0usize; // bytes of `expected` not yet compared
    let mut offset = 0usize;
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            if pending == 0 {
                let chunk = bytes
                    .saturating_sub(received + i as u64)
                    .min(expected.len() as u64) as usize;
                if chunk == 0 {
                    identical = false; // more bytes than sent
                    break;
                }
                rng.fill(&mut expected[..chunk]);
                pending = chunk;
                offset = 0;
            }
            let take = pending.min(n - i);
            if buf[i..i + take] != expected[offset..offset + take] {
                identical = false;
            }
            offset += take;
            pending -= take;
            i += take;
        }
        received += n as u64;
    }
    sender.join().map_err(|_| "sender panicked".to_string())??;
    Ok(json!({
        "peer": peer.to_string(),
        "local": local.to_string(),
        "sent": bytes,
        "received": received,
        "identical": identical && received == bytes,
        "pid": std::process::id(),
    }))
}

/// Raises the soft open-file limit to the hard one (thousands of sockets).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, correctly sized struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One round trip of one byte; true when the byte came back.
fn round_trip(s: &mut TcpStream, byte: u8) -> bool {
    let mut b = [0u8; 1];
    s.write_all(&[byte]).is_ok() && s.read_exact(&mut b).is_ok() && b[0] == byte
}

/// Waits until stdin reaches EOF (the test's signal to go on).
fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// Waits until stdin reaches EOF or `limit` has passed, whichever comes first: a bound
/// for a caller that might never close it (the reading thread is left blocked; the
/// process exits soon after).
fn wait_stdin_eof_or(limit: Option<Duration>) {
    let Some(limit) = limit else {
        return wait_stdin_eof();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        wait_stdin_eof();
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(limit);
}

fn hold(
    addr: SocketAddr,
    conns: u64,
    threads: u64,
    limit: Option<Duration>,
) -> Result<serde_json::Value, String> {
    raise_nofile();
    let started = Instant::now();
    let threads = threads.clamp(1, conns.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let n = conns / threads + u64::from(t < conns % threads);
            thread::spawn(move || {
                let mut open = Vec::new();
                let mut errors = Vec::new();
                for _ in 0..n {
                    match TcpStream::connect(addr) {
                        Ok(mut s) => {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                            if round_trip(&mut s, b'h') {
                                open.push(s);
                            } else {
                                errors.push("no echo".to_string());
                            }
                        }
                        Err(e) => errors.push(format!("connect: {e}")),
                    }
                }
                (open, errors)
            })
        })
        .collect();
    let mut open = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        let (o, e) = h.join().map_err(|_| "thread panicked")?;
        open.extend(o);
        errors.extend(e);
    }
    let failed = errors.len();
    errors.sort();
    errors.dedup();
    println!(
        "{}",
        json!({ "phase": "open", "open": open.len(), "failed": failed, "errors": errors,
                "elapsed_ms": started.elapsed().as_millis() as u64 })
    );
    let _ = std::io::stdout().flush();
    wait_stdin_eof_or(limit);
    let alive = open
        .iter_mut()
        .map(|s| round_trip(s, b'a'))
        .filter(|ok| *ok)
        .count();
    Ok(json!({ "phase": "closed", "alive": alive, "open": open.len() }))
}

/// One connection kept open for `duration`: a round trip of `bytes` every `pause`, each
/// echo compared with what was sent.
fn stream(
    addr: SocketAddr,
    duration: Duration,
    bytes: usize,
    pause: Duration,
    seed: u64,
) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut sent = vec![0u8; bytes.max(1)];
    let mut back = vec![0u8; sent.len()];
    let mut rounds: u64 = 0;
    while started.elapsed() < duration {
        rng.fill(&mut sent);
        s.write_all(&sent)
            .map_err(|e| format!("write after {rounds} rounds: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("read after {rounds} rounds: {e}"))?;
        if back != sent {
            return Err(format!("echo differs in round {rounds}"));
        }
        rounds += 1;
        thread::sleep(pause);
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("read to end: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last round",
            rest.len()
        ));
    }
    Ok(json!({ "rounds": rounds, "bytes": bytes, "secs": started.elapsed().as_secs_f64() }))
}

fn stall(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    // Never read: the echo fills this socket's receive window, then every buffer on the
    // way back, and at last the writes here block.
    s.set_write_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let block = payload(7, 64 * 1024);
    let mut written: u64 = 0;
    loop {
        match s.write(&block) {
            Ok(n) => written += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(format!("write after {written} bytes: {e}")),
        }
    }
    println!("{}", json!({ "phase": "stalled", "written": written }));
    let _ = std::io::stdout().flush();
    wait_stdin_eof();
    Ok(json!({ "phase": "closed", "written": written }))
}

/// Sets SO_LINGER to zero so that close sends RST.
fn socket2_linger_zero(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        ) == 0
    }
}

fn payload(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

/// xorshift64*: fast, deterministic, good enough to catch reordered or corrupted bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // A zero state would stay zero forever.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `conns` keep-alive connections, each sending `request` and reading the whole answer
/// (Content-Length or chunked) before the next, until `duration` has passed.
fn http_get(
    addr: SocketAddr,
    conns: u64,
    duration: Duration,
    request: &str,
) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let request = request.as_bytes().to_vec();
            thread::spawn(move || -> Result<Vec<u32>, String> {
                let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).ok();
                let mut reader = std::io::BufReader::with_capacity(
                    64 * 1024,
                    s.try_clone().map_err(|e| e.to_string())?,
                );
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.write_all(&request).map_err(|e| format!("write: {e}"))?;
                    let status = read_http_response(&mut reader)?;
                    if status != 200 {
                        return Err(format!("status {status}"));
                    }
                    latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().map_err(|_| "worker panicked".to_string())??);
    }
    let secs = started.elapsed().as_secs_f64();
    if all.is_empty() {
        return Err("no request completed".into());
    }
    all.sort_unstable();
    let pct = |p: usize| f64::from(all[(all.len() * p / 100).min(all.len() - 1)]);
    let mean = all.iter().map(|&l| f64::from(l)).sum::<f64>() / all.len() as f64;
    Ok(json!({
        "requests": all.len(),
        "per_sec": all.len() as f64 / secs,
        "mean_us": mean,
        "p50_us": pct(50),
        "p99_us": pct(99),
    }))
}

/// Reads one HTTP/1.1 response (head, then a Content-Length or chunked body); returns
/// its status.
fn read_http_response(r: &mut impl std::io::BufRead) -> Result<u16, String> {
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), String> {
        line.clear();
        match r.read_line(line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| format!("bad length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let skip = |r: &mut dyn std::io::BufRead, n: usize| -> Result<(), String> {
        std::io::copy(&mut r.take(n as u64), &mut std::io::sink())
            .map_err(|e| format!("body: {e}"))
            .and_then(|got| {
                if got == n as u64 {
                    Ok(())
                } else {
                    Err("short body".into())
                }
            })
    };
    if !chunked {
        skip(r, length)?;
        return Ok(status);
    }
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("chunk: {e}"))?;
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                r.read_line(&mut line)
                    .map_err(|e| format!("trailer: {e}"))?;
                if line.trim_end().is_empty() {
                    return Ok(status);
                }
            }
        }
        skip(r, size + 2)?;
    }
}

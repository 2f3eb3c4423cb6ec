//! Kernel tests of `snowtrail::redirect`: real cgroups, real eBPF programs, real loopback sockets;
//! nothing is mocked. They need root (and cgroup v2 with BPF); run them with
//! `cargo test -p snowtrail --test redirect`. Without root each test says so and returns.
//!
//! Each test owns a cgroup `<cgroup2 mount>/snowtrail-test/<name>-<pid>`, a pin directory
//! `/sys/fs/bpf/snowtrail-test-<name>-<pid>` and a listener port the kernel picked, so tests run in
//! parallel (several agents at once, their sockops programs all on the test process's cgroup) and
//! twice in a row. Guards remove cgroups, pins and child processes even when a test fails.
//! Clients are python3 processes placed in the cgroup before they exec; they connect to
//! 127.77.0.1:443, where nothing listens, unless a test says otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::io::{BufRead as _, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use snowtrail::cgroup;
use snowtrail::redirect::{self, Redirect, RedirectConfig};

/// Only a bound on waiting for something that must happen; no assertion depends on it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Where intercepted clients connect; nothing listens there.
const TARGET: &str = "127.77.0.1:443";

const PYTHON: &str = "/usr/bin/python3";

/// The client: connects (from the local port in argv[4], if given), prints one JSON line
/// (`peer`/`local` or `error`), then waits for the server to close the connection.
const CLIENT: &str = r#"
import errno, json, socket, sys
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
try:
    if len(sys.argv) > 4:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1" if sys.argv[1] == "6" else "127.0.0.1", int(sys.argv[4])))
    s.connect((sys.argv[2], int(sys.argv[3])))
except OSError as e:
    print(json.dumps({"error": errno.errorcode.get(e.errno, str(e.errno))}), flush=True)
    sys.exit(0)
peer, local = s.getpeername(), s.getsockname()
print(json.dumps({"peer": [peer[0], peer[1]], "local": [local[0], local[1]]}), flush=True)
s.recv(1)
s.close()
"#;

/// A client that connects to 127.77.0.3:443 over and over until killed.
const LOOPING_CLIENT: &str = r#"
import socket
while True:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.77.0.3", 443))
        # The agent closes at once, so one connection at a time; a server that does not costs a timeout.
        s.recv(1)
    except OSError:
        pass
    s.close()
"#;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: kernel tests need root");
            return;
        }
    };
}

/// A cgroup of the test, removed (with children, after moving stray processes out) on drop.
struct TestCgroup {
    mount: PathBuf,
    dir: PathBuf,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mount = cgroup::mount_point().unwrap();
        let dir = mount
            .join("snowtrail-test")
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            remove_cgroup_tree(&mount, &dir);
        }
        fs::create_dir_all(&dir).unwrap();
        TestCgroup { mount, dir }
    }

    fn child(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn id(&self) -> u64 {
        cgroup::id_of(&self.dir).unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.mount, &self.dir);
    }
}

fn remove_cgroup_tree(mount: &Path, dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(mount, &entry.path());
            }
        }
    }
    for pid in cgroup::procs(dir).unwrap_or_default() {
        let _ = cgroup::move_pid(mount, pid);
    }
    let _ = fs::remove_dir(dir);
}

/// A pin directory of the test, detached and removed on drop.
struct Pins {
    dir: PathBuf,
}

impl Pins {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/snowtrail-test-{name}-{}",
            std::process::id()
        ));
        let _ = redirect::detach_pinned(&dir);
        Pins { dir }
    }

    fn config(&self) -> RedirectConfig {
        self.config_with(4096)
    }

    fn config_with(&self, max_connections: u32) -> RedirectConfig {
        RedirectConfig {
            ports: vec![443],
            pin_dir: self.dir.clone(),
            max_connections,
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = redirect::detach_pinned(&self.dir);
    }
}

/// The agent side of a test: listeners on 127.0.0.1 and [::1] sharing one port the kernel picked.
struct Listeners {
    v4: TcpListener,
    v6: TcpListener,
    port: u16,
}

impl Listeners {
    fn new() -> Self {
        loop {
            let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = v4.local_addr().unwrap().port();
            if let Ok(v6) = TcpListener::bind(("::1", port)) {
                return Listeners { v4, v6, port };
            }
        }
    }
}

/// A client process, killed and reaped on drop; its first output line arrives on a channel.
struct Client {
    child: Child,
    line: mpsc::Receiver<String>,
    said: std::cell::OnceCell<Value>,
}

impl Client {
    /// Starts a client in `cgroup_dir` (moved there before it execs), or where the test runs.
    fn spawn(cgroup_dir: Option<&Path>, family: u8, host: &str, port: u16, netns: bool) -> Self {
        Self::spawn_from(cgroup_dir, family, host, port, netns, None)
    }

    /// As [`Client::spawn`], binding the local port `from` first when given.
    fn spawn_from(
        cgroup_dir: Option<&Path>,
        family: u8,
        host: &str,
        port: u16,
        netns: bool,
        from: Option<u16>,
    ) -> Self {
        let mut cmd = match cgroup_dir {
            Some(dir) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
                    .arg("sh")
                    .arg(dir);
                c
            }
            None => Command::new("/usr/bin/env"),
        };
        if netns {
            cmd.args(["/usr/bin/unshare", "-n"]);
        }
        cmd.args([
            PYTHON,
            "-c",
            CLIENT,
            &family.to_string(),
            host,
            &port.to_string(),
        ]);
        if let Some(from) = from {
            cmd.arg(from.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, line) = mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        Client {
            child,
            line,
            said: std::cell::OnceCell::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client's report.
    fn report(&self) -> Value {
        self.said
            .get_or_init(|| {
                let line = self
                    .line
                    .recv_timeout(PATIENCE)
                    .expect("client printed nothing");
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("client said {line:?}: {e}"))
            })
            .clone()
    }

    /// The address the client's getpeername() reported.
    fn peer(&self) -> SocketAddr {
        let report = self.report();
        addr_of(&report["peer"]).unwrap_or_else(|| panic!("client did not connect: {report}"))
    }

    /// The client's own address, when it connected.
    fn local(&self) -> Option<SocketAddr> {
        addr_of(&self.report()["local"])
    }

    /// The errno name of a failed connect.
    fn error(&self) -> String {
        let report = self.report();
        report["error"]
            .as_str()
            .unwrap_or_else(|| panic!("client connected: {report}"))
            .to_owned()
    }

    fn finish(mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_of(pair: &Value) -> Option<SocketAddr> {
    let ip = pair.get(0)?.as_str()?;
    let port = pair.get(1)?.as_u64()?;
    format!("[{ip}]:{port}")
        .parse()
        .or_else(|_| format!("{ip}:{port}").parse())
        .ok()
}

/// Accepts one connection, giving up after [`PATIENCE`].
fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).unwrap();
                return (stream, peer);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("nothing accepted on {:?}: {e}", listener.local_addr()),
        }
    }
}

/// The test process's own cgroup directory (where its listeners were created).
fn own_cgroup() -> PathBuf {
    let mount = cgroup::mount_point().unwrap();
    let rel = cgroup::cgroup_of(None).unwrap();
    mount.join(rel.strip_prefix("/").unwrap_or(&rel))
}

fn start(pins: &Pins, listeners: &Listeners) -> Redirect {
    Redirect::start(&pins.config(), listeners.port, &own_cgroup()).unwrap()
}

/// Waits until finished connections have left no record (the kernel removes them on TCP close).
fn wait_until_clean(r: &Redirect) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = r.counters().unwrap();
        if c.live_origins == 0 && c.live_tuples == 0 && c.live_accepted == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "records left behind: {c:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Checks one redirected connection end to end and closes it.
fn check_redirected(
    r: &Redirect,
    listener: &TcpListener,
    client: Client,
    cgroup_id: u64,
    original: SocketAddr,
) {
    let (stream, peer) = accept(listener);
    assert_eq!(
        client.peer(),
        original,
        "the client's getpeername shows the original destination"
    );
    let origin = r
        .lookup(stream.as_fd())
        .unwrap()
        .unwrap_or_else(|| panic!("an origin record for the accepted peer {peer}"));
    assert_eq!(redirect::socket_addr(&origin.original_dst), original);
    assert_eq!(origin.tgid, client.pid());
    assert_eq!(redirect::comm(&origin), "python3");
    assert_eq!(origin.uid, nix::unistd::getuid().as_raw());
    assert_eq!(origin.gid, nix::unistd::getgid().as_raw());
    assert_eq!(origin.cgroup_id, cgroup_id);
    assert_ne!(origin.socket_cookie, 0);
    assert_eq!(
        origin.flags, 0,
        "an enrolled cgroup's own programs redirected it"
    );
    drop(stream);
    client.finish();
}

#[test]
fn redirects_ipv4_and_leaves_other_ports_alone() {
    require_root!();
    let cg = TestCgroup::new("ipv4");
    let pins = Pins::new("ipv4");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();
    r.attach(&cg.dir).unwrap(); // idempotent
    assert_eq!(r.attached(), vec![cg.id()]);

    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.1", 443, false);
    check_redirected(&r, &listeners.v4, client, cg.id(), TARGET.parse().unwrap());

    // A port that is not intercepted reaches its own listener, untouched.
    let direct = TcpListener::bind("127.0.0.1:0").unwrap();
    let direct_addr = direct.local_addr().unwrap();
    let client = Client::spawn(Some(&cg.dir), 4, "127.0.0.1", direct_addr.port(), false);
    let (stream, _) = accept(&direct);
    assert_eq!(client.peer(), direct_addr);
    assert!(r.lookup(stream.as_fd()).unwrap().is_none());
    drop(stream);
    client.finish();

    wait_until_clean(&r);
    let c = r.counters().unwrap();
    assert!(c.redirected >= 1 && c.accepted >= 1, "{c:?}");
    r.shutdown(true).unwrap();
    assert!(!pins.dir.exists());
}

#[test]
fn redirects_ipv6_and_v4_mapped() {
    require_root!();
    let cg = TestCgroup::new("ipv6");
    let pins = Pins::new("ipv6");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();

    // IPv6 goes to [::1].
    let client = Client::spawn(Some(&cg.dir), 6, "::1", 443, false);
    check_redirected(
        &r,
        &listeners.v6,
        client,
        cg.id(),
        "[::1]:443".parse().unwrap(),
    );

    // A dual-stack socket to ::ffff:a.b.c.d goes to the IPv4 listener and keeps its mapped form.
    let client = Client::spawn(Some(&cg.dir), 6, "::ffff:127.77.0.1", 443, false);
    let (stream, _) = accept(&listeners.v4);
    assert_eq!(client.peer(), "[::ffff:127.77.0.1]:443".parse().unwrap());
    let origin = r
        .lookup(stream.as_fd())
        .unwrap()
        .expect("origin of the v4-mapped connection");
    assert_eq!(origin.original_dst.family, snowtrail_common::FAMILY_INET6);
    assert_eq!(
        redirect::socket_addr(&origin.original_dst),
        TARGET.parse().unwrap()
    );
    assert_eq!(origin.tgid, client.pid());
    drop(stream);
    client.finish();

    wait_until_clean(&r);
    r.shutdown(true).unwrap();
}

#[test]
fn covers_nested_cgroups_but_not_outsiders() {
    require_root!();
    let cg = TestCgroup::new("nested");
    let pins = Pins::new("nested");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();

    let nested = cg.child("inner");
    let client = Client::spawn(Some(&nested), 4, "127.77.0.1", 443, false);
    check_redirected(
        &r,
        &listeners.v4,
        client,
        cgroup::id_of(&nested).unwrap(),
        TARGET.parse().unwrap(),
    );

    // The same client outside the cgroup goes where it asked: nothing listens there.
    let outsider = Client::spawn(None, 4, "127.77.0.1", 443, false);
    assert_eq!(outsider.error(), "ECONNREFUSED");
    outsider.finish();

    wait_until_clean(&r);
    r.shutdown(true).unwrap();
}

#[test]
fn refuses_sockets_of_other_network_namespaces() {
    require_root!();
    let cg = TestCgroup::new("netns");
    let pins = Pins::new("netns");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();

    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.1", 443, true);
    assert_eq!(client.error(), "EPERM");
    client.finish();
    let c = r.counters().unwrap();
    assert_eq!(c.refused_netns, 1, "{c:?}");
    assert_eq!(c.redirected, 0, "{c:?}");
    assert_eq!(c.live_origins, 0, "{c:?}");
    r.shutdown(true).unwrap();
}

#[test]
fn fails_closed_then_takes_over_then_fails_open() {
    require_root!();
    // A real server at the original destination, so "not redirected" means "reaches it".
    let real = TcpListener::bind("127.77.0.2:443").expect("bind 127.77.0.2:443");
    let real_addr: SocketAddr = "127.77.0.2:443".parse().unwrap();
    let cg = TestCgroup::new("failclosed");
    let pins = Pins::new("failclosed");

    let first = Listeners::new();
    let mut r = start(&pins, &first);
    r.attach(&cg.dir).unwrap();
    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.2", 443, false);
    check_redirected(&r, &first.v4, client, cg.id(), real_addr);

    // Fail closed: the agent stops and its listener closes; enrolled clients are refused...
    r.shutdown(false).unwrap();
    drop(first);
    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.2", 443, false);
    assert_eq!(client.error(), "ECONNREFUSED");
    client.finish();
    // ...while a client that is not enrolled reaches the server.
    let outsider = Client::spawn(None, 4, "127.77.0.2", 443, false);
    let (stream, _) = accept(&real);
    assert_eq!(outsider.peer(), real_addr);
    drop(stream);
    outsider.finish();

    // A new agent adopts the pinned links: no re-attach needed. It listens on another port and has
    // another map size, so it only works if the links now run its programs on its new maps.
    let second = Listeners::new();
    let cfg = RedirectConfig {
        max_connections: 2048,
        ..pins.config()
    };
    let r = Redirect::start(&cfg, second.port, &own_cgroup()).unwrap();
    assert_eq!(r.attached(), vec![cg.id()]);
    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.2", 443, false);
    check_redirected(&r, &second.v4, client, cg.id(), real_addr);
    wait_until_clean(&r);

    // Fail open: everything is detached and unpinned; the enrolled client reaches the server.
    r.shutdown(true).unwrap();
    assert!(!pins.dir.exists());
    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.2", 443, false);
    let (stream, _) = accept(&real);
    assert_eq!(client.peer(), real_addr);
    drop(stream);
    client.finish();
}

#[test]
fn takeover_leaves_no_gap() {
    require_root!();
    // Anything reaching this server escaped redirection.
    let real = TcpListener::bind("127.77.0.3:443").expect("bind 127.77.0.3:443");
    real.set_nonblocking(true).unwrap();
    let cg = TestCgroup::new("nogap");
    let pins = Pins::new("nogap");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();

    // The agent's listener stays open across restarts; a thread accepts and closes at once.
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let listener = listeners.v4.try_clone().unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, stop) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if stream.is_ok() {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // An enrolled client connecting in a loop the whole time.
    let looping = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3""#)
        .arg("sh")
        .arg(&cg.dir)
        .arg(PYTHON)
        .arg(LOOPING_CLIENT)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let looping = Client {
        child: looping,
        line: mpsc::channel().1,
        said: std::cell::OnceCell::new(),
    };

    // Waits until the client got through once more, so every phase below sees it connecting.
    let progress = || {
        let deadline = Instant::now() + PATIENCE;
        let seen = accepted.load(Ordering::Relaxed);
        while accepted.load(Ordering::Relaxed) <= seen {
            assert!(
                Instant::now() < deadline,
                "the looping client stopped getting through"
            );
            thread::sleep(Duration::from_millis(1));
        }
    };
    progress();
    for round in 0..6 {
        // Alternate a crash (drop) and a fail-closed stop, then start again on the same pins.
        if round % 2 == 0 {
            drop(r);
        } else {
            r.shutdown(false).unwrap();
        }
        progress();
        r = start(&pins, &listeners);
        progress();
    }
    drop(looping);
    stop.store(true, Ordering::Relaxed);
    drop(TcpStream::connect(listeners.v4.local_addr().unwrap())); // wakes the acceptor
    acceptor.join().unwrap();
    match real.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a connection escaped redirection during takeover: {other:?}"),
    }
    r.shutdown(true).unwrap();
}

#[test]
fn detach_and_detach_pinned() {
    require_root!();
    let a = TestCgroup::new("detach-a");
    let b = TestCgroup::new("detach-b");
    let gone = TestCgroup::new("detach-gone");
    let pins = Pins::new("detach");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    for cg in [&a, &b, &gone] {
        r.attach(&cg.dir).unwrap();
    }

    // detach() by directory: that cgroup is no longer redirected.
    r.detach(&a.dir).unwrap();
    r.detach(&a.dir).unwrap(); // idempotent
    let client = Client::spawn(Some(&a.dir), 4, "127.77.0.1", 443, false);
    assert_eq!(client.error(), "ECONNREFUSED");
    client.finish();

    // A cgroup whose directory is gone stays listed until detach_id().
    let gone_id = gone.id();
    drop(gone);
    assert!(r.attached().contains(&gone_id));
    r.detach_id(gone_id).unwrap();
    assert_eq!(r.attached(), vec![b.id()]);

    // A pinned cgroup removed while the daemon is down is dropped by the next start.
    let removed = TestCgroup::new("detach-removed");
    r.attach(&removed.dir).unwrap();
    let removed_id = removed.id();
    drop(r);
    drop(removed);
    let mut r = start(&pins, &listeners);
    assert_eq!(r.attached(), vec![b.id()]);
    assert!(!pins.dir.join("links").join(removed_id.to_string()).exists());
    r.attach(&b.dir).unwrap(); // adopted, so already attached

    // The daemon goes away without a clean stop: the pinned links keep redirecting...
    drop(r);
    let client = Client::spawn(Some(&b.dir), 4, "127.77.0.1", 443, false);
    let (stream, _) = accept(&listeners.v4);
    assert_eq!(client.peer(), TARGET.parse().unwrap());
    drop(stream);
    client.finish();

    // ...until `snowtrail detach` removes them with the daemon down.
    assert_eq!(redirect::detach_pinned(&pins.dir).unwrap(), 5);
    assert!(!pins.dir.exists());
    let client = Client::spawn(Some(&b.dir), 4, "127.77.0.1", 443, false);
    assert_eq!(client.error(), "ECONNREFUSED");
    client.finish();
    assert_eq!(redirect::detach_pinned(&pins.dir).unwrap(), 0);
}

#[test]
fn two_agents_do_not_interfere() {
    require_root!();
    let cg1 = TestCgroup::new("pair-1");
    let cg2 = TestCgroup::new("pair-2");
    let pins1 = Pins::new("pair-1");
    let pins2 = Pins::new("pair-2");
    let l1 = Listeners::new();
    let l2 = Listeners::new();
    let mut r1 = start(&pins1, &l1);
    let mut r2 = start(&pins2, &l2);
    r1.attach(&cg1.dir).unwrap();
    r2.attach(&cg2.dir).unwrap();

    let c1 = Client::spawn(Some(&cg1.dir), 4, "127.77.0.1", 443, false);
    check_redirected(&r1, &l1.v4, c1, cg1.id(), TARGET.parse().unwrap());
    let c2 = Client::spawn(Some(&cg2.dir), 6, "::1", 443, false);
    let (stream, _) = accept(&l2.v6);
    assert_eq!(c2.peer(), "[::1]:443".parse().unwrap());
    assert!(
        r1.lookup(stream.as_fd()).unwrap().is_none(),
        "one agent's records are not the other's"
    );
    assert!(r2.lookup(stream.as_fd()).unwrap().is_some());
    drop(stream);
    c2.finish();

    wait_until_clean(&r1);
    wait_until_clean(&r2);
    r1.shutdown(true).unwrap();
    r2.shutdown(true).unwrap();
}

/// A connection is found by the accepted socket itself: a process that later connects to the
/// listener straight from the port a redirected client used (its cgroup unenrolled while the
/// connection was open, so no close callback ran on the client's side) gets no origin.
#[test]
fn a_freed_port_cannot_borrow_an_origin() {
    require_root!();
    let cg = TestCgroup::new("borrow");
    let pins = Pins::new("borrow");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach(&cg.dir).unwrap();

    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.1", 443, false);
    let (stream, _) = accept(&listeners.v4);
    let used = client.local().expect("the client connected");
    assert_eq!(
        r.lookup(stream.as_fd()).unwrap().map(|o| o.tgid),
        Some(client.pid())
    );
    r.detach(&cg.dir).unwrap();
    // The agent's side closes first, so the client's port is free again at once.
    drop(stream);
    client.finish();

    let before = r.counters().unwrap().unmatched;
    let stranger = Client::spawn_from(
        None,
        4,
        "127.0.0.1",
        listeners.port,
        false,
        Some(used.port()),
    );
    let (stream, peer) = accept(&listeners.v4);
    assert_eq!(peer, used, "the stranger connected from the freed port");
    assert!(
        r.lookup(stream.as_fd()).unwrap().is_none(),
        "a direct connection from a port an origin once had is not that origin's"
    );
    assert!(r.counters().unwrap().unmatched > before);
    drop(stream);
    stranger.finish();
    r.shutdown(true).unwrap();
}

/// With maps far smaller than the connections opened at once, origins are lost (the connect is
/// refused, or the agent finds no record and refuses the connection), and every origin that is
/// found is the one of the process at the other end.
#[test]
fn under_map_pressure_origins_are_lost_never_misattributed() {
    require_root!();
    const CAPACITY: u32 = 8;
    const CLIENTS: usize = 32;
    let cg = TestCgroup::new("pressure");
    let pins = Pins::new("pressure");
    let listeners = Listeners::new();
    let mut r =
        Redirect::start(&pins.config_with(CAPACITY), listeners.port, &own_cgroup()).unwrap();
    r.attach(&cg.dir).unwrap();

    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| Client::spawn(Some(&cg.dir), 4, "127.77.0.1", 443, false))
        .collect();
    // Every client has connected (or failed) before the first accept: all handshakes are done.
    let connected: Vec<(SocketAddr, u32)> = clients
        .iter()
        .filter_map(|c| c.local().map(|local| (local, c.pid())))
        .collect();
    for c in clients.iter().filter(|c| c.local().is_none()) {
        assert_eq!(
            c.error(),
            "EPERM",
            "a connect without a stored origin is refused"
        );
    }
    let mut found = 0;
    for _ in 0..connected.len() {
        let (stream, peer) = accept(&listeners.v4);
        let owner = connected
            .iter()
            .find(|(local, _)| *local == peer)
            .map(|(_, pid)| *pid)
            .expect("every accepted peer is one of the clients");
        if let Some(origin) = r.lookup(stream.as_fd()).unwrap() {
            assert_eq!(
                origin.tgid, owner,
                "the origin of {peer} is its own client's"
            );
            found += 1;
        }
    }
    eprintln!(
        "{} of {CLIENTS} connected, {found} origins found",
        connected.len()
    );
    assert!(
        found <= CAPACITY as usize,
        "{found} origins found; the map holds {CAPACITY}"
    );
    assert!(
        found < CLIENTS,
        "the pressure was real: {found} of {CLIENTS} found"
    );
    drop(clients);
    r.shutdown(true).unwrap();
}

/// The guard on an enrolled cgroup's parent: a cgroup made again at the enrolled path (a
/// restarted unit) reaches the agent marked guarded before its own programs are attached; a
/// cgroup the agent classified as foreign goes where it asked; an enrolled cgroup is redirected by
/// its own programs, unmarked.
#[test]
fn a_guard_covers_a_recreated_cgroup_and_lets_foreign_ones_pass() {
    require_root!();
    let parent = TestCgroup::new("guard");
    let pins = Pins::new("guard");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    let unit = parent.child("unit");
    r.attach(&unit).unwrap();
    r.guard(&parent.dir).unwrap();
    r.guard(&parent.dir).unwrap(); // idempotent
    assert_eq!(r.guarded(), vec![parent.id()]);

    let client = Client::spawn(Some(&unit), 4, "127.77.0.1", 443, false);
    check_redirected(
        &r,
        &listeners.v4,
        client,
        cgroup::id_of(&unit).unwrap(),
        TARGET.parse().unwrap(),
    );

    // The unit restarts: its cgroup is removed and made again, with a new id nothing is attached to.
    let old_id = cgroup::id_of(&unit).unwrap();
    fs::remove_dir(&unit).unwrap();
    fs::create_dir(&unit).unwrap();
    let new_id = cgroup::id_of(&unit).unwrap();
    assert_ne!(old_id, new_id);
    let client = Client::spawn(Some(&unit), 4, "127.77.0.1", 443, false);
    let (stream, _) = accept(&listeners.v4);
    assert_eq!(client.peer(), TARGET.parse().unwrap());
    let origin = r
        .lookup(stream.as_fd())
        .unwrap()
        .expect("the guard recorded the origin");
    assert_eq!(
        origin.flags & redirect::ORIGIN_GUARDED,
        redirect::ORIGIN_GUARDED
    );
    assert_eq!(origin.cgroup_id, new_id);
    assert_eq!(origin.tgid, client.pid());
    drop(stream);
    client.finish();

    // A sibling the agent classified as enrolled by nothing goes straight to where it asked.
    let sibling = parent.child("other");
    r.mark_foreign(&[cgroup::id_of(&sibling).unwrap()]).unwrap();
    let before = r.counters().unwrap().guarded;
    let outsider = Client::spawn(Some(&sibling), 4, "127.77.0.1", 443, false);
    assert_eq!(outsider.error(), "ECONNREFUSED");
    outsider.finish();
    assert_eq!(r.counters().unwrap().guarded, before);

    wait_until_clean(&r);
    r.unguard_id(parent.id()).unwrap();
    assert!(r.guarded().is_empty());
    r.shutdown(true).unwrap();
    assert!(!pins.dir.exists());
}

/// A UDP client: one `sendto`, then prints `{"sent": n}` or `{"error": errno}`.
const UDP_CLIENT: &str = r#"
import errno, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    n = s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print(json.dumps({"sent": n}), flush=True)
except OSError as e:
    print(json.dumps({"error": errno.errorcode.get(e.errno, str(e.errno))}), flush=True)
"#;

fn udp_send(cgroup_dir: &Path, host: &str, port: u16) -> Value {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(cgroup_dir)
        .args([PYTHON, "-c", UDP_CLIENT, host, &port.to_string()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A locked-down cgroup: intercepted ports are still redirected; TCP and UDP to anything not
/// allowed fail with EPERM and reach the agent as denials; allowed destinations (one port of an
/// address, or every port of a range) work.
#[test]
fn a_locked_down_cgroup_reaches_only_allowed_destinations() {
    require_root!();
    let cg = TestCgroup::new("locked");
    let pins = Pins::new("locked");
    let listeners = Listeners::new();
    let mut r = start(&pins, &listeners);
    r.attach_locked(&cg.dir, true).unwrap();
    assert!(r.is_locked(cg.id()));
    assert_eq!(r.attached(), vec![cg.id()]);
    let range = TcpListener::bind("127.77.31.5:0").unwrap();
    r.allow(&[
        redirect::Allowed {
            net: "127.77.30.1".parse().unwrap(),
            prefix: 32,
            port: Some(5353),
        },
        redirect::Allowed {
            net: "127.77.31.0".parse().unwrap(),
            prefix: 24,
            port: None,
        },
    ])
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut denials = {
        let _in_runtime = rt.enter();
        r.take_denials().unwrap().expect("the ring buffer")
    };

    let client = Client::spawn(Some(&cg.dir), 4, "127.77.0.1", 443, false);
    check_redirected(&r, &listeners.v4, client, cg.id(), TARGET.parse().unwrap());

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    let refused = Client::spawn(Some(&cg.dir), 4, "127.0.0.1", port, false);
    assert_eq!(refused.error(), "EPERM", "a port nobody allowed");
    refused.finish();

    let allowed = Client::spawn(
        Some(&cg.dir),
        4,
        "127.77.31.5",
        range.local_addr().unwrap().port(),
        false,
    );
    let (stream, _) = accept(&range);
    assert!(allowed.local().is_some(), "every port of an allowed range");
    drop(stream);
    allowed.finish();

    assert_eq!(
        udp_send(&cg.dir, "127.77.0.1", 443)["error"],
        "EPERM",
        "QUIC"
    );
    assert_eq!(udp_send(&cg.dir, "127.77.30.1", 5353)["sent"], 1);
    assert_eq!(udp_send(&cg.dir, "127.77.30.1", 5354)["error"], "EPERM");

    let c = r.counters().unwrap();
    assert_eq!(c.lockdown_denied, 3, "{c:?}");
    let seen: Vec<_> = rt
        .block_on(denials.next())
        .unwrap()
        .iter()
        .map(|d| (redirect::socket_addr(&d.dst), d.protocol, d.cgroup_id))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                SocketAddr::from(([127, 0, 0, 1], port)),
                redirect::PROTO_TCP,
                cg.id()
            ),
            (
                "127.77.0.1:443".parse().unwrap(),
                redirect::PROTO_UDP,
                cg.id()
            ),
            (
                "127.77.30.1:5354".parse().unwrap(),
                redirect::PROTO_UDP,
                cg.id()
            ),
        ]
    );

    // Back to plain enrollment: nothing is refused any more.
    r.attach_locked(&cg.dir, false).unwrap();
    assert!(!r.is_locked(cg.id()));
    assert_eq!(udp_send(&cg.dir, "127.77.0.1", 443)["sent"], 1);
    wait_until_clean(&r);
    r.shutdown(true).unwrap();
}

//! The host package: the shipped config against the defaults, the .deb installed, upgraded and
//! purged in a scratch root, lintian, the .rpm's files and scripts, and the daemon run with exactly
//! the unit's capabilities, telling a fake systemd it is ready and stopping.
//!
//! The packages are the ones `cargo xtask test` builds from the debug binary (`SNOWTRAIL_DEB`,
//! `SNOWTRAIL_RPM`; else the newest under `target/package/`, which `cargo xtask package --profile
//! dev --no-build` writes).
//!
//! The scratch root is the host's own file system under an overlay whose upper layer is a tmpfs,
//! in a mount namespace of its own: dpkg runs chrooted in it with the host's
//! dpkg database, libc and ca-certificates, so the maintainer scripts meet a real Debian system,
//! yet nothing reaches the host's /etc, trust store or bpffs (the scratch root gets a bpffs of its
//! own). It takes seconds, needs no network, unlike debootstrap, and is gone when the test ends.

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use snowtrail::config::Config;
use snowtrail_tests::client::client_args;
use snowtrail_tests::{PeerServer, snowtrail_bin, unique_port, wait_for, workspace_root};

/// Listen ports of this file's daemons start here.
const PORT_BASE: u16 = 29_560;

fn package(var: &str, ext: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let dir = workspace_root().join("target/package");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no .{ext} under {}: run `cargo xtask package --profile dev --no-build` (cargo xtask test does) or set {var}",
                dir.display()
            )
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// The shipped configuration

/// Every key of the configuration as a dotted path, with its default as JSON.
fn default_keys() -> Vec<(String, Value)> {
    let mut keys = Vec::new();
    let v = serde_json::to_value(Config::default()).unwrap();
    for (k, v) in v.as_object().unwrap() {
        match v.as_object() {
            Some(section) => {
                for (sk, sv) in section {
                    keys.push((format!("{k}.{sk}"), sv.clone()));
                }
            }
            None => keys.push((k.clone(), v.clone())),
        }
    }
    keys
}

#[test]
fn shipped_config_is_every_key_at_its_default() {
    let path = workspace_root().join("packaging/config.toml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    // As shipped, it sets nothing.
    assert_eq!(
        Config::from_toml(&shipped, "shipped").unwrap(),
        Config::default()
    );
    // Every commented-out key, uncommented, is the default.
    let mut section = String::new();
    let mut shown: Vec<String> = Vec::new();
    let mut uncommented = String::new();
    let lines: Vec<&str> = shipped.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        }
        let setting = line
            .strip_prefix('#')
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "));
        match setting {
            Some(kv) => {
                let key = kv.split(" = ").next().unwrap();
                shown.push(if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                });
                assert!(
                    i > 0 && lines[i - 1].starts_with("# "),
                    "{key} has no documentation line above it"
                );
                uncommented.push_str(kv);
            }
            None => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    assert_eq!(
        Config::from_toml(&uncommented, "uncommented").unwrap(),
        Config::default(),
        "a commented-out value in packaging/config.toml is not the default"
    );
    // Every key of the configuration is there, once; keys without a default (off unless set) are
    // named with an example.
    for (key, default) in default_keys() {
        let leaf = key.rsplit('.').next().unwrap();
        if default.is_null() {
            assert!(
                shipped.contains(&format!("{leaf} = ")),
                "packaging/config.toml does not mention {key}"
            );
        } else {
            assert_eq!(
                shown.iter().filter(|k| **k == key).count(),
                1,
                "packaging/config.toml must show {key} once, commented out at its default"
            );
        }
    }
    let known: Vec<String> = default_keys().into_iter().map(|(k, _)| k).collect();
    for k in &shown {
        assert!(
            known.contains(k),
            "packaging/config.toml shows unknown key {k}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The .deb in a scratch root

/// A mount namespace holding an overlay of the host's root; commands run chrooted in it.
struct ScratchRoot {
    dir: tempfile::TempDir,
    holder: Child,
}

impl ScratchRoot {
    /// Sets up the scratch root with `deb` copied to its /tmp/snowtrail.deb.
    fn new(deb: &Path) -> ScratchRoot {
        let dir = tempfile::Builder::new()
            .prefix("snowtrail-root-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("merged")).unwrap();
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        let setup = r#"
            set -e
            D="$1"; M="$D/merged"
            # The upper layer on a tmpfs of the namespace: it works whatever file system holds
            # /tmp (an overlay root cannot be an upper layer), and vanishes with the namespace.
            mount -t tmpfs tmpfs "$D/layer"
            mkdir "$D/layer/upper" "$D/layer/work"
            mount -t overlay overlay -o "lowerdir=/,upperdir=$D/layer/upper,workdir=$D/layer/work" "$M"
            mount -t proc proc "$M/proc"
            mount --rbind /dev "$M/dev"
            mount --rbind /sys "$M/sys"
            # A bpffs of its own: the package's scripts must never see the host's pins.
            mount -t bpf bpf "$M/sys/fs/bpf"
            mount -t tmpfs tmpfs "$M/run"
            mount -t tmpfs tmpfs "$M/tmp"
            cp "$2" "$M/tmp/snowtrail.deb"
            # No service is started from a chroot.
            printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"
            chmod 755 "$M/usr/sbin/policy-rc.d"
            echo ready
            exec sleep 3600
        "#;
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                setup,
                "sh",
            ])
            .arg(dir.path())
            .arg(deb)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) is needed");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the scratch root could not be set up");
        ScratchRoot { dir, holder }
    }

    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    /// Runs a shell script chrooted in the scratch root, with a clean environment.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("chroot")
            .arg(self.merged())
            .args(["sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        // The namespace, its mounts and the overlay go with the holder.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Whether the system bundle in the scratch root holds the certificate in `ca_pem`.
fn trusted(root: &ScratchRoot, ca_pem: &str) -> bool {
    let ca = snowtrail::tls::ca::pem_certs(ca_pem);
    assert_eq!(ca.len(), 1);
    let store = root.sh_ok("cat /etc/ssl/certs/ca-certificates.crt");
    snowtrail::tls::ca::pem_certs(&store).contains(&ca[0])
}

#[test]
fn deb_installs_upgrades_and_purges_in_a_scratch_root() {
    let deb = package("SNOWTRAIL_DEB", "deb");
    let root = ScratchRoot::new(&deb);
    assert!(
        root.sh("dpkg-query -W snowtrail").status.code() != Some(0),
        "the scratch root must start without snowtrail"
    );

    root.sh_ok("dpkg -i /tmp/snowtrail.deb");

    // Files, owners and modes.
    let stat = root.sh_ok(
        "stat -c '%n %U:%G %a' /usr/bin/snowtrail /etc/snowtrail/config.toml \
         /usr/lib/systemd/system/snowtrail.service /var/lib/snowtrail /var/lib/snowtrail/ca.pem \
         /var/lib/snowtrail/ca-key.pem /var/log/snowtrail \
         /usr/local/share/ca-certificates/snowtrail-ca.crt",
    );
    for expected in [
        "/usr/bin/snowtrail root:root 755",
        "/etc/snowtrail/config.toml root:root 644",
        "/usr/lib/systemd/system/snowtrail.service root:root 644",
        "/var/lib/snowtrail root:root 700",
        "/var/lib/snowtrail/ca.pem root:root 644",
        "/var/lib/snowtrail/ca-key.pem root:root 600",
        "/var/log/snowtrail root:root 750",
        "/usr/local/share/ca-certificates/snowtrail-ca.crt root:root 644",
    ] {
        assert!(
            stat.lines().any(|l| l == expected),
            "{expected} not in:\n{stat}"
        );
    }
    let shipped = std::fs::read_to_string(workspace_root().join("packaging/config.toml")).unwrap();
    assert_eq!(root.sh_ok("cat /etc/snowtrail/config.toml"), shipped);
    assert!(
        root.sh_ok("dpkg-query -W -f='${Conffiles}' snowtrail")
            .contains("/etc/snowtrail/config.toml"),
        "the config must be a conffile, kept on upgrade"
    );
    // Enabled for the next boot (no service is started in a chroot).
    root.sh_ok("test -L /etc/systemd/system/multi-user.target.wants/snowtrail.service");

    let version = root.sh_ok("snowtrail --version");
    assert_eq!(
        version.trim(),
        format!("snowtrail {}", env!("CARGO_PKG_VERSION"))
    );

    // The CA is in the scratch root's trust store, and not in the host's.
    let ca = root.sh_ok("cat /var/lib/snowtrail/ca.pem");
    assert!(
        trusted(&root, &ca),
        "postinst did not add the CA to the store"
    );
    let host_store = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    assert!(
        !snowtrail::tls::ca::pem_certs(&host_store)
            .contains(&snowtrail::tls::ca::pem_certs(&ca)[0]),
        "the host's trust store must not change"
    );

    // The unit, as systemd reads it.
    if root.sh("command -v systemd-analyze").status.success() {
        let out = root.sh("systemd-analyze verify /usr/lib/systemd/system/snowtrail.service");
        assert!(
            out.status.success() && !text(&out).contains("snowtrail.service"),
            "systemd-analyze verify:\n{}",
            text(&out)
        );
    }

    // doctor: everything installed passes; the daemon is down (no service runs in a chroot), which
    // fails with its fix.
    let out = root.sh("snowtrail doctor --json");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
            .clone()
    };
    for name in [
        "config",
        "kernel",
        "state_dir",
        "audit_dir",
        "ca",
        "trust_store",
        "no_bypass",
    ] {
        assert_eq!(check(name)["status"], "pass", "{name}: {report:#}");
    }
    let daemon = check("daemon");
    assert_eq!(daemon["status"], "fail");
    assert!(
        daemon["fix"]
            .as_str()
            .unwrap()
            .contains("systemctl start snowtrail"),
        "{daemon}"
    );
    assert_eq!(report["ok"], false);
    let human = root.sh("snowtrail doctor");
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("FAIL  daemon"),
        "{}",
        text(&human)
    );

    // An upgrade (the same version again) keeps the CA, the audit and a changed config.
    root.sh_ok(
        "mkdir -p '/var/lib/snowtrail/audit/date=2026-01-01/hour=00' && \
         echo kept > '/var/lib/snowtrail/audit/date=2026-01-01/hour=00/h.parquet' && \
         sed -i 's/^#fail_open = false/fail_open = false/' /etc/snowtrail/config.toml",
    );
    root.sh_ok("dpkg -i /tmp/snowtrail.deb");
    assert_eq!(root.sh_ok("cat /var/lib/snowtrail/ca.pem"), ca);
    assert_eq!(
        root.sh_ok("cat '/var/lib/snowtrail/audit/date=2026-01-01/hour=00/h.parquet'"),
        "kept\n"
    );
    assert!(
        root.sh_ok("cat /etc/snowtrail/config.toml")
            .lines()
            .any(|l| l == "fail_open = false")
    );
    assert!(trusted(&root, &ca));

    // Purge: the CA leaves the store, the state and the config go.
    root.sh_ok("dpkg --purge snowtrail");
    assert!(!trusted(&root, &ca), "purge left the CA in the trust store");
    for gone in [
        "/usr/bin/snowtrail",
        "/usr/local/share/ca-certificates/snowtrail-ca.crt",
        "/var/lib/snowtrail",
        "/var/log/snowtrail",
        "/etc/snowtrail/config.toml",
        "/etc/systemd/system/multi-user.target.wants/snowtrail.service",
    ] {
        assert!(
            !root
                .sh(&format!("test -e {gone} || test -L {gone}"))
                .status
                .success(),
            "{gone} is still there after purge"
        );
    }
}

#[test]
fn lintian_finds_no_errors() {
    let deb = package("SNOWTRAIL_DEB", "deb");
    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("lintian is needed (cargo xtask setup installs it)");
    let report = text(&out);
    assert!(out.status.success(), "lintian:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E:")),
        "lintian:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------------
// The .rpm

fn rpm_query(rpm: &Path, what: &str) -> String {
    let out = Command::new("rpm")
        .args(["-qp", what])
        .arg(rpm)
        .output()
        .expect("rpm is needed (cargo xtask setup installs it)");
    assert!(out.status.success(), "rpm -qp {what}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rpm_holds_the_files_and_scripts() {
    let rpm = package("SNOWTRAIL_RPM", "rpm");
    let list = rpm_query(&rpm, "--list");
    for f in [
        "/usr/bin/snowtrail",
        "/etc/snowtrail/config.toml",
        "/usr/lib/systemd/system/snowtrail.service",
    ] {
        assert!(list.lines().any(|l| l == f), "{f} not in:\n{list}");
    }
    assert!(
        rpm_query(&rpm, "--configfiles")
            .lines()
            .any(|l| l == "/etc/snowtrail/config.toml")
    );
    assert!(
        rpm_query(&rpm, "--requires")
            .lines()
            .any(|l| l.starts_with("ca-certificates"))
    );
    let scripts = rpm_query(&rpm, "--scripts");
    let section = |name: &str| {
        let start = scripts
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{scripts}"));
        let rest = &scripts[start..];
        let end = rest[1..]
            .find(" scriptlet (using ")
            .and_then(|e| rest[..e + 1].rfind('\n'))
            .unwrap_or(rest.len());
        rest[..end].to_owned()
    };
    let post = section("postinstall scriptlet");
    assert!(post.contains("snowtrail ca init"), "{post}");
    assert!(
        post.contains("/etc/pki/ca-trust/source/anchors/snowtrail-ca.pem"),
        "{post}"
    );
    assert!(post.contains("update-ca-trust extract"), "{post}");
    let preun = section("preuninstall scriptlet");
    assert!(preun.contains("snowtrail detach"), "{preun}");
    let postun = section("postuninstall scriptlet");
    assert!(
        postun.contains("rm -f /etc/pki/ca-trust/source/anchors/snowtrail-ca.pem"),
        "{postun}"
    );
    // The packaged binary is the agent, stripped.
    let size: u64 = rpm_query(&rpm, "--queryformat=%{SIZE}")
        .trim()
        .parse()
        .unwrap();
    let bin = std::fs::metadata(snowtrail_bin()).unwrap().len();
    assert!(
        size < bin,
        "the rpm's payload ({size}) should be the stripped binary"
    );
}

// ---------------------------------------------------------------------------------------------
// The unit's capabilities and readiness

/// The capabilities the unit grants, from `CapabilityBoundingSet=`.
fn unit_capabilities() -> Vec<String> {
    let unit =
        std::fs::read_to_string(workspace_root().join("packaging/snowtrail.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit limits capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

fn recv_state(sock: &UnixDatagram, want: &str) -> bool {
    let mut buf = [0u8; 256];
    // Waits for the daemon's message, not for a time: the limit only keeps a broken daemon from
    // hanging the suite.
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == want)
        {
            return true;
        }
    }
    false
}

#[test]
fn daemon_runs_with_the_units_capabilities_and_notifies_readiness() {
    let caps = unit_capabilities();
    assert!(caps.contains(&"bpf".to_owned()), "{caps:?}");
    assert!(!caps.contains(&"sys_admin".to_owned()), "{caps:?}");
    let dir = tempfile::Builder::new()
        .prefix("snowtrail-caps-")
        .tempdir()
        .unwrap();
    let port = unique_port(PORT_BASE);
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/snowtrail-test-caps-{}",
        std::process::id()
    ));
    let socket = dir.path().join("control.sock");
    let audit_dir = dir.path().join("audit");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\naudit_dir = {:?}\ncontrol_socket = {:?}\n{}\
             [redirect]\nlisten_port = {port}\npin_dir = {:?}\n[proxy]\ndrain_timeout_s = 2\n\
             [audit]\nmax_file_age_s = 1\n",
            dir.path().join("state").display().to_string(),
            audit_dir.display().to_string(),
            socket.display().to_string(),
            snowtrail_tests::PLAIN_PEERS,
            pin_dir.display().to_string(),
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg(snowtrail_bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--log-format", "json"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("setpriv (util-linux) is needed");
    let logs = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let cleanup = |daemon: &mut Child| {
        let _ = daemon.kill();
        let _ = daemon.wait();
        let _ = Command::new(snowtrail_bin())
            .args(["detach", "--pin-dir"])
            .arg(&pin_dir)
            .output();
        let _ = std::fs::remove_dir_all(&pin_dir);
    };
    if !recv_state(&notify, "READY=1") {
        cleanup(&mut daemon);
        panic!("no READY=1 from the daemon:\n{}", logs());
    }
    // Ready means serving: the control socket answers at once.
    let cli = |args: &[&str]| {
        Command::new(snowtrail_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));

    // Enrolling attaches (CAP_NET_ADMIN), and the connection's process is identified from /proc
    // even though it has capabilities the daemon lacks (CAP_SYS_PTRACE).
    let server = PeerServer::start("127.77.0.9:443".parse().unwrap()).unwrap();
    let mut args = vec![
        "exec".to_owned(),
        "--identity".into(),
        "caps-test".into(),
        "--".into(),
    ];
    args.extend(client_args("127.77.0.9", 443, "auto"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "exec: {}\n{}", text(&out), logs());
    let event = wait_for(Duration::from_secs(30), || {
        snowtrail::audit::readback::read_events(&audit_dir)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.workload_identity.as_deref() == Some("caps-test"))
    });
    let event = event.unwrap_or_else(|| panic!("no connection event:\n{}", logs()));
    assert!(
        event.exe.as_deref().is_some_and(|e| e.contains("python")),
        "the process was not identified: {:?}",
        event.exe
    );
    drop(server);

    let out = cli(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["connections_total"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(status["audit"]["healthy"].as_bool().unwrap(), "{status}");

    // doctor sees the running daemon.
    let out = cli(&["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let daemon_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "daemon")
        .unwrap()
        .clone();
    assert_eq!(daemon_check["status"], "pass", "{report:#}");

    // A stop says STOPPING=1 first, then ends cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = recv_state(&notify, "STOPPING=1");
    let status = daemon.wait().unwrap();
    cleanup(&mut daemon);
    assert!(stopping, "no STOPPING=1:\n{}", logs());
    assert!(status.success(), "daemon ended with {status}:\n{}", logs());
}

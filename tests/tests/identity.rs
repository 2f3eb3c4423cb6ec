//! Workload identity and correlation end to end: real cgroups shaped like a systemd service and a
//! Kubernetes container, enrolled; clients in them through the agent; the audit rows' identity
//! columns. And `snowtrail exec` runs: every process of one run shares its correlation id, two
//! runs differ. Root only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use snowtrail_tests::client::{self, CLIENT_PY};
use snowtrail_tests::{Daemon, DaemonOptions, PeerServer, remove_cgroup, unique_port};

/// Listen ports of this file's daemons start here.
const PORT_BASE: u16 = 29_830;

fn daemon(name: &str) -> Daemon {
    let opts = DaemonOptions {
        extra_top: snowtrail_tests::PLAIN_PEERS.to_owned(),
        ..DaemonOptions::default()
    };
    Daemon::start(name, unique_port(PORT_BASE), &opts).unwrap()
}

/// A cgroup made at a path relative to the cgroup2 mount, removed (with its processes and the
/// top directory it made) on drop.
struct ShapedCgroup {
    top: PathBuf,
    dir: PathBuf,
    rel: String,
}

impl ShapedCgroup {
    fn new(top: &str, below: &str) -> ShapedCgroup {
        let mount = snowtrail::cgroup::mount_point().unwrap();
        let top_dir = mount.join(top);
        let rel = format!("/{top}/{below}");
        let dir = mount.join(rel.trim_start_matches('/'));
        remove_cgroup(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ShapedCgroup {
            top: top_dir,
            dir,
            rel,
        }
    }
}

impl Drop for ShapedCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.top);
    }
}

/// Runs the test client under `sh` (which stays as its parent) in the cgroup at `dir`.
fn client_under_shell(dir: &Path, host: &str, port: u16) -> Value {
    let script = format!("python3 -c \"$CLIENT\" {host} {port} auto; status=$?; exit $status");
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).env("CLIENT", CLIENT_PY);
    client::join_cgroup(&mut c, dir).unwrap();
    client::parse(c.output().unwrap()).unwrap()
}

fn connection_of(d: &Daemon, report: &Value) -> Value {
    assert!(report["error"].is_null(), "client failed: {report}");
    let pid = report["pid"].as_u64();
    d.wait_event(|e| e["event_kind"] == "connection" && e["tgid"].as_u64() == pid)
        .unwrap()
}

/// The fields every enrolled process's row carries, whatever its cgroup.
fn assert_process_fields(ev: &Value, report: &Value) {
    assert_eq!(ev["comm"], "python3");
    assert!(ev["exe"].as_str().unwrap().contains("python"), "{ev}");
    assert!(
        ev["cmdline"].as_str().unwrap().contains("python3 -c"),
        "{ev}"
    );
    assert_eq!(ev["uid"], 0);
    assert_eq!(ev["user_name"], "root");
    assert_eq!(
        ev["started_by"], "root",
        "enrolled by root over the control socket"
    );
    // The start time is the process's: after boot, not after the connection.
    let start = ev["process_start_time"].as_object().unwrap();
    let start_s = start["secs_since_epoch"].as_u64().unwrap();
    let event_s = ev["event_time"]["secs_since_epoch"].as_u64().unwrap();
    assert!(start_s <= event_s && event_s - start_s < 600, "{ev}");
    // The parent chain: the shell that ran the client, which is inside the enrolled cgroup.
    let chain: Vec<&str> = ev["parent_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        chain.len(),
        1,
        "only the shell is inside the cgroup: {chain:?}"
    );
    assert_eq!(chain[0], format!("{}:sh", ev["ppid"]), "{ev}");
    assert_eq!(
        report["peer"],
        format!("{}:{}", ev["dst_ip"].as_str().unwrap(), 443)
    );
}

#[test]
fn systemd_and_kubernetes_shaped_cgroups_are_identified() {
    let d = daemon("ident");
    let _server = PeerServer::start("127.78.0.1:443".parse().unwrap()).unwrap();
    let n = std::process::id();

    // A systemd service.
    let unit = format!("etl-{n}.service");
    let svc = ShapedCgroup::new("snowtrail-test.slice", &unit);
    d.cli_ok(&[
        "enroll",
        "--cgroup",
        &svc.rel,
        "--identity",
        "etl-nightly",
        "--label",
        "team=data",
    ])
    .unwrap();
    let r = client_under_shell(&svc.dir, "127.78.0.1", 443);
    let ev = connection_of(&d, &r);
    assert_process_fields(&ev, &r);
    assert_eq!(ev["workload_identity"], "etl-nightly");
    assert_eq!(ev["labels"]["team"], "data");
    assert_eq!(ev["cgroup_path"], svc.rel.as_str());
    assert_eq!(ev["systemd_unit"], unit.as_str());
    assert!(ev["container_id"].is_null(), "{ev}");
    assert!(ev["container_runtime"].is_null(), "{ev}");
    assert!(ev["pod_uid"].is_null(), "{ev}");
    assert!(ev["pod_qos"].is_null(), "{ev}");
    // An operator enrollment is no run: its connections have no run id.
    assert!(ev["correlation_id"].is_null(), "{ev}");

    // A Kubernetes container (systemd cgroup driver, containerd).
    let uid = format!("5f0c9a7e-1b2d-4c3e-8f4a-{n:012x}");
    let cid = format!("{:064x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15);
    let below = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    let pod = ShapedCgroup::new(&format!("snowtrail-test-k8s-{n}.slice"), &below);
    d.cli_ok(&["enroll", "--cgroup", &pod.rel, "--identity", "k8s-loader"])
        .unwrap();
    let r = client_under_shell(&pod.dir, "127.78.0.1", 443);
    let ev = connection_of(&d, &r);
    assert_process_fields(&ev, &r);
    assert_eq!(ev["workload_identity"], "k8s-loader");
    assert_eq!(ev["container_id"], cid.as_str());
    assert_eq!(ev["container_runtime"], "containerd");
    assert_eq!(ev["pod_uid"], uid.as_str());
    assert_eq!(ev["pod_qos"], "burstable");
    assert_eq!(ev["systemd_unit"], format!("cri-containerd-{cid}.scope"));

    // The rows in the Parquet files carry the same (the JSON above is read back from them).
    d.cli_ok(&["unenroll", "--identity", "etl-nightly"])
        .unwrap();
    d.cli_ok(&["unenroll", "--identity", "k8s-loader"]).unwrap();
}

/// Runs `snowtrail exec` with a shell that starts clients as children and grandchildren; returns
/// the reports (one line each).
fn exec_family(d: &Daemon, identity: &str, host: &str) -> Vec<Value> {
    // Two children in the background, one grandchild under a nested shell.
    let script = format!(
        "python3 -c \"$CLIENT\" {host} 443 auto & \
         python3 -c \"$CLIENT\" {host} 443 auto & \
         sh -c 'python3 -c \"$CLIENT\" {host} 443 auto; true'; wait"
    );
    let out = Command::new(snowtrail_tests::snowtrail_bin())
        .arg("--control-socket")
        .arg(&d.socket)
        .args(["exec", "--identity", identity, "--", "sh", "-c", &script])
        .env("CLIENT", CLIENT_PY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Read as a stream of JSON values: the three clients share one pipe, and a report written
    // while another is mid-line must not be taken for a broken one.
    let reports: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reports.len(), 3, "{out:?}");
    reports
}

#[test]
fn one_exec_run_shares_a_correlation_id_and_two_runs_differ() {
    let d = daemon("corr");
    let _server = PeerServer::start("127.78.0.2:443".parse().unwrap()).unwrap();
    let mut runs = Vec::new();
    for identity in ["run-a", "run-b"] {
        let reports = exec_family(&d, identity, "127.78.0.2");
        let events: Vec<Value> = reports.iter().map(|r| connection_of(&d, r)).collect();
        let ids: BTreeSet<&str> = events
            .iter()
            .map(|e| e["correlation_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one run, one id: {events:#?}");
        let id = ids.into_iter().next().unwrap().to_owned();
        for e in &events {
            // The run id is the exec cgroup's name.
            assert_eq!(e["cgroup_path"], format!("/snowtrail/exec/{id}"), "{e}");
            assert_eq!(e["started_by"], "root");
            assert_eq!(e["workload_identity"], identity);
            // Everyone's chain ends at the run's first process, the outer shell.
            let chain = e["parent_chain"].as_array().unwrap();
            assert!(
                chain.last().unwrap().as_str().unwrap().ends_with(":sh"),
                "{e}"
            );
        }
        // The grandchild's chain has both shells.
        assert!(
            events
                .iter()
                .any(|e| e["parent_chain"].as_array().unwrap().len() == 2),
            "{events:#?}"
        );
        runs.push(id);
    }
    assert_ne!(runs[0], runs[1], "two runs, two ids");
}

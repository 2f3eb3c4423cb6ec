//! What a cgroup path says about the workload in it: the systemd unit, a container and its
//! runtime, a Kubernetes pod and its QoS class.
//!
//! Pure functions over the path text (relative to the cgroup2 mount, as `/proc/<pid>/cgroup`
//! shows it); no I/O. The shapes recognised are the ones systemd, Docker, containerd, CRI-O,
//! Podman and the kubelet (with either cgroup driver) create:
//!
//! | shape | gives |
//! |---|---|
//! | `/system.slice/nginx.service`, `/user.slice/user-1000.slice/session-3.scope` | unit |
//! | `/system.slice/docker-<64 hex>.scope`, `/docker/<64 hex>` | Docker container |
//! | `.../cri-containerd-<64 hex>.scope` | containerd container |
//! | `.../crio-<64 hex>.scope` | CRI-O container |
//! | `.../libpod-<64 hex>.scope` | Podman container |
//! | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/...` | pod, QoS |
//! | `/kubepods/besteffort/pod<uid>/<64 hex>` (cgroupfs driver) | pod, QoS, container |
//!
//! The innermost match wins: a container nested in another (`/docker/<id>/docker/<id2>`) is
//! `<id2>`, a user service under `user@1000.service` is that service. Anything unrecognised is
//! left empty; nothing is guessed.

/// Kubernetes' quality-of-service class of a pod, from the slice the kubelet puts it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodQos {
    /// Directly under `kubepods`: requests equal limits.
    Guaranteed,
    /// Under `kubepods-burstable` / `kubepods/burstable`.
    Burstable,
    /// Under `kubepods-besteffort` / `kubepods/besteffort`.
    BestEffort,
}

impl PodQos {
    /// The name stored in the `pod_qos` column (Kubernetes' own spelling, lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            PodQos::Guaranteed => "guaranteed",
            PodQos::Burstable => "burstable",
            PodQos::BestEffort => "besteffort",
        }
    }
}

/// The container runtime a container id was found under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `docker-<id>.scope` or `/docker/<id>`.
    Docker,
    /// `cri-containerd-<id>.scope`.
    Containerd,
    /// `crio-<id>.scope`.
    CriO,
    /// `libpod-<id>.scope`.
    Podman,
    /// A bare id under a pod (the kubelet's cgroupfs driver does not name the runtime).
    Unknown,
}

impl Runtime {
    /// The name stored in the `container_runtime` column; `None` when the path does not say.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Runtime::Docker => Some("docker"),
            Runtime::Containerd => Some("containerd"),
            Runtime::CriO => Some("cri-o"),
            Runtime::Podman => Some("podman"),
            Runtime::Unknown => None,
        }
    }
}

/// Everything a cgroup path told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The innermost systemd unit (`.service` or `.scope`).
    pub systemd_unit: Option<String>,
    /// The innermost container id (64 hex digits).
    pub container_id: Option<String>,
    /// The runtime that container id belongs to.
    pub container_runtime: Option<Runtime>,
    /// The Kubernetes pod UID, with dashes.
    pub pod_uid: Option<String>,
    /// The pod's QoS class.
    pub pod_qos: Option<PodQos>,
}

/// Longest path component looked at; longer ones (not made by any runtime) are skipped.
const MAX_COMPONENT: usize = 256;

/// Reads what a cgroup path (relative to the cgroup2 mount) says about its workload.
pub fn parse(path: &str) -> CgroupIdentity {
    let mut out = CgroupIdentity::default();
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && p.len() <= MAX_COMPONENT)
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| parts[j]);
        if let Some(unit) = unit_name(part) {
            out.systemd_unit = Some(unit.to_owned());
        }
        if let Some((id, runtime)) = container(part, prev, &parts[..i]) {
            out.container_id = Some(id.to_owned());
            out.container_runtime = Some(runtime);
        }
        if let Some((uid, qos)) = pod(part, prev) {
            out.pod_uid = Some(uid);
            out.pod_qos = Some(qos);
        }
    }
    out
}

/// `foo.service` / `foo.scope` (with a non-empty name).
fn unit_name(part: &str) -> Option<&str> {
    let stem = part
        .strip_suffix(".service")
        .or_else(|| part.strip_suffix(".scope"))?;
    (!stem.is_empty()).then_some(part)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A container id in component `part`, given the component before it and all before it.
fn container<'a>(part: &'a str, prev: Option<&str>, before: &[&str]) -> Option<(&'a str, Runtime)> {
    if let Some(stem) = part.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("libpod-", Runtime::Podman),
        ] {
            if let Some(id) = stem.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some((id, runtime));
            }
        }
        return None;
    }
    if !is_container_id(part) {
        return None;
    }
    match prev {
        Some("docker") => Some((part, Runtime::Docker)),
        // cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<id>
        Some(p) if p.starts_with("pod") && before.contains(&"kubepods") => {
            Some((part, Runtime::Unknown))
        }
        _ => None,
    }
}

/// A pod UID as the kubelet writes it: a UUID, or 32 hex digits for a static pod's hash.
fn is_pod_uid(s: &str) -> bool {
    (32..=36).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A pod in component `part`: `kubepods[-<qos>]-pod<uid with _>.slice` (systemd driver) or
/// `pod<uid>` below `kubepods[/<qos>]` (cgroupfs driver).
fn pod(part: &str, prev: Option<&str>) -> Option<(String, PodQos)> {
    if let Some(stem) = part
        .strip_prefix("kubepods-")
        .and_then(|s| s.strip_suffix(".slice"))
    {
        let (qos, rest) = if let Some(r) = stem.strip_prefix("burstable-") {
            (PodQos::Burstable, r)
        } else if let Some(r) = stem.strip_prefix("besteffort-") {
            (PodQos::BestEffort, r)
        } else {
            (PodQos::Guaranteed, stem)
        };
        let uid = rest.strip_prefix("pod")?.replace('_', "-");
        return is_pod_uid(&uid).then_some((uid, qos));
    }
    let uid = part.strip_prefix("pod")?;
    let qos = match prev? {
        "kubepods" => PodQos::Guaranteed,
        "burstable" => PodQos::Burstable,
        "besteffort" => PodQos::BestEffort,
        _ => return None,
    };
    is_pod_uid(uid).then(|| (uid.to_owned(), qos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf";
    const UID: &str = "8f3a1c2e-7d4b-4e9a-b1c2-3d4e5f607182";

    #[test]
    fn systemd_units() {
        assert_eq!(
            parse("/system.slice/nginx.service").systemd_unit.as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            parse("/system.slice/system-getty.slice/getty@tty1.service")
                .systemd_unit
                .as_deref(),
            Some("getty@tty1.service")
        );
        // A service that delegates its subtree: the unit is still the service.
        assert_eq!(
            parse("/system.slice/etl.service/payload")
                .systemd_unit
                .as_deref(),
            Some("etl.service")
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope")
                .systemd_unit
                .as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1a2b.scope")
                .systemd_unit
                .as_deref(),
            Some("vte-spawn-1a2b.scope")
        );
        assert_eq!(
            parse("/init.scope").systemd_unit.as_deref(),
            Some("init.scope")
        );
        let none = parse("/snowtrail/exec/0192aabb");
        assert_eq!(none, CgroupIdentity::default());
        assert_eq!(parse("/").systemd_unit, None);
        assert_eq!(parse("/x/.service").systemd_unit, None);
    }

    #[test]
    fn docker() {
        let p = parse(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(p.container_id.as_deref(), Some(ID));
        assert_eq!(p.container_runtime, Some(Runtime::Docker));
        assert_eq!(p.systemd_unit, Some(format!("docker-{ID}.scope")));
        let p = parse(&format!("/docker/{ID}"));
        assert_eq!(p.container_id.as_deref(), Some(ID));
        assert_eq!(p.container_runtime, Some(Runtime::Docker));
        assert_eq!(p.systemd_unit, None);
        // Docker in Docker: the innermost.
        let inner = "a".repeat(64);
        let p = parse(&format!("/docker/{ID}/docker/{inner}"));
        assert_eq!(p.container_id.as_deref(), Some(inner.as_str()));
        // Not an id: wrong length, upper case.
        assert_eq!(parse(&format!("/docker/{}", &ID[1..])).container_id, None);
        assert_eq!(
            parse(&format!("/docker/{}", ID.to_uppercase())).container_id,
            None
        );
        assert_eq!(parse(&format!("/other/{ID}")).container_id, None);
    }

    #[test]
    fn containerd_crio_podman() {
        let p = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(p.container_id.as_deref(), Some(ID));
        assert_eq!(p.container_runtime, Some(Runtime::Containerd));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.pod_qos, Some(PodQos::Burstable));
        assert_eq!(p.systemd_unit, Some(format!("cri-containerd-{ID}.scope")));

        let p = parse(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(p.container_runtime, Some(Runtime::CriO));
        assert_eq!(p.pod_qos, Some(PodQos::BestEffort));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        // CRI-O's monitor is not the container.
        assert_eq!(
            parse(&format!("/system.slice/crio-conmon-{ID}.scope")).container_id,
            None
        );

        let p = parse(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        ));
        assert_eq!(p.container_runtime, Some(Runtime::Podman));
        assert_eq!(p.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn kubernetes_pods() {
        // Guaranteed pods sit directly under kubepods.
        let p = parse(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(p.pod_qos, Some(PodQos::Guaranteed));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));

        // cgroupfs driver.
        for (path, qos) in [
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                PodQos::Burstable,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                PodQos::BestEffort,
            ),
            (format!("/kubepods/pod{UID}/{ID}"), PodQos::Guaranteed),
        ] {
            let p = parse(&path);
            assert_eq!(p.pod_uid.as_deref(), Some(UID), "{path}");
            assert_eq!(p.pod_qos, Some(qos), "{path}");
            assert_eq!(p.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(p.container_runtime, Some(Runtime::Unknown));
            assert_eq!(p.container_runtime.and_then(Runtime::as_str), None);
        }
        // A static pod's UID is a 32-digit hash.
        let hash = "6e3b9f0c1d2a4b5c8d7e6f5a4b3c2d1e";
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{hash}"))
                .pod_uid
                .as_deref(),
            Some(hash)
        );
        // The pod slice alone (the pause container's parent) already names the pod.
        let p = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        ));
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(p.container_id, None);
        // Look-alikes are not pods.
        assert_eq!(parse("/kubepods-burstable.slice").pod_uid, None);
        assert_eq!(parse("/kubepods/burstable/podnothex").pod_uid, None);
        assert_eq!(parse(&format!("/elsewhere/pod{UID}")).pod_uid, None);
        assert_eq!(PodQos::BestEffort.as_str(), "besteffort");
    }
}

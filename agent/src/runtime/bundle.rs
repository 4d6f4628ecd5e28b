//! OCI bundles: a container's `config.json` ([`oci_spec::runtime::Spec`]) from its pod, its
//! image's config and the pod sandbox, as containerd's CRI plugin builds it for kubelet:
//! command line and environment merged as upstream, the pod's network namespace joined, the
//! container's cgroup under its pod's, upstream's default capabilities, masked paths and
//! `oom_score_adj`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;
use oci_spec::runtime::Spec;
use serde_json::json;

use crate::cgroups::CgroupResources;
use crate::cgroups::resources::CPU_PERIOD_US;

/// containerd's default capability set for Kubernetes containers.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "container {container}: no command: the image has no Entrypoint or Cmd and the pod gives no command"
    )]
    NoCommand { container: String },
    #[error("container {container}: user `{user}` is not in the image's /etc/passwd")]
    UnknownUser { container: String, user: String },
    #[error("cannot build the OCI spec of container {container}: {message}")]
    Spec { container: String, message: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything a container's spec is made of.
#[derive(Debug, Clone)]
pub struct BundleInput<'a> {
    pub container: &'a Container,
    pub image: &'a ImageDefaults,
    /// Resolved environment from the pod (`env`, in order), already `$(VAR)`-expanded.
    pub env: Vec<(String, String)>,
    pub rootfs: PathBuf,
    pub hostname: String,
    /// The pod's network namespace; `None`: the host's (`hostNetwork`), which also keeps the
    /// host's UTS namespace, as upstream.
    pub netns: Option<PathBuf>,
    /// The pod's IPC namespace (`None`: the host's, `hostIPC`).
    pub ipcns: Option<PathBuf>,
    pub cgroups_path: String,
    pub resources: CgroupResources,
    pub oom_score_adj: i32,
    pub mounts: Vec<BindMount>,
}

/// The process's argv, as upstream merges `command` / `args` with the image's Entrypoint / Cmd:
/// `command` replaces Entrypoint and drops Cmd; `args` replaces Cmd.
pub fn command_line(
    container: &Container,
    image: &ImageDefaults,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, BundleError> {
    let expand_all = |words: &Vec<String>| -> Vec<String> {
        words.iter().map(|word| expand(word, env)).collect()
    };
    let argv = match (&container.command, &container.args) {
        (Some(command), args) if !command.is_empty() => {
            let mut argv = expand_all(command);
            argv.extend(args.as_ref().map(expand_all).unwrap_or_default());
            argv
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut argv = image.entrypoint.clone();
            argv.extend(expand_all(args));
            argv
        }
        _ => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(BundleError::NoCommand {
            container: container.name.clone(),
        });
    }
    Ok(argv)
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` of a defined variable becomes its value, `$$`
/// escapes a `$`, anything else stays as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix('(')
            && let Some(close) = body.find(')')
        {
            let name = &body[..close];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[at..at + 2 + close + 1]),
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The process environment: the image's, then the pod's (a pod variable replaces the image's
/// of the same name), `PATH` defaulted when neither sets it.
pub fn environment(image: &ImageDefaults, pod: &[(String, String)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match merged.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => merged.push((name.to_owned(), value.to_owned())),
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name, value);
    }
    for (name, value) in pod {
        set(name, value);
    }
    if !merged.iter().any(|(name, _)| name == "PATH") {
        let (name, value) = DEFAULT_PATH.split_once('=').expect("PATH=...");
        merged.insert(0, (name.to_owned(), value.to_owned()));
    }
    merged
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// uid and gid of `user` (`uid`, `uid:gid`, `name`, `name:group`), names looked up in the
/// rootfs's `/etc/passwd` and `/etc/group`; a uid without a gid takes the passwd entry's gid, or
/// 0.
pub fn resolve_user(rootfs: &Path, user: &str, container: &str) -> Result<(u32, u32), BundleError> {
    let unknown = || BundleError::UnknownUser {
        container: container.to_owned(),
        user: user.to_owned(),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd.lines().map(|l| l.split(':').collect()).collect();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let by_uid = |uid: u32| {
        entries
            .iter()
            .find(|e| e.len() > 3 && e[2].parse() == Ok(uid))
    };
    let (uid, passwd_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, by_uid(uid).and_then(|e| e[3].parse().ok())),
        Err(_) => {
            let entry = entries
                .iter()
                .find(|e| e.len() > 3 && e[0] == user_part)
                .ok_or_else(unknown)?;
            (
                entry[2].parse().map_err(|_| unknown())?,
                entry[3].parse().ok(),
            )
        }
    };
    let gid = match group_part {
        None => passwd_gid.unwrap_or(0),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|e| e.len() > 2 && e[0] == group)
                    .and_then(|e| e[2].parse().ok())
                    .ok_or_else(unknown)?
            }
        },
    };
    Ok((uid, gid))
}

/// The container's OCI spec.
pub fn spec(input: &BundleInput<'_>) -> Result<Spec, BundleError> {
    let container = input.container;
    let env_map: BTreeMap<String, String> = input.env.iter().cloned().collect();
    let args = command_line(container, input.image, &env_map)?;
    let security = container.security_context.as_ref();
    let (mut uid, mut gid) = match &input.image.user {
        Some(user) if !user.is_empty() => resolve_user(&input.rootfs, user, &container.name)?,
        _ => (0, 0),
    };
    if let Some(run_as) = security.and_then(|s| s.run_as_user) {
        uid = u32::try_from(run_as).unwrap_or(0);
    }
    if let Some(run_as) = security.and_then(|s| s.run_as_group) {
        gid = u32::try_from(run_as).unwrap_or(0);
    }
    let cwd = container
        .working_dir
        .clone()
        .or_else(|| input.image.working_dir.clone())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let privileged = security.and_then(|s| s.privileged).unwrap_or(false);
    let capabilities = capabilities(security, privileged);

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for mount in &input.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if mount.read_only { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": mount.destination,
            "type": "bind",
            "source": mount.source,
            "options": options,
        }));
    }
    let resources = &input.resources;
    let mut cpu = json!({"shares": resources.cpu_shares});
    if let Some(quota) = resources.cpu_quota_us {
        cpu["quota"] = json!(quota);
        cpu["period"] = json!(CPU_PERIOD_US);
    }
    let mut linux_resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "cpu": cpu,
    });
    if let Some(limit) = resources.memory_limit {
        linux_resources["memory"] = json!({"limit": limit});
    }
    if let Some(limit) = resources.pids_limit {
        linux_resources["pids"] = json!({"limit": limit});
    }
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    if let Some(ipcns) = &input.ipcns {
        namespaces.push(json!({"type": "ipc", "path": ipcns}));
    }
    if let Some(netns) = &input.netns {
        namespaces.push(json!({"type": "uts"}));
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroups_path,
        "resources": linux_resources,
    });
    if !privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    let value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": environment(input.image, &input.env),
            "cwd": cwd,
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "noNewPrivileges": security.and_then(|s| s.allow_privilege_escalation) == Some(false),
            "oomScoreAdj": input.oom_score_adj,
        },
        "root": {"path": input.rootfs, "readonly": security.and_then(|s| s.read_only_root_filesystem).unwrap_or(false)},
        "hostname": if input.netns.is_some() { Some(&input.hostname) } else { None },
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(value).map_err(|error| BundleError::Spec {
        container: container.name.clone(),
        message: error.to_string(),
    })
}

/// Every capability the kernel knows (what a privileged container gets).
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The container's capabilities: all for a privileged one; else containerd's defaults with
/// `securityContext.capabilities` `add` and `drop` applied (names with or without `CAP_`,
/// `ALL` in either list), in the CRI plugin's order.
pub fn capabilities(
    security: Option<&k8s_openapi::api::core::v1::SecurityContext>,
    privileged: bool,
) -> Vec<String> {
    if privileged {
        return ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    }
    let normalise = |name: &String| {
        let upper = name.to_ascii_uppercase();
        if upper == "ALL" || upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    let requested = security.and_then(|s| s.capabilities.as_ref());
    let add: Vec<String> = requested
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(normalise)
        .collect();
    let drop: Vec<String> = requested
        .and_then(|c| c.drop.as_ref())
        .into_iter()
        .flatten()
        .map(normalise)
        .collect();
    // containerd's order: add ALL, drop ALL, then the single adds, then the single drops.
    let all = || ALL_CAPABILITIES.iter().map(|c| (*c).to_owned());
    let mut set: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    if add.iter().any(|c| c == "ALL") {
        set = all().collect();
    }
    if drop.iter().any(|c| c == "ALL") {
        set.clear();
    }
    for capability in add.iter().filter(|c| *c != "ALL") {
        if !set.contains(capability) {
            set.push(capability.clone());
        }
    }
    set.retain(|c| !drop.contains(c));
    set
}

/// Writes `config.json` into `bundle_dir`.
pub fn write(bundle_dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    let path = bundle_dir.join("config.json");
    let text = serde_json::to_vec_pretty(spec).expect("an OCI spec serialises");
    std::fs::write(&path, text).map_err(|source| BundleError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: Some("/work".into()),
            user: None,
        }
    }

    #[test]
    fn command_and_args_merge_as_upstream() {
        let env = BTreeMap::from([("NAME".to_owned(), "world".to_owned())]);
        let argv = |yaml| command_line(&container(yaml), &image(), &env).unwrap();
        assert_eq!(argv("name: c"), ["/entry", "default"]);
        assert_eq!(argv("{name: c, args: [x]}"), ["/entry", "x"]);
        assert_eq!(argv("{name: c, command: [sh]}"), ["sh"]);
        assert_eq!(
            argv("{name: c, command: [echo], args: ['hi $(NAME)', '$$(NAME)', '$(NOPE)']}"),
            ["echo", "hi world", "$(NAME)", "$(NOPE)"]
        );
        let error = command_line(&container("name: c"), &ImageDefaults::default(), &env);
        assert!(matches!(error, Err(BundleError::NoCommand { .. })));
    }

    #[test]
    fn environment_merges_pod_over_image() {
        let env = environment(
            &image(),
            &[("A".into(), "pod".into()), ("B".into(), "b".into())],
        );
        assert_eq!(env, ["PATH=/bin", "A=pod", "B=b"]);
        let env = environment(&ImageDefaults::default(), &[]);
        assert_eq!(env, [DEFAULT_PATH]);
    }

    #[test]
    fn users_resolve_from_the_rootfs() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65533:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let resolve = |user| resolve_user(rootfs.path(), user, "c");
        assert_eq!(resolve("nobody").unwrap(), (65534, 65533));
        assert_eq!(resolve("65534").unwrap(), (65534, 65533));
        assert_eq!(resolve("1000").unwrap(), (1000, 0));
        assert_eq!(resolve("nobody:staff").unwrap(), (65534, 50));
        assert_eq!(resolve("7:8").unwrap(), (7, 8));
        assert_eq!(
            resolve("ghost").unwrap_err().to_string(),
            "container c: user `ghost` is not in the image's /etc/passwd"
        );
    }

    #[test]
    fn capabilities_add_drop_and_privileged() {
        let c = container(
            "{name: c, securityContext: {capabilities: {add: [NET_ADMIN], drop: [KILL, CAP_CHOWN]}}}",
        );
        let caps = capabilities(c.security_context.as_ref(), false);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!caps.contains(&"CAP_KILL".to_owned()) && !caps.contains(&"CAP_CHOWN".to_owned()));
        let c = container(
            "{name: c, securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}}",
        );
        assert_eq!(
            capabilities(c.security_context.as_ref(), false),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(capabilities(None, true).len(), 41);
        assert_eq!(capabilities(None, false).len(), DEFAULT_CAPABILITIES.len());
    }

    #[test]
    fn spec_joins_the_pod_and_carries_its_limits() {
        let c = container("{name: web, securityContext: {runAsUser: 33}}");
        let image = image();
        let input = BundleInput {
            container: &c,
            image: &image,
            env: vec![],
            rootfs: "/r/rootfs".into(),
            hostname: "pod-a".into(),
            netns: Some("/var/lib/keel/netns/u".into()),
            ipcns: Some("/var/lib/keel/ipcns/u".into()),
            cgroups_path: "/kubepods/burstable/podu/cid".into(),
            resources: CgroupResources {
                cpu_shares: 256,
                cpu_quota_us: Some(20_000),
                memory_limit: Some(1 << 26),
                pids_limit: None,
            },
            oom_score_adj: 500,
            mounts: vec![BindMount {
                source: "/v/cm".into(),
                destination: "/etc/config".into(),
                read_only: true,
            }],
        };
        let spec = serde_json::to_value(spec(&input).unwrap()).unwrap();
        assert_eq!(spec["process"]["user"]["uid"], 33);
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["oomScoreAdj"], 500);
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/burstable/podu/cid");
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 20_000);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 26);
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&json!({"type": "network", "path": "/var/lib/keel/netns/u"})));
        let last_mount = spec["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last_mount["destination"], "/etc/config");
        assert_eq!(last_mount["options"], json!(["rbind", "rprivate", "ro"]));
    }
}

//! What of the suite's cluster is on the host: before `up` there must be nothing (else the
//! placement is someone else's and the suite refuses to run), after `down` nothing may be left.

use std::path::Path;
use std::process::Command;

use crate::cluster::placement;

/// Everything of the suite's placement found on the host, one line each.
pub fn find(state_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let state = state_dir.to_string_lossy().into_owned();

    let links = output(&["ip", "-o", "link", "show"]);
    for line in links.lines() {
        // `3: name@peer: <...>` or `3: name: <...>`
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name == placement::BRIDGE || name.starts_with(placement::NODE_PREFIX) {
            found.push(format!("network interface {name}"));
        }
    }
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(placement::NODE_PREFIX) {
            found.push(format!("network namespace {name}"));
        }
    }
    let addresses = output(&["ip", "-o", "addr", "show", "dev", "lo"]);
    if addresses.contains(&format!(" {}/", placement::CLUSTER_DNS)) {
        found.push(format!("address {} on lo", placement::CLUSTER_DNS));
    }
    for line in output(&["ip", "route", "show", "proto", "75"]).lines() {
        if line.contains(placement::SUBNET_PREFIX) {
            found.push(format!("route `{line}`"));
        }
    }
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
    for hierarchy in cgroups {
        let group = hierarchy.join(placement::CGROUP_ROOT);
        if group.is_dir() {
            found.push(format!("cgroup {}", group.display()));
        }
    }
    let bpf_parent = Path::new(placement::BPF_ROOT)
        .parent()
        .expect("the bpf root has a parent");
    let bpf_name = Path::new(placement::BPF_ROOT)
        .file_name()
        .expect("the bpf root has a name");
    for entry in std::fs::read_dir(bpf_parent)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        if name == bpf_name || name.to_string_lossy().starts_with(placement::NODE_PREFIX) {
            found.push(format!("bpffs pins {}", entry.path().display()));
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&state) && pid != std::process::id() {
            found.push(format!("process {pid}: {}", cmdline.trim()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(point) = line.split_whitespace().nth(4)
            && point.starts_with(&state)
        {
            found.push(format!("mount {point}"));
        }
    }
    found
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

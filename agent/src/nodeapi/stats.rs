//! `/stats/summary` as kubelet serves it (the parts the metrics pipeline and `kubectl top` read):
//! CPU and memory of the node's pods and containers from their cgroups, v1 or v2.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::cgroups::{CgroupManager, CgroupMode, resources};

/// Cumulative CPU time in nanoseconds of cgroup `path`.
fn cpu_nanos(cgroups: &CgroupManager, path: &str) -> Option<u64> {
    match cgroups.mode() {
        CgroupMode::Unified => {
            let text = std::fs::read_to_string(cgroups.dir("cpu", path)?.join("cpu.stat")).ok()?;
            let usec: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(usec * 1000)
        }
        _ => std::fs::read_to_string(cgroups.dir("cpuacct", path)?.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok(),
    }
}

/// Memory usage and working set (usage minus inactive file pages) of cgroup `path`.
fn memory_bytes(cgroups: &CgroupManager, path: &str) -> Option<(u64, u64)> {
    let dir = cgroups.dir("memory", path)?;
    let (usage_file, inactive_key) = match cgroups.mode() {
        CgroupMode::Unified => ("memory.current", "inactive_file "),
        _ => ("memory.usage_in_bytes", "total_inactive_file "),
    };
    let usage: u64 = std::fs::read_to_string(dir.join(usage_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let inactive: u64 = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(inactive_key)?.trim().parse().ok())
        })
        .unwrap_or(0);
    Some((usage, usage.saturating_sub(inactive)))
}

fn usage(cgroups: &CgroupManager, path: &str, time: &str) -> (Value, Value) {
    let cpu = json!({"time": time, "usageCoreNanoSeconds": cpu_nanos(cgroups, path)});
    let memory = match memory_bytes(cgroups, path) {
        Some((usage, working_set)) => {
            json!({"time": time, "usageBytes": usage, "workingSetBytes": working_set})
        }
        None => json!({"time": time}),
    };
    (cpu, memory)
}

/// The summary for `pods` (with status) on node `node_name`.
pub fn summary(cgroups: &CgroupManager, node_name: &str, pods: &[Pod]) -> Value {
    let time = jiff::Timestamp::now().to_string();
    let (node_cpu, node_memory) = usage(cgroups, &cgroups.kubepods(), &time);
    let pods: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let qos = resources::qos_class(pod).unwrap_or(resources::QosClass::BestEffort);
            let pod_path = cgroups.pod_path(qos, &uid);
            let (cpu, memory) = usage(cgroups, &pod_path, &time);
            let containers: Vec<Value> = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .into_iter()
                .flatten()
                .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
                .filter_map(|s| {
                    let id = s.container_id.as_deref()?.rsplit("://").next()?.to_owned();
                    let (cpu, memory) = usage(cgroups, &format!("{pod_path}/{id}"), &time);
                    Some(json!({"name": s.name, "cpu": cpu, "memory": memory}))
                })
                .collect();
            json!({
                "podRef": {"name": pod.metadata.name, "namespace": pod.metadata.namespace, "uid": uid},
                "startTime": pod.status.as_ref().and_then(|s| s.start_time.clone()),
                "cpu": cpu,
                "memory": memory,
                "containers": containers,
            })
        })
        .collect();
    json!({
        "node": {"nodeName": node_name, "cpu": node_cpu, "memory": node_memory},
        "pods": pods,
    })
}

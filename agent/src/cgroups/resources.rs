//! From a pod spec to cgroup values, as kubelet computes them: the QoS class, the pod-level
//! cgroup settings (`ResourceConfigForPod`), each container's settings and its
//! `oom_score_adj` (`pkg/kubelet/cm/helpers_linux.go`, `pkg/kubelet/qos/policy.go`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{self, QuantityError};

/// cgroup v1's smallest `cpu.shares`, what BestEffort pods get.
pub const MIN_SHARES: u64 = 2;
/// CFS period, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
const MIN_QUOTA_US: i64 = 1000;
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// What a cgroup gets. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupResources {
    pub cpu_shares: u64,
    pub cpu_quota_us: Option<i64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// One container's requests and limits, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_request_milli: Option<i64>,
    pub cpu_limit_milli: Option<i64>,
    pub memory_request: Option<i64>,
    pub memory_limit: Option<i64>,
}

fn quantity_of(
    map: Option<&BTreeMap<String, Quantity>>,
    name: &str,
    parse: fn(&str) -> Result<i64, QuantityError>,
) -> Result<Option<i64>, QuantityError> {
    map.and_then(|map| map.get(name))
        .map(|q| parse(&q.0))
        .transpose()
}

impl ContainerResources {
    /// Parses a container's resources. A limit without a request counts as the request too
    /// (the API server's defaulting, applied here for static pods that never went through it).
    pub fn of(resources: Option<&ResourceRequirements>) -> Result<Self, QuantityError> {
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let cpu_limit_milli = quantity_of(limits, "cpu", quantity::milli_value)?;
        let memory_limit = quantity_of(limits, "memory", quantity::value)?;
        Ok(ContainerResources {
            cpu_request_milli: quantity_of(requests, "cpu", quantity::milli_value)?
                .or(cpu_limit_milli),
            cpu_limit_milli,
            memory_request: quantity_of(requests, "memory", quantity::value)?.or(memory_limit),
            memory_limit,
        })
    }

    /// The container's own cgroup settings.
    pub fn cgroup(&self) -> CgroupResources {
        CgroupResources {
            cpu_shares: self
                .cpu_request_milli
                .map_or(MIN_SHARES, milli_cpu_to_shares),
            cpu_quota_us: self.cpu_limit_milli.map(milli_cpu_to_quota),
            memory_limit: self.memory_limit,
            pids_limit: None,
        }
    }
}

/// The containers that count for the pod's resources: the regular ones. (Init containers run
/// one at a time before them; upstream takes the max of the two for requests. Keel does too.)
fn pod_containers(pod: &Pod) -> (Vec<&Container>, Vec<&Container>) {
    let spec = pod.spec.as_ref();
    let regular = spec
        .map(|s| s.containers.iter().collect())
        .unwrap_or_default();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    (regular, init)
}

/// The QoS class of a pod, as `qos.GetPodQOS` decides it.
pub fn qos_class(pod: &Pod) -> Result<QosClass, QuantityError> {
    let (regular, init) = pod_containers(pod);
    let mut any_set = false;
    let mut guaranteed = true;
    for container in regular.iter().chain(&init) {
        let r = ContainerResources::of(container.resources.as_ref())?;
        let explicit_requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"));
        if r.cpu_limit_milli.is_some() || r.memory_limit.is_some() || explicit_requests {
            any_set = true;
        }
        let full_limits = r.cpu_limit_milli.is_some() && r.memory_limit.is_some();
        if !full_limits
            || r.cpu_request_milli != r.cpu_limit_milli
            || r.memory_request != r.memory_limit
        {
            guaranteed = false;
        }
    }
    Ok(if !any_set {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    })
}

/// The pod-level cgroup settings (`ResourceConfigForPod`): shares from the summed requests;
/// quota and memory only when every container has that limit.
pub fn pod_cgroup(pod: &Pod, pids_limit: Option<i64>) -> Result<CgroupResources, QuantityError> {
    let qos = qos_class(pod)?;
    let (regular, init) = pod_containers(pod);
    let parse = |containers: &[&Container]| -> Result<Vec<ContainerResources>, QuantityError> {
        containers
            .iter()
            .map(|c| ContainerResources::of(c.resources.as_ref()))
            .collect()
    };
    let (regular, init) = (parse(&regular)?, parse(&init)?);
    let sum = |f: fn(&ContainerResources) -> Option<i64>| -> (i64, bool) {
        let total = regular.iter().filter_map(f).sum::<i64>();
        let all = regular.iter().all(|r| f(r).is_some());
        let init_max = init.iter().filter_map(f).max().unwrap_or(0);
        (
            total.max(init_max),
            all && init.iter().all(|r| f(r).is_some()),
        )
    };
    let (cpu_requests, _) = sum(|r| r.cpu_request_milli);
    let (cpu_limits, cpu_limited) = sum(|r| r.cpu_limit_milli);
    let (memory_limits, memory_limited) = sum(|r| r.memory_limit);
    Ok(match qos {
        QosClass::BestEffort => CgroupResources {
            cpu_shares: MIN_SHARES,
            cpu_quota_us: None,
            memory_limit: None,
            pids_limit,
        },
        _ => CgroupResources {
            cpu_shares: milli_cpu_to_shares(cpu_requests),
            cpu_quota_us: cpu_limited.then(|| milli_cpu_to_quota(cpu_limits)),
            memory_limit: memory_limited.then_some(memory_limits),
            pids_limit,
        },
    })
}

/// `oom_score_adj` for a container of a pod of class `qos` (`qos.GetContainerOOMScoreAdjust`).
pub fn oom_score_adj(qos: QosClass, memory_request: Option<i64>, memory_capacity: i64) -> i32 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = memory_request.unwrap_or(0).max(0);
            let capacity = memory_capacity.max(1);
            let adjust = 1000 - (1000 * i128::from(request) / i128::from(capacity));
            let adjust = i32::try_from(adjust).unwrap_or(i32::MIN);
            if adjust < 1000 + GUARANTEED_OOM_SCORE_ADJ {
                1000 + GUARANTEED_OOM_SCORE_ADJ
            } else if adjust == BEST_EFFORT_OOM_SCORE_ADJ {
                adjust - 1
            } else {
                adjust
            }
        }
    }
}

/// `MilliCPUToShares`: 1024 shares per CPU, at least [`MIN_SHARES`].
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    let shares = u64::try_from(milli.max(0)).unwrap_or(0) * 1024 / 1000;
    shares.max(MIN_SHARES)
}

/// `MilliCPUToQuota`: microseconds per [`CPU_PERIOD_US`], at least 1 ms.
pub fn milli_cpu_to_quota(milli: i64) -> i64 {
    (milli * CPU_PERIOD_US as i64 / 1000).max(MIN_QUOTA_US)
}

/// cgroup v2's `cpu.weight` for v1 shares (runc's and kubelet's conversion).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn qos_classes_and_pod_values() {
        let best_effort = pod("spec: {containers: [{name: a}, {name: b}]}");
        assert_eq!(qos_class(&best_effort).unwrap(), QosClass::BestEffort);
        assert_eq!(pod_cgroup(&best_effort, None).unwrap().cpu_shares, 2);

        let guaranteed =
            pod("spec: {containers: [{name: a, resources: {limits: {cpu: 500m, memory: 64Mi}}}]}");
        assert_eq!(qos_class(&guaranteed).unwrap(), QosClass::Guaranteed);
        assert_eq!(
            pod_cgroup(&guaranteed, Some(100)).unwrap(),
            CgroupResources {
                cpu_shares: 512,
                cpu_quota_us: Some(50_000),
                memory_limit: Some(64 << 20),
                pids_limit: Some(100),
            }
        );

        let burstable = pod(
            "spec: {containers: [{name: a, resources: {requests: {cpu: 100m}, limits: {memory: 32Mi}}}, {name: b, resources: {limits: {memory: 16Mi, cpu: 1}}}]}",
        );
        assert_eq!(qos_class(&burstable).unwrap(), QosClass::Burstable);
        let values = pod_cgroup(&burstable, None).unwrap();
        assert_eq!(values.cpu_shares, (1100 * 1024 / 1000) as u64);
        assert_eq!(values.cpu_quota_us, None, "container a has no cpu limit");
        assert_eq!(values.memory_limit, Some(48 << 20));
    }

    #[test]
    fn oom_score_adj_as_upstream() {
        let gib = 1 << 30;
        assert_eq!(
            oom_score_adj(QosClass::Guaranteed, Some(gib), 16 * gib),
            -997
        );
        assert_eq!(oom_score_adj(QosClass::BestEffort, None, 16 * gib), 1000);
        assert_eq!(
            oom_score_adj(QosClass::Burstable, Some(8 * gib), 16 * gib),
            500
        );
        assert_eq!(
            oom_score_adj(QosClass::Burstable, Some(16 * gib), 16 * gib),
            3
        );
        assert_eq!(oom_score_adj(QosClass::Burstable, None, 16 * gib), 999);
    }

    #[test]
    fn conversions() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_quota(1), 1000);
        assert_eq!(milli_cpu_to_quota(250), 25_000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}

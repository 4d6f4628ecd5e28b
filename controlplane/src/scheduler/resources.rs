//! Resource amounts as the scheduler counts them: a pod's effective requests (upstream's
//! `resourcehelper.PodRequests`: the larger of the containers' sum and any init container,
//! sidecars included, plus overhead), the non-zero requests scoring uses, and a node's
//! allocatable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CPU request scoring assumes for a container that names none (upstream's
/// `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory request scoring assumes for a container that names none (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// An amount of each resource: CPU in millicores, the others in whole units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// How many pods (a node's allocatable `pods`; unused for requests).
    pub pods: i64,
    /// Extended resources, hugepages and other scalar resources by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Sums a resource list (`requests`, `allocatable`, `overhead`) into `self`.
    pub fn add_list(&mut self, list: &BTreeMap<String, Quantity>) {
        for (name, quantity) in list {
            self.add_one(name, quantity, |current, value| current + value);
        }
    }

    /// Raises each resource of `self` to at least the list's amount.
    pub fn max_list(&mut self, list: &BTreeMap<String, Quantity>) {
        for (name, quantity) in list {
            self.add_one(name, quantity, i64::max);
        }
    }

    fn add_one(&mut self, name: &str, quantity: &Quantity, combine: fn(i64, i64) -> i64) {
        let slot = match name {
            "cpu" => {
                let value = milli_value(&quantity.0).unwrap_or(0);
                self.milli_cpu = combine(self.milli_cpu, value);
                return;
            }
            "memory" => &mut self.memory,
            "ephemeral-storage" => &mut self.ephemeral_storage,
            "pods" => &mut self.pods,
            other if is_scalar(other) => self.scalar.entry(other.to_owned()).or_insert(0),
            _ => return,
        };
        *slot = combine(*slot, value(&quantity.0).unwrap_or(0));
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (name, amount) in &other.scalar {
            *self.scalar.entry(name.clone()).or_insert(0) += amount;
        }
    }

    /// Takes `other` out of `self`.
    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (name, amount) in &other.scalar {
            *self.scalar.entry(name.clone()).or_insert(0) -= amount;
        }
    }

    /// Nothing requested at all (a BestEffort pod's requests).
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|amount| *amount == 0)
    }
}

/// Scalar resources are counted by name: extended resources (`example.com/gpu`), hugepages
/// and attachable volumes, as upstream's `IsScalarResourceName`.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/"))
        || name.starts_with("requests.")
}

/// CPU and memory as scoring counts them: a container without a request counts as
/// [`DEFAULT_MILLI_CPU_REQUEST`] / [`DEFAULT_MEMORY_REQUEST`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonZero {
    pub milli_cpu: i64,
    pub memory: i64,
}

/// A pod's effective requests and its non-zero requests.
pub fn pod_requests(pod: &Pod) -> (Resources, NonZero) {
    let Some(spec) = pod.spec.as_ref() else {
        return Default::default();
    };
    let mut sum = Resources::default();
    let mut non_zero = NonZero::default();
    for container in &spec.containers {
        sum.add_list(requests_of(container));
        add_non_zero(&mut non_zero, container);
    }
    // Init containers run one at a time before the containers; sidecars (restartPolicy
    // Always) keep running, so each later init container runs beside the sidecars so far.
    let mut init_max = Resources::default();
    let mut init_non_zero_max = NonZero::default();
    let mut sidecars = Resources::default();
    let mut sidecars_non_zero = NonZero::default();
    for init in spec.init_containers.iter().flatten() {
        let mut own = Resources::default();
        own.add_list(requests_of(init));
        let mut own_non_zero = NonZero::default();
        add_non_zero(&mut own_non_zero, init);
        if init.restart_policy.as_deref() == Some("Always") {
            sum.add(&own);
            non_zero.milli_cpu += own_non_zero.milli_cpu;
            non_zero.memory += own_non_zero.memory;
            sidecars.add(&own);
            sidecars_non_zero.milli_cpu += own_non_zero.milli_cpu;
            sidecars_non_zero.memory += own_non_zero.memory;
            own = sidecars.clone();
            own_non_zero = sidecars_non_zero;
        } else {
            own.add(&sidecars);
            own_non_zero.milli_cpu += sidecars_non_zero.milli_cpu;
            own_non_zero.memory += sidecars_non_zero.memory;
        }
        max_into(&mut init_max, &own);
        init_non_zero_max.milli_cpu = init_non_zero_max.milli_cpu.max(own_non_zero.milli_cpu);
        init_non_zero_max.memory = init_non_zero_max.memory.max(own_non_zero.memory);
    }
    max_into(&mut sum, &init_max);
    non_zero.milli_cpu = non_zero.milli_cpu.max(init_non_zero_max.milli_cpu);
    non_zero.memory = non_zero.memory.max(init_non_zero_max.memory);
    if let Some(overhead) = &spec.overhead {
        let mut extra = Resources::default();
        extra.add_list(overhead);
        sum.add(&extra);
        non_zero.milli_cpu += extra.milli_cpu;
        non_zero.memory += extra.memory;
    }
    (sum, non_zero)
}

fn max_into(target: &mut Resources, other: &Resources) {
    target.milli_cpu = target.milli_cpu.max(other.milli_cpu);
    target.memory = target.memory.max(other.memory);
    target.ephemeral_storage = target.ephemeral_storage.max(other.ephemeral_storage);
    for (name, amount) in &other.scalar {
        let slot = target.scalar.entry(name.clone()).or_insert(0);
        *slot = (*slot).max(*amount);
    }
}

fn requests_of(container: &Container) -> &BTreeMap<String, Quantity> {
    static EMPTY: BTreeMap<String, Quantity> = BTreeMap::new();
    container
        .resources
        .as_ref()
        .and_then(|resources| resources.requests.as_ref())
        .unwrap_or(&EMPTY)
}

fn add_non_zero(total: &mut NonZero, container: &Container) {
    let requests = requests_of(container);
    total.milli_cpu += requests
        .get("cpu")
        .and_then(|quantity| milli_value(&quantity.0))
        .unwrap_or(DEFAULT_MILLI_CPU_REQUEST);
    total.memory += requests
        .get("memory")
        .and_then(|quantity| value(&quantity.0))
        .unwrap_or(DEFAULT_MEMORY_REQUEST);
}

/// A node's allocatable (falling back to its capacity, as the kubelet reports both).
pub fn allocatable(node: &Node) -> Resources {
    let mut resources = Resources::default();
    if let Some(status) = &node.status
        && let Some(list) = status.allocatable.as_ref().or(status.capacity.as_ref())
    {
        resources.add_list(list);
    }
    resources
}

/// A quantity in thousandths, rounded up as upstream's `Quantity.MilliValue()`.
pub fn milli_value(text: &str) -> Option<i64> {
    scaled(text, 3)
}

/// A quantity in whole units, rounded up as upstream's `Quantity.Value()`.
pub fn value(text: &str) -> Option<i64> {
    scaled(text, 0)
}

/// `text` times 10^`decimals`, rounded toward positive infinity.
fn scaled(text: &str, decimals: i32) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (negative, number) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut digits: i128 = 0;
    for byte in whole.bytes().chain(fraction.bytes()) {
        if !byte.is_ascii_digit() {
            return None;
        }
        digits = digits
            .checked_mul(10)?
            .checked_add(i128::from(byte - b'0'))?;
    }
    let (ten_power, two_power): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        exponent if exponent.starts_with(['e', 'E']) => (exponent[1..].parse().ok()?, 0),
        _ => return None,
    };
    let exponent = ten_power + decimals - i32::try_from(fraction.len()).ok()?;
    let mut amount = digits.checked_mul(1_i128.checked_shl(two_power)?)?;
    if exponent >= 0 {
        amount = amount.checked_mul(10_i128.checked_pow(exponent.unsigned_abs())?)?;
    } else {
        let divisor = 10_i128.checked_pow(exponent.unsigned_abs())?;
        amount = (amount + divisor - 1).div_euclid(divisor);
    }
    i64::try_from(if negative { -amount } else { amount }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("pod")
    }

    #[test]
    fn quantities_round_up_like_upstream() {
        assert_eq!(milli_value("250m"), Some(250));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("2"), Some(2000));
        assert_eq!(milli_value("1u"), Some(1));
        assert_eq!(value("64Mi"), Some(64 << 20));
        assert_eq!(value("1G"), Some(1_000_000_000));
        assert_eq!(value("1e3"), Some(1000));
        assert_eq!(value("100m"), Some(1));
        assert_eq!(value("0.5Ki"), Some(512));
        assert_eq!(value("abc"), None);
        assert_eq!(value("1Zi"), None);
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers_plus_overhead() {
        let pod = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}}
            ],
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "500m", "memory": "10Mi"}}}
            ],
            "overhead": {"cpu": "10m"}
        }));
        let (requests, non_zero) = pod_requests(&pod);
        assert_eq!(requests.milli_cpu, 510);
        assert_eq!(requests.memory, 64 << 20);
        // b has no memory request: scoring counts 200 MiB for it.
        assert_eq!(non_zero.milli_cpu, 510);
        assert_eq!(non_zero.memory, (64 << 20) + DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn sidecars_add_to_the_sum_and_to_later_init_containers() {
        let pod = pod(json!({
            "containers": [{"name": "main", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "500m"}}}
            ]
        }));
        let (requests, _) = pod_requests(&pod);
        // max(100 + 300, 500 + 300)
        assert_eq!(requests.milli_cpu, 800);
    }

    #[test]
    fn best_effort_pods_request_nothing_but_score_as_defaults() {
        let (requests, non_zero) = pod_requests(&pod(json!({"containers": [{"name": "a"}]})));
        assert!(requests.is_zero());
        assert_eq!(
            non_zero,
            NonZero {
                milli_cpu: DEFAULT_MILLI_CPU_REQUEST,
                memory: DEFAULT_MEMORY_REQUEST
            }
        );
    }
}

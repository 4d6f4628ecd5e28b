//! Defaulting as upstream's `SetDefaults_*` functions do it for the types Keel serves, applied
//! to the JSON object before validation (create, update and patch alike).

use serde_json::{Value, json};

/// Sets `object[key] = value` unless the key holds a non-null value.
fn default(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        match map.get(key) {
            Some(existing) if !existing.is_null() => {}
            _ => {
                map.insert(key.to_owned(), value);
            }
        }
    }
}

/// The object under `key`, created as `{}` when missing (only if `object` is an object).
fn child<'a>(object: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    default(object, key, json!({}));
    object.get_mut(key).filter(|value| value.is_object())
}

fn each(object: &mut Value, key: &str, mut apply: impl FnMut(&mut Value)) {
    if let Some(Value::Array(items)) = object.get_mut(key) {
        items
            .iter_mut()
            .filter(|item| item.is_object())
            .for_each(&mut apply);
    }
}

/// Applies the defaults of `group`/`kind`.
pub fn apply(group: &str, kind: &str, object: &mut Value) {
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = child(object, "spec") {
                pod_spec(spec);
                default_toleration_seconds(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = child(object, "spec") {
                service_spec(spec);
            }
        }
        ("", "Secret") => {
            default(object, "type", json!("Opaque"));
            string_data(object);
        }
        ("", "Namespace") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = child(spec, "strategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy["type"] == "RollingUpdate"
                        && let Some(rolling) = child(strategy, "rollingUpdate")
                    {
                        default(rolling, "maxUnavailable", json!("25%"));
                        default(rolling, "maxSurge", json!("25%"));
                    }
                }
                template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(strategy) = child(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy["type"] == "RollingUpdate"
                        && let Some(rolling) = child(strategy, "rollingUpdate")
                    {
                        default(rolling, "partition", json!(0));
                    }
                }
                template(spec);
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = child(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy["type"] == "RollingUpdate"
                        && let Some(rolling) = child(strategy, "rollingUpdate")
                    {
                        default(rolling, "maxUnavailable", json!(1));
                        default(rolling, "maxSurge", json!(0));
                    }
                }
                template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = child(object, "spec") {
                job_spec(spec);
                default(spec, "manualSelector", json!(false));
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = child(object, "spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job) = child(spec, "jobTemplate").and_then(|t| child(t, "spec")) {
                    job_spec(job);
                }
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            if let Some(spec) = child(object, "spec") {
                let has_egress = spec.get("egress").is_some();
                default(
                    spec,
                    "policyTypes",
                    if has_egress {
                        json!(["Ingress", "Egress"])
                    } else {
                        json!(["Ingress"])
                    },
                );
                for rules in ["ingress", "egress"] {
                    each(spec, rules, |rule| {
                        each(rule, "ports", |port| {
                            default(port, "protocol", json!("TCP"))
                        });
                    });
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            each(object, "ports", |port| {
                default(port, "protocol", json!("TCP"));
                default(port, "name", json!(""));
            });
        }
        _ => {}
    }
}

/// A Secret's `stringData` is written into `data` (base64), overriding keys there, and never
/// stored itself (upstream's Secret strategy).
fn string_data(object: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = object
        .as_object_mut()
        .and_then(|map| map.remove("stringData"))
    else {
        return;
    };
    default(object, "data", json!({}));
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            data.insert(
                key,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// `SetDefaults_Job`'s spec part: `completions` only when `parallelism` is unset too (a
/// work queue sets parallelism alone and keeps completions unset).
fn job_spec(spec: &mut Value) {
    let unset = |key: &str| spec.get(key).is_none_or(Value::is_null);
    if unset("completions") && unset("parallelism") {
        default(spec, "completions", json!(1));
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    template(spec);
}

fn template(spec: &mut Value) {
    if let Some(template) = child(spec, "template")
        && let Some(pod) = child(template, "spec")
    {
        pod_spec(pod);
    }
}

fn pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        each(spec, list, container);
    }
    each(spec, "volumes", |volume| {
        for (source, mode) in [
            ("configMap", 0o644),
            ("secret", 0o644),
            ("downwardAPI", 0o644),
            ("projected", 0o644),
        ] {
            if let Some(inner) = volume.get_mut(source).filter(|inner| inner.is_object()) {
                default(inner, "defaultMode", json!(mode));
            }
        }
        if let Some(host_path) = volume.get_mut("hostPath").filter(|inner| inner.is_object()) {
            default(host_path, "type", json!(""));
        }
    });
}

/// The taints the node lifecycle controller puts on a node that is not ready or unreachable.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// How long a pod stays bound to such a node by default (kube-apiserver's
/// `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Upstream's `DefaultTolerationSeconds` admission plugin (on by default): a pod that does not
/// tolerate the `not-ready` / `unreachable` `NoExecute` taints gets a toleration of each for
/// [`DEFAULT_TOLERATION_SECONDS`], so a node that goes away for a moment does not evict it.
/// Upstream runs it on pod creation only; here it also sees updates, where it can only add
/// what a created pod already has (pod updates may only add tolerations).
fn default_toleration_seconds(spec: &mut Value) {
    let tolerations: Vec<Value> = match spec.get("tolerations") {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let tolerates = |key: &str| {
        tolerations.iter().any(|t| {
            let field = |name| t.get(name).and_then(Value::as_str).unwrap_or("");
            (field("key") == key || field("key").is_empty())
                && (field("effect") == "NoExecute" || field("effect").is_empty())
        })
    };
    let missing: Vec<Value> = [TAINT_NOT_READY, TAINT_UNREACHABLE]
        .into_iter()
        .filter(|key| !tolerates(key))
        .map(|key| {
            json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
            })
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    if let Some(map) = spec.as_object_mut() {
        let mut all = tolerations;
        all.extend(missing);
        map.insert("tolerations".to_owned(), Value::Array(all));
    }
}

fn container(container: &mut Value) {
    default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    default(container, "terminationMessagePolicy", json!("File"));
    default(container, "resources", json!({}));
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    default(container, "imagePullPolicy", json!(pull_policy(image)));
    each(container, "ports", |port| {
        default(port, "protocol", json!("TCP"))
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = container.get_mut(probe).filter(|probe| probe.is_object()) {
            default(probe, "timeoutSeconds", json!(1));
            default(probe, "periodSeconds", json!(10));
            default(probe, "successThreshold", json!(1));
            default(probe, "failureThreshold", json!(3));
            if let Some(http) = probe.get_mut("httpGet").filter(|http| http.is_object()) {
                default(http, "path", json!("/"));
                default(http, "scheme", json!("HTTP"));
            }
        }
    }
}

/// `Always` for `:latest` or an untagged image without digest, else `IfNotPresent`.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn service_spec(spec: &mut Value) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if kind != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec["sessionAffinity"] == "ClientIP"
        && let Some(config) =
            child(spec, "sessionAffinityConfig").and_then(|c| child(c, "clientIP"))
    {
        default(config, "timeoutSeconds", json!(10800));
    }
    each(spec, "ports", |port| {
        default(port, "protocol", json!("TCP"));
        if let Some(number) = port.get("port").cloned() {
            default(port, "targetPort", number);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_as_upstream() {
        let mut deployment = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        apply("apps", "Deployment", &mut deployment);
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        let container = &spec["template"]["spec"]["containers"][0];
        assert_eq!(container["imagePullPolicy"], "Always");
        assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(spec["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn jobs_default_completions_only_without_parallelism() {
        let mut single = json!({"spec": {}});
        apply("batch", "Job", &mut single);
        let spec = &single["spec"];
        assert_eq!(
            (&spec["completions"], &spec["parallelism"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(spec["manualSelector"], false);
        assert_eq!(spec["backoffLimit"], 6);
        let mut queue = json!({"spec": {"parallelism": 3}});
        apply("batch", "Job", &mut queue);
        assert!(queue["spec"].get("completions").is_none(), "{queue}");
        let mut fixed = json!({"spec": {"completions": 5}});
        apply("batch", "Job", &mut fixed);
        assert_eq!(
            (&fixed["spec"]["completions"], &fixed["spec"]["parallelism"]),
            (&json!(5), &json!(1))
        );
    }

    #[test]
    fn pods_tolerate_not_ready_and_unreachable_for_five_minutes_unless_told_otherwise() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        apply("", "Pod", &mut pod);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ])
        );
        // Applying again (an update) adds nothing.
        let before = pod.clone();
        apply("", "Pod", &mut pod);
        assert_eq!(pod, before);

        let own = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5});
        let mut pod = json!({"spec": {"tolerations": [own.clone()]}});
        apply("", "Pod", &mut pod);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([own, {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
        );
        // A toleration of every taint covers both.
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        apply("", "Pod", &mut pod);
        assert_eq!(pod["spec"]["tolerations"], json!([{"operator": "Exists"}]));
        // Pod templates are left alone (admission sees pods only).
        let mut deployment = json!({"spec": {"template": {"spec": {"containers": []}}}});
        apply("apps", "Deployment", &mut deployment);
        assert!(
            deployment["spec"]["template"]["spec"]
                .get("tolerations")
                .is_none()
        );
    }

    #[test]
    fn recreate_gets_no_rolling_update_block() {
        let mut deployment = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply("apps", "Deployment", &mut deployment);
        assert!(
            deployment["spec"]["strategy"]
                .get("rollingUpdate")
                .is_none()
        );
    }

    #[test]
    fn service_and_pull_policy_defaults() {
        let mut service = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        apply("", "Service", &mut service);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(service["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(service["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(pull_policy("registry:5000/busybox:1.36"), "IfNotPresent");
        assert_eq!(pull_policy("registry:5000/busybox"), "Always");
        assert_eq!(pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}

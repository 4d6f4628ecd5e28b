//! Tolerations against taints, as upstream's `Toleration.ToleratesTaint`: the one matcher the
//! scheduler's TaintToleration plugin, the DaemonSet controller's placement and the taint
//! eviction controller share.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// Whether the toleration tolerates the taint (upstream's `Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates every taint.
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Whether any of the tolerations tolerates the taint.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations
        .iter()
        .any(|toleration| tolerates(toleration, taint))
}

/// The node's taints.
pub fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|spec| spec.taints.as_deref())
        .unwrap_or_default()
}

/// The first `NoSchedule` / `NoExecute` taint none of the tolerations tolerates.
pub fn untolerated_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(tolerations, taint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerations_match_taints_as_upstream() {
        let taint: Taint = serde_json::from_value(
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
        )
        .expect("taint");
        let toleration = |value| serde_json::from_value::<Toleration>(value).expect("toleration");
        assert!(tolerates(
            &toleration(json!({"key": "dedicated", "value": "gpu"})),
            &taint
        ));
        assert!(tolerates(
            &toleration(json!({"operator": "Exists"})),
            &taint
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "dedicated", "value": "cpu"})),
            &taint
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
        assert_eq!(
            untolerated_taint(std::slice::from_ref(&taint), &[]),
            Some(&taint)
        );
    }

    #[test]
    fn effects_keys_and_empty_operators() {
        let taint: Taint = serde_json::from_value(
            json!({"key": "dedicated", "value": "gpu", "effect": "NoExecute"}),
        )
        .expect("taint");
        let toleration = |value| serde_json::from_value::<Toleration>(value).expect("toleration");
        // An empty operator is Equal.
        assert!(tolerates(
            &toleration(json!({"key": "dedicated", "operator": "", "value": "gpu"})),
            &taint
        ));
        // A key with Exists and no effect tolerates every effect of that key only.
        assert!(tolerates(
            &toleration(json!({"key": "dedicated", "operator": "Exists"})),
            &taint
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "other", "operator": "Exists"})),
            &taint
        ));
        // An unknown operator tolerates nothing.
        assert!(!tolerates(
            &toleration(json!({"key": "dedicated", "operator": "Gt"})),
            &taint
        ));
        // PreferNoSchedule taints never keep a pod off.
        let soft: Taint = serde_json::from_value(json!({"key": "k", "effect": "PreferNoSchedule"}))
            .expect("taint");
        assert_eq!(untolerated_taint(std::slice::from_ref(&soft), &[]), None);
    }
}

//! Matching as the scheduler does it: label selectors (`metav1.LabelSelector`), node selector
//! terms (`matchExpressions` with `In`/`NotIn`/`Exists`/`DoesNotExist`/`Gt`/`Lt`,
//! `matchFields` on `metadata.name`); tolerations against taints are [`crate::api::taints`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use crate::api::taints::{node_taints, tolerated, tolerates, untolerated_taint};

/// Labels of an object; an object without labels has none.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A compiled `LabelSelector`. A missing selector selects nothing; an empty one everything
/// (upstream's `LabelSelectorAsSelector`). An unknown operator selects nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    /// The selector that matches no object.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Compiles `selector` (`None`: matches nothing).
    pub fn new(selector: Option<&LabelSelector>) -> Self {
        let Some(selector) = selector else {
            return Self::nothing();
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for expression in selector.match_expressions.iter().flatten() {
            let key = expression.key.clone();
            let values = expression.values.clone().unwrap_or_default();
            requirements.push(match expression.operator.as_str() {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                _ => return Self::nothing(),
            });
        }
        Self {
            requirements,
            nothing: false,
        }
    }

    /// The selector `key = value` for every pair (an empty set selects everything).
    pub fn from_labels(labels: &Labels) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(key, value)| Requirement::In(key.clone(), vec![value.clone()]))
                .collect(),
            nothing: false,
        }
    }

    /// Both selectors' requirements.
    pub fn and(mut self, other: Selector) -> Self {
        self.nothing |= other.nothing;
        self.requirements.extend(other.requirements);
        self
    }

    /// Whether the selector has no requirement (and so selects everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Adds `key in (value)` for each of `keys` the pod carries (`matchLabelKeys`), or
    /// `key notin (value)` when `mismatch`.
    pub fn with_label_keys(mut self, keys: &[String], labels: &Labels, mismatch: bool) -> Self {
        for key in keys {
            if let Some(value) = labels.get(key) {
                let values = vec![value.clone()];
                self.requirements.push(if mismatch {
                    Requirement::NotIn(key.clone(), values)
                } else {
                    Requirement::In(key.clone(), values)
                });
            }
        }
        self
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|requirement| match requirement {
                    Requirement::In(key, values) => {
                        labels.get(key).is_some_and(|v| values.contains(v))
                    }
                    Requirement::NotIn(key, values) => {
                        labels.get(key).is_none_or(|v| !values.contains(v))
                    }
                    Requirement::Exists(key) => labels.contains_key(key),
                    Requirement::DoesNotExist(key) => !labels.contains_key(key),
                })
    }
}

/// The node's labels (none when it has no labels).
pub fn node_labels(node: &Node) -> &Labels {
    static EMPTY: Labels = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// Whether the node satisfies one term: every expression and every field requirement. An
/// empty term matches no node.
pub fn node_term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node_labels(node);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    expressions
        .iter()
        .all(|requirement| node_requirement_matches(requirement, labels.get(&requirement.key)))
        && fields.iter().all(|requirement| {
            requirement.key == "metadata.name"
                && node_requirement_matches(requirement, Some(&name.to_owned()))
        })
}

/// Whether the node satisfies any of the terms (`requiredDuringScheduling...`).
pub fn node_terms_match(terms: &[NodeSelectorTerm], node: &Node) -> bool {
    terms.iter().any(|term| node_term_matches(term, node))
}

fn node_requirement_matches(
    requirement: &NodeSelectorRequirement,
    actual: Option<&String>,
) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => actual.is_some_and(|actual| values.contains(actual)),
        "NotIn" => actual.is_none_or(|actual| !values.contains(actual)),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        operator @ ("Gt" | "Lt") => {
            let (Some(actual), [bound]) = (actual, values) else {
                return false;
            };
            match (actual.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(actual), Ok(bound)) if operator == "Gt" => actual > bound,
                (Ok(actual), Ok(bound)) => actual < bound,
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels}})).expect("node")
    }

    fn term(value: serde_json::Value) -> NodeSelectorTerm {
        serde_json::from_value(value).expect("term")
    }

    #[test]
    fn node_selector_operators() {
        let node = node(json!({"zone": "a", "cores": "8"}));
        let matches = |value| node_term_matches(&term(value), &node);
        assert!(matches(
            json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]})
        ));
        assert!(!matches(
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(matches(
            json!({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]})
        ));
        assert!(matches(
            json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})
        ));
        assert!(matches(
            json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]})
        ));
        assert!(!matches(
            json!({"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]})
        ));
        assert!(!matches(
            json!({"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["4"]}]})
        ));
        assert!(matches(
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]})
        ));
        assert!(!matches(
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]})
        ));
        assert!(!matches(json!({})));
    }

    #[test]
    fn label_selectors_nil_empty_and_expressions() {
        let labels: Labels = [("app".to_owned(), "web".to_owned())].into();
        assert!(!Selector::new(None).matches(&labels));
        assert!(Selector::new(Some(&LabelSelector::default())).matches(&labels));
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]
        }))
        .expect("selector");
        assert!(Selector::new(Some(&selector)).matches(&labels));
        let keyed = Selector::new(Some(&LabelSelector::default())).with_label_keys(
            &["app".to_owned()],
            &[("app".to_owned(), "db".to_owned())].into(),
            false,
        );
        assert!(!keyed.matches(&labels));
    }
}

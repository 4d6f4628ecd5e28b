//! Job selectors as upstream's Job strategy makes and checks them: on create, unless
//! `spec.manualSelector` is true, the API server labels the pod template with the Job's name
//! and uid and selects on the uid ([`generate_selector`]); validation then insists the
//! selector is that generated one, or, with `manualSelector: true`, that one was given and
//! matches the template ([`validate_selector`]).

use serde_json::{Map, Value, json};

use super::selector;
use super::status::Cause;

/// The label with the Job's uid, the one the generated selector selects on.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The label with the Job's name.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The unprefixed forms upstream still sets for older clients.
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const LEGACY_JOB_NAME: &str = "job-name";

fn manual(job: &Value) -> bool {
    job.pointer("/spec/manualSelector") == Some(&Value::Bool(true))
}

/// The four labels a Job's pods carry when its selector is generated.
fn generated_labels(job: &Value) -> [(&'static str, String); 4] {
    let text = |pointer: &str| {
        job.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (name, uid) = (text("/metadata/name"), text("/metadata/uid"));
    [
        (LEGACY_JOB_NAME, name.clone()),
        (JOB_NAME, name),
        (LEGACY_CONTROLLER_UID, uid.clone()),
        (CONTROLLER_UID, uid),
    ]
}

fn object_at<'a>(object: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut here = object;
    for key in path {
        let map = here.as_object_mut()?;
        let next = map.entry(*key).or_insert_with(|| json!({}));
        if next.is_null() {
            *next = json!({});
        }
        here = next;
    }
    here.as_object_mut()
}

/// Upstream's `generateSelectorIfNeeded`, on a new Job whose name and uid are set: labels the
/// pod template (keeping labels the user already set, which validation then judges) and adds
/// `batch.kubernetes.io/controller-uid=<uid>` to `spec.selector.matchLabels`. A Job created
/// without labels of its own then shows the template's, as upstream's defaulting does.
pub fn generate_selector(job: &mut Value) {
    if manual(job) {
        return;
    }
    let labels = generated_labels(job);
    let uid = labels[3].1.clone();
    if let Some(template_labels) = object_at(job, &["spec", "template", "metadata", "labels"]) {
        for (key, value) in &labels {
            template_labels.entry(*key).or_insert_with(|| json!(value));
        }
    }
    if let Some(match_labels) = object_at(job, &["spec", "selector", "matchLabels"]) {
        match_labels
            .entry(CONTROLLER_UID)
            .or_insert_with(|| json!(uid));
    }
    let template_labels = job
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(metadata) = job.get_mut("metadata").and_then(Value::as_object_mut) {
        let empty = metadata
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
        if empty {
            metadata.insert("labels".into(), template_labels);
        }
    }
}

/// Validates a Job's selector: upstream's `validateGeneratedSelector` (unless
/// `manualSelector`) and the selector checks of `ValidateJobSpec`. `old` is the stored Job on
/// update: a Job stored without the generated labels (made before the API server generated
/// them) is not held to them.
pub fn validate_selector(job: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let template_labels = job
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let selector = job.pointer("/spec/selector").unwrap_or(&Value::Null);
    let held_to_generated = old.is_none_or(|old| {
        let had = |key: &str| {
            old.pointer("/spec/template/metadata/labels")
                .and_then(|labels| labels.get(key))
                .is_some()
        };
        had(CONTROLLER_UID) && had(JOB_NAME)
    });
    if !manual(job) && !selector.is_null() && held_to_generated {
        generated_selector(job, template_labels, selector, causes);
    }
    let requirements = selector::label_selector(selector);
    if selector.is_null() {
        causes.push(Cause::required("spec.selector"));
    }
    let matches = requirements
        .as_deref()
        .is_some_and(|requirements| selector::labels_match(requirements, template_labels));
    if !matches {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &template_labels.map_or(Value::Null, |labels| Value::Object(labels.clone())),
            "`selector` does not match template `labels`",
        ));
    }
}

fn generated_selector(
    job: &Value,
    template_labels: Option<&Map<String, Value>>,
    selector: &Value,
    causes: &mut Vec<Cause>,
) {
    let labels = generated_labels(job);
    if labels[3].1.is_empty() {
        causes.push(Cause::required("metadata.uid"));
    }
    // Upstream checks the unprefixed labels first.
    for index in [2, 0, 3, 1] {
        let (key, expected) = &labels[index];
        let field = format!("spec.template.metadata.labels[{key}]");
        match template_labels.and_then(|labels| labels.get(*key)) {
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                field,
                message: format!("Required value: {expected}"),
            }),
            Some(actual) if actual.as_str() != Some(expected.as_str()) => {
                causes.push(Cause::invalid(
                    field,
                    &Value::Object(template_labels.cloned().unwrap_or_default()),
                    expected,
                ));
            }
            Some(_) => {}
        }
    }
    let expected: Map<String, Value> = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), json!(value)))
        .collect();
    let selects_them = selector::label_selector(selector)
        .is_some_and(|requirements| selector::labels_match(&requirements, Some(&expected)));
    if !selects_them {
        causes.push(Cause::invalid(
            "spec.selector",
            selector,
            "`selector` not auto-generated",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        let mut spec = spec;
        spec["template"]["spec"] =
            json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]});
        json!({"metadata": {"name": "pi", "uid": "1234"}, "spec": spec})
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|cause| cause.field.as_str()).collect()
    }

    fn checked(job: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_selector(job, None, &mut causes);
        causes
    }

    #[test]
    fn a_generated_selector_selects_the_uid_and_labels_the_template() {
        let mut job = job(json!({"template": {"metadata": {"labels": {"app": "pi"}}}}));
        generate_selector(&mut job);
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "1234"}})
        );
        let labels = json!({
            "app": "pi",
            "batch.kubernetes.io/controller-uid": "1234",
            "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "1234",
            "job-name": "pi",
        });
        assert_eq!(job["spec"]["template"]["metadata"]["labels"], labels);
        assert_eq!(
            job["metadata"]["labels"], labels,
            "a Job without labels shows its template's"
        );
        assert!(checked(&job).is_empty(), "{:?}", checked(&job));
    }

    #[test]
    fn a_job_keeps_labels_of_its_own() {
        let mut job = job(json!({}));
        job["metadata"]["labels"] = json!({"team": "a"});
        generate_selector(&mut job);
        assert_eq!(job["metadata"]["labels"], json!({"team": "a"}));
        assert!(checked(&job).is_empty());
    }

    #[test]
    fn a_selector_given_without_manual_selector_is_refused() {
        let mut job = job(json!({
            "selector": {"matchLabels": {"app": "pi"}},
            "template": {"metadata": {"labels": {"app": "pi"}}},
        }));
        generate_selector(&mut job);
        let causes = checked(&job);
        assert_eq!(fields(&causes), ["spec.selector"]);
        assert_eq!(causes[0].reason, "FieldValueInvalid");
        assert!(
            causes[0].message.ends_with("`selector` not auto-generated"),
            "{}",
            causes[0].message
        );
    }

    #[test]
    fn a_template_label_that_contradicts_the_generated_one_is_refused() {
        let mut job = job(json!({"template": {"metadata": {"labels": {"job-name": "other"}}}}));
        generate_selector(&mut job);
        let causes = checked(&job);
        assert_eq!(fields(&causes), ["spec.template.metadata.labels[job-name]"]);
        assert!(causes[0].message.ends_with(": pi"), "{}", causes[0].message);
    }

    #[test]
    fn manual_selectors_must_be_given_and_match_the_template() {
        let mut missing = job(json!({"manualSelector": true,
            "template": {"metadata": {"labels": {"app": "pi"}}}}));
        generate_selector(&mut missing);
        assert!(missing["spec"].get("selector").is_none());
        assert_eq!(
            fields(&checked(&missing)),
            ["spec.selector", "spec.template.metadata.labels"]
        );
        assert_eq!(checked(&missing)[0].reason, "FieldValueRequired");

        let mut given = job(json!({"manualSelector": true,
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["pi"]}]},
            "template": {"metadata": {"labels": {"app": "pi"}}}}));
        generate_selector(&mut given);
        assert!(checked(&given).is_empty());
        given["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        assert_eq!(fields(&checked(&given)), ["spec.template.metadata.labels"]);
    }

    #[test]
    fn jobs_stored_without_generated_labels_stay_updatable() {
        let old = job(
            json!({"selector": {"matchLabels": {"controller-uid": "1234"}},
            "template": {"metadata": {"labels": {"controller-uid": "1234"}}}}),
        );
        let mut causes = Vec::new();
        validate_selector(&old, Some(&old), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }
}

//! OpenAPI v3 documents, generated from the same `k8s-openapi` types the catalog serves (their
//! `schemars` schemas, named as upstream names them: `io.k8s.api.core.v1.Pod`), and the
//! unknown-field check behind `fieldValidation` that walks those schemas.
//!
//! Each group-version gets a document with a path per endpoint and, on every `PATCH`, the
//! `x-kubernetes-group-version-kind` extension and a `fieldValidation` query parameter:
//! kubectl looks for exactly that before it lets the server validate (`kubectl apply`), and
//! `kubectl explain` finds a kind's schema by the same extension in `components.schemas`.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::catalog::{Catalog, ResourceInfo, Subresource};

/// The documents of one server.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `api/v1`, `apis/apps/v1`, ... -> (document, hash).
    documents: BTreeMap<String, (Value, String)>,
    /// Every component schema, by name, for field validation.
    schemas: Map<String, Value>,
}

/// `api/v1` or `apis/<group>/<version>`.
fn document_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a, hex: a stable content hash for the `?hash=` cache key.
fn hash(bytes: &[u8]) -> String {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{state:016X}")
}

fn camel(text: &str) -> String {
    text.split(['.', '-'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut characters = part.chars();
            characters
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + characters.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Upstream's operation id form: `patchAppsV1NamespacedDeploymentStatus`.
fn operation_id(verb: &str, info: &ResourceInfo, suffix: &str, all_namespaces: bool) -> String {
    let group = if info.group.is_empty() {
        "Core".to_owned()
    } else {
        camel(info.group.split('.').next().unwrap_or(info.group))
    };
    let scope = if info.namespaced && !all_namespaces {
        "Namespaced"
    } else {
        ""
    };
    let tail = if all_namespaces {
        "ForAllNamespaces"
    } else {
        ""
    };
    format!(
        "{verb}{group}{}{scope}{}{suffix}{tail}",
        camel(info.version),
        info.kind
    )
}

fn parameter(name: &str, location: &str, description: &str, kind: &str) -> Value {
    let mut parameter = json!({
        "name": name,
        "in": location,
        "description": description,
        "schema": {"type": kind, "uniqueItems": true},
    });
    if location == "path" {
        parameter["required"] = json!(true);
    }
    parameter
}

fn write_parameters() -> Vec<Value> {
    vec![
        parameter(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
            "string",
        ),
        parameter(
            "fieldManager",
            "query",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        parameter(
            "fieldValidation",
            "query",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
            "string",
        ),
    ]
}

fn list_parameters() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean"),
        ("continue", "string"),
        ("fieldSelector", "string"),
        ("labelSelector", "string"),
        ("limit", "integer"),
        ("resourceVersion", "string"),
        ("resourceVersionMatch", "string"),
        ("sendInitialEvents", "boolean"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
    ]
    .iter()
    .map(|(name, kind)| parameter(name, "query", name, kind))
    .collect()
}

fn body(schema: &Value, patch: bool) -> Value {
    let types: &[&str] = if patch {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ]
    } else {
        &["application/json", "application/yaml"]
    };
    let content: Map<String, Value> = types
        .iter()
        .map(|kind| ((*kind).to_owned(), json!({"schema": schema})))
        .collect();
    json!({"required": true, "content": content})
}

fn responses(code: &str, schema: &Value) -> Value {
    json!({
        code: {"description": "OK", "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}},
        "401": {"description": "Unauthorized"},
    })
}

/// What distinguishes one operation of an endpoint.
struct Operation<'a> {
    verb: &'static str,
    action: &'static str,
    suffix: &'a str,
    all_namespaces: bool,
    request: Option<(Value, bool)>,
    response: (&'static str, Value),
    gvk: &'a Value,
    parameters: Vec<Value>,
}

fn operation(info: &ResourceInfo, op: Operation<'_>) -> Value {
    let mut parameters = op.parameters;
    if op.request.is_some() {
        parameters.extend(write_parameters());
    }
    let mut value = json!({
        "operationId": operation_id(op.verb, info, op.suffix, op.all_namespaces),
        "description": format!("{} {}", op.verb, info.kind),
        "tags": [document_path(info.group, info.version).replace('/', "_")],
        "parameters": parameters,
        "responses": responses(op.response.0, &op.response.1),
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": op.gvk,
    });
    if let Some((schema, patch)) = op.request {
        value["requestBody"] = body(&schema, patch);
    }
    value
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The `get`, `put` and `patch` operations of one object (or subresource) endpoint.
fn object_operations(
    info: &ResourceInfo,
    suffix: &str,
    schema: &Value,
    gvk: &Value,
    parameters: &[Value],
) -> Map<String, Value> {
    let mut operations = Map::new();
    let patch = json!({"type": "object"});
    for (method, verb, request) in [
        ("get", "read", None),
        ("put", "replace", Some((schema.clone(), false))),
        ("patch", "patch", Some((patch, true))),
    ] {
        let entry = Operation {
            verb,
            action: method,
            suffix,
            all_namespaces: false,
            request,
            response: ("200", schema.clone()),
            gvk,
            parameters: parameters.to_vec(),
        };
        operations.insert(method.into(), operation(info, entry));
    }
    operations
}

fn add_paths(
    info: &ResourceInfo,
    generator: &mut schemars::SchemaGenerator,
    paths: &mut Map<String, Value>,
) {
    let prefix = format!("/{}", document_path(info.group, info.version));
    let (collection, item) = if info.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", info.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
        )
    } else {
        (
            format!("{prefix}/{}", info.plural),
            format!("{prefix}/{}/{{name}}", info.plural),
        )
    };
    let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
    let object = reference(&info.schema_name);
    let list =
        json!({"type": "object", "properties": {"items": {"type": "array", "items": object}}});
    let mut scope = Vec::new();
    if info.namespaced {
        scope.push(parameter(
            "namespace",
            "path",
            "object name and auth scope, such as for teams and projects",
            "string",
        ));
    }
    let mut named = scope.clone();
    named.push(parameter(
        "name",
        "path",
        &format!("name of the {}", info.kind),
        "string",
    ));
    let collection_operation = |verb, action, request, response, parameters, all_namespaces| {
        operation(
            info,
            Operation {
                verb,
                action,
                suffix: "",
                all_namespaces,
                request,
                response,
                gvk: &gvk,
                parameters,
            },
        )
    };
    let mut list_params = scope.clone();
    list_params.extend(list_parameters());
    paths.insert(collection, json!({
        "get": collection_operation("list", "list", None, ("200", list.clone()), list_params, false),
        "post": collection_operation("create", "post", Some((object.clone(), false)), ("201", object.clone()), scope.clone(), false),
        "delete": collection_operation("deletecollection", "deletecollection", None, ("200", list.clone()), scope.clone(), false),
    }));
    if info.namespaced {
        let all =
            collection_operation("list", "list", None, ("200", list), list_parameters(), true);
        paths.insert(format!("{prefix}/{}", info.plural), json!({"get": all}));
    }
    let mut item_operations = object_operations(info, "", &object, &gvk, &named);
    item_operations.insert(
        "delete".into(),
        collection_operation(
            "delete",
            "delete",
            None,
            ("200", object.clone()),
            named.clone(),
            false,
        ),
    );
    paths.insert(item.clone(), Value::Object(item_operations));
    for subresource in info.subresources {
        let suffix = camel(subresource.name());
        let operations = match subresource {
            Subresource::Status => object_operations(info, &suffix, &object, &gvk, &named),
            Subresource::Scale => {
                let scale = generator
                    .subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>()
                    .to_value();
                let scale_gvk = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                object_operations(info, &suffix, &scale, &scale_gvk, &named)
            }
            Subresource::Finalize => {
                let mut operations = object_operations(info, &suffix, &object, &gvk, &named);
                operations.retain(|method, _| method == "put");
                operations
            }
            Subresource::Binding => {
                let binding = generator
                    .subschema_for::<k8s_openapi::api::core::v1::Binding>()
                    .to_value();
                let binding_gvk = json!({"group": "", "version": "v1", "kind": "Binding"});
                let create = Operation {
                    verb: "create",
                    action: "post",
                    suffix: &suffix,
                    all_namespaces: false,
                    request: Some((binding.clone(), false)),
                    response: ("201", binding),
                    gvk: &binding_gvk,
                    parameters: named.clone(),
                };
                let mut operations = Map::new();
                operations.insert("post".into(), operation(info, create));
                operations
            }
            // Connect operations: streams to a node, no object schema to describe.
            Subresource::Log
            | Subresource::Exec
            | Subresource::Attach
            | Subresource::PortForward => {
                continue;
            }
        };
        paths.insert(
            format!("{item}/{}", subresource.name()),
            Value::Object(operations),
        );
    }
}

impl OpenApi {
    pub fn build(catalog: &Catalog) -> Self {
        let mut documents = BTreeMap::new();
        let mut schemas = Map::new();
        for (group, version) in catalog.group_versions() {
            let mut generator = SchemaSettings::openapi3().into_generator();
            let mut paths = Map::new();
            let infos: Vec<&ResourceInfo> = catalog.in_group_version(group, version).collect();
            for info in &infos {
                (info.schema)(&mut generator);
                add_paths(info, &mut generator, &mut paths);
            }
            let mut components: Map<String, Value> =
                generator.take_definitions(true).into_iter().collect();
            for info in &infos {
                if let Some(schema) = components
                    .get_mut(&info.schema_name)
                    .and_then(Value::as_object_mut)
                {
                    schema.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([{"group": info.group, "kind": info.kind, "version": info.version}]),
                    );
                    // Upstream does not require metadata (generateName, server-filled names).
                    if let Some(Value::Array(required)) = schema.get_mut("required") {
                        required.retain(|field| field != "metadata");
                        if required.is_empty() {
                            schema.remove("required");
                        }
                    }
                }
            }
            for (name, schema) in &components {
                schemas.insert(name.clone(), schema.clone());
            }
            let (major, minor) = crate::server::KUBERNETES_VERSION;
            let document = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
                "paths": paths,
                "components": {"schemas": components},
            });
            let digest = hash(document.to_string().as_bytes());
            documents.insert(document_path(group, version), (document, digest));
        }
        Self { documents, schemas }
    }

    /// `/openapi/v3`: where each group-version's document is.
    pub fn root(&self) -> Value {
        let paths: Map<String, Value> = self
            .documents
            .iter()
            .map(|(path, (_, digest))| {
                (
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={digest}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// The document at `path` (`api/v1`, `apis/apps/v1`) and its hash.
    pub fn document(&self, path: &str) -> Option<(&Value, &str)> {
        self.documents
            .get(path.trim_matches('/'))
            .map(|(document, digest)| (document, digest.as_str()))
    }

    /// The fields of `object` its kind's schema does not declare, as `spec.foo` paths;
    /// removed from the object when `prune`.
    pub fn unknown_fields(
        &self,
        info: &ResourceInfo,
        object: &mut Value,
        prune: bool,
    ) -> Vec<String> {
        let mut unknown = Vec::new();
        if let Some(schema) = self.schemas.get(&info.schema_name) {
            self.walk(schema, object, "", &mut unknown, prune, 0);
        }
        unknown
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .rsplit('/')
                .next()
                .and_then(|name| self.schemas.get(name))
                .unwrap_or(&Value::Null),
            None => match schema.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 => self.resolve(&all[0]),
                _ => schema,
            },
        }
    }

    fn walk(
        &self,
        schema: &Value,
        value: &mut Value,
        path: &str,
        unknown: &mut Vec<String>,
        prune: bool,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        let schema = self.resolve(schema);
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            Value::Object(map) => {
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    let mut drop = Vec::new();
                    for (key, child) in map.iter_mut() {
                        match properties.get(key) {
                            Some(child_schema) => self.walk(
                                child_schema,
                                child,
                                &join(key),
                                unknown,
                                prune,
                                depth + 1,
                            ),
                            None => {
                                unknown.push(join(key));
                                drop.push(key.clone());
                            }
                        }
                    }
                    if prune {
                        for key in drop {
                            map.remove(&key);
                        }
                    }
                } else if let Some(values) = schema
                    .get("additionalProperties")
                    .filter(|values| values.is_object())
                {
                    for (key, child) in map.iter_mut() {
                        self.walk(values, child, &join(key), unknown, prune, depth + 1);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (index, item) in items.iter_mut().enumerate() {
                        self.walk(
                            item_schema,
                            item,
                            &format!("{path}[{index}]"),
                            unknown,
                            prune,
                            depth + 1,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

impl super::protobuf::FieldNames for OpenApi {
    /// The property of `message`'s schema whose name matches the protobuf field's snake_case
    /// name (`pod_ip` is `podIP`, `a_pi_group` is `apiGroup`).
    fn json_name(&self, message: &str, field: &str) -> super::protobuf::JsonName {
        use super::protobuf::JsonName;
        let wanted: String = field
            .chars()
            .filter(|c| *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        let Some(schema) = self.schemas.get(message) else {
            return JsonName::NoSchema;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        match properties.and_then(|properties| {
            properties
                .keys()
                .find(|name| name.to_ascii_lowercase() == wanted)
        }) {
            Some(name) => JsonName::Property(name.clone()),
            None => JsonName::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_kubectl_looks_for() {
        let openapi = OpenApi::build(&Catalog::builtin());
        let (apps, _) = openapi.document("apis/apps/v1").unwrap();
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let deployment = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
        assert!(
            openapi.root()["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }

    #[test]
    fn unknown_fields_are_found_and_pruned() {
        let catalog = Catalog::builtin();
        let openapi = OpenApi::build(&catalog);
        let deployments = catalog.get("apps", "v1", "deployments").unwrap();
        let mut deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"replicas": 1, "foo": true, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i", "extra": "x", "ports": [{"containerPort": 80}]}]}}}});
        let unknown = openapi.unknown_fields(deployments, &mut deployment, true);
        assert_eq!(
            unknown,
            [
                "metadata.bogus",
                "spec.foo",
                "spec.template.spec.containers[0].extra"
            ]
        );
        assert!(deployment["spec"].get("foo").is_none());
        assert!(
            openapi
                .unknown_fields(deployments, &mut deployment, false)
                .is_empty()
        );
    }
}

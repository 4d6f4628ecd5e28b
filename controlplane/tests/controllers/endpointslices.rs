//! The EndpointSlice controller: slices follow pods, their readiness and termination, named
//! ports resolve per pod, and big Services split into slices of at most 100 endpoints.

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::{TestApiServer, client, eventually, namespace, node, set_pod_status};

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

async fn slices(api: &Api<EndpointSlice>, service: &str) -> anyhow::Result<Vec<EndpointSlice>> {
    let listed = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(listed.items)
}

/// The endpoint of pod `name` and the ports of its slice.
fn endpoint_of(slices: &[EndpointSlice], name: &str) -> Option<(Endpoint, Vec<i32>)> {
    slices.iter().find_map(|slice| {
        let endpoint = slice.endpoints.iter().find(|endpoint| {
            endpoint
                .target_ref
                .as_ref()
                .and_then(|target| target.name.as_deref())
                == Some(name)
        })?;
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| port.port)
            .collect();
        Some((endpoint.clone(), ports))
    })
}

fn conditions(endpoint: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    (conditions.ready, conditions.serving, conditions.terminating)
}

fn pod(name: &str, labels: serde_json::Value, http_port: i32) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "web", "image": "registry.local/busybox:1.36",
                            "ports": [{"name": "http", "containerPort": http_port}]}],
        },
    }))?)
}

/// A control plane with namespace `namespace`, Node `node-a` in `zone-1`, and the APIs the
/// tests use there.
struct Fixture {
    server: TestApiServer,
    client: kube::Client,
    services: Api<Service>,
    pods: Api<Pod>,
    slices: Api<EndpointSlice>,
}

impl Fixture {
    async fn start(namespace_name: &str) -> anyhow::Result<Self> {
        let server = TestApiServer::start().await?;
        let client = client(&server).await?;
        namespace(&client, namespace_name).await?;
        node(&client, "node-a", "zone-1").await?;
        Ok(Self {
            services: Api::namespaced(client.clone(), namespace_name),
            pods: Api::namespaced(client.clone(), namespace_name),
            slices: Api::namespaced(client.clone(), namespace_name),
            server,
            client,
        })
    }

    /// Creates Service `name` with `spec`.
    async fn service(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<Service> {
        let service: Service = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"team": "a"}}, "spec": spec}),
        )?;
        Ok(self
            .services
            .create(&PostParams::default(), &service)
            .await?)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slices_follow_readiness_and_termination() -> anyhow::Result<()> {
    let fixture = Fixture::start("shop").await?;
    let Fixture {
        server,
        client,
        pods,
        slices: slices_api,
        ..
    } = &fixture;
    let created = fixture
        .service(
            "web",
            json!({"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        )
        .await?;
    // A Service without a selector gets nothing from the controller.
    fixture
        .service("manual", json!({"ports": [{"port": 80}]}))
        .await?;
    pods.create(
        &PostParams::default(),
        &pod("web-1", json!({"app": "web"}), 8080)?,
    )
    .await?;

    // No pod has an address yet: one empty placeholder slice, owned by the Service.
    let placeholder = eventually(server, "a placeholder slice", || async {
        let found = slices(slices_api, "web").await?;
        Ok((found.len() == 1).then(|| found[0].clone()))
    })
    .await?;
    assert!(placeholder.endpoints.is_empty());
    let labels = placeholder.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(MANAGED_BY).map(String::as_str), Some(CONTROLLER));
    assert_eq!(
        labels.get("team").map(String::as_str),
        Some("a"),
        "the Service's labels"
    );
    assert!(
        placeholder
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .starts_with("web-")
    );
    let owner = &placeholder
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(Some(&owner.uid), created.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));

    // The kubelet gives the pod an address, not ready yet.
    set_pod_status(pods, "web-1", "10.244.1.5", false).await?;
    let (endpoint, ports) = eventually(server, "a not-ready endpoint", || async {
        Ok(endpoint_of(&slices(slices_api, "web").await?, "web-1"))
    })
    .await?;
    assert_eq!(
        conditions(&endpoint),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(endpoint.addresses, ["10.244.1.5"]);
    assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
    assert_eq!(endpoint.zone.as_deref(), Some("zone-1"));
    assert_eq!(
        ports,
        [8080],
        "the named target port resolved to the pod's port"
    );
    let slice_name = slices(slices_api, "web").await?[0].metadata.name.clone();

    // Ready.
    set_pod_status(pods, "web-1", "10.244.1.5", true).await?;
    eventually(server, "a ready endpoint", || async {
        let found = endpoint_of(&slices(slices_api, "web").await?, "web-1");
        Ok(found
            .filter(|(endpoint, _)| conditions(endpoint) == (Some(true), Some(true), Some(false))))
    })
    .await?;
    // The legacy v1 Endpoints object follows too, as kubectl shows it.
    let shown = eventually(server, "the pod in the Endpoints object", || async {
        let output = server.kubectl(&["get", "endpoints", "web", "-n", "shop", "-o",
            "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port} {.subsets[0].addresses[0].targetRef.name}"]);
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok((shown == "10.244.1.5:8080 web-1").then_some(shown))
    })
    .await?;
    assert_eq!(shown, "10.244.1.5:8080 web-1");

    // Deleted with a grace period: terminating, not ready, still serving while Ready holds.
    pods.delete("web-1", &DeleteParams::default().grace_period(30))
        .await?;
    eventually(server, "a terminating, serving endpoint", || async {
        let found = endpoint_of(&slices(slices_api, "web").await?, "web-1");
        Ok(found
            .filter(|(endpoint, _)| conditions(endpoint) == (Some(false), Some(true), Some(true))))
    })
    .await?;
    set_pod_status(pods, "web-1", "10.244.1.5", false).await?;
    eventually(
        server,
        "a terminating endpoint that no longer serves",
        || async {
            let found = endpoint_of(&slices(slices_api, "web").await?, "web-1");
            Ok(found.filter(|(endpoint, _)| {
                conditions(endpoint) == (Some(false), Some(false), Some(true))
            }))
        },
    )
    .await?;
    // The slice was updated in place all along.
    assert_eq!(
        slices(slices_api, "web").await?[0].metadata.name,
        slice_name
    );

    // The kubelet finishes the deletion: the endpoint goes (the slice is kept, empty).
    pods.delete("web-1", &DeleteParams::default().grace_period(0))
        .await?;
    eventually(server, "the endpoint gone", || async {
        let found = slices(slices_api, "web").await?;
        Ok((found.len() == 1 && found[0].endpoints.is_empty()).then_some(()))
    })
    .await?;
    assert!(
        slices(slices_api, "manual").await?.is_empty(),
        "no slices for a Service without selector"
    );

    // The API server's own slice for default/kubernetes is left alone.
    let defaults: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let kubernetes = defaults.get("kubernetes").await?;
    assert!(!kubernetes.labels().contains_key(MANAGED_BY));
    assert_eq!(slices(&defaults, "kubernetes").await?.len(), 1);

    // The Service goes: its slices follow (garbage collector, through the owner reference).
    fixture
        .services
        .delete("web", &DeleteParams::default())
        .await?;
    eventually(server, "the slices of a deleted Service gone", || async {
        Ok(slices(slices_api, "web").await?.is_empty().then_some(()))
    })
    .await?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "shop");
    eventually(
        server,
        "the Endpoints of a deleted Service gone",
        || async { Ok(endpoints.get_opt("web").await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn named_ports_and_hostnames() -> anyhow::Result<()> {
    let fixture = Fixture::start("shop").await?;
    let Fixture {
        server,
        pods,
        slices: slices_api,
        ..
    } = &fixture;
    fixture
        .service(
            "web",
            json!({"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        )
        .await?;
    // Headless, with the pods' subdomain: endpoints carry the pods' hostnames.
    fixture
        .service(
            "db",
            json!({"selector": {"app": "web"}, "clusterIP": "None",
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        )
        .await?;
    for (index, port) in [(1, 8080), (2, 9090), (3, 8080)] {
        let name = format!("web-{index}");
        let mut pod = pod(&name, json!({"app": "web"}), port)?;
        let spec = pod.spec.as_mut().expect("a spec");
        spec.hostname = Some(name.clone());
        spec.subdomain = Some("db".to_owned());
        pods.create(&PostParams::default(), &pod).await?;
        set_pod_status(pods, &name, &format!("10.244.1.{index}"), true).await?;
    }
    let found = eventually(server, "two slices, one per port number", || async {
        let found = slices(slices_api, "web").await?;
        let endpoints: usize = found.iter().map(|slice| slice.endpoints.len()).sum();
        Ok((found.len() == 2 && endpoints == 3).then_some(found))
    })
    .await?;
    let mut by_port: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for slice in &found {
        let ports: Vec<i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| port.port)
            .collect();
        assert_eq!(ports.len(), 1, "{slice:?}");
        let mut names: Vec<String> = slice
            .endpoints
            .iter()
            .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.clone())
            .collect();
        names.sort();
        by_port.insert(ports[0], names);
        assert_eq!(
            slice.ports.as_ref().expect("ports")[0].name.as_deref(),
            Some("http")
        );
        assert!(
            slice
                .endpoints
                .iter()
                .all(|endpoint| endpoint.hostname.is_none())
        );
    }
    assert_eq!(
        by_port,
        BTreeMap::from([
            (8080, vec!["web-1".to_owned(), "web-3".to_owned()]),
            (9090, vec!["web-2".to_owned()]),
        ])
    );
    let headless = eventually(server, "the headless Service's slices", || async {
        let found = slices(slices_api, "db").await?;
        let endpoints: usize = found.iter().map(|slice| slice.endpoints.len()).sum();
        Ok((endpoints == 3).then_some(found))
    })
    .await?;
    for slice in &headless {
        assert_eq!(
            slice
                .labels()
                .get("service.kubernetes.io/headless")
                .map(String::as_str),
            Some("")
        );
        for endpoint in &slice.endpoints {
            let pod = endpoint
                .target_ref
                .as_ref()
                .and_then(|target| target.name.clone());
            assert_eq!(endpoint.hostname, pod);
        }
    }

    // Relabelled out of the selector: the pod leaves the slices.
    let relabel = json!({"metadata": {"labels": {"app": "other"}}});
    pods.patch(
        "web-2",
        &Default::default(),
        &kube::api::Patch::Merge(relabel),
    )
    .await?;
    eventually(
        server,
        "the relabelled pod gone from the slices",
        || async {
            let found = slices(slices_api, "web").await?;
            let endpoints: usize = found.iter().map(|slice| slice.endpoints.len()).sum();
            Ok(
                (found.len() == 1 && endpoints == 2 && endpoint_of(&found, "web-2").is_none())
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_a_hundred_pods_split_into_slices() -> anyhow::Result<()> {
    const PODS: usize = 150;
    let fixture = Fixture::start("big").await?;
    let Fixture {
        server,
        pods,
        slices: slices_api,
        ..
    } = &fixture;
    fixture
        .service(
            "web",
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        )
        .await?;
    futures::stream::iter(0..PODS)
        .map(|index| {
            let pods = pods.clone();
            async move {
                let name = format!("web-{index}");
                pods.create(
                    &PostParams::default(),
                    &pod(&name, json!({"app": "web"}), 8080)?,
                )
                .await?;
                let ip = format!("10.244.{}.{}", index / 200, index % 200 + 1);
                set_pod_status(&pods, &name, &ip, true).await
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let found = eventually(server, "every pod in a slice", || async {
        let found = slices(slices_api, "web").await?;
        let endpoints: usize = found.iter().map(|slice| slice.endpoints.len()).sum();
        Ok((endpoints == PODS).then_some(found))
    })
    .await?;
    assert!(found.len() >= 2, "150 endpoints need two slices at least");
    assert!(found.iter().all(|slice| slice.endpoints.len() <= 100));
    assert!(
        found
            .iter()
            .flat_map(|slice| &slice.endpoints)
            .all(|endpoint| conditions(endpoint).0 == Some(true))
    );
    // Converged means settled: no slice is rewritten while nothing changes.
    let versions = |slices: &[EndpointSlice]| {
        let mut versions: Vec<_> = slices
            .iter()
            .map(|slice| (slice.name_any(), slice.resource_version()))
            .collect();
        versions.sort();
        versions
    };
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        versions(&slices(slices_api, "web").await?),
        versions(&found)
    );

    // One pod leaves: exactly one slice changes, in place.
    pods.delete("web-7", &DeleteParams::default().grace_period(0))
        .await?;
    let after = eventually(server, "the deleted pod out of its slice", || async {
        let after = slices(slices_api, "web").await?;
        Ok(endpoint_of(&after, "web-7").is_none().then_some(after))
    })
    .await?;
    let before = versions(&found);
    let changed = versions(&after)
        .iter()
        .filter(|version| !before.contains(version))
        .count();
    assert_eq!((after.len(), changed), (found.len(), 1));
    Ok(())
}

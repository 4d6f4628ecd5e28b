//! kubectl's everyday commands against the API server.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{APP, DEMO_NAMESPACE, TestApiServer};

#[tokio::test(flavor = "multi_thread")]
async fn version_and_api_resources() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let version = server.ok(&["version"]);
    assert!(
        version.contains("Server Version: v1.33.0+keel-"),
        "{version}"
    );
    let resources = server.ok(&["api-resources"]);
    for row in [
        ["deployments", "deploy", "apps/v1", "true", "Deployment"],
        ["pods", "po", "v1", "true", "Pod"],
        ["namespaces", "ns", "v1", "false", "Namespace"],
        [
            "networkpolicies",
            "netpol",
            "networking.k8s.io/v1",
            "true",
            "NetworkPolicy",
        ],
    ] {
        assert!(
            resources
                .lines()
                .any(|line| line.split_whitespace().collect::<Vec<_>>() == row),
            "no row {row:?} in:\n{resources}"
        );
    }
    // The system namespaces and the kubernetes Service exist from the start.
    let namespaces = server.ok(&["get", "namespaces", "-o", "name"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{name}")),
            "{namespaces}"
        );
    }
    let cluster_ip = server.ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(cluster_ip, "10.96.0.1");
    let endpoints = server.ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[0].addresses[0]}:{.ports[0].port}",
    ]);
    assert_eq!(endpoints, format!("127.0.0.1:{}", server.port));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_label_annotate_scale_and_delete() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let created = server.ok_with_input(&["create", "-f", "-"], DEMO_NAMESPACE);
    assert_eq!(created.trim(), "namespace/demo created");
    let applied = server.ok_with_input(&["apply", "-f", "-"], APP);
    for line in [
        "deployment.apps/web created",
        "service/web created",
        "configmap/web-config created",
        "secret/web-secret created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }

    // Upstream's columns, from the server-side Table.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, namespace: demo}\nspec: {containers: [{name: c, image: busybox}]}\n";
    server.ok_with_input(&["create", "-f", "-"], pod);
    // The deployment controller makes the Deployment's one pod (no node runs it here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while web_field(&server, "{.status.updatedReplicas}") != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the deployment controller did not create the pod"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let wide = server.ok(&["get", "pods,deploy,svc", "-n", "demo", "-o", "wide"]);
    let rows: Vec<Vec<&str>> = wide
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .collect()
        })
        .collect();
    let has_row = |expected: &[&str]| {
        rows.iter().any(|row| {
            row.len() == expected.len()
                && row
                    .iter()
                    .zip(expected)
                    .all(|(cell, want)| want.is_empty() || cell == want)
        })
    };
    for expected in [
        &[
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES",
        ][..],
        &[
            "pod/solo", "0/1", "Pending", "0", "", "<none>", "<none>", "<none>", "<none>",
        ],
        &[
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ],
        &[
            "deployment.apps/web",
            "0/1",
            "1",
            "0",
            "",
            "web",
            "registry.local/busybox:1.36",
            "app=web",
        ],
        &[
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR",
        ],
    ] {
        assert!(has_row(expected), "no row {expected:?} in:\n{wide}");
    }
    assert!(
        rows.iter().any(|row| row.first() == Some(&"service/web")
            && row[1] == "NodePort"
            && row[3] == "<none>"
            && row[4].starts_with("80:")
            && row[4].ends_with("/TCP")),
        "{wide}"
    );

    // Upstream defaults on the stored Deployment.
    let yaml = server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "yaml"]);
    for expected in [
        "maxSurge: 25%",
        "maxUnavailable: 25%",
        "type: RollingUpdate",
        "revisionHistoryLimit: 10",
        "progressDeadlineSeconds: 600",
        "replicas: 1",
        "imagePullPolicy: IfNotPresent",
        "terminationMessagePath: /dev/termination-log",
        "dnsPolicy: ClusterFirst",
        "protocol: TCP",
        "generation: 1",
    ] {
        assert!(yaml.contains(expected), "{expected} missing from:\n{yaml}");
    }
    // The Service got a ClusterIP from 10.96.0.0/12 and a NodePort from 30000-32767.
    let service = server.ok(&[
        "get",
        "svc",
        "web",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort} {.spec.ports[0].targetPort}",
    ]);
    let fields: Vec<&str> = service.split(' ').collect();
    let ip: std::net::Ipv4Addr = fields[0].parse()?;
    assert_eq!(ip.octets()[0], 10);
    assert!((96..112).contains(&ip.octets()[1]), "{service}");
    let node_port: u16 = fields[1].parse()?;
    assert!((30000..=32767).contains(&node_port), "{service}");
    assert_eq!(fields[2], "8080");
    // stringData became base64 data.
    let secret = server.ok(&[
        "get",
        "secret",
        "web-secret",
        "-n",
        "demo",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(secret, "czNjcmV0");

    // A second apply with a changed image: a new generation, and the rest unchanged.
    let changed = APP.replace("busybox:1.36", "busybox:1.37");
    let applied = server.ok_with_input(&["apply", "-f", "-"], &changed);
    assert!(
        applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    assert!(
        applied.contains("configmap/web-config unchanged"),
        "{applied}"
    );
    let state = web_field(
        &server,
        "{.spec.template.spec.containers[0].image} {.metadata.generation}",
    );
    assert_eq!(state, "registry.local/busybox:1.37 2");

    assert_eq!(
        server
            .ok(&["label", "deploy", "web", "-n", "demo", "tier=front"])
            .trim(),
        "deployment.apps/web labeled"
    );
    assert_eq!(
        server
            .ok(&["annotate", "deploy", "web", "-n", "demo", "note=x"])
            .trim(),
        "deployment.apps/web annotated"
    );
    assert_eq!(
        server
            .ok(&["scale", "deploy", "web", "-n", "demo", "--replicas=5"])
            .trim(),
        "deployment.apps/web scaled"
    );
    let state = web_field(
        &server,
        "{.spec.replicas} {.metadata.generation} {.metadata.labels.tier} {.metadata.annotations.note}",
    );
    assert_eq!(
        state, "5 3 front x",
        "labels and annotations do not bump the generation"
    );
    let restarted = server.ok(&["rollout", "restart", "deploy", "web", "-n", "demo"]);
    assert!(
        restarted.contains("deployment.apps/web restarted"),
        "{restarted}"
    );
    let annotation = web_field(&server, "{.spec.template.metadata.annotations}");
    assert!(
        annotation.contains("kubectl.kubernetes.io/restartedAt"),
        "{annotation}"
    );

    let selected = server.ok(&[
        "get",
        "deploy",
        "-n",
        "demo",
        "-l",
        "tier=front",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), "deployment.apps/web");
    assert_eq!(
        server
            .ok(&[
                "get",
                "deploy",
                "-n",
                "demo",
                "-l",
                "tier!=front",
                "-o",
                "name"
            ])
            .trim(),
        ""
    );
    let by_field = server.ok(&[
        "get",
        "cm",
        "-n",
        "demo",
        "--field-selector",
        "metadata.name=web-config",
        "-o",
        "name",
    ]);
    assert_eq!(by_field.trim(), "configmap/web-config");
    let bad_field = server.fails(&[
        "get",
        "cm",
        "-n",
        "demo",
        "--field-selector",
        "spec.nodeName=x",
    ]);
    assert!(
        bad_field.contains("field label not supported: spec.nodeName"),
        "{bad_field}"
    );

    let deleted = server.ok(&["delete", "deploy", "web", "-n", "demo"]);
    assert_eq!(deleted.trim(), "deployment.apps \"web\" deleted");
    let missing = server.fails(&["get", "deploy", "web", "-n", "demo"]);
    assert!(
        missing.contains("deployments.apps \"web\" not found"),
        "{missing}"
    );
    // Deleting the Service freed its ClusterIP and NodePort: asking for both again works.
    server.ok(&["delete", "svc", "web", "-n", "demo"]);
    let reuse = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: again, namespace: demo}}\nspec: {{type: NodePort, clusterIP: {ip}, ports: [{{port: 80, nodePort: {node_port}}}]}}\n"
    );
    server.ok_with_input(&["create", "-f", "-"], &reuse);

    // Deleting the namespace deletes what is in it, then the namespace; an object with a
    // finalizer holds it, and the namespace's conditions say so, as upstream's.
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: demo, finalizers: [example.com/hold]}\n";
    server.ok_with_input(&["create", "-f", "-"], held);
    let deleting = server.ok(&["delete", "ns", "demo", "--wait=false"]);
    assert_eq!(deleting.trim(), "namespace \"demo\" deleted");
    let condition = |kind: &str| {
        server.ok(&[
            "get",
            "ns",
            "demo",
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].message}}"),
        ])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition("NamespaceFinalizersRemaining").contains("example.com/hold in 1 resource") {
        assert!(
            std::time::Instant::now() < deadline,
            "no NamespaceFinalizersRemaining condition: {}",
            server.ok(&["get", "ns", "demo", "-o", "yaml"])
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        condition("NamespaceContentRemaining"),
        "Some resources are remaining: configmaps. has 1 resource instances"
    );
    let phase = server.ok(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Terminating");
    let left = server.ok(&["get", "all,cm,secrets", "-n", "demo", "-o", "name"]);
    assert_eq!(
        left.trim(),
        "configmap/held",
        "only the held object is left"
    );
    server.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    // Succeeds at once (printing nothing) if the namespace went before kubectl looked.
    server.ok(&["wait", "--for=delete", "ns/demo", "--timeout=60s"]);
    let missing = server.fails(&["get", "ns", "demo"]);
    assert!(
        missing.contains("namespaces \"demo\" not found"),
        "{missing}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_strict_field_validation() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let explained = server.ok(&["explain", "pod.spec.restartPolicy"]);
    assert!(explained.contains("KIND:       Pod"), "{explained}");
    assert!(
        explained.contains("FIELD: restartPolicy <string>"),
        "{explained}"
    );
    let deployment = server.ok(&["explain", "deployment.spec.strategy"]);
    assert!(deployment.contains("GROUP:      apps"), "{deployment}");
    assert!(deployment.contains("rollingUpdate"), "{deployment}");

    server.ok_with_input(&["create", "-f", "-"], DEMO_NAMESPACE);
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: demo, lables: {a: b}}\ndata: {a: b}\n";
    // kubectl validates strictly through the server by default...
    let error = server.fails_with_input(&["apply", "-f", "-"], typo);
    assert!(
        error.contains("strict decoding error: unknown field \"metadata.lables\""),
        "{error}"
    );
    // ...warns with --validate=warn, and the unknown field is dropped.
    let output = server.kubectl_with_input(&["apply", "--validate=warn", "-f", "-"], typo);
    assert!(output.status.success());
    let warning = String::from_utf8_lossy(&output.stderr);
    assert!(
        warning.contains("unknown field \"metadata.lables\""),
        "{warning}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "cm", "typo", "-n", "demo", "-o", "json"]))?;
    assert!(stored["metadata"].get("lables").is_none(), "{stored}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn get_watch_streams_changes() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    server.ok_with_input(&["create", "-f", "-"], DEMO_NAMESPACE);
    let mut watch = Command::new("kubectl")
        .args([
            "get",
            "configmaps",
            "-n",
            "demo",
            "-w",
            "-o",
            "name",
            "--request-timeout=0",
        ])
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", server.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The watch is open once kubectl has listed; create after a moment and read the line.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.ok_with_input(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: streamed, namespace: demo}\n",
    );
    let stdout = watch.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout).lines().next()
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await;
    let _ = watch.kill();
    let _ = watch.wait();
    let line = line.expect("a watch event within 30s")?.expect("a line")?;
    assert_eq!(line.trim(), "configmap/streamed");
    Ok(())
}

/// A jsonpath of the `demo/web` Deployment.
fn web_field(server: &TestApiServer, jsonpath: &str) -> String {
    server.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "demo",
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// Waits for a background kubectl that must succeed; its trimmed stdout.
async fn finished(child: std::process::Child) -> anyhow::Result<String> {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_condition_and_delete() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    server.ok_with_input(&["create", "-f", "-"], DEMO_NAMESPACE);
    server.ok_with_input(&["apply", "-f", "-"], APP);
    let kubeconfig = server.kubeconfig();
    let home = server.data_dir().to_owned();
    let wait = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let available = wait(&[
        "wait",
        "-n",
        "demo",
        "--for=condition=Available",
        "deploy/web",
        "--timeout=60s",
    ])?;
    let gone = wait(&[
        "wait",
        "-n",
        "demo",
        "--for=delete",
        "configmap/web-config",
        "--timeout=60s",
    ])?;
    // Both waits list, then watch; the changes come after they started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = r#"{"status":{"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}]}}"#;
    server.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    server.ok(&["delete", "configmap", "web-config", "-n", "demo"]);
    assert_eq!(
        finished(available).await?,
        "deployment.apps/web condition met"
    );
    assert_eq!(finished(gone).await?, "configmap/web-config condition met");
    // The status patch changed only the status.
    let generation = web_field(&server, "{.metadata.generation}");
    assert_eq!(generation, "1");
    Ok(())
}

/// kubectl's generators send protobuf bodies.
#[tokio::test(flavor = "multi_thread")]
async fn create_generators_and_run() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let commands: &[&[&str]] = &[
        &["create", "namespace", "gen"],
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "gen",
            "--from-literal=mode=fast",
        ],
        &[
            "create",
            "secret",
            "generic",
            "token",
            "-n",
            "gen",
            "--from-literal=key=s3cret",
        ],
        &["create", "serviceaccount", "robot", "-n", "gen"],
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "gen",
            "--image=registry.local/busybox:1.36",
            "--replicas=2",
            "--port=8080",
        ],
        &[
            "expose",
            "deployment",
            "web",
            "-n",
            "gen",
            "--port=80",
            "--target-port=8080",
        ],
        &[
            "create",
            "service",
            "nodeport",
            "edge",
            "-n",
            "gen",
            "--tcp=443:8443",
        ],
        &[
            "run",
            "once",
            "-n",
            "gen",
            "--image=registry.local/busybox:1.36",
            "--restart=Never",
            "--env=A=1",
            "--",
            "sleep",
            "5",
        ],
        &[
            "create",
            "job",
            "batch",
            "-n",
            "gen",
            "--image=registry.local/busybox:1.36",
        ],
        &[
            "create",
            "cronjob",
            "tick",
            "-n",
            "gen",
            "--image=registry.local/busybox:1.36",
            "--schedule=*/5 * * * *",
        ],
        &[
            "create",
            "role",
            "reader",
            "-n",
            "gen",
            "--verb=get,list",
            "--resource=pods",
        ],
        &[
            "create",
            "rolebinding",
            "readers",
            "-n",
            "gen",
            "--role=reader",
            "--user=jane",
        ],
        &[
            "create",
            "ingress",
            "front",
            "-n",
            "gen",
            "--rule=example.com/api=web:80",
        ],
    ];
    for command in commands {
        server.ok(command);
    }
    let checks: &[(&[&str], &str)] = &[
        (
            &["get", "ns", "gen", "-o", "jsonpath={.status.phase}"],
            "Active",
        ),
        (
            &[
                "get",
                "cm",
                "settings",
                "-n",
                "gen",
                "-o",
                "jsonpath={.data.mode}",
            ],
            "fast",
        ),
        (
            &[
                "get",
                "secret",
                "token",
                "-n",
                "gen",
                "-o",
                "jsonpath={.data.key}",
            ],
            "czNjcmV0",
        ),
        (
            &[
                "get",
                "deploy",
                "web",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.selector.matchLabels.app}",
            ],
            "2 8080 web",
        ),
        (
            &[
                "get",
                "svc",
                "web",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.app}",
            ],
            "80 8080 web",
        ),
        (
            &[
                "get",
                "svc",
                "edge",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.type} {.spec.ports[0].targetPort}",
            ],
            "NodePort 8443",
        ),
        (
            &[
                "get",
                "pod",
                "once",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.restartPolicy} {.spec.containers[0].args} {.spec.containers[0].env[0].value}",
            ],
            "Never [\"sleep\",\"5\"] 1",
        ),
        (
            &[
                "get",
                "job",
                "batch",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.template.spec.restartPolicy} {.spec.backoffLimit}",
            ],
            "Never 6",
        ),
        (
            &[
                "get",
                "cronjob",
                "tick",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.schedule}",
            ],
            "*/5 * * * *",
        ),
        (
            &[
                "get",
                "role",
                "reader",
                "-n",
                "gen",
                "-o",
                "jsonpath={.rules[0].verbs}",
            ],
            "[\"get\",\"list\"]",
        ),
        (
            &[
                "get",
                "rolebinding",
                "readers",
                "-n",
                "gen",
                "-o",
                "jsonpath={.roleRef.name} {.subjects[0].name} {.subjects[0].apiGroup}",
            ],
            "reader jane rbac.authorization.k8s.io",
        ),
        (
            &[
                "get",
                "ingress",
                "front",
                "-n",
                "gen",
                "-o",
                "jsonpath={.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.port.number}",
            ],
            "example.com 80",
        ),
    ];
    for (command, expected) in checks {
        assert_eq!(server.ok(command), *expected, "kubectl {command:?}");
    }
    Ok(())
}

//! The API server as real clients see it: a real etcd, the real `keel-controlplane` binary,
//! and the preinstalled kubectl with the generated admin kubeconfig.

#[path = "../support/etcd.rs"]
mod etcd;
#[path = "../support/apiserver.rs"]
mod server;

mod clients;
mod errors;
mod jobs;
mod kubectl;

pub use server::TestApiServer;

/// A Deployment, a NodePort Service, a ConfigMap and a Secret in `demo`.
pub const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/busybox:1.36
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: demo}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret, namespace: demo}
stringData: {password: s3cret}
"#;

pub const DEMO_NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";

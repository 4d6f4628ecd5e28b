//! Column definitions per resource, as upstream's printers declare them; `priority: 1`
//! columns are the `-o wide` ones.

use crate::api::ResourceInfo;

pub(super) struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
    pub format: &'static str,
}

const fn column(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        priority: 0,
        format: "",
    }
}

const fn wide(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        priority: 1,
        format: "",
    }
}

const fn integer(name: &'static str) -> Column {
    Column {
        name,
        kind: "integer",
        priority: 0,
        format: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    priority: 0,
    format: "name",
};

pub(super) fn columns(info: &ResourceInfo) -> Vec<Column> {
    match (info.group, info.plural) {
        ("", "pods") => vec![
            NAME,
            column("Ready"),
            column("Status"),
            column("Restarts"),
            column("Age"),
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        ("apps", "deployments") => vec![
            NAME,
            column("Ready"),
            integer("Up-to-date"),
            integer("Available"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("apps", "replicasets") => vec![
            NAME,
            integer("Desired"),
            integer("Current"),
            integer("Ready"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("apps", "statefulsets") => vec![
            NAME,
            column("Ready"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
        ],
        ("apps", "daemonsets") => vec![
            NAME,
            integer("Desired"),
            integer("Current"),
            integer("Ready"),
            integer("Up-to-date"),
            integer("Available"),
            column("Node Selector"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("", "services") => vec![
            NAME,
            column("Type"),
            column("Cluster-IP"),
            column("External-IP"),
            column("Port(s)"),
            column("Age"),
            wide("Selector"),
        ],
        ("", "nodes") => vec![
            NAME,
            column("Status"),
            column("Roles"),
            column("Age"),
            column("Version"),
            wide("Internal-IP"),
            wide("External-IP"),
            wide("OS-Image"),
            wide("Kernel-Version"),
            wide("Container-Runtime"),
        ],
        ("", "endpoints") => vec![NAME, column("Endpoints"), column("Age")],
        ("discovery.k8s.io", "endpointslices") => vec![
            NAME,
            column("AddressType"),
            column("Ports"),
            column("Endpoints"),
            column("Age"),
        ],
        ("", "namespaces") => vec![NAME, column("Status"), column("Age")],
        ("", "configmaps") => vec![NAME, integer("Data"), column("Age")],
        ("", "secrets") => vec![NAME, column("Type"), integer("Data"), column("Age")],
        ("", "serviceaccounts") => vec![NAME, integer("Secrets"), column("Age")],
        ("", "events") => vec![
            column("Last Seen"),
            column("Type"),
            column("Reason"),
            column("Object"),
            wide("Subobject"),
            wide("Source"),
            column("Message"),
            wide("First Seen"),
            wide("Count"),
            wide("Name"),
        ],
        ("batch", "jobs") => vec![
            NAME,
            column("Status"),
            column("Completions"),
            column("Duration"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            column("Schedule"),
            column("Timezone"),
            column("Suspend"),
            integer("Active"),
            column("Last Schedule"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("coordination.k8s.io", "leases") => vec![NAME, column("Holder"), column("Age")],
        ("networking.k8s.io", "ingresses") => vec![
            NAME,
            column("Class"),
            column("Hosts"),
            column("Address"),
            column("Ports"),
            column("Age"),
        ],
        ("networking.k8s.io", "ingressclasses") => vec![
            NAME,
            column("Controller"),
            column("Parameters"),
            column("Age"),
        ],
        ("networking.k8s.io", "networkpolicies") => {
            vec![NAME, column("Pod-Selector"), column("Age")]
        }
        ("", "persistentvolumes") => vec![
            NAME,
            column("Capacity"),
            column("Access Modes"),
            column("Reclaim Policy"),
            column("Status"),
            column("Claim"),
            column("StorageClass"),
            column("VolumeAttributesClass"),
            column("Reason"),
            column("Age"),
            wide("VolumeMode"),
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            column("Status"),
            column("Volume"),
            column("Capacity"),
            column("Access Modes"),
            column("StorageClass"),
            column("VolumeAttributesClass"),
            column("Age"),
            wide("VolumeMode"),
        ],
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            NAME,
            column("Role"),
            column("Age"),
            wide("Users"),
            wide("Groups"),
            wide("ServiceAccounts"),
        ],
        _ => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                priority: 0,
                format: "",
            },
        ],
    }
}

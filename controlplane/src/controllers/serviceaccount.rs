//! The ServiceAccount controller, as upstream's `serviceaccounts-controller`: every active
//! namespace has a ServiceAccount named `default`, created again if it is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

/// Why a namespace could not be given its ServiceAccount.
#[derive(Debug, thiserror::Error)]
#[error("creating serviceaccount {namespace}/{DEFAULT} failed")]
pub struct Error {
    namespace: String,
    #[source]
    source: kube::Error,
}

struct Context {
    client: Client,
}

/// Runs the controller until its watches end (they do not, short of a panic).
pub async fn run(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let results = Controller::new(namespaces, watcher::Config::default())
        // A deleted `default` ServiceAccount brings its namespace back for another look.
        .watches(
            accounts,
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
            |account| {
                account
                    .namespace()
                    .map(|namespace| ObjectRef::<Namespace>::new(&namespace))
            },
        )
        .run(reconcile, error_policy, Arc::new(Context { client }));
    super::drive("serviceaccount controller", results).await;
}

fn error_policy(_: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    log::warn!("serviceaccount controller: {}", super::chain(error));
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(namespace: Arc<Namespace>, context: Arc<Context>) -> Result<Action, Error> {
    let phase = namespace
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref());
    // A namespace being deleted gets nothing new (the API server would refuse it anyway).
    if namespace.metadata.deletion_timestamp.is_some() || phase == Some("Terminating") {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let accounts: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.get_opt(DEFAULT).await {
        Ok(Some(_)) => return Ok(Action::await_change()),
        Ok(None) => {}
        Err(source) => {
            return Err(Error {
                namespace: name,
                source,
            });
        }
    }
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => log::info!("serviceaccount {name}/{DEFAULT} created"),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        // The namespace started terminating meanwhile.
        Err(kube::Error::Api(status)) if status.is_forbidden() || status.is_not_found() => {}
        Err(source) => {
            return Err(Error {
                namespace: name,
                source,
            });
        }
    }
    Ok(Action::await_change())
}

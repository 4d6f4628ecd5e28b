//! The ServiceAccount controller: every namespace gets a `default` ServiceAccount, again if
//! it is deleted.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams};

use crate::{TestApiServer, client, eventually, namespace};

#[tokio::test(flavor = "multi_thread")]
async fn every_namespace_gets_a_default_serviceaccount() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let client = client(&server).await?;
    // The system namespaces too.
    for system in ["default", "kube-system"] {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), system);
        eventually(&server, &format!("{system}/default"), || async {
            accounts.get_opt("default").await.map_err(Into::into)
        })
        .await?;
    }
    namespace(&client, "team").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let first = eventually(&server, "team/default", || async {
        accounts.get_opt("default").await.map_err(Into::into)
    })
    .await?;
    // kubectl sees it as users do.
    assert!(
        server
            .ok(&["get", "serviceaccounts", "-n", "team"])
            .contains("default")
    );

    accounts.delete("default", &DeleteParams::default()).await?;
    let again = eventually(&server, "team/default created again", || async {
        let found = accounts.get_opt("default").await?;
        Ok(found.filter(|account| account.uid() != first.uid()))
    })
    .await?;
    assert_eq!(again.name_any(), "default");
    Ok(())
}

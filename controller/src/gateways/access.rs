//! The waypoints' read access to the mesh. A waypoint reads what weftd reads (namespaces,
//! pods, services, endpoint slices, policies, cluster-wide: a client of any namespace may
//! call it, and policies of the root namespace apply to it), the routes, and the mesh root.
//! The chart's ClusterRole `weft-waypoint` grants that; the ClusterRoleBinding of the same
//! name is kept here, with one subject per ServiceAccount this controller made for a
//! `weft-waypoint` Gateway.
//!
//! - One binding for all waypoints: a cluster-scoped object cannot be owned by a namespaced
//!   Gateway, so the garbage collector could never remove per-Gateway bindings; one binding
//!   whose subjects are recomputed from the set goes with the chart.
//! - Only accounts the controller made (controlled by their Gateway): a Gateway named after
//!   an account that already exists (`default`, say) must not hand that account the mesh's
//!   read view. Such a Gateway's status says so (see `super::keep`).
//! - The chart creates the binding; the controller only patches its subjects, so its own
//!   RBAC is `patch` on that one name and `bind` on that one role.
//! - Nothing is written before both watches have listed once: an empty first view would
//!   otherwise strip every waypoint of its access during a controller restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Subject};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::follow::follow;

use super::{APP, CLASS, Gateway, MANAGED_BY_LABEL, MANAGER, NAME_LABEL, controlled_by};

/// The ClusterRole and ClusterRoleBinding the chart makes, both of this name.
pub const BINDING: &str = "weft-waypoint";
/// The accounts to bind, as (namespace, name), sorted: those made by this controller for a
/// waypoint Gateway that still exists and is not being deleted.
pub fn wanted(
    gateways: &[Arc<Gateway>],
    accounts: &[Arc<ServiceAccount>],
) -> Vec<(String, String)> {
    let waypoints: BTreeSet<(String, String)> = gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == CLASS && g.meta().deletion_timestamp.is_none())
        .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
        .collect();
    let made = accounts
        .iter()
        .filter(|a| {
            let labels = a.labels();
            labels.get(NAME_LABEL).map(String::as_str) == Some(APP)
                && labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
                && controlled_by(a.as_ref(), &a.name_any())
        })
        .map(|a| (a.namespace().unwrap_or_default(), a.name_any()));
    let bound: BTreeSet<(String, String)> = made.filter(|key| waypoints.contains(key)).collect();
    bound.into_iter().collect()
}

fn subject_key(s: &Subject) -> Option<(String, String)> {
    (s.kind == "ServiceAccount").then(|| (s.namespace.clone().unwrap_or_default(), s.name.clone()))
}

/// Keeps the binding's subjects current until `stop`.
pub async fn run(client: Client, errors: Counter, stop: CancellationToken) {
    let (gateways, gateways_writer) = reflector::store::<Gateway>();
    let (accounts, accounts_writer) = reflector::store::<ServiceAccount>();
    let labels = format!("{NAME_LABEL}={APP},{MANAGED_BY_LABEL}={MANAGER}");
    let gateway_events = reflector::reflector(
        gateways_writer,
        watcher(
            Api::<Gateway>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| {
        e.map(|_| ())
            .map_err(|e| format!("watching Gateways (are Gateway API's CRDs installed?): {e}"))
    });
    let account_events = reflector::reflector(
        accounts_writer,
        watcher(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default().labels(&labels),
        ),
    )
    .default_backoff()
    .map(|e| {
        e.map(|_| ())
            .map_err(|e| format!("watching waypoint ServiceAccounts: {e}"))
    });
    let ready = {
        let (gateways, accounts) = (gateways.clone(), accounts.clone());
        async move {
            let _ = tokio::join!(gateways.wait_until_ready(), accounts.wait_until_ready());
        }
    };
    let api: Api<ClusterRoleBinding> = Api::all(client);
    follow(
        stream::select(gateway_events, account_events).boxed(),
        ready.boxed(),
        stop,
        errors,
        &format!("keeping waypoint access (ClusterRoleBinding {BINDING})"),
        || {
            let want = wanted(&gateways.state(), &accounts.state());
            let api = api.clone();
            async move { write(&api, &want).await.map_err(|e| e.to_string()) }
        },
    )
    .await;
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(
        "it does not exist: the chart makes it; without it no waypoint can read the mesh (reinstall or upgrade the chart)"
    )]
    Missing,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Patches the subjects when they differ from `want`.
async fn write(api: &Api<ClusterRoleBinding>, want: &[(String, String)]) -> Result<(), WriteError> {
    let have = api.get_opt(BINDING).await?.ok_or(WriteError::Missing)?;
    let have: Vec<Option<(String, String)>> = have
        .subjects
        .unwrap_or_default()
        .iter()
        .map(subject_key)
        .collect();
    if have.len() == want.len() && have.iter().zip(want).all(|(h, w)| h.as_ref() == Some(w)) {
        return Ok(());
    }
    let subjects: Vec<Subject> = want
        .iter()
        .map(|(namespace, name)| Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.clone(),
            namespace: Some(namespace.clone()),
            api_group: Some(String::new()),
        })
        .collect();
    // A merge patch replaces the whole list, which is what is meant: the set is ours.
    api.patch(
        BINDING,
        &PatchParams::default(),
        &Patch::Merge(json!({"subjects": subjects})),
    )
    .await?;
    info!(
        waypoints = want.len(),
        "waypoint access updated (ClusterRoleBinding {BINDING})"
    );
    debug!(?want, "bound waypoint accounts");
    Ok(())
}

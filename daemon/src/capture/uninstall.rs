//! `weftd capture uninstall`: undo what capture installed, so that the node is as it was
//! before weft. Everything it removes is idempotent to remove; a second run finds nothing.

use std::path::Path;

use anyhow::Context;

use super::bpf::ProgramSettings;
use super::netlink::{Routing, TABLE};
use super::pin;

pub fn run(pin_path: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let removed = rt.block_on(remove(pin_path))?;
    for what in &removed {
        println!("{what}");
    }
    if removed.is_empty() {
        println!(
            "nothing to remove: no capture state at {}",
            pin_path.display()
        );
    } else {
        println!("capture removed; pods' connections go direct");
    }
    Ok(())
}

/// Removes the pinned links and maps under `pin_path` and the capture routing in this network
/// namespace; says what it removed.
pub async fn remove(pin_path: &Path) -> anyhow::Result<Vec<String>> {
    let removed = pin::uninstall(pin_path)?;
    let mut said: Vec<String> = Vec::new();
    said.extend(removed.links.iter().map(|n| format!("unpinned link {n}")));
    said.extend(removed.maps.iter().map(|n| format!("unpinned map {n}")));
    let routing = Routing::new(ProgramSettings::default().capture_mark, TABLE)?;
    for what in routing.uninstall().await? {
        said.push(format!("removed the capture {what}"));
    }
    Ok(said)
}

/// Follows weftd's own DaemonSet from the start and remembers a deletion it sees. By the time
/// weftd is stopped the API server may no longer answer it: Helm removes weftd's RBAC and
/// service account right after the DaemonSet, while an established watch keeps streaming.
pub fn watch_daemonset(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    stop: tokio_util::sync::CancellationToken,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let deleted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let seen = deleted.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.next() => e,
            };
            let going = match event {
                None => return,
                Some(Ok(watcher::Event::Delete(_))) => true,
                Some(Ok(watcher::Event::Apply(ds) | watcher::Event::InitApply(ds))) => {
                    ds.metadata.deletion_timestamp.is_some()
                }
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    tracing::debug!("watching weftd's DaemonSet: {e}");
                    false
                }
            };
            if going {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    deleted
}

/// Whether weftd's DaemonSet is gone or going: then this stop is an uninstall, not a rolling
/// update, and capture must not outlive weftd. When the API server cannot tell, the answer is
/// no: pinned capture failing closed is the safe side, and `weftd capture uninstall` remains.
pub async fn daemonset_gone(client: &kube::Client, namespace: &str, name: &str) -> bool {
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(None) => true,
        Ok(Some(ds)) => ds.metadata.deletion_timestamp.is_some(),
        Err(e) => {
            tracing::warn!(
                "cannot tell whether DaemonSet {namespace}/{name} still exists ({e}); keeping capture pinned"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weft_core::discovery::cluster::fake::FakeApi;

    use super::daemonset_gone;

    #[tokio::test]
    async fn only_a_deleted_daemonset_means_uninstall() {
        let api = FakeApi::default();
        let client = kube::Client::new(api.clone(), "default");
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "metadata": {"namespace": "weft", "name": "weftd"},
                        "spec": {"selector": {}, "template": {}}});
        api.apply(ds.clone());
        assert!(
            !daemonset_gone(&client, "weft", "weftd").await,
            "a rolling update"
        );
        let mut deleting = ds;
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-03T12:00:00Z");
        api.apply(deleting);
        assert!(
            daemonset_gone(&client, "weft", "weftd").await,
            "foreground deletion"
        );
        api.delete("DaemonSet", "weft/weftd");
        assert!(daemonset_gone(&client, "weft", "weftd").await, "deleted");
        api.set_down(true);
        assert!(
            !daemonset_gone(&client, "weft", "weftd").await,
            "unknown: keep capture"
        );
    }

    #[tokio::test]
    async fn a_deletion_seen_while_running_is_remembered_when_the_api_is_gone() {
        use std::sync::atomic::Ordering;
        use std::time::Duration;
        let api = FakeApi::default();
        let client = kube::Client::new(api.clone(), "default");
        for name in ["weftd", "other"] {
            api.apply(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                             "metadata": {"namespace": "weft", "name": name},
                             "spec": {"selector": {}, "template": {}}}));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let deleted = super::watch_daemonset(&client, "weft", "weftd", stop.clone());
        let watching = async {
            while api.watching("daemonsets") == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), watching)
            .await
            .unwrap();
        api.delete("DaemonSet", "weft/other");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!deleted.load(Ordering::Relaxed), "another DaemonSet");
        api.delete("DaemonSet", "weft/weftd");
        let seen = async {
            while !deleted.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .unwrap();
        // Its RBAC gone too: the stop-time question fails, the remembered deletion decides.
        api.set_down(true);
        assert!(!daemonset_gone(&client, "weft", "weftd").await);
        stop.cancel();
    }
}

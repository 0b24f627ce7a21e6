//! What every watch of pie-controller shares: the scope (one namespace or all), the label
//! selectors of the objects it manages, and how watch errors are handled. kube-runtime's
//! watcher retries with backoff by itself (`default_backoff`), so an error is only logged;
//! consumers see the events alone.

use futures::{Stream, StreamExt, future};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use pie_api::labels::{COMPONENT_PROVISION, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER};
use tracing::warn;

/// An `Api` over one namespace, or over all namespaces for `None`.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Label selector of everything pie-controller manages (probe Pods, CronJobs, PVCs).
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// Label selector of every probe CronJob and PVC, pie's and those topolvm/pie made (which carry
/// its `pie-probe` label but not `app.kubernetes.io/managed-by`): the reconciler adopts the
/// latter.
pub fn probe_objects_selector() -> String {
    pie_api::labels::LABEL_PIE_PROBE.to_owned()
}

/// Label selector of the provision probes' ephemeral PVCs.
pub fn provision_pvc_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER},{LABEL_COMPONENT}={COMPONENT_PROVISION}")
}

/// A watch of the objects of `api` with the labels `selector`, retried with backoff.
pub fn by_label<K>(
    api: Api<K>,
    selector: &str,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(
        api,
        watcher::Config::default().labels(selector).any_semantic(),
    )
    .default_backoff()
}

/// The events of a (backoff-retried) watch, its errors logged as `what` and dropped.
pub fn logged<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
) -> impl Stream<Item = watcher::Event<K>> {
    events.filter_map(move |event| {
        future::ready(match event {
            Ok(event) => Some(event),
            Err(e) => {
                warn!(error = %e, watch = what, "watch error; retrying");
                None
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn selectors() {
        assert_eq!(
            managed_selector(),
            "app.kubernetes.io/managed-by=pie-controller"
        );
        assert_eq!(probe_objects_selector(), "pie-probe");
        assert_eq!(
            provision_pvc_selector(),
            "app.kubernetes.io/managed-by=pie-controller,app.kubernetes.io/component=provision-probe"
        );
    }

    #[tokio::test]
    async fn errors_are_dropped_and_events_pass_in_order() {
        let events: Vec<Result<watcher::Event<Pod>, watcher::Error>> = vec![
            Ok(watcher::Event::Init),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::InitDone),
        ];
        let passed: Vec<_> = logged(stream::iter(events), "pods").collect().await;
        assert!(matches!(
            passed.as_slice(),
            [watcher::Event::Init, watcher::Event::InitDone]
        ));
    }
}

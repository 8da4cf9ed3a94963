//! The apply step: server-side apply of every desired object with one field
//! manager and `force`, then removal of the objects that carry the cluster's
//! ownership labels but are no longer desired.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::build::{Desired, MANAGER, MigrationState, Observed, ownership_selector};
use crate::status::{self, Applied};

use super::Error;

/// The kinds the operator creates, in the order orphans are looked for.
/// Secrets are left out on purpose: they are never removed.
pub const OWNED_KINDS: [(&str, &str); 10] = [
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("cert-manager.io/v1", "Certificate"),
];

/// The API resource of `apiVersion` + `kind`.
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn identity(object: &Value) -> Result<(&str, &str, &str), Error> {
    fn field(value: &Value) -> Option<&str> {
        value.as_str().filter(|s| !s.is_empty())
    }
    match (
        field(&object["apiVersion"]),
        field(&object["kind"]),
        field(&object["metadata"]["name"]),
    ) {
        (Some(api_version), Some(kind), Some(name)) => Ok((api_version, kind, name)),
        _ => Err(Error::Malformed(
            object["kind"].as_str().unwrap_or("unknown").to_owned(),
        )),
    }
}

/// Jobs are immutable: the migration and rotation Jobs are created once.
fn job_exists(job: &Value, observed: &Observed) -> bool {
    let state = match job["metadata"]["labels"]["app.kubernetes.io/component"].as_str() {
        Some("rotation") => observed.rotation,
        _ => observed.migration,
    };
    state != MigrationState::Missing
}

/// `None` for a 404: the object (or its kind's API) is not there.
fn unless_missing<T>(result: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(error),
    }
}

/// Deletes the Secret `name` if it exists (the staging Secret of a finished
/// credential rotation).
pub async fn delete_secret(client: &Client, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    unless_missing(api.delete(name, &DeleteParams::default()).await).map_err(|source| {
        Error::Delete {
            kind: "Secret".into(),
            name: name.into(),
            source,
        }
    })?;
    Ok(())
}

/// Applies every desired object in order and returns the Deployments as the
/// API server answered (their new generation tells whether a rollout is due).
/// The migration Job is immutable: once it exists it is left as it is.
pub async fn apply(
    client: &Client,
    namespace: &str,
    desired: &Desired,
    observed: &Observed,
) -> Result<Vec<Deployment>, Error> {
    let params = PatchParams::apply(MANAGER).force();
    let mut deployments = Vec::new();
    for object in &desired.objects {
        let (api_version, kind, name) = identity(object)?;
        if kind == "Job" && job_exists(object, observed) {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &api_resource(api_version, kind));
        let applied = api
            .patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(|source| Error::Apply {
                kind: kind.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        if kind == "Deployment" {
            let value = serde_json::to_value(applied).map_err(|_| Error::Malformed(kind.into()))?;
            deployments
                .push(serde_json::from_value(value).map_err(|_| Error::Malformed(kind.into()))?);
        }
    }
    Ok(deployments)
}

/// Deletes what the cluster's ownership labels select and `desired` no longer
/// holds; returns `kind/name` of each. A kind whose API is not installed
/// (Gateway API, cert-manager) has nothing to remove.
pub async fn remove_orphans(
    client: &Client,
    namespace: &str,
    cluster_name: &str,
    desired: &Desired,
) -> Result<Vec<String>, Error> {
    let selector = ListParams::default().labels(&ownership_selector(cluster_name));
    let mut removed = Vec::new();
    for (api_version, kind) in OWNED_KINDS {
        let resource = api_resource(api_version, kind);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let Some(found) = unless_missing(api.list_metadata(&selector).await)? else {
            continue;
        };
        let applied: Vec<Applied> = found
            .items
            .iter()
            .map(|object| Applied {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                name: object.name_any(),
            })
            .collect();
        for orphan in status::orphans(desired, &applied) {
            let deleted =
                unless_missing(api.delete(&orphan.name, &DeleteParams::background()).await)
                    .map_err(|source| Error::Delete {
                        kind: kind.to_owned(),
                        name: orphan.name.clone(),
                        source,
                    })?;
            if deleted.is_some() {
                removed.push(format!("{kind}/{}", orphan.name));
            }
        }
    }
    Ok(removed)
}

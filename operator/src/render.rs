//! Offline rendering: the CRD, and what the operator applies for a manifest
//! once it has settled: the migration Job of `spec.version` succeeded and every
//! workload available at that version (Secrets freshly generated, since
//! nothing is read from a cluster).

use kube::CustomResourceExt;
use serde::Deserialize;

use crate::build::{self, Observed, OsEntropy};
use crate::crd::ChatCluster;

/// The CRD as YAML.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&ChatCluster::crd()).expect("the CRD serializes")
}

/// The first `ChatCluster` document of a YAML stream.
pub fn cluster_from_yaml(text: &str) -> anyhow::Result<ChatCluster> {
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("ChatCluster") {
            let mut cluster: ChatCluster = serde_yaml::from_value(value)?;
            if cluster.metadata.namespace.is_none() {
                cluster.metadata.namespace = Some("default".into());
            }
            return Ok(cluster);
        }
    }
    anyhow::bail!("no ChatCluster in the file")
}

/// Everything the operator would apply, as a multi-document YAML stream.
/// With `observed`, renders that state instead of a first install.
pub fn render_with(cluster: &ChatCluster, observed: &Observed) -> anyhow::Result<String> {
    let desired = build::build(cluster, observed, &mut OsEntropy)?;
    if desired.objects.is_empty() {
        return Ok("# reconciliation is paused: nothing would be applied\n".into());
    }
    let mut out = String::new();
    for object in &desired.objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

/// Everything the operator applies for `cluster` once it has settled.
pub fn render(cluster: &ChatCluster) -> anyhow::Result<String> {
    render_with(cluster, &settled(cluster))
}

/// The observed state of a settled cluster: migrated, every workload available
/// at `spec.version`.
pub fn settled(cluster: &ChatCluster) -> Observed {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let workloads = build::Component::of(cluster.spec.mode)
        .iter()
        .map(|&component| {
            let workload = build::ObservedWorkload {
                version: cluster.spec.version.clone(),
                available: true,
            };
            (component, workload)
        })
        .collect();
    Observed {
        migration: build::MigrationState::Succeeded,
        workloads,
        serving_version: Some(cluster.spec.version.clone()),
        now,
        dependencies_ready: true,
        ..Observed::default()
    }
}

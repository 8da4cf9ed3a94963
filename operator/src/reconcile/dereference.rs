//! The dereference step: read, in a fixed order, everything the builders and
//! the status depend on. Only GETs by name; nothing is written.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::build::{
    Component, Ctx, MANAGER, MigrationState, Observed, ObservedSecret, ObservedWorkload,
    deployment, job, postgres, rabbitmq, rotation, secret,
};
use crate::crd::{ChatCluster, ExternalService};

use super::Error;

/// What dereference found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The builders' input.
    pub observed: Observed,
    /// PostgreSQL accepts connections (managed: a ready replica; external: its
    /// URL Secret is present).
    pub database_ready: bool,
    /// RabbitMQ accepts connections (likewise).
    pub broker_ready: bool,
    /// What is wrong with the Secrets the spec references.
    pub secret_problems: Vec<String>,
    /// The TLS certificate exists (always, once applied, when self-signed).
    pub tls_ready: bool,
}

/// Reads the state of `cluster` at `now` (Unix seconds).
pub async fn observe(client: &Client, cluster: &ChatCluster, now: i64) -> Result<Found, Error> {
    let empty = Observed::default();
    let ctx = Ctx::new(cluster, &empty)?;
    let spec = &cluster.spec;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ctx.namespace);

    let mut names = Vec::new();
    if spec.postgres.managed.is_some() {
        names.push(secret::database(&ctx));
        names.push(rotation::next_secret(&ctx));
    }
    if spec.rabbitmq.managed.is_some() {
        names.push(secret::broker(&ctx));
    }
    names.push(secret::jwt(&ctx));
    if spec.exposure.tls.self_signed.is_some() || spec.exposure.tls.cert_manager.is_some() {
        names.push(secret::tls(&ctx));
    }
    names.extend(secret::referenced(&ctx));
    let mut observed_secrets = BTreeMap::new();
    for name in names {
        if let Some(found) = secrets.get_opt(&name).await? {
            observed_secrets.insert(name, observed_secret(&found));
        }
    }

    let mut problems = Vec::new();
    let mut reference = |what: &str, external: &ExternalService| {
        let ok = has_key(
            &observed_secrets,
            &external.secret_ref.name,
            &external.secret_ref.key,
        );
        if !ok {
            problems.push(format!(
                "{what}: Secret {} with key {} not found",
                external.secret_ref.name, external.secret_ref.key
            ));
        }
        ok
    };
    let external_db = spec
        .postgres
        .external
        .as_ref()
        .map(|e| reference("postgres.external", e));
    let external_broker = spec
        .rabbitmq
        .external
        .as_ref()
        .map(|e| reference("rabbitmq.external", e));
    if let Some(name) = spec
        .smtp
        .as_ref()
        .and_then(|s| s.credentials_secret.as_ref())
    {
        for key in ["username", "password"] {
            if !has_key(&observed_secrets, name, key) {
                problems.push(format!(
                    "smtp.credentialsSecret: Secret {name} with key {key} not found"
                ));
            }
        }
    }
    let tls_ready = match &spec.exposure.tls.secret_name {
        Some(name) => {
            let ok = has_key(&observed_secrets, name, "tls.crt");
            if !ok {
                problems.push(format!(
                    "exposure.tls.secretName: Secret {name} with key tls.crt not found"
                ));
            }
            ok
        }
        None if spec.exposure.tls.cert_manager.is_some() => {
            has_key(&observed_secrets, &secret::tls(&ctx), "tls.crt")
        }
        None => true,
    };

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ctx.namespace);
    let database_ready = match external_db {
        Some(ok) => ok,
        None => ready_replicas(&statefulsets, &postgres::name(&ctx)).await? > 0,
    };
    let broker_ready = match external_broker {
        Some(ok) => ok,
        None => ready_replicas(&statefulsets, &rabbitmq::name(&ctx)).await? > 0,
    };

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ctx.namespace);
    let migration = migration_state(jobs.get_opt(&job::name(&ctx, &spec.version)).await?);
    let rotation = match rotation::requested(&ctx) {
        Some(token) => migration_state(jobs.get_opt(&rotation::job_name(&ctx, &token)).await?),
        None => MigrationState::Missing,
    };

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ctx.namespace);
    let mut workloads = BTreeMap::new();
    for &component in Component::of(spec.mode) {
        if let Some(found) = deployments
            .get_opt(&deployment::name(&ctx, component))
            .await?
            && let Some(workload) = observed_workload(&found)
        {
            workloads.insert(component, workload);
        }
    }

    Ok(Found {
        observed: Observed {
            secrets: observed_secrets,
            migration,
            workloads,
            serving_version: cluster
                .status
                .as_ref()
                .and_then(|s| s.current_version.clone()),
            now,
            dependencies_ready: database_ready && broker_ready,
            rotation,
        },
        database_ready,
        broker_ready,
        secret_problems: problems,
        tls_ready,
    })
}

fn observed_secret(found: &Secret) -> ObservedSecret {
    let mut data: BTreeMap<String, String> = found
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in found.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone());
    }
    ObservedSecret {
        data,
        managed_by_operator: found
            .labels()
            .get("app.kubernetes.io/managed-by")
            .is_some_and(|v| v == MANAGER),
    }
}

fn has_key(secrets: &BTreeMap<String, ObservedSecret>, name: &str, key: &str) -> bool {
    secrets
        .get(name)
        .is_some_and(|s| s.data.get(key).is_some_and(|v| !v.is_empty()))
}

async fn ready_replicas(api: &Api<StatefulSet>, name: &str) -> Result<i32, Error> {
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0))
}

/// Where a migration Job stands.
pub fn migration_state(found: Option<Job>) -> MigrationState {
    let Some(found) = found else {
        return MigrationState::Missing;
    };
    let status = found.status.unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == kind && c.status == "True")
    };
    if status.succeeded.unwrap_or(0) > 0 || condition("Complete") {
        MigrationState::Succeeded
    } else if condition("Failed") {
        MigrationState::Failed
    } else {
        MigrationState::Running
    }
}

/// The version a Deployment's pods run, and whether all of them are available.
pub fn observed_workload(found: &Deployment) -> Option<ObservedWorkload> {
    let spec = &found.spec;
    let version = spec
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get("app.kubernetes.io/version")?
        .clone();
    let wanted = spec.replicas.unwrap_or(1);
    let status = found.status.clone().unwrap_or_default();
    let current = status.observed_generation.unwrap_or(0) >= found.metadata.generation.unwrap_or(0);
    let available = current
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted;
    Some(ObservedWorkload { version, available })
}

/// Updates the observed workloads from Deployments just applied: a changed
/// pod template is not available until its rollout is.
pub fn refresh_workloads(found: &mut Found, cluster: &ChatCluster, applied: &[Deployment]) {
    let empty = Observed::default();
    let Ok(ctx) = Ctx::new(cluster, &empty) else {
        return;
    };
    for &component in Component::of(cluster.spec.mode) {
        let name = deployment::name(&ctx, component);
        if let Some(workload) = applied
            .iter()
            .find(|d| d.name_any() == name)
            .and_then(observed_workload)
        {
            found.observed.workloads.insert(component, workload);
        }
    }
}

/// The JWT Secret's `rotated-at` (for events and the next rotation time).
pub fn rotated_at(observed: &Observed, cluster: &ChatCluster) -> Option<i64> {
    let ctx = Ctx::new(cluster, observed).ok()?;
    observed
        .secrets
        .get(&secret::jwt(&ctx))?
        .data
        .get("rotated-at")?
        .parse()
        .ok()
}

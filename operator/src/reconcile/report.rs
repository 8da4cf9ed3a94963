//! The report step: the status subresource (`observedGeneration`, the eight
//! conditions, `currentVersion`) and Events for what changed or failed.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::build::{Ctx, Desired, MigrationState, Observed, secret};
use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::status::{self, Health};

use super::dereference::{Found, rotated_at};
use super::{Context, Error};

/// What the report concluded.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Every workload serves `spec.version` and nothing is pending.
    pub settled: bool,
    /// Seconds until the JWT key rotation falls due, when one is scheduled.
    pub next_rotation: Option<i64>,
}

fn time(now: i64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(now)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn previous(cluster: &ChatCluster) -> ChatClusterStatus {
    cluster.status.clone().unwrap_or_default()
}

async fn patch_status(
    client: &Client,
    cluster: &ChatCluster,
    status: ChatClusterStatus,
) -> Result<(), Error> {
    let api: Api<ChatCluster> =
        Api::namespaced(client.clone(), &cluster.namespace().unwrap_or_default());
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Writes only new conditions (`make(generation, previous, now)`) and
/// `observedGeneration`; the rest of the status stays as last written.
async fn write_conditions(
    client: &Client,
    cluster: &ChatCluster,
    now: i64,
    make: impl FnOnce(i64, &[Condition], Time) -> Vec<Condition>,
) -> Result<(), Error> {
    let mut status = previous(cluster);
    status.conditions = make(
        cluster.metadata.generation.unwrap_or(0),
        &status.conditions,
        time(now),
    );
    status.observed_generation = cluster.metadata.generation;
    patch_status(client, cluster, status).await
}

/// The status of a cluster whose spec fails validation: Ready=False and
/// Degraded=True with reason `InvalidSpec`, the rest as last known.
pub async fn invalid(
    client: &Client,
    cluster: &ChatCluster,
    message: &str,
    now: i64,
) -> Result<(), Error> {
    write_conditions(client, cluster, now, |generation, previous, now| {
        status::invalid_spec(generation, message, previous, now)
    })
    .await
}

/// The status of a paused cluster.
pub async fn paused(client: &Client, cluster: &ChatCluster, now: i64) -> Result<(), Error> {
    let health = Health {
        paused: true,
        ..Health::default()
    };
    write_conditions(client, cluster, now, |generation, previous, now| {
        status::conditions(generation, &health, previous, now)
    })
    .await
}

fn health(cluster: &ChatCluster, found: &Found, secrets_problem: Option<String>) -> Health {
    let spec = &cluster.spec;
    let observed = &found.observed;
    let workloads_ready = crate::build::Component::of(spec.mode).iter().all(|c| {
        observed
            .workloads
            .get(c)
            .is_some_and(|w| w.version == spec.version && w.available)
    });
    Health {
        paused: false,
        database_ready: found.database_ready,
        broker_ready: found.broker_ready,
        secrets_problem,
        tls_ready: found.tls_ready,
        migration: observed.migration,
        workloads_ready,
        stopped: spec.stopped,
    }
}

/// The status of a cluster whose Secret misses a key the platform needs.
pub async fn secret_invalid(
    client: &Client,
    cluster: &ChatCluster,
    found: &Found,
    message: &str,
    now: i64,
) -> Result<(), Error> {
    let health = health(cluster, found, Some(message.to_owned()));
    write_conditions(client, cluster, now, |generation, previous, now| {
        status::conditions(generation, &health, previous, now)
    })
    .await
}

/// Writes the status after an apply and publishes the Events of what changed.
pub async fn report(
    ctx: &Context,
    cluster: &ChatCluster,
    found: &Found,
    before_apply: &Observed,
    desired: &Desired,
    now: i64,
) -> Result<Outcome, Error> {
    let spec = &cluster.spec;
    let before = previous(cluster);
    let problem = (!found.secret_problems.is_empty()).then(|| found.secret_problems.join("; "));
    let health = health(cluster, found, problem.clone());
    let settled = health.migration == MigrationState::Succeeded && health.workloads_ready;

    let mut status = before.clone();
    status.conditions = status::conditions(
        cluster.metadata.generation.unwrap_or(0),
        &health,
        &before.conditions,
        time(now),
    );
    status.observed_generation = cluster.metadata.generation;
    if settled {
        status.current_version = Some(spec.version.clone());
    }
    if let Some(token) = &desired.completed_rotation {
        status.credentials_rotation = Some(token.clone());
    }
    patch_status(&ctx.client, cluster, status.clone()).await?;

    // Events: failures every time they are seen (the recorder folds repeats
    // into a series), changes once.
    if let Some(problem) = problem {
        ctx.event(cluster, EventType::Warning, "SecretInvalid", problem)
            .await;
    }
    let job = desired.objects.iter().find(|o| o["kind"] == "Job");
    let job_ref = job.map(|job| ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job["metadata"]["name"].as_str().map(str::to_owned),
        namespace: cluster.namespace(),
        ..ObjectReference::default()
    });
    match health.migration {
        MigrationState::Failed => {
            ctx.event_related(
                cluster,
                EventType::Warning,
                "MigrationFailed",
                format!(
                    "the migration Job of version {} failed; version {} keeps serving",
                    spec.version,
                    before.current_version.as_deref().unwrap_or("(none)")
                ),
                job_ref,
            )
            .await;
        }
        MigrationState::Missing if job.is_some() => {
            ctx.event_related(
                cluster,
                EventType::Normal,
                "MigrationStarted",
                format!("migrating the database to version {}", spec.version),
                job_ref,
            )
            .await;
        }
        _ => {}
    }
    let rotation_job = desired
        .objects
        .iter()
        .find(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "rotation");
    match (
        &desired.completed_rotation,
        found.observed.rotation,
        rotation_job,
    ) {
        (Some(token), _, _) => {
            ctx.event(
                cluster,
                EventType::Normal,
                "CredentialsRotated",
                format!(
                    "rotation {token}: the database has the new passwords; the pods roll onto them"
                ),
            )
            .await;
        }
        (None, MigrationState::Failed, _) => {
            ctx.event(
                cluster,
                EventType::Warning,
                "CredentialRotationFailed",
                "the rotation Job failed; the current passwords stay in use (see the Job's logs)"
                    .into(),
            )
            .await;
        }
        (None, MigrationState::Missing, Some(job)) => {
            ctx.event(
                cluster,
                EventType::Normal,
                "CredentialRotationStarted",
                format!(
                    "setting new database passwords (Job {})",
                    job["metadata"]["name"].as_str().unwrap_or_default()
                ),
            )
            .await;
        }
        _ => {}
    }
    if settled && before.current_version.as_deref() != Some(spec.version.as_str()) {
        ctx.event(
            cluster,
            EventType::Normal,
            "VersionServing",
            format!("every workload serves version {}", spec.version),
        )
        .await;
        tracing::info!(cluster = %cluster.name_any(), version = %spec.version, "serving");
    }
    let jwt_name = secret::jwt(&Ctx::new(cluster, before_apply)?);
    let rotated_before = rotated_at(before_apply, cluster);
    let rotated_now = desired
        .find("Secret", &jwt_name)
        .and_then(|s| s["data"]["rotated-at"].as_str())
        .and_then(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<i64>().ok());
    if rotated_before.is_some() && rotated_now.is_some() && rotated_before != rotated_now {
        ctx.event(
            cluster,
            EventType::Normal,
            "JwtKeyRotated",
            "a new JWT signing key is current; the previous public key verifies for 24h".into(),
        )
        .await;
    }
    let next_rotation = spec
        .secrets
        .jwt_rotation_interval
        .as_deref()
        .and_then(secret::parse_duration_secs)
        .zip(rotated_now)
        .map(|(interval, at)| at + interval - now);
    Ok(Outcome {
        settled,
        next_rotation,
    })
}

//! The status step, pure: conditions with stable reasons from what was
//! observed and applied, and which previously applied objects are orphans.
//!
//! `lastTransitionTime` moves only when a condition's status changes.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::build::MigrationState;

/// The condition types of a ChatCluster.
pub const TYPES: [&str; 8] = [
    "Ready",
    "Progressing",
    "Degraded",
    "DatabaseReady",
    "BrokerReady",
    "SecretsReady",
    "MigrationsApplied",
    "TlsReady",
];

/// What reconcile learned about a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub paused: bool,
    pub database_ready: bool,
    pub broker_ready: bool,
    /// `None` when every Secret is present; else what is missing.
    pub secrets_problem: Option<String>,
    pub tls_ready: bool,
    pub migration: MigrationState,
    /// Every workload available at `spec.version`.
    pub workloads_ready: bool,
    pub stopped: bool,
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> (String, bool, String, String) {
    (kind.to_owned(), ok, reason.to_owned(), message)
}

/// The conditions for `health` at `generation`, keeping the transition time of
/// every condition whose status did not change since `previous`.
pub fn conditions(
    generation: i64,
    health: &Health,
    previous: &[Condition],
    now: Time,
) -> Vec<Condition> {
    let mut list = Vec::new();
    if health.paused {
        list.push(condition(
            "Progressing",
            false,
            "ReconciliationPaused",
            "spec.reconciliationPaused is set".into(),
        ));
        // Keep what was known about everything else.
        return merge(generation, list, previous, now, true);
    }
    list.push(match health.database_ready {
        true => condition(
            "DatabaseReady",
            true,
            "Available",
            "PostgreSQL accepts connections".into(),
        ),
        false => condition(
            "DatabaseReady",
            false,
            "Waiting",
            "PostgreSQL is not ready yet".into(),
        ),
    });
    list.push(match health.broker_ready {
        true => condition(
            "BrokerReady",
            true,
            "Available",
            "RabbitMQ accepts connections".into(),
        ),
        false => condition(
            "BrokerReady",
            false,
            "Waiting",
            "RabbitMQ is not ready yet".into(),
        ),
    });
    list.push(match &health.secrets_problem {
        None => condition(
            "SecretsReady",
            true,
            "Present",
            "every Secret exists".into(),
        ),
        Some(problem) => condition("SecretsReady", false, "SecretInvalid", problem.clone()),
    });
    list.push(match health.tls_ready {
        true => condition(
            "TlsReady",
            true,
            "CertificateReady",
            "the TLS Secret holds a certificate".into(),
        ),
        false => condition(
            "TlsReady",
            false,
            "CertificatePending",
            "the TLS Secret is not ready yet".into(),
        ),
    });
    list.push(match health.migration {
        MigrationState::Succeeded => condition(
            "MigrationsApplied",
            true,
            "Succeeded",
            "the migration Job of spec.version succeeded".into(),
        ),
        MigrationState::Running => condition(
            "MigrationsApplied",
            false,
            "Running",
            "the migration Job of spec.version is running".into(),
        ),
        MigrationState::Missing => condition(
            "MigrationsApplied",
            false,
            "Pending",
            "the migration Job of spec.version has not started".into(),
        ),
        MigrationState::Failed => condition(
            "MigrationsApplied",
            false,
            "Failed",
            "the migration Job of spec.version failed; the previous version keeps serving".into(),
        ),
    });
    let failed = health.migration == MigrationState::Failed;
    list.push(match (failed, &health.secrets_problem) {
        (true, _) => condition(
            "Degraded",
            true,
            "MigrationFailed",
            "the migration failed; see the Job's logs".into(),
        ),
        (false, Some(problem)) => condition("Degraded", true, "SecretInvalid", problem.clone()),
        (false, None) => condition("Degraded", false, "AsExpected", "nothing is failing".into()),
    });
    let settled = health.migration == MigrationState::Succeeded && health.workloads_ready;
    list.push(match (settled, health.migration) {
        (true, _) => condition(
            "Progressing",
            false,
            "Settled",
            "every workload runs spec.version".into(),
        ),
        (false, MigrationState::Failed) => condition(
            "Progressing",
            false,
            "MigrationFailed",
            "waiting for a fixed version".into(),
        ),
        (false, MigrationState::Succeeded) => condition(
            "Progressing",
            true,
            "RollingOut",
            "workloads are moving to spec.version".into(),
        ),
        (false, _) => condition(
            "Progressing",
            true,
            "Migrating",
            "migrating to spec.version".into(),
        ),
    });
    let first_problem = [
        (health.database_ready, "DatabaseNotReady"),
        (health.broker_ready, "BrokerNotReady"),
        (health.secrets_problem.is_none(), "SecretsNotReady"),
        (health.tls_ready, "TlsNotReady"),
        (
            health.migration == MigrationState::Succeeded,
            "MigrationsNotApplied",
        ),
        (health.workloads_ready, "WorkloadsNotReady"),
    ]
    .into_iter()
    .find(|(ok, _)| !ok)
    .map(|(_, reason)| reason);
    list.push(match (health.stopped, first_problem) {
        (true, _) => condition(
            "Ready",
            false,
            "Stopped",
            "spec.stopped is set: workloads are scaled to zero".into(),
        ),
        (false, None) => condition(
            "Ready",
            true,
            "Available",
            "the platform is serving spec.version".into(),
        ),
        (false, Some(reason)) => condition("Ready", false, reason, format!("not ready: {reason}")),
    });
    merge(generation, list, previous, now, false)
}

/// The conditions of a cluster whose spec fails validation: nothing is
/// applied, so Ready and Degraded say why and the rest keep what was known.
pub fn invalid_spec(
    generation: i64,
    message: &str,
    previous: &[Condition],
    now: Time,
) -> Vec<Condition> {
    let list = vec![
        condition("Ready", false, "InvalidSpec", message.to_owned()),
        condition("Degraded", true, "InvalidSpec", message.to_owned()),
    ];
    merge(generation, list, previous, now, true)
}

fn merge(
    generation: i64,
    list: Vec<(String, bool, String, String)>,
    previous: &[Condition],
    now: Time,
    keep_others: bool,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = list
        .into_iter()
        .map(|(kind, ok, reason, message)| {
            let status = if ok { "True" } else { "False" }.to_owned();
            let since = previous
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: kind,
                status,
                reason,
                message,
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect();
    if keep_others {
        for old in previous {
            if !out.iter().any(|c| c.type_ == old.type_) {
                out.push(old.clone());
            }
        }
    }
    out.sort_by_key(|c| {
        TYPES
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
    out
}

/// An applied object, as found by the ownership label selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Objects the operator applied before that the desired state no longer
/// holds. Secrets are never orphans: credentials and keys outlive a change of
/// mode (a database switched away from may still hold data).
pub fn orphans(desired: &crate::build::Desired, applied: &[Applied]) -> Vec<Applied> {
    let wanted: BTreeSet<(String, String)> = desired
        .objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    applied
        .iter()
        .filter(|a| a.kind != "Secret")
        .filter(|a| !wanted.contains(&(a.kind.clone(), a.name.clone())))
        .cloned()
        .collect()
}

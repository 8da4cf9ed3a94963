//! The status step: conditions and orphan cleanup, pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use parley_operator::build::{Desired, MigrationState};
use parley_operator::status::{Applied, Health, TYPES, conditions, orphans};
use serde_json::json;

fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

fn healthy() -> Health {
    Health {
        paused: false,
        database_ready: true,
        broker_ready: true,
        secrets_problem: None,
        tls_ready: true,
        migration: MigrationState::Succeeded,
        workloads_ready: true,
        stopped: false,
    }
}

fn get<'a>(list: &'a [Condition], kind: &str) -> &'a Condition {
    list.iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn a_settled_cluster_is_ready_with_every_condition_in_a_stable_order() {
    let list = conditions(3, &healthy(), &[], time(100));
    let kinds: Vec<&str> = list.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(kinds, TYPES);
    assert_eq!(get(&list, "Ready").status, "True");
    assert_eq!(get(&list, "Ready").reason, "Available");
    assert_eq!(get(&list, "Progressing").reason, "Settled");
    assert_eq!(get(&list, "Degraded").status, "False");
    assert!(list.iter().all(|c| c.observed_generation == Some(3)));
}

#[test]
fn a_failed_migration_degrades_without_claiming_progress() {
    let health = Health {
        migration: MigrationState::Failed,
        ..healthy()
    };
    let list = conditions(4, &health, &[], time(100));
    assert_eq!(
        (
            get(&list, "MigrationsApplied").status.as_str(),
            get(&list, "MigrationsApplied").reason.as_str()
        ),
        ("False", "Failed")
    );
    assert_eq!(get(&list, "Degraded").reason, "MigrationFailed");
    assert_eq!(get(&list, "Progressing").status, "False");
    assert_eq!(get(&list, "Ready").reason, "MigrationsNotApplied");
}

#[test]
fn rolling_out_and_waiting_name_the_first_missing_piece() {
    let rolling = Health {
        workloads_ready: false,
        ..healthy()
    };
    let list = conditions(1, &rolling, &[], time(100));
    assert_eq!(get(&list, "Progressing").reason, "RollingOut");
    assert_eq!(get(&list, "Ready").reason, "WorkloadsNotReady");
    let waiting = Health {
        database_ready: false,
        migration: MigrationState::Missing,
        ..healthy()
    };
    let list = conditions(1, &waiting, &[], time(100));
    assert_eq!(get(&list, "Ready").reason, "DatabaseNotReady");
    assert_eq!(get(&list, "Progressing").reason, "Migrating");
    let stopped = Health {
        stopped: true,
        ..healthy()
    };
    assert_eq!(
        get(&conditions(1, &stopped, &[], time(100)), "Ready").reason,
        "Stopped"
    );
}

#[test]
fn transition_times_move_only_when_a_status_changes() {
    let first = conditions(1, &healthy(), &[], time(100));
    let again = conditions(2, &healthy(), &first, time(200));
    assert_eq!(get(&again, "Ready").last_transition_time, time(100));
    let broken = Health {
        broker_ready: false,
        ..healthy()
    };
    let changed = conditions(3, &broken, &again, time(300));
    assert_eq!(get(&changed, "Ready").last_transition_time, time(300));
    assert_eq!(
        get(&changed, "DatabaseReady").last_transition_time,
        time(100)
    );
}

#[test]
fn paused_reports_itself_and_keeps_the_rest() {
    let before = conditions(1, &healthy(), &[], time(100));
    let paused = Health {
        paused: true,
        ..healthy()
    };
    let list = conditions(2, &paused, &before, time(200));
    assert_eq!(get(&list, "Progressing").reason, "ReconciliationPaused");
    assert_eq!(get(&list, "Ready").status, "True", "what was known stays");
}

#[test]
fn orphans_are_applied_objects_no_longer_desired_but_never_secrets() {
    let desired = Desired {
        objects: vec![
            json!({"kind": "Deployment", "metadata": {"name": "chat-user"}}),
            json!({"kind": "Service", "metadata": {"name": "chat-user"}}),
        ],
        ..Desired::default()
    };
    let applied = |kind: &str, name: &str| Applied {
        api_version: "v1".into(),
        kind: kind.into(),
        name: name.into(),
    };
    let found = orphans(
        &desired,
        &[
            applied("Deployment", "chat-user"),
            applied("Deployment", "chat-monolith"),
            applied("Service", "chat-monolith"),
            applied("Secret", "chat-database"),
        ],
    );
    assert_eq!(
        found,
        vec![
            applied("Deployment", "chat-monolith"),
            applied("Service", "chat-monolith")
        ]
    );
}

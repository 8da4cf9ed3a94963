//! Reconcile scenarios against a fake API server (`tower-test`, as kube-rs's
//! controller-rs does). Each drives `reconcile` and asserts the exact calls it
//! made, then what it left in the cluster: objects, status and Events.

mod support;

use std::sync::{Arc, Mutex};

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use parley_operator::backoff::Backoff;
use parley_operator::crd::ChatCluster;
use parley_operator::metrics::Metrics;
use parley_operator::reconcile::{self, Context};
use parley_operator::render;
use serde_json::{Value, json};
use support::entropy::FakeEntropy;
use support::fake_api::FakeApi;

const NOW: i64 = 1_800_000_000;
const HOUR: i64 = 3600;

fn example(name: &str) -> ChatCluster {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut cluster = render::cluster_from_yaml(&text).unwrap();
    cluster.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".into());
    cluster.metadata.generation = Some(1);
    cluster
}

fn context(client: Client, now: i64) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "parley-operator".into(),
                instance: None,
            },
        ),
        client,
        metrics: Metrics::default(),
        backoff: Backoff::default(),
        entropy: Mutex::new(Box::new(FakeEntropy::default())),
        clock: Box::new(move || now),
    })
}

/// The fake API with `cluster` stored.
fn cluster_api(cluster: &ChatCluster) -> (FakeApi, Client) {
    let (api, client) = FakeApi::start();
    let mut value = serde_json::to_value(cluster).unwrap();
    value["apiVersion"] = json!("parley.dev/v1alpha1");
    value["kind"] = json!("ChatCluster");
    api.insert(value);
    (api, client)
}

/// The ChatCluster as stored now.
fn stored(api: &FakeApi) -> Arc<ChatCluster> {
    Arc::new(serde_json::from_value(api.get("chatclusters", "chat").unwrap()).unwrap())
}

async fn reconcile_once(api: &FakeApi, ctx: &Arc<Context>) -> Action {
    reconcile::reconcile(stored(api), ctx.clone())
        .await
        .expect("reconcile succeeds")
}

fn condition(api: &FakeApi, kind: &str) -> (String, String) {
    let cluster = api.get("chatclusters", "chat").unwrap();
    let found = cluster["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
        .clone();
    (
        found["status"].as_str().unwrap().to_owned(),
        found["reason"].as_str().unwrap().to_owned(),
    )
}

fn cond(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

fn image_of(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn secret_value(secret: &Value, key: &str) -> String {
    use base64::Engine;
    let encoded = secret["data"][key].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

fn databases_ready(api: &FakeApi) {
    for name in ["chat-postgres", "chat-rabbitmq"] {
        api.update("statefulsets", name, |o| {
            o["status"] = json!({"replicas": 1, "readyReplicas": 1});
        });
    }
}

fn job_succeeded(api: &FakeApi, name: &str) {
    api.update("jobs", name, |o| {
        o["status"] =
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
    });
}

fn job_failed(api: &FakeApi, name: &str) {
    api.update("jobs", name, |o| {
        o["status"] = json!({"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]});
    });
}

fn deployment_available(api: &FakeApi, name: &str) {
    api.update("deployments", name, |o| {
        let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = o["metadata"]["generation"].clone();
        o["status"] = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        });
    });
}

/// Drives a new minimal-like cluster to Ready: finalizer, dependencies,
/// migration, workload. Returns the context used.
async fn settle(api: &FakeApi, ctx: &Arc<Context>) {
    reconcile_once(api, ctx).await; // finalizer
    reconcile_once(api, ctx).await; // secrets, database, broker
    databases_ready(api);
    reconcile_once(api, ctx).await; // migration Job
    let version = stored(api).spec.version.replace('.', "-");
    job_succeeded(api, &format!("chat-migrate-{version}"));
    reconcile_once(api, ctx).await; // Deployment
    deployment_available(api, "chat-monolith");
    reconcile_once(api, ctx).await; // status Ready
    assert_eq!(condition(api, "Ready"), cond("True", "Available"));
    api.take_calls();
}

const FIRST_APPLY: [&str; 13] = [
    "APPLY secrets/chat-database",
    "APPLY secrets/chat-broker",
    "APPLY secrets/chat-jwt",
    "APPLY secrets/chat-tls",
    "APPLY secrets/chat-runtime",
    "APPLY configmaps/chat-config",
    "APPLY configmaps/chat-postgres-init",
    "APPLY services/chat-postgres",
    "APPLY statefulsets/chat-postgres",
    "APPLY services/chat-rabbitmq",
    "APPLY statefulsets/chat-rabbitmq",
    "APPLY ingresses/chat",
    "APPLY networkpolicies/chat-http",
];

const ORPHAN_LISTS: [&str; 10] = [
    "LIST configmaps",
    "LIST services",
    "LIST statefulsets",
    "LIST deployments",
    "LIST jobs",
    "LIST poddisruptionbudgets",
    "LIST ingresses",
    "LIST networkpolicies",
    "LIST httproutes",
    "LIST certificates",
];

#[tokio::test]
async fn first_reconcile_of_a_new_cluster_adds_the_finalizer_then_creates_secrets_database_and_broker()
 {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);

    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(api.take_calls(), ["PATCH chatclusters/chat"]);
    assert_eq!(stored(&api).finalizers(), [reconcile::FINALIZER.to_owned()]);

    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::requeue(reconcile::PROGRESS_REQUEUE));
    let mut expected: Vec<&str> = vec![
        // dereference
        "GET secrets/chat-database",
        "GET secrets/chat-database-next",
        "GET secrets/chat-broker",
        "GET secrets/chat-jwt",
        "GET secrets/chat-tls",
        "GET statefulsets/chat-postgres",
        "GET statefulsets/chat-rabbitmq",
        "GET jobs/chat-migrate-0-1-0",
        "GET deployments/chat-monolith",
    ];
    // apply: no migration Job before PostgreSQL and RabbitMQ are ready, no
    // Deployment before the migration.
    expected.extend(FIRST_APPLY);
    expected.extend([
        "APPLY networkpolicies/chat-postgres",
        "APPLY networkpolicies/chat-rabbitmq",
        "APPLY networkpolicies/chat-rabbitmq-management",
    ]);
    expected.extend(ORPHAN_LISTS);
    expected.push("PATCH chatclusters/chat/status");
    assert_eq!(api.take_calls(), expected);

    // Applied with the operator's field manager, owned by the ChatCluster.
    let secret = api.get("secrets", "chat-database").unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "ChatCluster"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        secret_value(&secret, "owner-password").len(),
        "password1".len()
    );
    assert_eq!(condition(&api, "DatabaseReady"), cond("False", "Waiting"));
    assert_eq!(condition(&api, "SecretsReady"), cond("True", "Present"));
    assert_eq!(
        condition(&api, "MigrationsApplied"),
        cond("False", "Pending")
    );
    assert_eq!(condition(&api, "Ready"), cond("False", "DatabaseNotReady"));
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["observedGeneration"], 1);
    assert!(status["currentVersion"].is_null());
}

#[tokio::test]
async fn a_new_cluster_migrates_then_rolls_out_then_reports_ready() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    reconcile_once(&api, &ctx).await;
    reconcile_once(&api, &ctx).await;
    api.take_calls();

    databases_ready(&api);
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"APPLY jobs/chat-migrate-0-1-0".to_owned()));
    assert!(!writes.iter().any(|w| w.starts_with("APPLY deployments/")));
    assert!(writes.contains(&"EVENT Normal MigrationStarted".to_owned()));
    assert_eq!(condition(&api, "DatabaseReady"), cond("True", "Available"));
    assert_eq!(
        condition(&api, "MigrationsApplied"),
        cond("False", "Pending")
    );

    api.update("jobs", "chat-migrate-0-1-0", |o| {
        o["status"] = json!({"active": 1});
    });
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(
        !writes.iter().any(|w| w.contains("jobs/")),
        "an existing Job is immutable and left alone: {writes:?}"
    );
    assert_eq!(
        condition(&api, "MigrationsApplied"),
        cond("False", "Running")
    );
    assert_eq!(condition(&api, "Progressing"), cond("True", "Migrating"));

    job_succeeded(&api, "chat-migrate-0-1-0");
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    for object in [
        "APPLY deployments/chat-monolith",
        "APPLY services/chat-monolith",
        "APPLY poddisruptionbudgets/chat-monolith",
    ] {
        assert!(
            writes.contains(&object.to_owned()),
            "{object} in {writes:?}"
        );
    }
    let deployment = api.get("deployments", "chat-monolith").unwrap();
    assert_eq!(image_of(&deployment), "ghcr.io/parley-chat/parley:0.1.0");
    assert_eq!(condition(&api, "Progressing"), cond("True", "RollingOut"));
    assert_eq!(condition(&api, "Ready"), cond("False", "WorkloadsNotReady"));

    deployment_available(&api, "chat-monolith");
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::requeue(reconcile::SETTLED_REQUEUE));
    assert!(
        api.take_writes()
            .contains(&"EVENT Normal VersionServing".to_owned())
    );
    assert_eq!(condition(&api, "Ready"), cond("True", "Available"));
    assert_eq!(condition(&api, "Progressing"), cond("False", "Settled"));
    assert_eq!(condition(&api, "Degraded"), cond("False", "AsExpected"));
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["currentVersion"], "0.1.0");
}

#[tokio::test]
async fn a_pre_existing_secret_of_the_expected_name_is_used_and_never_written() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let key = parley_keys::generate();
    let jwks = serde_json::to_string(&parley_keys::Jwks {
        keys: vec![key.jwk.clone()],
    })
    .unwrap();
    let theirs = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "chat-jwt", "namespace": "parley", "labels": {"team": "platform"}},
        "stringData": {"signing.pem": key.private_pem, "jwks.json": jwks, "rotated-at": "0"}
    });
    api.insert(theirs.clone());
    let ctx = context(client, NOW);
    reconcile_once(&api, &ctx).await;
    reconcile_once(&api, &ctx).await;

    let writes = api.take_writes();
    assert!(writes.contains(&"APPLY secrets/chat-database".to_owned()));
    assert!(
        !writes.iter().any(|w| w.contains("secrets/chat-jwt")),
        "their Secret is not written: {writes:?}"
    );
    assert_eq!(api.get("secrets", "chat-jwt").unwrap(), theirs);
    assert_eq!(condition(&api, "SecretsReady"), cond("True", "Present"));

    // Theirs misses a key the platform needs: nothing is applied, and they are told.
    api.update("secrets", "chat-jwt", |o| {
        o["stringData"].as_object_mut().unwrap().remove("jwks.json");
    });
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::requeue(reconcile::SETTLED_REQUEUE));
    assert_eq!(
        api.take_writes(),
        [
            "EVENT Warning SecretInvalid",
            "PATCH chatclusters/chat/status"
        ]
    );
    assert_eq!(
        condition(&api, "SecretsReady"),
        cond("False", "SecretInvalid")
    );
    assert_eq!(condition(&api, "Degraded"), cond("True", "SecretInvalid"));
}

/// Bumps `spec.version` as `kubectl apply` would.
fn bump(api: &FakeApi, version: &str) {
    api.update("chatclusters", "chat", |o| {
        o["spec"]["version"] = json!(version);
        o["metadata"]["generation"] = json!(2);
    });
}

#[tokio::test]
async fn a_version_bump_runs_the_migration_job_first_and_rolls_only_after_it_succeeded() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;

    bump(&api, "0.2.0");
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    let job = writes
        .iter()
        .position(|w| w == "APPLY jobs/chat-migrate-0-2-0")
        .expect("the new version's Job");
    let deployment = writes
        .iter()
        .position(|w| w == "APPLY deployments/chat-monolith")
        .expect("the Deployment is re-applied");
    assert!(job < deployment, "the Job comes first: {writes:?}");
    assert!(writes.contains(&"EVENT Normal MigrationStarted".to_owned()));
    assert!(writes.contains(&"DELETE jobs/chat-migrate-0-1-0".to_owned()));
    let new_job = api.get("jobs", "chat-migrate-0-2-0").unwrap();
    assert_eq!(
        new_job["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/parley-chat/parley:0.2.0"
    );
    let serving = api.get("deployments", "chat-monolith").unwrap();
    assert_eq!(image_of(&serving), "ghcr.io/parley-chat/parley:0.1.0");
    assert_eq!(
        condition(&api, "Ready"),
        cond("False", "MigrationsNotApplied")
    );
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["currentVersion"], "0.1.0");
    assert_eq!(status["observedGeneration"], 2);

    job_succeeded(&api, "chat-migrate-0-2-0");
    reconcile_once(&api, &ctx).await;
    api.take_calls();
    let rolled = api.get("deployments", "chat-monolith").unwrap();
    assert_eq!(image_of(&rolled), "ghcr.io/parley-chat/parley:0.2.0");
    deployment_available(&api, "chat-monolith");
    reconcile_once(&api, &ctx).await;
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["currentVersion"], "0.2.0");
    assert_eq!(condition(&api, "Ready"), cond("True", "Available"));
}

#[tokio::test]
async fn a_failed_migration_job_rolls_nothing_and_says_so() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    bump(&api, "0.2.0");
    reconcile_once(&api, &ctx).await;
    api.take_calls();

    job_failed(&api, "chat-migrate-0-2-0");
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"EVENT Warning MigrationFailed".to_owned()));
    assert!(
        !writes.iter().any(|w| w.contains("jobs/")),
        "the failed Job is kept for its logs: {writes:?}"
    );
    let serving = api.get("deployments", "chat-monolith").unwrap();
    assert_eq!(image_of(&serving), "ghcr.io/parley-chat/parley:0.1.0");
    assert_eq!(
        condition(&api, "MigrationsApplied"),
        cond("False", "Failed")
    );
    assert_eq!(condition(&api, "Degraded"), cond("True", "MigrationFailed"));
    assert_eq!(
        condition(&api, "Progressing"),
        cond("False", "MigrationFailed")
    );
    let event = api.last_body("EVENT Warning MigrationFailed").unwrap();
    assert_eq!(
        event["note"],
        "the migration Job of version 0.2.0 failed; version 0.1.0 keeps serving"
    );
    assert_eq!(event["regarding"]["kind"], "ChatCluster");
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["currentVersion"], "0.1.0");
}

#[tokio::test]
async fn a_jwt_rotation_falling_due_adds_a_current_key_keeps_the_previous_and_rolls_the_pods() {
    let mut cluster = example("minimal");
    cluster.spec.secrets.jwt_rotation_interval = Some("48h".into());
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client.clone(), NOW);
    settle(&api, &ctx).await;
    let before_secret = api.get("secrets", "chat-jwt").unwrap();
    let before_hash = api.get("deployments", "chat-monolith").unwrap()["spec"]["template"]
        ["metadata"]["annotations"]["parley.dev/secrets-hash"]
        .clone();

    // Not due yet: the next look is when it falls due (within the settled requeue).
    let ctx = context(client.clone(), NOW + 47 * HOUR + 59 * 60);
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(60)));
    assert_eq!(api.get("secrets", "chat-jwt").unwrap(), before_secret);
    api.take_calls();

    let ctx = context(client, NOW + 48 * HOUR);
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"EVENT Normal JwtKeyRotated".to_owned()));
    let after_secret = api.get("secrets", "chat-jwt").unwrap();
    let old_jwks: Value = serde_json::from_str(&secret_value(&before_secret, "jwks.json")).unwrap();
    let new_jwks: Value = serde_json::from_str(&secret_value(&after_secret, "jwks.json")).unwrap();
    assert_eq!(new_jwks["keys"].as_array().unwrap().len(), 2);
    assert_ne!(new_jwks["keys"][0]["kid"], old_jwks["keys"][0]["kid"]);
    assert_eq!(
        new_jwks["keys"][1], old_jwks["keys"][0],
        "the previous key still verifies"
    );
    assert_ne!(
        secret_value(&after_secret, "signing.pem"),
        secret_value(&before_secret, "signing.pem")
    );
    let after_hash = api.get("deployments", "chat-monolith").unwrap()["spec"]["template"]
        ["metadata"]["annotations"]["parley.dev/secrets-hash"]
        .clone();
    assert_ne!(before_hash, after_hash, "the pods roll onto the new key");
    assert_eq!(condition(&api, "Ready"), cond("False", "WorkloadsNotReady"));
}

#[tokio::test]
async fn a_paused_cluster_changes_nothing_but_its_progressing_condition() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    let deployment = api.get("deployments", "chat-monolith").unwrap();

    api.update("chatclusters", "chat", |o| {
        o["spec"]["reconciliationPaused"] = json!(true);
        o["spec"]["version"] = json!("0.2.0");
        o["metadata"]["generation"] = json!(2);
    });
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    let calls = api.take_calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| !c.starts_with("GET "))
            .collect::<Vec<_>>(),
        ["PATCH chatclusters/chat/status"]
    );
    assert_eq!(api.get("deployments", "chat-monolith").unwrap(), deployment);
    assert!(api.get("jobs", "chat-migrate-0-2-0").is_none());
    assert_eq!(
        condition(&api, "Progressing"),
        cond("False", "ReconciliationPaused")
    );
    assert_eq!(
        condition(&api, "Ready"),
        cond("True", "Available"),
        "last known"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    api.update("chatclusters", "chat", |o| {
        o["spec"]["exposure"]["host"] = json!("Not A Host");
        o["metadata"]["generation"] = json!(2);
    });
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        api.take_writes(),
        [
            "EVENT Warning InvalidSpec",
            "PATCH chatclusters/chat/status"
        ]
    );
    assert_eq!(condition(&api, "Ready"), cond("False", "InvalidSpec"));
    assert_eq!(condition(&api, "Degraded"), cond("True", "InvalidSpec"));
}

#[tokio::test]
async fn deletion_removes_only_the_finalizer_and_leaves_the_rest_to_owner_references() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;

    api.update("chatclusters", "chat", |o| {
        o["metadata"]["deletionTimestamp"] = json!("2027-01-15T08:00:00Z");
    });
    let action = reconcile_once(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        api.take_calls(),
        ["EVENT Normal Deleting", "PATCH chatclusters/chat"]
    );
    assert!(stored(&api).finalizers().is_empty());
    assert!(api.get("secrets", "chat-database").is_some());
}

#[tokio::test]
async fn an_object_no_longer_desired_is_removed_but_secrets_never_are() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    // Something the operator made earlier that no spec asks for any more.
    let mut stale = api.get("services", "chat-monolith").unwrap();
    stale["metadata"]["name"] = json!("chat-user");
    api.insert(stale);
    let mut stale_secret = api.get("secrets", "chat-tls").unwrap();
    stale_secret["metadata"]["name"] = json!("chat-old-tls");
    api.insert(stale_secret);

    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"DELETE services/chat-user".to_owned()));
    assert!(!writes.iter().any(|w| w.starts_with("DELETE secrets/")));
    assert!(api.get("secrets", "chat-old-tls").is_some());
}

fn request_rotation(api: &FakeApi, token: &str) {
    api.update("chatclusters", "chat", |o| {
        o["metadata"]["annotations"] = json!({"parley.dev/rotate-credentials": token});
    });
}

fn secrets_hash(api: &FakeApi) -> Value {
    api.get("deployments", "chat-monolith").unwrap()["spec"]["template"]["metadata"]["annotations"]
        ["parley.dev/secrets-hash"]
        .clone()
}

#[tokio::test]
async fn a_requested_credential_rotation_sets_database_and_broker_first_then_rolls_the_pods() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    let old = api.get("secrets", "chat-database").unwrap();
    let old_broker = api.get("secrets", "chat-broker").unwrap();
    let old_hash = secrets_hash(&api);

    request_rotation(&api, "2026-11-24");
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    let job_call = writes
        .iter()
        .find(|w| w.starts_with("APPLY jobs/chat-rotate-"))
        .expect("a rotation Job")
        .clone();
    let staged_at = writes
        .iter()
        .position(|w| w == "APPLY secrets/chat-database-next")
        .expect("the staging Secret");
    assert!(staged_at < writes.iter().position(|w| *w == job_call).unwrap());
    assert!(writes.contains(&"EVENT Normal CredentialRotationStarted".to_owned()));
    // Nothing the pods read has changed yet.
    assert_eq!(
        api.get("secrets", "chat-database").unwrap()["data"],
        old["data"]
    );
    assert_eq!(secrets_hash(&api), old_hash);
    let job_name = job_call.trim_start_matches("APPLY jobs/");
    let job = api.get("jobs", job_name).unwrap();
    // The database first (init container), then the broker.
    let container = &job["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(container["name"], "rotate-database");
    let broker = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(broker["name"], "rotate-broker");
    let broker_script = broker["command"][2].as_str().unwrap();
    assert!(broker_script.contains("http://chat-rabbitmq:15672/api/users/$BROKER_USER"));
    assert!(
        !broker_script.contains("password1"),
        "no secret in the spec"
    );
    let script = container["command"][2].as_str().unwrap();
    for role in [
        "parley_user_svc",
        "parley_chat_svc",
        "parley_notification_svc",
        "parley_owner",
    ] {
        assert!(
            script.contains(&format!("ALTER ROLE {role} PASSWORD")),
            "{script}"
        );
    }
    let env = container["env"].as_array().unwrap();
    let pgpassword = env.iter().find(|e| e["name"] == "PGPASSWORD").unwrap();
    assert_eq!(
        pgpassword["valueFrom"]["secretKeyRef"]["name"],
        "chat-database"
    );

    // The Job ran: the Secret takes the new passwords, the pods roll.
    let staged = api.get("secrets", "chat-database-next").unwrap();
    job_succeeded(&api, job_name);
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"EVENT Normal CredentialsRotated".to_owned()));
    assert!(writes.contains(&"DELETE secrets/chat-database-next".to_owned()));
    let new = api.get("secrets", "chat-database").unwrap();
    for key in [
        "owner-password",
        "user-password",
        "chat-password",
        "notification-password",
    ] {
        assert_eq!(secret_value(&new, key), secret_value(&staged, key));
        assert_ne!(secret_value(&new, key), secret_value(&old, key));
    }
    let broker = api.get("secrets", "chat-broker").unwrap();
    assert_eq!(
        secret_value(&broker, "password"),
        secret_value(&staged, "broker-password")
    );
    assert_ne!(
        secret_value(&broker, "password"),
        secret_value(&old_broker, "password")
    );
    assert_eq!(
        secret_value(&broker, "username"),
        secret_value(&old_broker, "username")
    );
    assert!(new["data"].get("broker-password").is_none());
    let amqp_url = secret_value(&api.get("secrets", "chat-runtime").unwrap(), "AMQP_URL");
    assert!(amqp_url.contains(&secret_value(&staged, "broker-password")));
    let runtime = api.get("secrets", "chat-runtime").unwrap();
    assert!(
        secret_value(&runtime, "PARLEY_USER_DATABASE_URL")
            .contains(&secret_value(&staged, "user-password"))
    );
    assert_ne!(secrets_hash(&api), old_hash);
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert_eq!(status["credentialsRotation"], "2026-11-24");

    // Done: the next reconcile leaves the passwords alone.
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(
        !writes
            .iter()
            .any(|w| w.contains("rotate") || w.contains("database-next"))
    );
    assert_eq!(
        api.get("secrets", "chat-database").unwrap()["data"],
        new["data"]
    );
}

#[tokio::test]
async fn a_failed_credential_rotation_keeps_the_current_passwords() {
    let cluster = example("minimal");
    let (api, client) = cluster_api(&cluster);
    let ctx = context(client, NOW);
    settle(&api, &ctx).await;
    let old = api.get("secrets", "chat-database").unwrap();
    request_rotation(&api, "r1");
    reconcile_once(&api, &ctx).await;
    let job_name = api
        .take_writes()
        .into_iter()
        .find_map(|w| w.strip_prefix("APPLY jobs/").map(str::to_owned))
        .unwrap();
    job_failed(&api, &job_name);
    reconcile_once(&api, &ctx).await;
    let writes = api.take_writes();
    assert!(writes.contains(&"EVENT Warning CredentialRotationFailed".to_owned()));
    assert!(!writes.iter().any(|w| w.starts_with("DELETE")));
    assert_eq!(
        api.get("secrets", "chat-database").unwrap()["data"],
        old["data"]
    );
    let status = api.get("chatclusters", "chat").unwrap()["status"].clone();
    assert!(status["credentialsRotation"].is_null());
}

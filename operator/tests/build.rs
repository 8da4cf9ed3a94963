//! Pure builder tests from fixtures: what the operator wants to exist for each
//! kind of ChatCluster and each observed state. No API server involved.

use std::collections::BTreeMap;

use parley_operator::build::{
    self, Component, Desired, MigrationState, Observed, ObservedSecret, ObservedWorkload,
};
use parley_operator::crd::ChatCluster;
use parley_operator::render;
use serde_json::Value;

#[path = "support/entropy.rs"]
mod entropy;
use entropy::FakeEntropy;

fn example(name: &str) -> ChatCluster {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    render::cluster_from_yaml(&text).unwrap()
}

fn settled(cluster: &ChatCluster) -> Observed {
    let mut observed = render::settled(cluster);
    observed.now = 1_800_000_000;
    observed
}

fn build(cluster: &ChatCluster, observed: &Observed) -> Desired {
    build::build(cluster, observed, &mut FakeEntropy::default()).unwrap()
}

fn secret_data(desired: &Desired, name: &str) -> BTreeMap<String, String> {
    let secret = desired
        .find("Secret", name)
        .unwrap_or_else(|| panic!("no secret {name}"));
    secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64_decode(v.as_str().unwrap());
            (k.clone(), String::from_utf8(bytes).unwrap())
        })
        .collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// What the cluster looks like after `desired` was applied (Secrets only).
fn observed_secrets(desired: &Desired) -> BTreeMap<String, ObservedSecret> {
    desired
        .objects
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            let data = secret_data(desired, &name);
            (
                name,
                ObservedSecret {
                    data,
                    managed_by_operator: true,
                },
            )
        })
        .collect()
}

fn container(desired: &Desired, deployment: &str) -> Value {
    desired.find("Deployment", deployment).unwrap()["spec"]["template"]["spec"]["containers"][0]
        .clone()
}

#[test]
fn minimal_monolith_builds_everything_in_apply_order() {
    let cluster = example("minimal");
    let desired = build(&cluster, &settled(&cluster));
    assert_eq!(
        desired.names(),
        [
            "Secret/chat-database",
            "Secret/chat-broker",
            "Secret/chat-jwt",
            "Secret/chat-tls",
            "Secret/chat-runtime",
            "ConfigMap/chat-config",
            "ConfigMap/chat-postgres-init",
            "Service/chat-postgres",
            "StatefulSet/chat-postgres",
            "Service/chat-rabbitmq",
            "StatefulSet/chat-rabbitmq",
            "Job/chat-migrate-0-1-0",
            "Deployment/chat-monolith",
            "Service/chat-monolith",
            "PodDisruptionBudget/chat-monolith",
            "Ingress/chat",
            "NetworkPolicy/chat-http",
            "NetworkPolicy/chat-postgres",
            "NetworkPolicy/chat-rabbitmq",
            "NetworkPolicy/chat-rabbitmq-management",
        ]
    );
    for object in &desired.objects {
        assert_eq!(object["metadata"]["namespace"], "parley");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "parley-operator"
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/instance"],
            "chat"
        );
    }
    let parley = container(&desired, "chat-monolith");
    assert_eq!(parley["image"], "ghcr.io/parley-chat/parley:0.1.0");
    assert_eq!(
        parley["args"],
        serde_json::json!(["serve", "--target", "all"])
    );
    assert_eq!(parley["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(parley["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(parley["securityContext"]["readOnlyRootFilesystem"], true);
    let env: Vec<&str> = parley["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "PARLEY_USER_DATABASE_URL",
            "PARLEY_CHAT_DATABASE_URL",
            "PARLEY_NOTIFICATION_DATABASE_URL",
            "AMQP_URL"
        ]
    );
    assert!(
        !parley.to_string().contains("PARLEY_MIGRATE_DATABASE_URL"),
        "the owner's URL stays with the migration Job"
    );
}

#[test]
fn the_ingress_routes_the_contract_prefixes_without_rewrites() {
    let cluster = example("minimal");
    let desired = build(&cluster, &settled(&cluster));
    let ingress = desired.find("Ingress", "chat").unwrap();
    let paths: Vec<(String, String, String)> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["pathType"].as_str().unwrap().to_owned(),
                p["backend"]["service"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("/health", "Exact"),
        ("/user/", "Prefix"),
        ("/api/user/", "Prefix"),
        ("/chat/", "Prefix"),
        ("/notifications/", "Prefix"),
        ("/notification/", "Prefix"),
    ]
    .iter()
    .map(|(p, t)| ((*p).to_owned(), (*t).to_owned(), "chat-monolith".to_owned()))
    .collect();
    assert_eq!(paths, expected);
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "chat-tls");
    assert!(
        !ingress["metadata"]["annotations"]
            .to_string()
            .contains("rewrite")
    );
}

#[test]
fn microservices_run_one_deployment_per_service_with_only_its_credentials() {
    let cluster = example("full");
    let desired = build(&cluster, &settled(&cluster));
    for (component, expected_env) in [
        (
            "user",
            // the last one is the example's extra setting
            vec![
                "PARLEY_USER_DATABASE_URL",
                "AMQP_URL",
                "PARLEY_AUTH_RATE_LIMIT_MAX",
            ],
        ),
        ("chat", vec!["PARLEY_CHAT_DATABASE_URL", "AMQP_URL"]),
        (
            "notification",
            vec![
                "PARLEY_NOTIFICATION_DATABASE_URL",
                "AMQP_URL",
                "PARLEY_SMTP_USER",
                "PARLEY_SMTP_PASSWORD",
            ],
        ),
    ] {
        let name = format!("{}-{component}", cluster.metadata.name.as_deref().unwrap());
        let c = container(&desired, &name);
        assert_eq!(
            c["args"],
            serde_json::json!(["serve", "--target", component])
        );
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, expected_env, "{component}");
        assert!(desired.find("PodDisruptionBudget", &name).is_some());
    }
}

#[test]
fn secrets_are_generated_once_and_never_overwritten() {
    let cluster = example("minimal");
    let first = build(&cluster, &settled(&cluster));
    let mut observed = settled(&cluster);
    observed.secrets = observed_secrets(&first);
    let mut entropy = FakeEntropy { n: 100, keys: 0 };
    let second = build::build(&cluster, &observed, &mut entropy).unwrap();
    for name in [
        "chat-database",
        "chat-broker",
        "chat-jwt",
        "chat-tls",
        "chat-runtime",
    ] {
        assert_eq!(
            secret_data(&first, name),
            secret_data(&second, name),
            "{name} unchanged"
        );
    }
    assert_eq!(
        (entropy.n, entropy.keys),
        (100, 0),
        "no new material was drawn"
    );
    let annotation = |d: &Desired| {
        d.find("Deployment", "chat-monolith").unwrap()["spec"]["template"]["metadata"]["annotations"]["parley.dev/secrets-hash"].clone()
    };
    assert_eq!(annotation(&first), annotation(&second), "pods do not roll");
}

#[test]
fn a_pre_existing_secret_of_the_expected_name_wins_and_is_not_touched() {
    let cluster = example("minimal");
    let mut observed = settled(&cluster);
    let theirs = BTreeMap::from([
        ("username".to_owned(), "admin".to_owned()),
        ("password".to_owned(), "their-password".to_owned()),
    ]);
    observed.secrets.insert(
        "chat-broker".into(),
        ObservedSecret {
            data: theirs,
            managed_by_operator: false,
        },
    );
    let desired = build(&cluster, &observed);
    assert!(
        desired.find("Secret", "chat-broker").is_none(),
        "not applied over"
    );
    let runtime = secret_data(&desired, "chat-runtime");
    assert!(
        runtime["AMQP_URL"]
            .starts_with("amqp://admin:their-password@chat-rabbitmq.parley.svc:5672/")
    );
}

#[test]
fn a_version_bump_runs_the_job_first_and_rolls_user_then_chat_then_notification() {
    let mut cluster = example("full");
    let name = cluster.metadata.name.clone().unwrap();
    let old = cluster.spec.version.clone();
    cluster.spec.version = "9.9.9".into();
    let at = |version: &str, available: bool| ObservedWorkload {
        version: version.into(),
        available,
    };
    let mut observed = Observed {
        serving_version: Some(old.clone()),
        migration: MigrationState::Running,
        workloads: Component::of(cluster.spec.mode)
            .iter()
            .map(|&c| (c, at(&old, true)))
            .collect(),
        now: 1_800_000_000,
        ..Observed::default()
    };
    let image = |d: &Desired, component: &str| {
        container(d, &format!("{name}-{component}"))["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old_image = format!("ghcr.io/parley-chat/parley:{old}");
    let new_image = "ghcr.io/parley-chat/parley:9.9.9".to_owned();

    let running = build(&cluster, &observed);
    assert!(
        running
            .find("Job", &format!("{name}-migrate-9-9-9"))
            .is_some(),
        "the Job of the new version"
    );
    let job = &running
        .find("Job", &format!("{name}-migrate-9-9-9"))
        .unwrap()["spec"]["template"]["spec"];
    assert_eq!(job["containers"][0]["image"], new_image);
    for component in ["user", "chat", "notification"] {
        assert_eq!(
            image(&running, component),
            old_image,
            "{component} waits for the migration"
        );
    }

    observed.migration = MigrationState::Failed;
    let failed = build(&cluster, &observed);
    for component in ["user", "chat", "notification"] {
        assert_eq!(
            image(&failed, component),
            old_image,
            "a failed migration rolls nothing"
        );
    }

    observed.migration = MigrationState::Succeeded;
    let step1 = build(&cluster, &observed);
    assert_eq!(image(&step1, "user"), new_image);
    assert_eq!(image(&step1, "chat"), old_image, "chat waits for user");
    assert_eq!(image(&step1, "notification"), old_image);

    observed
        .workloads
        .insert(Component::User, at("9.9.9", false));
    assert_eq!(
        image(&build(&cluster, &observed), "chat"),
        old_image,
        "user not yet available"
    );
    observed
        .workloads
        .insert(Component::User, at("9.9.9", true));
    let step2 = build(&cluster, &observed);
    assert_eq!(image(&step2, "chat"), new_image);
    assert_eq!(image(&step2, "notification"), old_image);
    observed
        .workloads
        .insert(Component::Chat, at("9.9.9", true));
    assert_eq!(
        image(&build(&cluster, &observed), "notification"),
        new_image
    );
}

#[test]
fn a_first_install_creates_no_deployment_before_the_migration() {
    let cluster = example("minimal");
    let mut observed = Observed {
        now: 1_800_000_000,
        ..Observed::default()
    };
    // The Job waits for PostgreSQL and RabbitMQ (it would fail and use up its retries).
    let desired = build(&cluster, &observed);
    assert!(desired.find("StatefulSet", "chat-postgres").is_some());
    assert!(desired.find("Job", "chat-migrate-0-1-0").is_none());
    observed.dependencies_ready = true;
    let desired = build(&cluster, &observed);
    assert!(desired.find("Job", "chat-migrate-0-1-0").is_some());
    assert!(!desired.names().iter().any(|n| n.starts_with("Deployment/")));
}

#[test]
fn a_changed_setting_or_referenced_secret_rolls_the_pods() {
    let cluster = example("full");
    let mut observed = settled(&cluster);
    observed.secrets = observed_secrets(&build(&cluster, &observed));
    let template_annotations = |desired: &Desired| {
        desired.find("Deployment", "chat-user").unwrap()["spec"]["template"]["metadata"]
            ["annotations"]
            .clone()
    };
    let before = template_annotations(&build(&cluster, &observed));

    let mut changed = cluster.clone();
    changed.spec.smtp.as_mut().unwrap().port = Some(2525);
    let after = template_annotations(&build(&changed, &observed));
    assert_ne!(
        before["parley.dev/config-hash"],
        after["parley.dev/config-hash"]
    );
    assert_eq!(
        before["parley.dev/secrets-hash"],
        after["parley.dev/secrets-hash"]
    );

    let credentials = cluster
        .spec
        .smtp
        .as_ref()
        .unwrap()
        .credentials_secret
        .clone()
        .unwrap();
    let mut with_secret = observed.clone();
    with_secret.secrets.insert(
        credentials,
        ObservedSecret {
            data: BTreeMap::from([("password".into(), "new".into())]),
            managed_by_operator: false,
        },
    );
    let after = template_annotations(&build(&cluster, &with_secret));
    assert_ne!(
        before["parley.dev/secrets-hash"],
        after["parley.dev/secrets-hash"]
    );
}

#[test]
fn jwt_rotation_makes_a_new_key_current_and_keeps_the_previous_one_for_a_day() {
    let cluster = example("full");
    let name = cluster.metadata.name.clone().unwrap();
    let jwt = format!("{name}-jwt");
    let interval = 720 * 3600;
    let first = build(&cluster, &settled(&cluster));
    let mut observed = settled(&cluster);
    observed.secrets = observed_secrets(&first);
    let kids = |d: &Desired| -> Vec<String> {
        let jwks: Value = serde_json::from_str(&secret_data(d, &jwt)["jwks.json"]).unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let original = kids(&first);
    assert_eq!(original.len(), 1);

    observed.now += interval - 1;
    let not_due = build(&cluster, &observed);
    assert_eq!(kids(&not_due), original);

    observed.now += 1;
    let rotated = build(&cluster, &observed);
    let after = kids(&rotated);
    assert_eq!(after.len(), 2);
    assert_ne!(after[0], original[0], "a new key is current");
    assert_eq!(
        after[1], original[0],
        "the previous public key still verifies"
    );
    assert_ne!(
        secret_data(&rotated, &jwt)["signing.pem"],
        secret_data(&first, &jwt)["signing.pem"]
    );
    let hash = |d: &Desired| {
        d.find("Deployment", &format!("{name}-user")).unwrap()["spec"]["template"]["metadata"]["annotations"]["parley.dev/secrets-hash"].clone()
    };
    assert_ne!(
        hash(&rotated),
        hash(&first),
        "pods roll to pick up the new key"
    );

    observed.secrets = observed_secrets(&rotated);
    observed.now += 86_400;
    assert_eq!(
        kids(&build(&cluster, &observed)),
        vec![after[0].clone()],
        "the old key goes once its tokens expired"
    );
}

#[test]
fn paused_builds_nothing_and_stopped_scales_everything_to_zero() {
    let mut cluster = example("minimal");
    cluster.spec.reconciliation_paused = true;
    assert!(build(&cluster, &settled(&cluster)).objects.is_empty());

    let mut cluster = example("minimal");
    cluster.spec.stopped = true;
    let desired = build(&cluster, &settled(&cluster));
    for (kind, name) in [
        ("Deployment", "chat-monolith"),
        ("StatefulSet", "chat-postgres"),
        ("StatefulSet", "chat-rabbitmq"),
    ] {
        assert_eq!(
            desired.find(kind, name).unwrap()["spec"]["replicas"],
            0,
            "{name}"
        );
    }
    assert!(
        desired.find("Secret", "chat-database").is_some(),
        "data and secrets stay"
    );
}

#[test]
fn an_external_database_means_no_postgres_and_its_url_from_the_secret() {
    let cluster = example("external-database");
    let desired = build(&cluster, &settled(&cluster));
    assert!(!desired.names().iter().any(|n| n.contains("postgres")));
    let text = serde_json::to_string(&desired.objects).unwrap();
    let secret = cluster
        .spec
        .postgres
        .external
        .as_ref()
        .unwrap()
        .secret_ref
        .name
        .clone();
    assert!(text.contains(&secret), "the external Secret is referenced");
}

#[test]
fn gateway_api_gets_an_httproute_instead_of_an_ingress() {
    let cluster = example("gateway");
    let desired = build(&cluster, &settled(&cluster));
    assert!(!desired.names().iter().any(|n| n.starts_with("Ingress/")));
    let route = desired
        .objects
        .iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .expect("an HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["spec"]["hostnames"][0], cluster.spec.exposure.host);
    assert!(!route["spec"]["parentRefs"].as_array().unwrap().is_empty());
}

#[test]
fn the_committed_crd_matches_the_code_and_the_chart_carries_the_same() {
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let generated = render::crd_yaml();
    let committed = std::fs::read_to_string(format!("{root}/crds/chatcluster.yaml")).unwrap();
    assert!(
        committed == generated,
        "crds/chatcluster.yaml is stale: run `cargo run --bin parley-operator -- crd > crds/chatcluster.yaml`"
    );
    let chart = std::fs::read_to_string(format!(
        "{root}/charts/parley-operator/crds/chatcluster.yaml"
    ))
    .unwrap();
    assert!(
        chart == generated,
        "charts/parley-operator/crds/chatcluster.yaml is stale: copy crds/chatcluster.yaml"
    );
}

#[test]
fn every_example_renders_and_the_output_is_kept_for_schema_validation() {
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let out = format!("{root}/target/render");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["minimal", "full", "gateway", "external-database"] {
        let cluster = example(name);
        parley_operator::validate::validate(&cluster).unwrap_or_else(|p| panic!("{name}: {p:?}"));
        let yaml = render::render(&cluster).unwrap();
        assert!(
            yaml.contains("\nkind: Deployment\n"),
            "{name} renders its workloads"
        );
        std::fs::write(format!("{out}/{name}.yaml"), yaml).unwrap();
    }
    // Mid-rotation: the staging Secret and the rotation Job are validated too.
    let mut rotating = example("minimal");
    rotating.metadata.annotations = Some(
        [(
            "parley.dev/rotate-credentials".to_owned(),
            "2026-11-24".to_owned(),
        )]
        .into(),
    );
    let yaml = render::render(&rotating).unwrap();
    assert!(yaml.contains("name: chat-database-next"));
    assert!(yaml.contains("name: chat-rotate-"));
    std::fs::write(format!("{out}/minimal-rotating.yaml"), yaml).unwrap();
}

#[test]
fn extra_env_reaches_the_container_but_never_replaces_connection_settings() {
    let mut cluster = example("full");
    let user = cluster.spec.services.user.as_mut().unwrap();
    user.env.push(k8s_openapi::api::core::v1::EnvVar {
        name: "AMQP_URL".into(),
        value: Some("amqp://attacker@elsewhere".into()),
        ..Default::default()
    });
    let desired = build(&cluster, &settled(&cluster));
    let env = container(&desired, "chat-user")["env"].clone();
    let named = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(named("PARLEY_AUTH_RATE_LIMIT_MAX")[0]["value"], "20");
    let amqp = named("AMQP_URL");
    assert_eq!(amqp.len(), 1);
    assert_eq!(amqp[0]["valueFrom"]["secretKeyRef"]["name"], "chat-runtime");
}

//! The migration Job: `parley migrate` with the image of `spec.version`, run
//! before any Deployment moves to that version. With a managed database each
//! service's schema is migrated in turn (init containers) and its runtime role
//! gets DML on it; with an external database everything runs as the given role.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Ctx;
use super::deployment::{container_security, pod_security};
use super::secret::{self, SERVICE_ROLES};
use super::secret_env;

const COMPONENT: &str = "migration";

/// The Job's name for `version` (one Job per version).
pub fn name(ctx: &Ctx, version: &str) -> String {
    let slug: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("{}-migrate-{}", ctx.name, slug.trim_matches('-'));
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Builds the Job for `spec.version`.
pub fn build(ctx: &Ctx, secrets_hash: &str) -> Job {
    let version = &ctx.cluster.spec.version;
    let managed_db = ctx.cluster.spec.postgres.managed.is_some();
    let env = connection_env(ctx);
    let step = |name: String, args: Vec<String>| Container {
        name,
        image: Some(ctx.image(version)),
        args: Some(args),
        env: Some(env.clone()),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let mut steps: Vec<Container> = if managed_db {
        SERVICE_ROLES
            .iter()
            .map(|(service, role)| {
                step(
                    format!("migrate-{service}"),
                    vec![
                        "migrate".into(),
                        "--target".into(),
                        (*service).into(),
                        "--runtime-role".into(),
                        (*role).into(),
                    ],
                )
            })
            .collect()
    } else {
        vec![step(
            "migrate".into(),
            vec!["migrate".into(), "--target".into(), "all".into()],
        )]
    };
    let last = steps.pop().expect("at least one step");
    let mut meta = ctx.meta(name(ctx, version), COMPONENT);
    meta.annotations = Some([("parley.dev/version".to_owned(), version.clone())].into());
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(1800),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels(COMPONENT)),
                    annotations: Some(
                        [(
                            "parley.dev/secrets-hash".to_owned(),
                            secrets_hash.to_owned(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    security_context: Some(pod_security()),
                    init_containers: (!steps.is_empty()).then_some(steps),
                    containers: vec![last],
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The owner URL for migrations, and the broker URL to declare queues.
fn connection_env(ctx: &Ctx) -> Vec<EnvVar> {
    let spec = &ctx.cluster.spec;
    let runtime = secret::runtime(ctx);
    let mut env = Vec::new();
    match (&spec.postgres.managed, &spec.postgres.external) {
        (Some(_), _) => env.push(secret_env(
            "PARLEY_MIGRATE_DATABASE_URL",
            &runtime,
            "PARLEY_MIGRATE_DATABASE_URL",
        )),
        (None, Some(external)) => env.push(secret_env(
            "PARLEY_MIGRATE_DATABASE_URL",
            &external.secret_ref.name,
            &external.secret_ref.key,
        )),
        (None, None) => {}
    }
    env.extend(secret::amqp_url_env(ctx));
    env.push(EnvVar {
        name: "PARLEY_LOG_FORMAT".into(),
        value: Some("json".into()),
        ..EnvVar::default()
    });
    env
}

//! Credential rotation on request, for the managed PostgreSQL and RabbitMQ.
//!
//! Setting the annotation `parley.dev/rotate-credentials` on a ChatCluster to
//! a new value (any token, e.g. a date) asks for new passwords: the owner and
//! the three runtime roles of the managed PostgreSQL, and the broker user of
//! the managed RabbitMQ.
//!
//! 1. the new passwords go into the staging Secret `<name>-database-next`,
//!    which records the token;
//! 2. the Job `<name>-rotate-<hash>` sets them where they are checked, using
//!    the current ones to get in: `ALTER ROLE … PASSWORD` as the owner
//!    (`postgres` image; runtime roles first, the owner last), then a `PUT` of
//!    the broker user on RabbitMQ's management API (`curl`);
//! 3. once that Job has succeeded, `<name>-database` and `<name>-broker` take
//!    the new passwords, which changes the connection URLs and the pods'
//!    secrets hash, so the pods roll; `status.credentialsRotation` records
//!    the token and the staging Secret is deleted.
//!
//! A failed Job changes no Secret: the pods keep the passwords they have.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::deployment::{container_security, pod_security};
use super::secret::{self, OWNER_ROLE, SERVICE_ROLES};
use super::{Ctx, Entropy, MigrationState, secret_env};

/// The annotation that requests a rotation.
pub const ANNOTATION: &str = "parley.dev/rotate-credentials";
/// The key of the staging Secret that holds the token it was made for.
pub const TOKEN_KEY: &str = "token";
const COMPONENT: &str = "rotation";

/// The staging Secret's name.
pub fn next_secret(ctx: &Ctx) -> String {
    ctx.child("database-next")
}

/// The image of the broker step.
pub const CURL_IMAGE: &str = "curlimages/curl:8.11.1";
/// The staging key of the broker's new password.
pub const BROKER_KEY: &str = "broker-password";

/// The token of a rotation that is asked for and not done yet (something
/// managed to rotate).
pub fn requested(ctx: &Ctx) -> Option<String> {
    let spec = &ctx.cluster.spec;
    if spec.postgres.managed.is_none() && spec.rabbitmq.managed.is_none() {
        return None;
    }
    let token = ctx
        .cluster
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION)?
        .trim()
        .to_owned();
    let done = ctx
        .cluster
        .status
        .as_ref()
        .and_then(|s| s.credentials_rotation.as_deref());
    (!token.is_empty() && done != Some(token.as_str())).then_some(token)
}

/// The Job's name for `token`.
pub fn job_name(ctx: &Ctx, token: &str) -> String {
    let hash = secret::digest(std::iter::once(["rotation", "token", token]));
    format!("{}-rotate-{}", ctx.name, &hash[..10])
}

/// The staging keys: the database Secret's password keys and the broker's.
fn password_keys(ctx: &Ctx) -> Vec<String> {
    let spec = &ctx.cluster.spec;
    let mut keys = Vec::new();
    if spec.postgres.managed.is_some() {
        keys.push("owner-password".to_owned());
        keys.extend(SERVICE_ROLES.iter().map(|(s, _)| format!("{s}-password")));
    }
    if spec.rabbitmq.managed.is_some() {
        keys.push(BROKER_KEY.to_owned());
    }
    keys
}

/// The staging data for `token`: observed when it was made for that token,
/// else fresh.
pub fn staging(ctx: &Ctx, token: &str, entropy: &mut dyn Entropy) -> BTreeMap<String, String> {
    if let Some(existing) = ctx.observed.secrets.get(&next_secret(ctx))
        && existing.managed_by_operator
        && existing.data.get(TOKEN_KEY).map(String::as_str) == Some(token)
        && password_keys(ctx)
            .iter()
            .all(|k| existing.data.contains_key(k))
    {
        return existing.data.clone();
    }
    let mut data: BTreeMap<String, String> = password_keys(ctx)
        .into_iter()
        .map(|k| (k, entropy.password()))
        .collect();
    data.insert(TOKEN_KEY.into(), token.into());
    data
}

/// The new passwords (staging keys) once the Job for the requested token has
/// succeeded.
pub fn completed(ctx: &Ctx) -> Option<BTreeMap<String, String>> {
    let token = requested(ctx)?;
    if ctx.observed.rotation != MigrationState::Succeeded {
        return None;
    }
    let staged = ctx.observed.secrets.get(&next_secret(ctx))?;
    (staged.managed_by_operator && staged.data.get(TOKEN_KEY) == Some(&token)).then(|| {
        password_keys(ctx)
            .into_iter()
            .filter_map(|k| staged.data.get(&k).map(|v| (k, v.clone())))
            .collect()
    })
}

/// The Job that sets the staged passwords in PostgreSQL and RabbitMQ.
pub fn job(ctx: &Ctx, token: &str) -> Job {
    let spec = &ctx.cluster.spec;
    let mut steps = Vec::new();
    if let Some(managed) = &spec.postgres.managed {
        steps.push(database_step(ctx, &managed.version));
    }
    if spec.rabbitmq.managed.is_some() {
        steps.push(broker_step(ctx));
    }
    let last = steps.pop().expect("requested() needs something managed");
    // The token itself stays out of the Job (its name carries a hash of it):
    // a token such as 2026-11-24 would be a date to YAML 1.1 readers.
    Job {
        metadata: ctx.meta(job_name(ctx, token), COMPONENT),
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels(COMPONENT)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // The `postgres` image's user; otherwise as Parley pods.
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(999),
                        run_as_group: Some(999),
                        ..pod_security()
                    }),
                    // In order: the database first, then the broker.
                    init_containers: (!steps.is_empty()).then_some(steps),
                    containers: vec![last],
                    // Root filesystems are read-only; the broker step writes
                    // its request body and credentials here (in memory).
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            medium: Some("Memory".into()),
                            ..EmptyDirVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// `ALTER ROLE … PASSWORD` as the owner: runtime roles first, the owner (this
/// connection's role) last.
fn database_step(ctx: &Ctx, version: &str) -> Container {
    let current = secret::database(ctx);
    let next = next_secret(ctx);
    let mut env = vec![
        plain("PGHOST", format!("{}-postgres", ctx.name)),
        plain("PGPORT", "5432".into()),
        plain("PGDATABASE", "parley".into()),
        plain("PGUSER", OWNER_ROLE.into()),
        secret_env("PGPASSWORD", &current, "owner-password"),
        secret_env("NEW_OWNER_PASSWORD", &next, "owner-password"),
    ];
    let mut script = String::from("set -eu\npsql -v ON_ERROR_STOP=1");
    let mut statements = String::new();
    for (service, role) in SERVICE_ROLES {
        let var = format!("NEW_{}_PASSWORD", service.to_uppercase());
        env.push(secret_env(&var, &next, &format!("{service}-password")));
        script.push_str(&format!(" -v {service}_pw=\"${var}\""));
        statements.push_str(&format!("ALTER ROLE {role} PASSWORD :'{service}_pw';\n"));
    }
    script.push_str(" -v owner_pw=\"$NEW_OWNER_PASSWORD\" <<'SQL'\n");
    statements.push_str(&format!("ALTER ROLE {OWNER_ROLE} PASSWORD :'owner_pw';\n"));
    script.push_str(&statements);
    script.push_str("SQL\n");
    Container {
        name: "rotate-database".into(),
        image: Some(format!("postgres:{version}")),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        env: Some(env),
        security_context: Some(container_security()),
        ..Container::default()
    }
}

/// A `PUT` of the broker user on the management API, authenticated with the
/// current password; the body is written to a file so no password appears in
/// a command line.
fn broker_step(ctx: &Ctx) -> Container {
    let current = secret::broker(ctx);
    let next = next_secret(ctx);
    let url = format!(
        "http://{}-rabbitmq:{}/api/users/$BROKER_USER",
        ctx.name,
        super::rabbitmq::MANAGEMENT_PORT
    );
    let script = format!(
        "set -eu\n\
         umask 077\n\
         printf '{{\"password\":\"%s\",\"tags\":\"administrator\"}}' \"$NEW_BROKER_PASSWORD\" > /tmp/body.json\n\
         printf 'user = \"%s:%s\"\\n' \"$BROKER_USER\" \"$BROKER_PASSWORD\" > /tmp/auth.conf\n\
         curl --fail --silent --show-error --retry 5 --retry-all-errors -K /tmp/auth.conf \\\n\
         \x20 -X PUT -H 'content-type: application/json' --data @/tmp/body.json \"{url}\"\n"
    );
    Container {
        name: "rotate-broker".into(),
        image: Some(CURL_IMAGE.into()),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        env: Some(vec![
            secret_env("BROKER_USER", &current, "username"),
            secret_env("BROKER_PASSWORD", &current, "password"),
            secret_env("NEW_BROKER_PASSWORD", &next, BROKER_KEY),
        ]),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

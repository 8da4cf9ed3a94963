//! Database credential rotation on request.
//!
//! Setting the annotation `parley.dev/rotate-credentials` on a ChatCluster to
//! a new value (any token, e.g. a date) asks for new passwords for the owner
//! and the three runtime roles of the managed PostgreSQL:
//!
//! 1. the new passwords go into the staging Secret `<name>-database-next`,
//!    labelled with the token;
//! 2. the Job `<name>-rotate-<hash>` (the `postgres` image, connecting as the
//!    owner with the current password) runs `ALTER ROLE … PASSWORD` for each
//!    role: the database has the new passwords first;
//! 3. once that Job has succeeded, `<name>-database` takes the new passwords,
//!    which changes the connection URLs and the pods' secrets hash, so the
//!    pods roll; `status.credentialsRotation` records the token and the
//!    staging Secret is deleted.
//!
//! A failed Job changes nothing: the old passwords stay valid and in use.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::deployment::container_security;
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

/// The token of a rotation that is asked for and not done yet (managed
/// PostgreSQL only).
pub fn requested(ctx: &Ctx) -> Option<String> {
    ctx.cluster.spec.postgres.managed.as_ref()?;
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

/// The keys of the database Secret that hold passwords.
fn password_keys() -> Vec<String> {
    std::iter::once("owner-password".to_owned())
        .chain(SERVICE_ROLES.iter().map(|(s, _)| format!("{s}-password")))
        .collect()
}

/// The staging data for `token`: observed when it was made for that token,
/// else fresh.
pub fn staging(ctx: &Ctx, token: &str, entropy: &mut dyn Entropy) -> BTreeMap<String, String> {
    if let Some(existing) = ctx.observed.secrets.get(&next_secret(ctx))
        && existing.managed_by_operator
        && existing.data.get(TOKEN_KEY).map(String::as_str) == Some(token)
        && password_keys()
            .iter()
            .all(|k| existing.data.contains_key(k))
    {
        return existing.data.clone();
    }
    let mut data: BTreeMap<String, String> = password_keys()
        .into_iter()
        .map(|k| (k, entropy.password()))
        .collect();
    data.insert(TOKEN_KEY.into(), token.into());
    data
}

/// The new passwords once the Job for the requested token has succeeded.
pub fn completed(ctx: &Ctx) -> Option<BTreeMap<String, String>> {
    let token = requested(ctx)?;
    if ctx.observed.rotation != MigrationState::Succeeded {
        return None;
    }
    let staged = ctx.observed.secrets.get(&next_secret(ctx))?;
    (staged.managed_by_operator && staged.data.get(TOKEN_KEY) == Some(&token)).then(|| {
        password_keys()
            .into_iter()
            .filter_map(|k| staged.data.get(&k).map(|v| (k, v.clone())))
            .collect()
    })
}

/// The Job that sets the staged passwords in the database.
pub fn job(ctx: &Ctx, token: &str) -> Job {
    let version = ctx
        .cluster
        .spec
        .postgres
        .managed
        .as_ref()
        .map_or_else(|| "17".to_owned(), |m| m.version.clone());
    let current = secret::database(ctx);
    let next = next_secret(ctx);
    let plain = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        plain("PGHOST", format!("{}-postgres", ctx.name)),
        plain("PGPORT", "5432".into()),
        plain("PGDATABASE", "parley".into()),
        plain("PGUSER", OWNER_ROLE.into()),
        secret_env("PGPASSWORD", &current, "owner-password"),
        secret_env("NEW_OWNER_PASSWORD", &next, "owner-password"),
    ];
    // Runtime roles first, the owner (this connection's role) last.
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
                    security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
                        run_as_user: Some(999),
                        run_as_group: Some(999),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "rotate".into(),
                        image: Some(format!("postgres:{version}")),
                        command: Some(vec!["sh".into(), "-c".into(), script]),
                        env: Some(env),
                        security_context: Some(container_security()),
                        ..Container::default()
                    }],
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

//! Deployments of the Parley workloads, and the rollout rule that keeps them on
//! the serving version until the migration Job of the new one has succeeded.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, HTTPGetAction, KeyToPath, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{self, JWT_MOUNT};
use super::secret::{self, SERVICE_ROLES};
use super::{Component, Ctx, HTTP_PORT, MigrationState, secret_env};
use crate::crd::ServiceSpec;

/// The Deployment (and Service) name of a component.
pub fn name(ctx: &Ctx, component: Component) -> String {
    ctx.child(component.name())
}

/// Which components to run, at which version, in rollout order.
///
/// The new `spec.version` reaches a component only once its migration Job has
/// succeeded and every component before it is available at that version;
/// until then it keeps the version it runs (or the serving version). A
/// component with no version to run yet (first install) is left out.
pub fn rollout(ctx: &Ctx) -> Vec<(Component, String)> {
    let target = &ctx.cluster.spec.version;
    let observed = ctx.observed;
    let migrated = observed.migration == MigrationState::Succeeded;
    let mut previous_done = true;
    let mut out = Vec::new();
    for &component in Component::of(ctx.cluster.spec.mode) {
        let current = observed
            .workloads
            .get(&component)
            .map(|w| w.version.clone())
            .or_else(|| observed.serving_version.clone());
        let version = if migrated && previous_done {
            Some(target.clone())
        } else {
            current
        };
        if migrated {
            previous_done &= observed
                .workloads
                .get(&component)
                .is_some_and(|w| w.version == *target && w.available);
        }
        if let Some(version) = version {
            out.push((component, version));
        }
    }
    out
}

fn settings(ctx: &Ctx, component: Component) -> ServiceSpec {
    let services = &ctx.cluster.spec.services;
    match component {
        Component::Monolith => services.monolith.clone(),
        Component::User => services.user.clone(),
        Component::Chat => services.chat.clone(),
        Component::Notification => services.notification.clone(),
    }
    .unwrap_or_default()
}

/// Default replicas (the notification service consumes a queue; one is enough).
fn default_replicas(component: Component) -> i32 {
    match component {
        Component::Notification => 1,
        _ => 2,
    }
}

/// The pod security context of every Parley pod.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The container security context of every Parley container.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Connection settings a component needs, and nothing more.
fn env(ctx: &Ctx, component: Component) -> Vec<EnvVar> {
    let spec = &ctx.cluster.spec;
    let runtime = secret::runtime(ctx);
    let mut env = Vec::new();
    let services: Vec<&str> = match component {
        Component::Monolith => SERVICE_ROLES.iter().map(|(s, _)| *s).collect(),
        other => vec![other.name()],
    };
    match (&spec.postgres.managed, &spec.postgres.external) {
        (Some(_), _) => {
            for service in &services {
                let var = format!("PARLEY_{}_DATABASE_URL", service.to_uppercase());
                env.push(secret_env(&var, &runtime, &var));
            }
        }
        (None, Some(external)) => env.push(secret_env(
            "DATABASE_URL",
            &external.secret_ref.name,
            &external.secret_ref.key,
        )),
        (None, None) => {}
    }
    env.extend(secret::amqp_url_env(ctx));
    let sends_email = matches!(component, Component::Monolith | Component::Notification);
    if let Some(credentials) = spec
        .smtp
        .as_ref()
        .and_then(|s| s.credentials_secret.as_deref())
        .filter(|_| sends_email)
    {
        env.push(secret_env("PARLEY_SMTP_USER", credentials, "username"));
        env.push(secret_env("PARLEY_SMTP_PASSWORD", credentials, "password"));
    }
    env
}

/// The operator's variables, then the spec's extra ones whose names it does
/// not set itself (connection URLs and credentials stay the operator's).
fn with_extra_env(mut env: Vec<EnvVar>, extra: &[EnvVar]) -> Vec<EnvVar> {
    let own: Vec<String> = env.iter().map(|e| e.name.clone()).collect();
    env.extend(extra.iter().filter(|e| !own.contains(&e.name)).cloned());
    env
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Hashes of what the pods read: a change rolls them.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every Secret the pods read (generated and referenced).
    pub secrets_hash: &'a str,
    /// The ConfigMap's data.
    pub config_hash: &'a str,
}

/// Builds the Deployment of `component` at `version`. The pod template carries
/// the [`Inputs`] hashes, so a changed Secret or setting rolls the pods.
pub fn build(ctx: &Ctx, component: Component, version: &str, inputs: &Inputs) -> Deployment {
    let settings = settings(ctx, component);
    let overrides = settings.pod_overrides.clone().unwrap_or_default();
    let selector = ctx.selector(component.name());
    let mut labels = overrides.labels.clone();
    labels.extend(ctx.labels(component.name()));
    labels.insert("app.kubernetes.io/version".into(), version.into());
    let mut annotations = overrides.annotations.clone();
    annotations.insert("parley.dev/secrets-hash".into(), inputs.secrets_hash.into());
    annotations.insert("parley.dev/config-hash".into(), inputs.config_hash.into());
    // Token verification needs the JWKS; only the user service signs.
    let signs = matches!(component, Component::Monolith | Component::User);
    let jwt_items = if signs {
        None
    } else {
        Some(vec![KeyToPath {
            key: "jwks.json".into(),
            path: "jwks.json".into(),
            ..KeyToPath::default()
        }])
    };
    let affinity = overrides.affinity.clone().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector.clone()),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    let replicas = if ctx.cluster.spec.stopped {
        0
    } else {
        settings
            .replicas
            .unwrap_or_else(|| default_replicas(component))
    };
    let mut meta = ctx.meta(name(ctx, component), component.name());
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("app.kubernetes.io/version".into(), version.into());
    Deployment {
        metadata: meta,
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    priority_class_name: overrides.priority_class_name.clone(),
                    affinity: Some(affinity),
                    containers: vec![Container {
                        name: "parley".into(),
                        image: Some(ctx.image(version)),
                        args: Some(vec![
                            "serve".into(),
                            "--target".into(),
                            component.target().into(),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: HTTP_PORT,
                            ..ContainerPort::default()
                        }]),
                        env_from: Some(vec![EnvFromSource {
                            config_map_ref: Some(ConfigMapEnvSource {
                                name: config::name(ctx),
                                optional: None,
                            }),
                            ..EnvFromSource::default()
                        }]),
                        env: Some(with_extra_env(env(ctx, component), &settings.env)),
                        liveness_probe: Some(probe("/livez", 10)),
                        readiness_probe: Some(probe("/readyz", 5)),
                        resources: settings.resources.clone(),
                        security_context: Some(container_security()),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "jwt".into(),
                                mount_path: JWT_MOUNT.into(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                            VolumeMount {
                                name: "tmp".into(),
                                mount_path: "/tmp".into(),
                                ..VolumeMount::default()
                            },
                        ]),
                        ..Container::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "jwt".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secret::jwt(ctx)),
                                items: jwt_items,
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

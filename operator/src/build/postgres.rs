//! The managed PostgreSQL: a StatefulSet, its Service, and an init script that
//! creates the per-service runtime roles on first start.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;

use super::secret::{self, OWNER_ROLE, SERVICE_ROLES};
use super::{Ctx, secret_env};
use crate::crd::ManagedPostgres;

const COMPONENT: &str = "postgres";

/// The Service (and StatefulSet) name.
pub fn name(ctx: &Ctx) -> String {
    ctx.child(COMPONENT)
}

/// The init script: one login role per service, allowed to connect.
fn init_script() -> String {
    let mut script = String::from("#!/bin/sh\nset -eu\n");
    for (service, role) in SERVICE_ROLES {
        let var = format!("PARLEY_{}_PASSWORD", service.to_uppercase());
        script.push_str(&format!(
            "psql -v ON_ERROR_STOP=1 --username \"$POSTGRES_USER\" --dbname \"$POSTGRES_DB\" -v pw=\"${var}\" <<'SQL'\n\
             CREATE ROLE {role} LOGIN PASSWORD :'pw';\n\
             GRANT CONNECT ON DATABASE parley TO {role};\n\
             SQL\n"
        ));
    }
    script
}

/// Builds the ConfigMap, Service and StatefulSet.
pub fn build(ctx: &Ctx, spec: &ManagedPostgres) -> Vec<Value> {
    let name = name(ctx);
    let secret = secret::database(ctx);
    let selector = ctx.selector(COMPONENT);
    let init = ConfigMap {
        metadata: ctx.meta(ctx.child("postgres-init"), COMPONENT),
        data: Some(BTreeMap::from([(
            "10-parley-roles.sh".to_owned(),
            init_script(),
        )])),
        ..ConfigMap::default()
    };
    let service = Service {
        metadata: ctx.meta(name.clone(), COMPONENT),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: 5432,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let mut env = vec![
        EnvVar {
            name: "POSTGRES_USER".into(),
            value: Some(OWNER_ROLE.into()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "POSTGRES_DB".into(),
            value: Some("parley".into()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "PGDATA".into(),
            value: Some("/var/lib/postgresql/data/pgdata".into()),
            ..EnvVar::default()
        },
        secret_env("POSTGRES_PASSWORD", &secret, "owner-password"),
    ];
    for (service, _) in SERVICE_ROLES {
        env.push(secret_env(
            &format!("PARLEY_{}_PASSWORD", service.to_uppercase()),
            &secret,
            &format!("{service}-password"),
        ));
    }
    let replicas = if ctx.cluster.spec.stopped { 0 } else { 1 };
    let statefulset = StatefulSet {
        metadata: ctx.meta(name.clone(), COMPONENT),
        spec: StatefulSetSpec {
            service_name: Some(name.clone()),
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels(COMPONENT)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(999),
                        run_as_group: Some(999),
                        fs_group: Some(999),
                        run_as_non_root: Some(true),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![Container {
                        name: "postgres".into(),
                        image: Some(format!("postgres:{}", spec.version)),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            name: Some("postgres".into()),
                            container_port: 5432,
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(Probe {
                            exec: Some(ExecAction {
                                command: Some(vec![
                                    "pg_isready".into(),
                                    "--username".into(),
                                    OWNER_ROLE.into(),
                                    "--dbname".into(),
                                    "parley".into(),
                                ]),
                            }),
                            period_seconds: Some(5),
                            ..Probe::default()
                        }),
                        resources: spec.resources.clone(),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "data".into(),
                                mount_path: "/var/lib/postgresql/data".into(),
                                ..VolumeMount::default()
                            },
                            VolumeMount {
                                name: "init".into(),
                                mount_path: "/docker-entrypoint-initdb.d".into(),
                                read_only: Some(true),
                                ..VolumeMount::default()
                            },
                        ]),
                        ..Container::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "init".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: ctx.child("postgres-init"),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim(
                &spec.storage.size,
                spec.storage.storage_class_name.clone(),
            )]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };
    vec![
        serde_json::to_value(init).expect("serializes"),
        serde_json::to_value(service).expect("serializes"),
        serde_json::to_value(statefulset).expect("serializes"),
    ]
}

/// A `data` volume claim template of `size`.
pub fn claim(size: &str, storage_class_name: Option<String>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.to_owned()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

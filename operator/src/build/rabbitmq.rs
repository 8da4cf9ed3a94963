//! The managed RabbitMQ: a StatefulSet and its Service.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    Service, ServicePort, ServiceSpec, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;

use super::postgres::claim;
use super::secret;
use super::{Ctx, secret_env};
use crate::crd::ManagedRabbitmq;

const COMPONENT: &str = "rabbitmq";

/// The management plugin's HTTP port.
pub const MANAGEMENT_PORT: i32 = 15672;

/// The Service (and StatefulSet) name.
pub fn name(ctx: &Ctx) -> String {
    ctx.child(COMPONENT)
}

/// Builds the Service and StatefulSet.
pub fn build(ctx: &Ctx, spec: &ManagedRabbitmq) -> Vec<Value> {
    let name = name(ctx);
    let secret = secret::broker(ctx);
    let selector = ctx.selector(COMPONENT);
    let service = Service {
        metadata: ctx.meta(name.clone(), COMPONENT),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![
                ServicePort {
                    name: Some("amqp".into()),
                    port: 5672,
                    ..ServicePort::default()
                },
                // Reached only by the credential-rotation Job (NetworkPolicy).
                ServicePort {
                    name: Some("management".into()),
                    port: MANAGEMENT_PORT,
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let statefulset = StatefulSet {
        metadata: ctx.meta(name.clone(), COMPONENT),
        spec: StatefulSetSpec {
            service_name: Some(name),
            replicas: Some(if ctx.cluster.spec.stopped { 0 } else { 1 }),
            selector: LabelSelector {
                match_labels: Some(selector),
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
                        name: "rabbitmq".into(),
                        // The management plugin's HTTP API changes passwords
                        // when credentials are rotated on request.
                        image: Some(format!("rabbitmq:{}-management", spec.version)),
                        env: Some(vec![
                            secret_env("RABBITMQ_DEFAULT_USER", &secret, "username"),
                            secret_env("RABBITMQ_DEFAULT_PASS", &secret, "password"),
                        ]),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("amqp".into()),
                                container_port: 5672,
                                ..ContainerPort::default()
                            },
                            ContainerPort {
                                name: Some("management".into()),
                                container_port: MANAGEMENT_PORT,
                                ..ContainerPort::default()
                            },
                        ]),
                        readiness_probe: Some(Probe {
                            exec: Some(ExecAction {
                                command: Some(vec![
                                    "rabbitmq-diagnostics".into(),
                                    "-q".into(),
                                    "ping".into(),
                                ]),
                            }),
                            period_seconds: Some(10),
                            timeout_seconds: Some(10),
                            ..Probe::default()
                        }),
                        resources: spec.resources.clone(),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "data".into(),
                            mount_path: "/var/lib/rabbitmq".into(),
                            ..VolumeMount::default()
                        }]),
                        ..Container::default()
                    }],
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
        serde_json::to_value(service).expect("serializes"),
        serde_json::to_value(statefulset).expect("serializes"),
    ]
}

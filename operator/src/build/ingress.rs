//! The Ingress: the contract's public prefixes routed to the services with no
//! rewrites (each service serves its public paths itself), TLS on the host.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};

use super::{Component, Ctx, deployment};
use crate::crd::IngressSpec;

/// The Secret holding the certificate the route serves.
pub fn tls_secret(ctx: &Ctx) -> String {
    ctx.cluster
        .spec
        .exposure
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| super::secret::tls(ctx))
}

fn backend(ctx: &Ctx, component: Component) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: deployment::name(ctx, component),
            port: Some(ServiceBackendPort {
                number: Some(80),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    }
}

/// The component answering `/health` (the contract's gateway health check).
pub fn health_component(ctx: &Ctx) -> Component {
    Component::of(ctx.cluster.spec.mode)[0]
}

/// Builds the Ingress.
pub fn build(ctx: &Ctx, spec: &IngressSpec) -> Ingress {
    let mut paths = vec![HTTPIngressPath {
        path: Some("/health".into()),
        path_type: "Exact".into(),
        backend: backend(ctx, health_component(ctx)),
    }];
    for &component in Component::of(ctx.cluster.spec.mode) {
        for prefix in component.prefixes() {
            paths.push(HTTPIngressPath {
                path: Some((*prefix).into()),
                path_type: "Prefix".into(),
                backend: backend(ctx, component),
            });
        }
    }
    let mut annotations = spec.annotations.clone();
    if spec
        .class_name
        .as_deref()
        .is_some_and(|class| class.contains("nginx"))
    {
        // Long-lived Socket.IO connections, the contract's body limit, and
        // sticky sessions for the polling transport across replicas.
        for (key, value) in [
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
            ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
            ("nginx.ingress.kubernetes.io/proxy-body-size", "20m"),
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            (
                "nginx.ingress.kubernetes.io/session-cookie-name",
                "parley-affinity",
            ),
        ] {
            annotations
                .entry(key.into())
                .or_insert_with(|| value.into());
        }
    }
    let mut meta = ctx.meta(ctx.name.clone(), "ingress");
    meta.annotations = (!annotations.is_empty()).then_some(annotations);
    Ingress {
        metadata: meta,
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![ctx.cluster.spec.exposure.host.clone()]),
                secret_name: Some(tls_secret(ctx)),
            }]),
            rules: Some(vec![IngressRule {
                host: Some(ctx.cluster.spec.exposure.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            ..K8sIngressSpec::default()
        }),
        ..Ingress::default()
    }
}

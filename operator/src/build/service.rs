//! Services in front of the Parley Deployments.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, Ctx, HTTP_PORT, deployment};

/// Builds the Service of `component` (port 80 → container port `http`).
pub fn build(ctx: &Ctx, component: Component) -> Service {
    Service {
        metadata: ctx.meta(deployment::name(ctx, component), component.name()),
        spec: Some(ServiceSpec {
            selector: Some(ctx.selector(component.name())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(HTTP_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

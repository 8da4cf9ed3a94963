//! The Gateway API HTTPRoute (`gateway.networking.k8s.io/v1`): the same
//! prefixes as the Ingress, attached to existing Gateways. TLS terminates at
//! the Gateway's listener.

use serde_json::{Value, json};

use super::ingress::health_component;
use super::{Component, Ctx, deployment};
use crate::crd::GatewaySpec;

/// Builds the HTTPRoute.
pub fn build(ctx: &Ctx, spec: &GatewaySpec) -> Value {
    let backend =
        |component: Component| json!([{"name": deployment::name(ctx, component), "port": 80}]);
    let mut rules = vec![json!({
        "matches": [{"path": {"type": "Exact", "value": "/health"}}],
        "backendRefs": backend(health_component(ctx)),
    })];
    for &component in Component::of(ctx.cluster.spec.mode) {
        let matches: Vec<Value> = component
            .prefixes()
            .iter()
            .map(|prefix| json!({"path": {"type": "PathPrefix", "value": prefix}}))
            .collect();
        rules.push(json!({"matches": matches, "backendRefs": backend(component)}));
    }
    let parents: Vec<Value> = spec
        .parent_refs
        .iter()
        .map(|p| {
            let mut parent =
                json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(namespace) = &p.namespace {
                parent["namespace"] = json!(namespace);
            }
            if let Some(section) = &p.section_name {
                parent["sectionName"] = json!(section);
            }
            parent
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": serde_json::to_value(ctx.meta(ctx.name.clone(), "route")).expect("serializes"),
        "spec": {
            "parentRefs": parents,
            "hostnames": [ctx.cluster.spec.exposure.host],
            "rules": rules,
        },
    })
}

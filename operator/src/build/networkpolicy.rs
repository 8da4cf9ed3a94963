//! NetworkPolicies: the database and broker accept only this cluster's Parley
//! pods; Parley pods accept HTTP on their port only.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Ctx, HTTP_PORT};

fn parley_pods(ctx: &Ctx) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("app.kubernetes.io/instance".to_owned(), ctx.name.clone())].into()),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app.kubernetes.io/component".into(),
            operator: "In".into(),
            values: Some(vec![
                "monolith".into(),
                "user".into(),
                "chat".into(),
                "notification".into(),
                "migration".into(),
                "rotation".into(),
            ]),
        }]),
    }
}

fn policy(
    ctx: &Ctx,
    name: String,
    pods: LabelSelector,
    port: i32,
    from: Option<Vec<NetworkPolicyPeer>>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ctx.meta(name, "network"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Builds the NetworkPolicies.
pub fn build(ctx: &Ctx) -> Vec<NetworkPolicy> {
    let from_parley = Some(vec![NetworkPolicyPeer {
        pod_selector: Some(parley_pods(ctx)),
        ..NetworkPolicyPeer::default()
    }]);
    let mut policies = vec![policy(
        ctx,
        ctx.child("http"),
        parley_pods(ctx),
        HTTP_PORT,
        None,
    )];
    if ctx.cluster.spec.postgres.managed.is_some() {
        let pods = LabelSelector {
            match_labels: Some(ctx.selector("postgres")),
            ..LabelSelector::default()
        };
        policies.push(policy(
            ctx,
            ctx.child("postgres"),
            pods,
            5432,
            from_parley.clone(),
        ));
    }
    if ctx.cluster.spec.rabbitmq.managed.is_some() {
        let pods = LabelSelector {
            match_labels: Some(ctx.selector("rabbitmq")),
            ..LabelSelector::default()
        };
        policies.push(policy(
            ctx,
            ctx.child("rabbitmq"),
            pods.clone(),
            5672,
            from_parley,
        ));
        let from_rotation = Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector("rotation")),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]);
        policies.push(policy(
            ctx,
            ctx.child("rabbitmq-management"),
            pods,
            super::rabbitmq::MANAGEMENT_PORT,
            from_rotation,
        ));
    }
    policies
}

//! PodDisruptionBudgets: voluntary evictions take one pod of a service at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, Ctx, deployment};

/// Builds the PodDisruptionBudget of `component`.
pub fn build(ctx: &Ctx, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(deployment::name(ctx, component), component.name()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component.name())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

//! The pure core of reconcile: everything the operator wants to exist for one
//! `ChatCluster`, computed from the spec and the observed state, with no API
//! calls. One file per Kubernetes kind.
//!
//! Decisions made here:
//! * **Secrets** are generated once ([`Entropy`]) and never overwritten: an
//!   existing operator-made Secret is re-emitted unchanged; a pre-existing
//!   Secret of the expected name made by someone else wins and is not touched.
//! * **Versions** roll forward only behind the migration Job: workloads keep
//!   the serving version until the Job for `spec.version` has succeeded, then
//!   move in order user → chat → notification, each after the previous one is
//!   available at the new version.
//! * **Stopped** keeps every object but scales workloads to zero.

pub mod certificate;
pub mod config;
pub mod deployment;
pub mod httproute;
pub mod ingress;
pub mod job;
pub mod networkpolicy;
pub mod pdb;
pub mod postgres;
pub mod rabbitmq;
pub mod rotation;
pub mod secret;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use crate::crd::{ChatCluster, Mode};

/// The default image repository of the `parley` binary.
pub const DEFAULT_IMAGE: &str = "ghcr.io/parley-chat/parley";
/// The field manager and `managed-by` label value.
pub const MANAGER: &str = "parley-operator";
/// The port every Parley container listens on.
pub const HTTP_PORT: i32 = 8080;

/// A Parley workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// `serve --target all` (monolithic mode).
    Monolith,
    User,
    Chat,
    Notification,
}

impl Component {
    /// Workloads of a mode, in rollout order.
    pub fn of(mode: Mode) -> &'static [Component] {
        match mode {
            Mode::Monolithic => &[Component::Monolith],
            Mode::Microservices => &[Component::User, Component::Chat, Component::Notification],
        }
    }

    /// The label value and name suffix.
    pub fn name(self) -> &'static str {
        match self {
            Component::Monolith => "monolith",
            Component::User => "user",
            Component::Chat => "chat",
            Component::Notification => "notification",
        }
    }

    /// The `parley serve --target` value.
    pub fn target(self) -> &'static str {
        match self {
            Component::Monolith => "all",
            other => other.name(),
        }
    }

    /// The public path prefixes it serves (contract §1, no rewrites).
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            Component::Monolith => &[
                "/user/",
                "/api/user/",
                "/chat/",
                "/notifications/",
                "/notification/",
            ],
            Component::User => &["/user/", "/api/user/"],
            Component::Chat => &["/chat/"],
            Component::Notification => &["/notifications/", "/notification/"],
        }
    }
}

/// Where the migration Job for `spec.version` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigrationState {
    /// No Job for this version yet.
    #[default]
    Missing,
    Running,
    Succeeded,
    Failed,
}

/// A workload as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedWorkload {
    /// The version its pod template runs.
    pub version: String,
    /// Whether every replica of that version is available.
    pub available: bool,
}

/// What dereference found in the cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Secrets by name: their data, and whether the operator made them.
    pub secrets: BTreeMap<String, ObservedSecret>,
    /// The migration Job of `spec.version`.
    pub migration: MigrationState,
    /// Deployments by component.
    pub workloads: BTreeMap<Component, ObservedWorkload>,
    /// The version serving now (`status.currentVersion`).
    pub serving_version: Option<String>,
    /// Now, as Unix seconds (for key rotation).
    pub now: i64,
    /// PostgreSQL and RabbitMQ accept connections: the migration Job of a new
    /// version is created only then (it would fail and use up its retries).
    pub dependencies_ready: bool,
    /// The Job of a requested credential rotation ([`rotation`]).
    pub rotation: MigrationState,
}

/// An existing Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSecret {
    pub data: BTreeMap<String, String>,
    pub managed_by_operator: bool,
}

/// Fresh secret material. The operator uses [`OsEntropy`]; tests use a
/// deterministic source.
pub trait Entropy {
    /// A random password (URL-safe).
    fn password(&mut self) -> String;
    /// A new Ed25519 signing key.
    fn signing_key(&mut self) -> parley_keys::GeneratedKey;
    /// A self-signed CA and a certificate for `host` signed by it:
    /// `(ca.crt, tls.crt, tls.key)` in PEM.
    fn certificate(&mut self, host: &str) -> (String, String, String);
}

/// Entropy from the operating system.
#[derive(Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn password(&mut self) -> String {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    }

    fn signing_key(&mut self) -> parley_keys::GeneratedKey {
        parley_keys::generate()
    }

    fn certificate(&mut self, host: &str) -> (String, String, String) {
        certificate::self_signed(host)
    }
}

/// Everything to apply, in apply order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Desired {
    pub objects: Vec<Value>,
    /// The token of a credential rotation this state completes (the new
    /// passwords are in the database Secret; record it in the status).
    pub completed_rotation: Option<String>,
}

impl Desired {
    fn push<T: Serialize>(&mut self, object: &T) {
        self.objects
            .push(serde_json::to_value(object).expect("Kubernetes objects serialize"));
    }

    /// The object of `kind` named `name`, if any.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// `kind/name` of every object, in order.
    pub fn names(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

/// Why nothing can be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the ChatCluster has no namespace")]
    NoNamespace,
    #[error("secret {0} misses key {1}")]
    SecretKey(String, String),
}

/// The shared context of every builder.
pub struct Ctx<'a> {
    pub cluster: &'a ChatCluster,
    pub observed: &'a Observed,
    pub name: String,
    pub namespace: String,
}

impl<'a> Ctx<'a> {
    /// The context of `cluster` (which must have a namespace).
    pub fn new(cluster: &'a ChatCluster, observed: &'a Observed) -> Result<Self, BuildError> {
        Ok(Ctx {
            cluster,
            observed,
            name: cluster.name_any(),
            namespace: cluster.namespace().ok_or(BuildError::NoNamespace)?,
        })
    }

    /// `<cluster>-<suffix>`.
    pub fn child(&self, suffix: &str) -> String {
        format!("{}-{}", self.name, suffix)
    }

    /// The labels every object carries.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "parley".into()),
            ("app.kubernetes.io/instance".into(), self.name.clone()),
            ("app.kubernetes.io/component".into(), component.into()),
            ("app.kubernetes.io/part-of".into(), "parley".into()),
            ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        ])
    }

    /// The labels that select the pods of a component.
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/instance".into(), self.name.clone()),
            ("app.kubernetes.io/component".into(), component.into()),
        ])
    }

    /// Metadata of a child object.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: self.owner().map(|owner| vec![owner]),
            ..ObjectMeta::default()
        }
    }

    fn owner(&self) -> Option<OwnerReference> {
        self.cluster.controller_owner_ref(&())
    }

    /// The `parley` image of `version`.
    pub fn image(&self, version: &str) -> String {
        let repository = self
            .cluster
            .spec
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        format!("{repository}:{version}")
    }
}

/// Builds every desired object. Pure: the same inputs give the same output.
pub fn build(
    cluster: &ChatCluster,
    observed: &Observed,
    entropy: &mut dyn Entropy,
) -> Result<Desired, BuildError> {
    let ctx = Ctx::new(cluster, observed)?;
    let mut desired = Desired::default();
    if cluster.spec.reconciliation_paused {
        return Ok(desired);
    }
    let secrets = secret::build(&ctx, entropy)?;
    for object in &secrets.objects {
        desired.push(object);
    }
    if let Some(token) = rotation::requested(&ctx) {
        if rotation::completed(&ctx).is_some() {
            desired.completed_rotation = Some(token);
        } else {
            let staged = rotation::staging(&ctx, &token, entropy);
            desired.push(&secret::object(
                &ctx,
                rotation::next_secret(&ctx),
                None,
                &staged,
            ));
            if observed.rotation != MigrationState::Missing || observed.dependencies_ready {
                desired.push(&rotation::job(&ctx, &token));
            }
        }
    }
    let config = config::build(&ctx);
    let config_hash = secret::digest(
        config
            .data
            .iter()
            .flatten()
            .map(|(key, value)| ["config", key.as_str(), value.as_str()]),
    );
    desired.push(&config);
    if let Some(managed) = &cluster.spec.postgres.managed {
        for object in postgres::build(&ctx, managed) {
            desired.objects.push(object);
        }
    }
    if let Some(managed) = &cluster.spec.rabbitmq.managed {
        for object in rabbitmq::build(&ctx, managed) {
            desired.objects.push(object);
        }
    }
    // Once created, the Job of a version stays desired (it is immutable; its
    // outcome gates the rollout).
    if observed.migration != MigrationState::Missing || observed.dependencies_ready {
        desired.push(&job::build(&ctx, &secrets.hash));
    }
    let inputs = deployment::Inputs {
        secrets_hash: &secrets.hash,
        config_hash: &config_hash,
    };
    for (component, version) in deployment::rollout(&ctx) {
        desired.push(&deployment::build(&ctx, component, &version, &inputs));
        desired.push(&service::build(&ctx, component));
        desired.push(&pdb::build(&ctx, component));
    }
    match (
        &cluster.spec.exposure.ingress,
        &cluster.spec.exposure.gateway,
    ) {
        (Some(ingress), _) => desired.push(&ingress::build(&ctx, ingress)),
        (None, Some(gateway)) => desired.objects.push(httproute::build(&ctx, gateway)),
        (None, None) => {}
    }
    if let Some(cert_manager) = &cluster.spec.exposure.tls.cert_manager {
        desired
            .objects
            .push(certificate::cert_manager(&ctx, cert_manager));
    }
    for policy in networkpolicy::build(&ctx) {
        desired.push(&policy);
    }
    Ok(desired)
}

/// An env var read from a Secret key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> k8s_openapi::api::core::v1::EnvVar {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Labels selecting every object the operator made for `cluster` (orphan cleanup).
pub fn ownership_selector(cluster_name: &str) -> String {
    format!("app.kubernetes.io/instance={cluster_name},app.kubernetes.io/managed-by={MANAGER}")
}

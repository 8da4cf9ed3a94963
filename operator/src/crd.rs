//! The `ChatCluster` custom resource (`parley.dev/v1alpha1`).
//!
//! Cross-field rules are CEL (`x-kubernetes-validations`) so the API server
//! refuses bad manifests; the same rules run again in reconcile's validate step
//! through kube's client-side CEL evaluation (`ChatCluster::validate_cel`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One Parley platform: its services, database, broker, exposure and policies.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "parley.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    status = "ChatClusterStatus",
    shortname = "cc",
    category = "parley",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Parley version to run; also the image tag.
    #[schemars(length(min = 1, max = 128))]
    pub version: String,

    /// Image repository of the `parley` binary (default `ghcr.io/parley-chat/parley`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// `monolithic`: one Deployment serving every service; `microservices`: one per service.
    #[serde(default)]
    pub mode: Mode,

    /// Replicas, resources and pod overrides per service.
    #[serde(default)]
    pub services: ServicesSpec,

    /// The PostgreSQL database: managed by the operator, or external.
    pub postgres: PostgresSpec,

    /// The RabbitMQ broker: managed by the operator, or external.
    pub rabbitmq: RabbitmqSpec,

    /// How clients reach the platform.
    pub exposure: ExposureSpec,

    /// Outgoing email; without it, notifications are in-app only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSpec>,

    /// Generated secrets and their rotation.
    #[serde(default)]
    pub secrets: SecretPolicy,

    /// Stop reconciling (nothing is created, changed or deleted) until unset.
    #[serde(default)]
    pub reconciliation_paused: bool,

    /// Scale every workload to zero, keeping data and secrets.
    #[serde(default)]
    pub stopped: bool,
}

/// How the services are deployed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// One Deployment running `parley serve --target all`.
    #[default]
    Monolithic,
    /// One Deployment per service.
    Microservices,
}

/// Per-service settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// The monolith (monolithic mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monolith: Option<ServiceSpec>,
    /// The user service (microservices mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ServiceSpec>,
    /// The chat service (microservices mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ServiceSpec>,
    /// The notification service (microservices mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<ServiceSpec>,
}

/// Settings of one Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pods (default 2; the notification service defaults to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// CPU and memory of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra settings of the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_overrides: Option<PodOverrides>,
    /// Extra environment variables of the Parley container: settings from
    /// docs/configuration.md this resource has no field for (rate limits,
    /// bcrypt cost, timeouts). A variable the operator sets itself
    /// (connection URLs, credentials) is not overridden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// Pod-template settings a platform team may need.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity (replaces the default pod anti-affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// The database: exactly one of `managed` and `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of postgres.managed and postgres.external"),
    validation = Rule::new("has(self.managed) == has(oldSelf.managed)").message("postgres cannot switch between managed and external")
)]
pub struct PostgresSpec {
    /// A PostgreSQL StatefulSet run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// An existing database: a Secret holding the owner role's `postgres://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalService>,
}

/// A PostgreSQL run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPostgres {
    /// PostgreSQL major version (the image tag of `postgres`).
    #[serde(default = "default_postgres_version")]
    pub version: String,
    /// Persistent volume.
    pub storage: StorageSpec,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_postgres_version() -> String {
    "17".into()
}

/// The broker: exactly one of `managed` and `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of rabbitmq.managed and rabbitmq.external"))]
pub struct RabbitmqSpec {
    /// A RabbitMQ StatefulSet run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRabbitmq>,
    /// An existing broker: a Secret holding its `amqp://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalService>,
}

/// A RabbitMQ run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRabbitmq {
    /// RabbitMQ version (the image tag of `rabbitmq`).
    #[serde(default = "default_rabbitmq_version")]
    pub version: String,
    /// Persistent volume.
    pub storage: StorageSpec,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_rabbitmq_version() -> String {
    "3.13".into()
}

/// A persistent volume claim template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClassName) || self.storageClassName == oldSelf.storageClassName").message("storageClassName is immutable"))]
pub struct StorageSpec {
    /// Size, e.g. `10Gi`.
    pub size: String,
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// A service outside the cluster, reached through a URL kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalService {
    /// Where the URL is.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside it (default `url`).
    #[serde(default = "default_url_key")]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

/// Exposure: a host, exactly one of Ingress and Gateway API, and TLS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ingress) != has(self.gateway)").message("set exactly one of exposure.ingress and exposure.gateway"))]
pub struct ExposureSpec {
    /// Public host name, e.g. `chat.example.com`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// A networking.k8s.io Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// A Gateway API HTTPRoute attached to existing Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// Certificates.
    pub tls: TlsSpec,
}

/// Ingress settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Extra annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Gateway API settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.parentRefs) > 0").message("gateway.parentRefs needs at least one Gateway"))]
pub struct GatewaySpec {
    /// The Gateways (and listeners) the route attaches to.
    pub parent_refs: Vec<ParentRef>,
}

/// A Gateway reference.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace (default: the ChatCluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// TLS: exactly one source of the certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.selfSigned), has(self.certManager), has(self.secretName)].filter(x, x).size() == 1").message("set exactly one of tls.selfSigned, tls.certManager and tls.secretName"))]
pub struct TlsSpec {
    /// A self-signed CA and certificate generated by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSigned>,
    /// A cert-manager Certificate from this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,
    /// An existing `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// Marker for self-signed TLS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SelfSigned {}

/// cert-manager settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerTls {
    /// The issuer.
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Issuer name.
    pub name: String,
    /// `Issuer` or `ClusterIssuer` (default `Issuer`).
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

/// Outgoing email.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpSpec {
    /// SMTP server.
    pub host: String,
    /// Port (default 587).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// `auto`, `starttls`, `tls` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SmtpSecurity>,
    /// Sender address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A Secret with `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// SMTP connection security (as `PARLEY_SMTP_SECURITY`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    Auto,
    Starttls,
    Tls,
    None,
}

/// Generated secrets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretPolicy {
    /// Make a new JWT signing key current this often (a Go-style duration such
    /// as `720h`); the previous public key keeps verifying for the token
    /// lifetime. Unset: never rotate automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$')").message("jwtRotationInterval must look like 720h or 90m"))]
    pub jwt_rotation_interval: Option<String>,
}

/// Observed state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, DatabaseReady, BrokerReady, SecretsReady,
    /// MigrationsApplied, TlsReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The version whose migrations have been applied and which is serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The last `parley.dev/rotate-credentials` token whose rotation is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_rotation: Option<String>,
}

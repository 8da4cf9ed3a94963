//! The reconcile loop for one `ChatCluster`, as a pipeline around the pure
//! builders:
//!
//! 1. **dereference** ([`dereference`]): read what the cluster has — the
//!    Secrets the operator makes or the spec references, the migration Job of
//!    `spec.version`, the Deployments and the database and broker StatefulSets;
//! 2. **validate** ([`crate::validate`]): the CRD's CEL rules and the checks
//!    CEL cannot express; an invalid spec changes nothing;
//! 3. **build** ([`crate::build`]): every desired object, pure;
//! 4. **apply** ([`apply`]): server-side apply with one field manager and
//!    force, then delete the objects carrying the cluster's ownership labels
//!    that are no longer desired (never Secrets);
//! 5. **report** ([`report`]): the status (`observedGeneration`, conditions,
//!    `currentVersion`) and Kubernetes Events for what went wrong or happened.
//!
//! A finalizer lets deletion be observed: owned objects go with the
//! ChatCluster through their owner references; PersistentVolumeClaims of the
//! StatefulSets stay (the data outlives the resource). Failures retry with a
//! capped exponential backoff per object ([`crate::backoff`]).

pub mod apply;
pub mod dereference;
pub mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::build::{self, BuildError, Entropy};
use crate::crd::ChatCluster;
use crate::metrics::Metrics;
use crate::validate;

/// The finalizer the operator puts on every ChatCluster.
pub const FINALIZER: &str = "parley.dev/cleanup";

/// How often a settled cluster is looked at again (drift, key rotation).
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(300);
/// How often a cluster that is still moving is looked at again.
pub const PROGRESS_REQUEUE: Duration = Duration::from_secs(10);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: Backoff,
    /// Fresh secret material ([`build::OsEntropy`] in production).
    pub entropy: Mutex<Box<dyn Entropy + Send>>,
    /// Now, as Unix seconds.
    pub clock: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl Context {
    /// The production context: OS entropy and the system clock.
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            backoff: Backoff::default(),
            entropy: Mutex::new(Box::new(build::OsEntropy)),
            clock: Box::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            }),
        }
    }

    /// Publishes an Event about `cluster`; a failure to publish is logged, never fatal.
    pub async fn event(&self, cluster: &ChatCluster, type_: EventType, reason: &str, note: String) {
        self.event_related(cluster, type_, reason, note, None).await;
    }

    /// Publishes an Event about `cluster` that concerns `related` too (the
    /// recorder folds repeats of the same reason *and* related object into a
    /// series, so a new Job's events are not mistaken for the last one's).
    pub async fn event_related(
        &self,
        cluster: &ChatCluster,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: related,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            warn!(%error, reason, "cannot publish an event");
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot apply {kind}/{name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete {kind}/{name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the desired {0} object is malformed")]
    Malformed(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short label for metrics and event reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApi",
            Error::Apply { .. } => "ApplyFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Malformed(_) => "Malformed",
            Error::Build(_) => "BuildFailed",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}

fn key(cluster: &ChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Reconciles one ChatCluster (the controller's entry point).
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = cluster.namespace().ok_or(BuildError::NoNamespace)?;
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, cluster.clone(), |event| async {
        match event {
            Finalizer::Apply(cluster) => apply_cluster(&cluster, &ctx).await,
            Finalizer::Cleanup(cluster) => cleanup(&cluster, &ctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        kube::runtime::finalizer::Error::ApplyFailed(error)
        | kube::runtime::finalizer::Error::CleanupFailed(error) => error,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .duration
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
            ctx.backoff.succeeded(&key(&cluster));
        }
        Err(error) => {
            ctx.metrics
                .reconciles
                .with_label_values(&[error.reason()])
                .inc();
            ctx.event(
                &cluster,
                EventType::Warning,
                error.reason(),
                error.to_string(),
            )
            .await;
        }
    }
    result
}

/// What the controller does after a failed reconcile: retry with backoff.
pub fn error_policy(cluster: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&key(&cluster));
    warn!(cluster = %key(&cluster), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The apply branch: dereference → validate → build → apply → report.
async fn apply_cluster(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let namespace = cluster.namespace().ok_or(BuildError::NoNamespace)?;
    let now = (ctx.clock)();
    let mut found = dereference::observe(&ctx.client, cluster, now).await?;

    if let Err(problems) = validate::validate(cluster) {
        let message = problems.join("; ");
        ctx.event(cluster, EventType::Warning, "InvalidSpec", message.clone())
            .await;
        report::invalid(&ctx.client, cluster, &message, now).await?;
        return Ok(Action::await_change());
    }
    if cluster.spec.reconciliation_paused {
        report::paused(&ctx.client, cluster, now).await?;
        return Ok(Action::await_change());
    }

    let built = {
        let mut entropy = ctx.entropy.lock().unwrap_or_else(|e| e.into_inner());
        build::build(cluster, &found.observed, entropy.as_mut())
    };
    let desired = match built {
        Ok(desired) => desired,
        Err(BuildError::SecretKey(secret, key)) => {
            let message = format!("Secret {secret} has no key {key}");
            ctx.event(
                cluster,
                EventType::Warning,
                "SecretInvalid",
                message.clone(),
            )
            .await;
            report::secret_invalid(&ctx.client, cluster, &found, &message, now).await?;
            return Ok(Action::requeue(SETTLED_REQUEUE));
        }
        Err(other) => return Err(other.into()),
    };

    let deployments = apply::apply(&ctx.client, &namespace, &desired, &found.observed).await?;
    let removed =
        apply::remove_orphans(&ctx.client, &namespace, &cluster.name_any(), &desired).await?;
    if !removed.is_empty() {
        info!(cluster = %key(cluster), ?removed, "removed objects no longer desired");
    }

    // Rotation and events compare with what was there before the apply.
    let before = found.observed.clone();
    dereference::refresh_workloads(&mut found, cluster, &deployments);
    let outcome = report::report(ctx, cluster, &found, &before, &desired, now).await?;
    // The staging Secret of a rotation goes once the status records it done.
    let staging = {
        let ctx = build::Ctx::new(cluster, &before)?;
        let pending =
            build::rotation::requested(&ctx).is_some() && desired.completed_rotation.is_none();
        let name = build::rotation::next_secret(&ctx);
        (!pending && before.secrets.contains_key(&name)).then_some(name)
    };
    if let Some(name) = staging {
        apply::delete_secret(&ctx.client, &namespace, &name).await?;
    }
    Ok(if outcome.settled {
        Action::requeue(outcome.next_rotation.map_or(SETTLED_REQUEUE, |due| {
            SETTLED_REQUEUE.min(Duration::from_secs(due.max(1) as u64))
        }))
    } else {
        Action::requeue(PROGRESS_REQUEUE)
    })
}

/// The cleanup branch: owned objects are garbage-collected through their
/// owner references; the volumes of the managed database and broker stay.
async fn cleanup(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    info!(cluster = %key(cluster), "ChatCluster deleted; owned objects follow through owner references");
    ctx.event(
        cluster,
        EventType::Normal,
        "Deleting",
        "owned objects are garbage-collected; PersistentVolumeClaims are kept".into(),
    )
    .await;
    Ok(Action::await_change())
}

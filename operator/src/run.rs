//! `parley-operator run`: the controller, its watches, the health and metrics
//! server, and leader election.
//!
//! Flow: serve `/livez`, `/readyz`, `/metrics` → (with leader election) wait
//! for the `parley-operator` Lease → run the controller until a signal, or
//! until the lease is lost (the process then exits with an error so that the
//! pod restarts as a standby and never reconciles beside the new leader).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::build::{Ctx, MANAGER, Observed, secret};
use crate::crd::ChatCluster;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

/// The Lease replicas compete for.
pub const LEASE_NAME: &str = "parley-operator";

/// Settings of `parley-operator run`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    pub listen: SocketAddr,
    /// Take the Lease before reconciling.
    pub leader_election: bool,
    /// This pod's name (the Lease holder identity and the Events' instance).
    pub pod_name: Option<String>,
    /// This pod's namespace (where the Lease lives).
    pub pod_namespace: Option<String>,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("leader election needs POD_NAMESPACE (the namespace of the Lease)")]
    NoLeaseNamespace,
    #[error("the leader lease was lost; exiting so that this pod restarts as a standby")]
    LeaseLost,
}

#[derive(Clone)]
struct Health {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn render_metrics(State(health): State<Health>) -> String {
    health.metrics.render()
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(options: Options) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| RunError::Listen(options.listen, e))?;
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        });
    info!(listen = %options.listen, "serving /livez, /readyz and /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "the health server stopped");
        }
    });

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: options.pod_name.clone(),
    };
    let ctx = Arc::new(Context::new(client.clone(), reporter, metrics.clone()));

    if !options.leader_election {
        metrics.leader.set(1);
        controller(
            client,
            options.namespace.as_deref(),
            ctx,
            ready,
            shutdown_signal(),
        )
        .await;
        return Ok(());
    }

    let lease_namespace = options
        .pod_namespace
        .clone()
        .ok_or(RunError::NoLeaseNamespace)?;
    let mut builder = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(lease_namespace.clone());
    if let Some(identity) = &options.pod_name {
        builder = builder.with_identity(identity.clone());
    }
    let manager = builder.build().await?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is ready: it can take over.
    ready.store(true, Ordering::Relaxed);
    info!(lease = LEASE_NAME, namespace = %lease_namespace, "waiting for the leader lease");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(RunError::LeaseLost);
                }
            }
            () = shutdown_signal() => {
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
        }
    }
    info!("leader lease taken; reconciling");
    metrics.leader.set(1);
    let mut watch_leader = leader.clone();
    let lost = Arc::new(AtomicBool::new(false));
    let lost_flag = lost.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = async {
                while watch_leader.changed().await.is_ok() {
                    if !*watch_leader.borrow_and_update() {
                        break;
                    }
                }
            } => {
                lost_flag.store(true, Ordering::Relaxed);
                warn!("the leader lease was lost");
            }
        }
    };
    controller(client, options.namespace.as_deref(), ctx, ready, stop).await;
    metrics.leader.set(0);
    drop(leader);
    // Releases the lease when the watch channel closes.
    let _ = lease_task.await;
    if lost.load(Ordering::Relaxed) {
        return Err(RunError::LeaseLost);
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The ChatClusters that read the Secret `name` in `namespace`.
pub fn clusters_reading(
    clusters: &Store<ChatCluster>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ChatCluster>> {
    clusters
        .state()
        .into_iter()
        .filter(|cluster| cluster.namespace().as_deref() == Some(namespace))
        .filter(|cluster| {
            let observed = Observed::default();
            Ctx::new(cluster, &observed)
                .map(|ctx| secret::referenced(&ctx).iter().any(|n| n == name))
                .unwrap_or(false)
        })
        .map(|cluster| ObjectRef::from_obj(&*cluster))
        .collect()
}

/// How long running reconciles may take to finish after a stop.
const DRAIN: Duration = Duration::from_secs(20);

/// Runs the controller until `stop` resolves, then lets running reconciles
/// finish (at most [`DRAIN`]). `ready` turns true once the ChatCluster cache
/// has synced.
async fn controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::new(
        api::<ChatCluster>(&client, namespace),
        watcher::Config::default(),
    );
    let store = controller.store();
    let synced = store.clone();
    let synced_flag = ready.clone();
    tokio::spawn(async move {
        if synced.wait_until_ready().await.is_ok() {
            synced_flag.store(true, Ordering::Relaxed);
            info!("ChatCluster cache synced");
        }
    });
    // kube-runtime holds the runner until the cache has synced, so a stop
    // before that would wait forever: nothing can be running then.
    let stopped = Arc::new(tokio::sync::Notify::new());
    let stopped_tx = stopped.clone();
    let stop = async move {
        stop.await;
        stopped_tx.notify_one();
    };
    info!(
        namespace = namespace.unwrap_or("(all)"),
        "watching ChatClusters and what they own"
    );
    let running = controller
        .owns(api::<Deployment>(&client, namespace), owned.clone())
        .owns(api::<StatefulSet>(&client, namespace), owned.clone())
        .owns(api::<Job>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(api::<Secret>(&client, namespace), owned)
        // The user's Secrets a cluster references (external URLs, SMTP
        // credentials, a TLS certificate): a change rolls the pods.
        .watches(
            api::<Secret>(&client, namespace),
            watcher::Config::default(),
            move |secret: Secret| {
                let namespace = secret.namespace().unwrap_or_default();
                clusters_reading(&store, &namespace, &secret.name_any())
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((cluster, _)) => tracing::debug!(cluster = %cluster, "reconciled"),
                Err(error) => warn!(%error, "reconcile failed"),
            }
        });
    let drain = async {
        stopped.notified().await;
        if ready.load(Ordering::Relaxed) {
            tokio::time::sleep(DRAIN).await;
            warn!(drain = ?DRAIN, "running reconciles did not finish in time");
        } else {
            info!("stopping before the cache synced: nothing is running");
        }
    };
    tokio::select! {
        () = running => {}
        () = drain => {}
    }
    info!("controller stopped");
}

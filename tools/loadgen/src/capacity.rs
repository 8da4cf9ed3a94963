//! Scenario 2: many idle authenticated Socket.IO connections, spread over a
//! small set of users (the contract allows many sockets per user) and several
//! loopback source addresses; the server's RSS per connection, and the latency
//! of a 1 msg/s heartbeat pair while they are held.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use parley_common::testing_socketio::SocketIoClient;
use serde::Serialize;

use crate::api::{Account, Api};
use crate::messaging::{StepPlan, StepResult, Streams};
use crate::report::{read_loadavg, read_rss_kib};

#[derive(Debug, Clone)]
pub struct CapacityPlan {
    pub connections: usize,
    pub users: usize,
    pub source_addrs: Vec<IpAddr>,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    pub hold: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityResult {
    pub requested: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub first_failure: Option<String>,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// Connections still open at the end of the hold.
    pub alive_after_hold: usize,
    pub server_rss_kib_baseline: Option<u64>,
    pub server_rss_kib_connected: Option<u64>,
    pub server_rss_kib_max_during_hold: Option<u64>,
    /// (connected RSS − baseline RSS) / connections, in bytes.
    pub server_bytes_per_connection: Option<f64>,
    pub loadgen_rss_kib: Option<u64>,
    pub heartbeat: StepResult,
    pub events_drained: u64,
    pub loadavg_connected: [f64; 3],
}

/// Reads and drops every event already queued on the clients.
fn drain(clients: &mut [SocketIoClient]) -> u64 {
    let mut drained = 0;
    for client in clients {
        while client.try_next_event().is_some() {
            drained += 1;
        }
    }
    drained
}

pub async fn run(api: &Api, prefix: &str, plan: &CapacityPlan) -> Result<CapacityResult> {
    if plan.users == 0 || plan.source_addrs.is_empty() {
        bail!("need at least one user and one source address");
    }
    eprintln!(
        "setup: {} users for idle sockets + a heartbeat pair (not timed)",
        plan.users
    );
    let users = api
        .register_many(&format!("{prefix}c"), plan.users, 8)
        .await?;
    let heartbeat_users = api.register_many(&format!("{prefix}h"), 2, 2).await?;
    let mut heartbeat = Streams::connect(
        api,
        std::slice::from_ref(&heartbeat_users[0]),
        std::slice::from_ref(&heartbeat_users[1]),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = || plan.server_pid.and_then(read_rss_kib);
    let baseline = rss();
    eprintln!(
        "opening {} idle connections from {} source addresses (server RSS before: {} KiB)",
        plan.connections,
        plan.source_addrs.len(),
        baseline.map_or("?".to_owned(), |v| v.to_string())
    );

    // Connection i belongs to user i % users, from address i % addrs: the first
    // `users` connections bring each user online once (the presence broadcast
    // goes to the few sockets open by then); the rest only add sockets.
    let started = Instant::now();
    let mut clients: Vec<SocketIoClient> = Vec::with_capacity(plan.connections);
    let mut failures = 0usize;
    let mut first_failure = None;
    let mut drained = 0u64;
    let jobs = (0..plan.connections).map(|i| {
        let account: &Account = &users[i % users.len()];
        let addr = plan.source_addrs[i % plan.source_addrs.len()];
        async move { api.socket(account, Some(addr)).await }
    });
    let mut stream = futures::stream::iter(jobs).buffer_unordered(plan.connect_concurrency.max(1));
    let mut last_report = Instant::now();
    while let Some(result) = stream.next().await {
        match result {
            Ok(client) => clients.push(client),
            Err(err) => {
                failures += 1;
                if first_failure.is_none() {
                    eprintln!("  connect failed: {err:#}");
                    first_failure = Some(format!("{err:#}"));
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            drained += drain(&mut clients);
            last_report = Instant::now();
            eprintln!(
                "  {} connected, {} failed ({:.0} s, server RSS {} KiB)",
                clients.len(),
                failures,
                started.elapsed().as_secs_f64(),
                rss().map_or("?".to_owned(), |v| v.to_string())
            );
        }
    }
    drop(stream);
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "  {} connected, {} failed in {connect_secs:.1} s; settling",
        clients.len(),
        failures
    );
    // Let the server finish the connect handlers and presence work.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drained += drain(&mut clients);
    }
    let connected_rss = rss();
    let loadavg_connected = read_loadavg();

    eprintln!(
        "holding for {:.0} s with a 1 msg/s heartbeat",
        plan.hold.as_secs_f64()
    );
    let mut max_rss = connected_rss;
    let hold = heartbeat.run_step(StepPlan {
        rate: 1.0,
        duration: plan.hold,
        warmup: Duration::ZERO,
        body_len: 160,
        grace: Duration::from_secs(10),
    });
    tokio::pin!(hold);
    let heartbeat_result = loop {
        tokio::select! {
            result = &mut hold => break result?,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                drained += drain(&mut clients);
                max_rss = max_rss.max(rss());
            }
        }
    };
    drained += drain(&mut clients);
    let alive = clients.iter().filter(|c| !c.is_closed()).count();
    let per_connection = match (baseline, connected_rss) {
        (Some(before), Some(after)) if !clients.is_empty() => {
            Some((after as f64 - before as f64) * 1024.0 / clients.len() as f64)
        }
        _ => None,
    };
    let connected = clients.len();
    eprintln!("closing {connected} connections");
    drop(clients);
    Ok(CapacityResult {
        requested: plan.connections,
        connected,
        connect_failures: failures,
        first_failure,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs.max(1e-9),
        alive_after_hold: alive,
        server_rss_kib_baseline: baseline,
        server_rss_kib_connected: connected_rss,
        server_rss_kib_max_during_hold: max_rss,
        server_bytes_per_connection: per_connection,
        loadgen_rss_kib: read_rss_kib(std::process::id()),
        heartbeat: heartbeat_result,
        events_drained: drained,
        loadavg_connected,
    })
}

//! Scenario 2: many idle authenticated Socket.IO connections, spread over a
//! small set of users (the contract allows many sockets per user), several
//! loopback source addresses and every server given (replicas of one
//! cluster); the servers' RSS per connection, and the latency of a 1 msg/s
//! heartbeat pair while they are held.
//!
//! Flow: the coordinator registers the users and connects the heartbeat pair
//! (sender on the first server, receiver on the last, so that with replicas
//! it crosses the broker), reads each server's RSS, then starts worker
//! processes (this binary's hidden `capacity-worker` command) that open and
//! hold the sockets. A process may open only as many files as its limit
//! allows, so 100,000 sockets need several. A worker gets its job as one JSON
//! line on stdin, answers with JSON lines on stdout ([`WorkerMessage`]),
//! reports on a `report` line and closes its sockets and exits when stdin
//! closes. Every worker reads and drops the events its sockets receive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use parley_common::testing_socketio::SocketIoClient;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::api::{self, Account, Api};
use crate::messaging::{StepPlan, StepResult, Streams};
use crate::report::{read_loadavg, read_rss_kib};

/// The hidden subcommand a worker process runs.
pub const WORKER_COMMAND: &str = "capacity-worker";

/// One server of the cluster under test.
#[derive(Debug, Clone)]
pub struct Server {
    pub api: Api,
    pub url: String,
    /// Its process, to read its memory from /proc.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct CapacityPlan {
    pub connections: usize,
    pub users: usize,
    /// At least one; connection `i` goes to server `i % servers.len()`.
    pub servers: Vec<Server>,
    pub source_addrs: Vec<IpAddr>,
    /// Connection attempts in flight at once, over all workers.
    pub connect_concurrency: usize,
    pub hold: Duration,
    /// Worker processes holding the sockets (at least one).
    pub workers: usize,
}

/// What one worker process is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerJob {
    pub servers: Vec<String>,
    pub accounts: Vec<Account>,
    /// Global index of the worker's first connection: connection `i` is
    /// `accounts[i % accounts.len()]` on `servers[i % servers.len()]` from
    /// `source_addrs[i % source_addrs.len()]`.
    pub first: usize,
    pub count: usize,
    pub source_addrs: Vec<IpAddr>,
    pub connect_concurrency: usize,
}

/// A worker's answers, one JSON object per stdout line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMessage {
    Progress {
        connected: usize,
        failed: usize,
    },
    /// Every connection was attempted.
    Connected {
        connected: usize,
        failed: usize,
        first_failure: Option<String>,
    },
    /// The answer to a `report` line.
    Report {
        alive: usize,
        drained: u64,
        rss_kib: Option<u64>,
    },
}

/// One server's memory during the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub url: String,
    pub pid: Option<u32>,
    pub connections: usize,
    pub rss_kib_baseline: Option<u64>,
    pub rss_kib_connected: Option<u64>,
    /// (connected RSS − baseline RSS) / its connections, in bytes.
    pub bytes_per_connection: Option<f64>,
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
    /// Sums over the servers.
    pub server_rss_kib_baseline: Option<u64>,
    pub server_rss_kib_connected: Option<u64>,
    pub server_rss_kib_max_during_hold: Option<u64>,
    /// (connected RSS − baseline RSS) / connections, over all servers, in bytes.
    pub server_bytes_per_connection: Option<f64>,
    pub servers: Vec<ServerMemory>,
    pub workers: usize,
    /// The coordinator and its workers together.
    pub loadgen_rss_kib: Option<u64>,
    pub heartbeat: StepResult,
    pub events_drained: u64,
    pub loadavg_connected: [f64; 3],
}

/// Each server's RSS in KiB, where its PID is known.
fn servers_rss(servers: &[Server]) -> Vec<Option<u64>> {
    servers
        .iter()
        .map(|s| s.pid.and_then(read_rss_kib))
        .collect()
}

/// The sum of every server's RSS, if all are known.
fn total_rss(servers: &[Server]) -> Option<u64> {
    servers_rss(servers).into_iter().sum()
}

/// Connection `i` of `0..total` goes to server `i % servers`: how many each gets.
fn per_server(total: usize, servers: usize) -> Vec<usize> {
    (0..servers)
        .map(|s| total / servers + usize::from(s < total % servers))
        .collect()
}

/// (connected, failed) over every worker.
fn sum_progress(progress: &[(usize, usize)]) -> (usize, usize) {
    progress
        .iter()
        .fold((0, 0), |(c, f), (pc, pf)| (c + pc, f + pf))
}

/// Splits `0..total` into `workers` contiguous (first, count) ranges.
fn split(total: usize, workers: usize) -> Vec<(usize, usize)> {
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = total / workers + usize::from(w < total % workers);
            let range = (first, count);
            first += count;
            range
        })
        .collect()
}

/// A running worker process.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    async fn start(
        index: usize,
        job: &WorkerJob,
        messages: mpsc::UnboundedSender<(usize, Option<WorkerMessage>)>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating parley-loadgen")?;
        let mut child = tokio::process::Command::new(exe)
            .arg(WORKER_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a capacity worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let mut line = serde_json::to_vec(job)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        let stdout = child.stdout.take().context("worker stdout")?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(message) => {
                        let _ = messages.send((index, Some(message)));
                    }
                    Err(err) => eprintln!("  worker {index}: unreadable line ({err}): {line}"),
                }
            }
            // Its stdout closed: the worker has exited (or is exiting).
            let _ = messages.send((index, None));
        });
        Ok(Self {
            child,
            stdin: Some(stdin),
        })
    }

    async fn ask_report(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("worker stdin already closed")?;
        stdin.write_all(b"report\n").await?;
        Ok(stdin.flush().await?)
    }

    /// Closes its stdin, which tells it to close its sockets and exit.
    async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

pub async fn run(prefix: &str, plan: &CapacityPlan) -> Result<CapacityResult> {
    if plan.users == 0 || plan.source_addrs.is_empty() || plan.servers.is_empty() {
        bail!("need at least one user, one source address and one server");
    }
    let workers = plan.workers.clamp(1, plan.connections.max(1));
    let first_api = &plan.servers[0].api;
    let last_api = &plan.servers[plan.servers.len() - 1].api;
    eprintln!(
        "setup: {} users for idle sockets + a heartbeat pair (not timed)",
        plan.users
    );
    let users = first_api
        .register_many(&format!("{prefix}c"), plan.users, 8)
        .await?;
    let heartbeat_users = first_api.register_many(&format!("{prefix}h"), 2, 2).await?;
    let mut heartbeat = Streams::connect(
        first_api,
        last_api,
        std::slice::from_ref(&heartbeat_users[0]),
        std::slice::from_ref(&heartbeat_users[1]),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baselines = servers_rss(&plan.servers);
    let baseline: Option<u64> = baselines.iter().copied().sum();
    eprintln!(
        "opening {} idle connections to {} server(s) from {} source addresses in {workers} \
         worker process(es) (server RSS before: {} KiB)",
        plan.connections,
        plan.servers.len(),
        plan.source_addrs.len(),
        baseline.map_or("?".to_owned(), |v| v.to_string())
    );

    // The first `users` connections bring each user online once (the presence
    // broadcast goes to the few sockets open by then); the rest only add
    // sockets. Worker 0 holds them.
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut running = Vec::with_capacity(workers);
    for (index, (first, count)) in split(plan.connections, workers).into_iter().enumerate() {
        let job = WorkerJob {
            servers: plan.servers.iter().map(|s| s.url.clone()).collect(),
            accounts: users.clone(),
            first,
            count,
            source_addrs: plan.source_addrs.clone(),
            connect_concurrency: plan.connect_concurrency.div_ceil(workers).max(1),
        };
        running.push(Worker::start(index, &job, tx.clone()).await?);
    }
    drop(tx);

    // Per worker: (connected, failed) so far, and whether it has finished.
    let mut progress = vec![(0usize, 0usize); workers];
    let mut first_failures: Vec<Option<String>> = vec![None; workers];
    let mut finished = 0;
    let mut last_report = Instant::now();
    while finished < workers {
        let Some((index, message)) = rx.recv().await else {
            bail!("every worker stopped before connecting");
        };
        match message {
            Some(WorkerMessage::Progress { connected, failed }) => {
                progress[index] = (connected, failed);
            }
            Some(WorkerMessage::Connected {
                connected,
                failed,
                first_failure,
            }) => {
                progress[index] = (connected, failed);
                first_failures[index] = first_failure;
                finished += 1;
            }
            Some(WorkerMessage::Report { .. }) => {}
            None => {
                bail!("capacity worker {index} exited before connecting (see its errors above)")
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let (connected, failed) = sum_progress(&progress);
            eprintln!(
                "  {connected} connected, {failed} failed ({:.0} s, server RSS {} KiB)",
                started.elapsed().as_secs_f64(),
                total_rss(&plan.servers).map_or("?".to_owned(), |v| v.to_string())
            );
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let (connected, failures) = sum_progress(&progress);
    let first_failure = first_failures.into_iter().flatten().next();
    eprintln!("  {connected} connected, {failures} failed in {connect_secs:.1} s; settling");
    // Let the servers finish the connect handlers and presence work.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connected_rss = servers_rss(&plan.servers);
    let connected_total: Option<u64> = connected_rss.iter().copied().sum();
    let loadavg_connected = read_loadavg();

    eprintln!(
        "holding for {:.0} s with a 1 msg/s heartbeat",
        plan.hold.as_secs_f64()
    );
    let mut max_rss = connected_total;
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
                max_rss = max_rss.max(total_rss(&plan.servers));
            }
        }
    };

    for worker in &mut running {
        worker.ask_report().await?;
    }
    let mut reports = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while reports.len() < workers {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((
                index,
                Some(WorkerMessage::Report {
                    alive,
                    drained,
                    rss_kib,
                }),
            ))) => {
                reports.insert(index, (alive, drained, rss_kib));
            }
            Ok(Some((index, None))) => bail!("capacity worker {index} exited before reporting"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the workers stopped before reporting"),
            Err(_) => bail!("the workers did not report within 60 s"),
        }
    }
    let alive: usize = reports.values().map(|(a, _, _)| a).sum();
    let drained: u64 = reports.values().map(|(_, d, _)| d).sum();
    let workers_rss: Option<u64> = reports.values().map(|(_, _, r)| *r).sum();
    eprintln!("closing {connected} connections");
    for worker in running {
        worker.stop().await;
    }

    let servers: Vec<ServerMemory> = plan
        .servers
        .iter()
        .zip(per_server(connected, plan.servers.len()))
        .zip(baselines.iter().zip(&connected_rss))
        .map(|((server, connections), (before, after))| ServerMemory {
            url: server.url.clone(),
            pid: server.pid,
            connections,
            rss_kib_baseline: *before,
            rss_kib_connected: *after,
            bytes_per_connection: bytes_per(*before, *after, connections),
        })
        .collect();
    Ok(CapacityResult {
        requested: plan.connections,
        connected,
        connect_failures: failures,
        first_failure,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs.max(1e-9),
        alive_after_hold: alive,
        server_rss_kib_baseline: baseline,
        server_rss_kib_connected: connected_total,
        server_rss_kib_max_during_hold: max_rss,
        server_bytes_per_connection: bytes_per(baseline, connected_total, connected),
        servers,
        workers,
        loadgen_rss_kib: read_rss_kib(std::process::id())
            .zip(workers_rss)
            .map(|(own, theirs)| own + theirs),
        heartbeat: heartbeat_result,
        events_drained: drained,
        loadavg_connected,
    })
}

fn bytes_per(before: Option<u64>, after: Option<u64>, connections: usize) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if connections > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / connections as f64)
        }
        _ => None,
    }
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

fn say(message: &WorkerMessage) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, message)?;
    out.write_all(b"\n")?;
    Ok(out.flush()?)
}

/// The `capacity-worker` process: reads its [`WorkerJob`] from stdin, opens
/// and holds its sockets, answers `report` lines, exits when stdin closes.
pub async fn worker_main() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .ok_or_else(|| anyhow!("no job on stdin"))?;
    let job: WorkerJob = serde_json::from_str(&line).context("reading the job")?;
    if job.accounts.is_empty() || job.source_addrs.is_empty() || job.servers.is_empty() {
        bail!("the job has no accounts, source addresses or servers");
    }
    let apis = job
        .servers
        .iter()
        .map(|url| {
            let url = api::check_loopback(url).map_err(anyhow::Error::msg)?;
            Api::new(&url, 1)
        })
        .collect::<Result<Vec<_>>>()?;

    let jobs = (job.first..job.first + job.count).map(|i| {
        let account = &job.accounts[i % job.accounts.len()];
        let addr = job.source_addrs[i % job.source_addrs.len()];
        let api = &apis[i % apis.len()];
        async move { api.socket(account, Some(addr)).await }
    });
    let mut stream = futures::stream::iter(jobs).buffer_unordered(job.connect_concurrency.max(1));
    let mut clients: Vec<SocketIoClient> = Vec::with_capacity(job.count);
    let mut failed = 0usize;
    let mut first_failure = None;
    let mut drained = 0u64;
    let mut last_report = Instant::now();
    while let Some(result) = stream.next().await {
        match result {
            Ok(client) => clients.push(client),
            Err(err) => {
                failed += 1;
                if first_failure.is_none() {
                    eprintln!("  connect failed: {err:#}");
                    first_failure = Some(format!("{err:#}"));
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            drained += drain(&mut clients);
            say(&WorkerMessage::Progress {
                connected: clients.len(),
                failed,
            })?;
        }
    }
    drop(stream);
    say(&WorkerMessage::Connected {
        connected: clients.len(),
        failed,
        first_failure,
    })?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(command) if command.trim() == "report" => {
                    drained += drain(&mut clients);
                    say(&WorkerMessage::Report {
                        alive: clients.iter().filter(|c| !c.is_closed()).count(),
                        drained,
                        rss_kib: read_rss_kib(std::process::id()),
                    })?;
                }
                Some(other) => bail!("unknown command {other:?}"),
                None => break,
            },
            _ = tick.tick() => drained += drain(&mut clients),
        }
    }
    drop(clients);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_into_contiguous_ranges_that_cover_them_all() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 3), vec![(0, 1), (1, 1), (2, 0)]);
        assert_eq!(
            split(100_000, 6).iter().map(|r| r.1).sum::<usize>(),
            100_000
        );
    }

    #[test]
    fn connections_are_counted_per_server_as_they_are_dealt() {
        assert_eq!(per_server(10, 3), vec![4, 3, 3]);
        assert_eq!(per_server(100_000, 6).iter().sum::<usize>(), 100_000);
    }

    #[test]
    fn worker_messages_are_one_tagged_json_object_per_line() {
        let line = serde_json::to_string(&WorkerMessage::Connected {
            connected: 3,
            failed: 1,
            first_failure: None,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"kind":"connected","connected":3,"failed":1,"first_failure":null}"#
        );
        assert!(matches!(
            serde_json::from_str(r#"{"kind":"progress","connected":5,"failed":0}"#).unwrap(),
            WorkerMessage::Progress {
                connected: 5,
                failed: 0
            }
        ));
    }
}

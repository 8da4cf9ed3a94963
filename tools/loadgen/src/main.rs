//! `parley-loadgen`: drives a Parley server (or anything that speaks its wire
//! contract) through the public HTTP and Socket.IO API, on loopback only, and
//! reports throughput and latency as JSON plus a markdown summary.
//!
//! Every scenario is bounded in count and time (hard caps on every flag), and
//! sets up its users before the measured window. See docs/performance.md.

#![forbid(unsafe_code)]

mod api;
mod capacity;
mod chart;
mod http_load;
mod messaging;
mod report;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::api::Api;
use crate::messaging::{StepPlan, StepResult, Streams};
use crate::report::{Env, Report, figure, target};

/// The memory target for an idle connection: 20 KB, read strictly as
/// 20,000 bytes (20 KiB would be 20,480).
const MAX_BYTES_PER_IDLE_CONNECTION: f64 = 20_000.0;

#[derive(Debug, Parser)]
#[command(
    name = "parley-loadgen",
    version,
    about = "Load generator for Parley's public API (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// Root URL of the server under test; must be on loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// Write the JSON report here.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Also write the markdown summary here (it is always printed).
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    /// PID of the server process, to sample its memory (RSS) from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Prefix of the user names this run creates (default: random).
    #[arg(long, global = true)]
    run_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scenario 1: N connected pairs at an offered rate → delivered msg/s, latency, loss.
    Messaging(MessagingArgs),
    /// The messaging scenario at several offered rates (latency against offered load).
    Sweep(SweepArgs),
    /// Scenario 2: M idle authenticated sockets → server RSS per connection, heartbeat latency.
    Capacity(CapacityArgs),
    /// Scenario 3: authenticated reads (conversations, history) at concurrency C.
    Reads(ReadsArgs),
    /// Scenario 4: a login flood → logins/s and the p99 of other requests meanwhile.
    LoginFlood(FloodArgs),
    /// Scenario 5: 64 concurrent bundle fetchers → bundles/s; no one-time prekey twice.
    Bundles(BundlesArgs),
    /// Draws the latency-against-offered-load chart (SVG) of a sweep report.
    Chart(ChartArgs),
    /// Prints the markdown summaries of JSON reports.
    Report(ReportArgs),
    /// A process of the capacity scenario holding some of its sockets (its
    /// job comes as JSON on stdin; started by `capacity` itself).
    #[command(name = "capacity-worker", hide = true)]
    CapacityWorker,
}

/// Seconds, as a bounded number.
fn secs(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |text: &str| {
        let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
        if !(min..=max).contains(&value) {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(value)
    }
}

#[derive(Debug, Args, Clone)]
struct MessagingArgs {
    /// Sender → receiver pairs (two users and two sockets each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pairs: u32,
    /// Offered messages per second over all pairs (open loop).
    #[arg(long, default_value_t = 4000.0, value_parser = secs(0.1, 100_000.0))]
    rate: f64,
    /// Sending time in seconds, warm-up included.
    #[arg(long, default_value_t = 30.0, value_parser = secs(1.0, 600.0))]
    duration: f64,
    /// Seconds at the start not counted in latency and throughput.
    #[arg(long, default_value_t = 5.0, value_parser = secs(0.0, 300.0))]
    warmup: f64,
    /// Length of each envelope's body (a Signal message is typically 100–300).
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u64).range(16..=4000))]
    body_len: u64,
    /// Seconds to wait after the last send for outstanding deliveries.
    #[arg(long, default_value_t = 10.0, value_parser = secs(1.0, 120.0))]
    grace: f64,
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pairs: u32,
    /// Offered rates (msg/s), in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,2000,3000,4000,5000,6000,7000,8000,10000,12000"
    )]
    rates: Vec<f64>,
    /// Seconds per rate, warm-up included.
    #[arg(long, default_value_t = 15.0, value_parser = secs(1.0, 300.0))]
    duration: f64,
    #[arg(long, default_value_t = 3.0, value_parser = secs(0.0, 60.0))]
    warmup: f64,
    #[arg(long, default_value_t = 160, value_parser = clap::value_parser!(u64).range(16..=4000))]
    body_len: u64,
    /// Stop after a rate whose p99 exceeds this (ms), or that delivers less
    /// than half of what was offered.
    #[arg(long, default_value_t = 2000.0, value_parser = secs(1.0, 60_000.0))]
    stop_p99_ms: f64,
    /// Pause between rates, seconds.
    #[arg(long, default_value_t = 3.0, value_parser = secs(0.0, 60.0))]
    pause: f64,
}

#[derive(Debug, Args)]
struct CapacityArgs {
    /// Idle authenticated connections to open and hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    connections: u64,
    /// Users the connections are spread over (registration is slow by design).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    users: u64,
    /// Loopback source addresses, e.g. 127.0.0.2-127.0.0.9 (each has ~28k ports).
    #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
    source_addrs: String,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connect_concurrency: u64,
    /// Seconds to hold the connections while the heartbeat runs.
    #[arg(long, default_value_t = 30.0, value_parser = secs(1.0, 600.0))]
    hold: f64,
    /// Another server of the same cluster (a replica on the same database and
    /// broker), repeatable: connections are dealt over --base-url and these
    /// in turn, and the heartbeat pair goes from the first to the last (at
    /// most 63).
    #[arg(long = "replica", value_name = "URL")]
    replicas: Vec<String>,
    /// The process of each --replica, in the same order, to read its memory.
    #[arg(long = "replica-pid", value_name = "PID")]
    replica_pids: Vec<u32>,
    /// Worker processes holding the sockets (0: as few as this process's
    /// open-files limit allows, each needing one file per socket).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=64))]
    workers: u64,
}

#[derive(Debug, Args, Clone)]
struct ReadSetArgs {
    /// Users whose conversations are read.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(2..=2000))]
    users: u64,
    /// Conversation partners each user sends to while seeding.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    peers: u64,
    /// Messages per seeded conversation direction.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=500))]
    history: u64,
}

#[derive(Debug, Args)]
struct ReadsArgs {
    #[command(flatten)]
    set: ReadSetArgs,
    /// Closed-loop workers (requests in flight).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    #[arg(long, default_value_t = 30.0, value_parser = secs(1.0, 600.0))]
    duration: f64,
    #[arg(long, default_value_t = 5.0, value_parser = secs(0.0, 300.0))]
    warmup: f64,
}

#[derive(Debug, Args)]
struct FloodArgs {
    #[command(flatten)]
    set: ReadSetArgs,
    /// Accounts the flood logs in as (round robin).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    login_users: u64,
    /// Login workers (closed loop).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Other requests per second (open loop), with and without the flood.
    #[arg(long, default_value_t = 200.0, value_parser = secs(1.0, 20_000.0))]
    background_rate: f64,
    /// Seconds of the baseline phase and of the flood phase each.
    #[arg(long, default_value_t = 30.0, value_parser = secs(1.0, 600.0))]
    phase: f64,
}

#[derive(Debug, Args)]
struct BundlesArgs {
    /// Users who publish a bundle.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=5000))]
    owners: u64,
    /// One-time prekeys per bundle (the 20,000-character bundle limit allows ~250).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=250))]
    prekeys: u64,
    /// Concurrent fetchers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    fetchers: u64,
    /// Give up after this many seconds even if pools remain.
    #[arg(long, default_value_t = 120.0, value_parser = secs(1.0, 600.0))]
    limit: f64,
}

#[derive(Debug, Args)]
struct ChartArgs {
    /// A sweep report (JSON).
    #[arg(long = "in")]
    input: PathBuf,
    /// The SVG to write.
    #[arg(long = "svg")]
    svg: PathBuf,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// JSON reports, in the order to print them.
    files: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let command_line: Vec<String> = std::env::args().skip(1).collect();
    match &cli.command {
        Command::Chart(args) => {
            let text = std::fs::read_to_string(&args.input)
                .with_context(|| format!("reading {}", args.input.display()))?;
            let report: Report = serde_json::from_str(&text)?;
            let svg = chart::latency_svg(&report)?;
            write_file(&args.svg, &svg)?;
            eprintln!("wrote {}", args.svg.display());
            return Ok(());
        }
        Command::Report(args) => {
            for file in &args.files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let report: Report = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", file.display()))?;
                println!("{}", report::markdown(&report));
            }
            return Ok(());
        }
        Command::CapacityWorker => return capacity::worker_main().await,
        _ => {}
    }

    let base = api::check_loopback(&cli.common.base_url).map_err(anyhow::Error::msg)?;
    let run_id = cli.common.run_id.clone().unwrap_or_else(api::run_id);
    if run_id.is_empty() || run_id.len() > 12 || !run_id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        bail!("--run-id must be 1–12 letters or digits");
    }
    let prefix = format!("lg{run_id}");
    let pid = cli.common.server_pid;
    let mut env = Env {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: report::cpu_model(),
        loadavg_before: report::read_loadavg(),
        server_pid: pid,
        server_rss_kib_before: pid.and_then(report::read_rss_kib),
        server_nofile_limit: pid.and_then(|p| report::read_nofile_limit(&p.to_string())),
        loadgen_nofile_limit: report::read_nofile_limit("self"),
        ..Env::default()
    };
    let server_cpu_before = pid.and_then(|p| report::read_cpu_secs(&p.to_string()));
    let loadgen_cpu_before = report::read_cpu_secs("self");
    let started_at = report::now_rfc3339();
    eprintln!(
        "parley-loadgen against {base} (run {run_id}); load average {:?}",
        env.loadavg_before
    );

    let outcome = match &cli.command {
        Command::Messaging(args) => messaging_scenario(&base, &prefix, args).await?,
        Command::Sweep(args) => sweep_scenario(&base, &prefix, args).await?,
        Command::Capacity(args) => {
            capacity_scenario(&base, &prefix, args, pid, env.loadgen_nofile_limit).await?
        }
        Command::Reads(args) => reads_scenario(&base, &prefix, args).await?,
        Command::LoginFlood(args) => flood_scenario(&base, &prefix, args).await?,
        Command::Bundles(args) => bundles_scenario(&base, &prefix, args).await?,
        Command::Chart(_) | Command::Report(_) | Command::CapacityWorker => {
            unreachable!("handled above")
        }
    };

    env.loadavg_after = report::read_loadavg();
    env.server_rss_kib_after = pid.and_then(report::read_rss_kib);
    let delta = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    env.server_cpu_secs = delta(
        server_cpu_before,
        pid.and_then(|p| report::read_cpu_secs(&p.to_string())),
    );
    env.loadgen_cpu_secs = delta(loadgen_cpu_before, report::read_cpu_secs("self"));
    let report = Report {
        scenario: outcome.scenario.to_owned(),
        command: command_line.join(" "),
        base_url: base.to_string(),
        started_at,
        finished_at: report::now_rfc3339(),
        env,
        params: outcome.params,
        figures: outcome.figures,
        targets: outcome.targets,
        details: outcome.details,
        notes: outcome.notes,
    };
    if let Some(out) = &cli.common.out {
        write_file(out, &serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", out.display());
    }
    let md = report::markdown(&report);
    if let Some(path) = &cli.common.markdown {
        write_file(path, &md)?;
    }
    println!("{md}");
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What a scenario contributes to its report.
struct Outcome {
    scenario: &'static str,
    params: Value,
    figures: Vec<report::Figure>,
    targets: Vec<report::TargetCheck>,
    details: Value,
    notes: Vec<String>,
}

fn duration(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn fmt(value: f64) -> String {
    report::format_number(value)
}

/// The messaging targets for one step.
fn messaging_targets(step: &StepResult) -> Vec<report::TargetCheck> {
    vec![
        target(
            "Delivered messages at p99 ≤ 30 ms",
            "≥ 4,000 msg/s with p99 ≤ 30 ms",
            format!(
                "{} msg/s, p99 {} ms",
                fmt(step.delivered_per_sec),
                fmt(step.latency.p99_ms)
            ),
            delivers(step, 4000.0) && step.latency.p99_ms <= 30.0,
        ),
        no_loss_target(step),
    ]
}

/// Whether a step delivered at least `rate` msg/s. Deliveries are counted in
/// the measured window, so a rate offered exactly is measured within about
/// ±1 %: an offered rate of at least `rate` that was delivered to 99 % counts.
fn delivers(step: &StepResult, rate: f64) -> bool {
    step.offered_per_sec >= rate && step.delivered_per_sec >= 0.99 * step.offered_per_sec
}

fn no_loss_target(step: &StepResult) -> report::TargetCheck {
    target(
        "No lost or duplicated message",
        "0 lost, 0 duplicated",
        format!(
            "{} lost, {} duplicated (of {} stored)",
            step.tally.lost,
            step.tally.duplicates,
            fmt(step.tally.stored as f64)
        ),
        step.tally.lost == 0 && step.tally.duplicates == 0 && step.tally.unknown == 0,
    )
}

fn step_notes(step: &StepResult) -> Vec<String> {
    let mut notes = Vec::new();
    if step.max_send_lag_ms > 10.0 {
        notes.push(format!(
            "The generator fell behind its schedule by up to {} ms (CPU shared with the server). \
             Latency counts from each message's scheduled send time, so the delay is included, \
             not hidden (no coordinated omission).",
            fmt(step.max_send_lag_ms)
        ));
    }
    if step.closed_connections > 0 {
        notes.push(format!(
            "{} receiver connections closed during the run.",
            step.closed_connections
        ));
    }
    notes
}

async fn messaging_scenario(
    base: &reqwest::Url,
    prefix: &str,
    args: &MessagingArgs,
) -> Result<Outcome> {
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }
    let api = Api::new(base, 64)?;
    eprintln!("setup: {} pairs (not timed)", args.pairs);
    let mut streams = Streams::setup(&api, prefix, args.pairs).await?;
    eprintln!(
        "sending {} msg/s for {} s ({} s warm-up)",
        args.rate, args.duration, args.warmup
    );
    let step = streams
        .run_step(StepPlan {
            rate: args.rate,
            duration: duration(args.duration),
            warmup: duration(args.warmup),
            body_len: args.body_len as usize,
            grace: duration(args.grace),
        })
        .await?;
    Ok(Outcome {
        scenario: "messaging",
        params: json!({"pairs": args.pairs, "rate": args.rate, "duration_secs": args.duration,
            "warmup_secs": args.warmup, "body_len": args.body_len, "grace_secs": args.grace}),
        figures: vec![
            figure(
                "Pairs (sockets)",
                f64::from(args.pairs),
                &format!("({})", args.pairs * 2),
            ),
            figure("Offered load", step.offered_per_sec, "msg/s"),
            figure("Delivered", step.delivered_per_sec, "msg/s"),
            figure(
                "Latency p50 (send → receiveMessage)",
                step.latency.p50_ms,
                "ms",
            ),
            figure("Latency p99", step.latency.p99_ms, "ms"),
            figure("Latency p99.9", step.latency.p999_ms, "ms"),
            figure("Latency max", step.latency.max_ms, "ms"),
            figure("Ack p99 (send → stored)", step.ack_latency.p99_ms, "ms"),
            figure("Messages sent", step.tally.sent as f64, ""),
            figure(
                "Errors (refused, failed, unanswered)",
                step.errors as f64,
                "",
            ),
            figure("Lost", step.tally.lost as f64, ""),
            figure("Duplicated", step.tally.duplicates as f64, ""),
        ],
        targets: messaging_targets(&step),
        notes: step_notes(&step),
        details: json!({"step": step}),
    })
}

async fn sweep_scenario(base: &reqwest::Url, prefix: &str, args: &SweepArgs) -> Result<Outcome> {
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }
    if args.rates.is_empty() || args.rates.len() > 40 {
        bail!("--rates takes 1 to 40 rates");
    }
    if let Some(bad) = args.rates.iter().find(|r| !(0.1..=100_000.0).contains(*r)) {
        bail!("rate {bad} is outside 0.1–100000 msg/s");
    }
    let api = Api::new(base, 64)?;
    eprintln!("setup: {} pairs (not timed)", args.pairs);
    let mut streams = Streams::setup(&api, prefix, args.pairs).await?;
    let mut points: Vec<StepResult> = Vec::new();
    let mut notes = Vec::new();
    for (i, rate) in args.rates.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(duration(args.pause)).await;
        }
        eprintln!("rate {rate} msg/s for {} s", args.duration);
        let step = streams
            .run_step(StepPlan {
                rate: *rate,
                duration: duration(args.duration),
                warmup: duration(args.warmup),
                body_len: args.body_len as usize,
                grace: Duration::from_secs(10),
            })
            .await?;
        eprintln!(
            "  delivered {:.0} msg/s, p50 {} ms, p99 {} ms, lost {}, dup {}, errors {}",
            step.delivered_per_sec,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.tally.lost,
            step.tally.duplicates,
            step.errors
        );
        let saturated = step.latency.p99_ms > args.stop_p99_ms
            || step.delivered_per_sec < step.offered_per_sec * 0.5;
        points.push(step);
        if saturated && i + 1 < args.rates.len() {
            notes.push(format!(
                "Stopped after {rate} msg/s: p99 above {} ms or less than half delivered.",
                args.stop_p99_ms
            ));
            break;
        }
    }
    let best = points
        .iter()
        .filter(|p| p.latency.p99_ms <= 30.0 && p.delivered_per_sec >= 0.99 * p.offered_per_sec)
        .map(|p| p.offered_per_sec)
        .fold(0.0, f64::max);
    let lost: u64 = points.iter().map(|p| p.tally.lost).sum();
    let dup: u64 = points.iter().map(|p| p.tally.duplicates).sum();
    let stored: u64 = points.iter().map(|p| p.tally.stored).sum();
    let max_delivered = points
        .iter()
        .map(|p| p.delivered_per_sec)
        .fold(0.0, f64::max);
    Ok(Outcome {
        scenario: "sweep",
        params: json!({"pairs": args.pairs, "rates": args.rates, "duration_secs": args.duration,
            "warmup_secs": args.warmup, "body_len": args.body_len}),
        figures: vec![
            figure("Pairs", f64::from(args.pairs), ""),
            figure(
                "Highest offered rate delivered (≥ 99 %) with p99 ≤ 30 ms",
                best,
                "msg/s",
            ),
            figure("Highest delivered rate", max_delivered, "msg/s"),
            figure("Lost (all rates)", lost as f64, ""),
            figure("Duplicated (all rates)", dup as f64, ""),
        ],
        targets: vec![
            target(
                "Delivered messages at p99 ≤ 30 ms",
                "≥ 4,000 msg/s with p99 ≤ 30 ms",
                format!("{} msg/s", fmt(best)),
                best >= 4000.0,
            ),
            target(
                "No lost or duplicated message",
                "0 lost, 0 duplicated",
                format!(
                    "{lost} lost, {dup} duplicated (of {} stored)",
                    fmt(stored as f64)
                ),
                lost == 0 && dup == 0,
            ),
        ],
        notes,
        details: json!({"points": points}),
    })
}

async fn capacity_scenario(
    base: &reqwest::Url,
    prefix: &str,
    args: &CapacityArgs,
    server_pid: Option<u32>,
    nofile: Option<u64>,
) -> Result<Outcome> {
    let source_addrs = api::parse_source_addrs(&args.source_addrs).map_err(anyhow::Error::msg)?;
    if !args.replica_pids.is_empty() && args.replica_pids.len() != args.replicas.len() {
        bail!("give one --replica-pid per --replica, in the same order, or none");
    }
    if args.replicas.len() > 63 {
        bail!("at most 63 --replica (64 servers)");
    }
    let mut servers = vec![capacity::Server {
        api: Api::new(base, 16)?,
        url: base.to_string(),
        pid: server_pid,
    }];
    for (i, replica) in args.replicas.iter().enumerate() {
        let url = api::check_loopback(replica).map_err(anyhow::Error::msg)?;
        servers.push(capacity::Server {
            api: Api::new(&url, 16)?,
            url: url.to_string(),
            pid: args.replica_pids.get(i).copied(),
        });
    }
    let connections = args.connections;
    // Each server needs a file per socket it holds.
    let per_server = connections.div_ceil(servers.len() as u64);
    for server in &servers {
        if let Some(limit) = server
            .pid
            .and_then(|pid| report::read_nofile_limit(&pid.to_string()))
            && per_server + 256 > limit
        {
            bail!(
                "{per_server} connections per server need more open files than server {} may have \
                 ({limit}); raise its `ulimit -n` or add replicas (--replica)",
                server.url
            );
        }
    }
    // So does each worker process.
    let budget = nofile.map_or(u64::MAX, |limit| limit.saturating_sub(512).max(1));
    let workers = match args.workers {
        0 => connections.div_ceil(budget).max(1),
        n => n,
    };
    if connections.div_ceil(workers) > budget {
        bail!(
            "{connections} connections over {workers} worker process(es) need more open files \
             than each may have ({}); raise `ulimit -n` (scripts/bench.sh does) or add --workers",
            budget + 512
        );
    }
    let ports_per_addr = 28_000u64;
    if connections > ports_per_addr * source_addrs.len() as u64 {
        bail!(
            "{connections} connections need more source ports than {} source addresses offer; add addresses",
            source_addrs.len()
        );
    }
    let server_count = servers.len();
    let result = capacity::run(
        prefix,
        &capacity::CapacityPlan {
            connections: connections as usize,
            users: args.users as usize,
            servers,
            source_addrs,
            connect_concurrency: args.connect_concurrency as usize,
            hold: duration(args.hold),
            workers: workers as usize,
        },
    )
    .await?;
    let per_conn = result.server_bytes_per_connection;
    let hb = &result.heartbeat;
    let mut notes = step_notes(hb);
    if result.server_bytes_per_connection.is_none() {
        notes.push(
            "Not every server's PID was given (--server-pid, --replica-pid): server memory was \
             not measured."
                .to_owned(),
        );
    }
    if server_count > 1 {
        let each: Vec<String> = result
            .servers
            .iter()
            .map(|s| {
                s.bytes_per_connection
                    .map_or("?".to_owned(), |b| fmt(b / 1024.0))
            })
            .collect();
        notes.push(format!(
            "{server_count} servers (monolithic replicas on one database and broker); memory per \
             connection on each: {} KiB. The heartbeat pair crosses from the first to the last.",
            each.join(", ")
        ));
    }
    if let Some(failure) = &result.first_failure {
        notes.push(format!(
            "{} connections failed; the first: {failure}",
            result.connect_failures
        ));
    }
    let held = result.connected as f64;
    Ok(Outcome {
        scenario: "capacity",
        params: json!({"connections": args.connections, "users": args.users,
            "source_addrs": args.source_addrs, "connect_concurrency": args.connect_concurrency,
            "hold_secs": args.hold, "servers": server_count, "workers": result.workers}),
        figures: vec![
            figure("Idle connections held", held, ""),
            figure("Servers holding them", server_count as f64, ""),
            figure(
                "Load generator processes holding them",
                result.workers as f64,
                "",
            ),
            figure(
                "Failed connection attempts",
                result.connect_failures as f64,
                "",
            ),
            figure("Alive after the hold", result.alive_after_hold as f64, ""),
            figure("Connects per second", result.connects_per_sec, "/s"),
            figure(
                "Server RSS before (all servers)",
                result
                    .server_rss_kib_baseline
                    .map_or(f64::NAN, |v| v as f64 / 1024.0),
                "MiB",
            ),
            figure(
                "Server RSS with all connections (all servers)",
                result
                    .server_rss_kib_connected
                    .map_or(f64::NAN, |v| v as f64 / 1024.0),
                "MiB",
            ),
            figure(
                "Server memory per connection",
                per_conn.map_or(f64::NAN, |b| b / 1024.0),
                "KiB",
            ),
            figure(
                "Server memory per connection (bytes)",
                per_conn.map_or(f64::NAN, f64::round),
                "B",
            ),
            figure("Heartbeat p50 (1 msg/s)", hb.latency.p50_ms, "ms"),
            figure("Heartbeat p99", hb.latency.p99_ms, "ms"),
            figure("Heartbeat max", hb.latency.max_ms, "ms"),
            figure("Heartbeat lost", hb.tally.lost as f64, ""),
        ],
        targets: vec![
            target(
                "Idle connections at ≤ 20 KB each",
                "≥ 100,000 connections, ≤ 20 KB (20,000 bytes) each",
                format!(
                    "{} connections, {} bytes ({} KiB) each",
                    fmt(held),
                    per_conn.map_or("?".to_owned(), |b| fmt(b.round())),
                    per_conn.map_or("?".to_owned(), |b| fmt(b / 1024.0))
                ),
                held >= 100_000.0 && per_conn.is_some_and(|b| b <= MAX_BYTES_PER_IDLE_CONNECTION),
            ),
            no_loss_target(hb),
        ],
        notes,
        details: json!({"capacity": result}),
    })
}

async fn seed(api: &Api, prefix: &str, args: &ReadSetArgs) -> Result<http_load::ReadSet> {
    eprintln!(
        "setup: {} users, {} partners each, {} messages per conversation (not timed)",
        args.users, args.peers, args.history
    );
    http_load::ReadSet::seed(
        api,
        prefix,
        args.users as usize,
        args.peers as usize,
        args.history as usize,
    )
    .await
}

async fn reads_scenario(base: &reqwest::Url, prefix: &str, args: &ReadsArgs) -> Result<Outcome> {
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }
    let api = Api::new(base, args.concurrency as usize)?;
    let set = seed(&api, &format!("{prefix}d"), &args.set).await?;
    eprintln!(
        "reading with {} workers for {} s ({} s warm-up)",
        args.concurrency, args.duration, args.warmup
    );
    let result = http_load::reads(
        &api,
        &set,
        args.concurrency as usize,
        duration(args.duration),
        duration(args.warmup),
    )
    .await?;
    let all = &result.all;
    Ok(Outcome {
        scenario: "reads",
        params: json!({"users": args.set.users, "peers": args.set.peers, "history": args.set.history,
            "concurrency": args.concurrency, "duration_secs": args.duration, "warmup_secs": args.warmup}),
        figures: vec![
            figure("Concurrency", args.concurrency as f64, ""),
            figure("Reads (HTTP 200)", all.ok_per_sec, "req/s"),
            figure("Latency p50", all.latency.p50_ms, "ms"),
            figure("Latency p99", all.latency.p99_ms, "ms"),
            figure(
                "Conversations p50",
                result.conversations.latency.p50_ms,
                "ms",
            ),
            figure(
                "Conversations p99",
                result.conversations.latency.p99_ms,
                "ms",
            ),
            figure(
                "History (50 messages) p50",
                result.history.latency.p50_ms,
                "ms",
            ),
            figure("History p99", result.history.latency.p99_ms, "ms"),
            figure("Errors (non-200)", all.errors as f64, ""),
        ],
        targets: vec![target(
            "Authenticated reads",
            "≥ 5,000 req/s",
            format!("{} req/s", fmt(all.ok_per_sec)),
            all.ok_per_sec >= 5000.0,
        )],
        notes: Vec::new(),
        details: json!({"reads": result}),
    })
}

async fn flood_scenario(base: &reqwest::Url, prefix: &str, args: &FloodArgs) -> Result<Outcome> {
    let api = Api::new(base, 256)?;
    let set = seed(&api, &format!("{prefix}d"), &args.set).await?;
    eprintln!("setup: {} login accounts (not timed)", args.login_users);
    let login_users = api
        .register_many(&format!("{prefix}l"), args.login_users as usize, 8)
        .await?;
    let result = http_load::login_flood(
        &api,
        &set,
        &login_users,
        args.background_rate,
        args.concurrency as usize,
        duration(args.phase),
    )
    .await?;
    let base_p99 = result.background_baseline.latency.p99_ms;
    let flood_p99 = result.background_during_flood.latency.p99_ms;
    let mut notes = Vec::new();
    if result.background_skipped > 0 {
        notes.push(format!(
            "{} background requests were skipped (512 already in flight).",
            result.background_skipped
        ));
    }
    Ok(Outcome {
        scenario: "login-flood",
        params: json!({"read_users": args.set.users, "login_users": args.login_users,
            "concurrency": args.concurrency, "background_rate": args.background_rate,
            "phase_secs": args.phase}),
        figures: vec![
            figure("Login workers", args.concurrency as f64, ""),
            figure("Logins (HTTP 200)", result.logins.ok_per_sec, "/s"),
            figure(
                "Logins refused with 503 (hashing queue full)",
                *result.logins.statuses.get("503").unwrap_or(&0) as f64,
                "",
            ),
            figure("Login p50", result.logins.latency.p50_ms, "ms"),
            figure("Login p99", result.logins.latency.p99_ms, "ms"),
            figure("Other requests", args.background_rate, "req/s"),
            figure(
                "Other requests p50 without flood",
                result.background_baseline.latency.p50_ms,
                "ms",
            ),
            figure("Other requests p99 without flood", base_p99, "ms"),
            figure(
                "Other requests p50 during flood",
                result.background_during_flood.latency.p50_ms,
                "ms",
            ),
            figure("Other requests p99 during flood", flood_p99, "ms"),
            figure(
                "Other requests' errors during flood",
                result.background_during_flood.errors as f64,
                "",
            ),
        ],
        targets: vec![target(
            "Other requests during a login flood",
            "p99 at most doubled",
            format!(
                "p99 {} → {} ms (×{})",
                fmt(base_p99),
                fmt(flood_p99),
                fmt(result.p99_ratio)
            ),
            result.p99_ratio <= 2.0 && result.background_during_flood.errors == 0,
        )],
        notes,
        details: json!({"flood": result}),
    })
}

async fn bundles_scenario(
    base: &reqwest::Url,
    prefix: &str,
    args: &BundlesArgs,
) -> Result<Outcome> {
    let api = Api::new(base, args.fetchers as usize)?;
    eprintln!(
        "setup: {} owners with {} one-time prekeys each (not timed)",
        args.owners, args.prekeys
    );
    let result = http_load::bundles(
        &api,
        &format!("{prefix}b"),
        args.owners as usize,
        args.prekeys as usize,
        args.fetchers as usize,
        duration(args.limit),
    )
    .await?;
    let mut notes = Vec::new();
    if !result.exactly_once && result.duplicates == 0 {
        notes.push(format!(
            "Not every pool was drained within {} s: {} of {} prekeys handed out.",
            args.limit, result.distinct_handed_out, result.published_prekeys
        ));
    }
    Ok(Outcome {
        scenario: "bundles",
        params: json!({"owners": args.owners, "prekeys": args.prekeys, "fetchers": args.fetchers,
            "limit_secs": args.limit}),
        figures: vec![
            figure("Concurrent fetchers", args.fetchers as f64, ""),
            figure("Bundles fetched (HTTP 200)", result.bundles_per_sec, "/s"),
            figure("Fetch p50", result.fetches.latency.p50_ms, "ms"),
            figure("Fetch p99", result.fetches.latency.p99_ms, "ms"),
            figure(
                "One-time prekeys published",
                result.published_prekeys as f64,
                "",
            ),
            figure("Handed out", result.handed_out as f64, ""),
            figure("Distinct handed out", result.distinct_handed_out as f64, ""),
            figure("Handed out twice", result.duplicates as f64, ""),
            figure("Empty-pool answers", result.empty_pool_answers as f64, ""),
            figure("Errors (non-200)", result.fetches.errors as f64, ""),
        ],
        targets: vec![target(
            "No one-time prekey handed out twice",
            "0 duplicates; every key exactly once",
            format!(
                "{} duplicates; {} of {} handed out",
                result.duplicates, result.distinct_handed_out, result.published_prekeys
            ),
            result.duplicates == 0 && result.exactly_once,
        )],
        notes,
        details: json!({"bundles": result}),
    })
}

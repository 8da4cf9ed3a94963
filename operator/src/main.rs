//! `parley-operator`: `run` reconciles ChatClusters; `crd` prints the
//! CustomResourceDefinition; `render` prints, offline, every object the
//! operator would apply for a manifest.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use parley_operator::{render, run, validate};

/// The Parley operator.
#[derive(Debug, Parser)]
#[command(name = "parley-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile ChatClusters until SIGTERM.
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition (YAML).
    Crd,
    /// Print every object the operator would apply for a ChatCluster manifest.
    Render {
        /// The manifest (YAML; other documents in the file are ignored).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (empty: every namespace).
    #[arg(long, env = "PARLEY_OPERATOR_NAMESPACE", default_value = "")]
    namespace: String,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "PARLEY_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Reconcile only while holding the `parley-operator` Lease (set with more than one replica).
    #[arg(long, env = "PARLEY_OPERATOR_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_election: bool,
    /// Log format.
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// This pod's name: the Lease holder identity and the Events' reporting instance.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This pod's namespace: where the Lease lives.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            init_logging(args.log_format);
            let options = run::Options {
                namespace: Some(args.namespace).filter(|n| !n.is_empty()),
                listen: args.listen,
                leader_election: args.leader_election,
                pod_name: args.pod_name,
                pod_namespace: args.pod_namespace,
            };
            run::run(options).await?;
        }
        Command::Crd => print!("{}", render::crd_yaml()),
        Command::Render { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let cluster = render::cluster_from_yaml(&text)?;
            if let Err(problems) = validate::validate(&cluster) {
                bail!("invalid ChatCluster:\n  {}", problems.join("\n  "));
            }
            print!("{}", render::render(&cluster)?);
        }
    }
    Ok(())
}

//! `parley-operator`: `crd` prints the CustomResourceDefinition; `render`
//! prints, offline, every object the operator would apply for a manifest.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use parley_operator::{render, validate};

/// The Parley operator.
#[derive(Debug, Parser)]
#[command(name = "parley-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ChatCluster CustomResourceDefinition (YAML).
    Crd,
    /// Print every object the operator would apply for a ChatCluster manifest.
    Render {
        /// The manifest (YAML; other documents in the file are ignored).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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

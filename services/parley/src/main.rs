//! `parley`: serve, migrate, keys.
#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::{Context, bail};
use clap::Parser;
use parley::cli::{Cli, Command, KeysCommand, MigrateArgs, ServeArgs};
use parley::platform::Platform;
use parley_common::config::redact_url;
use parley_common::keys::{self, Jwks};
use parley_common::{db, server, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Keys {
            command: KeysCommand::Generate { out, keep },
        } => generate_keys(&out, keep.as_deref()),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.common.log_format, &args.common.log_filter());
    let shutdown = CancellationToken::new();
    server::cancel_on_signals(shutdown.clone());
    let platform = Platform::start(&args, shutdown).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(target = ?args.target, address = %listener.local_addr()?, "parley is serving");
    platform.serve(listener).await?;
    tracing::info!("parley stopped");
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, "info");
    let Some(url) = args.migrate_database_url.or(args.database_url) else {
        bail!("set PARLEY_MIGRATE_DATABASE_URL or DATABASE_URL to the schema owner's URL");
    };
    let mut schemas = Vec::new();
    if args.target.runs_user() {
        schemas.push(parley_user::SCHEMA);
    }
    if args.target.runs_chat() {
        schemas.push(parley_chat::SCHEMA);
    }
    if args.target.runs_notification() {
        schemas.push(parley_notification::SCHEMA);
    }
    for schema in schemas {
        tracing::info!(schema = schema.schema, database = %redact_url(&url), "migrating");
        db::migrate(&url, schema, args.runtime_role.as_deref()).await?;
        tracing::info!(
            schema = schema.schema,
            version = db::known_version(schema),
            "schema is up to date"
        );
    }
    let amqp = args.amqp_url.or_else(|| {
        parley_common::config::or_env(None, "MESSAGE_BROKER_URL").map(secrecy::SecretString::from)
    });
    if let Some(amqp) = amqp {
        let exchange = &args.events_exchange;
        let mut queues = Vec::new();
        if args.target.runs_chat() {
            queues.push(parley_chat::projection::queue(exchange));
        }
        if args.target.runs_notification() {
            queues.push(parley_notification::consumer::queue(exchange));
        }
        parley_common::consumer::declare_topology(&amqp, exchange, &queues)
            .await
            .with_context(|| format!("declaring queues on {}", redact_url(&amqp)))?;
        for queue in &queues {
            tracing::info!(queue = %queue.name, "queue and bindings declared");
        }
    }
    Ok(())
}

fn generate_keys(out: &Path, keep: Option<&Path>) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let generated = keys::generate();
    let mut jwks = Jwks {
        keys: vec![generated.jwk],
    };
    if let Some(path) = keep {
        let previous = Jwks::parse(&std::fs::read_to_string(path)?)?;
        jwks.keys.extend(previous.keys);
    }
    let pem_path = out.join("jwt-signing.pem");
    write_private(&pem_path, generated.private_pem.as_bytes())?;
    let jwks_path = out.join("jwks.json");
    std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)? + "\n")?;
    println!(
        "wrote {} and {} (kid {})",
        pem_path.display(),
        jwks_path.display(),
        jwks.keys[0].kid
    );
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes)?;
    Ok(())
}

//! Command line of the `parley` binary. Every flag also reads an environment
//! variable; `docs/configuration.md` lists them all (a test keeps it in sync).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use parley_chat::ChatConfig;
use parley_common::config::CommonConfig;
use parley_notification::NotificationConfig;
use parley_user::UserConfig;

/// Parley: end-to-end-encrypted chat, one binary, several services.
#[derive(Debug, Parser)]
#[command(name = "parley", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one service, or all of them on one port.
    Serve(Box<ServeArgs>),
    /// Apply database migrations as the schema owner.
    Migrate(MigrateArgs),
    /// Manage JWT signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Every service, one port, the whole public URL layout.
    All,
    /// The user service: `/user/*` and `/api/user/*`.
    User,
    /// The chat service: `/chat/*` REST and `/chat/socket.io/`.
    Chat,
    /// The notification service: `/notifications/*` and `/notification/*`.
    Notification,
}

impl Target {
    /// Whether this target includes the user service.
    pub fn runs_user(self) -> bool {
        matches!(self, Target::All | Target::User)
    }

    /// Whether this target includes the chat service.
    pub fn runs_chat(self) -> bool {
        matches!(self, Target::All | Target::Chat)
    }

    /// Whether this target includes the notification service.
    pub fn runs_notification(self) -> bool {
        matches!(self, Target::All | Target::Notification)
    }
}

/// `parley serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which services to run.
    #[arg(long, env = "PARLEY_TARGET", value_enum, default_value_t = Target::All)]
    pub target: Target,

    /// Address to listen on.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub user: UserConfig,

    #[command(flatten)]
    pub chat: ChatConfig,

    #[command(flatten)]
    pub notification: NotificationConfig,
}

/// `parley migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Which services' schemas to migrate.
    #[arg(long, env = "PARLEY_TARGET", value_enum, default_value_t = Target::All)]
    pub target: Target,

    /// PostgreSQL URL of the schema owner (defaults to `DATABASE_URL`).
    #[arg(long, env = "PARLEY_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<secrecy::SecretString>,

    /// PostgreSQL URL (used when no owner URL is given).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<secrecy::SecretString>,

    /// Runtime role to grant DML on the migrated schema(s).
    #[arg(long, env = "PARLEY_RUNTIME_ROLE")]
    pub runtime_role: Option<String>,

    /// RabbitMQ URL; when set, the services' queues and bindings are declared too (`MESSAGE_BROKER_URL` is accepted too).
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<secrecy::SecretString>,

    /// Topic exchange carrying domain events.
    #[arg(long, env = "PARLEY_EVENTS_EXCHANGE", default_value = "parley.events")]
    pub events_exchange: String,

    /// Log format.
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value_t = parley_common::config::LogFormat::Human)]
    pub log_format: parley_common::config::LogFormat,
}

/// `parley keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new Ed25519 signing key (`jwt-signing.pem`) and its JWK Set (`jwks.json`).
    Generate {
        /// Directory to write to (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Existing JWK Set whose keys are kept after the new one (rotation).
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn env_names(command: &clap::Command, names: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            env_names(sub, names);
        }
    }

    #[test]
    fn every_environment_variable_is_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        let mut names = Vec::new();
        env_names(&Cli::command(), &mut names);
        assert!(names.len() > 20, "found {names:?}");
        let missing: Vec<_> = names
            .iter()
            .filter(|name| !docs.contains(&format!("`{name}`")))
            .collect();
        assert!(missing.is_empty(), "undocumented settings: {missing:?}");
    }

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

//! `tributary-orders`: serve, migrate, check a pricing rules file.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_orders::Settings;
use tributary_orders::pricing::RuleSet;

#[derive(Parser)]
#[command(
    name = "tributary-orders",
    version,
    about = "Tributary's orders service"
)]
struct Cli {
    /// A YAML settings file; `TRIBUTARY_ORDERS_*` variables override it.
    #[arg(long, global = true, env = "TRIBUTARY_ORDERS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API (creating and migrating the database first).
    Serve {
        /// Where to listen (default 127.0.0.1:8082).
        #[arg(long, env = "TRIBUTARY_ORDERS_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// For a laptop: text logs.
        #[arg(long)]
        dev: bool,
    },
    /// Creates the database if needed and runs the migrations.
    Migrate,
    /// Checks a pricing rules file (every error with its file:line:column).
    CheckRules {
        /// The rules file.
        file: PathBuf,
    },
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::CheckRules { file } = &cli.command {
        let rules = RuleSet::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "{}: the rules check (sha256 {})",
            file.display(),
            rules.digest()
        );
        return Ok(());
    }
    let mut settings = Settings::load(cli.config.as_deref()).context("reading the settings")?;
    match cli.command {
        Command::Serve { listen, dev } => {
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if dev {
                settings.json_logs = false;
            }
            // Kept to the end: dropping it flushes the spans still buffered.
            let _telemetry = tributary_kit::traces::init("tributary-orders", settings.json_logs)
                .context("starting the trace exporter")?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("listening on {}", settings.listen))?;
            let server = tributary_orders::start(
                settings,
                listener,
                tributary_kit::server::shutdown_signal(),
            )
            .await
            .context("starting")?;
            server.wait().await.context("serving")?;
        }
        Command::Migrate => {
            let _telemetry = tributary_kit::traces::init_with("tributary-orders", false, None)?;
            tributary_orders::app::database(
                settings.database_url.expose(),
                settings.database_connections,
            )
            .await
            .context("migrating")?;
            println!("the database is migrated");
        }
        Command::CheckRules { .. } => {}
    }
    Ok(())
}

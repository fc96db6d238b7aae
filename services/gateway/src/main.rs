//! `tributary-gateway`: serve, check a routes file, manage API keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_gateway::Settings;
use tributary_gateway::keys::Keys;
use tributary_gateway::routes::Table;

#[derive(Parser)]
#[command(name = "tributary-gateway", version, about = "Tributary's API gateway")]
struct Cli {
    /// A YAML settings file; `TRIBUTARY_GATEWAY_*` variables override it.
    #[arg(long, global = true, env = "TRIBUTARY_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the proxy and the admin API.
    Serve {
        /// The routes file (default services/gateway/routes.yaml).
        #[arg(long, env = "TRIBUTARY_GATEWAY_ROUTES")]
        routes: Option<PathBuf>,
        /// Where clients connect (default 127.0.0.1:8080).
        #[arg(long, env = "TRIBUTARY_GATEWAY_LISTEN")]
        listen: Option<SocketAddr>,
        /// Where health, metrics and the admin API listen (default 127.0.0.1:9080).
        #[arg(long, env = "TRIBUTARY_GATEWAY_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// For a laptop: text logs.
        #[arg(long)]
        dev: bool,
    },
    /// Checks a routes file (every error with its file:line:column).
    Check {
        /// The routes file.
        file: PathBuf,
    },
    /// Creates the key store's database if needed and migrates it.
    Migrate,
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issues a key and prints it (once: only its hash is kept).
    Issue {
        /// The application's name.
        #[arg(long)]
        name: String,
        /// Requests per minute (default: the settings' default, 1000).
        #[arg(long)]
        limit_per_minute: Option<u32>,
    },
    /// Revokes a key by id.
    Revoke {
        /// The key's id.
        id: uuid::Uuid,
    },
    /// Lists the keys.
    List,
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Check { file } = &cli.command {
        let table = Table::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "{}: {} routes to {} upstreams check (sha256 {})",
            file.display(),
            table.routes().len(),
            table.upstreams.len(),
            table.digest
        );
        return Ok(());
    }
    let mut settings = Settings::load(cli.config.as_deref()).context("reading the settings")?;
    match cli.command {
        Command::Serve {
            routes,
            listen,
            admin_listen,
            dev,
        } => {
            if let Some(routes) = routes {
                settings.routes = routes;
            }
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if let Some(admin_listen) = admin_listen {
                settings.admin_listen = admin_listen;
            }
            if dev {
                settings.json_logs = false;
            }
            let _telemetry = tributary_kit::traces::init("tributary-gateway", settings.json_logs)
                .context("starting the trace exporter")?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("listening on {}", settings.listen))?;
            let admin = tokio::net::TcpListener::bind(settings.admin_listen)
                .await
                .with_context(|| format!("listening on {}", settings.admin_listen))?;
            let server = tributary_gateway::start(
                settings,
                listener,
                admin,
                tributary_gateway::limit::Clock::System,
                tributary_kit::server::shutdown_signal(),
            )
            .await
            .context("starting")?;
            server.wait().await.context("serving")?;
        }
        Command::Migrate => {
            tributary_gateway::app::connect(&settings)
                .await
                .context("migrating the key store")?;
            println!("the key store is migrated");
        }
        Command::Keys { command } => {
            let db = tributary_gateway::app::connect(&settings)
                .await
                .context("connecting to the key store")?;
            let keys = Keys::new(db, settings.keys.cache_for);
            match command {
                KeysCommand::Issue {
                    name,
                    limit_per_minute,
                } => {
                    let limit = limit_per_minute.unwrap_or(settings.keys.default_limit_per_minute);
                    let name = tributary_gateway::keys::check_new(&name, limit)
                        .context("refusing to issue this key")?;
                    let (key, text) = keys.issue(name, limit).await.context("issuing a key")?;
                    eprintln!(
                        "issued key {} for {} ({} requests per minute); it is shown once:",
                        key.id, key.name, key.limit_per_minute
                    );
                    println!("{text}");
                }
                KeysCommand::Revoke { id } => {
                    let done = keys.revoke(id).await.context("revoking the key")?;
                    anyhow::ensure!(done, "no key {id} is in use");
                    println!(
                        "revoked {id}; every gateway refuses it within {:?}",
                        settings.keys.cache_for
                    );
                }
                KeysCommand::List => {
                    for key in keys.list().await.context("listing the keys")? {
                        println!(
                            "{}\t{}\t{}…\t{}/min\t{}{}",
                            key.id,
                            key.name,
                            key.prefix,
                            key.limit_per_minute,
                            key.created_at.to_rfc3339(),
                            key.revoked_at
                                .map(|at| format!("\trevoked {}", at.to_rfc3339()))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        Command::Check { .. } => {}
    }
    Ok(())
}

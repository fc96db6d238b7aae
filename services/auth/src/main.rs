//! `tributary-auth`: serve, migrate, rotate keys, make data keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_auth::Settings;
use tributary_auth::sealing::Keyring;

#[derive(Parser)]
#[command(name = "tributary-auth", version, about = "Tributary's auth service")]
struct Cli {
    /// A YAML settings file; `TRIBUTARY_AUTH_*` variables override it.
    #[arg(long, global = true, env = "TRIBUTARY_AUTH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API (creating and migrating the database first).
    Serve {
        /// Where to listen (default 127.0.0.1:8081).
        #[arg(long, env = "TRIBUTARY_AUTH_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// For a laptop: text logs, and data keys kept in
        /// `.tributary/auth-data-keys` (made on first start) when none are set.
        #[arg(long)]
        dev: bool,
    },
    /// Creates the database if needed and runs the migrations.
    Migrate,
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints a new data key list (`1:BASE64`) for TRIBUTARY_AUTH_DATA_KEYS.
    DataKey,
    /// Sets a user's roles and permissions (an operator's way to make the
    /// first admin; later ones can use `PUT /auth/admin/users/{id}/access`).
    Access {
        /// The user's email.
        email: String,
        /// Roles, comma-separated (`admin,customer`).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Permissions, comma-separated (`read:orders,write:orders`).
        #[arg(long, value_delimiter = ',', default_value = "")]
        permissions: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes a new signing key, published now and signing after the lead time.
    Rotate,
    /// Lists the published keys.
    List,
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref()).context("reading the settings")?;
    match cli.command {
        Command::Serve { listen, dev } => {
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if dev {
                settings.json_logs = false;
                if settings.data_keys.is_none() && settings.data_keys_file.is_none() {
                    settings.data_keys_file = Some(dev_data_keys()?);
                }
            }
            // Kept to the end: dropping it flushes the spans still buffered.
            let _telemetry = tributary_kit::traces::init("tributary-auth", settings.json_logs)
                .context("starting the trace exporter")?;
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("listening on {}", settings.listen))?;
            let server =
                tributary_auth::start(settings, listener, tributary_kit::server::shutdown_signal())
                    .await
                    .context("starting")?;
            server.wait().await.context("serving")?;
        }
        Command::Migrate => {
            let _telemetry = tributary_kit::traces::init_with("tributary-auth", false, None)?;
            tributary_auth::app::database(settings.database_url.expose())
                .await
                .context("migrating")?;
            println!("the database is migrated");
        }
        Command::Keys { command } => {
            let _telemetry = tributary_kit::traces::init_with("tributary-auth", false, None)?;
            let sealing = std::sync::Arc::new(tributary_auth::app::data_keys(&settings)?);
            let db = tributary_auth::app::database(settings.database_url.expose()).await?;
            let keys = tributary_auth::keys::Keys::load(
                db,
                sealing,
                settings.keys.clone(),
                settings.tokens.access_ttl,
            )
            .await?;
            match command {
                KeysCommand::Rotate => {
                    let kid = keys.rotate().await?;
                    println!(
                        "made key {kid}; it signs in {}",
                        humantime::format_duration(settings.keys.publish_lead)
                    );
                }
                KeysCommand::List => {
                    println!("{}", serde_json::to_string_pretty(&keys.jwks())?);
                }
            }
        }
        Command::DataKey => println!("{}", Keyring::generate()),
        Command::Access {
            email,
            roles,
            permissions,
        } => {
            let _telemetry = tributary_kit::traces::init_with("tributary-auth", false, None)?;
            let db = tributary_auth::app::database(settings.database_url.expose()).await?;
            let user = tributary_auth::users::by_email(&db, &email)
                .await?
                .with_context(|| format!("no user {email}"))?;
            let permissions: Vec<String> =
                permissions.into_iter().filter(|p| !p.is_empty()).collect();
            tributary_auth::users::set_access(&db, user.id, &roles, &permissions).await?;
            println!(
                "{email}: roles {roles:?}, permissions {permissions:?} (in tokens issued from now on)"
            );
        }
    }
    Ok(())
}

/// The development data key file, made on first use (mode 0600).
fn dev_data_keys() -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(".tributary/auth-data-keys");
    if !path.exists() {
        std::fs::create_dir_all(".tributary").context("creating .tributary")?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut file, Keyring::generate().as_bytes())?;
        eprintln!(
            "made a development data key in {}; production sets TRIBUTARY_AUTH_DATA_KEYS",
            path.display()
        );
    }
    Ok(path)
}

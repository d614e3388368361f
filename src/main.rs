use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use claude_agent_http::{Application, Settings};

/// Claude Code CLI behind a multi-user HTTP API.
#[derive(Debug, Parser)]
#[command(name = "claude-agent-http", version, about)]
struct Args {
    /// Settings file (default: Settings.toml in the current directory, if present).
    #[arg(long, value_name = "FILE", env = claude_agent_http::settings::CONFIG_ENV, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Ask the running service's /health (exit 0 when healthy): for container health checks,
    /// without curl in the image.
    Healthcheck,
    /// Print the Settings.toml equivalent to the Python service's config.yaml (every key
    /// mapped, or named in a comment with why it was dropped).
    ImportSeedConfig {
        /// The Python service's config.yaml.
        file: PathBuf,
    },
    /// Re-seal every user's credentials under a new key (run with the service stopped).
    RotateCredentialsKey {
        /// The new key (base64 of 32 bytes); needed when auth.credentials_key is set, else
        /// one is generated into the data dir.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(Command::ImportSeedConfig { file }) = &args.command {
        return import_seed_config(file);
    }
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            return ExitCode::from(2);
        }
    };
    forget_settings_environment();
    match &args.command {
        Some(Command::Healthcheck) => return healthcheck(&settings),
        Some(Command::RotateCredentialsKey { new_key_file }) => {
            return match claude_agent_http::auth::credentials_rotation::rotate(&settings, new_key_file.as_deref()).await
            {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("claude-agent-http: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            return ExitCode::from(1);
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude-agent-http: server failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// The settings are read: the admin key, metrics token and database URL need not stay in the
/// environment, where a process started without `env_clear` would inherit them. (The CLIs get
/// an allowlisted environment anyway, and `/proc/<pid>/environ` keeps the original block: the
/// service being non-dumpable is what keeps agents from it.)
fn forget_settings_environment() {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_str().is_some_and(|k| k.starts_with("CLAUDE_AGENT_")))
        .collect();
    for name in names {
        // SAFETY: called first thing in main, before the server, arbiters or any thread that
        // reads the environment is started.
        unsafe { std::env::remove_var(name) };
    }
}

/// Prints the TOML for the seed's YAML (exit 2 when it cannot be read).
fn import_seed_config(file: &std::path::Path) -> ExitCode {
    let converted = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|yaml| claude_agent_http::seed_config::import(&yaml, file));
    match converted {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            ExitCode::from(2)
        }
    }
}

/// GET /health on the configured port (loopback when the service listens on every address).
fn healthcheck(settings: &Settings) -> ExitCode {
    let host = match settings.api.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other,
    };
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect((host, settings.api.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("unhealthy: {}", response.lines().last().unwrap_or(""));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {host}:{}: {e}", settings.api.port);
            ExitCode::from(1)
        }
    }
}

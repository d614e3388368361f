use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use claude_agent_http::{Application, Settings};

/// Claude Code CLI behind a multi-user HTTP API.
#[derive(Debug, Parser)]
#[command(name = "claude-agent-http", version, about)]
struct Args {
    /// Settings file (default: Settings.toml in the current directory, if present).
    #[arg(long, value_name = "FILE", env = claude_agent_http::settings::CONFIG_ENV)]
    config: Option<PathBuf>,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("claude-agent-http: {e}");
            return ExitCode::from(2);
        }
    };
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

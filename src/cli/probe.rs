//! `cli.path --version`, remembered: what `/health` reports about the CLI.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a failed `--version` probe (or a missing CLI) is remembered.
const FAILED_PROBE_KEPT: Duration = Duration::from_secs(5);

/// `cli.path --version` for `/health`. An answer is kept for good (the real CLI takes ~0.5 s);
/// a failure or a missing CLI for a few seconds, so `/health`, which needs no key, cannot be used
/// to fork processes at will, yet a CLI installed or fixed later is soon seen. One probe runs at
/// a time: concurrent callers wait for its result.
#[derive(Default)]
pub struct CliProbe {
    last: tokio::sync::Mutex<Option<Probed>>,
}

#[derive(Clone)]
struct Probed {
    at: Instant,
    path: Option<PathBuf>,
    version: Option<String>,
}

impl CliProbe {
    pub async fn check(&self, cli_path: &str) -> (Option<PathBuf>, Option<String>) {
        let mut last = self.last.lock().await;
        if let Some(p) = last.as_ref()
            && (p.version.is_some() || p.at.elapsed() < FAILED_PROBE_KEPT)
        {
            return (p.path.clone(), p.version.clone());
        }
        let path = crate::cli::locate(cli_path);
        let version = match &path {
            Some(p) => crate::cli::process::version(p).await,
            None => None,
        };
        *last = Some(Probed { at: Instant::now(), path: path.clone(), version: version.clone() });
        (path, version)
    }
}

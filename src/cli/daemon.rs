//! `serve` and `sync`: run the daemon in the foreground, or once until in sync.

use std::time::Duration;

use clap::Args;

use crate::daemon::{self, Mode};
use crate::home::Home;

/// `tandem sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
}

pub(super) fn serve(home: &Home) -> anyhow::Result<()> {
    runtime()?.block_on(daemon::run(home, Mode::Serve))?;
    Ok(())
}

pub(super) fn sync(home: &Home, args: SyncArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stats = runtime()?.block_on(daemon::run(home, Mode::Once { timeout, progress }))?;
    eprintln!(
        "in sync: {} bytes received from peers, {} bytes reused locally, {} bytes resumed, {} bad chunks rejected, {} bytes of index received",
        stats.network, stats.reused, stats.resumed, stats.rejected, stats.index
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

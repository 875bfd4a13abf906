//! `override` (send-only) and `revert` (receive-only). The work is `sync::modes`; a
//! running daemon does it on its own index (through the control socket) and carries it out
//! at once, otherwise this command does it on the index and the next `sync`/`serve`
//! carries it out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_proto::model::FolderMode;

use crate::config::{Config, FolderConfig};
use crate::daemon::control::Request;
use crate::home::Home;
use crate::identity::Identity;
use crate::store::Index;
use crate::sync::modes;

/// The folder's config; refuses a folder in the wrong mode before anything else.
fn folder(
    home: &Home,
    folder: &str,
    mode: FolderMode,
    command: &str,
) -> anyhow::Result<FolderConfig> {
    let config = Config::load(home)?;
    let cfg = config.folder(&super::setup::parse_folder_id(folder)?)?.clone();
    if cfg.mode != mode {
        anyhow::bail!("`{command}` is for {mode} folders; {} is {}", cfg.id, cfg.mode);
    }
    Ok(cfg)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

const DAEMON_WAIT: Duration = Duration::from_secs(300);

pub(super) fn override_folder(home: &Home, folder_id: &str) -> anyhow::Result<()> {
    let cfg = folder(home, folder_id, FolderMode::SendOnly, "override")?;
    let request = Request::Override { folder: cfg.id.to_string() };
    if let Some(message) = super::tell_daemon(home, &request, DAEMON_WAIT)? {
        println!("{message}");
        return Ok(());
    }
    let me = Identity::load(home)?.device_id().short();
    let index = Index::open(&home.index_path())?;
    let count = modes::override_folder(&index, &cfg, me, now_secs())?;
    println!(
        "{}: {count} paths now carry this device's version; peers take them at the next sync",
        cfg.id
    );
    Ok(())
}

pub(super) fn revert(home: &Home, folder_id: &str) -> anyhow::Result<()> {
    let cfg = folder(home, folder_id, FolderMode::ReceiveOnly, "revert")?;
    let request = Request::Revert { folder: cfg.id.to_string() };
    if let Some(message) = super::tell_daemon(home, &request, DAEMON_WAIT)? {
        println!("{message}");
        return Ok(());
    }
    let index = Index::open(&home.index_path())?;
    let (retaken, removed) = modes::revert(&index, &cfg)?;
    println!(
        "{}: {retaken} local changes will be replaced by the global version at the next sync, {removed} local additions moved to .tandem/trash/",
        cfg.id
    );
    Ok(())
}

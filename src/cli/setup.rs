//! `init`, `id`, `peer …` and `folder …`: identity and configuration commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tandem_proto::model::{DeviceId, FolderId, FolderMode};

use crate::cli::{JsonFlag, print_json};
use crate::config::{Config, DEFAULT_LISTEN, PeerConfig, validate_addr};
use crate::home::Home;
use crate::identity::Identity;
use crate::store::Index;

/// `tandem init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// A name for this device, shown to peers (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// QUIC (UDP) listen address.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
}

/// `tandem peer …`.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Trust a device and say where to reach it.
    Add {
        /// The peer's device id (as `tandem id` prints it on that machine).
        device_id: String,
        /// Where to reach it.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// A name for it.
        #[arg(long)]
        name: Option<String>,
    },
    /// List trusted peers.
    List(JsonFlag),
    /// Stop trusting a device (it is unshared from every folder).
    Remove {
        /// The peer's device id.
        device_id: String,
    },
}

/// `tandem folder …`.
#[derive(Debug, Subcommand)]
pub enum FolderCommand {
    /// Start syncing a folder.
    Add {
        /// The id every device uses for this folder.
        folder_id: String,
        /// The folder's path on this machine (an existing directory).
        path: PathBuf,
        /// send-receive, send-only or receive-only.
        #[arg(long, default_value = "send-receive")]
        mode: FolderMode,
        /// Share with this trusted device (repeatable).
        #[arg(long = "share", value_name = "DEVICE_ID")]
        share: Vec<String>,
    },
    /// Share a folder with a trusted device.
    Share {
        /// The folder.
        folder_id: String,
        /// The device.
        device_id: String,
    },
    /// Change a folder's mode.
    SetMode {
        /// The folder.
        folder_id: String,
        /// send-receive, send-only or receive-only.
        mode: FolderMode,
    },
    /// List folders.
    List(JsonFlag),
    /// Stop syncing a folder (its files stay where they are).
    Remove {
        /// The folder.
        folder_id: String,
    },
}

/// Parses a device id given on the command line (a bad one is a runtime error, exit 1).
fn device(text: &str) -> anyhow::Result<DeviceId> {
    text.parse().with_context(|| format!("bad device id {text:?}"))
}

/// Parses a folder id given on the command line.
pub(super) fn parse_folder_id(text: &str) -> anyhow::Result<FolderId> {
    Ok(FolderId::new(text)?)
}

pub(super) fn init(home: &Home, args: InitArgs) -> anyhow::Result<()> {
    validate_addr(&args.listen)?;
    if home.config_path().exists() {
        anyhow::bail!("{} already exists (refusing to overwrite it)", home.config_path().display());
    }
    let identity = Identity::create(home)?;
    let name = args.name.unwrap_or_else(host_name);
    Config::new(name, args.listen).save(home)?;
    println!("{}", identity.device_id());
    eprintln!("created a new identity in {}", home.dir().display());
    Ok(())
}

pub(super) fn id(home: &Home) -> anyhow::Result<()> {
    println!("{}", Identity::load(home)?.device_id());
    Ok(())
}

#[derive(Serialize)]
struct PeerJson<'a> {
    device_id: String,
    addr: &'a str,
    name: Option<&'a str>,
}

pub(super) fn peer(home: &Home, cmd: PeerCommand) -> anyhow::Result<()> {
    let mut config = Config::load(home)?;
    match cmd {
        PeerCommand::Add { device_id, addr, name } => {
            let device_id = device(&device_id)?;
            let own = Identity::load(home)?.device_id();
            config.add_peer(PeerConfig { id: device_id, addr, name }, own)?;
            config.save(home)?;
            eprintln!("trusted {device_id}");
            super::apply_config(home)?;
        }
        PeerCommand::Remove { device_id } => {
            let device_id = device(&device_id)?;
            config.remove_peer(&device_id)?;
            config.save(home)?;
            eprintln!("removed {device_id}");
            super::apply_config(home)?;
        }
        PeerCommand::List(flag) => {
            let rows: Vec<PeerJson<'_>> = config
                .peers
                .iter()
                .map(|p| PeerJson {
                    device_id: p.id.to_string(),
                    addr: &p.addr,
                    name: p.name.as_deref(),
                })
                .collect();
            if flag.json {
                return print_json(&rows);
            }
            for row in rows {
                println!("{}  {}  {}", row.device_id, row.addr, row.name.unwrap_or("-"));
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct FolderJson {
    id: String,
    path: String,
    mode: &'static str,
    share: Vec<String>,
}

pub(super) fn folder(home: &Home, cmd: FolderCommand) -> anyhow::Result<()> {
    let mut config = Config::load(home)?;
    match cmd {
        FolderCommand::Add { folder_id, path, mode, share } => {
            let folder_id = parse_folder_id(&folder_id)?;
            let share = share.iter().map(|d| device(d)).collect::<anyhow::Result<Vec<_>>>()?;
            config.add_folder(folder_id.clone(), &path, mode)?;
            let added = &config.folder(&folder_id)?.path;
            if let Some(home_dir) = home.canonical()
                && added.starts_with(&home_dir)
            {
                anyhow::bail!(
                    "{} is tandem's home {} or inside it: syncing it would copy this device's private key and index; pick a folder outside the home",
                    added.display(),
                    home_dir.display()
                );
            }
            for device in share {
                config.share_folder(&folder_id, device)?;
            }
            config.save(home)?;
            eprintln!(
                "added folder {folder_id} ({mode}) at {}",
                config.folder(&folder_id)?.path.display()
            );
            super::apply_config(home)?;
        }
        FolderCommand::Share { folder_id, device_id } => {
            let (folder_id, device_id) = (parse_folder_id(&folder_id)?, device(&device_id)?);
            config.share_folder(&folder_id, device_id)?;
            config.save(home)?;
            super::apply_config(home)?;
        }
        FolderCommand::SetMode { folder_id, mode } => {
            let folder_id = parse_folder_id(&folder_id)?;
            config.set_mode(&folder_id, mode)?;
            config.save(home)?;
            super::apply_config(home)?;
        }
        FolderCommand::Remove { folder_id } => {
            let folder_id = parse_folder_id(&folder_id)?;
            config.remove_folder(&folder_id)?;
            let daemon = crate::daemon::control::socket_path(home);
            if crate::daemon::control::answers(&daemon) {
                // the daemon owns the index: it forgets the folder when it reloads
                config.save(home)?;
                eprintln!("removed folder {folder_id} (its files are untouched)");
                return super::apply_config(home);
            }
            if home.index_path().exists() {
                let index = Index::open(&home.index_path()).context("opening the index")?;
                let mut batch = index.write()?;
                batch.remove_folder(folder_id.as_str())?;
                batch.commit()?;
            }
            config.save(home)?;
            eprintln!("removed folder {folder_id} (its files are untouched)");
        }
        FolderCommand::List(flag) => list_folders(&config, flag.json)?,
    }
    Ok(())
}

fn list_folders(config: &Config, json: bool) -> anyhow::Result<()> {
    let rows: Vec<FolderJson> = config
        .folders
        .iter()
        .map(|f| FolderJson {
            id: f.id.to_string(),
            path: f.path.display().to_string(),
            mode: f.mode.as_str(),
            share: f.share.iter().map(ToString::to_string).collect(),
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    for row in rows {
        println!("{}  {}  {}  shared with {}", row.id, row.mode, row.path, row.share.len());
    }
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tandem".to_string())
}

//! The command line: clap definitions and dispatch. One file per command group renders human
//! output and `--json`; the JSON field names are the stable contract in CLI.md.
//!
//! `anyhow` is allowed here and in `main.rs` only: every command ends in one error line.

mod conflicts;
mod daemon;
mod demo;
mod explain;
mod local;
mod log;
mod modes;
mod resolve;
mod setup;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::home::Home;

/// tandem: keep folders identical across machines, peer to peer.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
pub struct Cli {
    /// State directory (config, key, index); default $XDG_CONFIG_HOME/tandem or ~/.config/tandem.
    #[arg(long, global = true, env = "TANDEM_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log filter for stderr (error, warn, info, debug, trace, or a RUST_LOG-style directive).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this device's identity, certificate and config; print its device id.
    Init(setup::InitArgs),
    /// Print this device's id.
    Id,
    /// Manage trusted peers.
    #[command(subcommand)]
    Peer(setup::PeerCommand),
    /// Manage synced folders.
    #[command(subcommand)]
    Folder(setup::FolderCommand),
    /// Scan folders now and update the index.
    Scan(local::ScanArgs),
    /// List the local index of a folder.
    Ls(local::LsArgs),
    /// Folder totals, what is needed, peers and completion (with or without a daemon).
    Status(status::StatusArgs),
    /// Why a path is as it is: every replica's record, the global winner and its rule.
    Explain {
        /// The folder.
        folder_id: String,
        /// The path inside it.
        path: String,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// End conflicts: keep the original, the copy, the newest, or both.
    Resolve(resolve::ResolveArgs),
    /// Recent sync events: what changed, from which device, errors.
    Log(log::LogArgs),
    /// Send-only: make the global state equal to this device's (peers take our versions).
    Override {
        /// The folder.
        folder_id: String,
    },
    /// Receive-only: throw away local changes and restore the global state.
    Revert {
        /// The folder.
        folder_id: String,
    },
    /// List every conflict copy in every folder.
    Conflicts(JsonFlag),
    /// Two replicas in a temp dir, synced over loopback QUIC, a conflict made and listed.
    Demo,
    /// Run the daemon in the foreground until SIGINT/SIGTERM.
    Serve,
    /// Sync once: scan, connect, exchange and pull until in sync with every reachable peer.
    Sync(daemon::SyncArgs),
}

/// `--json` for listing commands.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print machine-readable JSON (schema in CLI.md).
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = resolve_home(cli.home)?;
    match cli.command {
        Command::Init(args) => setup::init(&home, args),
        Command::Id => setup::id(&home),
        Command::Peer(cmd) => setup::peer(&home, cmd),
        Command::Folder(cmd) => setup::folder(&home, cmd),
        Command::Scan(args) => local::scan(&home, args),
        Command::Ls(args) => {
            note_without_daemon(&home);
            local::ls(&home, args)
        }
        Command::Status(args) => status::status(&home, args),
        Command::Conflicts(flag) => conflicts::conflicts(&home, flag.json),
        Command::Log(args) => {
            note_without_daemon(&home);
            log::log(&home, args)
        }
        Command::Override { folder_id } => modes::override_folder(&home, &folder_id),
        Command::Revert { folder_id } => modes::revert(&home, &folder_id),
        Command::Resolve(args) => resolve::resolve(&home, args),
        Command::Explain { folder_id, path, json } => {
            note_without_daemon(&home);
            explain::explain(&home, &folder_id, &path, json)
        }
        Command::Demo => demo::demo(),
        Command::Serve => daemon::serve(&home),
        Command::Sync(args) => daemon::sync(&home, args),
    }
}

fn resolve_home(flag: Option<PathBuf>) -> anyhow::Result<Home> {
    let dir = match flag {
        Some(dir) => dir,
        None => Home::default_dir()
            .ok_or_else(|| anyhow::anyhow!("no home directory: set --home, TANDEM_HOME or HOME"))?,
    };
    Ok(Home::new(&dir)?)
}

/// Sends `request` to the daemon running for `home`; `None` when none runs.
fn ask_daemon(
    home: &Home,
    request: &crate::daemon::control::Request,
    timeout: std::time::Duration,
) -> anyhow::Result<Option<crate::daemon::control::Reply>> {
    Ok(crate::daemon::control::request(home, request, timeout)?)
}

/// Sends a command to the running daemon and returns its message; `None` when no daemon
/// runs. A refusal is an error.
fn tell_daemon(
    home: &Home,
    request: &crate::daemon::control::Request,
    timeout: std::time::Duration,
) -> anyhow::Result<Option<String>> {
    use crate::daemon::control::Reply;
    match ask_daemon(home, request, timeout)? {
        None => Ok(None),
        Some(Reply::Done { message }) => Ok(Some(message)),
        Some(Reply::Failed { error }) => anyhow::bail!("the daemon refused: {error}"),
        Some(Reply::Status(_)) => anyhow::bail!("the daemon answered with a status"),
    }
}

/// Commands that read the index directly say so on stderr when no daemon runs (what they
/// show is then as of the last `sync`/`serve`).
fn note_without_daemon(home: &Home) {
    if !crate::daemon::control::answers(&crate::daemon::control::socket_path(home)) {
        eprintln!("(no daemon running: read from the index as of the last sync)");
    }
}

/// After a configuration change: a running daemon applies it now.
fn apply_config(home: &Home) -> anyhow::Result<()> {
    let request = crate::daemon::control::Request::Reload;
    match tell_daemon(home, &request, std::time::Duration::from_secs(120))? {
        Some(message) => {
            for line in message.lines() {
                eprintln!("daemon: {line}");
            }
        }
        None => eprintln!("(no daemon running: the change applies when `serve` or `sync` starts)"),
    }
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

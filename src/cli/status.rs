//! `tandem status [--json] [--check]`: per folder, the local and global totals, what this
//! device still needs, local changes, per-peer completion, and the runner's state. Works
//! with or without a daemon: the index is read read-only, and a running daemon's
//! `daemon.json` adds connectivity and runner state.

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use tandem_proto::model::{DeviceId, EntryKind, FileRecord};
use tandem_proto::rules::{GlobalState, Need, Records, need};

use crate::cli::local::{human_bytes, read_index};
use crate::cli::print_json;
use crate::config::{Config, FolderConfig};
use crate::daemon::status::{self as daemon_status, DaemonStatus};
use crate::home::Home;
use crate::identity::Identity;
use crate::store::Index;

/// `tandem status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print machine-readable JSON (schema in CLI.md).
    #[arg(long)]
    json: bool,
    /// Exit 1, with one line per problem, unless every folder is in sync with every peer.
    #[arg(long)]
    check: bool,
}

#[derive(Serialize)]
struct StatusJson {
    device_id: String,
    daemon: bool,
    folders: Vec<FolderJson>,
}

#[derive(Serialize)]
struct FolderJson {
    id: String,
    path: String,
    mode: &'static str,
    state: String,
    local: Totals,
    global: Totals,
    need: NeedJson,
    errors: Vec<ErrorJson>,
    local_changes: Vec<String>,
    peers: Vec<PeerJson>,
}

#[derive(Serialize, Default)]
struct Totals {
    files: u64,
    dirs: u64,
    bytes: u64,
}

#[derive(Serialize, Default)]
struct NeedJson {
    files: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct ErrorJson {
    path: String,
    error: String,
}

#[derive(Serialize)]
struct PeerJson {
    device_id: String,
    connected: bool,
    completion: f64,
}

pub(super) fn status(home: &Home, args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let device = Identity::load(home)?.device_id();
    let daemon = daemon_status::read(home);
    let index = if home.index_path().exists() { Some(read_index(home)?) } else { None };
    let mut folders = Vec::new();
    for folder in &config.folders {
        folders.push(folder_status(index.as_ref(), folder, daemon.as_ref())?);
    }
    let report = StatusJson { device_id: device.to_string(), daemon: daemon.is_some(), folders };
    if args.check {
        return check(&report);
    }
    if args.json {
        return print_json(&report);
    }
    print_human(&report);
    Ok(())
}

fn folder_status(
    index: Option<&Index>,
    cfg: &FolderConfig,
    daemon: Option<&DaemonStatus>,
) -> anyhow::Result<FolderJson> {
    let folder = cfg.id.as_str();
    let local: Records = match index {
        Some(index) => {
            index.records(folder)?.into_iter().map(|l| (l.record.path.clone(), l.record)).collect()
        }
        None => Records::new(),
    };
    let mut peers: Vec<(DeviceId, Records)> = Vec::new();
    for peer in &cfg.share {
        let records = match index {
            Some(index) => index.peer_records(folder, &peer.to_string())?,
            None => Vec::new(),
        };
        peers.push((*peer, records.into_iter().map(|r| (r.path.clone(), r)).collect()));
    }
    let peer_refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(cfg.mode, &local, &peer_refs);
    let (need_totals, local_changes) = needs(cfg, &local, &global);
    let runner = daemon.and_then(|d| d.folders.iter().find(|f| f.id == folder));
    let errors = runner
        .and_then(|r| r.error.clone())
        .map(|error| vec![ErrorJson { path: String::new(), error }])
        .unwrap_or_default();
    Ok(FolderJson {
        id: cfg.id.to_string(),
        path: cfg.path.display().to_string(),
        mode: cfg.mode.as_str(),
        state: runner.map_or_else(|| "idle".to_string(), |r| r.state.clone()),
        local: totals(local.values()),
        global: totals(global.iter().map(|r| r.record.as_ref())),
        need: need_totals,
        errors,
        local_changes,
        peers: peers
            .iter()
            .map(|(id, records)| PeerJson {
                device_id: id.to_string(),
                connected: daemon.is_some_and(|d| d.connected.contains(&id.to_string())),
                completion: completion(records, &global),
            })
            .collect(),
    })
}

fn totals<'a>(records: impl Iterator<Item = &'a FileRecord>) -> Totals {
    let mut t = Totals::default();
    for r in records.filter(|r| !r.deleted) {
        match r.kind {
            EntryKind::File => {
                t.files += 1;
                t.bytes += r.size;
            }
            EntryKind::Dir => t.dirs += 1,
            EntryKind::Symlink => t.files += 1,
        }
    }
    t
}

/// What this device still has to apply, and its unannounced local changes.
fn needs(cfg: &FolderConfig, local: &Records, global: &GlobalState<'_>) -> (NeedJson, Vec<String>) {
    let (mut totals, mut changes) = (NeedJson::default(), Vec::new());
    for res in global.iter() {
        match need(cfg.mode, local.get(res.path()), Some(res)) {
            Need::Take | Need::KeepAsConflictCopy | Need::OutOfSync => {
                totals.files += 1;
                if !res.record.deleted {
                    totals.bytes += res.record.size;
                }
            }
            Need::LocalChange => changes.push(res.path().to_string()),
            _ => {}
        }
    }
    for (path, record) in local {
        if global.get(path).is_none()
            && cfg.mode == tandem_proto::model::FolderMode::ReceiveOnly
            && !record.deleted
        {
            changes.push(path.to_string());
        }
    }
    changes.sort();
    (totals, changes)
}

/// The percentage of the global bytes (files when there are no bytes) a peer has.
fn completion(records: &Records, global: &GlobalState<'_>) -> f64 {
    let (mut have, mut total, mut have_n, mut total_n) = (0u64, 0u64, 0u64, 0u64);
    for res in global.iter().filter(|r| r.is_live()) {
        let theirs =
            records.get(res.path()).is_some_and(|r| !r.deleted && r.same_content(&res.record));
        total += res.record.size;
        total_n += 1;
        if theirs {
            have += res.record.size;
            have_n += 1;
        }
    }
    let ratio = match (total, total_n) {
        (0, 0) => 1.0,
        (0, n) => have_n as f64 / n as f64,
        (t, _) => have as f64 / t as f64,
    };
    (ratio * 1000.0).round() / 10.0
}

fn check(report: &StatusJson) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for f in &report.folders {
        if f.need.files > 0 {
            problems.push(format!(
                "folder {}: needs {} files ({})",
                f.id,
                f.need.files,
                human_bytes(f.need.bytes)
            ));
        }
        for e in &f.errors {
            problems.push(format!("folder {}: error: {}", f.id, e.error));
        }
        for p in &f.peers {
            if report.daemon && !p.connected {
                problems.push(format!("folder {}: peer {} is not connected", f.id, p.device_id));
            }
            if p.completion < 100.0 {
                problems.push(format!(
                    "folder {}: peer {} is at {:.1}%",
                    f.id, p.device_id, p.completion
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("in sync");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!("{} problem(s)", problems.len())
}

fn print_human(report: &StatusJson) {
    let daemon =
        if report.daemon { "daemon running" } else { "no daemon running (read from the index)" };
    println!("device {} — {daemon}", report.device_id);
    for f in &report.folders {
        println!("\n{}  {}  {}  {}", f.id, f.mode, f.state, f.path);
        let t =
            |t: &Totals| format!("{} files, {} dirs, {}", t.files, t.dirs, human_bytes(t.bytes));
        println!("  local:  {}", t(&f.local));
        println!("  global: {}", t(&f.global));
        println!("  needs:  {} files, {}", f.need.files, human_bytes(f.need.bytes));
        for p in &f.peers {
            let conn = if p.connected { "connected" } else { "not connected" };
            println!("  peer {}  {conn}  {:.1}%", p.device_id, p.completion);
        }
        for c in &f.local_changes {
            println!("  local change (not sent): {c}");
        }
        for e in &f.errors {
            println!("  error: {}", e.error);
        }
    }
}

//! `tandem status [--json] [--check [--max-lag SECS]]`: per folder, the local and global
//! totals, what this device still needs, local changes, per-peer completion, per-file
//! errors, warnings and the runner's state. Works with or without a daemon: the index is
//! read read-only, and a running daemon adds, through the control socket, connectivity,
//! runner state, per-file problems and when each folder was last in sync.
//!
//! A daemon that is still starting answers too, and `--check` fails while it does: a
//! folder it has not finished scanning is only partly in the index, and judging that part
//! (as a reader without the daemon must) can call a folder in sync while files are still
//! being discovered.

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use tandem_proto::model::{DeviceId, EntryKind, FileRecord};
use tandem_proto::rules::{GlobalState, Need, Records, need};

use crate::cli::local::{human_bytes, read_index};
use crate::cli::print_json;
use crate::config::{Config, FolderConfig};
use crate::daemon::control::{Reply, Request};
use crate::daemon::status::DaemonStatus;
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
    /// With --check: a folder that was in sync within this many seconds passes (its
    /// lag is not a problem yet); per-file errors always count.
    #[arg(long, value_name = "SECS", requires = "check")]
    max_lag: Option<u64>,
}

#[derive(Serialize)]
struct StatusJson {
    device_id: String,
    daemon: bool,
    /// The running daemon has not finished starting (scanning every folder before it talks
    /// to peers); false without a daemon.
    starting: bool,
    folders: Vec<FolderJson>,
}

#[derive(Serialize)]
struct FolderJson {
    id: String,
    path: String,
    mode: &'static str,
    /// CLI.md's four values only: a folder in its first scan is `scanning`, with
    /// `first_scan` set.
    state: String,
    /// The running daemon's first scan of the folder (at start-up, or since it was added)
    /// has not finished: the totals are what is indexed so far.
    first_scan: bool,
    local: Totals,
    global: Totals,
    need: NeedJson,
    errors: Vec<ErrorJson>,
    local_changes: Vec<String>,
    peers: Vec<PeerJson>,
    /// Conditions that do not stop syncing (a failed watch, lost notifications).
    warnings: Vec<String>,
    /// When the folder was last in sync with every peer (RFC 3339), if known.
    synced_at: Option<String>,
    #[serde(skip)]
    synced_secs: Option<u64>,
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
    /// When it was first seen (RFC 3339); absent for the folder-wide error.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// Attempts so far (it is retried with backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
}

#[derive(Serialize)]
struct PeerJson {
    device_id: String,
    connected: bool,
    completion: f64,
    /// Connected since, or last seen (RFC 3339), as far as the running daemon knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

pub(super) fn status(home: &Home, args: StatusArgs) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let device = Identity::load(home)?.device_id();
    let daemon =
        match super::ask_daemon(home, &Request::Status, std::time::Duration::from_secs(10))? {
            Some(Reply::Status(status)) => Some(status),
            Some(other) => bail!("the daemon answered {other:?} to a status request"),
            None => None,
        };
    let index = if home.index_path().exists() { Some(read_index(home)?) } else { None };
    let mut folders = Vec::new();
    for folder in &config.folders {
        folders.push(folder_status(index.as_ref(), folder, daemon.as_ref())?);
    }
    let report = StatusJson {
        device_id: device.to_string(),
        daemon: daemon.is_some(),
        starting: daemon.as_ref().is_some_and(|d| d.starting),
        folders,
    };
    if args.check {
        return check(&report, args.max_lag);
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
    let mut errors: Vec<ErrorJson> = runner
        .and_then(|r| r.error.clone())
        .map(|error| ErrorJson { path: String::new(), error, since: None, attempts: None })
        .into_iter()
        .collect();
    for p in runner.map(|r| r.problems.as_slice()).unwrap_or_default() {
        errors.push(ErrorJson {
            path: p.path.clone(),
            error: p.error.clone(),
            since: Some(secs_rfc3339(p.since)),
            attempts: Some(p.attempts),
        });
    }
    let synced_secs = match (runner, index) {
        (Some(r), _) => r.synced_at,
        (None, Some(index)) => index.synced_at(folder)?,
        (None, None) => None,
    };
    Ok(FolderJson {
        id: cfg.id.to_string(),
        path: cfg.path.display().to_string(),
        mode: cfg.mode.as_str(),
        state: runner.map_or_else(
            || "idle".to_string(),
            |r| if r.state == STARTING { "scanning".to_string() } else { r.state.clone() },
        ),
        first_scan: runner.is_some_and(|r| r.state == STARTING),
        local: totals(local.values()),
        global: totals(global.iter().map(|r| r.record.as_ref())),
        need: need_totals,
        errors,
        warnings: runner.map(|r| r.warnings.clone()).unwrap_or_default(),
        synced_at: synced_secs.map(secs_rfc3339),
        synced_secs,
        local_changes,
        peers: peers
            .iter()
            .map(|(id, records)| {
                let link =
                    daemon.and_then(|d| d.peers.iter().find(|p| p.device_id == id.to_string()));
                PeerJson {
                    device_id: id.to_string(),
                    connected: link.is_some_and(|p| p.connected),
                    completion: completion(records, &global),
                    since: link.filter(|p| p.since > 0).map(|p| secs_rfc3339(p.since)),
                }
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

fn secs_rfc3339(secs: u64) -> String {
    crate::cli::local::rfc3339(
        i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1_000_000_000),
    )
}

/// The daemon's runner state of a folder whose first scan by it has not finished (shown as
/// `scanning` with `first_scan` set: CLI.md's `state` has four values).
const STARTING: &str = "starting";

fn check(report: &StatusJson, max_lag: Option<u64>) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut problems = Vec::new();
    if report.starting && !report.folders.iter().any(|f| f.first_scan) {
        problems.push("the daemon is still starting".to_string());
    }
    for f in &report.folders {
        if f.first_scan {
            // the index holds part of the folder: needs and completion would be judged on
            // that part, so they are not reported; nothing forgives this (not --max-lag)
            problems.push(if report.starting {
                format!("folder {}: the daemon is still scanning it at start-up", f.id)
            } else {
                format!("folder {}: the daemon has not finished its first scan of it", f.id)
            });
            continue;
        }
        // lagging (not connected, needs, peers behind) is forgiven within --max-lag
        let recent = max_lag
            .is_some_and(|lag| f.synced_secs.is_some_and(|at| now.saturating_sub(at) <= lag));
        let mut lag = Vec::new();
        if f.need.files > 0 {
            lag.push(format!(
                "folder {}: needs {} files ({})",
                f.id,
                f.need.files,
                human_bytes(f.need.bytes)
            ));
        }
        for p in &f.peers {
            if report.daemon && !p.connected {
                let since = match &p.since {
                    Some(at) => format!("last seen {at}"),
                    None => "not seen since the daemon started".to_string(),
                };
                lag.push(format!(
                    "folder {}: peer {} is not connected ({since})",
                    f.id, p.device_id
                ));
            }
            if p.completion < 100.0 {
                lag.push(format!(
                    "folder {}: peer {} is at {:.1}%",
                    f.id, p.device_id, p.completion
                ));
            }
        }
        if report.daemon && lag.is_empty() && f.synced_secs.is_none() {
            // the index looks in sync, but the daemon's round that confirms it (with every
            // peer's acknowledgement) has not finished yet: "in sync" implies a `synced_at`
            lag.push(format!("folder {}: not confirmed in sync by the daemon yet", f.id));
        }
        if !recent {
            if !lag.is_empty() && max_lag.is_some() {
                let last = f.synced_at.as_deref().unwrap_or("never");
                lag.push(format!("folder {}: last in sync {last}", f.id));
            }
            problems.extend(lag);
        }
        for e in &f.errors {
            if e.path.is_empty() {
                problems.push(format!("folder {}: error: {}", f.id, e.error));
            } else {
                problems.push(format!("folder {}: {}: {}", f.id, e.path, e.error));
            }
        }
    }
    for f in &report.folders {
        for w in &f.warnings {
            eprintln!("tandem: warning: folder {}: {w}", f.id);
        }
    }
    if !report.daemon {
        eprintln!("(no daemon running: judged from the index as of the last sync)");
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
    let daemon = match (report.daemon, report.starting) {
        (true, false) => "daemon running",
        (true, true) => "daemon starting (scanning folders before it talks to peers)",
        (false, _) => "no daemon running (read from the index)",
    };
    println!("device {} — {daemon}", report.device_id);
    for f in &report.folders {
        println!("\n{}  {}  {}  {}", f.id, f.mode, f.state, f.path);
        if f.first_scan {
            println!("  first scan not finished: the numbers below are what is indexed so far");
        }
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
            match (e.path.as_str(), &e.attempts) {
                ("", _) => println!("  error: {}", e.error),
                (path, Some(n)) => println!("  error: {path}: {} ({n} attempts)", e.error),
                (path, None) => println!("  error: {path}: {}", e.error),
            }
        }
        for w in &f.warnings {
            println!("  warning: {w}");
        }
        if let Some(at) = &f.synced_at {
            println!("  last in sync with every peer: {at}");
        }
    }
}

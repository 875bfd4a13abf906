//! `scan` and `ls`: commands that work on this device's folders and index.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tandem_proto::model::VersionVector;

use crate::cli::print_json;
use crate::config::{Config, FolderConfig};
use crate::home::Home;
use crate::identity::Identity;
use crate::scan::{ScanSummary, ScanTarget, scan_folder};
use crate::store::{Index, LocalRecord};

/// `tandem scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Scan only this folder (default: all).
    folder_id: Option<String>,
}

/// `tandem ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The folder.
    folder_id: String,
    /// Print machine-readable JSON (schema in CLI.md).
    #[arg(long)]
    json: bool,
}

pub(super) fn scan(home: &Home, args: ScanArgs) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let device = Identity::load(home)?.device_id().short();
    let folders: Vec<&FolderConfig> = match &args.folder_id {
        Some(id) => vec![config.folder(&super::setup::parse_folder_id(id)?)?],
        None => config.folders.iter().collect(),
    };
    let request = crate::daemon::control::Request::Scan { folder: args.folder_id.clone() };
    if let Some(message) = super::tell_daemon(home, &request, Duration::from_secs(660))? {
        println!("{message}");
        return Ok(());
    }
    let index = open_index(home)?;
    for folder in folders {
        let target = ScanTarget {
            folder: folder.id.as_str(),
            root: &folder.path,
            device,
            skip_dir: home.canonical(),
            mode: folder.mode,
            peers: folder.share.iter().map(ToString::to_string).collect(),
            now_secs: std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let summary = scan_folder(&index, &target)
            .with_context(|| format!("scanning folder {}", folder.id))?;
        for issue in &summary.issues {
            eprintln!("tandem: warning: {}: {}: {}", folder.id, issue.path, issue.error);
        }
        println!("{}: {}", folder.id, summary_line(&summary));
    }
    // a full scan is where an index grows by a whole folder at once, and this process writes
    // no more: a daemon compacts between its rounds instead
    if let Err(e) = index.maybe_compact_before_exit() {
        eprintln!("tandem: warning: compacting the index: {e}");
    }
    Ok(())
}

fn open_index(home: &Home) -> anyhow::Result<Index> {
    home.create()?;
    Index::open(&home.index_path())
        .with_context(|| format!("opening the index {}", home.index_path().display()))
}

/// Opens the index read-only: works while a daemon writes it.
pub(crate) fn read_index(home: &Home) -> anyhow::Result<Index> {
    Index::open_read_only(&home.index_path())
        .with_context(|| format!("opening the index {}", home.index_path().display()))
}

fn summary_line(s: &ScanSummary) -> String {
    format!(
        "{} files, {} dirs, {} symlinks, {}; {} new, {} changed, {} deleted; {} not synced; {:.2} s",
        s.files,
        s.dirs,
        s.symlinks,
        human_bytes(s.bytes),
        s.new,
        s.changed,
        s.deleted,
        s.issues.len(),
        s.elapsed.as_secs_f64()
    )
}

/// Bytes in binary units, e.g. `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// One `ls --json` entry (schema in CLI.md; fields may be added, never renamed).
#[derive(Serialize)]
struct LsEntry {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    mtime: String,
    mtime_ns: i64,
    mode: String,
    hash: Option<String>,
    symlink_target: Option<String>,
    version: Vec<VersionJson>,
    sequence: u64,
    deleted: bool,
    chunks: usize,
    modified_by: String,
}

#[derive(Serialize)]
struct VersionJson {
    device: String,
    counter: u64,
}

pub(super) fn ls(home: &Home, args: LsArgs) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let folder_id = super::setup::parse_folder_id(&args.folder_id)?;
    config.folder(&folder_id)?;
    let entries: Vec<LsEntry> = match home.index_path().exists() {
        true => read_index(home)?.records(folder_id.as_str())?.iter().map(ls_entry).collect(),
        false => Vec::new(),
    };
    if args.json {
        return print_json(&entries);
    }
    for e in &entries {
        let hash = e.hash.as_deref().map_or("-", |h| &h[..16]);
        let state = if e.deleted { "  (deleted)" } else { "" };
        let target = e.symlink_target.as_deref().map(|t| format!(" -> {t}")).unwrap_or_default();
        println!(
            "{:<7} {} {:>10} {} {hash} {}{target}{state}",
            e.kind, e.mode, e.size, e.mtime, e.path
        );
    }
    Ok(())
}

fn ls_entry(local: &LocalRecord) -> LsEntry {
    let r = &local.record;
    let has_hash = !r.deleted && r.kind != tandem_proto::model::EntryKind::Dir;
    LsEntry {
        path: r.path.to_string(),
        kind: r.kind.as_str(),
        size: r.size,
        mtime: rfc3339(r.mtime_ns),
        mtime_ns: r.mtime_ns,
        mode: format!("{:04o}", r.mode),
        hash: has_hash.then(|| r.hash.to_hex()),
        symlink_target: r.symlink_target.clone(),
        version: version_json(&r.version),
        sequence: r.sequence,
        deleted: r.deleted,
        chunks: r.chunks.len(),
        modified_by: r.modified_by.to_string(),
    }
}

fn version_json(v: &VersionVector) -> Vec<VersionJson> {
    v.counters()
        .iter()
        .map(|c| VersionJson { device: c.id.to_string(), counter: c.value })
        .collect()
}

/// An RFC 3339 UTC timestamp with nanoseconds (times before 1970 clamp to the epoch).
pub(crate) fn rfc3339(ns: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_nanos(time).to_string()
}

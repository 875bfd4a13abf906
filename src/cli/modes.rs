//! `override` (send-only) and `revert` (receive-only): make the global state equal to this
//! device's, or this device's equal to the global state. Both only rewrite versions in the
//! index; the next `sync`/`serve` carries them out like any change (a reverted local edit
//! is replaced by the global version and kept in the trash). They need the index for
//! writing, so they refuse while `serve` runs.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use tandem_proto::model::{FileRecord, FolderMode, VersionVector};
use tandem_proto::rules::{GlobalState, Need, Records, need};

use crate::config::{Config, FolderConfig};
use crate::home::Home;
use crate::identity::Identity;
use crate::store::{Index, LocalRecord};
use crate::sync::writer::FolderFs;

/// Opens what both commands need, refusing next to a running daemon.
fn prepare(
    home: &Home,
    folder: &str,
    mode: FolderMode,
    command: &str,
) -> anyhow::Result<(FolderConfig, Index)> {
    let config = Config::load(home)?;
    let cfg = config.folder(&super::setup::parse_folder_id(folder)?)?.clone();
    if cfg.mode != mode {
        bail!("`{command}` is for {mode} folders; {} is {}", cfg.id, cfg.mode);
    }
    if let Some(daemon) = crate::daemon::status::read(home) {
        bail!(
            "tandem serve (pid {}) is running: stop it, run `tandem {command} {}`, start it again",
            daemon.pid,
            cfg.id
        );
    }
    let index = Index::open(&home.index_path())?;
    Ok((cfg, index))
}

/// Local records and the peers' records of a folder.
fn load(index: &Index, cfg: &FolderConfig) -> anyhow::Result<(Vec<LocalRecord>, Vec<Records>)> {
    let local = index.records(cfg.id.as_str())?;
    let mut peers = Vec::new();
    for peer in &cfg.share {
        let records = index.peer_records(cfg.id.as_str(), &peer.to_string())?;
        peers.push(records.into_iter().map(|r| (r.path.clone(), r)).collect());
    }
    Ok((local, peers))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn override_folder(home: &Home, folder: &str) -> anyhow::Result<()> {
    let (cfg, index) = prepare(home, folder, FolderMode::SendOnly, "override")?;
    let me = Identity::load(home)?.device_id().short();
    let (local, peers) = load(&index, &cfg)?;
    let records: Records =
        local.iter().map(|l| (l.record.path.clone(), l.record.clone())).collect();
    let peer_refs: Vec<&Records> = peers.iter().collect();
    let global = GlobalState::build(cfg.mode, &records, &peer_refs);
    let mut batch = index.write()?;
    let mut count = 0;
    for res in global.iter() {
        let mine = local.iter().find(|l| &l.record.path == res.path());
        if need(cfg.mode, mine.map(|l| &l.record), Some(res)) != Need::OutOfSync {
            continue;
        }
        let (mut record, stat) = match mine {
            Some(l) => (l.record.clone(), l.stat),
            None => (tombstone(&res.record), Default::default()),
        };
        record.version = record.version.merge(&res.record.version).bumped(me, now_secs());
        record.modified_by = me;
        batch.put_change(cfg.id.as_str(), LocalRecord { record, stat })?;
        count += 1;
    }
    batch.commit()?;
    println!(
        "{}: {count} paths now carry this device's version; peers take them at the next sync",
        cfg.id
    );
    Ok(())
}

/// A tombstone for a path this device does not have.
fn tombstone(global: &FileRecord) -> FileRecord {
    FileRecord {
        size: 0,
        symlink_target: None,
        hash: Default::default(),
        chunks: Vec::new(),
        deleted: true,
        version: VersionVector::new(),
        ..global.clone()
    }
}

pub(super) fn revert(home: &Home, folder: &str) -> anyhow::Result<()> {
    let (cfg, index) = prepare(home, folder, FolderMode::ReceiveOnly, "revert")?;
    let (local, peers) = load(&index, &cfg)?;
    let records: Records =
        local.iter().map(|l| (l.record.path.clone(), l.record.clone())).collect();
    let peer_refs: Vec<&Records> = peers.iter().collect();
    let global = GlobalState::build(cfg.mode, &records, &peer_refs);
    let fs = FolderFs::new(cfg.path.clone());
    let mut batch = index.write()?;
    let (mut retaken, mut removed) = (0, 0);
    for mine in &local {
        let path = &mine.record.path;
        if need(cfg.mode, Some(&mine.record), global.get(path)) != Need::LocalChange {
            continue;
        }
        if global.get(path).is_some() {
            // an empty vector is dominated by the global version: the next sync takes it
            let mut reverted = mine.clone();
            reverted.record.version = VersionVector::new();
            batch.put_unchanged(cfg.id.as_str(), &reverted)?;
            retaken += 1;
        } else {
            if !mine.record.deleted && fs.stat(path)?.is_some_and(|m| !m.is_dir()) {
                fs.move_to_trash(path)?;
            }
            batch.remove_record(cfg.id.as_str(), path)?;
            removed += 1;
        }
    }
    batch.commit()?;
    println!(
        "{}: {retaken} local changes will be replaced by the global version at the next sync, {removed} local additions moved to .tandem/trash/",
        cfg.id
    );
    Ok(())
}

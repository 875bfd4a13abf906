//! `override` (send-only) and `revert` (receive-only): make the global state equal to this
//! device's, or this device's equal to the global state. Both only rewrite versions in the
//! index; the runner then carries them out like any change (a reverted local edit is
//! replaced by the global version and kept in the trash). They live here, not in `cli`, so
//! a running daemon executes them on its own index (through the control socket) and the
//! command line executes the same code when no daemon runs.

use tandem_proto::model::{FileRecord, FolderMode, ShortId, VersionVector};
use tandem_proto::rules::{GlobalState, Need, Records, need};

use crate::config::FolderConfig;
use crate::store::{Index, LocalRecord, StoreError};
use crate::sync::writer::{ApplyError, FolderFs};

/// Why a mode command failed.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// The command does not fit the folder's mode.
    #[error("`{command}` is for {wanted} folders; {folder} is {actual}")]
    WrongMode {
        /// `override` or `revert`.
        command: &'static str,
        /// The folder.
        folder: String,
        /// The mode the command needs.
        wanted: FolderMode,
        /// The folder's mode.
        actual: FolderMode,
    },
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Moving a local addition to the trash failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

fn expect_mode(
    cfg: &FolderConfig,
    wanted: FolderMode,
    command: &'static str,
) -> Result<(), ModeError> {
    if cfg.mode == wanted {
        return Ok(());
    }
    Err(ModeError::WrongMode { command, folder: cfg.id.to_string(), wanted, actual: cfg.mode })
}

/// Local records and the peers' records of a folder.
fn load(index: &Index, cfg: &FolderConfig) -> Result<(Vec<LocalRecord>, Vec<Records>), StoreError> {
    let local = index.records(cfg.id.as_str())?;
    let mut peers = Vec::new();
    for peer in &cfg.share {
        let records = index.peer_records(cfg.id.as_str(), &peer.to_string())?;
        peers.push(records.into_iter().map(|r| (r.path.clone(), r)).collect());
    }
    Ok((local, peers))
}

/// Send-only: every path where the global state differs from this device gets this
/// device's version, newer than the global one. Returns how many paths changed.
pub fn override_folder(
    index: &Index,
    cfg: &FolderConfig,
    me: ShortId,
    now_secs: u64,
) -> Result<usize, ModeError> {
    expect_mode(cfg, FolderMode::SendOnly, "override")?;
    let (local, peers) = load(index, cfg)?;
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
        record.version = record.version.merge(&res.record.version).bumped(me, now_secs);
        record.modified_by = me;
        batch.put_change(cfg.id.as_str(), LocalRecord { record, stat })?;
        count += 1;
    }
    batch.commit()?;
    Ok(count)
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

/// Receive-only: local changes to paths the global state has are marked to be replaced by
/// the global version; local additions move to the trash. Returns (replaced, removed).
pub fn revert(index: &Index, cfg: &FolderConfig) -> Result<(usize, usize), ModeError> {
    expect_mode(cfg, FolderMode::ReceiveOnly, "revert")?;
    let (local, peers) = load(index, cfg)?;
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
            // an empty vector is dominated by the global version: the next round takes it
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
    Ok((retaken, removed))
}

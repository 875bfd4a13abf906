//! The scanner: turns what is on disk into index records.
//!
//! A pipeline of scoped threads: the walker stats every entry and compares it with the index
//! (the stat fast path: an unchanged tuple means no read), two hash workers chunk and hash
//! changed files (both cores), and the calling thread writes the results in durable batches.
//! Paths the index knows but the walk did not see become tombstones — unless the root is
//! missing, the path is ignored, or its directory could not be read: missing state is not
//! deletion.

pub mod hasher;
pub mod walk;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_proto::model::{
    EntryKind, FileRecord, FolderMode, Hash, RelPath, ShortId, VersionVector,
};
use tandem_proto::rules::{resolve, scanned_record};

use crate::store::{Event, EventKind, Index, LocalRecord, StatKey, StoreError};
use hasher::{FileHasher, HashError};
use walk::{Filter, WalkItem};

/// Local changes logged one by one per scan; more are summed up in one entry.
const MAX_SCAN_EVENTS: usize = 1000;
/// Records written per durable commit.
const BATCH: usize = 1000;
/// Attempts to hash a file that keeps changing under us.
const HASH_ATTEMPTS: usize = 3;
/// Hash worker threads.
const WORKERS: usize = 2;
/// Entries modified less than this long before they were read are read again next scan:
/// a change within the same filesystem timestamp tick would otherwise go unseen.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// Why a scan could not run at all (per-path problems are [`ScanIssue`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root does not exist or is not a directory: never read as "everything deleted".
    #[error("folder root {path} is missing or not a directory ({reason}); not scanning")]
    RootMissing {
        /// The root.
        path: PathBuf,
        /// What the stat said.
        reason: String,
    },
    /// The folder marker is gone but the index knows files here: most likely an unmounted
    /// disk or a replaced directory. Nothing is scanned, so nothing is deleted.
    #[error(
        "folder marker {root}/.tandem/folder is missing although the index knows files there: is the disk unmounted or the folder replaced? Not scanning. If this really is the folder, restore the marker: mkdir -p {root}/.tandem && touch {root}/.tandem/folder"
    )]
    MarkerMissing {
        /// The root.
        root: PathBuf,
    },
    /// `.tandemignore` could not be parsed.
    #[error("{root}/.tandemignore: {source}")]
    Ignore {
        /// The root.
        root: PathBuf,
        /// The parse error.
        source: ignore::Error,
    },
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A path the scan could not record, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanIssue {
    /// The path (lossy for names that are not UTF-8).
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a scan found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Live regular files in the index after the scan.
    pub files: u64,
    /// Live directories.
    pub dirs: u64,
    /// Live symlinks.
    pub symlinks: u64,
    /// Bytes in live files.
    pub bytes: u64,
    /// Paths recorded for the first time (or again after a delete).
    pub new: u64,
    /// Paths whose content or metadata changed.
    pub changed: u64,
    /// Paths that became tombstones.
    pub deleted: u64,
    /// Files read and hashed.
    pub hashed_files: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// Paths that could not be recorded.
    pub issues: Vec<ScanIssue>,
    /// Wall time.
    pub elapsed: Duration,
}

/// One folder to scan.
pub struct ScanTarget<'a> {
    /// Folder id, the index key.
    pub folder: &'a str,
    /// Absolute root.
    pub root: &'a Path,
    /// This device, for version vectors.
    pub device: ShortId,
    /// A directory to leave out (the tandem home, when it lies inside the folder).
    pub skip_dir: Option<PathBuf>,
    /// The folder's mode (a receive-only change is versioned against the peers' state).
    pub mode: FolderMode,
    /// The peers sharing the folder (device id text), whose records decide whether a
    /// change found on disk is new or an applied global version whose commit was lost.
    pub peers: Vec<String>,
}

/// A file the walker found changed, for the hash workers.
struct HashJob {
    path: RelPath,
    abs: PathBuf,
    stat: StatKey,
}

/// What the writer receives.
enum Found {
    Entry(Box<LocalRecord>),
    Issue(ScanIssue),
}

/// Scans one folder and brings its index up to date.
pub fn scan_folder(index: &Index, target: &ScanTarget<'_>) -> Result<ScanSummary, ScanError> {
    let started = Instant::now();
    check_root(target.root)?;
    let filter = Filter::new(target.root, target.skip_dir.clone())
        .map_err(|source| ScanError::Ignore { root: target.root.to_path_buf(), source })?;
    let existing: BTreeMap<String, LocalRecord> =
        index.records(target.folder)?.into_iter().map(|r| (r.record.path.to_string(), r)).collect();
    check_marker(target.root, &existing)?;
    let applying: BTreeMap<String, FileRecord> =
        index.applying(target.folder)?.into_iter().map(|r| (r.path.to_string(), r)).collect();
    let mut writer = Writer::new(index, target, &existing, &applying);
    let (seen, unknown) = std::thread::scope(|s| -> Result<_, ScanError> {
        let (found_tx, found_rx) = mpsc::sync_channel::<Found>(4 * BATCH);
        let (job_tx, job_rx) = mpsc::sync_channel::<HashJob>(4 * BATCH);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..WORKERS {
            let (rx, tx) = (Arc::clone(&job_rx), found_tx.clone());
            s.spawn(move || hash_worker(&rx, &tx));
        }
        let walker = s.spawn(|| walk_folder(target.root, &filter, &existing, job_tx, found_tx));
        for found in found_rx {
            writer.accept(found)?;
        }
        Ok(walker.join().unwrap_or_default())
    })?;
    writer.tombstones(&filter, &seen, &unknown)?;
    let mut summary = writer.finish()?;
    count_live(index, target.folder, &mut summary)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The marker file that says "this directory is the synced folder": created by the first
/// scan, required by every later one. An unmounted disk or a replaced directory lacks it,
/// and is then refused instead of read as "every file was deleted".
pub const MARKER: &str = ".tandem/folder";

fn check_marker(root: &Path, existing: &BTreeMap<String, LocalRecord>) -> Result<(), ScanError> {
    let marker = root.join(MARKER);
    if marker.is_file() {
        return Ok(());
    }
    if existing.values().any(|l| !l.record.deleted) {
        return Err(ScanError::MarkerMissing { root: root.to_path_buf() });
    }
    let create = || -> std::io::Result<()> {
        fs::create_dir_all(root.join(walk::STATE_DIR))?;
        fs::write(&marker, b"tandem folder marker: do not delete\n")
    };
    create().map_err(|e| ScanError::RootMissing {
        path: root.into(),
        reason: format!("cannot create {MARKER}: {e}"),
    })
}

fn check_root(root: &Path) -> Result<(), ScanError> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => {
            Err(ScanError::RootMissing { path: root.into(), reason: "not a directory".into() })
        }
        Err(e) => Err(ScanError::RootMissing { path: root.into(), reason: e.to_string() }),
    }
}

/// The walker thread: stats everything, sends unchanged-looking files nowhere, changed files
/// to the hash workers and directories/symlinks straight to the writer. Returns the paths
/// seen and the subtrees that could not be read.
fn walk_folder(
    root: &Path,
    filter: &Filter,
    existing: &BTreeMap<String, LocalRecord>,
    jobs: mpsc::SyncSender<HashJob>,
    found: mpsc::SyncSender<Found>,
) -> (BTreeSet<String>, Vec<RelPath>) {
    let mut seen = BTreeSet::new();
    let mut unknown = Vec::new();
    walk::walk(root, filter, |item| match item {
        WalkItem::Entry { path, abs, meta } => {
            let stat = StatKey::from_metadata(&meta);
            let old = existing.get(path.as_str());
            if meta.file_type().is_file() || meta.is_dir() || meta.file_type().is_symlink() {
                seen.insert(path.to_string());
            }
            if old.is_some_and(|o| !o.record.deleted && o.stat.unchanged(&stat)) {
                return;
            }
            // A failed send means the writer stopped on an error it will report.
            let _ = if meta.file_type().is_file() {
                jobs.send(HashJob { path, abs, stat }).is_ok()
            } else {
                found.send(non_file_entry(path, &abs, &meta, stat)).is_ok()
            };
        }
        WalkItem::Problem { path, error, unknown_subtree } => {
            unknown.extend(unknown_subtree);
            let _ = found.send(Found::Issue(ScanIssue { path, error }));
        }
    });
    (seen, unknown)
}

/// A record for a directory or symlink, or an issue for anything else.
fn non_file_entry(path: RelPath, abs: &Path, meta: &fs::Metadata, stat: StatKey) -> Found {
    let kind = if meta.is_dir() { EntryKind::Dir } else { EntryKind::Symlink };
    if !meta.is_dir() && !meta.file_type().is_symlink() {
        let error = "not a regular file, directory or symlink: skipped".to_string();
        return Found::Issue(ScanIssue { path: path.to_string(), error });
    }
    let mut record = draft(path, kind, stat);
    if kind == EntryKind::Symlink {
        match fs::read_link(abs).map(|t| t.to_str().map(str::to_string)) {
            Ok(Some(target)) => {
                record.hash = Hash::of(target.as_bytes());
                record.symlink_target = Some(target);
                record.mode = 0;
            }
            Ok(None) => {
                return issue(&record.path, "symlink target is not valid UTF-8: not synced");
            }
            Err(e) => return issue(&record.path, &e.to_string()),
        }
    }
    Found::Entry(Box::new(LocalRecord { record, stat }))
}

fn issue(path: &RelPath, error: &str) -> Found {
    Found::Issue(ScanIssue { path: path.to_string(), error: error.to_string() })
}

/// A record with the entry's metadata and no content or version yet.
fn draft(path: RelPath, kind: EntryKind, stat: StatKey) -> FileRecord {
    FileRecord {
        path,
        kind,
        size: 0,
        mtime_ns: stat.mtime_ns,
        mode: stat.permissions(),
        symlink_target: None,
        hash: Hash::ZERO,
        chunks: Vec::new(),
        version: VersionVector::new(),
        sequence: 0,
        deleted: false,
        modified_by: ShortId::new(0),
    }
}

/// A hash worker: takes jobs until the walker is done.
fn hash_worker(jobs: &Mutex<mpsc::Receiver<HashJob>>, found: &mpsc::SyncSender<Found>) {
    let mut hasher = FileHasher::new(0);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if found.send(hash_job(&mut hasher, job)).is_err() {
            return;
        }
    }
}

/// Hashes one file, retrying while it changes under us; never records a half-read file.
fn hash_job(hasher: &mut FileHasher, mut job: HashJob) -> Found {
    for _ in 0..HASH_ATTEMPTS {
        match hasher.hash_file(&job.abs, &job.stat) {
            Ok(hashed) => {
                let stat = job.stat.with_racy_check(now_ns(), RACY_WINDOW_NS);
                let mut record = draft(job.path, EntryKind::File, stat);
                record.size = hashed.size;
                record.hash = hashed.hash;
                record.chunks = hashed.chunks;
                return Found::Entry(Box::new(LocalRecord { record, stat }));
            }
            Err(HashError::Changed) => match fs::symlink_metadata(&job.abs) {
                Ok(meta) if meta.is_file() => job.stat = StatKey::from_metadata(&meta),
                Ok(_) => return issue(&job.path, "replaced while being read; will rescan"),
                Err(e) => return issue(&job.path, &e.to_string()),
            },
            Err(HashError::Io(e)) => return issue(&job.path, &e.to_string()),
        }
    }
    issue(&job.path, "kept changing while being read; will retry on the next scan")
}

fn now_ns() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// The writing side: decides new/changed/unchanged against the index and commits in batches.
struct Writer<'a> {
    index: &'a Index,
    target: &'a ScanTarget<'a>,
    existing: &'a BTreeMap<String, LocalRecord>,
    /// What an interrupted plan was about to commit (`Index::applying`), by path.
    applying: &'a BTreeMap<String, FileRecord>,
    pending: Vec<(LocalRecord, bool)>,
    events_logged: usize,
    events_skipped: usize,
    summary: ScanSummary,
    now_secs: u64,
}

impl<'a> Writer<'a> {
    fn new(
        index: &'a Index,
        target: &'a ScanTarget<'a>,
        existing: &'a BTreeMap<String, LocalRecord>,
        applying: &'a BTreeMap<String, FileRecord>,
    ) -> Self {
        let now_secs =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self {
            index,
            target,
            existing,
            applying,
            pending: Vec::new(),
            events_logged: 0,
            events_skipped: 0,
            summary: ScanSummary::default(),
            now_secs,
        }
    }

    fn accept(&mut self, found: Found) -> Result<(), StoreError> {
        match found {
            Found::Issue(issue) => self.summary.issues.push(issue),
            Found::Entry(local) => {
                if local.record.kind == EntryKind::File {
                    self.summary.hashed_files += 1;
                    self.summary.hashed_bytes += local.record.size;
                }
                self.record(*local)?;
            }
        }
        Ok(())
    }

    /// Files a freshly scanned entry as new, changed, or unchanged apart from its stat.
    fn record(&mut self, mut local: LocalRecord) -> Result<(), StoreError> {
        let old = self.existing.get(local.record.path.as_str());
        match old {
            Some(old) if !old.record.deleted && old.record.same_entry(&local.record) => {
                let mut kept = old.clone();
                kept.stat = local.stat;
                self.push(kept, false)
            }
            _ => {
                local.record = self.versioned(old, local.record)?;
                match old {
                    Some(o) if !o.record.deleted => self.summary.changed += 1,
                    _ => self.summary.new += 1,
                }
                self.push(local, true)
            }
        }
    }

    /// Tombstones for known live paths the walk did not see.
    fn tombstones(
        &mut self,
        filter: &Filter,
        seen: &BTreeSet<String>,
        unknown: &[RelPath],
    ) -> Result<(), StoreError> {
        let existing = self.existing;
        for (path, old) in existing {
            let rec = &old.record;
            let skipped = rec.deleted
                || seen.contains(path)
                || unknown.iter().any(|u| u == &rec.path || u.is_ancestor_of(&rec.path))
                || filter.excludes(&rec.path, rec.kind == EntryKind::Dir);
            if skipped {
                continue;
            }
            let mut tomb = draft(rec.path.clone(), rec.kind, StatKey::default());
            tomb.mtime_ns = rec.mtime_ns;
            tomb.deleted = true;
            let tomb = self.versioned(Some(old), tomb)?;
            self.summary.deleted += 1;
            self.push(LocalRecord { record: tomb, stat: StatKey::default() }, true)?;
        }
        Ok(())
    }

    /// The version of an entry found changed: normally `old` bumped by this device; the
    /// version a sync step applied when a crash kept it from being committed and the disk
    /// holds exactly what that step wrote — known from the interrupted plan's pending
    /// record, or from the global version (`proto::rules::scanned_record` decides).
    fn versioned(
        &self,
        old: Option<&LocalRecord>,
        found: FileRecord,
    ) -> Result<FileRecord, StoreError> {
        let applied = self.applying.get(found.path.as_str()).filter(|a| a.same_entry(&found));
        if let Some(applied) = applied {
            // the peers may have moved on since (a later delete): the pending record is
            // what was written, and the plan would have committed
            let chunks = found.chunks;
            return Ok(FileRecord { chunks, sequence: found.sequence, ..applied.clone() });
        }
        let mut candidates = Vec::new();
        for peer in &self.target.peers {
            let folder = self.target.folder;
            candidates.extend(self.index.peer_record(folder, peer, &found.path)?);
        }
        if self.target.mode != FolderMode::ReceiveOnly {
            candidates.extend(old.map(|o| o.record.clone()));
        }
        let refs: Vec<&FileRecord> = candidates.iter().collect();
        let global = resolve(&refs);
        let old = old.map(|o| &o.record);
        let (mode, device) = (self.target.mode, self.target.device);
        Ok(scanned_record(mode, device, self.now_secs, old, found, global.as_ref()))
    }

    fn push(&mut self, local: LocalRecord, is_change: bool) -> Result<(), StoreError> {
        self.pending.push((local, is_change));
        if self.pending.len() >= BATCH { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut batch = self.index.write()?;
        for (local, is_change) in std::mem::take(&mut self.pending) {
            if is_change {
                if let Some(event) = self.change_event(&local.record) {
                    batch.log_event(&event)?;
                }
                batch.put_change(self.target.folder, local)?;
            } else {
                batch.put_unchanged(self.target.folder, &local)?;
            }
        }
        batch.commit()
    }

    fn finish(mut self) -> Result<ScanSummary, StoreError> {
        self.flush()?;
        if !self.applying.is_empty() {
            // the interrupted plan's records served their purpose: the disk is recorded
            let mut batch = self.index.write()?;
            batch.set_applying(self.target.folder, &[])?;
            batch.commit()?;
        }
        if self.events_skipped > 0 {
            let detail =
                format!("and {} more local changes (not logged one by one)", self.events_skipped);
            let mut batch = self.index.write()?;
            batch.log_event(&self.event(String::new(), detail))?;
            batch.commit()?;
        }
        Ok(self.summary)
    }

    /// The log entry for a local change this scan found (the first `MAX_SCAN_EVENTS`).
    fn change_event(&mut self, record: &FileRecord) -> Option<Event> {
        if record.modified_by != self.target.device {
            return None; // an applied remote version whose commit was lost, not a local change
        }
        if self.events_logged >= MAX_SCAN_EVENTS {
            self.events_skipped += 1;
            return None;
        }
        self.events_logged += 1;
        let was_live = self.existing.get(record.path.as_str()).is_some_and(|o| !o.record.deleted);
        let what = match (record.deleted, was_live) {
            (true, _) => "deleted",
            (false, true) => "changed",
            (false, false) => "new",
        };
        Some(self.event(record.path.to_string(), what.to_string()))
    }

    fn event(&self, path: String, detail: String) -> Event {
        let time_ns = i64::try_from(self.now_secs).unwrap_or(0).saturating_mul(1_000_000_000);
        let device = Some(self.target.device.to_string());
        Event {
            time_ns,
            folder: self.target.folder.to_string(),
            path,
            kind: EventKind::LocalChange,
            device,
            detail,
        }
    }
}

/// Totals of the live records after the scan.
fn count_live(index: &Index, folder: &str, summary: &mut ScanSummary) -> Result<(), StoreError> {
    index.for_each_record(folder, |local| {
        let r = &local.record;
        if r.deleted {
            return;
        }
        match r.kind {
            EntryKind::File => {
                summary.files += 1;
                summary.bytes += r.size;
            }
            EntryKind::Dir => summary.dirs += 1,
            EntryKind::Symlink => summary.symlinks += 1,
        }
    })
}

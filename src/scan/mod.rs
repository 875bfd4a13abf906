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

use crate::store::{Event, EventKind, Index, LocalRecord, Snapshot, StatKey, StoreError};
use hasher::{ChunkParams, FileHasher, HashError};
use walk::{Filter, WalkItem};

/// Changed paths a scan lists in its summary (for incremental planning); past this many,
/// a whole-folder plan is cheaper anyway.
pub const MAX_CHANGED_PATHS: usize = 10_000;
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
    /// The folder is tandem's home, or inside it: scanning it would sync the private key.
    #[error(
        "folder {root} is inside tandem's home {home}: not scanning it (its private key and index must never be synced); move the folder or use another --home"
    )]
    InsideHome {
        /// The root.
        root: PathBuf,
        /// The home.
        home: PathBuf,
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
    /// The paths recorded as new, changed or deleted (at most [`MAX_CHANGED_PATHS`]; past
    /// that, `changed_overflow` is set and the list is incomplete).
    pub changed_paths: Vec<RelPath>,
    /// More paths changed than `changed_paths` holds.
    pub changed_overflow: bool,
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
    /// The time (Unix seconds) that stamps new versions: the caller's clock, so a test can
    /// skew it.
    pub now_secs: u64,
}

/// A file the walker found changed, for the hash workers.
struct HashJob {
    path: RelPath,
    abs: PathBuf,
    stat: StatKey,
    /// How the indexed version was cut, to keep cutting the same way.
    previous: Option<ChunkParams>,
}

/// What a scan keeps in memory of each indexed path: enough for the stat fast path and
/// tombstones. The full record is read from the index only for paths found changed, so a
/// scan of a big folder holds tens of bytes per path, not whole records.
#[derive(Clone, Copy, Debug)]
struct Known {
    stat: StatKey,
    deleted: bool,
    dir: bool,
    /// How the indexed version of a file was cut into chunks.
    params: Option<ChunkParams>,
}

impl Known {
    fn of(local: &LocalRecord) -> Self {
        let r = &local.record;
        Self {
            stat: local.stat,
            deleted: r.deleted,
            dir: r.kind == EntryKind::Dir,
            params: ChunkParams::from_chunk_count(r.size, r.chunks.len()),
        }
    }
}

/// Indexed paths and what the scan knows of them, sorted by path: a vector searched by
/// bisection holds a million paths in about half the memory of a tree map, and the walk
/// marks what it saw by position (a bit per path) instead of copying every path it meets.
#[derive(Default)]
struct KnownMap {
    entries: Vec<(Box<str>, Known)>,
}

impl KnownMap {
    fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: String, known: Known) {
        self.entries.push((path.into_boxed_str(), known));
    }

    /// Puts the entries in path order (the index yields them so already; the subtrees of a
    /// targeted scan are read one after another) and drops duplicates.
    fn finish(&mut self) {
        self.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.entries.dedup_by(|a, b| a.0 == b.0);
        self.entries.shrink_to_fit();
    }

    fn position(&self, path: &str) -> Option<usize> {
        self.entries.binary_search_by(|(p, _)| (**p).cmp(path)).ok()
    }

    fn get(&self, path: &str) -> Option<&Known> {
        self.position(path).map(|i| &self.entries[i].1)
    }

    fn contains_key(&self, path: &str) -> bool {
        self.position(path).is_some()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn values(&self) -> impl Iterator<Item = &Known> {
        self.entries.iter().map(|(_, k)| k)
    }
}

/// What the writer receives.
enum Found {
    Entry(Box<LocalRecord>),
    Issue(ScanIssue),
}

/// Scans one folder and brings its index up to date.
pub fn scan_folder(index: &Index, target: &ScanTarget<'_>) -> Result<ScanSummary, ScanError> {
    let started = Instant::now();
    check_not_home(target)?;
    check_root(target.root)?;
    let filter = Filter::new(target.root, target.skip_dir.clone())
        .map_err(|source| ScanError::Ignore { root: target.root.to_path_buf(), source })?;
    let mut existing = KnownMap::new();
    index.for_each_record(target.folder, |l| {
        existing.insert(l.record.path.to_string(), Known::of(&l));
    })?;
    existing.finish();
    check_marker(target.root, &existing)?;
    let mut summary = scan_with(index, target, &filter, &existing, None)?;
    count_live(index, target.folder, &mut summary)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Scans only `paths` (each with everything below it) — what the watcher saw change. The
/// rest of the index is not read, so an edit in a folder of a million files costs what the
/// edit touched. Without the folder marker it falls back to [`scan_folder`], which alone
/// may decide what a missing marker means. The summary's live totals are not counted.
pub fn scan_paths(
    index: &Index,
    target: &ScanTarget<'_>,
    paths: &[RelPath],
) -> Result<ScanSummary, ScanError> {
    let started = Instant::now();
    check_not_home(target)?;
    check_root(target.root)?;
    if !target.root.join(MARKER).is_file() {
        return scan_folder(index, target);
    }
    let filter = Filter::new(target.root, target.skip_dir.clone())
        .map_err(|source| ScanError::Ignore { root: target.root.to_path_buf(), source })?;
    let starts = scan_roots(index, target.folder, &filter, paths)?;
    let mut existing = KnownMap::new();
    for start in &starts {
        for local in index.records_under(target.folder, start)? {
            existing.insert(local.record.path.to_string(), Known::of(&local));
        }
    }
    existing.finish();
    let mut summary = scan_with(index, target, &filter, &existing, Some(&starts))?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The subtrees a targeted scan walks: each changed path, raised to its highest ancestor the
/// index does not know as a live directory (a new directory is walked whole), without
/// excluded paths and without paths inside another start.
fn scan_roots(
    index: &Index,
    folder: &str,
    filter: &Filter,
    paths: &[RelPath],
) -> Result<Vec<RelPath>, StoreError> {
    let mut starts: BTreeSet<RelPath> = BTreeSet::new();
    'paths: for path in paths {
        let mut ancestors = Vec::new();
        let mut at = path.parent();
        while let Some(parent) = at {
            ancestors.push(parent.clone());
            at = parent.parent();
        }
        if filter.excludes(path, false) || ancestors.iter().any(|a| filter.excludes(a, true)) {
            continue;
        }
        let mut start = path.clone();
        for ancestor in &ancestors {
            // ancestors run from the nearest up; the first known live dir ends the climb
            let known = index.record(folder, ancestor)?;
            if known.is_some_and(|l| !l.record.deleted && l.record.kind == EntryKind::Dir) {
                break;
            }
            start = ancestor.clone();
        }
        for other in &starts {
            if other == &start || other.is_ancestor_of(&start) {
                continue 'paths;
            }
        }
        starts.retain(|other| !start.is_ancestor_of(other));
        starts.insert(start);
    }
    Ok(starts.into_iter().collect())
}

/// The scan pipeline over `starts` (the whole folder when `None`), against `existing`.
fn scan_with(
    index: &Index,
    target: &ScanTarget<'_>,
    filter: &Filter,
    existing: &KnownMap,
    starts: Option<&[RelPath]>,
) -> Result<ScanSummary, ScanError> {
    let applying: BTreeMap<String, FileRecord> =
        index.applying(target.folder)?.into_iter().map(|r| (r.path.to_string(), r)).collect();
    let mut writer = Writer::new(index, target, existing, &applying);
    let (seen, unknown) = std::thread::scope(|s| -> Result<_, ScanError> {
        let (found_tx, found_rx) = mpsc::sync_channel::<Found>(4 * BATCH);
        let (job_tx, job_rx) = mpsc::sync_channel::<HashJob>(4 * BATCH);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..WORKERS {
            let (rx, tx) = (Arc::clone(&job_rx), found_tx.clone());
            s.spawn(move || hash_worker(&rx, &tx));
        }
        let walker =
            s.spawn(|| walk_folder(target.root, starts, filter, existing, job_tx, found_tx));
        for found in found_rx {
            writer.accept(found)?;
        }
        // a walker that panicked saw nothing: never read that as "everything deleted"
        walker.join().map_err(|_| ScanError::RootMissing {
            path: target.root.to_path_buf(),
            reason: "the directory walk failed".to_string(),
        })
    })?;
    writer.tombstones(filter, &seen, &unknown)?;
    Ok(writer.finish()?)
}

/// The marker file that says "this directory is the synced folder": created by the first
/// scan, required by every later one. An unmounted disk or a replaced directory lacks it,
/// and is then refused instead of read as "every file was deleted".
pub const MARKER: &str = ".tandem/folder";

fn check_marker(root: &Path, existing: &KnownMap) -> Result<(), ScanError> {
    let marker = root.join(MARKER);
    if marker.is_file() {
        return Ok(());
    }
    if existing.values().any(|k| !k.deleted) {
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

/// Refuses a root that is the home (`skip_dir`) or lies inside it.
fn check_not_home(target: &ScanTarget<'_>) -> Result<(), ScanError> {
    match &target.skip_dir {
        Some(home) if target.root.starts_with(home) => {
            Err(ScanError::InsideHome { root: target.root.to_path_buf(), home: home.clone() })
        }
        _ => Ok(()),
    }
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
    starts: Option<&[RelPath]>,
    filter: &Filter,
    existing: &KnownMap,
    jobs: mpsc::SyncSender<HashJob>,
    found: mpsc::SyncSender<Found>,
) -> (Vec<bool>, Vec<RelPath>) {
    let mut seen = vec![false; existing.len()];
    let mut unknown = Vec::new();
    let mut visit = |item| match item {
        WalkItem::Entry { path, abs, meta } => {
            let stat = StatKey::from_metadata(&meta);
            let at = existing.position(path.as_str());
            let old = at.map(|i| &existing.entries[i].1);
            if let Some(i) = at
                && (meta.file_type().is_file() || meta.is_dir() || meta.file_type().is_symlink())
            {
                seen[i] = true;
            }
            // the stored key is the argument: its racy flag forces a read
            if old.is_some_and(|o| !o.deleted && stat.unchanged(&o.stat)) {
                return;
            }
            // A failed send means the writer stopped on an error it will report.
            let _ = if meta.file_type().is_file() {
                let previous = old.filter(|o| !o.deleted).and_then(|o| o.params);
                jobs.send(HashJob { path, abs, stat, previous }).is_ok()
            } else {
                found.send(non_file_entry(path, &abs, &meta, stat)).is_ok()
            };
        }
        WalkItem::Problem { path, error, unknown_subtree } => {
            unknown.extend(unknown_subtree);
            let _ = found.send(Found::Issue(ScanIssue { path, error }));
        }
    };
    match starts {
        None => walk::walk(root, filter, &mut visit),
        Some(starts) => {
            for start in starts {
                walk::walk_under(root, &root.join(start.as_str()), filter, &mut visit);
            }
        }
    }
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
        let params = ChunkParams::for_update(job.stat.size, job.previous);
        match hasher.hash_file_with(&job.abs, &job.stat, params) {
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
    existing: &'a KnownMap,
    /// What an interrupted plan was about to commit (`Index::applying`), by path.
    applying: &'a BTreeMap<String, FileRecord>,
    pending: Vec<(LocalRecord, bool)>,
    /// One read view of the index for the lookups between two commits, opened on the first
    /// and dropped at each commit: a read transaction per lookup cost more than the lookup
    /// (a first scan of 50,000 files made 50,000 of them for the peers' records).
    snap: Option<Snapshot>,
    events_logged: usize,
    events_skipped: usize,
    summary: ScanSummary,
    now_secs: u64,
}

impl<'a> Writer<'a> {
    fn new(
        index: &'a Index,
        target: &'a ScanTarget<'a>,
        existing: &'a KnownMap,
        applying: &'a BTreeMap<String, FileRecord>,
    ) -> Self {
        let now_secs = target.now_secs;
        Self {
            index,
            target,
            existing,
            applying,
            pending: Vec::new(),
            snap: None,
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
        let old = self.old(&local.record.path)?;
        let old = old.as_ref();
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
        seen: &[bool],
        unknown: &[RelPath],
    ) -> Result<(), StoreError> {
        let existing = self.existing;
        for (i, (path, known)) in existing.entries.iter().enumerate() {
            if known.deleted || seen.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Ok(rel) = RelPath::new(path.to_string()) else { continue };
            let skipped = unknown.iter().any(|u| u == &rel || u.is_ancestor_of(&rel))
                || filter.excludes(&rel, known.dir);
            if skipped {
                continue;
            }
            let Some(old) = self.old(&rel)? else { continue };
            let rec = &old.record;
            let mut tomb = draft(rec.path.clone(), rec.kind, StatKey::default());
            tomb.mtime_ns = rec.mtime_ns;
            tomb.deleted = true;
            let tomb = self.versioned(Some(&old), tomb)?;
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
        &mut self,
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
        let (folder, peers) = (self.target.folder, &self.target.peers);
        let snap = self.snap()?;
        for peer in peers {
            candidates.extend(snap.peer_record(folder, peer, &found.path)?);
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

    /// The indexed record of a path the scan found changed (read now: the scan keeps only
    /// a [`Known`] per path in memory).
    fn old(&mut self, path: &RelPath) -> Result<Option<LocalRecord>, StoreError> {
        if !self.existing.contains_key(path.as_str()) {
            return Ok(None);
        }
        let folder = self.target.folder;
        self.snap()?.record(folder, path)
    }

    /// The read view for lookups (see `snap`).
    fn snap(&mut self) -> Result<&mut Snapshot, StoreError> {
        let snap = match self.snap.take() {
            Some(snap) => snap,
            None => self.index.snapshot()?,
        };
        Ok(self.snap.insert(snap))
    }

    fn push(&mut self, local: LocalRecord, is_change: bool) -> Result<(), StoreError> {
        if is_change {
            if self.summary.changed_paths.len() < MAX_CHANGED_PATHS {
                self.summary.changed_paths.push(local.record.path.clone());
            } else {
                self.summary.changed_overflow = true;
            }
        }
        self.pending.push((local, is_change));
        if self.pending.len() >= BATCH { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.snap = None; // see `snap`
        let pending = std::mem::take(&mut self.pending);
        let events: Vec<Event> = pending
            .iter()
            .filter(|(_, is_change)| *is_change)
            .filter_map(|(local, _)| self.change_event(&local.record))
            .collect();
        let mut batch = self.index.write()?;
        batch.log_events(&events)?;
        batch.put_records(self.target.folder, pending)?;
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
        let was_live = self.existing.get(record.path.as_str()).is_some_and(|k| !k.deleted);
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        index: Index,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("root")).unwrap();
            let index = Index::open(&dir.path().join("index.redb")).unwrap();
            Self { dir, index }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn write(&self, rel: &str, data: &[u8]) {
            let path = self.root().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }

        fn target(&self) -> ScanTarget<'static> {
            let root: &'static Path = Box::leak(self.root().into_boxed_path());
            ScanTarget {
                folder: "f",
                root,
                device: ShortId::new(1),
                skip_dir: None,
                mode: FolderMode::SendReceive,
                peers: Vec::new(),
                now_secs: 1_800_000_000,
            }
        }

        fn live(&self) -> BTreeMap<String, Hash> {
            let records = self.index.records("f").unwrap();
            records
                .into_iter()
                .filter(|l| !l.record.deleted)
                .map(|l| (l.record.path.to_string(), l.record.hash))
                .collect()
        }
    }

    fn rel(path: &str) -> RelPath {
        RelPath::new(path).unwrap()
    }

    #[test]
    fn a_targeted_scan_reads_only_the_named_paths_and_everything_below_them() {
        let fx = Fixture::new();
        fx.write("a/one.txt", b"one");
        fx.write("a/two.txt", b"two");
        fx.write("b/three.txt", b"three");
        scan_folder(&fx.index, &fx.target()).unwrap();

        fx.write("a/one.txt", b"one, edited");
        fs::remove_file(fx.root().join("a/two.txt")).unwrap();
        fx.write("b/three.txt", b"three, edited but not named");
        fx.write("new/deep/four.txt", b"four"); // a new directory: named by its file only
        let summary =
            scan_paths(&fx.index, &fx.target(), &[rel("a"), rel("new/deep/four.txt")]).unwrap();
        assert_eq!((summary.new, summary.changed, summary.deleted), (3, 1, 1), "{summary:?}");
        let live = fx.live();
        assert_eq!(live["a/one.txt"], Hash::of(b"one, edited"));
        assert!(!live.contains_key("a/two.txt"), "a deletion under a named dir is a tombstone");
        assert_eq!(live["b/three.txt"], Hash::of(b"three"), "an unnamed path was read");
        assert!(live.contains_key("new") && live.contains_key("new/deep"));
        assert_eq!(live["new/deep/four.txt"], Hash::of(b"four"));

        // the full scan still finds what the targeted one was not told about
        scan_folder(&fx.index, &fx.target()).unwrap();
        assert_eq!(fx.live()["b/three.txt"], Hash::of(b"three, edited but not named"));
    }

    #[test]
    fn a_targeted_scan_skips_ignored_and_own_paths_and_needs_the_marker() {
        let fx = Fixture::new();
        fx.write(".tandemignore", b"build/\n");
        fx.write("keep.txt", b"keep");
        scan_folder(&fx.index, &fx.target()).unwrap();
        fx.write("build/out.o", b"object");
        fx.write(".tandem/trash/x", b"trash");
        fx.write("keep.txt", b"kept, edited");
        let paths = [rel("build/out.o"), rel(".tandem/trash/x"), rel("keep.txt")];
        scan_paths(&fx.index, &fx.target(), &paths).unwrap();
        let live = fx.live();
        assert!(
            !live.keys().any(|p| p.starts_with("build") || p.starts_with(".tandem/")),
            "{live:?}"
        );
        assert_eq!(live["keep.txt"], Hash::of(b"kept, edited"));

        // without the marker a targeted scan defers to the full scan, which refuses
        fs::remove_file(fx.root().join(MARKER)).unwrap();
        let err = scan_paths(&fx.index, &fx.target(), &[rel("keep.txt")]).unwrap_err();
        assert!(matches!(err, ScanError::MarkerMissing { .. }), "{err}");
    }
}

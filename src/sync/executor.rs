//! Carrying out a plan: steps run in the planner's order, except that file transfers
//! (pulls and local copies) run concurrently in `SLOTS`, and the index is committed in
//! batches. Pulls of small one-chunk files are gathered into groups of up to `MAX_GROUP`,
//! each pulled and installed together (`puller::pull_small_files`): a few groups in flight
//! keep the peer's pipeline full while another group is written, and a group's files share
//! one blocking step and one flush instead of a task, a thread hop and a flush wait each.
//!
//! Ordering stays safe: a directory is made before any later step, so before its children's
//! transfers start; transfers (and a group still being gathered) are drained before
//! anything that moves or removes a path (renames, deletes), since those may be the local
//! source of a transfer's chunks. Commits stay crash-safe: a batch's files were fsynced
//! before their rename, and the batch's directories are fsynced before its records are
//! committed, so the index never claims bytes the disk may not have. A crash between the two
//! leaves files the scanner recognizes as the applied version (`rules::scanned_record`), not
//! as new changes. Commits run on the blocking pool, one at a time and in order, while
//! transfers go on: a commit holds only steps that already finished.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tandem_proto::model::{DeviceId, FileRecord, FolderId, RelPath};
use tandem_proto::rules::{Action, LocalChunk, Plan, Step};

use crate::config::FolderConfig;
use crate::store::{Event, EventKind, LocalRecord, StatKey};
use crate::sync::Inner;
use crate::sync::puller::{
    MAX_GROUP, PullJob, Pulled, copy_local, pull_file, pull_small_files, pulled_in_group,
};
use crate::sync::writer::{ApplyError, FolderFs};

/// Transfer slots per folder: a file of up to `SMALL_TRANSFER` bytes takes one, a larger
/// one `BIG_WEIGHT`, a group of small files pulled together `GROUP_WEIGHT`, so 16 large
/// files, 64 small ones or 4 groups are in flight. Many small files at once keep the peer's
/// request pipeline full and share each durability flush (`sync::durable`); large ones are
/// bounded by the memory their chunks hold in flight.
const SLOTS: usize = 64;
/// See [`SLOTS`].
const SMALL_TRANSFER: u64 = 256 << 10;
/// See [`SLOTS`].
const BIG_WEIGHT: usize = 4;
/// See [`SLOTS`]: several groups in flight, so one fetches while another installs.
const GROUP_WEIGHT: usize = 16;
/// Steps per index commit.
const COMMIT_BATCH: usize = 500;

/// What a round achieved.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Steps committed.
    pub committed: usize,
    /// A path differed from the index: rescan before planning again.
    pub rescan: bool,
    /// Paths this plan brought to the global version and committed, and on which no step
    /// failed (see `settles`): the next round need not judge them again, which for a first
    /// sync meant reading every record once more after the last file arrived.
    pub settled: Vec<RelPath>,
}

/// A transfer that runs concurrently with the rest of the plan.
enum Transfer {
    Pull {
        idx: usize,
        job: PullJob,
    },
    Copy {
        idx: usize,
        fs: FolderFs,
        from: RelPath,
        record: FileRecord,
        indexed: Option<LocalRecord>,
    },
    /// Small files pulled together (`puller::pull_small_files`), by step index.
    Group(Vec<(usize, PullJob)>),
}

/// The transfers in flight: each yields its slot weight and its steps' results.
type InFlight = FuturesUnordered<BoxFuture<'static, (usize, Vec<(usize, Pulled)>)>>;

/// Executes `plan` for the folder `cfg`; `local` is the index the plan was made from.
pub(crate) async fn execute(
    inner: &Arc<Inner>,
    cfg: &FolderConfig,
    plan: Plan,
    local: BTreeMap<RelPath, LocalRecord>,
    sources: BTreeMap<RelPath, Vec<DeviceId>>,
) -> Outcome {
    // what each step will commit, durable before any step touches the disk: a crash
    // between a step and its commit is then recognized by the next scan
    let pending: Vec<&FileRecord> = plan.steps.iter().flat_map(|s| &s.commit).collect();
    let journal = inner.index.write().and_then(|mut batch| {
        batch.set_applying(cfg.id.as_str(), &pending)?;
        batch.commit()
    });
    if let Err(e) = journal {
        tracing::error!("folder {}: recording the plan: {e}; rescanning", cfg.id);
        return Outcome { rescan: true, ..Outcome::default() };
    }
    let mut ex = Executor::new(inner, cfg, local);
    let mut in_flight = Flight { inner: inner.clone(), running: FuturesUnordered::new(), used: 0 };
    let mut group = Vec::new(); // small pulls not started yet (see `MAX_GROUP`)
    for (idx, step) in plan.steps.iter().enumerate() {
        if ex.outcome.rescan {
            break;
        }
        if inner.backing_off(&cfg.id, step.path()) {
            continue; // failed recently: retried when its backoff ends
        }
        if let Some(job) = ex.small_pull(step, &sources) {
            group.push((idx, job));
            if group.len() == MAX_GROUP {
                let full = Transfer::Group(std::mem::take(&mut group));
                in_flight.start(full, GROUP_WEIGHT, &mut ex, &plan).await;
            }
            continue;
        }
        if let Some(transfer) = ex.transfer(idx, step, &sources) {
            in_flight.start(transfer, weight(step), &mut ex, &plan).await;
            continue;
        }
        if moves_or_removes(step) {
            if !group.is_empty() {
                let part = Transfer::Group(std::mem::take(&mut group));
                in_flight.start(part, GROUP_WEIGHT, &mut ex, &plan).await;
            }
            in_flight.drain(&mut ex, &plan).await;
        }
        let result = ex.apply(step).map(|()| None);
        ex.finish(step, result);
        ex.flush();
    }
    if !group.is_empty() && !ex.outcome.rescan {
        in_flight.start(Transfer::Group(group), GROUP_WEIGHT, &mut ex, &plan).await;
    }
    in_flight.drain(&mut ex, &plan).await;
    ex.flush_last().await;
    if !ex.commit_failed {
        let failed = std::mem::take(&mut ex.failed_paths);
        ex.outcome.settled = std::mem::take(&mut ex.settled);
        ex.outcome.settled.retain(|path| !failed.contains(path));
    }
    ex.outcome
}

/// True when a successful `step` leaves its path at the global version, its need settled:
/// it takes that version (the planner commits the global record with the local vector
/// merged in). Not so for a conflict rename (the path still needs the winner), a sync
/// rename's source, or a kept directory.
fn settles(step: &Step) -> bool {
    matches!(
        step.action,
        Action::Pull { .. }
            | Action::CopyLocal { .. }
            | Action::MakeDir { .. }
            | Action::MakeSymlink { .. }
            | Action::SetMetadata { .. }
            | Action::Delete { .. }
            | Action::Record { .. }
    ) && step.commit.iter().all(|r| r.path == *step.path())
}

/// The transfers running concurrently with the plan, and the slots they take.
struct Flight {
    inner: Arc<Inner>,
    running: InFlight,
    used: usize,
}

impl Flight {
    /// Starts `transfer` once `weight` slots are free, finishing transfers until they are.
    async fn start(
        &mut self,
        transfer: Transfer,
        weight: usize,
        ex: &mut Executor<'_>,
        plan: &Plan,
    ) {
        while self.used + weight > SLOTS && self.finish_one(ex, plan).await {}
        self.used += weight;
        self.running.push(Box::pin(run(self.inner.clone(), weight, transfer)));
    }

    /// Waits for every transfer to finish.
    async fn drain(&mut self, ex: &mut Executor<'_>, plan: &Plan) {
        while self.finish_one(ex, plan).await {}
    }

    /// Waits for one transfer and records its steps' results; false when none runs.
    async fn finish_one(&mut self, ex: &mut Executor<'_>, plan: &Plan) -> bool {
        let Some((weight, results)) = self.running.next().await else { return false };
        self.used -= weight;
        for (i, result) in results {
            ex.finish(&plan.steps[i], result);
        }
        ex.flush();
        true
    }
}

async fn run(
    inner: Arc<Inner>,
    weight: usize,
    transfer: Transfer,
) -> (usize, Vec<(usize, Pulled)>) {
    let results = match transfer {
        Transfer::Pull { idx, job } => vec![(idx, pull_file(&inner, job).await.map(|()| None))],
        Transfer::Copy { idx, fs, from, record, indexed } => {
            let task = move || copy_local(&fs, &from, &record, indexed.as_ref());
            let result = tokio::task::spawn_blocking(task)
                .await
                .unwrap_or_else(|e| Err(ApplyError::Store(format!("internal task failed: {e}"))));
            vec![(idx, result.map(|()| None))]
        }
        Transfer::Group(jobs) => pull_small_files(&inner, jobs).await,
    };
    (weight, results)
}

/// Transfer slots `step` takes (see [`SLOTS`]).
fn weight(step: &Step) -> usize {
    match &step.action {
        Action::Pull { record, .. } | Action::CopyLocal { record, .. }
            if record.size > SMALL_TRANSFER =>
        {
            BIG_WEIGHT
        }
        _ => 1,
    }
}

fn moves_or_removes(step: &Step) -> bool {
    matches!(
        step.action,
        Action::Rename { .. } | Action::RenameToConflict { .. } | Action::Delete { .. }
    )
}

struct Executor<'a> {
    inner: &'a Arc<Inner>,
    cfg: &'a FolderConfig,
    fs: FolderFs,
    local: BTreeMap<RelPath, LocalRecord>,
    pending: Vec<LocalRecord>,
    events: Vec<Event>,
    dirs: BTreeSet<PathBuf>,
    outcome: Outcome,
    steps_pending: usize,
    /// Records of steps that failed after they may have touched the disk: they stay in
    /// `applying` for the next scan when the plan ends.
    unsettled: Vec<FileRecord>,
    /// A batch commit failed: its steps' records must stay in `applying` too.
    commit_failed: bool,
    /// Paths of successful steps that settle them (see [`settles`]).
    settled: Vec<RelPath>,
    /// Paths on which a step failed or found a local change.
    failed_paths: BTreeSet<RelPath>,
    /// The commit running on the blocking pool, if any (one at a time, in order).
    committing: Option<tokio::task::JoinHandle<Committed>>,
}

impl<'a> Executor<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        cfg: &'a FolderConfig,
        local: BTreeMap<RelPath, LocalRecord>,
    ) -> Self {
        let fs = FolderFs::new(cfg.path.clone());
        let (pending, dirs, outcome) = (Vec::new(), BTreeSet::new(), Outcome::default());
        Self {
            inner,
            cfg,
            fs,
            local,
            pending,
            events: Vec::new(),
            dirs,
            outcome,
            steps_pending: 0,
            unsettled: Vec::new(),
            commit_failed: false,
            settled: Vec::new(),
            failed_paths: BTreeSet::new(),
            committing: None,
        }
    }

    /// The step as a concurrent transfer, if it is one.
    fn transfer(
        &self,
        idx: usize,
        step: &Step,
        sources: &BTreeMap<RelPath, Vec<DeviceId>>,
    ) -> Option<Transfer> {
        match &step.action {
            Action::Pull { record, reuse } => {
                Some(Transfer::Pull { idx, job: self.pull_job(record, reuse, sources) })
            }
            Action::CopyLocal { from, record } => Some(Transfer::Copy {
                idx,
                fs: self.fs.clone(),
                from: from.clone(),
                record: record.clone(),
                indexed: self.local.get(&record.path).cloned(),
            }),
            _ => None,
        }
    }

    /// The step as a pull of a small file run in a group (`puller::pulled_in_group`).
    fn small_pull(
        &self,
        step: &Step,
        sources: &BTreeMap<RelPath, Vec<DeviceId>>,
    ) -> Option<PullJob> {
        match &step.action {
            Action::Pull { record, reuse } if pulled_in_group(record) => {
                Some(self.pull_job(record, reuse, sources))
            }
            _ => None,
        }
    }

    fn pull_job(
        &self,
        record: &FileRecord,
        reuse: &[LocalChunk],
        sources: &BTreeMap<RelPath, Vec<DeviceId>>,
    ) -> PullJob {
        PullJob {
            folder: self.cfg.id.clone(),
            fs: self.fs.clone(),
            record: record.clone(),
            reuse: reuse.to_vec(),
            sources: sources.get(&record.path).cloned().unwrap_or_default(),
            indexed: self.local.get(&record.path).cloned(),
        }
    }

    /// Carries out a step that is not a transfer.
    fn apply(&self, step: &Step) -> Result<(), ApplyError> {
        let (fs, local) = (&self.fs, &self.local);
        match &step.action {
            Action::RenameToConflict { from, to } => fs.rename(from, to, local.get(from)),
            Action::MakeDir { path, mode } => fs.make_dir(path, *mode, local.get(path)),
            Action::KeepDir { .. } | Action::Record { .. } => Ok(()),
            Action::Rename { from, record } => {
                fs.rename_replacing(from, &record.path, local.get(from), local.get(&record.path))?;
                fs.apply_metadata(&record.path, record.mode, record.mtime_ns)
            }
            Action::MakeSymlink { path, target } => fs.make_symlink(path, target, local.get(path)),
            Action::SetMetadata { path, mode, mtime_ns } => {
                fs.set_metadata(path, *mode, *mtime_ns, local.get(path))
            }
            Action::Delete { path, .. } => fs.delete(path, local.get(path)),
            Action::Pull { .. } | Action::CopyLocal { .. } => Ok(()), // run as transfers
        }
    }

    /// Records a step's result (with the stat of the file it installed, when known): on
    /// success the in-memory index follows the disk at once (later steps check against it)
    /// and the records wait for the next batch commit.
    fn finish(&mut self, step: &Step, result: Pulled) {
        match result {
            Ok(installed) => match self.stage(step, installed) {
                Ok(()) => {
                    self.inner.step_succeeded(&self.cfg.id, step.path());
                    if settles(step) {
                        self.settled.push(step.path().clone());
                    }
                }
                Err(e) => self.failed(step, &e),
            },
            Err(ApplyError::LocalChange(path)) => {
                self.failed_paths.insert(step.path().clone());
                tracing::info!(
                    "folder {}: {path} changed locally; rescanning before deciding",
                    self.cfg.id
                );
                self.outcome.rescan = true;
            }
            Err(e) => self.failed(step, &e),
        }
    }

    /// A step failed for a reason other than a local change: the path is kept as a
    /// per-file problem (shown by `status`) and retried with backoff; the log and the event
    /// log hear about it once per distinct error, not on every retry.
    fn failed(&mut self, step: &Step, error: &ApplyError) {
        self.failed_paths.insert(step.path().clone());
        self.unsettled.extend(step.commit.iter().cloned());
        let text = error.to_string();
        if self.inner.step_failed(&self.cfg.id, step.path(), &text) {
            tracing::warn!("folder {}: {text} (retried with backoff)", self.cfg.id);
            self.events.push(self.event(step.path(), EventKind::Error, None, text));
        } else {
            tracing::debug!("folder {}: {text} (retried with backoff)", self.cfg.id);
        }
    }

    fn event(
        &self,
        path: &RelPath,
        kind: EventKind,
        device: Option<String>,
        detail: String,
    ) -> Event {
        let time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Event {
            time_ns,
            folder: self.cfg.id.to_string(),
            path: path.to_string(),
            kind,
            device,
            detail,
        }
    }

    /// The log entry for a successful step (before the in-memory index moves on).
    fn event_for(&self, step: &Step) -> Option<Event> {
        let by = |r: &FileRecord| Some(r.modified_by.to_string());
        let replaced = |p: &RelPath| {
            let was_file = self.local.get(p).is_some_and(|l| {
                !l.record.deleted && l.record.kind == tandem_proto::model::EntryKind::File
            });
            if was_file { "; the previous version is in .tandem/trash/" } else { "" }
        };
        let (path, kind, device, detail) = match &step.action {
            Action::RenameToConflict { from, to } => (
                from,
                EventKind::ConflictCopy,
                Some(self.inner.short.to_string()),
                format!("our version lost ({}) and was kept as {to}", step.reason),
            ),
            Action::Pull { record, .. } => (
                &record.path,
                EventKind::Updated,
                by(record),
                format!("received{}", replaced(&record.path)),
            ),
            Action::CopyLocal { from, record } => (
                &record.path,
                EventKind::Updated,
                by(record),
                format!("copied from {from}{}", replaced(&record.path)),
            ),
            Action::Rename { from, record } => {
                (&record.path, EventKind::Updated, by(record), format!("moved from {from}"))
            }
            Action::MakeDir { path, .. } => {
                (path, EventKind::Updated, None, "directory created".to_string())
            }
            Action::MakeSymlink { path, target } => {
                (path, EventKind::Updated, None, format!("symlink to {target}"))
            }
            Action::SetMetadata { path, .. } => {
                (path, EventKind::Updated, None, "permissions or mtime updated".to_string())
            }
            Action::Delete { path, kind } => {
                let device = step.commit.first().and_then(by);
                let detail = if *kind == tandem_proto::model::EntryKind::Dir {
                    "directory removed".to_string()
                } else {
                    "moved to .tandem/trash/".to_string()
                };
                (path, EventKind::Deleted, device, detail)
            }
            Action::KeepDir { .. } | Action::Record { .. } => return None,
        };
        Some(self.event(path, kind, device, detail))
    }

    fn stage(&mut self, step: &Step, installed: Option<StatKey>) -> Result<(), ApplyError> {
        if let Some(event) = self.event_for(step) {
            self.events.push(event);
        }
        if let Action::RenameToConflict { from, .. } | Action::Rename { from, .. } = &step.action {
            self.local.remove(from);
            self.dirs.insert(self.fs.parent_dir(from));
        }
        if let Action::Delete { path, .. } = &step.action {
            self.local.remove(path);
            self.dirs.insert(self.fs.parent_dir(path));
        }
        for record in &step.commit {
            let stat = match installed {
                _ if record.deleted => StatKey::default(),
                Some(stat) if record.path == *step.path() => stat,
                _ => self.fs.stat_key(&record.path)?,
            };
            let stored = LocalRecord { record: record.clone(), stat };
            self.dirs.insert(self.fs.parent_dir(&record.path));
            self.local.insert(record.path.clone(), stored.clone());
            self.pending.push(stored);
        }
        self.steps_pending += 1;
        Ok(())
    }

    /// Starts making the staged steps durable once there are `COMMIT_BATCH` of them and the
    /// previous commit is done: directories first, then one index commit, on the blocking
    /// pool (`commit`). Run on the runner task, a commit stalled every transfer in flight,
    /// whose futures that task polls; meanwhile steps keep finishing and wait for the next.
    fn flush(&mut self) {
        if self.committing.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        if let Some(done) = self.committing.take().and_then(FutureExt::now_or_never) {
            self.committed(done);
        }
        if self.pending.len() >= COMMIT_BATCH {
            self.committing = Some(tokio::task::spawn_blocking(self.commit_job(false)));
        }
    }

    /// The plan's last commit, which also empties its `applying` journal: every step that
    /// changed the disk is committed now, except failed ones, whose records stay there (a
    /// failed rename may have happened, and the next scan must read it as this plan's
    /// version, not as a local change). Before, the journal stayed until the next scan, which
    /// read it whole: a first sync's 50,000 records, in the index and read at every start.
    async fn flush_last(&mut self) {
        if let Some(running) = self.committing.take() {
            self.committed(running.await);
        }
        let job = self.commit_job(!self.commit_failed);
        self.committed(tokio::task::spawn_blocking(job).await);
    }

    /// What the next commit writes: the staged steps (and, with `settle`, the journal of
    /// the failed ones), taken out of the executor.
    fn commit_job(&mut self, settle: bool) -> impl FnOnce() -> Committed + Send + 'static {
        let job = CommitJob {
            inner: self.inner.clone(),
            folder: self.cfg.id.clone(),
            dirs: std::mem::take(&mut self.dirs),
            pending: std::mem::take(&mut self.pending),
            events: std::mem::take(&mut self.events),
            settle: settle.then(|| self.unsettled.clone()),
            steps: std::mem::take(&mut self.steps_pending),
        };
        move || job.run()
    }

    /// Records how a commit went.
    fn committed(&mut self, done: Result<Committed, tokio::task::JoinError>) {
        let result = done.unwrap_or_else(|e| (0, Err(format!("internal task failed: {e}"))));
        match result {
            (steps, Ok(())) => self.outcome.committed += steps,
            (_, Err(e)) => {
                tracing::error!("folder {}: committing the index: {e}; rescanning", self.cfg.id);
                self.outcome.rescan = true;
                self.commit_failed = true;
            }
        }
    }
}

/// A commit's steps and its result.
type Committed = (usize, Result<(), String>);

/// One commit of finished steps (see `Executor::flush`), run on the blocking pool.
struct CommitJob {
    inner: Arc<Inner>,
    folder: FolderId,
    dirs: BTreeSet<PathBuf>,
    pending: Vec<LocalRecord>,
    events: Vec<Event>,
    /// The journal of failed steps to leave in `applying`: the plan's last commit.
    settle: Option<Vec<FileRecord>>,
    steps: usize,
}

impl CommitJob {
    /// The steps' directories are made durable (their files already are), then their
    /// records are committed: the index never claims a name the disk may not have.
    fn run(self) -> Committed {
        for dir in &self.dirs {
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::warn!("folder {}: fsync {}: {e}", self.folder, dir.display());
            }
        }
        if self.pending.is_empty() && self.events.is_empty() && self.settle.is_none() {
            return (self.steps, Ok(()));
        }
        let folder = self.folder.as_str();
        let result = self.inner.index.write().and_then(|mut batch| {
            batch.put_records(folder, self.pending.into_iter().map(|stored| (stored, true)))?;
            batch.log_events(&self.events)?;
            if let Some(unsettled) = &self.settle {
                batch.set_applying(folder, &unsettled.iter().collect::<Vec<_>>())?;
            }
            batch.commit()
        });
        (self.steps, result.map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::home::Home;
    use crate::store::Index;
    use tandem_proto::model::{EntryKind, FolderId, FolderMode, Hash, ShortId, VersionVector};
    use tandem_proto::rules::Reason;

    fn dir_record(path: &str) -> FileRecord {
        FileRecord {
            path: RelPath::new(path.to_string()).unwrap(),
            kind: EntryKind::Dir,
            size: 0,
            mtime_ns: 0,
            mode: 0o755,
            symlink_target: None,
            hash: Hash::of(b""),
            chunks: Vec::new(),
            version: VersionVector::default(),
            sequence: 0,
            deleted: false,
            modified_by: ShortId::new(1),
        }
    }

    fn make_dir(path: &str) -> Step {
        let record = dir_record(path);
        Step {
            action: Action::MakeDir { path: record.path.clone(), mode: record.mode },
            reason: Reason::Dominates,
            commit: vec![record],
        }
    }

    #[test]
    fn a_finished_plan_leaves_only_its_failed_steps_in_the_applying_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs_err(std::fs::create_dir(&root));
        // "blocked" is a file, so a directory below it cannot be made
        fs_err(std::fs::write(root.join("blocked"), b"x"));
        let cfg = FolderConfig {
            id: FolderId::new("f").unwrap(),
            path: root.clone(),
            mode: FolderMode::SendReceive,
            share: Vec::new(),
        };
        let mut config = Config::new("test".to_string(), "127.0.0.1:0".to_string());
        config.folders.push(cfg.clone());
        let index = Index::open(&tmp.path().join("index.redb")).unwrap();
        let device = DeviceId::from_public_key_info(b"test device");
        let home = Home::new(&tmp.path().join("home")).unwrap();
        let inner = Arc::new(Inner::new(index, device, home, config));
        let plan =
            Plan { steps: vec![make_dir("made"), make_dir("blocked/sub")], ..Plan::default() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome =
            runtime.block_on(execute(&inner, &cfg, plan, BTreeMap::new(), BTreeMap::new()));
        assert_eq!(outcome.committed, 1);
        assert!(root.join("made").is_dir());
        let made = RelPath::new("made".to_string()).unwrap();
        assert_eq!(outcome.settled, vec![made.clone()], "only the step that succeeded settles");
        assert!(inner.index.record("f", &made).unwrap().is_some(), "the made dir is committed");
        let journal: Vec<String> =
            inner.index.applying("f").unwrap().iter().map(|r| r.path.to_string()).collect();
        assert_eq!(journal, vec!["blocked/sub".to_string()]);
    }

    fn fs_err(result: std::io::Result<()>) {
        result.unwrap();
    }
}

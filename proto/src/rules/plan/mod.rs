//! The planner: from the local index and the global state, the ordered actions that make
//! this replica's folder the global one, each with its reason and the record to commit.
//!
//! A plan runs in four phases, and every action is valid on the tree the earlier ones leave:
//!
//! 1. conflict copies: each losing local version is renamed aside (its own content, so
//!    nothing is lost before anything is written);
//! 2. clears: a local entry of another kind in the way of a new one is removed, children
//!    first;
//! 3. creations and updates, in path order so directories come before their children:
//!    make directory, keep directory, pull (with the chunks already available locally),
//!    local copy or rename (content already present under another path), symlink, metadata,
//!    index-only records;
//! 4. deletes, deepest first so directories go after their children, and after the pulls
//!    that may reuse their chunks.
//!
//! The shell executes the steps in order and, after each success, commits the step's
//! records to the local index (assigning sequence numbers). Before replacing or deleting a
//! path it checks the path still matches the index (DESIGN invariant 9). A failed step is
//! simply not committed; after a crash the rescan records what it finds through
//! [`crate::rules::scanned_record`], which recognizes a step that ran but was not
//! committed, and the next plan decides again.

mod reuse;

use std::collections::BTreeSet;

use crate::model::{EntryKind, FileRecord, FolderMode, RelPath, ShortId, VersionVector};
use crate::rules::global::{Need, Records, Resolution, need, taken_record};
use crate::rules::{Collision, GlobalState, Reason, conflict_name, conflict_path};

/// How to plan for one folder on one device.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// The folder's mode.
    pub mode: FolderMode,
    /// This device's short id (for the versions of changes the plan itself makes).
    pub local_id: ShortId,
    /// The current time in seconds since the Unix epoch (for version bumps).
    pub now_secs: u64,
    /// The filesystem folds case or normalizes names: colliding names are never both written.
    pub case_insensitive: bool,
}

/// One thing to do to the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Rename our losing version aside; it then syncs as an ordinary new file.
    RenameToConflict {
        /// The path that lost.
        from: RelPath,
        /// The conflict copy's path, in the same directory.
        to: RelPath,
    },
    /// Create a directory.
    MakeDir {
        /// Where.
        path: RelPath,
        /// Permission bits.
        mode: u32,
    },
    /// Keep an existing directory the global state removes, because entries below it live.
    KeepDir {
        /// The directory.
        path: RelPath,
    },
    /// Download a file (or overwrite ours) with the given content.
    Pull {
        /// The version to write; its chunks list what to fetch.
        record: FileRecord,
        /// Chunks already present in local files: read them there instead of the network.
        /// A hint: the puller verifies every chunk and falls back to peers.
        reuse: Vec<LocalChunk>,
    },
    /// Copy a local file that already has the content.
    CopyLocal {
        /// The local file with the content.
        from: RelPath,
        /// The version to write.
        record: FileRecord,
    },
    /// Move a local file that is deleted globally to where its content is needed.
    Rename {
        /// The local file being deleted.
        from: RelPath,
        /// The version to write at `record.path`.
        record: FileRecord,
    },
    /// Create (or replace) a symlink; the target is never followed.
    MakeSymlink {
        /// Where.
        path: RelPath,
        /// The link's target.
        target: String,
    },
    /// Set permission bits and modification time; content is already right.
    SetMetadata {
        /// Where.
        path: RelPath,
        /// Permission bits.
        mode: u32,
        /// Modification time in nanoseconds (files only).
        mtime_ns: i64,
    },
    /// Nothing on disk: only the index takes the step's record.
    Record {
        /// Where.
        path: RelPath,
    },
    /// Remove an entry (a directory only once empty).
    Delete {
        /// Where.
        path: RelPath,
        /// What is expected there.
        kind: EntryKind,
    },
}

/// A chunk of a pulled file found in a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalChunk {
    /// Index of the chunk in the pulled record's chunk list.
    pub index: u32,
    /// The local file holding the same bytes.
    pub from: RelPath,
    /// Byte offset in that file.
    pub offset: u64,
}

/// One action, why, and what the local index records once it succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Records to commit after success (sequence numbers are the store's to assign).
    ///
    /// A taken version is committed as the global record with the local vector merged in
    /// (outside receive-only mode): the replaced local version, a conflict loser kept as a
    /// copy or a delete that lost to a modification, stays superseded everywhere once this is
    /// announced. The record keeps the global `modified_by`, so the change that made its
    /// content stays identifiable: a later change made by someone who saw that content
    /// beats it even though the vectors are concurrent (see [`crate::rules::resolve`]).
    pub commit: Vec<FileRecord>,
}

/// An ordered plan, and what it deliberately does not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// Send-only: paths whose global version differs and is not applied.
    pub out_of_sync: Vec<(RelPath, Reason)>,
    /// Receive-only: paths with local changes that are not announced.
    pub local_changes: Vec<RelPath>,
    /// Paths that cannot be applied yet, and why.
    pub deferred: Vec<(RelPath, Reason)>,
    /// Live names that collide case-insensitively or after normalization.
    pub collisions: Vec<Collision>,
}

/// The ordered plan that brings the local folder to the global state.
///
/// `local` is the local index (on-disk entries and tombstones); `global` must have been
/// built for the same mode (see [`GlobalState::build`]).
pub fn plan(local: &Records, global: &GlobalState<'_>, config: &PlanConfig) -> Plan {
    let decisions = decide(local, global, config.mode);
    let collisions = global.collisions();
    let mut builder = Builder::new(config, decisions);
    if config.case_insensitive {
        builder.block_collisions(&collisions);
    }
    for idx in 0..builder.decisions.len() {
        builder.visit(idx);
    }
    let mut plan = builder.finish();
    plan.collisions = collisions;
    plan
}

/// What one path needs, and what it will be once the plan ran.
#[derive(Clone, Copy, Debug)]
struct Decision<'g> {
    path: &'g RelPath,
    local: Option<&'g FileRecord>,
    global: Option<&'g Resolution<'g>>,
    need: Need,
    live_after: bool,
    dir_after: bool,
    /// The local entry is renamed to a conflict copy by this plan.
    moved: bool,
}

impl<'g> Decision<'g> {
    fn new(
        path: &'g RelPath,
        local: Option<&'g FileRecord>,
        global: Option<&'g Resolution<'g>>,
        mode: FolderMode,
    ) -> Self {
        let need = need(mode, local, global);
        let takes = matches!(need, Need::Take | Need::Adopt | Need::KeepAsConflictCopy);
        let after = if takes { global.map(|g| g.record.as_ref()) } else { local };
        let live_after = after.is_some_and(|r| !r.deleted);
        let dir_after = live_after && after.is_some_and(|r| r.kind == EntryKind::Dir);
        Self { path, local, global, need, live_after, dir_after, moved: false }
    }

    fn local_live(&self) -> Option<&'g FileRecord> {
        self.local.filter(|r| !r.deleted)
    }
}

/// Joins the local index and the global state by path.
fn decide<'g>(
    local: &'g Records,
    global: &'g GlobalState<'_>,
    mode: FolderMode,
) -> Vec<Decision<'g>> {
    let mut out = Vec::with_capacity(local.len().max(global.len()));
    let mut locals = local.iter().peekable();
    let mut globals = global.iter().peekable();
    loop {
        let local_head: Option<&'g RelPath> = locals.peek().map(|&(path, _)| path);
        let global_head: Option<&'g RelPath> = globals.peek().map(|&res| res.path());
        let path = match (local_head, global_head) {
            (None, None) => break,
            (Some(path), None) | (None, Some(path)) => path,
            (Some(l), Some(g)) => l.min(g),
        };
        let local = locals.next_if(|&(p, _)| p == path).map(|(_, record)| record);
        let global = globals.next_if(|res| res.path() == path);
        out.push(Decision::new(path, local, global, mode));
    }
    out
}

struct Builder<'c, 'g> {
    config: &'c PlanConfig,
    decisions: Vec<Decision<'g>>,
    conflicts: Vec<Step>,
    clears: Vec<Step>,
    creates: Vec<Step>,
    deletes: Vec<Step>,
    cleared: BTreeSet<&'g str>,
    blocked: BTreeSet<RelPath>,
    plan: Plan,
}

impl<'c, 'g> Builder<'c, 'g> {
    fn new(config: &'c PlanConfig, decisions: Vec<Decision<'g>>) -> Self {
        Self {
            config,
            decisions,
            conflicts: Vec::new(),
            clears: Vec::new(),
            creates: Vec::new(),
            deletes: Vec::new(),
            cleared: BTreeSet::new(),
            blocked: BTreeSet::new(),
            plan: Plan::default(),
        }
    }

    /// In each colliding group only one name is written: the one already on disk, or else
    /// the smallest.
    fn block_collisions(&mut self, collisions: &[Collision]) {
        for group in collisions {
            let on_disk =
                group.paths.iter().find(|p| self.find(p).and_then(|d| d.local_live()).is_some());
            let keep = on_disk.or(group.paths.first());
            self.blocked.extend(group.paths.iter().filter(|p| Some(*p) != keep).cloned());
        }
    }

    fn visit(&mut self, idx: usize) {
        let d = self.decisions[idx];
        match (d.need, d.global) {
            (Need::InSync | Need::Ahead, _) => {}
            (Need::LocalChange, _) => self.plan.local_changes.push(d.path.clone()),
            (Need::OutOfSync, _) => self.plan.out_of_sync.push((d.path.clone(), Reason::SendOnly)),
            (Need::Adopt, Some(global)) => self.adopt(d, global),
            (Need::Take | Need::KeepAsConflictCopy, Some(global)) => self.take(idx, global),
            (Need::Adopt | Need::Take | Need::KeepAsConflictCopy, None) => {}
        }
    }

    /// The local content is the global content: only metadata and the vector change.
    fn adopt(&mut self, d: Decision<'g>, global: &Resolution<'_>) {
        let record = global.record.as_ref();
        let commit = vec![taken_record(self.config.mode, d.local, record)];
        let path = d.path.clone();
        let action = match d.local_live() {
            Some(local) if !local.same_entry(record) => {
                Action::SetMetadata { path, mode: record.mode, mtime_ns: record.mtime_ns }
            }
            _ => Action::Record { path },
        };
        self.creates.push(Step { action, reason: global.reason, commit });
    }

    fn take(&mut self, idx: usize, global: &Resolution<'_>) {
        let d = self.decisions[idx];
        let record = global.record.as_ref();
        let global_dir = record.kind == EntryKind::Dir && !record.deleted;
        let removed_dir = d.local_live().filter(|l| l.kind == EntryKind::Dir && !global_dir);
        if let Some(local) = removed_dir.filter(|_| self.has_live_descendants(idx)) {
            return self.keep_dir(idx, local);
        }
        if !record.deleted && !self.parent_is_dir(d.path) {
            return self.defer(idx, Reason::ParentNotDirectory);
        }
        if !record.deleted && d.local_live().is_none() && self.blocked.contains(d.path) {
            return self.defer(idx, Reason::NameCollision);
        }
        let mut remaining = d.local_live();
        if d.need == Need::KeepAsConflictCopy && remaining.is_some() {
            match self.conflict_copy(d, global) {
                Some(moved) => {
                    self.decisions[idx].moved = moved;
                    remaining = remaining.filter(|_| !moved);
                }
                None => return self.defer(idx, Reason::ConflictNameInvalid),
            }
        }
        let commit = vec![taken_record(self.config.mode, d.local, record)];
        if record.deleted {
            return self.delete(d.path, remaining, global.reason, commit);
        }
        if let Some(local) = remaining.filter(|l| l.kind != record.kind) {
            self.clear(d.path, local.kind, global.reason);
        }
        let in_place = remaining.filter(|l| l.kind == record.kind);
        self.create(in_place, record, global.reason, commit);
    }

    fn create(
        &mut self,
        in_place: Option<&FileRecord>,
        record: &FileRecord,
        reason: Reason,
        commit: Vec<FileRecord>,
    ) {
        let path = record.path.clone();
        let action = match record.kind {
            EntryKind::Dir if in_place.is_some_and(|l| l.mode == record.mode) => {
                Action::Record { path }
            }
            EntryKind::Dir if in_place.is_some() => {
                Action::SetMetadata { path, mode: record.mode, mtime_ns: record.mtime_ns }
            }
            EntryKind::Dir => Action::MakeDir { path, mode: record.mode },
            EntryKind::File => Action::Pull { record: record.clone(), reuse: Vec::new() },
            EntryKind::Symlink => Action::MakeSymlink {
                path,
                target: record.symlink_target.clone().unwrap_or_default(),
            },
        };
        self.creates.push(Step { action, reason, commit });
    }

    fn delete(
        &mut self,
        path: &'g RelPath,
        local: Option<&FileRecord>,
        reason: Reason,
        commit: Vec<FileRecord>,
    ) {
        let Some(local) = local else {
            let action = Action::Record { path: path.clone() };
            return self.creates.push(Step { action, reason, commit });
        };
        let step = Step {
            action: Action::Delete { path: path.clone(), kind: local.kind },
            reason,
            commit,
        };
        if self.under_cleared(path) { self.clears.push(step) } else { self.deletes.push(step) }
    }

    /// Removes a local entry of another kind before the global entry takes its place; its
    /// children (all deleted globally, or the directory would have been kept) go first.
    fn clear(&mut self, path: &'g RelPath, kind: EntryKind, reason: Reason) {
        self.cleared.insert(path.as_str());
        let action = Action::Delete { path: path.clone(), kind };
        self.clears.push(Step { action, reason, commit: Vec::new() });
    }

    fn under_cleared(&self, path: &RelPath) -> bool {
        !self.cleared.is_empty() && path.ancestors().any(|a| self.cleared.contains(a.as_str()))
    }

    /// Keeps a directory the global state removes or replaces, because entries below it
    /// live. The new version is ours alone: concurrent with a replacing file, the directory
    /// then wins and the file's holder keeps it as a conflict copy.
    fn keep_dir(&mut self, idx: usize, local: &FileRecord) {
        let mut record = local.clone();
        record.version = local.version.bumped(self.config.local_id, self.config.now_secs);
        record.modified_by = self.config.local_id;
        let action = Action::KeepDir { path: local.path.clone() };
        let reason = Reason::DirectoryHasLiveChildren;
        self.creates.push(Step { action, reason, commit: vec![record] });
        self.decisions[idx].live_after = true;
        self.decisions[idx].dir_after = true;
    }

    fn defer(&mut self, idx: usize, reason: Reason) {
        let d = &mut self.decisions[idx];
        d.live_after = d.local_live().is_some();
        d.dir_after = d.local_live().is_some_and(|l| l.kind == EntryKind::Dir);
        self.plan.deferred.push((d.path.clone(), reason));
    }

    /// Renames our losing version aside, named after the losing version's mtime and device
    /// so that replicas holding the same loser pick the same name (their copies then merge
    /// as identical content). A name any record already uses is skipped by adding seconds.
    /// `Some(false)` when a copy with this content already exists (so none is made), `None`
    /// when no valid free name exists.
    fn conflict_copy(&mut self, d: Decision<'g>, global: &Resolution<'_>) -> Option<bool> {
        let local = d.local_live()?;
        if self.copy_exists(local) {
            return Some(false);
        }
        let secs = u64::try_from(local.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let to = (0..16)
            .filter_map(|bump| conflict_path(&local.path, secs + bump, local.modified_by).ok())
            .find(|to| self.find(to).is_none())?;
        let mut copy = local.clone();
        copy.version = VersionVector::new().bumped(self.config.local_id, self.config.now_secs);
        copy.path = to.clone();
        copy.modified_by = self.config.local_id;
        let action = Action::RenameToConflict { from: local.path.clone(), to };
        self.conflicts.push(Step { action, reason: global.reason, commit: vec![copy] });
        Some(true)
    }

    /// True when a conflict copy of the same file with the same content exists here or in
    /// the global state: a second one is never made.
    fn copy_exists(&self, local: &FileRecord) -> bool {
        let made = conflict_name(local.path.file_name(), 0, local.modified_by);
        let Some(at) = made.rfind(".sync-conflict-") else { return false };
        let prefix = match local.path.parent() {
            Some(parent) => format!("{parent}/{}", &made[..at + 15]),
            None => made[..at + 15].to_string(),
        };
        let start = self.decisions.partition_point(|d| d.path.as_str() < prefix.as_str());
        let siblings =
            self.decisions[start..].iter().take_while(|d| d.path.as_str().starts_with(&prefix));
        let siblings = siblings.filter(|d| d.path != &local.path);
        let mut candidates =
            siblings.flat_map(|d| [d.local_live(), d.global.map(|g| g.record.as_ref())]);
        candidates.any(|c| c.is_some_and(|c| !c.deleted && c.same_content(local)))
    }

    fn find(&self, path: &RelPath) -> Option<&Decision<'g>> {
        let idx = self.decisions.binary_search_by(|d| d.path.cmp(path)).ok()?;
        Some(&self.decisions[idx])
    }

    fn parent_is_dir(&self, path: &RelPath) -> bool {
        let Some((parent, _)) = path.as_str().rsplit_once('/') else { return true };
        let idx = self.decisions.binary_search_by(|d| d.path.as_str().cmp(parent));
        idx.is_ok_and(|idx| self.decisions[idx].dir_after)
    }

    fn has_live_descendants(&self, idx: usize) -> bool {
        let prefix = format!("{}/", self.decisions[idx].path);
        let start = self.decisions.partition_point(|d| d.path.as_str() < prefix.as_str());
        let below =
            self.decisions[start..].iter().take_while(|d| d.path.as_str().starts_with(&prefix));
        below.clone().any(|d| d.live_after)
    }

    fn finish(mut self) -> Plan {
        self.reuse_local_content();
        self.clears.sort_by(|a, b| step_path(b).cmp(step_path(a)));
        self.deletes.sort_by(|a, b| step_path(b).cmp(step_path(a)));
        let mut plan = self.plan;
        plan.steps = self.conflicts;
        plan.steps.extend(self.clears);
        plan.steps.extend(self.creates);
        plan.steps.extend(self.deletes);
        plan
    }
}

impl Step {
    /// The path this step is about (the destination for moves, the source for a conflict
    /// copy).
    pub fn path(&self) -> &RelPath {
        step_path(self)
    }
}

/// The path an action is about (the destination for moves).
pub(crate) fn step_path(step: &Step) -> &RelPath {
    match &step.action {
        Action::RenameToConflict { from, .. } => from,
        Action::Pull { record, .. }
        | Action::CopyLocal { record, .. }
        | Action::Rename { record, .. } => &record.path,
        Action::MakeDir { path, .. }
        | Action::KeepDir { path }
        | Action::MakeSymlink { path, .. }
        | Action::SetMetadata { path, .. }
        | Action::Record { path }
        | Action::Delete { path, .. } => path,
    }
}

#[cfg(test)]
mod tests;

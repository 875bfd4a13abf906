//! The simulated cluster: 2–5 replicas with in-memory trees and stores, a virtual clock and
//! a queue of index messages that are partial, delayed, reordered and lost on restart.
//!
//! A replica's tree is its disk; its index and its peers' announced records are its stored
//! state. User operations change the tree and an instant scanner records them; `Sync` runs
//! the real rules (`GlobalState::build` + `plan`) and executes the plan on the tree, checking
//! every action's precondition, committing each step's records after it succeeded, and
//! optionally crashing between an action and its commit. Every operation is a concrete value,
//! so a trace replays exactly and can be shrunk.

use std::collections::BTreeMap;

use crate::model::{
    ChunkRef, EntryKind, FileRecord, FolderMode, Hash, RelPath, ShortId, VersionVector,
};
use crate::rules::{
    Action, GlobalState, PlanConfig, Records, Step, is_announced, plan, scanned_record,
};
use crate::tests::sim::Rng;
use crate::tests::sim::oracle::Oracle;

/// Which rules the cluster runs: the real ones, or deliberately broken ones (teeth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// The rules as written.
    Correct,
    /// Last writer wins: a losing version is deleted instead of kept as a conflict copy.
    NoConflictCopy,
    /// A delete drops the record instead of keeping a tombstone.
    ForgetTombstones,
}

/// What a tree holds at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Node {
    Dir {
        mode: u32,
    },
    File {
        content: u64,
        mode: u32,
        mtime_ns: i64,
    },
    /// A symlink to `t<target>`; its target plays the part of content.
    Symlink {
        target: u64,
    },
}

impl Node {
    /// The content a user wrote: a file's bytes or a symlink's target.
    fn content(&self) -> Option<u64> {
        match self {
            Self::File { content, .. } => Some(*content),
            Self::Symlink { target } => Some(*target),
            Self::Dir { .. } => None,
        }
    }
}

/// One step of a scenario.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Create or modify a file.
    Write { r: usize, path: String, content: u64, mtime_ns: i64 },
    /// Create or replace a symlink.
    Link { r: usize, path: String, target: u64 },
    /// Create a directory.
    Mkdir { r: usize, path: String },
    /// Delete a file, or a directory with everything in it.
    Remove { r: usize, path: String },
    /// Rename a file or a whole directory.
    Move { r: usize, from: String, to: String },
    /// Change a file's or directory's permission bits.
    Chmod { r: usize, path: String, mode: u32 },
    /// Change the folder mode of a replica.
    SetMode { r: usize, mode: FolderMode },
    /// Send part of `from`'s announced index to `to`, arriving after `delay` seconds.
    Send { from: usize, to: usize, pick: u64, delay: u64 },
    /// Deliver the messages that are due, in an order chosen by `pick`.
    Deliver { pick: u64 },
    /// Plan and execute; with `crash`, stop after executing (not committing) that step.
    Sync { r: usize, crash: Option<usize> },
    /// Restart: messages in flight to and from the replica are lost.
    Restart { r: usize },
    /// Let time pass.
    Tick { secs: u64 },
}

/// One replica: disk, stored index, stored peer announcements.
#[derive(Clone, Debug)]
pub(super) struct Replica {
    pub(super) id: ShortId,
    pub(super) mode: FolderMode,
    pub(super) tree: BTreeMap<RelPath, Node>,
    pub(super) index: Records,
    peers: BTreeMap<usize, Records>,
    seq: u64,
}

#[derive(Clone, Debug)]
struct Message {
    from: usize,
    to: usize,
    due: u64,
    records: Vec<FileRecord>,
}

/// The whole simulated world.
#[derive(Clone, Debug)]
pub(super) struct Cluster {
    pub(super) replicas: Vec<Replica>,
    queue: Vec<Message>,
    pub(super) now: u64,
    pub(super) oracle: Oracle,
    variant: Variant,
}

const START_SECS: u64 = 1_700_000_000;
const MAX_SETTLE_ROUNDS: usize = 40;

impl Cluster {
    pub(super) fn new(n_replicas: usize, variant: Variant) -> Self {
        let replicas = (0..n_replicas)
            .map(|idx| Replica {
                id: ShortId::new(Rng::new(idx as u64).next_u64()),
                mode: FolderMode::SendReceive,
                tree: BTreeMap::new(),
                index: Records::new(),
                peers: BTreeMap::new(),
                seq: 0,
            })
            .collect();
        Self { replicas, queue: Vec::new(), now: START_SECS, oracle: Oracle::default(), variant }
    }

    /// Applies one operation; an error is an invariant violation found on the way.
    pub(super) fn apply(&mut self, op: &Op) -> Result<(), String> {
        self.now += 1;
        match op {
            Op::Write { r, path, content, mtime_ns } => {
                self.user_write(*r, path, *content, *mtime_ns)
            }
            Op::Link { r, path, target } => self.user_link(*r, path, *target),
            Op::Mkdir { r, path } => self.user_mkdir(*r, path),
            Op::Remove { r, path } => self.user_remove(*r, path),
            Op::Move { r, from, to } => self.user_move(*r, from, to),
            Op::Chmod { r, path, mode } => self.user_chmod(*r, path, *mode),
            Op::SetMode { r, mode } => self.replicas[*r].mode = *mode,
            Op::Send { from, to, pick, delay } => self.send(*from, *to, Some(*pick), *delay),
            Op::Deliver { pick } => self.deliver(*pick),
            Op::Sync { r, crash } => return self.sync(*r, *crash).map(drop),
            Op::Restart { r } => self.queue.retain(|m| m.from != *r && m.to != *r),
            Op::Tick { secs } => self.now += secs,
        }
        Ok(())
    }

    // ---- user operations: change the tree, then the scanner records it ----

    fn user_write(&mut self, r: usize, path: &str, content: u64, mtime_ns: i64) {
        let Some(path) = self.writable(r, path) else { return };
        let mode = match self.replicas[r].tree.get(&path) {
            Some(Node::File { mode, .. }) => *mode,
            _ => 0o644,
        };
        self.supersede(r, &path);
        register_content(content);
        self.replicas[r].tree.insert(path.clone(), Node::File { content, mode, mtime_ns });
        self.scan(r);
        let version = self.replicas[r].index[&path].version.clone();
        self.oracle.write(r, &path, content, &version);
    }

    fn user_link(&mut self, r: usize, path: &str, target: u64) {
        let Some(path) = self.writable(r, path) else { return };
        self.supersede(r, &path);
        self.replicas[r].tree.insert(path.clone(), Node::Symlink { target });
        if self.scan(r) > 0 {
            self.note_file(r, &path);
        }
    }

    fn user_mkdir(&mut self, r: usize, path: &str) {
        let Some(path) = self.writable(r, path) else { return };
        if self.replicas[r].tree.contains_key(&path) {
            return;
        }
        self.replicas[r].tree.insert(path, Node::Dir { mode: 0o755 });
        self.scan(r);
    }

    fn user_remove(&mut self, r: usize, path: &str) {
        let Ok(path) = RelPath::new(path) else { return };
        for victim in self.subtree(r, &path) {
            self.supersede(r, &victim);
            self.replicas[r].tree.remove(&victim);
        }
        self.scan(r);
    }

    fn user_move(&mut self, r: usize, from: &str, to: &str) {
        let (Ok(from), Some(to)) = (RelPath::new(from), self.writable(r, to)) else { return };
        let tree = &self.replicas[r].tree;
        if !tree.contains_key(&from)
            || tree.contains_key(&to)
            || from == to
            || from.is_ancestor_of(&to)
        {
            return;
        }
        let mut moved = Vec::new();
        for old in self.subtree(r, &from) {
            self.supersede(r, &old);
            let node = self.replicas[r].tree.remove(&old);
            let new = RelPath::new(format!("{to}{}", &old.as_str()[from.as_str().len()..]));
            moved.extend(node.zip(new.ok()));
        }
        for (node, new) in moved {
            self.supersede(r, &new);
            self.replicas[r].tree.insert(new, node);
        }
        self.scan(r);
        self.note_files_under(r, &to);
    }

    fn user_chmod(&mut self, r: usize, path: &str, new_mode: u32) {
        let Ok(path) = RelPath::new(path) else { return };
        match self.replicas[r].tree.get_mut(&path) {
            Some(Node::Dir { mode } | Node::File { mode, .. }) => *mode = new_mode,
            Some(Node::Symlink { .. }) | None => return,
        }
        // A metadata change is a modification: it beats a concurrent delete.
        if self.scan(r) > 0 {
            self.note_file(r, &path);
        }
    }

    /// A path a user could create a file or directory at: its parent is a directory and it
    /// is not a directory itself.
    fn writable(&self, r: usize, path: &str) -> Option<RelPath> {
        let path = RelPath::new(path).ok()?;
        let tree = &self.replicas[r].tree;
        let parent_ok =
            path.parent().is_none_or(|p| matches!(tree.get(&p), Some(Node::Dir { .. })));
        let not_dir = !matches!(tree.get(&path), Some(Node::Dir { .. }));
        (parent_ok && not_dir).then_some(path)
    }

    fn subtree(&self, r: usize, root: &RelPath) -> Vec<RelPath> {
        let tree = &self.replicas[r].tree;
        tree.keys().filter(|p| *p == root || root.is_ancestor_of(p)).cloned().collect()
    }

    fn supersede(&mut self, r: usize, path: &RelPath) {
        if let Some(record) = self.replicas[r].index.get(path) {
            self.oracle.supersede(path, &record.version);
        }
    }

    fn note_files_under(&mut self, r: usize, root: &RelPath) {
        for path in self.subtree(r, root) {
            self.note_file(r, &path);
        }
    }

    fn note_file(&mut self, r: usize, path: &RelPath) {
        let replica = &self.replicas[r];
        if let Some(content) = replica.tree.get(path).and_then(Node::content) {
            self.oracle.write(r, path, content, &replica.index[path].version);
        }
    }

    /// The scanner: records every difference between tree and index (through the rules'
    /// `scanned_record`). Returns the number of records changed.
    pub(super) fn scan(&mut self, r: usize) -> usize {
        let changes = self.scan_changes(r);
        let forget = self.variant == Variant::ForgetTombstones;
        let replica = &mut self.replicas[r];
        for mut record in changes.iter().cloned() {
            if forget && record.deleted {
                replica.index.remove(&record.path);
                continue;
            }
            replica.seq += 1;
            record.sequence = replica.seq;
            replica.index.insert(record.path.clone(), record);
        }
        changes.len()
    }

    fn scan_changes(&self, r: usize) -> Vec<FileRecord> {
        let replica = &self.replicas[r];
        let peers: Vec<&Records> = replica.peers.values().collect();
        let global = GlobalState::build(replica.mode, &replica.index, &peers);
        let mut paths: Vec<&RelPath> = replica.tree.keys().chain(replica.index.keys()).collect();
        paths.sort();
        paths.dedup();
        let mut changes = Vec::new();
        for path in paths {
            let old = replica.index.get(path);
            let Some(found) = scanned(path, replica.tree.get(path), old) else { continue };
            changes.push(scanned_record(
                replica.mode,
                replica.id,
                self.now,
                old,
                found,
                global.get(path),
            ));
        }
        changes
    }

    // ---- index exchange ----

    /// The records `r` announces: all of them, except a receive-only replica's own changes.
    fn announced(&self, r: usize) -> Vec<FileRecord> {
        let replica = &self.replicas[r];
        let peers: Vec<&Records> = replica.peers.values().collect();
        let global = GlobalState::build(replica.mode, &replica.index, &peers);
        let shown = |rec: &&FileRecord| is_announced(replica.mode, rec, global.get(&rec.path));
        replica.index.values().filter(shown).cloned().collect()
    }

    fn send(&mut self, from: usize, to: usize, pick: Option<u64>, delay: u64) {
        if from == to || from >= self.replicas.len() || to >= self.replicas.len() {
            return;
        }
        let mut rng = pick.map(Rng::new);
        let mut records = self.announced(from);
        records.retain(|_| rng.as_mut().is_none_or(|rng| rng.below(10) < 6));
        self.queue.push(Message { from, to, due: self.now + delay, records });
    }

    fn deliver(&mut self, pick: u64) {
        let now = self.now;
        let (mut due, rest): (Vec<Message>, Vec<Message>) =
            self.queue.drain(..).partition(|m| m.due <= now);
        self.queue = rest;
        Rng::new(pick).shuffle(&mut due);
        for message in due {
            self.receive(message);
        }
    }

    /// A peer's record replaces what we stored from it only if it is newer by its sequence.
    fn receive(&mut self, message: Message) {
        let store = self.replicas[message.to].peers.entry(message.from).or_default();
        for record in message.records {
            if store.get(&record.path).is_none_or(|old| old.sequence < record.sequence) {
                store.insert(record.path.clone(), record);
            }
        }
    }

    // ---- sync: plan and execute ----

    /// Plans and executes; returns the number of steps executed.
    pub(super) fn sync(&mut self, r: usize, crash: Option<usize>) -> Result<usize, String> {
        let steps = self.planned_steps(r);
        if std::env::var_os("TANDEM_SIM_TRACE").is_some() {
            trace_plan(r, self.now, &steps);
        }
        for (k, step) in steps.iter().enumerate() {
            self.execute(r, &step.action)
                .map_err(|e| format!("replica {r} step {k} {step:?}: {e}"))?;
            if crash == Some(k) {
                self.scan(r);
                self.note_crashed_copy(r, &step.action);
                return Ok(k + 1);
            }
            self.commit(r, step);
        }
        if self.scan(r) > 0 {
            return Err(format!("replica {r}: index and disk disagree after executing {steps:#?}"));
        }
        Ok(steps.len())
    }

    /// A conflict copy made just before a crash is recorded by the rescan, not the commit.
    fn note_crashed_copy(&mut self, r: usize, action: &Action) {
        let Action::RenameToConflict { to, .. } = action else { return };
        let replica = &self.replicas[r];
        if let (Some(content), Some(record)) =
            (replica.tree.get(to).and_then(Node::content), replica.index.get(to))
        {
            self.oracle.copy(r, to, content, &record.version);
        }
    }

    fn planned_steps(&self, r: usize) -> Vec<Step> {
        let replica = &self.replicas[r];
        let peers: Vec<&Records> = replica.peers.values().collect();
        let global = GlobalState::build(replica.mode, &replica.index, &peers);
        let config = PlanConfig {
            mode: replica.mode,
            local_id: replica.id,
            now_secs: self.now,
            case_insensitive: false,
        };
        let mut steps = plan(&replica.index, &global, &config).steps;
        if self.variant == Variant::NoConflictCopy {
            for step in &mut steps {
                if let Action::RenameToConflict { from, .. } = &step.action {
                    let kind = replica.index.get(from).map_or(EntryKind::File, |r| r.kind);
                    step.action = Action::Delete { path: from.clone(), kind };
                    step.commit.clear();
                }
            }
        }
        steps
    }

    fn commit(&mut self, r: usize, step: &Step) {
        let replica = &mut self.replicas[r];
        for record in &step.commit {
            replica.seq += 1;
            let record = FileRecord { sequence: replica.seq, ..record.clone() };
            replica.index.insert(record.path.clone(), record);
        }
        let Action::RenameToConflict { to, .. } = &step.action else { return };
        if let (Some(content), Some(record)) =
            (replica.tree.get(to).and_then(Node::content), step.commit.first())
        {
            self.oracle.copy(r, to, content, &record.version);
        }
    }

    fn execute(&mut self, r: usize, action: &Action) -> Result<(), String> {
        let tree = &mut self.replicas[r].tree;
        match action {
            Action::RenameToConflict { from, to } => {
                expect_free(tree, to)?;
                let node = take_entry(tree, from, None)?;
                tree.insert(to.clone(), node);
            }
            Action::MakeDir { path, mode } => {
                expect_parent(tree, path)?;
                expect_free(tree, path)?;
                tree.insert(path.clone(), Node::Dir { mode: *mode });
            }
            Action::KeepDir { path } => expect_dir(tree, path)?,
            Action::Pull { record, .. } => place(tree, record)?,
            Action::CopyLocal { from, record } => {
                take_entry(&mut tree.clone(), from, Some(record.hash))?;
                place(tree, record)?;
            }
            Action::Rename { from, record } => {
                take_entry(tree, from, Some(record.hash))?;
                place(tree, record)?;
            }
            Action::MakeSymlink { path, target } => make_symlink(tree, path, target)?,
            Action::SetMetadata { path, mode, mtime_ns } => {
                set_metadata(tree, path, *mode, *mtime_ns)?
            }
            Action::Record { .. } => {}
            Action::Delete { path, kind } => delete(tree, path, *kind)?,
        }
        Ok(())
    }

    // ---- the end: heal the network, then check ----

    /// Every replica back to send-receive, full exchanges and syncs until nothing changes.
    pub(super) fn settle(&mut self) -> Result<(), String> {
        self.queue.clear();
        for replica in &mut self.replicas {
            replica.mode = FolderMode::SendReceive;
        }
        for _ in 0..MAX_SETTLE_ROUNDS {
            self.now += 1;
            let n = self.replicas.len();
            for (from, to) in (0..n).flat_map(|f| (0..n).map(move |t| (f, t))) {
                self.send(from, to, None, 0);
            }
            self.deliver(0);
            let mut executed = 0;
            for r in 0..n {
                executed += self.sync(r, None)?;
            }
            if executed == 0 {
                return Ok(());
            }
        }
        Err(format!("no quiescence after {MAX_SETTLE_ROUNDS} full exchanges"))
    }

    /// Invariant 2 (identical trees and indexes), then 1 and 3 through the oracle.
    pub(super) fn check(&self) -> Result<(), String> {
        let first = &self.replicas[0];
        let normalized = |index: &Records| -> Vec<FileRecord> {
            index.values().map(|r| FileRecord { sequence: 0, ..r.clone() }).collect()
        };
        for (r, replica) in self.replicas.iter().enumerate().skip(1) {
            if replica.tree != first.tree {
                return Err(format!(
                    "trees differ: replica 0 {:#?}\nreplica {r} {:#?}",
                    first.tree, replica.tree
                ));
            }
            if normalized(&replica.index) != normalized(&first.index) {
                return Err(format!(
                    "indexes differ: replica 0 {:#?}\nreplica {r} {:#?}",
                    first.index, replica.index
                ));
            }
        }
        let files: Vec<(RelPath, u64)> =
            first.tree.iter().filter_map(|(p, n)| n.content().map(|c| (p.clone(), c))).collect();
        self.oracle.check(&files)
    }
}

/// The record the scanner makes for `node` at `path`, or `None` when `old` already says so.
/// Version, device and sequence are filled in by the caller.
fn scanned(path: &RelPath, node: Option<&Node>, old: Option<&FileRecord>) -> Option<FileRecord> {
    let live_old = old.filter(|o| !o.deleted);
    let record = match (node, live_old) {
        (None, None) => return None,
        (None, Some(old)) => FileRecord {
            deleted: true,
            hash: Hash::ZERO,
            size: 0,
            chunks: Vec::new(),
            ..old.clone()
        },
        (Some(node), _) => record_of(path, node),
    };
    let unchanged =
        live_old.is_some_and(|o| node.is_some() && o.same_entry(&record) && o.kind == record.kind);
    (!unchanged).then_some(record)
}

pub(super) fn content_hash(content: u64) -> Hash {
    Hash::of(&content.to_le_bytes())
}

fn link_target(target: u64) -> String {
    format!("t{target}")
}

fn record_of(path: &RelPath, node: &Node) -> FileRecord {
    let mut record = FileRecord {
        path: path.clone(),
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 0,
        mode: 0o777,
        symlink_target: None,
        hash: Hash::ZERO,
        chunks: Vec::new(),
        version: VersionVector::new(),
        sequence: 0,
        deleted: false,
        modified_by: ShortId::new(0),
    };
    match node {
        Node::Dir { mode } => record.mode = *mode,
        Node::File { content, mode, mtime_ns } => {
            let hash = content_hash(*content);
            record.kind = EntryKind::File;
            (record.size, record.mtime_ns, record.mode, record.hash) = (8, *mtime_ns, *mode, hash);
            record.chunks = vec![ChunkRef { offset: 0, len: 8, hash }];
        }
        Node::Symlink { target } => {
            let text = link_target(*target);
            record.kind = EntryKind::Symlink;
            record.hash = Hash::of(text.as_bytes());
            record.symlink_target = Some(text);
        }
    }
    record
}

fn expect_parent(tree: &BTreeMap<RelPath, Node>, path: &RelPath) -> Result<(), String> {
    match path.parent() {
        None => Ok(()),
        Some(parent) => expect_dir(tree, &parent),
    }
}

fn expect_dir(tree: &BTreeMap<RelPath, Node>, path: &RelPath) -> Result<(), String> {
    match tree.get(path) {
        Some(Node::Dir { .. }) => Ok(()),
        other => Err(format!("{path} should be a directory, is {other:?}")),
    }
}

fn expect_free(tree: &BTreeMap<RelPath, Node>, path: &RelPath) -> Result<(), String> {
    match tree.get(path) {
        None => Ok(()),
        Some(node) => Err(format!("{path} should be free, holds {node:?}")),
    }
}

fn take_entry(
    tree: &mut BTreeMap<RelPath, Node>,
    path: &RelPath,
    hash: Option<Hash>,
) -> Result<Node, String> {
    let matches = |node: &Node| match (node, hash) {
        (Node::File { content, .. }, Some(h)) => h == content_hash(*content),
        (Node::File { .. } | Node::Symlink { .. }, None) => true,
        _ => false,
    };
    match tree.remove(path) {
        Some(node) if matches(&node) => Ok(node),
        other => Err(format!("{path} should be a file (hash {hash:?}) or symlink, is {other:?}")),
    }
}

fn make_symlink(
    tree: &mut BTreeMap<RelPath, Node>,
    path: &RelPath,
    target: &str,
) -> Result<(), String> {
    expect_parent(tree, path)?;
    if matches!(tree.get(path), Some(Node::Dir { .. } | Node::File { .. })) {
        return Err(format!("{path} holds {:?}, cannot make a symlink there", tree.get(path)));
    }
    let target = target.strip_prefix('t').and_then(|t| t.parse().ok()).ok_or("bad target")?;
    tree.insert(path.clone(), Node::Symlink { target });
    Ok(())
}

/// Writes a file from its record (a pull, copy or rename), replacing a file but never a
/// directory.
fn place(tree: &mut BTreeMap<RelPath, Node>, record: &FileRecord) -> Result<(), String> {
    expect_parent(tree, &record.path)?;
    if matches!(tree.get(&record.path), Some(Node::Dir { .. } | Node::Symlink { .. })) {
        return Err(format!("{} is not a file, cannot write a file there", record.path));
    }
    let content =
        content_of(record.hash).ok_or_else(|| format!("unknown content {:?}", record.hash))?;
    tree.insert(
        record.path.clone(),
        Node::File { content, mode: record.mode, mtime_ns: record.mtime_ns },
    );
    Ok(())
}

/// Contents are small integers in the sim, so a hash is inverted by search.
fn content_of(hash: Hash) -> Option<u64> {
    CONTENTS.with(|c| c.borrow().get(&hash).copied())
}

thread_local! {
    static CONTENTS: std::cell::RefCell<BTreeMap<Hash, u64>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// Makes `content` known to `content_of` (the sim's stand-in for fetching chunks).
pub(super) fn register_content(content: u64) {
    CONTENTS.with(|c| c.borrow_mut().insert(content_hash(content), content));
}

fn set_metadata(
    tree: &mut BTreeMap<RelPath, Node>,
    path: &RelPath,
    new_mode: u32,
    new_mtime: i64,
) -> Result<(), String> {
    match tree.get_mut(path) {
        Some(Node::Dir { mode }) => *mode = new_mode,
        Some(Node::File { mode, mtime_ns, .. }) => (*mode, *mtime_ns) = (new_mode, new_mtime),
        Some(Node::Symlink { .. }) => {}
        None => return Err(format!("{path} missing for set-metadata")),
    }
    Ok(())
}

fn delete(
    tree: &mut BTreeMap<RelPath, Node>,
    path: &RelPath,
    kind: EntryKind,
) -> Result<(), String> {
    let has_children = tree.keys().any(|p| path.is_ancestor_of(p));
    match (tree.get(path), kind) {
        (Some(Node::Dir { .. }), EntryKind::Dir) if !has_children => {}
        (Some(Node::File { .. }), EntryKind::File)
        | (Some(Node::Symlink { .. }), EntryKind::Symlink) => {}
        (other, _) => {
            return Err(format!(
                "cannot delete {path} as {kind}: holds {other:?}, children {has_children}"
            ));
        }
    }
    tree.remove(path);
    Ok(())
}

/// With `TANDEM_SIM_TRACE` set, every executed plan is printed (for debugging a seed).
fn trace_plan(r: usize, now: u64, steps: &[Step]) {
    let short = |record: &FileRecord| {
        let counters: Vec<(u64, u64)> = record
            .version
            .counters()
            .iter()
            .map(|c| (c.id.value() % 1000, c.value % 1000))
            .collect();
        format!("{} {counters:?}{}", record.path, if record.deleted { " deleted" } else { "" })
    };
    for step in steps {
        let commit: Vec<String> = step.commit.iter().map(short).collect();
        eprintln!("replica {r} at {now}: {} {:?} -> {commit:?}", step.reason, step.action);
    }
}

//! Global state: the one version of each path every replica converges to, and how one
//! device relates to it.
//!
//! [`resolve`] applies DESIGN.md's rule to the records announced for one path: among the
//! causally maximal records, identical contents merge into one version, otherwise the
//! [`winner_order`] decides and the other live maximal records become losers, which their
//! holders keep as conflict copies. [`need`] then says what a device must do, with the
//! folder mode's effects: send-only applies nothing and reports it, receive-only holds its
//! own changes back and lists them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::iter::Peekable;

use crate::model::{EntryKind, FileRecord, FolderMode, Hash, RelPath, ShortId, VectorOrdering};
use crate::rules::{Reason, winner_order, winner_reason};

/// One device's records of one folder, by path (the local index, or a peer's announcements).
pub type Records = BTreeMap<RelPath, FileRecord>;

/// The global version of one path, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution<'a> {
    /// The global record. Its vector is the merge of every maximal record with its content.
    pub record: Cow<'a, FileRecord>,
    /// Why this record is global.
    pub reason: Reason,
    /// The live causally maximal records that lost, with content other than the winner's.
    /// Each holder of such a version keeps it as a conflict copy before taking the winner.
    pub losers: Vec<&'a FileRecord>,
    /// Every causally maximal record when there are several, largest by the key first
    /// (empty when one version has seen all the others).
    pub concurrent: Vec<&'a FileRecord>,
}

impl Resolution<'_> {
    /// The path this resolution is about.
    pub fn path(&self) -> &RelPath {
        &self.record.path
    }

    /// True when the global record is a live entry (not a tombstone).
    pub fn is_live(&self) -> bool {
        !self.record.deleted
    }
}

/// The global version of one path from every record announced for it, in any order. This
/// is the rule two implementations must share to converge:
///
/// 1. **Causally maximal records.** Every record another candidate dominates (`Greater`)
///    is dropped. Records with equal vectors and the same content are one version (the
///    largest by [`winner_order`] stands for it). Equal vectors with different contents
///    (possible only after replicas merged histories while taking opposite winners) count
///    as concurrent. If one version remains it is global ([`Reason::Dominates`]).
/// 2. **Current contents.** A record's *origin* is `(modified_by, counter of modified_by
///    in its vector)`: the change that made its content. A maximal record whose origin
///    another maximal record, with a different origin, has reached (that record's counter
///    for `modified_by` is at least as large) holds a content someone saw and replaced; it
///    is dropped. If every record is dropped, the global record is a tombstone: the first
///    maximal record by [`winner_order`], deleted, with the merge of all maximal vectors
///    ([`Reason::AllContentsSeen`]).
/// 3. **Winner.** The largest remaining record by [`winner_order`] wins. Its vector is
///    merged with those of the remaining records with the same content
///    (`FileRecord::same_content`): identical contents are one version, never a conflict
///    ([`Reason::IdenticalContentMerge`] when all remaining records agree). Otherwise the
///    reason names the key that beat the best remaining record with other content, or is
///    [`Reason::SawConcurrentContent`] when step 2 alone decided.
/// 4. **Losers.** The remaining live records with another content. Each holder keeps its
///    version as a conflict copy before taking the winner; deleted ones simply lose.
///
/// Step 2 exists because a replica that takes a concurrent winner merges its own vector into
/// the record it stores (see [`crate::rules::Step::commit`]), so that the versions it had
/// superseded stay superseded. That record keeps the winner's `modified_by`, so a later
/// change by someone who saw the winner's content still beats it although the vectors are
/// concurrent. The randomized simulation (`tests/sim.rs`) found each of these cases.
pub fn resolve<'a>(candidates: &[&'a FileRecord]) -> Option<Resolution<'a>> {
    let (&first, rest) = candidates.split_first()?;
    if rest.iter().all(|r| r.version == first.version && r.same_content(first)) {
        let best = rest.iter().fold(first, |best, &r| max_by_key(best, r));
        return Some(single(best));
    }
    let maximal = maximal(candidates);
    if maximal.len() == 1 {
        return Some(single(maximal[0]));
    }
    let Some(current) = current_contents(&maximal) else {
        let record = Cow::Owned(superseded_everywhere(&maximal));
        let reason = Reason::AllContentsSeen;
        return Some(Resolution { record, reason, losers: Vec::new(), concurrent: maximal });
    };
    let winner = current[0];
    let same: Vec<&FileRecord> =
        current.iter().copied().filter(|r| r.same_content(winner)).collect();
    let losers: Vec<&FileRecord> =
        current.iter().copied().filter(|r| !r.same_content(winner) && !r.deleted).collect();
    let reason =
        match (current.iter().find(|r| !r.same_content(winner)), maximal.len() > current.len()) {
            (Some(runner_up), _) => winner_reason(winner, runner_up),
            (None, true) => Reason::SawConcurrentContent,
            (None, false) => Reason::IdenticalContentMerge,
        };
    Some(Resolution { record: merged(winner, &same), reason, losers, concurrent: maximal })
}

/// The maximal records whose content no other maximal record has seen, in key order; `None`
/// when every content was seen by another record.
///
/// A record's content was made by the change `(modified_by, its counter)`, its origin; a
/// record with another origin whose vector has reached that counter was made by someone who
/// saw that content. Such a content
/// is not current even though the vectors are concurrent: it only lives on in a record that
/// took a newer winner and merged its own history in (see [`crate::rules::Step::commit`]).
fn current_contents<'a>(maximal: &[&'a FileRecord]) -> Option<Vec<&'a FileRecord>> {
    let origin = |r: &FileRecord| (r.modified_by, r.version.counter(r.modified_by));
    let seen = |r: &FileRecord| {
        let (by, counter) = origin(r);
        let mut others = maximal.iter().filter(|s| origin(s) != (by, counter));
        counter > 0 && others.any(|s| s.version.counter(by) >= counter)
    };
    let current: Vec<&FileRecord> = maximal.iter().copied().filter(|r| !seen(r)).collect();
    (!current.is_empty()).then_some(current)
}

/// The tombstone that stands for maximal records whose contents have all been seen and
/// replaced: every one of them was superseded by someone, so none comes back.
fn superseded_everywhere(maximal: &[&FileRecord]) -> FileRecord {
    let first = maximal[0];
    let mut record = FileRecord {
        deleted: true,
        size: 0,
        hash: Hash::ZERO,
        chunks: Vec::new(),
        symlink_target: None,
        ..first.clone()
    };
    for other in &maximal[1..] {
        record.version = record.version.merge(&other.version);
    }
    record
}

fn single(record: &FileRecord) -> Resolution<'_> {
    let record = Cow::Borrowed(record);
    Resolution { record, reason: Reason::Dominates, losers: Vec::new(), concurrent: Vec::new() }
}

fn max_by_key<'a>(a: &'a FileRecord, b: &'a FileRecord) -> &'a FileRecord {
    if winner_order(b, a).is_gt() { b } else { a }
}

/// The causally maximal candidates, one per distinct vector, largest by the key first.
fn maximal<'a>(candidates: &[&'a FileRecord]) -> Vec<&'a FileRecord> {
    let mut out: Vec<&FileRecord> = Vec::with_capacity(candidates.len());
    'next: for &candidate in candidates {
        let mut idx = 0;
        while idx < out.len() {
            match candidate.version.compare(&out[idx].version) {
                VectorOrdering::Lesser => continue 'next,
                VectorOrdering::Equal if candidate.same_content(out[idx]) => {
                    out[idx] = max_by_key(out[idx], candidate);
                    continue 'next;
                }
                // Equal vectors with different contents (two replicas merged each other's
                // history while taking opposite winners) are as good as concurrent.
                VectorOrdering::Equal => idx += 1,
                VectorOrdering::Greater => drop(out.swap_remove(idx)),
                VectorOrdering::Concurrent => idx += 1,
            }
        }
        out.push(candidate);
    }
    out.sort_by(|a, b| winner_order(b, a));
    out
}

fn merged<'a>(winner: &'a FileRecord, group: &[&'a FileRecord]) -> Cow<'a, FileRecord> {
    if group.len() < 2 {
        return Cow::Borrowed(winner);
    }
    let mut record = winner.clone();
    for other in group {
        record.version = record.version.merge(&other.version);
    }
    Cow::Owned(record)
}

/// The global state of a folder: one [`Resolution`] per path, sorted by path.
#[derive(Clone, Debug, Default)]
pub struct GlobalState<'a> {
    entries: Vec<Resolution<'a>>,
}

/// Live paths whose names collide case-insensitively or after Unicode normalization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    /// The colliding paths, sorted, at least two.
    pub paths: Vec<RelPath>,
}

impl<'a> GlobalState<'a> {
    /// The global state seen by a device in `mode`: its own records count unless the folder
    /// is receive-only (whose local changes are never announced, so the global state
    /// ignores them).
    pub fn build(mode: FolderMode, local: &'a Records, peers: &[&'a Records]) -> Self {
        let mut sources = peers.to_vec();
        if mode != FolderMode::ReceiveOnly {
            sources.push(local);
        }
        Self::from_sources(&sources)
    }

    /// The global state of every path any source has a record for.
    pub fn from_sources(sources: &[&'a Records]) -> Self {
        let mut iters: Vec<Peekable<_>> = sources.iter().map(|s| s.iter().peekable()).collect();
        let mut entries = Vec::with_capacity(sources.iter().map(|s| s.len()).max().unwrap_or(0));
        let mut group: Vec<&'a FileRecord> = Vec::with_capacity(sources.len());
        loop {
            let heads = iters.iter_mut().filter_map(|it| it.peek().map(|&(path, _)| path));
            let Some(next) = heads.min() else { break };
            group.clear();
            for it in &mut iters {
                if let Some((_, record)) = it.next_if(|&(path, _)| path == next) {
                    group.push(record);
                }
            }
            entries.extend(resolve(&group));
        }
        Self { entries }
    }

    /// The resolution of one path.
    pub fn get(&self, path: &RelPath) -> Option<&Resolution<'a>> {
        let idx = self.entries.binary_search_by(|e| e.path().cmp(path)).ok()?;
        Some(&self.entries[idx])
    }

    /// Every resolution, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = &Resolution<'a>> {
        self.entries.iter()
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no path has a record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live paths that collide case-insensitively or after Unicode normalization. They are
    /// reported, and the planner never writes one over another.
    ///
    /// Two different paths can only collide if one of them folds to something other than
    /// itself, so only those are keyed; a partner that is already folded is found by its
    /// exact name. A folder of lowercase ASCII names costs one scan.
    pub fn collisions(&self) -> Vec<Collision> {
        let live = self.entries.iter().filter(|e| e.is_live()).map(Resolution::path);
        let mut groups: BTreeMap<String, Vec<&RelPath>> = BTreeMap::new();
        for path in live {
            if let Some(key) = fold(path) {
                groups.entry(key).or_default().push(path);
            }
        }
        let mut out = Vec::new();
        for (key, mut paths) in groups {
            let exact = RelPath::new(key).ok().and_then(|k| self.get(&k).filter(|e| e.is_live()));
            paths.extend(exact.map(Resolution::path));
            paths.sort();
            paths.dedup();
            if paths.len() > 1 {
                out.push(Collision { paths: paths.into_iter().cloned().collect() });
            }
        }
        out
    }
}

/// [`RelPath::fold_key`] when it differs from the path (or may: any non-ASCII path).
fn fold(path: &RelPath) -> Option<String> {
    let text = path.as_str();
    if !text.is_ascii() {
        return Some(path.fold_key());
    }
    text.bytes().any(|b| b.is_ascii_uppercase()).then(|| text.to_ascii_lowercase())
}

/// How a device's record of a path relates to the global version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// The local record is the global version (or neither exists).
    InSync,
    /// The local record is newer than the global one: the peers need ours.
    Ahead,
    /// The global version has seen the local one (or there is none): take it.
    Take,
    /// The local content already is the global content: adopt its vector and metadata.
    Adopt,
    /// The local version is concurrent and lost: keep it as a conflict copy, then take the
    /// global version.
    KeepAsConflictCopy,
    /// Receive-only: a local change, not announced, listed, kept until reverted.
    LocalChange,
    /// Send-only: the global version differs and is reported, not applied.
    OutOfSync,
}

/// What this device needs for one path, in folder mode `mode`.
///
/// In receive-only mode `global` must come from the peers' records only (as
/// [`GlobalState::build`] does). A local record that version has not seen (it does not
/// dominate it) is a local change: it is held and listed until reverted, whatever the peers
/// do meanwhile, even when its content equals the global content. Resolving it
/// automatically would need this device's own history, which a receive-only device must
/// not announce: taking the global version would forget it (and let a version this device
/// superseded come back), merging it in would announce a version nobody has seen.
pub fn need(mode: FolderMode, local: Option<&FileRecord>, global: Option<&Resolution<'_>>) -> Need {
    let base = base_need(local, global);
    match mode {
        FolderMode::SendReceive => base,
        FolderMode::SendOnly => match base {
            Need::Take | Need::Adopt | Need::KeepAsConflictCopy => Need::OutOfSync,
            other => other,
        },
        FolderMode::ReceiveOnly if local.is_some_and(|l| !is_announced(mode, l, global)) => {
            Need::LocalChange
        }
        FolderMode::ReceiveOnly => base,
    }
}

fn base_need(local: Option<&FileRecord>, global: Option<&Resolution<'_>>) -> Need {
    let (local, global) = match (local, global) {
        (None, None) => return Need::InSync,
        (Some(_), None) => return Need::Ahead,
        (None, Some(_)) => return Need::Take,
        (Some(local), Some(global)) => (local, global),
    };
    let record = global.record.as_ref();
    match local.version.compare(&record.version) {
        VectorOrdering::Equal if identical(local, record) => Need::InSync,
        // The same version with other metadata (two replicas resolved a tombstone's kind or
        // device differently): the global pick is adopted so indexes converge.
        VectorOrdering::Equal if local.same_content(record) => Need::Adopt,
        VectorOrdering::Equal if local.deleted => Need::Take,
        VectorOrdering::Equal if lost(local, global) => Need::KeepAsConflictCopy,
        VectorOrdering::Equal => Need::Take,
        VectorOrdering::Greater => Need::Ahead,
        _ if local.same_content(record) => Need::Adopt,
        VectorOrdering::Lesser => Need::Take,
        VectorOrdering::Concurrent if local.deleted => Need::Take,
        // A directory is never a conflict copy: the winner order ranks it above any file, so
        // it loses only as a receive-only local change, which then stays one.
        VectorOrdering::Concurrent if local.kind == EntryKind::Dir && lost(local, global) => {
            Need::Ahead
        }
        VectorOrdering::Concurrent if lost(local, global) => Need::KeepAsConflictCopy,
        VectorOrdering::Concurrent => Need::Take,
    }
}

/// True when two records of the same version say exactly the same (the sequence aside).
fn identical(a: &FileRecord, b: &FileRecord) -> bool {
    a.same_entry(b)
        && (a.kind, a.mtime_ns, a.mode, a.modified_by)
            == (b.kind, b.mtime_ns, b.mode, b.modified_by)
        && a.chunks == b.chunks
}

/// True when `local` is one of the concurrent versions that lost (not merely superseded by a
/// version that has seen it). A record absent from the resolution's inputs counts as lost.
fn lost(local: &FileRecord, global: &Resolution<'_>) -> bool {
    let mut maximal = global.concurrent.iter().copied().chain([global.record.as_ref()]);
    global.losers.iter().any(|l| l.version == local.version && l.same_content(local))
        || !maximal.any(|m| m.version.dominates(&local.version))
}

/// The record the local index holds after taking (or adopting) `global` over `local`: the
/// global record with the local vector merged in, outside receive-only mode (see
/// [`crate::rules::Step::commit`] for why); a receive-only device records the global
/// record unchanged, as it must never announce a version of its own.
pub fn taken_record(
    mode: FolderMode,
    local: Option<&FileRecord>,
    global: &FileRecord,
) -> FileRecord {
    let mut record = global.clone();
    if let Some(local) = local.filter(|_| mode != FolderMode::ReceiveOnly) {
        record.version = record.version.merge(&local.version);
    }
    record
}

/// The record the scanner stores for an entry it found changed on disk: `found` holds the
/// entry as scanned (a tombstone when it is gone; version, device and sequence are
/// ignored), `old` the local record it replaces and `global` the path's resolution.
///
/// Normally a local change: `old`'s vector bumped by this device at `now_secs`. But when the
/// disk holds exactly the global entry (same content and metadata) and [`need`] says `old`
/// was to be replaced by it (taken, adopted or kept as a conflict copy), the entry is the
/// global version whose commit was interrupted (a crash between a plan step and its
/// commit): it is recorded as the plan would have ([`taken_record`]), not as a new change. Otherwise a pulled file,
/// or a delete, would come back after a crash as a change concurrent with later ones, and
/// beat a later delete. Our own history is never dropped this way: a local change, or a
/// version newer than the global one, is always bumped.
pub fn scanned_record(
    mode: FolderMode,
    local_id: ShortId,
    now_secs: u64,
    old: Option<&FileRecord>,
    found: FileRecord,
    global: Option<&Resolution<'_>>,
) -> FileRecord {
    let replaced = |g: &&Resolution<'_>| {
        matches!(need(mode, old, Some(g)), Need::Take | Need::Adopt | Need::KeepAsConflictCopy)
    };
    if let Some(g) = global.filter(|g| g.record.same_entry(&found)).filter(replaced) {
        return FileRecord { sequence: found.sequence, ..taken_record(mode, old, &g.record) };
    }
    let base = old.map(|o| o.version.clone()).unwrap_or_default();
    FileRecord { version: base.bumped(local_id, now_secs), modified_by: local_id, ..found }
}

/// True when a device in `mode` announces its local record `local` to its peers: always,
/// except in receive-only mode, where only versions the global state (built from the peers'
/// records) has seen are announced, never the device's own changes.
pub fn is_announced(mode: FolderMode, local: &FileRecord, global: Option<&Resolution<'_>>) -> bool {
    mode != FolderMode::ReceiveOnly
        || global.is_some_and(|g| g.record.version.dominates(&local.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Counter, Hash, VersionVector};

    const A: ShortId = ShortId::new(1);
    const B: ShortId = ShortId::new(2);
    const C: ShortId = ShortId::new(3);

    fn vv(pairs: &[(ShortId, u64)]) -> VersionVector {
        VersionVector::from_counters(pairs.iter().map(|&(id, value)| Counter { id, value }))
    }

    fn file(by: ShortId, mtime: i64, content: &str, version: &[(ShortId, u64)]) -> FileRecord {
        FileRecord {
            path: RelPath::new("f.txt").unwrap(),
            kind: EntryKind::File,
            size: content.len() as u64,
            mtime_ns: mtime,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::of(content.as_bytes()),
            chunks: Vec::new(),
            version: vv(version),
            sequence: 0,
            deleted: false,
            modified_by: by,
        }
    }

    fn tombstone(by: ShortId, version: &[(ShortId, u64)]) -> FileRecord {
        FileRecord { deleted: true, size: 0, hash: Hash::ZERO, ..file(by, 0, "", version) }
    }

    fn check(records: &[&FileRecord], content: &str, reason: Reason, n_losers: usize) {
        let res = resolve(records).unwrap();
        assert_eq!(res.record.hash, Hash::of(content.as_bytes()), "winner content");
        assert_eq!(res.reason, reason);
        assert_eq!(res.losers.len(), n_losers);
    }

    #[test]
    fn a_version_that_has_seen_another_replaces_it_whatever_its_mtime() {
        let old = file(A, 900, "old", &[(A, 1)]);
        let new = file(B, 100, "new", &[(A, 1), (B, 1)]);
        check(&[&old, &new], "new", Reason::Dominates, 0);
        check(&[&new, &old], "new", Reason::Dominates, 0);
    }

    #[test]
    fn concurrent_edits_pick_the_later_mtime_and_list_the_loser() {
        let a = file(A, 200, "a", &[(A, 2)]);
        let b = file(B, 100, "b", &[(A, 1), (B, 1)]);
        check(&[&a, &b], "a", Reason::ConcurrentNewerMtime, 1);
    }

    #[test]
    fn a_modification_beats_a_concurrent_delete() {
        let edit = file(A, 1, "kept", &[(A, 2)]);
        let delete = tombstone(B, &[(A, 1), (B, 5)]);
        check(&[&delete, &edit], "kept", Reason::ModifyBeatsDelete, 0);
    }

    #[test]
    fn identical_concurrent_contents_merge_without_conflict() {
        let a = file(A, 100, "same", &[(A, 1)]);
        let b = file(B, 200, "same", &[(B, 1)]);
        let res = resolve(&[&a, &b]).unwrap();
        assert_eq!(res.reason, Reason::IdenticalContentMerge);
        assert!(res.losers.is_empty());
        assert_eq!(res.record.version, vv(&[(A, 1), (B, 1)]));
        assert_eq!(res.record.mtime_ns, 200, "metadata of the largest by the key");
    }

    #[test]
    fn the_winner_absorbs_the_vectors_of_versions_with_its_content() {
        let a = file(A, 300, "x", &[(A, 1)]);
        let b = file(B, 100, "x", &[(B, 1)]);
        let c = file(C, 200, "y", &[(C, 1)]);
        let res = resolve(&[&c, &b, &a]).unwrap();
        assert_eq!(res.record.version, vv(&[(A, 1), (B, 1)]));
        assert_eq!(res.losers, vec![&c]);
    }

    #[test]
    fn a_directory_beats_a_concurrent_file() {
        let dir = FileRecord {
            kind: EntryKind::Dir,
            hash: Hash::ZERO,
            size: 0,
            ..file(A, 1, "", &[(A, 1)])
        };
        let f = file(B, 9, "f", &[(B, 1)]);
        let res = resolve(&[&f, &dir]).unwrap();
        assert_eq!(res.record.kind, EntryKind::Dir);
        assert_eq!(res.reason, Reason::DirectoryBeatsFile);
    }

    #[test]
    fn need_distinguishes_superseded_from_lost() {
        let a = file(A, 200, "a", &[(A, 2)]);
        let b = file(B, 100, "b", &[(A, 1), (B, 1)]);
        let old = file(A, 50, "o", &[(A, 1)]);
        let res = resolve(&[&a, &b, &old]).unwrap();
        let mode = FolderMode::SendReceive;
        assert_eq!(need(mode, Some(&b), Some(&res)), Need::KeepAsConflictCopy);
        assert_eq!(need(mode, Some(&old), Some(&res)), Need::Take);
        assert_eq!(need(mode, Some(&a), Some(&res)), Need::InSync);
        assert_eq!(need(mode, None, Some(&res)), Need::Take);
        assert_eq!(need(FolderMode::SendOnly, Some(&b), Some(&res)), Need::OutOfSync);
    }

    #[test]
    fn receive_only_holds_local_changes_until_the_global_version_moves_on() {
        let base = file(A, 1, "base", &[(A, 1)]);
        let peers: Records = [(base.path.clone(), base.clone())].into();
        let changed = file(B, 2, "mine", &[(A, 1), (B, 1)]);
        let local: Records = [(changed.path.clone(), changed.clone())].into();
        let state = GlobalState::build(FolderMode::ReceiveOnly, &local, &[&peers]);
        let res = state.get(&base.path).unwrap();
        assert_eq!(res.record.as_ref(), &base, "the local change is not part of the global state");
        assert_eq!(need(FolderMode::ReceiveOnly, Some(&changed), Some(res)), Need::LocalChange);
        let moved = file(A, 3, "theirs", &[(A, 2)]);
        let res = resolve(&[&moved]).unwrap();
        assert_eq!(need(FolderMode::ReceiveOnly, Some(&changed), Some(&res)), Need::LocalChange);
        let old = file(A, 0, "older", &[(A, 1)]);
        assert_eq!(need(FolderMode::ReceiveOnly, Some(&old), Some(&res)), Need::Take);
    }

    #[test]
    fn names_colliding_by_case_or_normalization_are_reported() {
        let mut records = Records::new();
        for name in ["Readme", "README", "caf\u{e9}", "cafe\u{301}", "plain"] {
            let mut r = file(A, 1, name, &[(A, 1)]);
            r.path = RelPath::new(name).unwrap();
            records.insert(r.path.clone(), r);
        }
        let state = GlobalState::from_sources(&[&records]);
        let found: Vec<usize> = state.collisions().iter().map(|c| c.paths.len()).collect();
        assert_eq!(found, [2, 2]);
    }

    #[test]
    fn a_pulled_file_found_after_a_crash_is_recorded_as_the_pulled_version() {
        let mine = tombstone(A, &[(A, 5)]);
        let theirs = file(B, 9, "theirs", &[(B, 2)]);
        let res = resolve(&[&mine, &theirs]).unwrap();
        let found = FileRecord { version: VersionVector::new(), ..theirs.clone() };
        let mode = FolderMode::SendReceive;
        let recorded = scanned_record(mode, A, 100, Some(&mine), found, Some(&res));
        assert_eq!(recorded, taken_record(mode, Some(&mine), &theirs));
        let edited = FileRecord { hash: Hash::of(b"other"), ..theirs.clone() };
        let recorded = scanned_record(mode, A, 100, Some(&mine), edited, Some(&res));
        assert_eq!((recorded.version, recorded.modified_by), (vv(&[(A, 100)]), A));
    }
}

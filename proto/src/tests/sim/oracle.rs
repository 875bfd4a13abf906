//! The simulator's memory of every write, and DESIGN.md's invariants 1 and 3 checked
//! against it.
//!
//! A write is a version of a path a user (or a conflict copy) produced. It becomes
//! *obsolete* when a user on some replica overwrites, deletes or moves that path while the
//! replica's record of it has seen the write (its vector dominates the write's). Then:
//! no lost write means every write that is not obsolete still has its content somewhere
//! (under its name or as a conflict copy); no resurrection means every file at the end
//! holds a write of that path that is not obsolete. Writes of the same content at the same
//! path are one version once the rules merged them, so a delete by someone who saw one of
//! them may remove all (whether it does depends on whether the merge happened first); such a
//! write is excused from the first check, never from the second.

use std::collections::BTreeSet;

use crate::model::{RelPath, VersionVector};

/// One version a user or the rules wrote.
#[derive(Clone, Debug)]
struct Write {
    replica: usize,
    path: RelPath,
    content: u64,
    version: VersionVector,
    obsolete: bool,
    /// A conflict copy made by the rules (its content came from another write).
    copy: bool,
}

/// Every write of one simulation run.
#[derive(Clone, Debug, Default)]
pub(super) struct Oracle {
    writes: Vec<Write>,
}

impl Oracle {
    /// Remembers that `replica` wrote `content` at `path`, recorded with `version`.
    pub(super) fn write(
        &mut self,
        replica: usize,
        path: &RelPath,
        content: u64,
        version: &VersionVector,
    ) {
        let (path, version) = (path.clone(), version.clone());
        self.writes.push(Write { replica, path, content, version, obsolete: false, copy: false });
    }

    /// Remembers a conflict copy the rules made.
    pub(super) fn copy(
        &mut self,
        replica: usize,
        path: &RelPath,
        content: u64,
        version: &VersionVector,
    ) {
        self.write(replica, path, content, version);
        if let Some(last) = self.writes.last_mut() {
            last.copy = true;
        }
    }

    /// A user replaced `path` on a replica whose record of it had `seen`.
    pub(super) fn supersede(&mut self, path: &RelPath, seen: &VersionVector) {
        for write in self.writes.iter_mut().filter(|w| &w.path == path) {
            if seen.dominates(&write.version) {
                write.obsolete = true;
            }
        }
    }

    /// Invariants 1 (no lost write) and 3 (no resurrection) against the converged tree's
    /// files, given as (path, content).
    pub(super) fn check(&self, files: &[(RelPath, u64)]) -> Result<(), String> {
        let present: BTreeSet<u64> = files.iter().map(|&(_, c)| c).collect();
        let dropped_copies: BTreeSet<u64> =
            self.writes.iter().filter(|w| w.copy && w.obsolete).map(|w| w.content).collect();
        let dropped_versions: BTreeSet<(&RelPath, u64)> =
            self.writes.iter().filter(|w| w.obsolete).map(|w| (&w.path, w.content)).collect();
        for w in &self.writes {
            let excused = dropped_copies.contains(&w.content)
                || dropped_versions.contains(&(&w.path, w.content));
            if !w.obsolete && !present.contains(&w.content) && !excused {
                return Err(format!(
                    "lost write: content {} written at {} by replica {} ({:?}) is nowhere",
                    w.content, w.path, w.replica, w.version
                ));
            }
        }
        for (path, content) in files {
            let alive =
                self.writes.iter().any(|w| &w.path == path && w.content == *content && !w.obsolete);
            if !alive {
                return Err(format!(
                    "resurrection: {path} holds content {content}, which was superseded"
                ));
            }
        }
        Ok(())
    }
}

//! Local reuse: a pull whose content is already here becomes a rename or a local copy, and
//! the chunks of the remaining pulls that local files already hold are listed.
//!
//! This runs over every local file, so it must stay linear: wanted hashes are looked up
//! through [`HashFilter`], a bitmap over the hashes' first bytes that rejects almost every
//! miss without touching the sorted set behind it.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{EntryKind, Hash, RelPath};
use crate::rules::global::Need;
use crate::rules::plan::{Action, Builder, Decision, LocalChunk, Step, step_path};

/// A deterministic set of hashes with a fast negative answer.
struct HashFilter {
    bits: Vec<u64>,
    mask: u64,
    set: BTreeSet<Hash>,
}

impl HashFilter {
    fn new(set: BTreeSet<Hash>) -> Self {
        let n_bits = (set.len() * 8).next_power_of_two().max(64);
        let mut filter = Self { bits: vec![0; n_bits / 64], mask: n_bits as u64 - 1, set };
        let slots: Vec<u64> = filter.set.iter().map(|h| filter.slot(h)).collect();
        for slot in slots {
            filter.bits[(slot / 64) as usize] |= 1 << (slot % 64);
        }
        filter
    }

    /// BLAKE3 output is uniform, so its first bytes index the bitmap well.
    fn slot(&self, hash: &Hash) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first) & self.mask
    }

    fn contains(&self, hash: &Hash) -> bool {
        let slot = self.slot(hash);
        self.bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0 && self.set.contains(hash)
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

impl<'g> Builder<'_, 'g> {
    /// Turns pulls into renames of globally deleted files with the same content, or into
    /// local copies of unchanged files, and lists the chunks of the rest found locally.
    pub(super) fn reuse_local_content(&mut self) {
        let wanted = HashFilter::new(wanted_hashes(&self.creates));
        if !wanted.is_empty() {
            self.reuse_whole_files(&wanted);
        }
        self.reuse_chunks();
    }

    fn reuse_whole_files(&mut self, wanted: &HashFilter) {
        let mut deleted: BTreeMap<Hash, Vec<usize>> = BTreeMap::new();
        for (idx, step) in self.deletes.iter().enumerate() {
            let Action::Delete { path, kind: EntryKind::File } = &step.action else { continue };
            let local = self.find(path).and_then(|d| d.local_live());
            if let Some(local) = local.filter(|l| wanted.contains(&l.hash)) {
                deleted.entry(local.hash).or_default().push(idx);
            }
        }
        let unchanged = self.unchanged_files(wanted);
        let mut consumed = BTreeSet::new();
        for step in &mut self.creates {
            let Action::Pull { record, .. } = &step.action else { continue };
            if record.size == 0 {
                continue;
            }
            let record = record.clone();
            if let Some(idx) = deleted.get_mut(&record.hash).and_then(Vec::pop) {
                consumed.insert(idx);
                let from = step_path(&self.deletes[idx]).clone();
                step.commit.extend(self.deletes[idx].commit.iter().cloned());
                step.action = Action::Rename { from, record };
            } else if let Some(from) = unchanged.get(&record.hash) {
                step.action = Action::CopyLocal { from: (*from).clone(), record };
            }
        }
        let mut idx = 0;
        self.deletes.retain(|_| (!consumed.contains(&idx), idx += 1).0);
    }

    /// Local files whose content this plan leaves alone, by hash (only wanted hashes).
    fn unchanged_files(&self, wanted: &HashFilter) -> BTreeMap<Hash, &'g RelPath> {
        let stays = |d: &&Decision<'g>| {
            matches!(
                d.need,
                Need::InSync | Need::Ahead | Need::LocalChange | Need::OutOfSync | Need::Adopt
            )
        };
        let files = self.decisions.iter().filter(stays).filter_map(|d| d.local_live());
        let files = files.filter(|l| l.kind == EntryKind::File && wanted.contains(&l.hash));
        files.map(|l| (l.hash, &l.path)).collect()
    }

    /// Lists, for each remaining pull, the chunks present in local files (a hint: the
    /// puller verifies every chunk and falls back to peers).
    fn reuse_chunks(&mut self) {
        let mut wanted = BTreeSet::new();
        for step in &self.creates {
            if let Action::Pull { record, .. } = &step.action {
                wanted.extend(record.chunks.iter().map(|c| c.hash));
            }
        }
        let wanted = HashFilter::new(wanted);
        if wanted.is_empty() {
            return;
        }
        let found = self.local_chunks(&wanted);
        for step in &mut self.creates {
            let Action::Pull { record, reuse } = &mut step.action else { continue };
            for (index, chunk) in record.chunks.iter().enumerate() {
                if let Some(&(from, offset)) = found.get(&chunk.hash) {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    reuse.push(LocalChunk { index, from: from.clone(), offset });
                }
            }
        }
    }

    /// Where each wanted chunk is found in a local file that stays in place until the pulls.
    fn local_chunks(&self, wanted: &HashFilter) -> BTreeMap<Hash, (&'g RelPath, u64)> {
        let mut found = BTreeMap::new();
        let sources = self.decisions.iter().filter(|d| !d.moved).filter_map(|d| d.local_live());
        let sources = sources.filter(|l| l.kind == EntryKind::File && !self.under_cleared(&l.path));
        for source in sources {
            for chunk in source.chunks.iter().filter(|c| wanted.contains(&c.hash)) {
                found.entry(chunk.hash).or_insert((&source.path, chunk.offset));
            }
        }
        found
    }
}

fn wanted_hashes(creates: &[Step]) -> BTreeSet<Hash> {
    let pulls = creates.iter().filter_map(|s| match &s.action {
        Action::Pull { record, .. } if record.size > 0 => Some(record.hash),
        _ => None,
    });
    pulls.collect()
}

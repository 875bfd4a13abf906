//! Chunk-list edits (protocol v2): a changed file's chunk list told as an edit of a list the
//! receiver already holds, instead of in full.
//!
//! A 1 MiB insertion into a 1 GiB file changes about twenty of its ~16,000 chunks, yet a v1
//! `IndexUpdate` carries all of them (558 kB), and the receiver's own update after it takes
//! the file carries them again. Both sides already hold a list that differs from the new one
//! in a few places: the sender's copy of the receiver's record for the path (the receiver
//! announced it). So the sender tells the new list as runs kept from that base and chunks
//! added between them, naming the base by the receiver's own sequence number and content
//! hash; the receiver rebuilds the list from its own record. What the receiver cannot rebuild
//! (its record changed since it announced it) it asks for again in full (`Resend`,
//! PROTOCOL.md §9.9).
//!
//! Everything here is pure: [`ChunkEdit::between`] makes an edit, [`ChunkEdit::apply`]
//! rebuilds a list and refuses any edit that references chunks the base does not have or
//! that would build more than [`MAX_EDITED_CHUNKS`] chunks, before it allocates them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ChunkRef, Hash};

/// Most chunks a list rebuilt from an edit may have (a 4 TiB file at the 4 MiB largest
/// chunk). A hostile edit could otherwise repeat a long run of its base until memory ran out.
pub const MAX_EDITED_CHUNKS: usize = 1 << 20;

/// A chunk list told as an edit of the receiver's own record of the same path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEdit {
    /// The sequence number the receiver gave the record this edit starts from.
    pub base_sequence: u64,
    /// That record's whole-file hash (a second check that the base is the right one).
    pub base_hash: Hash,
    /// The new list, in order: runs of the base's chunks and chunks added between them.
    pub ops: Vec<ChunkOp>,
}

/// One piece of an edited chunk list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkOp {
    /// `count` chunks of the base, from index `start`.
    Keep {
        /// Index of the first chunk in the base list.
        start: u32,
        /// How many consecutive chunks.
        count: u32,
    },
    /// Chunks the base does not have at this place.
    Add(Vec<NewChunk>),
}

/// A chunk of an edited list: offsets follow from the lengths of the chunks before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewChunk {
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of the chunk's bytes.
    pub hash: Hash,
}

/// Why an edit cannot be applied to a base list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A kept run reaches past the end of the base list (or is empty).
    #[error("kept run {start}+{count} is outside a base of {base} chunks")]
    OutOfRange {
        /// The run's first index.
        start: u32,
        /// The run's length.
        count: u32,
        /// The base's length.
        base: usize,
    },
    /// The rebuilt list (or the lists of one batch together) would have more than
    /// [`MAX_EDITED_CHUNKS`] chunks.
    #[error("the edits build more than {MAX_EDITED_CHUNKS} chunks")]
    TooLong,
}

impl ChunkEdit {
    /// The edit that turns `base` into `new`: each chunk of `new` is kept from `base` when
    /// `base` has a chunk of the same hash and length (continuing the current run when it
    /// can, else from the first such chunk), otherwise added.
    pub fn between(
        base_sequence: u64,
        base_hash: Hash,
        base: &[ChunkRef],
        new: &[ChunkRef],
    ) -> Self {
        let mut first: BTreeMap<(Hash, u32), u32> = BTreeMap::new();
        for (idx, chunk) in base.iter().enumerate().rev() {
            if let Ok(idx) = u32::try_from(idx) {
                first.insert((chunk.hash, chunk.len), idx);
            }
        }
        let same = |idx: u32, chunk: &ChunkRef| {
            base.get(idx as usize).is_some_and(|b| b.hash == chunk.hash && b.len == chunk.len)
        };
        let mut ops: Vec<ChunkOp> = Vec::new();
        for chunk in new {
            let next = match ops.last() {
                Some(ChunkOp::Keep { start, count }) => start.checked_add(*count),
                _ => None,
            };
            if let Some(next) = next.filter(|&next| same(next, chunk)) {
                if let Some(ChunkOp::Keep { start, count }) = ops.last_mut() {
                    debug_assert_eq!(*start + *count, next);
                    *count += 1;
                }
            } else if let Some(&start) = first.get(&(chunk.hash, chunk.len)) {
                ops.push(ChunkOp::Keep { start, count: 1 });
            } else if let Some(ChunkOp::Add(added)) = ops.last_mut() {
                added.push(NewChunk { len: chunk.len, hash: chunk.hash });
            } else {
                ops.push(ChunkOp::Add(vec![NewChunk { len: chunk.len, hash: chunk.hash }]));
            }
        }
        Self { base_sequence, base_hash, ops }
    }

    /// How many chunks the edit adds (the ones the base does not provide).
    pub fn added(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                ChunkOp::Keep { .. } => 0,
                ChunkOp::Add(added) => added.len(),
            })
            .sum()
    }

    /// How many chunks the edit builds from a base of `base` chunks, checking every run is
    /// inside it and the result is at most `limit` chunks (at most [`MAX_EDITED_CHUNKS`]).
    pub fn built_len(&self, base: usize, limit: usize) -> Result<usize, EditError> {
        let limit = limit.min(MAX_EDITED_CHUNKS);
        let mut total = 0usize;
        for op in &self.ops {
            let n = match op {
                ChunkOp::Keep { start, count } => {
                    let end = (*start as usize).checked_add(*count as usize);
                    if *count == 0 || end.is_none_or(|end| end > base) {
                        return Err(EditError::OutOfRange { start: *start, count: *count, base });
                    }
                    *count as usize
                }
                ChunkOp::Add(added) => added.len(),
            };
            total = total.saturating_add(n);
            if total > limit {
                return Err(EditError::TooLong);
            }
        }
        Ok(total)
    }

    /// The list this edit builds from `base`, with offsets counted from 0. Fails without
    /// allocating the result when a run is outside `base` or the result would be too long.
    pub fn apply(&self, base: &[ChunkRef]) -> Result<Vec<ChunkRef>, EditError> {
        let total = self.built_len(base.len(), MAX_EDITED_CHUNKS)?;
        let mut out = Vec::with_capacity(total);
        let mut offset = 0u64;
        let mut push = |len: u32, hash: Hash| {
            out.push(ChunkRef { offset, len, hash });
            offset = offset.saturating_add(u64::from(len));
        };
        for op in &self.ops {
            match op {
                ChunkOp::Keep { start, count } => {
                    let (start, count) = (*start as usize, *count as usize);
                    for chunk in &base[start..start + count] {
                        push(chunk.len, chunk.hash);
                    }
                }
                ChunkOp::Add(added) => {
                    for chunk in added {
                        push(chunk.len, chunk.hash);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn list(hashes: &[u8]) -> Vec<ChunkRef> {
        let mut offset = 0;
        hashes
            .iter()
            .map(|&h| {
                let len = 100 + u32::from(h);
                let chunk = ChunkRef { offset, len, hash: Hash::of(&[h]) };
                offset += u64::from(len);
                chunk
            })
            .collect()
    }

    #[test]
    fn an_insertion_is_two_runs_around_the_added_chunks() {
        let base = list(&[1, 2, 3, 4, 5, 6]);
        let new = list(&[1, 2, 3, 9, 8, 5, 6]);
        let edit = ChunkEdit::between(7, Hash::ZERO, &base, &new);
        assert_eq!(
            edit.ops,
            vec![
                ChunkOp::Keep { start: 0, count: 3 },
                ChunkOp::Add(vec![
                    NewChunk { len: 109, hash: Hash::of(&[9]) },
                    NewChunk { len: 108, hash: Hash::of(&[8]) },
                ]),
                ChunkOp::Keep { start: 4, count: 2 },
            ]
        );
        assert_eq!(edit.added(), 2);
        assert_eq!(edit.apply(&base).unwrap(), new);
    }

    #[test]
    fn the_same_list_is_one_run() {
        let base = list(&[1, 2, 3]);
        let edit = ChunkEdit::between(1, Hash::ZERO, &base, &base);
        assert_eq!(edit.ops, vec![ChunkOp::Keep { start: 0, count: 3 }]);
        assert_eq!(edit.apply(&base).unwrap(), base);
    }

    #[test]
    fn runs_outside_the_base_and_overlong_results_are_refused() {
        let base = list(&[1, 2, 3]);
        let edit = |ops| ChunkEdit { base_sequence: 1, base_hash: Hash::ZERO, ops };
        for (start, count) in [(2, 2), (3, 1), (0, 0), (u32::MAX, 2)] {
            let err = edit(vec![ChunkOp::Keep { start, count }]).apply(&base).unwrap_err();
            assert!(matches!(err, EditError::OutOfRange { .. }), "{start}+{count}: {err}");
        }
        // a thousand references to the whole base may not build a list past the limit
        let many = edit(vec![ChunkOp::Keep { start: 0, count: 3 }; MAX_EDITED_CHUNKS / 3 + 1]);
        assert_eq!(many.apply(&base), Err(EditError::TooLong));
    }

    proptest! {
        /// Whatever the two lists, applying the edit between them to the base gives the new
        /// list back, offsets included; and an edit never adds a chunk the base has.
        #[test]
        fn an_edit_rebuilds_the_new_list(
            base in proptest::collection::vec(0u8..12, 0..40),
            new in proptest::collection::vec(0u8..16, 0..40),
        ) {
            let (base, new) = (list(&base), list(&new));
            let edit = ChunkEdit::between(3, Hash::ZERO, &base, &new);
            prop_assert_eq!(edit.apply(&base).unwrap(), new.clone());
            let absent = new.iter().filter(|c| !base.iter().any(|b| b.hash == c.hash)).count();
            prop_assert_eq!(edit.added(), absent);
        }
    }
}

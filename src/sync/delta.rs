//! Chunks at the edges of an edit, fetched as deltas (protocol v2, PROTOCOL.md §10.1).
//!
//! An insertion into a big file lands inside one of its chunks: the new chunks around it
//! hold the old chunk's bytes up to the insertion point and from where the cut points
//! resynchronise, but as whole chunks they are new, and were fetched whole — 134 KiB more
//! than the inserted bytes on average for a 1 MiB insertion, 223 KiB at p90. Here both
//! sides cut such a chunk into small content-defined pieces (`PIECE_SIZES`, 4 KiB average):
//! the requester lists the pieces of the old chunks the new list dropped, and the responder
//! answers with the pieces it recognises and the bytes of the others. A piece that is read
//! locally is checked against its hash, and the rebuilt chunk against the chunk's hash.

use std::collections::BTreeMap;
use std::fs::File;

use fastcdc::v2020::FastCDC;
use tandem_proto::model::{ChunkRef, FileRecord, Hash};
use tandem_proto::wire::{
    DeltaOp, DeltaRequest, ErrorCode, MAX_HAVE, MAX_REQUEST, NewChunk, PIECE_SIZES, ResponseBody,
};

use crate::sync::puller::{read_at, serve_read};
use crate::sync::writer::FolderFs;

/// Chunks smaller than this are fetched whole: their pieces would save little.
pub(crate) const DELTA_MIN_CHUNK: u32 = 16 << 10;

/// Cuts `data` into pieces (FastCDC 2020, level 1, `PIECE_SIZES`, from its first byte).
pub(crate) fn pieces(data: &[u8]) -> impl Iterator<Item = (usize, NewChunk)> + '_ {
    let (min, avg, max) = PIECE_SIZES;
    FastCDC::new(data, min as usize, avg as usize, max as usize).map(move |cut| {
        let bytes = &data[cut.offset..cut.offset + cut.length];
        // pieces are at most PIECE_SIZES.2 (16 KiB) long
        let len = u32::try_from(cut.length).unwrap_or(u32::MAX);
        (cut.offset, NewChunk { len, hash: Hash::of(bytes) })
    })
}

/// The responder's side: the requested chunk as pieces the requester has and bytes it has
/// not. Refuses what a plain request would refuse, and a `have` list over [`MAX_HAVE`].
pub(crate) fn answer(fs: &FolderFs, request: &DeltaRequest) -> ResponseBody {
    if request.have.len() > MAX_HAVE || request.request.size > MAX_REQUEST {
        return ResponseBody::Error(ErrorCode::Invalid);
    }
    let data = match serve_read(fs, &request.request) {
        Ok(data) => data,
        Err(code) => return ResponseBody::Error(code),
    };
    let mut have: BTreeMap<(Hash, u32), u32> = BTreeMap::new();
    for (idx, piece) in request.have.iter().enumerate().rev() {
        // at most MAX_HAVE entries, so the index fits
        have.insert((piece.hash, piece.len), u32::try_from(idx).unwrap_or(u32::MAX));
    }
    let mut ops: Vec<DeltaOp> = Vec::new();
    for (offset, piece) in pieces(&data) {
        let bytes = &data[offset..offset + piece.len as usize];
        match (have.get(&(piece.hash, piece.len)), ops.last_mut()) {
            (Some(&idx), _) => ops.push(DeltaOp::Have(idx)),
            (None, Some(DeltaOp::Bytes(run))) => run.extend_from_slice(bytes),
            (None, _) => ops.push(DeltaOp::Bytes(bytes.to_vec())),
        }
    }
    ResponseBody::Delta(ops)
}

/// Pieces of the old version of a file that its new version no longer has: what a delta
/// request offers the responder.
#[derive(Default)]
pub(crate) struct OldPieces {
    /// Offered pieces, in the order the request lists them.
    pub have: Vec<NewChunk>,
    /// Where each lies in the old file.
    pub offsets: Vec<u64>,
}

impl OldPieces {
    /// Cuts the runs of `old`'s chunks that `new` does not keep (the bytes an edit replaced)
    /// into pieces, reading them from `file` (the old version, still at its path). Each run is
    /// cut from its first byte, as the responder cuts a chunk from its first byte: a new
    /// chunk that starts where a dropped run starts shares its leading pieces with it, and
    /// one that ends with the run's tail shares the pieces after the cut points resync.
    /// At most [`MAX_HAVE`] pieces.
    pub(crate) fn of(file: &File, old: &FileRecord, new: &FileRecord) -> Self {
        let kept: std::collections::BTreeSet<(Hash, u32)> =
            new.chunks.iter().map(|c| (c.hash, c.len)).collect();
        let mut out = Self::default();
        let mut run: Vec<ChunkRef> = Vec::new();
        let mut runs = Vec::new();
        for chunk in &old.chunks {
            if kept.contains(&(chunk.hash, chunk.len)) {
                runs.extend((!run.is_empty()).then(|| std::mem::take(&mut run)));
            } else {
                run.push(*chunk);
            }
        }
        runs.extend((!run.is_empty()).then_some(run));
        for run in runs {
            let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
            let len = last.offset + u64::from(last.len) - first.offset;
            let Ok(len) = u32::try_from(len) else { continue };
            if len > 4 * MAX_REQUEST {
                continue;
            }
            let Ok(data) = read_at(file, first.offset, len) else { continue };
            for (offset, piece) in pieces(&data) {
                if out.have.len() >= MAX_HAVE {
                    return out;
                }
                out.have.push(piece);
                out.offsets.push(first.offset + offset as u64);
            }
        }
        out
    }

    /// The chunk a delta answer describes, from the old file's pieces and the answer's
    /// bytes; `None` if the answer names a piece not offered, a local piece no longer matches
    /// its hash (the old file changed) or the result is not `chunk`. Returns the bytes and
    /// how many of them came from the wire.
    pub(crate) fn rebuild(
        &self,
        file: &File,
        ops: Vec<DeltaOp>,
        chunk: &ChunkRef,
    ) -> Option<(Vec<u8>, u64)> {
        let mut out = Vec::with_capacity(chunk.len as usize);
        let mut wire = 0u64;
        for op in ops {
            match op {
                DeltaOp::Have(idx) => {
                    let idx = idx as usize;
                    let (piece, offset) = (self.have.get(idx)?, *self.offsets.get(idx)?);
                    let bytes = read_at(file, offset, piece.len).ok()?;
                    if Hash::of(&bytes) != piece.hash {
                        return None;
                    }
                    out.extend_from_slice(&bytes);
                }
                DeltaOp::Bytes(bytes) => {
                    wire += bytes.len() as u64;
                    out.extend_from_slice(&bytes);
                }
            }
            if out.len() > chunk.len as usize {
                return None;
            }
        }
        (out.len() == chunk.len as usize && Hash::of(&out) == chunk.hash).then_some((out, wire))
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::model::{EntryKind, RelPath, ShortId, VersionVector};
    use tandem_proto::wire::Request;

    use super::*;

    fn random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn record(chunks: Vec<ChunkRef>) -> FileRecord {
        FileRecord {
            path: RelPath::new("f").unwrap(),
            kind: EntryKind::File,
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            mtime_ns: 0,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::ZERO,
            chunks,
            version: VersionVector::new(),
            sequence: 1,
            deleted: false,
            modified_by: ShortId::new(1),
        }
    }

    fn chunk(data: &[u8], offset: usize, len: usize) -> ChunkRef {
        let bytes = &data[offset..offset + len];
        ChunkRef { offset: offset as u64, len: len as u32, hash: Hash::of(bytes) }
    }

    /// An old file of three 64 KiB chunks; 10 KiB inserted 20 KiB into the middle one, which
    /// the new version cuts as [prefix + insertion + part] and [rest]: both edge chunks come
    /// back mostly as pieces of the old middle chunk, and rebuild exactly.
    #[test]
    fn edge_chunks_of_an_insertion_come_back_mostly_as_old_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let old_data = random(1, 3 * 65_536);
        let inserted = random(2, 10_240);
        let at = 65_536 + 20_480;
        let new_data = [&old_data[..at], &inserted[..], &old_data[at..]].concat();
        let old = record(vec![
            chunk(&old_data, 0, 65_536),
            chunk(&old_data, 65_536, 65_536),
            chunk(&old_data, 131_072, 65_536),
        ]);
        let edges = [(65_536, 40_000), (105_536, 65_536 + 10_240 - 40_000)];
        let mut new_chunks = vec![chunk(&new_data, 0, 65_536)];
        new_chunks.extend(edges.iter().map(|&(o, l)| chunk(&new_data, o, l)));
        new_chunks.push(chunk(&new_data, 65_536 * 2 + 10_240, 65_536));
        let new = record(new_chunks.clone());
        std::fs::write(dir.path().join("f"), &old_data).unwrap();
        let old_file = File::open(dir.path().join("f")).unwrap();
        let offered = OldPieces::of(&old_file, &old, &new);
        assert!(!offered.have.is_empty() && offered.have.len() < 64, "{}", offered.have.len());

        // the responder holds the new version
        let responder = tempfile::tempdir().unwrap();
        std::fs::write(responder.path().join("f"), &new_data).unwrap();
        let fs = FolderFs::new(responder.path().to_path_buf());
        let mut sent = 0;
        for edge in &new_chunks[1..3] {
            let request = Request {
                id: 1,
                folder: tandem_proto::model::FolderId::new("docs").unwrap(),
                path: RelPath::new("f").unwrap(),
                offset: edge.offset,
                size: edge.len,
                hash: edge.hash,
            };
            let delta = DeltaRequest { request, have: offered.have.clone() };
            let ResponseBody::Delta(ops) = answer(&fs, &delta) else { panic!("no delta") };
            let (bytes, wire) = offered.rebuild(&old_file, ops, edge).expect("rebuilds");
            let (o, l) = (edge.offset as usize, edge.len as usize);
            assert_eq!(bytes, new_data[o..o + l]);
            sent += wire;
        }
        // the 10 KiB inserted, plus the pieces the insertion cut and the resync costs
        assert!((10_240..10_240 + 48 * 1024).contains(&sent), "sent {sent}");
    }

    #[test]
    fn a_stale_old_file_or_a_wrong_answer_rebuilds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = random(3, 65_536);
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let file = File::open(dir.path().join("f")).unwrap();
        let old = record(vec![chunk(&data, 0, 65_536)]);
        let offered = OldPieces::of(&file, &old, &record(Vec::new()));
        let whole = chunk(&data, 0, 65_536);
        let all: Vec<_> = (0..offered.have.len() as u32).map(DeltaOp::Have).collect();
        assert!(offered.rebuild(&file, all.clone(), &whole).is_some());
        // a piece that is not offered, bytes past the chunk, the wrong bytes
        assert!(offered.rebuild(&file, vec![DeltaOp::Have(9999)], &whole).is_none());
        assert!(offered.rebuild(&file, vec![DeltaOp::Bytes(vec![0; 70_000])], &whole).is_none());
        assert!(offered.rebuild(&file, vec![DeltaOp::Bytes(vec![0; 65_536])], &whole).is_none());
        // the old file changed under its pieces
        std::fs::write(dir.path().join("f"), random(4, 65_536)).unwrap();
        assert!(offered.rebuild(&file, all, &whole).is_none());
    }
}

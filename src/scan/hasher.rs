//! Chunk and hash a file in one read pass: FastCDC v2020 cut points, BLAKE3 per chunk and
//! BLAKE3 of the whole file, over a reused page-aligned buffer.
//!
//! Why not mmap: a file truncated while it is mapped kills the process with SIGBUS, and a
//! sync engine reads files that users are editing. Why not `StreamCDC`: it copies every
//! chunk into a fresh `Vec` and halves throughput. Why aligned: `read` into a buffer 16 bytes
//! past a page boundary runs 5× slower on this hardware (anchors/limits.md §4.1).
//!
//! FastCDC decides a cut from the bytes after the chunk start only, so chunking the buffer,
//! keeping the unfinished tail and continuing after a refill yields exactly the cut points of
//! chunking the whole file at once. A file whose identity, size or mtime changes while it is
//! read is reported as [`HashError::Changed`], never recorded half-read.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use fastcdc::v2020::FastCDC;
use tandem_proto::model::{ChunkRef, Hash};

use crate::store::StatKey;

/// Page alignment of the read buffer.
const ALIGN: usize = 4096;
/// Smallest average chunk size; files get bigger chunks so their chunk lists stay bounded.
const MIN_AVG_CHUNK: usize = 64 << 10;
/// Largest average chunk size.
const MAX_AVG_CHUNK: usize = 1 << 20;
/// Chunks per file above which the average chunk size doubles.
const TARGET_CHUNKS: u64 = 16 << 10;

/// FastCDC size parameters for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// Smallest chunk, except the last.
    pub min: usize,
    /// Target average chunk size.
    pub avg: usize,
    /// Largest chunk.
    pub max: usize,
}

impl ChunkParams {
    /// Parameters for a file of `size` bytes: 64 KiB average, doubled until the file has at
    /// most about 16,384 chunks (1 MiB average at most), min = avg/4, max = avg×4.
    pub fn for_size(size: u64) -> Self {
        let mut avg = MIN_AVG_CHUNK;
        while avg < MAX_AVG_CHUNK && size / avg as u64 > TARGET_CHUNKS {
            avg *= 2;
        }
        Self { min: avg / 4, avg, max: avg * 4 }
    }

    /// Parameters for a new version of a file whose previous version was cut with
    /// `previous`: kept while the file has at most twice the target chunk count (and its
    /// chunks are not far coarser than a fresh choice), so an edit that moves the size across
    /// a doubling boundary still shares its unchanged chunks with the previous version. (A
    /// 1 MiB insertion into a 1 GiB file otherwise re-cut every chunk and re-sent the file.)
    pub fn for_update(size: u64, previous: Option<Self>) -> Self {
        let fresh = Self::for_size(size);
        match previous {
            Some(p) if size / p.avg as u64 <= 2 * TARGET_CHUNKS && p.avg <= 4 * fresh.avg => p,
            _ => fresh,
        }
    }

    /// The parameters a version of `size` bytes cut into `chunks` chunks was most likely
    /// cut with: the power-of-two average nearest (in ratio) to its mean chunk size. `None`
    /// with fewer than two chunks (nothing to preserve).
    pub fn from_chunk_count(size: u64, chunks: usize) -> Option<Self> {
        if chunks < 2 {
            return None;
        }
        let mean = size as f64 / chunks as f64;
        let mut best = MIN_AVG_CHUNK;
        let mut avg = MIN_AVG_CHUNK;
        while avg <= MAX_AVG_CHUNK {
            if (mean / avg as f64).ln().abs() < (mean / best as f64).ln().abs() {
                best = avg;
            }
            avg *= 2;
        }
        Some(Self { min: best / 4, avg: best, max: best * 4 })
    }
}

/// A page-aligned byte buffer (a `Vec` sliced at a 4096-byte boundary, no unsafe).
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes starting on a page boundary.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { storage, start, len }
    }

    /// The buffer.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The result of hashing one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashed {
    /// Bytes read.
    pub size: u64,
    /// BLAKE3 of the whole file (what `b3sum` prints).
    pub hash: Hash,
    /// The content-defined chunks in order.
    pub chunks: Vec<ChunkRef>,
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file changed (or was replaced) between the stat and the end of the read.
    #[error("changed while being read")]
    Changed,
}

/// A reusable chunk+hash worker; one per thread, it owns the aligned read buffer.
pub struct FileHasher {
    buf: AlignedBuf,
}

impl FileHasher {
    /// A hasher whose buffer holds `capacity` bytes (at least twice the largest chunk).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2 * ChunkParams::for_size(u64::MAX).max);
        Self { buf: AlignedBuf::new(capacity) }
    }

    /// The read buffer's size.
    pub fn capacity(&self) -> usize {
        self.buf.len
    }

    /// Hashes the file at `path`, which a stat just before described as `expected`.
    pub fn hash_file(&mut self, path: &Path, expected: &StatKey) -> Result<Hashed, HashError> {
        self.hash_file_with(path, expected, ChunkParams::for_size(expected.size))
    }

    /// [`Self::hash_file`], cutting chunks with `params`.
    pub fn hash_file_with(
        &mut self,
        path: &Path,
        expected: &StatKey,
        params: ChunkParams,
    ) -> Result<Hashed, HashError> {
        let mut file = File::open(path)?;
        if !StatKey::from_metadata(&file.metadata()?).same_file_version(expected) {
            return Err(HashError::Changed);
        }
        let hashed = self.hash_reader_with(&mut file, params)?;
        let after = StatKey::from_metadata(&file.metadata()?);
        if hashed.size != expected.size || !after.same_file_version(expected) {
            return Err(HashError::Changed);
        }
        Ok(hashed)
    }

    /// Chunks and hashes everything `reader` yields; `size_hint` picks the chunk sizes.
    pub fn hash_reader(&mut self, reader: &mut impl Read, size_hint: u64) -> io::Result<Hashed> {
        self.hash_reader_with(reader, ChunkParams::for_size(size_hint))
    }

    /// Chunks and hashes everything `reader` yields with `params`.
    pub fn hash_reader_with(
        &mut self,
        reader: &mut impl Read,
        params: ChunkParams,
    ) -> io::Result<Hashed> {
        let mut state = HashState::default();
        let mut filled = 0usize;
        let mut eof = false;
        while !eof {
            let buf = self.buf.bytes_mut();
            let space = buf.len() - filled;
            let read = fill(reader, &mut buf[filled..])?;
            eof = read < space;
            filled += read;
            let consumed = state.consume(&buf[..filled], params, eof);
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
        Ok(state.finish())
    }
}

/// Running state across buffer refills.
#[derive(Default)]
struct HashState {
    offset: u64,
    whole: blake3::Hasher,
    chunks: Vec<ChunkRef>,
}

impl HashState {
    /// Cuts and hashes the finished chunks in `data`; returns the bytes consumed.
    fn consume(&mut self, data: &[u8], params: ChunkParams, eof: bool) -> usize {
        let mut consumed = 0;
        for cut in FastCDC::new(data, params.min, params.avg, params.max) {
            let end = cut.offset + cut.length;
            if !eof && end == data.len() {
                break; // maybe cut short by the buffer end: redo after the refill
            }
            let chunk = &data[cut.offset..end];
            let hash = Hash::from(blake3::hash(chunk));
            let only_chunk = eof && self.chunks.is_empty() && end == data.len();
            if !only_chunk {
                self.whole.update(chunk); // a single-chunk file's hash is its chunk's hash
            }
            // chunk lengths are bounded by ChunkParams::max (4 MiB), so they fit in u32
            let len = u32::try_from(cut.length).unwrap_or(u32::MAX);
            self.chunks.push(ChunkRef { offset: self.offset, len, hash });
            self.offset += cut.length as u64;
            consumed = end;
        }
        consumed
    }

    fn finish(self) -> Hashed {
        let hash = match self.chunks.as_slice() {
            [only] => only.hash,
            _ => Hash::from(self.whole.finalize()),
        };
        Hashed { size: self.offset, hash, chunks: self.chunks }
    }
}

/// Reads until `buf` is full or the reader is at end of file.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match reader.read(&mut buf[total..]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn check(data: &[u8], capacity: usize) -> Hashed {
        let mut hasher = FileHasher::new(capacity);
        let hashed = hasher.hash_reader(&mut &data[..], data.len() as u64).unwrap();
        assert_eq!(hashed.size, data.len() as u64);
        assert_eq!(hashed.hash, Hash::of(data), "whole-file hash must equal b3sum's");
        let mut offset = 0;
        for chunk in &hashed.chunks {
            assert_eq!(chunk.offset, offset);
            let bytes = &data[offset as usize..offset as usize + chunk.len as usize];
            assert_eq!(chunk.hash, Hash::of(bytes));
            offset += u64::from(chunk.len);
        }
        assert_eq!(offset, data.len() as u64);
        hashed
    }

    #[test]
    fn buffer_refills_do_not_move_cut_points() {
        let data = pseudo_random(5 << 20, 1);
        let params = ChunkParams::for_size(data.len() as u64);
        let expected: Vec<(usize, usize)> = FastCDC::new(&data, params.min, params.avg, params.max)
            .map(|c| (c.offset, c.length))
            .collect();
        let hashed = check(&data, 0); // smallest buffer: many refills
        let got: Vec<(usize, usize)> =
            hashed.chunks.iter().map(|c| (c.offset as usize, c.len as usize)).collect();
        assert_eq!(got, expected);
        assert!(hashed.chunks.len() > 20);
    }

    #[test]
    fn empty_small_and_buffer_sized_inputs_hash_like_b3sum() {
        assert!(check(&[], 0).chunks.is_empty());
        assert_eq!(check(b"x", 0).chunks.len(), 1);
        let exact = pseudo_random(FileHasher::new(0).capacity(), 2);
        check(&exact, 0);
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(4 << 20, 3);
        let mut edited = data[..2 << 20].to_vec();
        edited.extend_from_slice(&pseudo_random(1000, 4));
        edited.extend_from_slice(&data[2 << 20..]);
        let before = check(&data, 0);
        let after = check(&edited, 0);
        let old: std::collections::HashSet<Hash> = before.chunks.iter().map(|c| c.hash).collect();
        let new_chunks = after.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(new_chunks <= 3, "{new_chunks} chunks changed");
    }

    #[test]
    fn chunk_lists_stay_bounded_for_huge_files() {
        let params = ChunkParams::for_size(100 << 30);
        assert_eq!(params.avg, MAX_AVG_CHUNK);
        assert_eq!(ChunkParams::for_size(1 << 30).avg, MIN_AVG_CHUNK);
        assert!((10u64 << 30) / ChunkParams::for_size(10 << 30).avg as u64 <= TARGET_CHUNKS);
    }

    #[test]
    fn a_file_growing_or_shrinking_across_a_doubling_boundary_keeps_its_chunk_sizes() {
        let (gib, mib) = (1u64 << 30, 1u64 << 20);
        let before = ChunkParams::for_size(gib - 2 * mib);
        assert_eq!(before.avg, MIN_AVG_CHUNK);
        assert_eq!(ChunkParams::for_size(gib + mib).avg, 2 * MIN_AVG_CHUNK, "the boundary");
        assert_eq!(ChunkParams::for_update(gib + mib, Some(before)), before);
        let coarse = ChunkParams::for_size(gib + mib);
        assert_eq!(ChunkParams::for_update(gib - mib, Some(coarse)), coarse);
        // far past the boundary the chunk list would grow too long: fresh parameters
        assert_eq!(ChunkParams::for_update(3 * gib, Some(before)), ChunkParams::for_size(3 * gib));
        // a file that shrank to a fraction gets fresh, finer chunks
        assert_eq!(
            ChunkParams::for_update(mib, Some(ChunkParams::for_size(64 * gib))).avg,
            MIN_AVG_CHUNK
        );
        assert_eq!(ChunkParams::for_update(gib, None), ChunkParams::for_size(gib));
    }

    #[test]
    fn the_parameters_of_an_indexed_version_are_recovered_from_its_chunk_count() {
        let mut hasher = FileHasher::new(0);
        let data = pseudo_random(9 << 20, 7);
        for avg in [MIN_AVG_CHUNK, 2 * MIN_AVG_CHUNK, 4 * MIN_AVG_CHUNK] {
            let params = ChunkParams { min: avg / 4, avg, max: avg * 4 };
            let hashed = hasher.hash_reader_with(&mut &data[..], params).unwrap();
            let found = ChunkParams::from_chunk_count(hashed.size, hashed.chunks.len());
            assert_eq!(found, Some(params), "{} chunks", hashed.chunks.len());
        }
        assert_eq!(ChunkParams::from_chunk_count(100, 1), None);
    }
}

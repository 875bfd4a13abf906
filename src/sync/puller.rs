//! Fetching a file's content: chunks come from local files first (the planner's reuse
//! hints, then the chunk-location table), then from connected peers that announced the
//! same version, many requests in flight. Every chunk's BLAKE3 is checked before it is
//! written, and the whole file's hash is checked before it is installed.
//!
//! A partial temp file left by an interrupted transfer is reused: chunks already in it that
//! verify are not fetched again. A new temp file starts as one hole, so the zero runs of a
//! sparse file are neither fetched nor written: they stay holes.
//!
//! Why the whole-file hash is computed while the file is assembled (`Digest`), and why
//! writeback is started during the transfer: done after the last chunk, hashing a 1 GiB
//! file again and then waiting for its fsync to write 1 GiB were the serial tail of every
//! large transfer. A file of one chunk (most small files) takes a shorter road: its chunk
//! is fetched first, then one blocking step writes, fsyncs and renames it; files of up to
//! 64 KiB and one chunk go that road in groups of up to 64 (`pull_small_files`), which share
//! one read view of the index, one blocking step and one flush, because per file those
//! costs outweighed the bytes. A file of up to 4 MiB none of whose chunks is here is fetched
//! in one request for the whole file (its hash is the request's hash) instead of one per
//! chunk, since small files have small chunks.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tandem_proto::model::{ChunkRef, DeviceId, FileRecord, FolderId, Hash, RelPath};
use tandem_proto::rules::LocalChunk;
use tandem_proto::wire::{
    CloseCode, DeltaRequest, EDITS_VERSION, ErrorCode, MAX_REQUEST, Message, Request, ResponseBody,
};

use crate::net::conn::{FramedRecv, FramedSend};
use crate::store::{ChunkLocation, Index, LocalRecord, Snapshot, StatKey};
use crate::sync::Inner;
use crate::sync::delta::{DELTA_MIN_CHUNK, OldPieces};
use crate::sync::writer::{ApplyError, FolderFs, NewFile, io_at};

/// Requests in flight per file.
const PIPELINE: usize = 32;

/// What one pull needs (owned: pulls run concurrently with the rest of the plan).
pub(crate) struct PullJob {
    /// The folder.
    pub folder: FolderId,
    /// Its filesystem.
    pub fs: FolderFs,
    /// The version to write.
    pub record: FileRecord,
    /// Chunks the planner found in local files.
    pub reuse: Vec<LocalChunk>,
    /// Peers that announced this version.
    pub sources: Vec<DeviceId>,
    /// What the index says is at the target now.
    pub indexed: Option<LocalRecord>,
}

/// Downloads `job.record` into its temp file and installs it. Disk work runs on the
/// blocking pool; only the network waits happen on the async workers.
pub(crate) async fn pull_file(inner: &Arc<Inner>, job: PullJob) -> Result<(), ApplyError> {
    if let [only] = job.record.chunks.as_slice() {
        let only = *only;
        return pull_single(inner, job, only).await;
    }
    let job = Arc::new(job);
    let (file, missing, digest, old) = {
        let (inner, job) = (inner.clone(), job.clone());
        blocking(move || prepare(&inner, &job)).await??
    };
    let none_here = !missing.is_empty() && missing.len() == job.record.chunks.len();
    if none_here && job.record.size <= u64::from(MAX_REQUEST) {
        return pull_whole(inner, job, file).await;
    }
    let assembly = Arc::new(Assembly {
        file,
        digest: Mutex::new(digest),
        writing_back: AtomicBool::new(false),
    });
    fetch_chunks(inner, &job, &assembly, missing, old).await?;
    blocking(move || {
        let digest = assembly.digest.lock().map_err(|_| poisoned())?.take();
        digest.finish(&assembly.file, &job.record)?;
        job.fs.install(&assembly.file, &job.record, job.indexed.as_ref())
    })
    .await?
}

/// A file of exactly one chunk: its bytes come from a local copy or a peer (verified
/// against the chunk hash, which must be the file's hash), then one blocking step writes
/// the temp file and installs it. Nothing to resume: the chunk is the whole file.
async fn pull_single(inner: &Arc<Inner>, job: PullJob, chunk: ChunkRef) -> Result<(), ApplyError> {
    let record = &job.record;
    if chunk.offset != 0 || u64::from(chunk.len) != record.size || chunk.hash != record.hash {
        let actual = chunk.hash;
        return Err(ApplyError::HashMismatch {
            path: record.path.clone(),
            expected: record.hash,
            actual,
        });
    }
    // a point lookup in the index and one read of at most one chunk of a local file
    let mut lookups = Lookups::new(&inner.index);
    let local = local_chunk(&mut lookups, &job, 0, &chunk);
    let data = match local.or_else(|| local_whole(&mut lookups, &job)) {
        Some(data) => {
            inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            data
        }
        None => {
            connected_source(inner, &job)?;
            fetch_chunk(inner, 0, &job, &chunk).await?
        }
    };
    blocking(move || {
        let file = job.fs.create_temp(&job.record)?;
        file.write_all_at(&data, 0).map_err(io_at(&job.record.path))?;
        job.fs.install(&file, &job.record, job.indexed.as_ref())
    })
    .await?
}

/// Files of at most this size whose content is one chunk (or none) are pulled in groups
/// (`pull_small_files`); a group holds its files' content in memory until it installs them.
pub(crate) const SMALL_FILE: u64 = 64 << 10;

/// True when `record` is pulled with others in a group: a file of at most [`SMALL_FILE`]
/// bytes whose content is one chunk (or, empty, none).
pub(crate) fn pulled_in_group(record: &FileRecord) -> bool {
    record.size <= SMALL_FILE && record.chunks.len() <= 1
}

/// What a pull achieved: the stat of the installed file when the pull knows it.
pub(crate) type Pulled = Result<Option<StatKey>, ApplyError>;

/// Pulls a group of small files (see [`pulled_in_group`]), each tagged with the caller's
/// index: their content from local files (one read view of the index for the group) or
/// peers (all requests at once), verified, then all installed in one blocking step
/// ([`FolderFs::install_many`]: one shared flush, one directory lookup per directory).
///
/// Why not one pull each: for many files of a few KiB, a thread hop, a flush wait and an
/// index read transaction per file cost more than the files' bytes. As for one file of one
/// chunk, nothing is written before the content is here and verified, so the temp files
/// exist only during the install.
pub(crate) async fn pull_small_files(
    inner: &Arc<Inner>,
    jobs: Vec<(usize, PullJob)>,
) -> Vec<(usize, Pulled)> {
    let (mut done, mut ready, wanted) = local_contents(inner, jobs);
    let fetches = wanted.into_iter().map(|(idx, job, chunk)| async move {
        let fetched = fetch_chunk(inner, idx, &job, &chunk).await;
        (idx, job, fetched)
    });
    let mut fetched = stream::iter(fetches).buffer_unordered(MAX_GROUP);
    while let Some((idx, job, result)) = fetched.next().await {
        match result {
            Ok(data) => ready.push((idx, job, data)),
            Err(e) => done.push((idx, Err(e))),
        }
    }
    drop(fetched);
    let Some(fs) = ready.first().map(|(_, job, _)| job.fs.clone()) else { return done };
    let (idxs, files): (Vec<usize>, Vec<NewFile>) = ready
        .into_iter()
        .map(|(idx, job, data)| {
            let PullJob { record, indexed, .. } = job;
            (idx, NewFile { record, indexed, data })
        })
        .unzip();
    match blocking(move || fs.install_many(&files)).await {
        Ok(installed) => {
            done.extend(idxs.into_iter().zip(installed.into_iter().map(|r| r.map(Some))));
        }
        Err(e) => {
            let text = e.to_string();
            done.extend(idxs.into_iter().map(|idx| (idx, Err(ApplyError::Store(text.clone())))));
        }
    }
    done
}

/// Files a group pulls at most (see [`pull_small_files`]).
pub(crate) const MAX_GROUP: usize = 64;

/// A group's files sorted by where their content comes from: failed (a record that does not
/// describe its single chunk, or no connected source), here (a local file with the content),
/// or to fetch (its chunk).
#[allow(clippy::type_complexity)]
fn local_contents(
    inner: &Inner,
    jobs: Vec<(usize, PullJob)>,
) -> (Vec<(usize, Pulled)>, Vec<(usize, PullJob, Vec<u8>)>, Vec<(usize, PullJob, ChunkRef)>) {
    let (mut done, mut ready, mut wanted) = (Vec::new(), Vec::new(), Vec::new());
    let mut lookups = Lookups::new(&inner.index);
    for (idx, job) in jobs {
        let record = &job.record;
        let Some(&chunk) = record.chunks.first() else {
            // no chunk: an empty file, which is what its hash must say
            if record.size == 0 && record.hash == Hash::of(b"") {
                ready.push((idx, job, Vec::new()));
            } else {
                done.push((idx, Err(mismatch(record, Hash::of(b"")))));
            }
            continue;
        };
        if chunk.offset != 0 || u64::from(chunk.len) != record.size || chunk.hash != record.hash {
            done.push((idx, Err(mismatch(record, chunk.hash))));
            continue;
        }
        let local = local_chunk(&mut lookups, &job, 0, &chunk);
        match local.or_else(|| local_whole(&mut lookups, &job)) {
            Some(data) => {
                inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
                ready.push((idx, job, data));
            }
            None => match connected_source(inner, &job) {
                Ok(()) => wanted.push((idx, job, chunk)),
                Err(e) => done.push((idx, Err(e))),
            },
        }
    }
    (done, ready, wanted)
}

fn mismatch(record: &FileRecord, actual: Hash) -> ApplyError {
    ApplyError::HashMismatch { path: record.path.clone(), expected: record.hash, actual }
}

/// A file none of whose chunks is here, small enough for one request: fetched whole, in one
/// request whose hash is the file's own, instead of one request per chunk (a 40 KiB file cut
/// into 2 KiB chunks would otherwise cost 20 round trips, streams and reads on both sides).
/// Every byte is verified by the file hash. The record's chunk list is not checked against
/// the bytes here: whoever uses a chunk later (a local copy, a peer's request) verifies it.
async fn pull_whole(inner: &Arc<Inner>, job: Arc<PullJob>, file: File) -> Result<(), ApplyError> {
    let record = &job.record;
    let len = u32::try_from(record.size)
        .map_err(|_| ApplyError::Store("file too large for one request".to_string()))?;
    let whole = ChunkRef { offset: 0, len, hash: record.hash };
    let data = fetch_chunk(inner, 0, &job, &whole).await?;
    blocking(move || {
        file.write_all_at(&data, 0).map_err(io_at(&job.record.path))?;
        job.fs.install(&file, &job.record, job.indexed.as_ref())
    })
    .await?
}

/// A multi-chunk file being assembled: its temp file, the running whole-file hash, and
/// whether a writeback of its pages is under way.
struct Assembly {
    file: File,
    digest: Mutex<Digest>,
    writing_back: AtomicBool,
}

fn poisoned() -> ApplyError {
    ApplyError::Store("internal: a transfer's state was poisoned by a panic".to_string())
}

/// Bytes of earlier, out-of-order chunks read back from the temp file per landed chunk (on
/// an async worker); the rest is read when the file is complete, on the blocking pool.
const CATCH_UP_BUDGET: u64 = 4 << 20;
/// Bytes written between two background writebacks of a file being assembled.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// The whole-file hash, computed in file order while the file is assembled: a chunk that
/// lands where the hash has got to is hashed from memory; chunks that landed out of order
/// are read back from the temp file when the hash reaches them.
#[derive(Default)]
struct Digest {
    hasher: blake3::Hasher,
    /// Index of the first chunk not hashed yet.
    next: usize,
    /// Bytes hashed so far (chunks must be contiguous from offset 0).
    hashed: u64,
    /// Chunks hashed at an offset other than `hashed`: the record's chunks do not tile it.
    gap: bool,
    /// Per chunk: its bytes are in the temp file.
    ready: Vec<bool>,
    /// Bytes written since the last writeback started.
    unflushed: u64,
}

impl Digest {
    fn new(chunks: usize) -> Self {
        Self { ready: vec![false; chunks], ..Self::default() }
    }

    fn take(&mut self) -> Self {
        std::mem::take(self)
    }

    fn feed(&mut self, chunk: &ChunkRef, data: &[u8]) {
        self.gap |= chunk.offset != self.hashed || data.len() != chunk.len as usize;
        self.hasher.update(data);
        self.hashed += data.len() as u64;
        self.next += 1;
    }

    /// Chunk `idx` is in the temp file; `data` is its content when at hand (`None`: a hole).
    fn landed(&mut self, idx: usize, data: Option<&[u8]>, chunks: &[ChunkRef]) {
        self.ready[idx] = true;
        if idx == self.next {
            match data {
                Some(data) => self.feed(&chunks[idx], data),
                None => self.feed_zeros(&chunks[idx]),
            }
        }
    }

    fn feed_zeros(&mut self, chunk: &ChunkRef) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        self.gap |= chunk.offset != self.hashed;
        let mut left = chunk.len as usize;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.hasher.update(&ZEROS[..n]);
            left -= n;
        }
        self.hashed += u64::from(chunk.len);
        self.next += 1;
    }

    /// Hashes the chunks that landed out of order and are next in file order, reading
    /// them back from `file`, up to about `budget` bytes.
    fn catch_up(&mut self, file: &File, chunks: &[ChunkRef], budget: u64) -> std::io::Result<()> {
        let mut read = 0u64;
        while self.next < chunks.len() && self.ready[self.next] && read < budget {
            let chunk = chunks[self.next];
            let data = read_at(file, chunk.offset, chunk.len)?;
            self.feed(&chunk, &data);
            read += u64::from(chunk.len);
        }
        Ok(())
    }

    /// The assembled file must hash to the record's hash.
    fn finish(mut self, file: &File, record: &FileRecord) -> Result<(), ApplyError> {
        self.catch_up(file, &record.chunks, u64::MAX).map_err(io_at(&record.path))?;
        let actual = Hash::from(self.hasher.finalize());
        let whole = self.next == record.chunks.len() && !self.gap && self.hashed == record.size;
        if whole && actual == record.hash {
            Ok(())
        } else {
            Err(ApplyError::HashMismatch {
                path: record.path.clone(),
                expected: record.hash,
                actual,
            })
        }
    }
}

/// Opens the temp file and fills what is already available locally; returns the chunks
/// still missing (with their index in the record), the whole-file hash of the prefix that
/// is complete, and the pieces of the old version that edge chunks may be rebuilt from.
#[allow(clippy::type_complexity)]
fn prepare(
    inner: &Inner,
    job: &PullJob,
) -> Result<(File, Vec<(usize, ChunkRef)>, Digest, Option<Arc<OldSource>>), ApplyError> {
    let (file, existed) = job.fs.open_temp(&job.record)?;
    let chunks = &job.record.chunks;
    let mut digest = Digest::new(chunks.len());
    let mut missing = Vec::new();
    let mut zeros = ZeroChunk::new();
    let mut lookups = Lookups::new(&inner.index);
    for (idx, chunk) in chunks.iter().enumerate() {
        if existed && let Some(data) = read_matching(&file, chunk) {
            inner.stats.resumed.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            digest.landed(idx, Some(&data), chunks);
            continue;
        }
        if !existed && zeros.matches(chunk) {
            // a fresh temp file is all holes: a run of zeros (a sparse file's hole) needs
            // neither a transfer nor a write, and stays a hole on this disk too
            inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            digest.landed(idx, None, chunks);
            continue;
        }
        if let Some(data) = local_chunk(&mut lookups, job, idx, chunk) {
            file.write_all_at(&data, chunk.offset).map_err(io_at(&job.record.path))?;
            inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            digest.landed(idx, Some(&data), chunks);
            continue;
        }
        missing.push((idx, *chunk));
    }
    if missing.len() == chunks.len()
        && !missing.is_empty()
        && let Some(data) = local_whole(&mut lookups, job)
    {
        // none of its chunks is located, but a file with the same content is here
        file.write_all_at(&data, 0).map_err(io_at(&job.record.path))?;
        inner.stats.reused.fetch_add(job.record.size, Ordering::Relaxed);
        for (idx, chunk) in missing.drain(..) {
            let at = usize::try_from(chunk.offset).unwrap_or(usize::MAX);
            let bytes = data.get(at..at.saturating_add(chunk.len as usize)).unwrap_or_default();
            digest.landed(idx, Some(bytes), chunks);
        }
    }
    let v2 = job.sources.iter().any(|d| inner.speaks(d) >= EDITS_VERSION);
    let old = if v2 { old_source(job, &missing) } else { None };
    Ok((file, missing, digest, old))
}

/// The old version of a file, kept open while its new version is assembled, with the
/// pieces of it the new version dropped (`sync::delta`).
struct OldSource {
    file: File,
    pieces: OldPieces,
}

/// Which missing chunks lie at the edges of an edit: the first two and last two of each run
/// of consecutive missing chunks, on the sides where the run meets a chunk that is here.
/// Their bytes are partly the old version's: the chunk where the edit begins starts with
/// old bytes, and the cut points after the edit resynchronise within a chunk or two, so the
/// old bytes there can end up in the last chunk of the run or the one before it.
fn edges(missing: &[(usize, ChunkRef)], chunks: usize) -> Vec<bool> {
    const DEPTH: usize = 2;
    let mut out = vec![false; missing.len()];
    let mut start = 0;
    while start < missing.len() {
        let mut end = start + 1;
        while end < missing.len() && missing[end].0 == missing[end - 1].0 + 1 {
            end += 1;
        }
        // missing[start..end] is a run of consecutive chunk indices
        let (first, last) = (missing[start].0, missing[end - 1].0);
        if first > 0 {
            out[start..end.min(start + DEPTH)].iter_mut().for_each(|e| *e = true);
        }
        if last + 1 < chunks {
            out[end.saturating_sub(DEPTH).max(start)..end].iter_mut().for_each(|e| *e = true);
        }
        start = end;
    }
    out
}

/// The old version's pieces, when some missing chunk at an edge is worth a delta and the old
/// version is still at the path (a partly edited file, not a new one).
fn old_source(job: &PullJob, missing: &[(usize, ChunkRef)]) -> Option<Arc<OldSource>> {
    let edge = edges(missing, job.record.chunks.len());
    let wanted = missing.iter().zip(edge).any(|(m, edge)| edge && m.1.len >= DELTA_MIN_CHUNK);
    let old = job.indexed.as_ref().map(|l| &l.record)?;
    if !wanted || old.deleted || old.chunks.len() < 2 || job.fs.check_parents(&old.path).is_err() {
        return None;
    }
    let file = open_nofollow(&job.fs.abs(&old.path)).ok()?;
    let pieces = OldPieces::of(&file, old, &job.record);
    (!pieces.have.is_empty()).then(|| Arc::new(OldSource { file, pieces }))
}

/// The whole content of `job.record` from a local file with the same content — a renamed or
/// copied file whose chunks are too small to be located (`Index::files_with_content`) —
/// verified by its hash. Only for files that fit one request.
fn local_whole(lookups: &mut Lookups<'_>, job: &PullJob) -> Option<Vec<u8>> {
    let record = &job.record;
    if record.size > u64::from(MAX_REQUEST) {
        return None;
    }
    let len = u32::try_from(record.size).ok()?;
    let candidates = lookups.files_with_content(&record.hash);
    let here = candidates.into_iter().filter(|(folder, _)| folder == job.folder.as_str());
    let paths = here.filter_map(|(_, path)| RelPath::new(path).ok());
    paths.take(4).find_map(|from| read_verified(&job.fs, &from, 0, len, &record.hash))
}

/// `len` bytes at `offset` of the local file `from` (never through a symlink), if they hash
/// to `hash`.
fn read_verified(
    fs: &FolderFs,
    from: &RelPath,
    offset: u64,
    len: u32,
    hash: &Hash,
) -> Option<Vec<u8>> {
    let source = fs.open_file(from).ok()?;
    read_at(&source, offset, len).ok().filter(|data| Hash::of(data) == *hash)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApplyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApplyError::Store(format!("internal task failed: {e}")))
}

/// Copies a local file's content to the target (the planner's `CopyLocal`).
pub(crate) fn copy_local(
    fs: &FolderFs,
    from: &RelPath,
    record: &FileRecord,
    indexed: Option<&LocalRecord>,
) -> Result<(), ApplyError> {
    fs.check_parents(from)?;
    let source = open_nofollow(&fs.abs(from)).map_err(io_at(from))?;
    let (file, _) = fs.open_temp(record)?;
    let mut digest = Digest::new(record.chunks.len());
    for (idx, chunk) in record.chunks.iter().enumerate() {
        let data = read_at(&source, chunk.offset, chunk.len).map_err(io_at(from))?;
        if Hash::of(&data) != chunk.hash {
            fs.discard_temp(record);
            return Err(ApplyError::LocalChange(from.clone()));
        }
        file.write_all_at(&data, chunk.offset).map_err(io_at(&record.path))?;
        digest.landed(idx, Some(&data), &record.chunks);
    }
    digest.finish(&file, record)?;
    fs.install(&file, record, indexed)
}

/// Recognizes a chunk of zeros: a run of zeros (a sparse file's hole) never has a cut
/// point, so the chunker cuts it into chunks of the largest size it makes for the file. The
/// hash of such a chunk is computed once, when a chunk of that size first appears.
struct ZeroChunk {
    /// The hash of a run of zeros, per chunk length seen (a run of zeros is cut into
    /// maximum-length chunks, whatever parameters the sender used).
    hashes: Vec<(u32, Hash)>,
}

impl ZeroChunk {
    fn new() -> Self {
        Self { hashes: Vec::new() }
    }

    fn matches(&mut self, chunk: &ChunkRef) -> bool {
        // only the lengths FastCDC uses as a maximum can be a cut run of zeros
        let max_lengths = (0..5).map(|k| (256u32 << 10) << k);
        if !max_lengths.clone().any(|m| m == chunk.len) {
            return false;
        }
        let hash = match self.hashes.iter().find(|(len, _)| *len == chunk.len) {
            Some((_, hash)) => *hash,
            None => {
                let hash = Hash::of(&vec![0; chunk.len as usize]);
                self.hashes.push((chunk.len, hash));
                hash
            }
        };
        chunk.hash == hash
    }
}

/// The chunk's bytes in `file`, if they are there.
fn read_matching(file: &File, chunk: &ChunkRef) -> Option<Vec<u8>> {
    read_at(file, chunk.offset, chunk.len).ok().filter(|data| Hash::of(data) == chunk.hash)
}

/// The chunk's bytes from a local file: the planner's hint first, then the chunk-location
/// table (a few candidates; each is verified).
/// Chunk-location lookups for one file: one read view of the index, opened on the first
/// lookup (a transaction per chunk cost more than the lookups; files of small chunks
/// never look up).
struct Lookups<'a> {
    index: &'a Index,
    snap: Option<Snapshot>,
}

impl<'a> Lookups<'a> {
    fn new(index: &'a Index) -> Self {
        Self { index, snap: None }
    }

    fn snap(&mut self) -> Option<&mut Snapshot> {
        if self.snap.is_none() {
            self.snap = self.index.snapshot().ok();
        }
        self.snap.as_mut()
    }

    fn locations(&mut self, hash: &Hash) -> Vec<ChunkLocation> {
        self.snap().and_then(|snap| snap.chunk_locations(hash).ok()).unwrap_or_default()
    }

    fn files_with_content(&mut self, hash: &Hash) -> Vec<(String, String)> {
        self.snap().and_then(|snap| snap.files_with_content(hash).ok()).unwrap_or_default()
    }
}

fn local_chunk(
    lookups: &mut Lookups<'_>,
    job: &PullJob,
    idx: usize,
    chunk: &ChunkRef,
) -> Option<Vec<u8>> {
    let hinted =
        job.reuse.iter().filter(|r| r.index as usize == idx).map(|r| (r.from.clone(), r.offset));
    // looked up only when the hints did not do, and never for chunks too small to be
    // located (the index keeps no locations for them; a lookup per 2 KiB chunk of every
    // small file would cost more than fetching it)
    let located = std::iter::once(())
        .filter(|()| chunk.len >= crate::store::MIN_LOCATED_CHUNK)
        .flat_map(|()| lookups.locations(&chunk.hash))
        .filter(|loc| loc.folder == job.folder.as_str() && loc.len == chunk.len)
        .filter_map(|loc| RelPath::new(loc.path).ok().map(|p| (p, loc.offset)));
    let mut candidates = hinted.chain(located).take(4);
    candidates
        .find_map(|(from, offset)| read_verified(&job.fs, &from, offset, chunk.len, &chunk.hash))
}

/// Fetches `missing` from peers, `PIPELINE` requests at a time, verifying each chunk,
/// hashing the file as it fills and starting writeback every `WRITEBACK_EVERY` bytes.
async fn fetch_chunks(
    inner: &Arc<Inner>,
    job: &PullJob,
    assembly: &Arc<Assembly>,
    missing: Vec<(usize, ChunkRef)>,
    old: Option<Arc<OldSource>>,
) -> Result<(), ApplyError> {
    if missing.is_empty() {
        return Ok(());
    }
    connected_source(inner, job)?;
    let edge = edges(&missing, job.record.chunks.len());
    let fetches = missing.into_iter().zip(edge).map(|((idx, chunk), edge)| {
        let old = old.clone().filter(|_| edge && chunk.len >= DELTA_MIN_CHUNK);
        async move {
            let delta = match old {
                Some(old) => fetch_delta(inner, job, &chunk, old).await,
                None => None,
            };
            let data = match delta {
                Some(data) => data,
                None => fetch_chunk(inner, idx, job, &chunk).await?,
            };
            let at = io_at(&job.record.path);
            assembly.file.write_all_at(&data, chunk.offset).map_err(at)?;
            let flush = {
                let mut digest = assembly.digest.lock().map_err(|_| poisoned())?;
                digest.landed(idx, Some(&data), &job.record.chunks);
                digest
                    .catch_up(&assembly.file, &job.record.chunks, CATCH_UP_BUDGET)
                    .map_err(io_at(&job.record.path))?;
                digest.unflushed += u64::from(chunk.len);
                digest.unflushed >= WRITEBACK_EVERY && {
                    digest.unflushed = 0;
                    true
                }
            };
            if flush {
                start_writeback(assembly);
            }
            Ok::<(), ApplyError>(())
        }
    });
    let mut results = stream::iter(fetches).buffer_unordered(PIPELINE);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Writes the file's dirty pages to disk in the background (one writeback at a time per
/// file), so the fsync before the rename finds little left to write. An error here is
/// not reported: that fsync reports it.
fn start_writeback(assembly: &Arc<Assembly>) {
    if assembly.writing_back.swap(true, Ordering::AcqRel) {
        return;
    }
    let assembly = assembly.clone();
    tokio::task::spawn_blocking(move || {
        let _ = assembly.file.sync_data();
        assembly.writing_back.store(false, Ordering::Release);
    });
}

/// Fails with [`ApplyError::NoSource`] unless a peer that announced the version is connected.
fn connected_source(inner: &Inner, job: &PullJob) -> Result<(), ApplyError> {
    if job.sources.iter().any(|id| inner.connection(id).is_some()) {
        Ok(())
    } else {
        Err(ApplyError::NoSource(job.record.path.clone()))
    }
}

/// One chunk from the first peer that sends bytes with the right hash. The connection is
/// looked up for every attempt: when a peer's connection is replaced (two devices that
/// dialed each other at once keep one connection, PROTOCOL §9.8), the requests that were in
/// flight on the closed one go on over its successor instead of failing the transfer.
async fn fetch_chunk(
    inner: &Inner,
    n: usize,
    job: &PullJob,
    chunk: &ChunkRef,
) -> Result<Vec<u8>, ApplyError> {
    for attempt in 0..job.sources.len() * 3 {
        let device = &job.sources[(n + attempt) % job.sources.len()];
        let Some((conn, slots)) = inner.link(device) else { continue };
        // at most MAX_IN_FLIGHT requests outstanding per peer, across all transfers
        let Ok(_slot) = slots.acquire_owned().await else { continue };
        let request = chunk_request(inner, job, chunk);
        let id = request.id;
        let answer = match request_once(inner, &conn, Message::Request(request), id).await {
            Ok(ResponseBody::Data(data)) => Ok(data),
            Ok(ResponseBody::Error(code)) => Err(code.to_string()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e),
        };
        match answer {
            Ok(data) if Hash::of(&data) == chunk.hash => {
                inner.stats.network.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Ok(data);
            }
            Ok(data) => {
                inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %conn.remote_address(),
                    "{}: chunk at {} failed verification (got {}); discarded",
                    job.record.path, chunk.offset, Hash::of(&data)
                );
            }
            Err(reason) => {
                tracing::debug!("{}: chunk at {}: {reason}", job.record.path, chunk.offset);
            }
        }
    }
    Err(ApplyError::NoSource(job.record.path.clone()))
}

/// A request for `chunk` of the file `job` pulls, with a fresh id.
fn chunk_request(inner: &Inner, job: &PullJob, chunk: &ChunkRef) -> Request {
    Request {
        id: inner.next_request_id(),
        folder: job.folder.clone(),
        path: job.record.path.clone(),
        offset: chunk.offset,
        size: chunk.len,
        hash: chunk.hash,
    }
}

/// An edge chunk as a delta against the old version's pieces, from a connected source that
/// speaks protocol v2; `None` (fetch it whole) when there is none or anything fails, the
/// rebuilt chunk included. Like `fetch_chunk`, the connection is looked up per attempt, so
/// a connection replaced by its duplicate's (PROTOCOL §9.8) does not cost the delta.
async fn fetch_delta(
    inner: &Inner,
    job: &PullJob,
    chunk: &ChunkRef,
    old: Arc<OldSource>,
) -> Option<Vec<u8>> {
    let mut ops = None;
    // fewer tries than a chunk gets: the whole chunk is the fallback
    for attempt in 0..job.sources.len() * 2 {
        let device = &job.sources[attempt % job.sources.len()];
        if inner.speaks(device) < EDITS_VERSION {
            continue;
        }
        let Some((conn, slots)) = inner.link(device) else { continue };
        let Ok(_slot) = slots.acquire_owned().await else { continue };
        let request = chunk_request(inner, job, chunk);
        let id = request.id;
        let have = old.pieces.have.clone();
        let message = Message::DeltaRequest(DeltaRequest { request, have });
        match request_once(inner, &conn, message, id).await {
            Ok(ResponseBody::Delta(answer)) => {
                ops = Some(answer);
                break;
            }
            other => {
                tracing::debug!(
                    "{}: delta of chunk at {}: {other:?}",
                    job.record.path,
                    chunk.offset
                );
            }
        }
    }
    let (ops, chunk) = (ops?, *chunk);
    let rebuilt = blocking(move || old.pieces.rebuild(&old.file, ops, &chunk)).await.ok()?;
    let Some((data, wire)) = rebuilt else {
        inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{}: the delta of chunk at {} did not rebuild it; fetching it whole",
            job.record.path,
            chunk.offset
        );
        return None;
    };
    inner.stats.network.fetch_add(wire, Ordering::Relaxed);
    inner.stats.reused.fetch_add(u64::from(chunk.len) - wire, Ordering::Relaxed);
    Some(data)
}

/// Longest wait for one response.
const REQUEST_LIMIT: Duration = Duration::from_secs(600);

/// How long a connection may send no stream data at all while our requests wait. A slow
/// link with many requests queued still delivers *some* response within this; a peer that
/// accepts requests and never answers does not, and its connection is closed so the
/// transfer can go on with other peers (or fail, and be retried with backoff).
fn stall_limit(inner: &Inner) -> Duration {
    Duration::from_secs(inner.faults.stall_secs.unwrap_or(30))
}

/// Sends one request on a new stream and reads its response; gives up when the peer stalls.
async fn request_once(
    inner: &Inner,
    conn: &quinn::Connection,
    request: Message,
    id: u64,
) -> Result<ResponseBody, String> {
    let exchange = exchange(conn, request, id);
    tokio::pin!(exchange);
    let stall = stall_limit(inner);
    let started = tokio::time::Instant::now();
    let mut seen = conn.stats().frame_rx.stream;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            () = tokio::time::sleep(stall) => {
                let now = conn.stats().frame_rx.stream;
                if now == seen || started.elapsed() >= REQUEST_LIMIT {
                    let why = format!("sent no data for {} s while requests waited", stall.as_secs());
                    tracing::warn!(peer = %conn.remote_address(), "closing the connection: the peer {why}");
                    conn.close(CloseCode::ProtocolError.as_u32().into(), b"requests unanswered");
                    return Err(format!("the peer {why}"));
                }
                seen = now;
            }
        }
    }
}

/// The request and its response (with the request's `id`) on a new stream.
async fn exchange(
    conn: &quinn::Connection,
    request: Message,
    id: u64,
) -> Result<ResponseBody, String> {
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut tx = FramedSend::new(send);
    tx.send(&request).await.map_err(|e| e.to_string())?;
    tx.finish().map_err(|e| e.to_string())?;
    let mut rx = FramedRecv::new(recv);
    match rx.recv().await.map_err(|e| e.to_string())? {
        Some(Message::Response(r)) if r.id == id => Ok(r.body),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn open_nofollow(path: &std::path::Path) -> std::io::Result<File> {
    File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Reads exactly `len` bytes at `offset`.
pub(crate) fn read_at(file: &File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset)?;
    Ok(data)
}

/// Why a request could not be served.
pub(crate) fn serve_read(fs: &FolderFs, request: &Request) -> Result<Vec<u8>, ErrorCode> {
    if request.size > MAX_REQUEST {
        return Err(ErrorCode::Invalid);
    }
    let file = fs.open_file(&request.path).map_err(|_| ErrorCode::NoSuchFile)?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(ErrorCode::NoSuchFile);
    }
    let data = read_at(&file, request.offset, request.size).map_err(|_| ErrorCode::Changed)?;
    if Hash::of(&data) != request.hash {
        return Err(ErrorCode::Changed);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::{EntryKind, RelPath, VersionVector};

    fn record(chunks: Vec<ChunkRef>, content: &[u8]) -> FileRecord {
        FileRecord {
            path: RelPath::new("f.bin".to_string()).unwrap(),
            kind: EntryKind::File,
            size: content.len() as u64,
            mtime_ns: 0,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::of(content),
            chunks,
            version: VersionVector::default(),
            sequence: 1,
            deleted: false,
            modified_by: tandem_proto::model::ShortId::new(1),
        }
    }

    fn chunked(content: &[u8], len: usize) -> Vec<ChunkRef> {
        content
            .chunks(len)
            .enumerate()
            .map(|(i, c)| ChunkRef {
                offset: (i * len) as u64,
                len: c.len() as u32,
                hash: Hash::of(c),
            })
            .collect()
    }

    /// Lands the chunks in `order`, writing each to the file and catching up with at most
    /// `budget` bytes read back each time, then finishes the digest.
    fn assemble(
        content: &[u8],
        rec: &FileRecord,
        order: &[usize],
        budget: u64,
    ) -> Result<(), ApplyError> {
        let file = tempfile::tempfile().unwrap();
        let mut digest = Digest::new(rec.chunks.len());
        for &i in order {
            let c = rec.chunks[i];
            let data = &content[c.offset as usize..c.offset as usize + c.len as usize];
            file.write_all_at(data, c.offset).unwrap();
            digest.landed(i, Some(data), &rec.chunks);
            digest.catch_up(&file, &rec.chunks, budget).unwrap();
        }
        digest.finish(&file, rec)
    }

    #[test]
    fn the_edges_of_an_edit_are_two_chunks_deep_on_the_sides_next_to_chunks_here() {
        let c = ChunkRef { offset: 0, len: 1, hash: Hash::ZERO };
        let at = |idx: &[usize]| idx.iter().map(|&i| (i, c)).collect::<Vec<_>>();
        // chunks 3..=9 of 12 are missing: 3, 4 and 8, 9 are edges, 5..=7 new bytes only
        let run = edges(&at(&[3, 4, 5, 6, 7, 8, 9]), 12);
        assert_eq!(run, [true, true, false, false, false, true, true]);
        // a run at the start of the file has no left edge; one chunk between two runs
        assert_eq!(edges(&at(&[0, 1, 2, 3, 5]), 7), [false, false, true, true, true]);
        // a new file: nothing here, no edge
        assert_eq!(edges(&at(&[0, 1, 2]), 3), [false, false, false]);
    }

    #[test]
    fn the_digest_of_chunks_landing_in_any_order_is_the_file_hash() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let rec = record(chunked(&content, 4096), &content);
        let n = rec.chunks.len();
        let in_order: Vec<usize> = (0..n).collect();
        let reversed: Vec<usize> = (0..n).rev().collect();
        let interleaved: Vec<usize> = (0..n).step_by(2).chain((1..n).step_by(2)).collect();
        for order in [&in_order, &reversed, &interleaved] {
            for budget in [0, 4096, u64::MAX] {
                assert!(assemble(&content, &rec, order, budget).is_ok(), "{order:?} {budget}");
            }
        }
    }

    #[test]
    fn a_record_whose_chunks_do_not_tile_the_file_fails_the_digest() {
        let content = vec![7u8; 10_000];
        let mut chunks = chunked(&content, 4096);
        // a chunk list that repeats the first chunk instead of the second: every chunk
        // verifies, but the bytes hashed are not the file
        chunks[1] = ChunkRef { offset: 0, ..chunks[0] };
        let rec = record(chunks, &content);
        let result = assemble(&content, &rec, &[0, 1, 2], u64::MAX);
        assert!(matches!(result, Err(ApplyError::HashMismatch { .. })), "{result:?}");
        // and a record whose hash is not its content's
        let mut wrong = record(chunked(&content, 4096), &content);
        wrong.hash = Hash::of(b"something else");
        let result = assemble(&content, &wrong, &[2, 1, 0], 0);
        assert!(matches!(result, Err(ApplyError::HashMismatch { .. })), "{result:?}");
    }

    #[test]
    fn holes_count_as_zeros_in_the_digest() {
        let mut content = vec![0u8; 3 * 4096];
        content[4096 * 2..].fill(9);
        let rec = record(chunked(&content, 4096), &content);
        let file = tempfile::tempfile().unwrap();
        file.set_len(content.len() as u64).unwrap();
        let mut digest = Digest::new(3);
        digest.landed(0, None, &rec.chunks);
        digest.landed(1, None, &rec.chunks);
        file.write_all_at(&content[8192..], 8192).unwrap();
        digest.landed(2, Some(&content[8192..]), &rec.chunks);
        assert!(digest.finish(&file, &rec).is_ok());
    }
}

//! Fetching a file's content: chunks come from local files first (the planner's reuse
//! hints, then the chunk-location table), then from connected peers that announced the
//! same version, many requests in flight. Every chunk's BLAKE3 is checked before it is
//! written, and the whole file's hash is checked before it is installed.
//!
//! A partial temp file left by an interrupted transfer is reused: chunks already in it that
//! verify are not fetched again. A new temp file starts as one hole, so the zero runs of a
//! sparse file are neither fetched nor written: they stay holes.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tandem_proto::model::{ChunkRef, DeviceId, FileRecord, FolderId, Hash, RelPath};
use tandem_proto::rules::LocalChunk;
use tandem_proto::wire::{CloseCode, ErrorCode, Message, Request, ResponseBody};

use crate::net::conn::{FramedRecv, FramedSend};
use crate::store::LocalRecord;
use crate::sync::Inner;
use crate::sync::writer::{ApplyError, FolderFs, io_at};

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
    let job = Arc::new(job);
    let (file, missing) = {
        let (inner, job) = (inner.clone(), job.clone());
        blocking(move || prepare(&inner, &job)).await??
    };
    let file = Arc::new(file);
    fetch_chunks(inner, &job, &file, missing).await?;
    blocking(move || {
        verify_whole(&file, &job.record)?;
        job.fs.install(&file, &job.record, job.indexed.as_ref())
    })
    .await?
}

/// Opens the temp file and fills what is already available locally; returns the chunks
/// still missing.
fn prepare(inner: &Inner, job: &PullJob) -> Result<(File, Vec<ChunkRef>), ApplyError> {
    let (file, existed) = job.fs.open_temp(&job.record)?;
    let mut missing: Vec<ChunkRef> = Vec::new();
    let mut zeros = ZeroChunk::new();
    for (idx, chunk) in job.record.chunks.iter().enumerate() {
        if existed && chunk_matches(&file, chunk) {
            inner.stats.resumed.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            continue;
        }
        if !existed && zeros.matches(chunk) {
            // a fresh temp file is all holes: a run of zeros (a sparse file's hole) needs
            // neither a transfer nor a write, and stays a hole on this disk too
            inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            continue;
        }
        if copy_local_chunk(inner, job, idx, chunk, &file)? {
            inner.stats.reused.fetch_add(u64::from(chunk.len), Ordering::Relaxed);
            continue;
        }
        missing.push(*chunk);
    }
    Ok((file, missing))
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
    for chunk in &record.chunks {
        let data = read_at(&source, chunk.offset, chunk.len).map_err(io_at(from))?;
        if Hash::of(&data) != chunk.hash {
            fs.discard_temp(record);
            return Err(ApplyError::LocalChange(from.clone()));
        }
        file.write_all_at(&data, chunk.offset).map_err(io_at(&record.path))?;
    }
    verify_whole(&file, record)?;
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

fn chunk_matches(file: &File, chunk: &ChunkRef) -> bool {
    read_at(file, chunk.offset, chunk.len).is_ok_and(|data| Hash::of(&data) == chunk.hash)
}

/// Tries the planner's hint, then the chunk-location table; true when the chunk was copied.
fn copy_local_chunk(
    inner: &Inner,
    job: &PullJob,
    idx: usize,
    chunk: &ChunkRef,
    file: &File,
) -> Result<bool, ApplyError> {
    let hinted =
        job.reuse.iter().filter(|r| r.index as usize == idx).map(|r| (r.from.clone(), r.offset));
    let located = inner
        .index
        .chunk_locations(&chunk.hash)
        .unwrap_or_default()
        .into_iter()
        .filter(|loc| loc.folder == job.folder.as_str() && loc.len == chunk.len)
        .filter_map(|loc| RelPath::new(loc.path).ok().map(|p| (p, loc.offset)));
    for (from, offset) in hinted.chain(located).take(4) {
        if job.fs.check_parents(&from).is_err() {
            continue;
        }
        let Ok(source) = open_nofollow(&job.fs.abs(&from)) else { continue };
        let Ok(data) = read_at(&source, offset, chunk.len) else { continue };
        if Hash::of(&data) == chunk.hash {
            file.write_all_at(&data, chunk.offset).map_err(io_at(&job.record.path))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fetches `missing` from peers, `PIPELINE` requests at a time, verifying each chunk.
async fn fetch_chunks(
    inner: &Arc<Inner>,
    job: &PullJob,
    file: &Arc<File>,
    missing: Vec<ChunkRef>,
) -> Result<(), ApplyError> {
    if missing.is_empty() {
        return Ok(());
    }
    if !job.sources.iter().any(|id| inner.connection(id).is_some()) {
        return Err(ApplyError::NoSource(job.record.path.clone()));
    }
    let fetches = missing.into_iter().enumerate().map(|(n, chunk)| async move {
        let data = fetch_chunk(inner, n, job, &chunk).await?;
        file.write_all_at(&data, chunk.offset).map_err(io_at(&job.record.path))
    });
    let mut results = stream::iter(fetches).buffer_unordered(PIPELINE);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
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
        let Some(conn) = inner.connection(device) else { continue };
        let request = Request {
            id: inner.next_request_id(),
            folder: job.folder.clone(),
            path: job.record.path.clone(),
            offset: chunk.offset,
            size: chunk.len,
            hash: chunk.hash,
        };
        match request_once(inner, &conn, request).await {
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
    request: Request,
) -> Result<Vec<u8>, String> {
    let exchange = exchange(conn, request);
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

/// The request and its response on a new stream.
async fn exchange(conn: &quinn::Connection, request: Request) -> Result<Vec<u8>, String> {
    let id = request.id;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut tx = FramedSend::new(send);
    tx.send(&Message::Request(request)).await.map_err(|e| e.to_string())?;
    tx.finish().map_err(|e| e.to_string())?;
    let mut rx = FramedRecv::new(recv);
    match rx.recv().await.map_err(|e| e.to_string())? {
        Some(Message::Response(r)) if r.id == id => match r.body {
            ResponseBody::Data(data) => Ok(data),
            ResponseBody::Error(code) => Err(code.to_string()),
        },
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Checks the assembled temp file against the record's whole-file hash.
fn verify_whole(file: &File, record: &FileRecord) -> Result<(), ApplyError> {
    // A file that is one chunk whose hash is the file's hash was verified when that chunk
    // was (received, reused or resumed): every byte of it went through that check.
    if let [only] = record.chunks.as_slice()
        && only.offset == 0
        && u64::from(only.len) == record.size
        && only.hash == record.hash
    {
        return Ok(());
    }
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    // sized to the file (a zeroed 4 MiB buffer per small file would cost more than its hash)
    let len = usize::try_from(record.size).unwrap_or(usize::MAX).clamp(4096, 4 << 20);
    let mut buf = crate::scan::hasher::AlignedBuf::new(len.next_multiple_of(4096));
    while offset < record.size {
        let n = file.read_at(buf.bytes_mut(), offset).map_err(io_at(&record.path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf.bytes_mut()[..n]);
        offset += n as u64;
    }
    let actual = Hash::from(hasher.finalize());
    if actual == record.hash && offset == record.size {
        Ok(())
    } else {
        Err(ApplyError::HashMismatch { path: record.path.clone(), expected: record.hash, actual })
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
    if request.size > tandem_proto::wire::MAX_REQUEST {
        return Err(ErrorCode::Invalid);
    }
    fs.check_parents(&request.path).map_err(|_| ErrorCode::NoSuchFile)?;
    let file = open_nofollow(&fs.abs(&request.path)).map_err(|_| ErrorCode::NoSuchFile)?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(ErrorCode::NoSuchFile);
    }
    let data = read_at(&file, request.offset, request.size).map_err(|_| ErrorCode::Changed)?;
    if Hash::of(&data) != request.hash {
        return Err(ErrorCode::Changed);
    }
    Ok(data)
}

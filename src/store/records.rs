//! Versioned envelopes for stored values: one format byte, then the body encoded by
//! `tandem_proto::codec`. A newer tandem reads every older format; an unknown format byte is
//! reported as corruption, never guessed at.
//!
//! The stored file body leaves out what the key already says (the path) and what can be
//! derived (chunk offsets; the chunk list of a single-chunk file), to keep the index small.

use serde::{Deserialize, Serialize};
use tandem_proto::codec;
use tandem_proto::model::{ChunkRef, EntryKind, FileRecord, Hash, RelPath, ShortId, VersionVector};

use crate::store::StatKey;

/// The format byte of every stored value but peer records.
const FORMAT_V1: u8 = 1;

/// The format byte of peer records since `peer_files_v2`: [`StoredPeerV2`] (format 1 there
/// was a whole `FileRecord`, path and chunk offsets included).
const FORMAT_V2: u8 = 2;

/// A file record as this replica holds it: the record it announces plus the stat tuple the
/// scanner's fast path compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRecord {
    /// The record announced to peers.
    pub record: FileRecord,
    /// The inode facts seen when the record was made.
    pub stat: StatKey,
}

/// Per-folder bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderMeta {
    /// The sequence number the next local change gets.
    pub next_sequence: u64,
    /// Identifies this incarnation of the folder's index; a peer seeing a new one knows our
    /// sequence numbers restarted.
    pub index_id: u64,
}

/// What we hold of one peer's records for one folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMeta {
    /// The peer's index id our copy came from.
    pub index_id: u64,
    /// The highest peer sequence we hold.
    pub max_sequence: u64,
}

/// One entry of the sync log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (ns since the Unix epoch).
    pub time_ns: i64,
    /// Folder id.
    pub folder: String,
    /// Path in the folder (empty for folder-wide events).
    pub path: String,
    /// What happened.
    pub kind: EventKind,
    /// The device whose change it was (short id), if known.
    pub device: Option<String>,
    /// Details: where a replaced or deleted file went, an error message, …
    pub detail: String,
}

/// What an [`Event`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A remote change was applied (file written, directory or symlink made, metadata set).
    Updated,
    /// A remote delete was applied (the file went to the trash).
    Deleted,
    /// Our losing version was renamed to a conflict copy.
    ConflictCopy,
    /// The scanner found a local change.
    LocalChange,
    /// Something failed.
    Error,
}

impl EventKind {
    /// Kebab-case name, as `log --json` prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::ConflictCopy => "conflict-copy",
            Self::LocalChange => "local-change",
            Self::Error => "error",
        }
    }
}

/// Encodes a log event.
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    envelope(FORMAT_V1, event)
}

/// Decodes a log event.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, RecordError> {
    open_envelope(bytes)
}

#[derive(Serialize, Deserialize)]
struct StoredFileV1 {
    kind: EntryKind,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    symlink_target: Option<String>,
    hash: Hash,
    /// (length, hash) per chunk; empty for a file that is one chunk (its hash is `hash`).
    chunks: Vec<(u32, Hash)>,
    version: VersionVector,
    sequence: u64,
    deleted: bool,
    modified_by: ShortId,
    stat: StatKey,
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is empty.
    #[error("empty stored value")]
    Empty,
    /// Written by a newer tandem, or damaged.
    #[error("unknown stored format {0}")]
    UnknownFormat(u8),
    /// The body does not decode.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Encodes a local record for the FILES table.
pub(crate) fn encode_file(local: &LocalRecord) -> Vec<u8> {
    let r = &local.record;
    let chunks = stored_chunks(r);
    let body = StoredFileV1 {
        kind: r.kind,
        size: r.size,
        mtime_ns: r.mtime_ns,
        mode: r.mode,
        symlink_target: r.symlink_target.clone(),
        hash: r.hash,
        chunks,
        version: r.version.clone(),
        sequence: r.sequence,
        deleted: r.deleted,
        modified_by: r.modified_by,
        stat: local.stat,
    };
    envelope(FORMAT_V1, &body)
}

/// The (length, hash) list stored for a record: empty for a file that is one chunk.
fn stored_chunks(r: &FileRecord) -> Vec<(u32, Hash)> {
    let single = r.kind == EntryKind::File && r.chunks.len() == 1 && r.chunks[0].hash == r.hash;
    if single { Vec::new() } else { r.chunks.iter().map(|c| (c.len, c.hash)).collect() }
}

/// The chunk list back from its stored form (offsets summed, a single chunk restored).
fn expand_chunks(
    stored: &[(u32, Hash)],
    kind: EntryKind,
    size: u64,
    deleted: bool,
    hash: Hash,
) -> Vec<ChunkRef> {
    let mut offset = 0u64;
    let mut chunks: Vec<ChunkRef> = stored
        .iter()
        .map(|&(len, hash)| {
            let chunk = ChunkRef { offset, len, hash };
            offset += u64::from(len);
            chunk
        })
        .collect();
    if chunks.is_empty() && kind == EntryKind::File && size > 0 && !deleted {
        let len = u32::try_from(size).unwrap_or(u32::MAX);
        chunks.push(ChunkRef { offset: 0, len, hash });
    }
    chunks
}

/// Decodes a FILES value stored under `path`.
pub(crate) fn decode_file(path: RelPath, bytes: &[u8]) -> Result<LocalRecord, RecordError> {
    let body: StoredFileV1 = open_envelope(bytes)?;
    let chunks = expand_chunks(&body.chunks, body.kind, body.size, body.deleted, body.hash);
    let record = FileRecord {
        path,
        kind: body.kind,
        size: body.size,
        mtime_ns: body.mtime_ns,
        mode: body.mode,
        symlink_target: body.symlink_target,
        hash: body.hash,
        chunks,
        version: body.version,
        sequence: body.sequence,
        deleted: body.deleted,
        modified_by: body.modified_by,
    };
    Ok(LocalRecord { record, stat: body.stat })
}

/// Encodes folder metadata.
pub(crate) fn encode_meta(meta: &FolderMeta) -> Vec<u8> {
    envelope(FORMAT_V1, meta)
}

/// Decodes folder metadata.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<FolderMeta, RecordError> {
    open_envelope(bytes)
}

/// A peer's record as `peer_files_v2` stores it: what the key (path) and the chunk list
/// (offsets; a single chunk) already say is left out, as in [`StoredFileV1`].
#[derive(Serialize, Deserialize)]
struct StoredPeerV2 {
    kind: EntryKind,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    symlink_target: Option<String>,
    hash: Hash,
    chunks: Vec<(u32, Hash)>,
    version: VersionVector,
    sequence: u64,
    deleted: bool,
    modified_by: ShortId,
}

/// Encodes a record a peer announced, for `peer_files_v2` (format 2).
pub(crate) fn encode_peer_file(r: &FileRecord) -> Vec<u8> {
    let body = StoredPeerV2 {
        kind: r.kind,
        size: r.size,
        mtime_ns: r.mtime_ns,
        mode: r.mode,
        symlink_target: r.symlink_target.clone(),
        hash: r.hash,
        chunks: stored_chunks(r),
        version: r.version.clone(),
        sequence: r.sequence,
        deleted: r.deleted,
        modified_by: r.modified_by,
    };
    envelope(FORMAT_V2, &body)
}

/// Decodes a record a peer announced, stored under `path`: format 2, or format 1 (a whole
/// `FileRecord`, as `peer_files_v1` held them).
pub(crate) fn decode_peer_file(path: RelPath, bytes: &[u8]) -> Result<FileRecord, RecordError> {
    match bytes.split_first() {
        Some((&FORMAT_V2, body)) => {
            let b: StoredPeerV2 = codec::decode(body)?;
            Ok(FileRecord {
                path,
                chunks: expand_chunks(&b.chunks, b.kind, b.size, b.deleted, b.hash),
                kind: b.kind,
                size: b.size,
                mtime_ns: b.mtime_ns,
                mode: b.mode,
                symlink_target: b.symlink_target,
                hash: b.hash,
                version: b.version,
                sequence: b.sequence,
                deleted: b.deleted,
                modified_by: b.modified_by,
            })
        }
        _ => decode_full_record(bytes),
    }
}

/// Encodes a whole record, path and chunk offsets included (format 1): `applying_v1`
/// values, and `peer_files_v1` values before it was migrated.
pub(crate) fn encode_full_record(record: &FileRecord) -> Vec<u8> {
    envelope(FORMAT_V1, record)
}

/// Decodes a whole record (format 1).
pub(crate) fn decode_full_record(bytes: &[u8]) -> Result<FileRecord, RecordError> {
    open_envelope(bytes)
}

/// Encodes peer metadata.
pub(crate) fn encode_peer_meta(meta: &PeerMeta) -> Vec<u8> {
    envelope(FORMAT_V1, meta)
}

/// Decodes peer metadata.
pub(crate) fn decode_peer_meta(bytes: &[u8]) -> Result<PeerMeta, RecordError> {
    open_envelope(bytes)
}

fn envelope<T: Serialize>(format: u8, body: &T) -> Vec<u8> {
    let mut out = vec![format];
    out.extend(codec::encode(body));
    out
}

fn open_envelope<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT_V1, body)) => Ok(codec::decode(body)?),
        Some((&other, _)) => Err(RecordError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(chunks: Vec<ChunkRef>, hash: Hash, size: u64) -> LocalRecord {
        let record = FileRecord {
            path: RelPath::new("a/b.txt").unwrap(),
            kind: EntryKind::File,
            size,
            mtime_ns: 1_700_000_000_123_456_789,
            mode: 0o644,
            symlink_target: None,
            hash,
            chunks,
            version: VersionVector::new().bumped(ShortId::new(42), 1_700_000_000),
            sequence: 9,
            deleted: false,
            modified_by: ShortId::new(42),
        };
        LocalRecord {
            record,
            stat: StatKey { size, mtime_ns: 1, ctime_ns: 2, ino: 3, mode: 0o100644, racy: false },
        }
    }

    #[test]
    fn records_round_trip_with_and_without_chunk_lists() {
        let h = Hash::of(b"x");
        let single = sample(vec![ChunkRef { offset: 0, len: 100, hash: h }], h, 100);
        let multi = sample(
            vec![
                ChunkRef { offset: 0, len: 60, hash: Hash::of(b"1") },
                ChunkRef { offset: 60, len: 40, hash: Hash::of(b"2") },
            ],
            h,
            100,
        );
        let empty = sample(vec![], Hash::of(b""), 0);
        for local in [single, multi, empty] {
            let bytes = encode_file(&local);
            assert_eq!(decode_file(local.record.path.clone(), &bytes).unwrap(), local);
        }
    }

    #[test]
    fn peer_records_round_trip_in_both_formats() {
        let h = Hash::of(b"x");
        let multi = vec![
            ChunkRef { offset: 0, len: 60, hash: Hash::of(b"1") },
            ChunkRef { offset: 60, len: 40, hash: Hash::of(b"2") },
        ];
        let deleted = FileRecord { deleted: true, ..sample(vec![], h, 0).record };
        for record in [
            sample(vec![ChunkRef { offset: 0, len: 100, hash: h }], h, 100).record,
            sample(multi, h, 100).record,
            deleted,
        ] {
            let compact = encode_peer_file(&record);
            assert_eq!(compact[0], FORMAT_V2);
            assert_eq!(decode_peer_file(record.path.clone(), &compact).unwrap(), record);
            let full = encode_full_record(&record);
            assert!(compact.len() < full.len());
            assert_eq!(decode_peer_file(record.path.clone(), &full).unwrap(), record);
        }
    }

    #[test]
    fn a_small_file_record_stays_small() {
        let h = Hash::of(b"x");
        let bytes = encode_file(&sample(vec![ChunkRef { offset: 0, len: 100, hash: h }], h, 100));
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors() {
        let path = RelPath::new("x").unwrap();
        assert!(matches!(decode_file(path.clone(), &[]), Err(RecordError::Empty)));
        assert!(matches!(
            decode_file(path.clone(), &[9, 1, 2]),
            Err(RecordError::UnknownFormat(9))
        ));
        assert!(decode_file(path, &[1, 0xFF, 0xFF]).is_err());
    }
}

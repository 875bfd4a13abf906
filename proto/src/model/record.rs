//! `FileRecord`: what one replica announces about one path — kind, content, metadata,
//! version — plus the small value types it is made of.
//!
//! Records are the currency of the rules and of the index exchange. Host-local facts used
//! only by the scanner's fast path (inode, ctime) are not part of a record: they live in the
//! store beside it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{RelPath, ShortId, VersionVector};

/// A BLAKE3 digest (of a chunk, a whole file or a symlink target).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hash([u8; 32]);

/// Why a hex digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-character hex BLAKE3 digest: {0:?}")]
pub struct HashParseError(pub String);

impl Hash {
    /// The all-zero digest, used where there is no content (directories, tombstones).
    pub const ZERO: Self = Self([0; 32]);

    /// A digest from its raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as `b3sum` prints it.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

impl From<blake3::Hash> for Hash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl FromStr for Hash {
    type Err = HashParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map_err(|_| HashParseError(text.to_string()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| HashParseError(text.to_string()))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}…)", &self.to_hex()[..12])
    }
}

/// What kind of entry a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; its target is stored, never followed.
    Symlink,
}

impl EntryKind {
    /// `file`, `dir` or `symlink`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One content-defined chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of the chunk's bytes.
    pub hash: Hash,
}

/// How a folder exchanges changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FolderMode {
    /// Two-way sync.
    #[default]
    SendReceive,
    /// Local is the source of truth: remote changes are not applied, only reported.
    SendOnly,
    /// Local changes are not announced; they are listed and can be reverted.
    ReceiveOnly,
}

/// Why a folder mode name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown folder mode {0:?} (expected send-receive, send-only or receive-only)")]
pub struct FolderModeError(pub String);

impl FolderMode {
    /// `send-receive`, `send-only` or `receive-only`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SendReceive => "send-receive",
            Self::SendOnly => "send-only",
            Self::ReceiveOnly => "receive-only",
        }
    }
}

impl fmt::Display for FolderMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FolderMode {
    type Err = FolderModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "send-receive" | "sendreceive" => Ok(Self::SendReceive),
            "send-only" | "sendonly" => Ok(Self::SendOnly),
            "receive-only" | "receiveonly" => Ok(Self::ReceiveOnly),
            other => Err(FolderModeError(other.to_string())),
        }
    }
}

/// The largest chunk a file record may list (4 MiB, equal to `wire::MAX_REQUEST`: every
/// chunk must be fetchable with one request).
pub const MAX_CHUNK: u32 = 4 << 20;

/// Why a file record's chunk list does not describe its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkListError {
    /// A chunk does not start where the previous one ended.
    #[error("chunk {index} starts at {offset}, expected {expected}")]
    Gap {
        /// Which chunk.
        index: usize,
        /// Where it starts.
        offset: u64,
        /// Where the previous one ended.
        expected: u64,
    },
    /// A chunk is empty or larger than [`MAX_CHUNK`].
    #[error("chunk {index} is {len} bytes (1 to {MAX_CHUNK} allowed)")]
    Length {
        /// Which chunk.
        index: usize,
        /// Its length.
        len: u32,
    },
    /// The chunks do not add up to the file's size.
    #[error("chunks cover {covered} of {size} bytes")]
    Size {
        /// Bytes the chunks cover.
        covered: u64,
        /// The record's size.
        size: u64,
    },
}

/// What one replica announces about one path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRecord {
    /// Where the entry is, relative to the folder root.
    pub path: RelPath,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// A symlink's target, stored as text and never followed.
    pub symlink_target: Option<String>,
    /// BLAKE3 of the whole file (of the target for a symlink; zero for a directory).
    pub hash: Hash,
    /// The file's chunks in order (empty for directories, symlinks and empty files).
    pub chunks: Vec<ChunkRef>,
    /// Which changes this version has seen.
    pub version: VersionVector,
    /// The announcing replica's sequence number for this change.
    pub sequence: u64,
    /// A tombstone: the path was deleted.
    pub deleted: bool,
    /// The device that made this version.
    pub modified_by: ShortId,
}

impl FileRecord {
    /// True when both describe the same entry content: kind, deletion, bytes, target.
    /// Metadata (mtime, mode) and versions may differ.
    pub fn same_content(&self, other: &Self) -> bool {
        self.deleted == other.deleted
            && (self.deleted
                || (self.kind == other.kind
                    && self.size == other.size
                    && self.hash == other.hash
                    && self.symlink_target == other.symlink_target))
    }

    /// Checks that a live file's chunk list can describe its content: contiguous from
    /// offset 0, each chunk 1 to [`MAX_CHUNK`] bytes, together exactly `size` bytes.
    /// Directories, symlinks and tombstones are not checked (their chunks are unused).
    ///
    /// A peer's record that fails this would make the receiver size, read and hash bytes
    /// that no chunk accounts for (a 4 EiB file with one chunk), so it is refused.
    pub fn check_chunks(&self) -> Result<(), ChunkListError> {
        if self.deleted || self.kind != EntryKind::File {
            return Ok(());
        }
        let mut covered = 0u64;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if chunk.offset != covered {
                return Err(ChunkListError::Gap { index, offset: chunk.offset, expected: covered });
            }
            if chunk.len == 0 || chunk.len > MAX_CHUNK {
                return Err(ChunkListError::Length { index, len: chunk.len });
            }
            covered = covered.saturating_add(u64::from(chunk.len));
        }
        if covered == self.size {
            Ok(())
        } else {
            Err(ChunkListError::Size { covered, size: self.size })
        }
    }

    /// True when content and synced metadata (mode, and mtime for files) are equal.
    pub fn same_entry(&self, other: &Self) -> bool {
        self.same_content(other)
            && (self.deleted
                || (self.mode == other.mode
                    && (self.kind != EntryKind::File || self.mtime_ns == other.mtime_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trips_and_matches_blake3() {
        let h = Hash::of(b"hello");
        assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(h.to_hex().parse::<Hash>(), Ok(h));
        assert!("xyz".parse::<Hash>().is_err());
    }

    fn file(size: u64, chunks: &[(u64, u32)]) -> FileRecord {
        FileRecord {
            path: RelPath::new("f").unwrap(),
            kind: EntryKind::File,
            size,
            mtime_ns: 0,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::ZERO,
            chunks: chunks
                .iter()
                .map(|&(offset, len)| ChunkRef { offset, len, hash: Hash::ZERO })
                .collect(),
            version: VersionVector::new(),
            sequence: 1,
            deleted: false,
            modified_by: ShortId::new(1),
        }
    }

    #[test]
    fn a_chunk_list_must_cover_the_file_exactly() {
        assert_eq!(file(0, &[]).check_chunks(), Ok(()));
        assert_eq!(file(10, &[(0, 4), (4, 6)]).check_chunks(), Ok(()));
        assert_eq!(file(MAX_CHUNK.into(), &[(0, MAX_CHUNK)]).check_chunks(), Ok(()));
        let size = |covered, size| Err(ChunkListError::Size { covered, size });
        assert_eq!(file(1 << 62, &[(0, 5)]).check_chunks(), size(5, 1 << 62));
        assert_eq!(file(1 << 40, &[]).check_chunks(), size(0, 1 << 40));
        assert_eq!(file(3, &[(0, 5)]).check_chunks(), size(5, 3));
        let gap = Err(ChunkListError::Gap { index: 1, offset: 5, expected: 4 });
        assert_eq!(file(10, &[(0, 4), (5, 5)]).check_chunks(), gap);
        let length = |index, len| Err(ChunkListError::Length { index, len });
        assert_eq!(file(0, &[(0, 0)]).check_chunks(), length(0, 0));
        assert_eq!(file(u32::MAX.into(), &[(0, u32::MAX)]).check_chunks(), length(0, u32::MAX));
        // only live files are checked
        let mut dir = file(1 << 62, &[]);
        dir.kind = EntryKind::Dir;
        assert_eq!(dir.check_chunks(), Ok(()));
        let mut tomb = file(7, &[]);
        tomb.deleted = true;
        assert_eq!(tomb.check_chunks(), Ok(()));
    }

    #[test]
    fn folder_modes_parse_and_print() {
        for mode in [FolderMode::SendReceive, FolderMode::SendOnly, FolderMode::ReceiveOnly] {
            assert_eq!(mode.to_string().parse::<FolderMode>(), Ok(mode));
        }
        assert!("both".parse::<FolderMode>().is_err());
    }
}

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

    #[test]
    fn folder_modes_parse_and_print() {
        for mode in [FolderMode::SendReceive, FolderMode::SendOnly, FolderMode::ReceiveOnly] {
            assert_eq!(mode.to_string().parse::<FolderMode>(), Ok(mode));
        }
        assert!("both".parse::<FolderMode>().is_err());
    }
}

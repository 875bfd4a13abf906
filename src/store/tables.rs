//! redb table definitions and their key layouts. Table names carry a version suffix: a
//! layout change adds a new table and a migration, never reinterprets old bytes.
//!
//! Keys use redb's own tuple, `&str` and `u64` encodings, which order by (folder, path) in
//! byte order and by (folder, sequence) numerically.

use redb::{MultimapTableDefinition, TableDefinition};

/// (folder id, path) → encoded [`crate::store::LocalRecord`] (see `records.rs`).
pub(crate) const FILES: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("files_v1");

/// (folder id, local sequence) → path: the changes in the order they happened, for
/// incremental index exchange.
pub(crate) const SEQUENCES: TableDefinition<'_, (&str, u64), &str> =
    TableDefinition::new("sequences_v1");

/// chunk hash (32 bytes) → (folder id, path, offset, length): where a chunk lies locally, so a
/// transfer can copy it instead of downloading it.
pub(crate) const CHUNKS: MultimapTableDefinition<'_, &[u8], (&str, &str, u64, u32)> =
    MultimapTableDefinition::new("chunks_v1");

/// first 8 bytes of a file's whole-content hash (little-endian) → (folder id, path): the
/// live files whose chunks are not all in [`CHUNKS`] (chunks under `MIN_LOCATED_CHUNK` are
/// not located), so a pulled file whose content is already here — a renamed or copied small
/// file — is copied instead of downloaded. Eight bytes keep the rows small; a candidate is
/// verified by reading it.
pub(crate) const CONTENTS: MultimapTableDefinition<'_, u64, (&str, &str)> =
    MultimapTableDefinition::new("contents_v1");

/// folder id → encoded [`crate::store::FolderMeta`].
pub(crate) const FOLDERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("folders_v1");

/// (folder id, peer number, path) → encoded record the peer announced (format 2 of
/// `records.rs`: without the path, chunk offsets or a single chunk's list). The number
/// stands for the peer's 63-character device id text in every row (see [`PEER_NUMBERS`]).
pub(crate) const PEER_FILES: TableDefinition<'_, (&str, u32, &str), &[u8]> =
    TableDefinition::new("peer_files_v2");

/// The layout before peer numbers: (folder id, peer device id text, path) → format-1
/// `FileRecord`. Opening an index for writing moves its rows to [`PEER_FILES`] and deletes it.
pub(crate) const PEER_FILES_V1: TableDefinition<'_, (&str, &str, &str), &[u8]> =
    TableDefinition::new("peer_files_v1");

/// peer device id text → the peer's number in this index (1, 2, …; never reused).
pub(crate) const PEER_NUMBERS: TableDefinition<'_, &str, u32> =
    TableDefinition::new("peer_numbers_v1");

/// (folder id, peer device id text) → encoded [`crate::store::PeerMeta`].
pub(crate) const PEER_META: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("peer_meta_v1");

/// event id (increasing) → encoded [`crate::store::Event`]: the sync log, trimmed to the
/// newest `MAX_EVENTS`.
pub(crate) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events_v1");

/// folder id → the folder mode (text) the daemon last ran it in, to notice a folder leaving
/// receive-only mode (its held-back changes must then be announced).
pub(crate) const FOLDER_MODES: TableDefinition<'_, &str, &str> =
    TableDefinition::new("folder_modes_v1");

/// folder id → Unix seconds of the last moment the folder was in sync with every peer it is
/// shared with (`status --check --max-lag` reads it, with or without a daemon).
pub(crate) const FOLDER_SYNCED: TableDefinition<'_, &str, u64> =
    TableDefinition::new("folder_synced_v1");

/// (folder id, path) → encoded `FileRecord`: what the running plan will commit for the path
/// once its step is done, written before any step touches the disk. A crash between a
/// step and its commit leaves the disk ahead of the index; the next scan recognizes an
/// entry equal to its pending record as that applied version instead of a local change
/// (the peers' records, which it would otherwise compare with, may have moved on), then
/// clears the folder's pending records.
pub(crate) const APPLYING: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("applying_v1");

//! The index: one redb database per home holding every folder's local file records, the
//! sequence index of local changes, where each chunk lies locally, and folder metadata.
//!
//! This is the only module that imports redb. Writes go through a [`WriteBatch`] — one redb
//! transaction committed durably — so callers batch hundreds of records per fsync instead of
//! paying a durable commit per file. The scanner commits a record only after reading the
//! bytes it describes, so the index never claims content the disk did not have.

mod compact;
mod records;
mod slices;
mod snapshot;
mod stat;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableHandle, WriteTransaction,
};
use tandem_proto::model::{FileRecord, Hash, RelPath};

use compact::Writes;
pub use records::{Event, EventKind, FolderMeta, LocalRecord, PeerMeta, RecordError};
pub use slices::Slice;
pub use snapshot::Snapshot;
pub use stat::{SYNCED_MODE_BITS, StatKey};
use tables::{
    APPLYING, CHUNKS, CONTENTS, EVENTS, FILES, FOLDER_MODES, FOLDER_SYNCED, FOLDERS, PEER_FILES,
    PEER_FILES_V1, PEER_META, PEER_NUMBERS, SEQUENCES,
};

/// redb page cache per open index.
const CACHE_BYTES: usize = 32 << 20;

/// Events kept in the log; older ones are dropped as new ones arrive.
pub const MAX_EVENTS: u64 = 10_000;

/// Chunks shorter than this get no row in the chunk-location table: fetching a few hundred
/// bytes from a peer costs less than a row per small file costs every device (about a third
/// of a small file's index bytes). The planner still turns a pull whose whole content is
/// already here into a local copy or rename from the records themselves.
pub const MIN_LOCATED_CHUNK: u32 = 4096;

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error (IO, corruption, locking).
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    /// This handle was opened read-only.
    #[error("the index is open read-only")]
    ReadOnly,
    /// Another process (a running `tandem serve` or `sync`) has the index open.
    #[error("the index is in use by another tandem process (a running `tandem serve` or `sync`)")]
    InUse,
    /// The index has tables in an older layout and another process holds it for writing, so
    /// it cannot be upgraded now (an older `tandem serve` still runs).
    #[error(
        "the index was written by an older tandem that still has it open; stop it and run \
         this tandem (`tandem serve` or `tandem scan`) once to upgrade the index"
    )]
    NeedsUpgrade,
    /// A stored value could not be decoded.
    #[error("index entry {folder}/{key}: {source}")]
    Corrupt {
        /// Folder id.
        folder: String,
        /// Path or key of the bad entry.
        key: String,
        /// What is wrong with it.
        source: RecordError,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// Where one chunk can be read locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// Folder id.
    pub folder: String,
    /// Path inside the folder.
    pub path: String,
    /// Byte offset in the file.
    pub offset: u64,
    /// Chunk length.
    pub len: u32,
}

/// The index database: one writer process (the daemon, or a CLI command when none runs);
/// any number of read-only processes may follow its commits (redb's `SingleWriter` mode),
/// so `ls` and friends work while `serve` runs.
pub struct Index {
    db: Db,
    /// Rows written by committed batches and when the last wave of them ended (what
    /// [`Index::maybe_compact`] decides from).
    writes: Arc<Writes>,
}

enum Db {
    /// The writer's handle, `None` while it is being reopened after an IO error.
    Write {
        path: PathBuf,
        db: RwLock<Option<Database>>,
    },
    Read(ReadOnlyDatabase),
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    // the index lives on disk: a bounded page cache keeps a daemon with millions of files
    // small (redb's default would grow to a gigabyte)
    builder.set_cache_size(CACHE_BYTES);
    builder
}

impl Index {
    /// Opens the index read-only; it must exist. Works while another process writes.
    ///
    /// An index with tables in an older layout is upgraded first (opened for writing once),
    /// unless another process holds it for writing ([`StoreError::NeedsUpgrade`]).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = builder().open_read_only(path).map_err(db_err)?;
        let old = {
            let txn = db.begin_read().map_err(db_err)?;
            let mut tables = txn.list_tables().map_err(db_err)?;
            tables.any(|t| t.name() == PEER_FILES_V1.name())
        };
        if !old {
            return Ok(Self { db: Db::Read(db), writes: Arc::default() });
        }
        drop(db);
        match Self::open(path) {
            Ok(upgraded) => drop(upgraded),
            Err(StoreError::InUse) => return Err(StoreError::NeedsUpgrade),
            Err(e) => return Err(e),
        }
        let db = builder().open_read_only(path).map_err(db_err)?;
        Ok(Self { db: Db::Read(db), writes: Arc::default() })
    }

    /// True when this handle can write.
    pub fn is_writable(&self) -> bool {
        matches!(self.db, Db::Write { .. })
    }

    /// Opens the index at `path` for writing, creating it if needed; tables in an older
    /// layout are migrated (in the same transaction that creates the missing ones).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = create(path)?;
        let txn = db.begin_write().map_err(db_err)?;
        migrate_peer_files(&txn)?;
        {
            txn.open_table(FILES).map_err(db_err)?;
            txn.open_table(SEQUENCES).map_err(db_err)?;
            txn.open_multimap_table(CHUNKS).map_err(db_err)?;
            txn.open_multimap_table(CONTENTS).map_err(db_err)?;
            txn.open_table(FOLDERS).map_err(db_err)?;
            txn.open_table(PEER_FILES).map_err(db_err)?;
            txn.open_table(PEER_NUMBERS).map_err(db_err)?;
            txn.open_table(PEER_META).map_err(db_err)?;
            txn.open_table(EVENTS).map_err(db_err)?;
            txn.open_table(FOLDER_MODES).map_err(db_err)?;
            txn.open_table(FOLDER_SYNCED).map_err(db_err)?;
            txn.open_table(APPLYING).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db: Db::Write { path: path.to_path_buf(), db: RwLock::new(Some(db)) },
            writes: Arc::default(),
        })
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Db::Write { .. } => self.begin(|db| db.begin_read().map_err(Into::into)),
            Db::Read(db) => db.begin_read().map_err(db_err),
        }
    }

    /// Begins a transaction on the writer's handle. After an IO error (a full disk, say)
    /// redb refuses every later transaction until the database is opened again, so a handle
    /// in that state is closed and the file reopened (redb recovers it to its last durable
    /// commit): the daemon carries on once the cause is gone instead of failing forever.
    fn begin<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let Db::Write { path, db } = &self.db else { return Err(StoreError::ReadOnly) };
        if let Some(open) = db.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            match begin(open) {
                Err(redb::Error::PreviousIo) => {}
                other => return other.map_err(StoreError::Db),
            }
        }
        let mut guard = db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = guard.as_ref() {
            match begin(open) {
                Err(redb::Error::PreviousIo) => {} // nobody reopened it meanwhile
                other => return other.map_err(StoreError::Db),
            }
        }
        *guard = None; // closes the handle once its last transaction is gone
        let reopened = create(path)?;
        tracing::warn!("index {}: reopened after an earlier IO error", path.display());
        let result = begin(&reopened).map_err(StoreError::Db);
        *guard = Some(reopened);
        result
    }

    /// Calls `visit` for every record of `folder` in path order.
    pub fn for_each_record(
        &self,
        folder: &str,
        mut visit: impl FnMut(LocalRecord),
    ) -> Result<(), StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(FILES).map_err(db_err)?;
        for entry in table.range((folder, "")..).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (entry_folder, path) = key.value();
            if entry_folder != folder {
                break;
            }
            visit(decode_entry(folder, path, value.value())?);
        }
        Ok(())
    }

    /// Every record of `folder`, in path order.
    pub fn records(&self, folder: &str) -> Result<Vec<LocalRecord>, StoreError> {
        let mut out = Vec::new();
        self.for_each_record(folder, |r| out.push(r))?;
        Ok(out)
    }

    /// The records of `path` and of everything below it, in path order.
    pub fn records_under(
        &self,
        folder: &str,
        path: &RelPath,
    ) -> Result<Vec<LocalRecord>, StoreError> {
        self.snapshot()?.records_under(folder, path)
    }

    /// The records `peer` announced for `path` and everything below it, in path order.
    pub fn peer_records_under(
        &self,
        folder: &str,
        peer: &str,
        path: &RelPath,
    ) -> Result<Vec<FileRecord>, StoreError> {
        self.snapshot()?.peer_records_under(folder, peer, path)
    }

    /// The record of one path.
    pub fn record(&self, folder: &str, path: &RelPath) -> Result<Option<LocalRecord>, StoreError> {
        self.snapshot()?.record(folder, path)
    }

    /// Records changed after `since`, in sequence order (for incremental index exchange).
    /// At most `limit` of them, so a full exchange of a big folder is sent page by page.
    pub fn changes_since(
        &self,
        folder: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<LocalRecord>, StoreError> {
        let txn = self.read()?;
        let seqs = txn.open_table(SEQUENCES).map_err(db_err)?;
        let files = txn.open_table(FILES).map_err(db_err)?;
        let mut out = Vec::new();
        let range =
            seqs.range((folder, since.saturating_add(1))..=(folder, u64::MAX)).map_err(db_err)?;
        for entry in range.take(limit) {
            let (_, path) = entry.map_err(db_err)?;
            let path = path.value();
            if let Some(value) = files.get((folder, path)).map_err(db_err)? {
                out.push(decode_entry(folder, path, value.value())?);
            }
        }
        Ok(out)
    }

    /// Where the chunk with `hash` lies locally.
    pub fn chunk_locations(&self, hash: &Hash) -> Result<Vec<ChunkLocation>, StoreError> {
        self.snapshot()?.chunk_locations(hash)
    }

    /// Local files (folder, path) whose whole content may hash to `hash`: only files with
    /// chunks too small to be located are listed, and the key is a prefix of the hash, so
    /// the caller must verify what it reads.
    pub fn files_with_content(&self, hash: &Hash) -> Result<Vec<(String, String)>, StoreError> {
        self.snapshot()?.files_with_content(hash)
    }

    /// The folder's metadata, if it was ever written.
    pub fn folder_meta(&self, folder: &str) -> Result<Option<FolderMeta>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(FOLDERS).map_err(db_err)?;
        let value = table.get(folder).map_err(db_err)?;
        value.map(|v| decode_meta_entry(folder, v.value())).transpose()
    }

    /// The mode the folder last ran in (see [`WriteBatch::remember_mode`]).
    pub fn remembered_mode(&self, folder: &str) -> Result<Option<String>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(FOLDER_MODES).map_err(db_err)?;
        Ok(table.get(folder).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    /// When the folder was last in sync with every peer it is shared with (Unix seconds).
    pub fn synced_at(&self, folder: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
        let table = match txn.open_table(FOLDER_SYNCED) {
            Ok(table) => table,
            // an index written before this table existed: never recorded
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table.get(folder).map_err(db_err)?.map(|v| v.value()))
    }

    /// Log events with an id above `after`, oldest first, at most `limit` of the newest.
    pub fn events(&self, after: u64, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..).map_err(db_err)?.rev().take(limit) {
            let (id, value) = entry.map_err(db_err)?;
            let event =
                records::decode_event(value.value()).map_err(|source| StoreError::Corrupt {
                    folder: String::new(),
                    key: format!("event {}", id.value()),
                    source,
                })?;
            out.push((id.value(), event));
        }
        out.reverse();
        Ok(out)
    }

    /// The records `peer` announced for `folder`, by path.
    pub fn peer_records(&self, folder: &str, peer: &str) -> Result<Vec<FileRecord>, StoreError> {
        let txn = self.read()?;
        let Some(n) = peer_number(&txn, peer)? else { return Ok(Vec::new()) };
        let table = txn.open_table(PEER_FILES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((folder, n, "")..).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (f, p, path) = key.value();
            if f != folder || p != n {
                break;
            }
            out.push(decode_peer_entry(folder, peer, path, value.value())?);
        }
        Ok(out)
    }

    /// The record `peer` announced for one path of `folder`, if any.
    pub fn peer_record(
        &self,
        folder: &str,
        peer: &str,
        path: &RelPath,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.snapshot()?.peer_record(folder, peer, path)
    }

    /// The records a plan was about to commit for `folder` when it last ran (see
    /// [`WriteBatch::set_applying`]; without chunk lists), in path order.
    pub fn applying(&self, folder: &str) -> Result<Vec<FileRecord>, StoreError> {
        let txn = self.read()?;
        let table = match txn.open_table(APPLYING) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for entry in table.range((folder, "")..).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (f, path) = key.value();
            if f != folder {
                break;
            }
            let record = records::decode_full_record(value.value()).map_err(|source| {
                StoreError::Corrupt {
                    folder: folder.into(),
                    key: format!("applying/{path}"),
                    source,
                }
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// What we hold of `peer`'s records for `folder`.
    pub fn peer_meta(&self, folder: &str, peer: &str) -> Result<PeerMeta, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(PEER_META).map_err(db_err)?;
        read_peer_meta(&table, folder, peer)
    }

    /// The folder's metadata, created (with a fresh index id) if it does not exist yet.
    pub fn ensure_folder(&self, folder: &str) -> Result<FolderMeta, StoreError> {
        if let Some(meta) = self.folder_meta(folder)? {
            return Ok(meta);
        }
        let batch = self.write()?;
        let meta = batch.meta(folder)?;
        let mut batch = batch;
        batch.put_meta(folder, &meta)?;
        batch.commit()?;
        Ok(meta)
    }

    /// Starts a batch of writes, committed durably by [`WriteBatch::commit`].
    pub fn write(&self) -> Result<WriteBatch, StoreError> {
        let txn = self.begin(|db| db.begin_write().map_err(Into::into))?;
        Ok(WriteBatch { txn, rows: 0, writes: Arc::clone(&self.writes) })
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Opens (or creates) the index file for writing.
fn create(path: &Path) -> Result<Database, StoreError> {
    builder().create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
        other => db_err(other),
    })
}

fn decode_entry(folder: &str, path: &str, bytes: &[u8]) -> Result<LocalRecord, StoreError> {
    let corrupt = |source| StoreError::Corrupt { folder: folder.into(), key: path.into(), source };
    let rel = RelPath::new(path).map_err(|e| {
        corrupt(RecordError::Codec(tandem_proto::codec::CodecError::Malformed(e.to_string())))
    })?;
    records::decode_file(rel, bytes).map_err(corrupt)
}

/// Decodes a PEER_FILES value of `peer` stored under `path`.
fn decode_peer_entry(
    folder: &str,
    peer: &str,
    path: &str,
    bytes: &[u8],
) -> Result<FileRecord, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        folder: folder.into(),
        key: format!("{peer}/{path}"),
        source,
    };
    let rel = RelPath::new(path).map_err(|e| {
        corrupt(RecordError::Codec(tandem_proto::codec::CodecError::Malformed(e.to_string())))
    })?;
    records::decode_peer_file(rel, bytes).map_err(corrupt)
}

/// The number `peer`'s rows are keyed by, if it has one.
fn peer_number(txn: &ReadTransaction, peer: &str) -> Result<Option<u32>, StoreError> {
    let table = match txn.open_table(PEER_NUMBERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    Ok(table.get(peer).map_err(db_err)?.map(|v| v.value()))
}

/// The number of `peer`, given the next free one if it has none yet.
fn number_peer(table: &mut redb::Table<'_, &str, u32>, peer: &str) -> Result<u32, StoreError> {
    if let Some(n) = table.get(peer).map_err(db_err)? {
        return Ok(n.value());
    }
    let mut last = 0;
    for entry in table.iter().map_err(db_err)? {
        last = last.max(entry.map_err(db_err)?.1.value());
    }
    let n = last + 1;
    table.insert(peer, n).map_err(db_err)?;
    Ok(n)
}

/// Moves the rows of `peer_files_v1` (keyed by the peer's device id text, values whole
/// records) to `peer_files_v2` (keyed by the peer's number, compact values) and deletes the
/// old table. Nothing to do in an index without it.
fn migrate_peer_files(txn: &WriteTransaction) -> Result<(), StoreError> {
    let exists = txn.list_tables().map_err(db_err)?.any(|t| t.name() == PEER_FILES_V1.name());
    if !exists {
        return Ok(());
    }
    let mut moved = 0u64;
    {
        let old = txn.open_table(PEER_FILES_V1).map_err(db_err)?;
        let mut numbers = txn.open_table(PEER_NUMBERS).map_err(db_err)?;
        let mut new = txn.open_table(PEER_FILES).map_err(db_err)?;
        let mut last: Option<(String, u32)> = None;
        for entry in old.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (folder, peer, path) = key.value();
            let n = match &last {
                Some((p, n)) if p == peer => *n,
                _ => {
                    let n = number_peer(&mut numbers, peer)?;
                    last = Some((peer.to_string(), n));
                    n
                }
            };
            let record = records::decode_full_record(value.value()).map_err(|source| {
                StoreError::Corrupt { folder: folder.into(), key: format!("{peer}/{path}"), source }
            })?;
            new.insert((folder, n, path), records::encode_peer_file(&record).as_slice())
                .map_err(db_err)?;
            moved += 1;
        }
    }
    txn.delete_table(PEER_FILES_V1).map_err(db_err)?;
    tracing::info!("index: moved {moved} peer records to the peer_files_v2 layout");
    Ok(())
}

/// Reads a peer's metadata from an open PEER_META table (read or write transaction).
fn read_peer_meta(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    folder: &str,
    peer: &str,
) -> Result<PeerMeta, StoreError> {
    let value = table.get((folder, peer)).map_err(db_err)?;
    let decoded = value.map(|v| records::decode_peer_meta(v.value())).transpose();
    decoded.map(Option::unwrap_or_default).map_err(|source| StoreError::Corrupt {
        folder: folder.into(),
        key: peer.into(),
        source,
    })
}

fn decode_meta_entry(folder: &str, bytes: &[u8]) -> Result<FolderMeta, StoreError> {
    records::decode_meta(bytes).map_err(|source| StoreError::Corrupt {
        folder: folder.into(),
        key: "(folder metadata)".into(),
        source,
    })
}

/// One durable write transaction.
pub struct WriteBatch {
    txn: WriteTransaction,
    /// Rows this batch wrote (or removed), counted in `writes` once it commits.
    rows: u64,
    writes: Arc<Writes>,
}

impl WriteBatch {
    /// Stores a new version of a path made by a local change, giving it the folder's next
    /// sequence number; returns that number. The chunk and sequence tables follow.
    pub fn put_change(&mut self, folder: &str, mut local: LocalRecord) -> Result<u64, StoreError> {
        let mut meta = self.meta(folder)?;
        local.record.sequence = meta.next_sequence;
        meta.next_sequence += 1;
        self.put_meta(folder, &meta)?;
        let sequence = local.record.sequence;
        let mut tables = Tables::open(&self.txn)?;
        tables.replace(folder, &local, true)?;
        self.rows += 1;
        Ok(sequence)
    }

    /// Stores many records of `folder` as [`Self::put_change`] (`true`: a local change, which
    /// takes the folder's next sequence number, in order) or [`Self::put_unchanged`]
    /// (`false`) would one by one, opening each table once for all of them: per record, the
    /// table opens and the folder's metadata cost more than the rows.
    pub fn put_records(
        &mut self,
        folder: &str,
        records: impl IntoIterator<Item = (LocalRecord, bool)>,
    ) -> Result<(), StoreError> {
        let mut meta: Option<FolderMeta> = None;
        {
            let mut tables = Tables::open(&self.txn)?;
            for (mut local, is_change) in records {
                if is_change {
                    let meta = match &mut meta {
                        Some(meta) => meta,
                        None => meta.insert(self.meta(folder)?),
                    };
                    local.record.sequence = meta.next_sequence;
                    meta.next_sequence += 1;
                }
                tables.replace(folder, &local, is_change)?;
                self.rows += 1;
            }
        }
        match meta {
            Some(meta) => self.put_meta(folder, &meta),
            None => Ok(()),
        }
    }

    /// Forgets a path entirely (no tombstone): for a receive-only local addition that is
    /// reverted, which no peer ever saw.
    pub fn remove_record(&mut self, folder: &str, path: &RelPath) -> Result<(), StoreError> {
        let mut tables = Tables::open(&self.txn)?;
        let old = tables.files.get((folder, path.as_str())).map_err(db_err)?;
        let old = old.map(|v| decode_entry(folder, path.as_str(), v.value())).transpose()?;
        if let Some(old) = old {
            tables.unlink(folder, &old.record)?;
            tables.files.remove((folder, path.as_str())).map_err(db_err)?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Stores a record as given, keeping its sequence number: for stat-only updates, where
    /// nothing a peer sees has changed.
    pub fn put_unchanged(&mut self, folder: &str, local: &LocalRecord) -> Result<(), StoreError> {
        Tables::open(&self.txn)?.replace(folder, local, false)?;
        self.rows += 1;
        Ok(())
    }

    /// Stores records `peer` announced for `folder`. With `replace`, everything held from
    /// that peer for the folder is forgotten first (a full index from a new index id).
    pub fn put_peer_records(
        &mut self,
        folder: &str,
        peer: &str,
        index_id: u64,
        records: &[FileRecord],
        replace: bool,
    ) -> Result<(), StoreError> {
        let mut meta = if replace { PeerMeta::default() } else { self.peer_meta(folder, peer)? };
        {
            let n = {
                let mut numbers = self.txn.open_table(PEER_NUMBERS).map_err(db_err)?;
                number_peer(&mut numbers, peer)?
            };
            let mut table = self.txn.open_table(PEER_FILES).map_err(db_err)?;
            if replace {
                let held = table.len().map_err(db_err)?;
                table
                    .retain_in((folder, n, "")..=(folder, n, "\u{10FFFF}"), |_, _| false)
                    .map_err(db_err)?;
                self.rows += held.saturating_sub(table.len().map_err(db_err)?);
            }
            for record in records {
                let value = records::encode_peer_file(record);
                table
                    .insert((folder, n, record.path.as_str()), value.as_slice())
                    .map_err(db_err)?;
                self.rows += 1;
                meta.max_sequence = meta.max_sequence.max(record.sequence);
            }
        }
        meta.index_id = index_id;
        self.put_peer_meta(folder, peer, &meta)
    }

    fn peer_meta(&self, folder: &str, peer: &str) -> Result<PeerMeta, StoreError> {
        let table = self.txn.open_table(PEER_META).map_err(db_err)?;
        read_peer_meta(&table, folder, peer)
    }

    fn put_peer_meta(
        &mut self,
        folder: &str,
        peer: &str,
        meta: &PeerMeta,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(PEER_META).map_err(db_err)?;
        table.insert((folder, peer), records::encode_peer_meta(meta).as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Lowers the highest sequence held from `peer` for `folder` to at most `cap`, so the
    /// next connection resumes from there: the session holds back records it could not
    /// rebuild from an edit and asked for again (a lost answer must be sent again).
    pub fn cap_peer_sequence(
        &mut self,
        folder: &str,
        peer: &str,
        cap: u64,
    ) -> Result<(), StoreError> {
        let mut meta = self.peer_meta(folder, peer)?;
        if meta.max_sequence <= cap {
            return Ok(());
        }
        meta.max_sequence = cap;
        self.put_peer_meta(folder, peer, &meta)
    }

    /// Replaces the folder's pending records with `records`: what a plan is about to commit
    /// once its steps are done (an empty slice clears them). Chunk lists are left out: the
    /// scanner that may use a pending record has just chunked the content itself.
    pub fn set_applying(
        &mut self,
        folder: &str,
        records: &[&FileRecord],
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(APPLYING).map_err(db_err)?;
        table.retain_in((folder, "")..=(folder, "\u{10FFFF}"), |_, _| false).map_err(db_err)?;
        for record in records {
            let header = FileRecord { chunks: Vec::new(), ..(*record).clone() };
            let value = records::encode_full_record(&header);
            table.insert((folder, record.path.as_str()), value.as_slice()).map_err(db_err)?;
        }
        Ok(())
    }

    /// Remembers the mode a folder runs in.
    pub fn remember_mode(&mut self, folder: &str, mode: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(FOLDER_MODES).map_err(db_err)?;
        table.insert(folder, mode).map_err(db_err)?;
        Ok(())
    }

    /// Records that `folder` was in sync with every peer at `secs` (Unix seconds).
    pub fn set_synced_at(&mut self, folder: &str, secs: u64) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(FOLDER_SYNCED).map_err(db_err)?;
        table.insert(folder, secs).map_err(db_err)?;
        Ok(())
    }

    /// Gives every record of `folder` a new sequence number, so the next index exchange
    /// sends all of them (peers ignore versions they already have).
    pub fn resequence(&mut self, folder: &str) -> Result<usize, StoreError> {
        let records = self.folder_records(folder)?;
        let count = records.len();
        for local in records {
            self.put_change(folder, local)?;
        }
        Ok(count)
    }

    /// Every record of `folder`, as this transaction sees it.
    fn folder_records(&self, folder: &str) -> Result<Vec<LocalRecord>, StoreError> {
        let files = self.txn.open_table(FILES).map_err(db_err)?;
        let mut records = Vec::new();
        for entry in files.range((folder, "")..).map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (entry_folder, path) = key.value();
            if entry_folder != folder {
                break;
            }
            records.push(decode_entry(folder, path, value.value())?);
        }
        Ok(records)
    }

    /// Appends an event to the log (dropping the oldest past [`MAX_EVENTS`]).
    pub fn log_event(&mut self, event: &Event) -> Result<(), StoreError> {
        self.log_events(std::slice::from_ref(event))
    }

    /// Appends `events` to the event log, in order (the table opened once for all).
    pub fn log_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(EVENTS).map_err(db_err)?;
        let mut last = table.last().map_err(db_err)?.map(|(k, _)| k.value()).unwrap_or(0);
        for event in events {
            let id = last + 1;
            table.insert(id, records::encode_event(event).as_slice()).map_err(db_err)?;
            if id > MAX_EVENTS {
                table.remove(id - MAX_EVENTS).map_err(db_err)?;
            }
            last = id;
        }
        Ok(())
    }

    /// Removes every trace of a folder.
    pub fn remove_folder(&mut self, folder: &str) -> Result<(), StoreError> {
        let records = self.folder_records(folder)?;
        {
            let mut tables = Tables::open(&self.txn)?;
            for local in &records {
                tables.unlink(folder, &local.record)?;
                tables.files.remove((folder, local.record.path.as_str())).map_err(db_err)?;
            }
        }
        self.rows += records.len() as u64;
        self.set_applying(folder, &[])?;
        let mut folders = self.txn.open_table(FOLDERS).map_err(db_err)?;
        folders.remove(folder).map_err(db_err)?;
        let mut synced = self.txn.open_table(FOLDER_SYNCED).map_err(db_err)?;
        synced.remove(folder).map_err(db_err)?;
        Ok(())
    }

    /// Makes the batch durable.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(db_err)?;
        self.writes.committed(self.rows);
        Ok(())
    }

    fn meta(&self, folder: &str) -> Result<FolderMeta, StoreError> {
        let table = self.txn.open_table(FOLDERS).map_err(db_err)?;
        let value = table.get(folder).map_err(db_err)?;
        match value {
            Some(v) => decode_meta_entry(folder, v.value()),
            None => Ok(FolderMeta { next_sequence: 1, index_id: new_index_id(folder) }),
        }
    }

    fn put_meta(&mut self, folder: &str, meta: &FolderMeta) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(FOLDERS).map_err(db_err)?;
        table.insert(folder, records::encode_meta(meta).as_slice()).map_err(db_err)?;
        Ok(())
    }
}

/// The tables a local record's rows live in, open for one write transaction: a batch of
/// records opens them once (each open and close of a table updates the transaction's table
/// tree).
struct Tables<'t> {
    files: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    seqs: redb::Table<'t, (&'static str, u64), &'static str>,
    chunks: redb::MultimapTable<'t, &'static [u8], (&'static str, &'static str, u64, u32)>,
    contents: redb::MultimapTable<'t, u64, (&'static str, &'static str)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            files: txn.open_table(FILES).map_err(db_err)?,
            seqs: txn.open_table(SEQUENCES).map_err(db_err)?,
            chunks: txn.open_multimap_table(CHUNKS).map_err(db_err)?,
            contents: txn.open_multimap_table(CONTENTS).map_err(db_err)?,
        })
    }

    /// Stores `local`; with `reindex`, its old version's sequence and chunk rows are replaced
    /// by its own.
    fn replace(
        &mut self,
        folder: &str,
        local: &LocalRecord,
        reindex: bool,
    ) -> Result<(), StoreError> {
        let path = local.record.path.as_str();
        if reindex {
            let old = self.files.get((folder, path)).map_err(db_err)?;
            let old = old.map(|v| decode_entry(folder, path, v.value())).transpose()?;
            if let Some(old) = old {
                self.unlink(folder, &old.record)?;
            }
            self.link(folder, &local.record)?;
        }
        self.files
            .insert((folder, path), records::encode_file(local).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Adds a record's sequence and chunk entries.
    fn link(&mut self, folder: &str, record: &FileRecord) -> Result<(), StoreError> {
        let path = record.path.as_str();
        self.seqs.insert((folder, record.sequence), path).map_err(db_err)?;
        if record.deleted {
            return Ok(());
        }
        for chunk in record.chunks.iter().filter(|c| c.len >= MIN_LOCATED_CHUNK) {
            let location = (folder, path, chunk.offset, chunk.len);
            self.chunks.insert(chunk.hash.as_bytes().as_slice(), location).map_err(db_err)?;
        }
        if by_content(record) {
            self.contents.insert(content_key(&record.hash), (folder, path)).map_err(db_err)?;
        }
        Ok(())
    }

    /// Removes a record's sequence and chunk entries.
    fn unlink(&mut self, folder: &str, record: &FileRecord) -> Result<(), StoreError> {
        let path = record.path.as_str();
        self.seqs.remove((folder, record.sequence)).map_err(db_err)?;
        // every chunk, not only located ones: an index written before MIN_LOCATED_CHUNK has
        // rows for small chunks too
        for chunk in &record.chunks {
            let location = (folder, path, chunk.offset, chunk.len);
            self.chunks.remove(chunk.hash.as_bytes().as_slice(), location).map_err(db_err)?;
        }
        if by_content(record) {
            self.contents.remove(content_key(&record.hash), (folder, path)).map_err(db_err)?;
        }
        Ok(())
    }
}

/// A live, non-empty file some of whose chunks are too small to be located: findable by
/// its whole content instead (see [`CONTENTS`]).
fn by_content(record: &FileRecord) -> bool {
    !record.deleted
        && record.kind == tandem_proto::model::EntryKind::File
        && record.chunks.iter().any(|c| c.len < MIN_LOCATED_CHUNK)
}

/// The [`CONTENTS`] key of a content hash.
fn content_key(hash: &Hash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A fresh index id: unique per folder incarnation, derived from the folder, the time and
/// the process (no randomness is needed, only distinctness).
fn new_index_id(folder: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{folder}\0{now}\0{}", std::process::id());
    let digest = blake3::hash(seed.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use tandem_proto::model::{ChunkRef, EntryKind, ShortId, VersionVector};

    use super::*;

    pub(super) fn record(path: &str, size: u32) -> FileRecord {
        let hash = Hash::of(path.as_bytes());
        FileRecord {
            path: RelPath::new(path).unwrap(),
            kind: EntryKind::File,
            size: u64::from(size),
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o644,
            symlink_target: None,
            hash,
            chunks: vec![ChunkRef { offset: 0, len: size, hash }],
            version: VersionVector::new().bumped(ShortId::new(7), 1_700_000_000),
            sequence: 3,
            deleted: false,
            modified_by: ShortId::new(7),
        }
    }

    const PEER: &str = "GEBO35O-D3LRJFH-TJMKO7M-XPN4Q5N-TO7MQDQ-AXL2XJL-VHYVL6R-2CQVGPF";

    /// An index as tandem wrote it before peer numbers: peer rows keyed by device id text.
    fn write_v1_index(path: &Path, rows: &[(&str, &str, FileRecord)]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(PEER_FILES_V1).unwrap();
            for (folder, peer, record) in rows {
                let value = records::encode_full_record(record);
                table.insert((*folder, *peer, record.path.as_str()), value.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(PEER_META).unwrap();
            let value = records::encode_peer_meta(&PeerMeta { index_id: 5, max_sequence: 3 });
            meta.insert(("f", PEER), value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    fn v1_rows() -> Vec<(&'static str, &'static str, FileRecord)> {
        vec![
            ("f", PEER, record("a/x.txt", 10)),
            ("f", PEER, record("a/y.txt", 20)),
            ("f", "OTHER", record("a/x.txt", 30)),
            ("g", PEER, record("b.txt", 40)),
        ]
    }

    fn has_v1_table(path: &Path) -> bool {
        let db = builder().open_read_only(path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.list_tables().unwrap().any(|t| t.name() == PEER_FILES_V1.name())
    }

    #[test]
    fn a_capped_resume_point_is_lowered_in_the_same_commit_and_never_raised() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.redb")).unwrap();
        let at = |path, sequence| FileRecord { sequence, ..record(path, 10) };
        let mut batch = index.write().unwrap();
        batch
            .put_peer_records("f", PEER, 5, &[at("a/x.txt", 40), at("a/y.txt", 50)], true)
            .unwrap();
        batch.cap_peer_sequence("f", PEER, 41).unwrap();
        batch.commit().unwrap();
        assert_eq!(index.peer_meta("f", PEER).unwrap().max_sequence, 41);
        let mut batch = index.write().unwrap();
        batch.cap_peer_sequence("f", PEER, 45).unwrap();
        batch.commit().unwrap();
        assert_eq!(index.peer_meta("f", PEER).unwrap().max_sequence, 41, "a cap never raises it");
        // both records are kept: only where a reconnect resumes moved
        assert!(index.peer_record("f", PEER, &RelPath::new("a/y.txt").unwrap()).unwrap().is_some());
    }

    #[test]
    fn peer_records_of_an_old_index_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.redb");
        write_v1_index(&path, &v1_rows());
        let index = Index::open(&path).unwrap();
        let under = RelPath::new("a").unwrap();
        assert_eq!(
            index.peer_records("f", PEER).unwrap(),
            vec![record("a/x.txt", 10), record("a/y.txt", 20)]
        );
        assert_eq!(index.peer_records("f", "OTHER").unwrap(), vec![record("a/x.txt", 30)]);
        assert_eq!(index.peer_records("g", PEER).unwrap(), vec![record("b.txt", 40)]);
        assert_eq!(index.peer_records_under("f", PEER, &under).unwrap().len(), 2);
        let x = RelPath::new("a/x.txt").unwrap();
        assert_eq!(index.peer_record("f", "OTHER", &x).unwrap(), Some(record("a/x.txt", 30)));
        assert_eq!(index.peer_meta("f", PEER).unwrap().index_id, 5);
        drop(index);
        assert!(!has_v1_table(&path), "the old table is gone");
        // a record put after the migration lands beside the migrated ones
        let index = Index::open(&path).unwrap();
        let mut batch = index.write().unwrap();
        batch.put_peer_records("f", PEER, 5, &[record("a/z.txt", 50)], false).unwrap();
        batch.commit().unwrap();
        assert_eq!(index.peer_records("f", PEER).unwrap().len(), 3);
        assert_eq!(index.peer_records("f", "OTHER").unwrap().len(), 1);
    }

    #[test]
    fn a_read_only_open_upgrades_an_old_index_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.redb");
        write_v1_index(&path, &v1_rows());
        let index = Index::open_read_only(&path).unwrap();
        assert_eq!(index.peer_records("f", PEER).unwrap().len(), 2);
        drop(index);
        assert!(!has_v1_table(&path));
        // while an older writer holds it, it cannot be upgraded
        write_v1_index(&dir.path().join("j.redb"), &v1_rows());
        let held = create(&dir.path().join("j.redb")).unwrap();
        assert!(matches!(
            Index::open_read_only(&dir.path().join("j.redb")),
            Err(StoreError::NeedsUpgrade)
        ));
        drop(held);
    }

    #[test]
    fn peer_rows_are_keyed_by_a_number_and_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.redb")).unwrap();
        let mut batch = index.write().unwrap();
        batch.put_peer_records("f", PEER, 1, &[record("d0001/f0001234.txt", 15)], true).unwrap();
        batch
            .put_peer_records("f", "SECOND", 1, &[record("d0001/f0001234.txt", 16)], true)
            .unwrap();
        batch.commit().unwrap();
        let txn = index.read().unwrap();
        let numbers = txn.open_table(PEER_NUMBERS).unwrap();
        assert_eq!(numbers.get(PEER).unwrap().unwrap().value(), 1);
        assert_eq!(numbers.get("SECOND").unwrap().unwrap().value(), 2);
        let table = txn.open_table(PEER_FILES).unwrap();
        let value = table.get(("f", 1, "d0001/f0001234.txt")).unwrap().unwrap();
        assert!(value.value().len() < 80, "{} bytes", value.value().len());
        let path = RelPath::new("d0001/f0001234.txt").unwrap();
        assert_eq!(index.peer_record("f", "SECOND", &path).unwrap().unwrap().size, 16);
        assert_eq!(index.peer_record("f", "UNKNOWN", &path).unwrap(), None);
        assert!(index.peer_records("f", "UNKNOWN").unwrap().is_empty());
    }

    /// An index holding a file of one 100-byte chunk and one of a `MIN_LOCATED_CHUNK` chunk.
    fn small_and_big() -> (tempfile::TempDir, Index, FileRecord, FileRecord) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.redb")).unwrap();
        let (small, big) = (record("small", 100), record("big", MIN_LOCATED_CHUNK));
        let mut batch = index.write().unwrap();
        for r in [&small, &big] {
            batch
                .put_change("f", LocalRecord { record: r.clone(), stat: StatKey::default() })
                .unwrap();
        }
        batch.commit().unwrap();
        (dir, index, small, big)
    }

    #[test]
    fn only_chunks_of_a_page_or_more_are_located() {
        let (_dir, index, small, big) = small_and_big();
        assert!(index.chunk_locations(&small.hash).unwrap().is_empty());
        assert_eq!(index.chunk_locations(&big.hash).unwrap().len(), 1);
        // a row an older tandem wrote for a small chunk goes with its record
        let mut batch = index.write().unwrap();
        let mut chunks = batch.txn.open_multimap_table(CHUNKS).unwrap();
        chunks.insert(small.hash.as_bytes().as_slice(), ("f", "small", 0, 100)).unwrap();
        drop(chunks);
        batch.remove_record("f", &small.path).unwrap();
        batch.commit().unwrap();
        assert!(index.chunk_locations(&small.hash).unwrap().is_empty());
    }

    #[test]
    fn files_whose_chunks_are_not_located_are_found_by_their_content() {
        let (_dir, index, small, big) = small_and_big();
        let found = index.files_with_content(&small.hash).unwrap();
        assert_eq!(found, vec![("f".to_string(), "small".to_string())]);
        // a file whose chunks are located needs no content row
        assert!(index.files_with_content(&big.hash).unwrap().is_empty());
        let mut batch = index.write().unwrap();
        batch.remove_record("f", &small.path).unwrap();
        batch.commit().unwrap();
        assert!(index.files_with_content(&small.hash).unwrap().is_empty());
    }

    /// What an index says about folder `f`: every change in sequence order (with its stat),
    /// the chunk locations and content rows of `paths`, and the event log.
    fn observable(index: &Index, paths: &[&str]) -> String {
        let changes = index.changes_since("f", 0, usize::MAX).unwrap();
        let mut out = format!("{changes:?}");
        for path in paths {
            let record = index.record("f", &RelPath::new(*path).unwrap()).unwrap().unwrap();
            let hash = record.record.hash;
            out += &format!("\n{path}: {:?}", index.chunk_locations(&hash).unwrap());
            out += &format!(" {:?}", index.files_with_content(&hash).unwrap());
        }
        let events = index.events(0, 100).unwrap();
        out + &format!("\n{events:?}")
    }

    #[test]
    fn a_batch_of_records_is_stored_as_one_by_one_puts_would_store_it() {
        let paths = ["a", "b/big", "b/small", "c"];
        let (small, big) = (100, MIN_LOCATED_CHUNK);
        let first = [record("a", small), record("b/big", big), record("b/small", small)];
        // a second round: changed and unchanged records, one of them over an existing path
        let mut changed = record("b/small", big);
        changed.hash = Hash::of(b"new content");
        changed.chunks[0].hash = changed.hash;
        let mut unchanged = LocalRecord { record: record("a", small), stat: StatKey::default() };
        unchanged.record.sequence = 1;
        unchanged.stat.size = 99;
        let second = [(changed, true), (record("c", small), true)];
        let event = |n: u64| Event {
            time_ns: n as i64,
            folder: "f".into(),
            path: format!("p{n}"),
            kind: EventKind::Updated,
            device: None,
            detail: String::new(),
        };
        let local = |r: &FileRecord| LocalRecord { record: r.clone(), stat: StatKey::default() };
        let dir = tempfile::tempdir().unwrap();
        let one_by_one = Index::open(&dir.path().join("one.redb")).unwrap();
        let mut batch = one_by_one.write().unwrap();
        for r in &first {
            batch.put_change("f", local(r)).unwrap();
        }
        batch.log_event(&event(1)).unwrap();
        batch.log_event(&event(2)).unwrap();
        batch.commit().unwrap();
        let mut batch = one_by_one.write().unwrap();
        batch.put_unchanged("f", &unchanged).unwrap();
        for (r, _) in &second {
            batch.put_change("f", local(r)).unwrap();
        }
        batch.commit().unwrap();
        let batched = Index::open(&dir.path().join("batched.redb")).unwrap();
        let mut batch = batched.write().unwrap();
        batch.put_records("f", first.iter().map(|r| (local(r), true))).unwrap();
        batch.log_events(&[event(1), event(2)]).unwrap();
        batch.commit().unwrap();
        let mut batch = batched.write().unwrap();
        let rest = second.iter().map(|(r, change)| (local(r), *change));
        batch.put_records("f", std::iter::once((unchanged.clone(), false)).chain(rest)).unwrap();
        batch.commit().unwrap();
        assert_eq!(observable(&batched, &paths), observable(&one_by_one, &paths));
        let seqs: Vec<u64> =
            batched.changes_since("f", 0, 10).unwrap().iter().map(|l| l.record.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5], "b/small's first version (3) was replaced");
    }
}

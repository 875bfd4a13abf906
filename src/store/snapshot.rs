//! A consistent read view of the index for callers that look up many paths at once, as
//! planning a sync round does: one read transaction with its tables opened once.
//!
//! Why: in redb's multi-process mode every read transaction takes and releases file locks
//! (several `fcntl` calls) and every table open walks the table tree, so a transaction per
//! lookup cost more than the lookups themselves — planning a round of 50,000 new small
//! files spent a sixth of the receiver's CPU there. One view also means the plan sees one
//! state of the index, not records from before and after a concurrent commit.

use std::collections::BTreeMap;

use redb::{ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction};
use tandem_proto::model::{FileRecord, Hash, RelPath};

use super::tables::{CHUNKS, CONTENTS, FILES, PEER_FILES};
use super::{
    ChunkLocation, Index, LocalRecord, StoreError, content_key, db_err, decode_entry,
    decode_peer_entry, peer_number,
};

type FilesTable = ReadOnlyTable<(&'static str, &'static str), &'static [u8]>;
type PeerFilesTable = ReadOnlyTable<(&'static str, u32, &'static str), &'static [u8]>;
type ChunksTable = ReadOnlyMultimapTable<&'static [u8], (&'static str, &'static str, u64, u32)>;
type ContentsTable = ReadOnlyMultimapTable<u64, (&'static str, &'static str)>;

/// The index as of one moment; reads through it never see later commits.
pub struct Snapshot {
    files: FilesTable,
    /// Opened on the first peer lookup; the inner `None` when no peer record was ever stored.
    peer_files: Option<Option<PeerFilesTable>>,
    /// Opened on the first chunk lookup.
    chunks: Option<ChunksTable>,
    /// Opened on the first content lookup.
    contents: Option<ContentsTable>,
    /// Peer numbers looked up so far (`None`: the peer has no records).
    numbers: BTreeMap<String, Option<u32>>,
    txn: ReadTransaction,
}

impl Index {
    /// A read view for many lookups (see the module docs).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.read()?;
        let files = txn.open_table(FILES).map_err(db_err)?;
        let (peer_files, chunks, contents, numbers) = (None, None, None, BTreeMap::new());
        Ok(Snapshot { files, peer_files, chunks, contents, numbers, txn })
    }
}

impl Snapshot {
    /// The local record of `path` in `folder`.
    pub fn record(&self, folder: &str, path: &RelPath) -> Result<Option<LocalRecord>, StoreError> {
        let value = self.files.get((folder, path.as_str())).map_err(db_err)?;
        value.map(|v| decode_entry(folder, path.as_str(), v.value())).transpose()
    }

    /// The record `peer` announced for `path` in `folder`.
    pub fn peer_record(
        &mut self,
        folder: &str,
        peer: &str,
        path: &RelPath,
    ) -> Result<Option<FileRecord>, StoreError> {
        let Some((n, table)) = self.peer_table(peer)? else { return Ok(None) };
        let value = table.get((folder, n, path.as_str())).map_err(db_err)?;
        value.map(|v| decode_peer_entry(folder, peer, path.as_str(), v.value())).transpose()
    }

    /// The local records of `path` and everything below it, in path order.
    pub fn records_under(
        &self,
        folder: &str,
        path: &RelPath,
    ) -> Result<Vec<LocalRecord>, StoreError> {
        let mut out = Vec::new();
        if let Some(value) = self.files.get((folder, path.as_str())).map_err(db_err)? {
            out.push(decode_entry(folder, path.as_str(), value.value())?);
        }
        // children sort between "path/" and "path0" ('0' follows '/' in byte order)
        let (from, to) = (format!("{path}/"), format!("{path}0"));
        let below = self.files.range((folder, from.as_str())..(folder, to.as_str()));
        for entry in below.map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (_, child) = key.value();
            out.push(decode_entry(folder, child, value.value())?);
        }
        Ok(out)
    }

    /// The records `peer` announced for `path` and everything below it, in path order.
    pub fn peer_records_under(
        &mut self,
        folder: &str,
        peer: &str,
        path: &RelPath,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let Some((n, table)) = self.peer_table(peer)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        if let Some(value) = table.get((folder, n, path.as_str())).map_err(db_err)? {
            out.push(decode_peer_entry(folder, peer, path.as_str(), value.value())?);
        }
        let (from, to) = (format!("{path}/"), format!("{path}0"));
        let below = table.range((folder, n, from.as_str())..(folder, n, to.as_str()));
        for entry in below.map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (_, _, child) = key.value();
            out.push(decode_peer_entry(folder, peer, child, value.value())?);
        }
        Ok(out)
    }

    /// Where the chunk `hash` can be read locally (chunks of at least 4 KiB are located).
    pub fn chunk_locations(&mut self, hash: &Hash) -> Result<Vec<ChunkLocation>, StoreError> {
        if self.chunks.is_none() {
            self.chunks = Some(self.txn.open_multimap_table(CHUNKS).map_err(db_err)?);
        }
        let Some(table) = &self.chunks else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for value in table.get(hash.as_bytes().as_slice()).map_err(db_err)? {
            let value = value.map_err(db_err)?;
            let (folder, path, offset, len) = value.value();
            out.push(ChunkLocation { folder: folder.into(), path: path.into(), offset, len });
        }
        Ok(out)
    }

    /// Local files (folder, path) whose whole content may hash to `hash`: only files with
    /// chunks too small to be located are listed, and the key is a prefix of the hash, so
    /// the caller must verify what it reads.
    pub fn files_with_content(&mut self, hash: &Hash) -> Result<Vec<(String, String)>, StoreError> {
        if self.contents.is_none() {
            self.contents = Some(self.txn.open_multimap_table(CONTENTS).map_err(db_err)?);
        }
        let Some(table) = &self.contents else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for value in table.get(content_key(hash)).map_err(db_err)? {
            let value = value.map_err(db_err)?;
            let (folder, path) = value.value();
            out.push((folder.to_string(), path.to_string()));
        }
        Ok(out)
    }

    /// `peer`'s number and the peer-records table, or `None` if it has no records.
    fn peer_table(&mut self, peer: &str) -> Result<Option<(u32, &PeerFilesTable)>, StoreError> {
        let n = match self.numbers.get(peer) {
            Some(n) => *n,
            None => {
                let n = peer_number(&self.txn, peer)?;
                self.numbers.insert(peer.to_owned(), n);
                n
            }
        };
        let Some(n) = n else { return Ok(None) };
        if self.peer_files.is_none() {
            self.peer_files = Some(match self.txn.open_table(PEER_FILES) {
                Ok(table) => Some(table),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(e)),
            });
        }
        Ok(self.peer_files.as_ref().and_then(Option::as_ref).map(|table| (n, table)))
    }
}

//! A folder's records in path-ordered slices: the local records and every peer's records
//! for one range of paths at a time, all read in one transaction. The daemon decides what
//! a folder needs from these slices without holding the whole folder in memory, so its
//! resident memory stays flat however many files the folder has.

use std::collections::VecDeque;

use tandem_proto::model::FileRecord;

use crate::store::tables::{FILES, PEER_FILES};
use crate::store::{Index, LocalRecord, StoreError, db_err, decode_entry, decode_peer_entry};

/// One slice: the local records and, per peer (in the order asked), the peer's records of
/// the same range of paths. Each list is in path order.
pub struct Slice {
    /// This device's records.
    pub local: Vec<LocalRecord>,
    /// Each peer's records.
    pub peers: Vec<Vec<FileRecord>>,
}

/// A buffered, path-ordered stream of decoded entries.
struct Stream<T> {
    buffered: VecDeque<(String, T)>,
    done: bool,
}

impl<T> Stream<T> {
    fn new() -> Self {
        Self { buffered: VecDeque::new(), done: false }
    }

    /// The last buffered path, when the buffer is full and the stream goes on.
    fn bound(&self, size: usize) -> Option<&str> {
        (!self.done && self.buffered.len() >= size)
            .then(|| self.buffered.back().map(|(p, _)| p.as_str()))
            .flatten()
    }

    /// Takes every buffered entry up to `upto` (all when `None`).
    fn take_upto(&mut self, upto: Option<&str>) -> Vec<T> {
        let mut out = Vec::new();
        while let Some((path, _)) = self.buffered.front() {
            if upto.is_some_and(|u| path.as_str() > u) {
                break;
            }
            if let Some((_, item)) = self.buffered.pop_front() {
                out.push(item);
            }
        }
        out
    }
}

impl Index {
    /// Visits `folder`'s records in slices of about `size` paths: per slice, the local
    /// records and each of `peers`' records for the same paths. One read transaction, so
    /// the slices are a consistent snapshot; memory is bounded by the slice size.
    pub fn for_each_slice(
        &self,
        folder: &str,
        peers: &[String],
        size: usize,
        mut visit: impl FnMut(Slice),
    ) -> Result<(), StoreError> {
        let size = size.max(1);
        let txn = self.read()?;
        let files = txn.open_table(FILES).map_err(db_err)?;
        let peer_files = txn.open_table(PEER_FILES).map_err(db_err)?;
        let mut local_iter = files.range((folder, "")..).map_err(db_err)?;
        let mut peer_iters = Vec::new();
        for peer in peers {
            // a peer without a number has no records: u32::MAX is past every number
            let n = crate::store::peer_number(&txn, peer)?.unwrap_or(u32::MAX);
            peer_iters.push((n, peer_files.range((folder, n, "")..).map_err(db_err)?));
        }
        let mut local: Stream<LocalRecord> = Stream::new();
        let mut theirs: Vec<Stream<FileRecord>> = peers.iter().map(|_| Stream::new()).collect();
        loop {
            // fill every stream's buffer to `size`
            while !local.done && local.buffered.len() < size {
                match local_iter.next() {
                    Some(entry) => {
                        let (key, value) = entry.map_err(db_err)?;
                        let (f, path) = key.value();
                        if f != folder {
                            local.done = true;
                            break;
                        }
                        let record = decode_entry(folder, path, value.value())?;
                        local.buffered.push_back((path.to_string(), record));
                    }
                    None => local.done = true,
                }
            }
            for ((stream, (n, iter)), peer) in theirs.iter_mut().zip(&mut peer_iters).zip(peers) {
                while !stream.done && stream.buffered.len() < size {
                    match iter.next() {
                        Some(entry) => {
                            let (key, value) = entry.map_err(db_err)?;
                            let (f, p, path) = key.value();
                            if f != folder || p != *n {
                                stream.done = true;
                                break;
                            }
                            let record = decode_peer_entry(folder, peer, path, value.value())?;
                            stream.buffered.push_back((path.to_string(), record));
                        }
                        None => stream.done = true,
                    }
                }
            }
            // the slice ends at the smallest last path of any stream that has more to come
            let mut upto: Option<String> = local.bound(size).map(str::to_string);
            for stream in &theirs {
                if let Some(bound) = stream.bound(size)
                    && upto.as_deref().is_none_or(|u| bound < u)
                {
                    upto = Some(bound.to_string());
                }
            }
            let slice = Slice {
                local: local.take_upto(upto.as_deref()),
                peers: theirs.iter_mut().map(|s| s.take_upto(upto.as_deref())).collect(),
            };
            let empty = slice.local.is_empty() && slice.peers.iter().all(Vec::is_empty);
            if !empty {
                visit(slice);
            }
            let drained = local.done
                && local.buffered.is_empty()
                && theirs.iter().all(|s| s.done && s.buffered.is_empty());
            if drained {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tandem_proto::model::{EntryKind, Hash, RelPath, ShortId, VersionVector};

    use super::*;
    use crate::store::StatKey;

    fn record(path: &str) -> FileRecord {
        FileRecord {
            path: RelPath::new(path).unwrap(),
            kind: EntryKind::File,
            size: 1,
            mtime_ns: 1,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::of(path.as_bytes()),
            chunks: Vec::new(),
            version: VersionVector::new().bumped(ShortId::new(1), 1),
            sequence: 0,
            deleted: false,
            modified_by: ShortId::new(1),
        }
    }

    #[test]
    fn slices_cover_every_path_once_in_order_and_line_up_across_peers() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("i.redb")).unwrap();
        let names = |from: u32, to: u32| -> Vec<String> {
            (from..to).map(|i| format!("p{i:05}")).collect()
        };
        // local has every 2nd path, peer x every 3rd, peer y a block only it has; another
        // folder and another peer must not leak in
        let mut batch = index.write().unwrap();
        for path in names(0, 1000).iter().filter(|p| p[1..].parse::<u32>().unwrap() % 2 == 0) {
            let local = LocalRecord { record: record(path), stat: StatKey::default() };
            batch.put_change("f", local).unwrap();
        }
        let x: Vec<FileRecord> = names(0, 1000)
            .iter()
            .filter(|p| p[1..].parse::<u32>().unwrap() % 3 == 0)
            .map(|p| record(p))
            .collect();
        let y: Vec<FileRecord> = names(2000, 2100).iter().map(|p| record(p)).collect();
        batch.put_peer_records("f", "x", 1, &x, true).unwrap();
        batch.put_peer_records("f", "y", 1, &y, true).unwrap();
        batch.put_peer_records("f", "z", 1, &[record("p00001")], true).unwrap();
        batch
            .put_change("g", LocalRecord { record: record("p00001"), stat: StatKey::default() })
            .unwrap();
        batch.commit().unwrap();

        for size in [1, 7, 64, 5000] {
            let (mut local, mut px, mut py) = (Vec::new(), Vec::new(), Vec::new());
            let mut last_upper: Option<String> = None;
            index
                .for_each_slice("f", &["x".into(), "y".into()], size, |slice| {
                    let paths: Vec<String> = slice
                        .local
                        .iter()
                        .map(|l| l.record.path.to_string())
                        .chain(slice.peers.iter().flatten().map(|r| r.path.to_string()))
                        .collect();
                    let (lo, hi) = (paths.iter().min().unwrap(), paths.iter().max().unwrap());
                    assert!(last_upper.as_ref().is_none_or(|u| lo > u), "slices overlap");
                    last_upper = Some(hi.clone());
                    local.extend(slice.local.into_iter().map(|l| l.record.path.to_string()));
                    px.extend(slice.peers[0].iter().map(|r| r.path.to_string()));
                    py.extend(slice.peers[1].iter().map(|r| r.path.to_string()));
                })
                .unwrap();
            assert_eq!(local.len(), 500, "size {size}");
            assert_eq!(px, x.iter().map(|r| r.path.to_string()).collect::<Vec<_>>());
            assert_eq!(py, y.iter().map(|r| r.path.to_string()).collect::<Vec<_>>());
            assert!(local.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(local.iter().collect::<BTreeSet<_>>().len(), 500);
        }
    }
}

//! When the index file is compacted, and the compaction itself.
//!
//! redb grows its file by doubling, and copy-on-write frees pages on every commit, so after a
//! big scan a third to a half of the file is free pages. Compaction moves the live pages to
//! the front and truncates the file, but it leaves the file tight: the next commit that needs
//! a page doubles it again. A daemon that compacted after every write wave and then kept
//! writing ended with an index of twice its live pages (about 1,300 bytes per file on both
//! sides of `benches/compare/idle.sh`, 713 without compaction). So a process that keeps
//! writing compacts only when most of the file is free (the doubled file is then still
//! smaller than the file before), and only after a quiet spell: a compaction holds the index
//! for its whole run (seconds at a million files). A process that exits after its writes
//! (`tandem scan`) keeps what it gains until the next writer, so less free space is enough.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{CompactionError, ReadableTableMetadata};

use crate::store::tables::{FILES, PEER_FILES};
use crate::store::{Db, Index, StoreError, db_err, file_len};

/// Rows written before the index looks at its free space again (also at least an eighth of
/// the record rows it holds): looking walks every page, and a compaction moves them, so both
/// are paid for by a proportional amount of writes.
pub(super) const COMPACT_AFTER_ROWS: u64 = 10_000;

/// A commit of at least this many rows belongs to a write wave (a scan, an index exchange, a
/// big pull); a single edit does not.
pub(super) const WAVE_ROWS: u64 = 100;

/// How long a process that keeps writing waits after the last write wave before it compacts.
pub(super) const QUIET_FOR: Duration = Duration::from_secs(30);

/// How long a compaction waits for transactions in progress to end (it holds the index
/// meanwhile, so new ones wait too).
const COMPACT_WAIT: Duration = Duration::from_millis(250);

/// What the writer does after a compaction, which decides when one pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Afterwards {
    /// It keeps writing (a daemon between rounds): redb will double the compacted file.
    Writing,
    /// It exits (`tandem scan`): the file stays as compacted until the next writer.
    Exiting,
}

/// The rows committed through one index handle, and when the last write wave ended.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Rows written since the last look at the free space.
    rows: AtomicU64,
    /// When the last commit of at least [`WAVE_ROWS`] rows ended.
    wave_ended: Mutex<Option<Instant>>,
}

impl Writes {
    /// Counts a committed batch of `rows`.
    pub(super) fn committed(&self, rows: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        if rows >= WAVE_ROWS {
            let mut ended = self.wave_ended.lock().unwrap_or_else(PoisonError::into_inner);
            *ended = Some(Instant::now());
        }
    }

    /// Time since the last write wave ended (`Duration::MAX` when there was none).
    fn quiet_for(&self) -> Duration {
        let ended = *self.wave_ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.map_or(Duration::MAX, |at| at.elapsed())
    }
}

/// The cheap half of the policy, from counters: enough rows written since the last look
/// (at least [`COMPACT_AFTER_ROWS`] and an eighth of the `held` record rows) and, for a
/// writer that goes on writing, no write wave for [`QUIET_FOR`].
pub(super) fn worth_a_look(
    written: u64,
    held: u64,
    quiet_for: Duration,
    afterwards: Afterwards,
) -> bool {
    let enough = written >= COMPACT_AFTER_ROWS && written >= held / 8;
    enough && (afterwards == Afterwards::Exiting || quiet_for >= QUIET_FOR)
}

/// The other half, from the file's length and the bytes of its allocated pages: does a
/// compaction free enough? A writer that goes on writing sees the compacted file doubled by
/// its next commit, so that doubled size must still be at most 7/8 of the file now (more than
/// half of it free). A writer that exits keeps the compacted size until the next writer
/// starts: a quarter of the file free is enough.
pub(super) fn frees_enough(file_len: u64, live: u64, afterwards: Afterwards) -> bool {
    match afterwards {
        Afterwards::Writing => live.saturating_mul(16) <= file_len.saturating_mul(7),
        Afterwards::Exiting => live.saturating_mul(4) <= file_len.saturating_mul(3),
    }
}

impl Index {
    /// Compacts the index file if that pays for a writer that goes on writing (a daemon
    /// between rounds); true when it did. It needs many rows written since the last look
    /// (10,000 and an eighth of the records held), no write wave (a commit of 100 rows or
    /// more) for 30 s, and more than half of the file free: redb doubles the compacted file on
    /// the next commit, which must still leave it at most 7/8 of its length now. Cheap while
    /// the counters say no; otherwise it reads redb's page counts (a walk over every page)
    /// and restarts the row count.
    pub fn maybe_compact(&self) -> Result<bool, StoreError> {
        self.compact_if_worth(Afterwards::Writing)
    }

    /// Like [`Index::maybe_compact`], for a process that writes no more (`tandem scan`): no
    /// quiet spell needed, and a quarter of the file free is enough (the file stays as
    /// compacted until the next writer).
    pub fn maybe_compact_before_exit(&self) -> Result<bool, StoreError> {
        self.compact_if_worth(Afterwards::Exiting)
    }

    fn compact_if_worth(&self, afterwards: Afterwards) -> Result<bool, StoreError> {
        let Db::Write { path, .. } = &self.db else { return Ok(false) };
        let written = self.writes.rows.load(Ordering::Relaxed);
        if written < COMPACT_AFTER_ROWS {
            return Ok(false);
        }
        let quiet_for = self.writes.quiet_for();
        if !worth_a_look(written, self.held_rows()?, quiet_for, afterwards) {
            return Ok(false);
        }
        let started = Instant::now();
        let live = self.live_bytes()?;
        let len = file_len(path);
        // the rows counted so far paid for this look; rows written meanwhile stay counted
        self.writes.rows.fetch_sub(written, Ordering::Relaxed);
        let worth = frees_enough(len, live, afterwards);
        tracing::debug!(
            "index {}: {len} bytes, {live} in pages in use (looked in {:?}); compact: {worth}",
            path.display(),
            started.elapsed()
        );
        if !worth {
            return Ok(false);
        }
        let compacted = self.compact()?;
        if !compacted {
            // busy: the next call looks again without waiting for more rows
            self.writes.rows.fetch_add(written, Ordering::Relaxed);
        }
        Ok(compacted)
    }

    /// File and peer record rows held.
    fn held_rows(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let files = txn.open_table(FILES).map_err(db_err)?.len().map_err(db_err)?;
        let peers = txn.open_table(PEER_FILES).map_err(db_err)?.len().map_err(db_err)?;
        Ok(files + peers)
    }

    /// Bytes in the pages redb has allocated. Pages the last commits freed count as allocated
    /// until a later commit releases them (after a big removal, nearly all of them), so an
    /// empty commit comes first; it also lets redb trim a free tail of the file by itself.
    fn live_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.begin(|db| db.begin_write().map_err(Into::into))?;
        txn.commit().map_err(db_err)?;
        let txn = self.begin(|db| db.begin_write().map_err(Into::into))?;
        let stats = txn.stats().map_err(db_err)?;
        txn.abort().map_err(db_err)?;
        let page = u64::try_from(stats.page_size()).unwrap_or(u64::MAX);
        Ok(stats.allocated_pages().saturating_mul(page))
    }

    /// Compacts now, between transactions: while one stays open past [`COMPACT_WAIT`] (a
    /// follower process reading, say), false and nothing done.
    fn compact(&self) -> Result<bool, StoreError> {
        let Db::Write { path, db } = &self.db else { return Ok(false) };
        // holding the handle's lock keeps new transactions out, so the ones in progress (a
        // session serving index pages, say) drain
        let mut guard = db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(open) = guard.as_mut() else { return Ok(false) };
        let before = file_len(path);
        let started = Instant::now();
        loop {
            match open.compact() {
                Ok(_) => break,
                Err(CompactionError::TransactionInProgress) if started.elapsed() < COMPACT_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(CompactionError::TransactionInProgress) => {
                    tracing::debug!("index {}: compaction postponed: busy", path.display());
                    return Ok(false);
                }
                Err(e) => return Err(db_err(e)),
            }
        }
        tracing::info!(
            "index {}: compacted in {:?}, {before} -> {} bytes",
            path.display(),
            started.elapsed(),
            file_len(path)
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::tests::record;
    use crate::store::{LocalRecord, StatKey};

    fn check_look(
        written: u64,
        held: u64,
        quiet_for: Duration,
        afterwards: Afterwards,
        expected: bool,
    ) {
        let got = worth_a_look(written, held, quiet_for, afterwards);
        assert_eq!(
            got, expected,
            "{written} written, {held} held, quiet {quiet_for:?}, {afterwards:?}"
        );
    }

    fn check_frees(file_len: u64, live: u64, afterwards: Afterwards, expected: bool) {
        let got = frees_enough(file_len, live, afterwards);
        assert_eq!(got, expected, "{file_len} bytes, {live} live, {afterwards:?}");
    }

    #[test]
    fn the_policy_looks_after_enough_rows_and_a_quiet_spell() {
        use Afterwards::{Exiting, Writing};
        check_look(9_999, 0, Duration::MAX, Exiting, false);
        check_look(10_000, 80_000, Duration::ZERO, Exiting, true);
        check_look(10_000, 80_008, Duration::MAX, Exiting, false);
        check_look(20_000, 160_000, Duration::from_secs(29), Writing, false);
        check_look(20_000, 160_000, Duration::from_secs(30), Writing, true);
        check_look(20_000, 160_008, Duration::from_secs(3600), Writing, false);
    }

    #[test]
    fn the_policy_compacts_a_running_index_only_when_most_of_it_is_free() {
        use Afterwards::{Exiting, Writing};
        // `tandem scan` of 1,000,000 files (scale.sh's): 31 % free
        check_frees(427_823_104, 294_866_944, Exiting, true);
        check_frees(427_823_104, 294_866_944, Writing, false);
        // two daemons after adopting 100,000 files (idle.sh): 28 % free, so compacting to 51 MB
        // would end at 102 MB on the next commit
        check_frees(71_307_264, 51_097_600, Writing, false);
        // a compacted file doubled by the next commit: compacting it again would only repeat that
        check_frees(130_789_376, 65_396_736, Writing, false);
        // the doubled size must be at most 7/8 of the file now
        check_frees(1_600, 700, Writing, true);
        check_frees(1_600, 701, Writing, false);
        check_frees(1_600, 1_200, Exiting, true);
        check_frees(1_600, 1_201, Exiting, false);
        check_frees(0, 0, Writing, true);
    }

    fn fill(index: &Index, folder: &str, n: u32) {
        for block in 0..n.div_ceil(1000) {
            let mut batch = index.write().unwrap();
            for i in (block * 1000)..((block + 1) * 1000).min(n) {
                let r = record(&format!("d{:04}/f{i:07}.txt", i / 1000), 15);
                batch
                    .put_change(folder, LocalRecord { record: r, stat: StatKey::default() })
                    .unwrap();
            }
            batch.commit().unwrap();
        }
    }

    fn pretend_quiet(index: &Index) {
        let long_ago = Instant::now().checked_sub(QUIET_FOR + Duration::from_secs(1));
        *index.writes.wave_ended.lock().unwrap() = long_ago;
    }

    fn open(dir: &Path) -> Index {
        Index::open(&dir.join("i.redb")).unwrap()
    }

    #[test]
    fn a_running_index_is_compacted_when_free_pages_dominate_it_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let path = dir.path().join("i.redb");
        fill(&index, "f", COMPACT_AFTER_ROWS as u32 + 10);
        assert!(!index.maybe_compact().unwrap(), "a write wave just ended");
        pretend_quiet(&index);
        let filled = file_len(&path);
        assert!(!index.maybe_compact().unwrap(), "less than half of the file is free");
        assert_eq!(file_len(&path), filled);
        let mut batch = index.write().unwrap();
        batch.remove_folder("f").unwrap();
        batch.commit().unwrap();
        assert!(!index.maybe_compact().unwrap(), "the removal is a write wave");
        pretend_quiet(&index);
        assert!(index.maybe_compact().unwrap());
        assert!(file_len(&path) < filled / 4, "{filled} -> {}", file_len(&path));
        assert!(!index.maybe_compact().unwrap(), "nothing written since");
    }

    #[test]
    fn a_scan_that_exits_compacts_right_away_once_no_transaction_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let path = dir.path().join("i.redb");
        let n = COMPACT_AFTER_ROWS as u32 + 10;
        fill(&index, "f", n);
        let filled = file_len(&path);
        let reading = index.read().unwrap();
        assert!(!index.maybe_compact_before_exit().unwrap(), "a read in progress postpones it");
        drop(reading);
        assert!(index.maybe_compact_before_exit().unwrap(), "postponed, not forgotten");
        assert!(file_len(&path) < filled * 3 / 4, "{filled} -> {}", file_len(&path));
        assert_eq!(index.records("f").unwrap().len(), n as usize);
    }
}

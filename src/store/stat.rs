//! `StatKey`, the scanner's fast path: a file whose (size, mtime ns, ctime ns, inode, mode)
//! tuple is unchanged since the last scan is not read again. The index stores one per path.
//!
//! ctime is in the key because tools (`touch -r`, `rsync -t`, `cp -p`) restore mtime after
//! writing: the content changed but mtime did not, and only ctime tells. This module is pure:
//! it builds and compares tuples; the walker collects them.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// What the scanner remembers about an entry's inode to skip rereading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// The entry was modified so recently that a further change within the same timestamp
    /// tick would be invisible ("racy", as git calls it): the next scan must read it again.
    pub racy: bool,
}

/// The mode bits sync records and applies.
pub const SYNCED_MODE_BITS: u32 = 0o777;

impl StatKey {
    /// The key of an `lstat`/`fstat` result.
    pub fn from_metadata(meta: &Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            mode: meta.mode(),
            racy: false,
        }
    }

    /// This key, marked racy when its mtime or ctime lies within `window_ns` before `now_ns`.
    ///
    /// A ctime ahead of `now_ns` (the clock stepped back) counts as racy too. An mtime ahead
    /// does not: it was set explicitly (a peer's clock, `touch -d`), a later write moves it
    /// back to now and a later explicit reset moves ctime, so either is seen; counting it
    /// racy would reread every future-dated file on every scan.
    pub fn with_racy_check(mut self, now_ns: i64, window_ns: i64) -> Self {
        let since_mtime = now_ns.saturating_sub(self.mtime_ns);
        let since_ctime = now_ns.saturating_sub(self.ctime_ns);
        self.racy = since_ctime < window_ns || (0..window_ns).contains(&since_mtime);
        self
    }

    /// The permission bits tandem syncs: read, write and execute for owner, group and
    /// others (`0o777`). Setuid, setgid and sticky bits are never synced: a peer must not be
    /// able to plant a setuid program on a receiver that runs as root.
    pub fn permissions(&self) -> u32 {
        self.mode & SYNCED_MODE_BITS
    }

    /// True when the stored key says the entry is exactly as last scanned.
    pub fn unchanged(&self, stored: &Self) -> bool {
        !stored.racy
            && self.size == stored.size
            && self.mtime_ns == stored.mtime_ns
            && self.ctime_ns == stored.ctime_ns
            && self.ino == stored.ino
            && self.mode == stored.mode
    }

    /// True when an open file still is the version a stat described: same inode, size and
    /// mtime (ctime is left out: reading may not change it, but `chmod` during a read may).
    pub fn same_file_version(&self, other: &Self) -> bool {
        self.ino == other.ino && self.size == other.size && self.mtime_ns == other.mtime_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StatKey {
        StatKey { size: 10, mtime_ns: 5, ctime_ns: 6, ino: 7, mode: 0o100644, racy: false }
    }

    #[test]
    fn any_field_change_defeats_the_fast_path() {
        let base = key();
        assert!(base.unchanged(&key()));
        for changed in [
            StatKey { size: 11, ..base },
            StatKey { mtime_ns: 9, ..base },
            StatKey { ctime_ns: 9, ..base },
            StatKey { ino: 9, ..base },
            StatKey { mode: 0o100600, ..base },
        ] {
            assert!(!changed.unchanged(&base), "{changed:?}");
        }
    }

    #[test]
    fn a_racy_entry_is_always_read_again() {
        let stored = key().with_racy_check(6, 1_000);
        assert!(stored.racy);
        assert!(!key().unchanged(&stored));
        assert!(!key().with_racy_check(10_000, 1_000).racy);
    }

    #[test]
    fn only_a_recent_or_future_ctime_or_a_recent_mtime_is_racy() {
        let future_mtime = StatKey { mtime_ns: 1_000_000, ..key() };
        assert!(!future_mtime.with_racy_check(10_000, 1_000).racy);
        assert!(future_mtime.with_racy_check(7, 1_000).racy, "ctime is recent");
        let future_ctime = StatKey { ctime_ns: 1_000_000, ..key() };
        assert!(future_ctime.with_racy_check(10_000, 1_000).racy);
        assert!(StatKey { mtime_ns: 9_500, ..key() }.with_racy_check(10_000, 1_000).racy);
    }

    #[test]
    fn a_chmod_during_a_read_is_not_a_content_change() {
        let after = StatKey { ctime_ns: 99, mode: 0o100600, ..key() };
        assert!(after.same_file_version(&key()));
        assert!(!StatKey { size: 1, ..key() }.same_file_version(&key()));
    }
}

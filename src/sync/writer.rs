//! Applying changes to a folder on disk, confined to its root.
//!
//! Every write goes to a temp file beside its target (`.tandem-tmp-<name>-<hash prefix>`,
//! ignored by the scanner, the same name after a restart so a partial download resumes),
//! is made durable (data and inode; files finished together share one flush, see
//! `sync::durable`), and is renamed over the target only after the target was checked to be
//! exactly what the index says (a local change not yet scanned is never overwritten); the
//! caller fsyncs the touched directories before it commits the index. Before touching a
//! path, every parent is checked to be a real directory, never a symlink, so a peer's names
//! cannot lead outside the root.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tandem_proto::model::{EntryKind, FileRecord, Hash, RelPath};

use crate::scan::walk::{STATE_DIR, TEMP_PREFIX, is_own_temp};
use crate::store::{LocalRecord, StatKey};

/// Why applying a change failed. None of these leave a partial file under a real name.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The path on disk is not what the index says: rescan before deciding.
    #[error("{0}: changed locally since the last scan; rescanning")]
    LocalChange(RelPath),
    /// A parent is missing, not a directory, or a symlink.
    #[error("{path}: parent {parent} is not a real directory; refusing to write through it")]
    UnsafeParent {
        /// The path being written.
        path: RelPath,
        /// The offending parent.
        parent: String,
    },
    /// No connected peer could supply the content.
    #[error("{0}: no connected peer has this version")]
    NoSource(RelPath),
    /// Bytes did not hash to what the record says.
    #[error("{path}: content hash mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        /// The file.
        path: RelPath,
        /// The record's hash.
        expected: Hash,
        /// What the bytes hashed to.
        actual: Hash,
    },
    /// The filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: RelPath,
        /// The cause.
        source: io::Error,
    },
    /// The index could not record the change.
    #[error("index: {0}")]
    Store(String),
    /// A directory to delete still has entries.
    #[error("{0}: directory not empty; kept")]
    NotEmpty(RelPath),
    /// Something tandem does not sync (a fifo, socket or device node) is in the way.
    #[error("{path}: a {kind} is in the way; tandem does not sync or replace those, so it is kept")]
    InTheWay {
        /// The path.
        path: RelPath,
        /// What is there.
        kind: &'static str,
    },
}

/// Attaches a path to an IO error.
pub fn io_at(path: &RelPath) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io { path: path.clone(), source }
}

/// One folder's root, and every filesystem operation sync performs in it.
#[derive(Clone, Debug)]
pub struct FolderFs {
    root: PathBuf,
}

impl FolderFs {
    /// Operations under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel` (only valid after [`Self::check_parents`]).
    pub fn abs(&self, rel: &RelPath) -> PathBuf {
        self.root.join(rel.as_str())
    }

    /// Fails unless every parent of `rel` below the root is a real directory.
    pub fn check_parents(&self, rel: &RelPath) -> Result<(), ApplyError> {
        for parent in rel.ancestors() {
            let meta = fs::symlink_metadata(self.abs(&parent));
            if !meta.is_ok_and(|m| m.is_dir()) {
                return Err(ApplyError::UnsafeParent {
                    path: rel.clone(),
                    parent: parent.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `lstat` of `rel`, `None` if it does not exist.
    pub fn stat(&self, rel: &RelPath) -> Result<Option<fs::Metadata>, ApplyError> {
        match fs::symlink_metadata(self.abs(rel)) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApplyError::Io { path: rel.clone(), source: e }),
        }
    }

    /// Fails with [`ApplyError::LocalChange`] unless `rel` on disk is what the index says:
    /// absent for no record or a tombstone, else the same inode, size, mtime and mode.
    pub fn check_unchanged(
        &self,
        rel: &RelPath,
        indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.checked_stat(rel, indexed).map(drop)
    }

    /// [`Self::check_unchanged`], returning what is at `rel` (one `lstat` for both).
    fn checked_stat(
        &self,
        rel: &RelPath,
        indexed: Option<&LocalRecord>,
    ) -> Result<Option<fs::Metadata>, ApplyError> {
        self.check_parents(rel)?;
        let meta = self.stat(rel)?;
        if let Some(kind) = meta.as_ref().and_then(unsyncable_kind) {
            // the scanner skips it, so "rescan and decide again" would loop forever
            return Err(ApplyError::InTheWay { path: rel.clone(), kind });
        }
        let current = meta.as_ref().map(StatKey::from_metadata);
        let expected = indexed.filter(|l| !l.record.deleted);
        let same = match (current, expected) {
            (None, None) => true,
            (Some(now), Some(local)) if local.record.kind == EntryKind::Dir => {
                now.mode & 0o170000 == 0o040000
            }
            (Some(now), Some(local)) => {
                now.ino == local.stat.ino
                    && now.size == local.stat.size
                    && now.mtime_ns == local.stat.mtime_ns
                    && now.mode == local.stat.mode
            }
            _ => false,
        };
        if same { Ok(meta) } else { Err(ApplyError::LocalChange(rel.clone())) }
    }

    /// The temp file for downloading `record`: beside the target, stable across restarts
    /// for the same content so a partial transfer resumes.
    pub fn temp_path(&self, record: &FileRecord) -> PathBuf {
        let name = record.path.file_name();
        let suffix = format!("-{}", &record.hash.to_hex()[..16]);
        let budget = 255 - TEMP_PREFIX.len() - suffix.len();
        let mut cut = name.len().min(budget);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let file = format!("{TEMP_PREFIX}{}{suffix}", &name[..cut]);
        match record.path.parent() {
            Some(parent) => self.abs(&parent).join(file),
            None => self.root.join(file),
        }
    }

    /// Opens (or creates) the temp file for `record`, sized to the record.
    pub fn open_temp(&self, record: &FileRecord) -> Result<(File, bool), ApplyError> {
        self.check_parents(&record.path)?;
        let tmp = self.temp_path(record);
        let existed = fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc_o_nofollow())
            .mode(0o600)
            .open(&tmp)
            .map_err(io_at(&record.path))?;
        file.set_len(record.size).map_err(io_at(&record.path))?;
        Ok((file, existed))
    }

    /// Creates the temp file for `record` empty (an earlier partial one is truncated), for a
    /// caller that writes the whole content at once: nothing to resume, no size to preset.
    pub fn create_temp(&self, record: &FileRecord) -> Result<File, ApplyError> {
        self.check_parents(&record.path)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc_o_nofollow())
            .mode(0o600)
            .open(self.temp_path(record))
            .map_err(io_at(&record.path))
    }

    /// Makes the finished temp file of `record` visible under its real name: mode, mtime,
    /// fsync, a last check that the target is as indexed, rename, directory fsync.
    pub fn install(
        &self,
        file: &File,
        record: &FileRecord,
        indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        let at = io_at(&record.path);
        file.set_permissions(fs::Permissions::from_mode(
            record.mode & crate::store::SYNCED_MODE_BITS,
        ))
        .map_err(at)?;
        file.set_modified(system_time(record.mtime_ns)).map_err(io_at(&record.path))?;
        crate::sync::durable::sync_file(file, record.size).map_err(io_at(&record.path))?;
        match self.checked_stat(&record.path, indexed)? {
            Some(meta) if meta.is_dir() => {
                return Err(ApplyError::LocalChange(record.path.clone()));
            }
            Some(meta) if meta.is_file() => {
                // keep the version being replaced: a hard link in the trash, then an atomic
                // rename over the name (the name never stops existing)
                let kept = self.trash_path(&record.path)?;
                fs::hard_link(self.abs(&record.path), &kept).map_err(io_at(&record.path))?;
                tracing::info!("{}: previous version kept in {}", record.path, kept.display());
            }
            _ => {}
        }
        fs::rename(self.temp_path(record), self.abs(&record.path)).map_err(io_at(&record.path))
    }

    /// The per-folder trash: `.tandem/trash/` in the root, ignored by the scanner.
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("trash")
    }

    /// A fresh place in the trash for the current version of `rel`:
    /// `.tandem/trash/<dirs>/<name>.<UTC timestamp>[.<n>]`.
    fn trash_path(&self, rel: &RelPath) -> Result<PathBuf, ApplyError> {
        let dir = match rel.parent() {
            Some(parent) => self.trash_dir().join(parent.as_str()),
            None => self.trash_dir(),
        };
        self.make_state_dirs(rel, &dir)?;
        let stamp = trash_stamp();
        let name = rel.file_name();
        let mut candidate = dir.join(format!("{name}.{stamp}"));
        for n in 1.. {
            if fs::symlink_metadata(&candidate).is_err() {
                break;
            }
            candidate = dir.join(format!("{name}.{stamp}.{n}"));
        }
        Ok(candidate)
    }

    /// Makes `dir` (below the root) and its missing parents, refusing anything on the way
    /// that is not a real directory: a symlinked `.tandem` or trash would move the user's
    /// files out of the folder, a file in the way would fail with a puzzling error.
    fn make_state_dirs(&self, rel: &RelPath, dir: &Path) -> Result<(), ApplyError> {
        let below = dir.strip_prefix(&self.root).unwrap_or(dir);
        let mut at = self.root.clone();
        for part in below.components() {
            at.push(part);
            let made = match fs::symlink_metadata(&at) {
                Ok(meta) => Ok(meta.is_dir()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs::DirBuilder::new().mode(0o700).create(&at) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                        _ => Ok(fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir())),
                    }
                }
                Err(e) => Err(e),
            };
            if !made.map_err(io_at(rel))? {
                let parent = at.strip_prefix(&self.root).unwrap_or(&at).display().to_string();
                return Err(ApplyError::UnsafeParent { path: rel.clone(), parent });
            }
        }
        Ok(())
    }

    /// Moves what is at `rel` (a file or symlink) to the trash; returns where it went.
    pub fn move_to_trash(&self, rel: &RelPath) -> Result<PathBuf, ApplyError> {
        let kept = self.trash_path(rel)?;
        fs::rename(self.abs(rel), &kept).map_err(io_at(rel))?;
        tracing::info!("{rel}: deleted; kept in {}", kept.display());
        Ok(kept)
    }

    /// Removes tandem's temp files not touched for `max_age` (interrupted transfers whose
    /// version was never resumed); younger ones stay to be resumed, and a user's file that
    /// only shares the prefix is never touched. Returns how many went.
    pub fn clean_stale_temps(&self, max_age: Duration) -> usize {
        let cutoff = std::time::SystemTime::now() - max_age;
        let walker = walkdir::WalkDir::new(&self.root).follow_links(false).into_iter();
        let mut removed = 0;
        for entry in walker.filter_entry(|e| e.file_name() != STATE_DIR).flatten() {
            // the name first: only our temp files are stat'ed (this walks the whole folder)
            if !is_own_temp(&entry.file_name().to_string_lossy()) || !entry.file_type().is_file() {
                continue;
            }
            let stale =
                entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < cutoff);
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Removes trash entries older than `days` (by their ctime: when they were trashed).
    pub fn purge_trash(&self, days: u64) -> usize {
        let cutoff =
            std::time::SystemTime::now() - Duration::from_secs(days.saturating_mul(86_400));
        let real_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        if !real_dir(&self.root.join(STATE_DIR)) || !real_dir(&self.trash_dir()) {
            return 0; // missing, or a symlink that could lead anywhere: nothing of ours to purge
        }
        let mut removed = 0;
        for entry in
            walkdir::WalkDir::new(self.trash_dir()).contents_first(true).into_iter().flatten()
        {
            let Ok(meta) = entry.metadata() else { continue };
            let ctime = UNIX_EPOCH
                + Duration::from_secs(
                    u64::try_from(std::os::unix::fs::MetadataExt::ctime(&meta)).unwrap_or(0),
                );
            if meta.is_dir() {
                let _ = fs::remove_dir(entry.path()); // only succeeds once empty
            } else if ctime < cutoff && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Removes a temp file after a failed transfer that cannot resume.
    pub fn discard_temp(&self, record: &FileRecord) {
        let _ = fs::remove_file(self.temp_path(record));
    }

    /// Creates a directory (its parent must exist).
    pub fn make_dir(
        &self,
        rel: &RelPath,
        mode: u32,
        indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.check_unchanged(rel, indexed)?;
        if self.stat(rel)?.is_some_and(|m| m.is_dir()) {
            return Ok(());
        }
        fs::create_dir(self.abs(rel)).map_err(io_at(rel))?;
        fs::set_permissions(
            self.abs(rel),
            fs::Permissions::from_mode(mode & crate::store::SYNCED_MODE_BITS),
        )
        .map_err(io_at(rel))
    }

    /// Creates or replaces a symlink (never following anything).
    pub fn make_symlink(
        &self,
        rel: &RelPath,
        target: &str,
        indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.check_unchanged(rel, indexed)?;
        let tmp = self.abs(rel).with_file_name(format!(
            "{TEMP_PREFIX}link-{}",
            Hash::of(rel.as_str().as_bytes()).to_hex()
        ));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(io_at(rel))?;
        fs::rename(&tmp, self.abs(rel)).map_err(io_at(rel))
    }

    /// Sets permission bits and (for files) the modification time.
    pub fn set_metadata(
        &self,
        rel: &RelPath,
        mode: u32,
        mtime_ns: i64,
        indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.check_unchanged(rel, indexed)?;
        self.apply_metadata(rel, mode, mtime_ns)
    }

    /// Sets permission bits and (for files) the modification time of what is at `rel` now,
    /// which the caller has just put there.
    pub fn apply_metadata(
        &self,
        rel: &RelPath,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<(), ApplyError> {
        let abs = self.abs(rel);
        fs::set_permissions(
            &abs,
            fs::Permissions::from_mode(mode & crate::store::SYNCED_MODE_BITS),
        )
        .map_err(io_at(rel))?;
        if self.stat(rel)?.is_some_and(|m| m.is_file()) {
            let file = File::options()
                .write(true)
                .custom_flags(libc_o_nofollow())
                .open(&abs)
                .map_err(io_at(rel))?;
            file.set_modified(system_time(mtime_ns)).map_err(io_at(rel))?;
        }
        Ok(())
    }

    /// Renames `from` to `to`, refusing to replace anything at `to`.
    pub fn rename(
        &self,
        from: &RelPath,
        to: &RelPath,
        from_indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.check_unchanged(from, from_indexed)?;
        self.check_parents(to)?;
        if self.stat(to)?.is_some() {
            return Err(ApplyError::LocalChange(to.clone()));
        }
        fs::rename(self.abs(from), self.abs(to)).map_err(io_at(to))
    }

    /// Moves the file `from` to `to` (a sync rename: `from` is deleted globally and its
    /// content is needed at `to`). Both must be as indexed; a file at `to` is replaced
    /// atomically, its version kept in the trash first, as [`Self::install`] does.
    pub fn rename_replacing(
        &self,
        from: &RelPath,
        to: &RelPath,
        from_indexed: Option<&LocalRecord>,
        to_indexed: Option<&LocalRecord>,
    ) -> Result<(), ApplyError> {
        self.check_unchanged(from, from_indexed)?;
        self.check_unchanged(to, to_indexed)?;
        match self.stat(to)? {
            Some(meta) if meta.is_file() => {
                let kept = self.trash_path(to)?;
                fs::hard_link(self.abs(to), &kept).map_err(io_at(to))?;
                tracing::info!("{to}: previous version kept in {}", kept.display());
            }
            Some(_) => return Err(ApplyError::LocalChange(to.clone())),
            None => {}
        }
        fs::rename(self.abs(from), self.abs(to)).map_err(io_at(to))
    }

    /// Deletes a file, symlink or empty directory that is as indexed.
    pub fn delete(&self, rel: &RelPath, indexed: Option<&LocalRecord>) -> Result<(), ApplyError> {
        self.check_unchanged(rel, indexed)?;
        let Some(meta) = self.stat(rel)? else { return Ok(()) };
        if !meta.is_dir() {
            return self.move_to_trash(rel).map(|_| ());
        }
        match fs::remove_dir(self.abs(rel)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                Err(ApplyError::NotEmpty(rel.clone()))
            }
            Err(e) => Err(ApplyError::Io { path: rel.clone(), source: e }),
        }
    }

    /// The stat key of what is at `rel` now (default for nothing).
    pub fn stat_key(&self, rel: &RelPath) -> Result<StatKey, ApplyError> {
        Ok(self.stat(rel)?.map(|m| StatKey::from_metadata(&m)).unwrap_or_default())
    }

    /// The directory holding `rel`; renames and creations there become durable once it is
    /// fsynced (the sync runner does that once per batch, before committing the index).
    pub fn parent_dir(&self, rel: &RelPath) -> PathBuf {
        rel.parent().map(|p| self.abs(&p)).unwrap_or_else(|| self.root.clone())
    }
}

/// What an entry is when it is none of the kinds tandem syncs.
fn unsyncable_kind(meta: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() || t.is_dir() || t.is_symlink() {
        None
    } else if t.is_fifo() {
        Some("fifo")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        Some("special file")
    }
}

/// `O_NOFOLLOW`: opening a symlink fails instead of following it.
const fn libc_o_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

/// `YYYYMMDD-HHMMSS` (UTC) of now, for trash names.
fn trash_stamp() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    tandem_proto::rules::format_timestamp(secs)
}

/// The time `ns` nanoseconds after (or, negative, before) the epoch: files from before 1970
/// keep their mtime.
fn system_time(ns: i64) -> std::time::SystemTime {
    let offset = Duration::from_nanos(ns.unsigned_abs());
    let time =
        if ns >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) };
    time.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_before_the_epoch_are_kept() {
        let t = system_time(-315_619_200_000_000_000); // 1960-01-01
        assert_eq!(UNIX_EPOCH.duration_since(t).unwrap(), Duration::from_secs(315_619_200));
        assert_eq!(system_time(1_500_000_000), UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(system_time(i64::MIN), UNIX_EPOCH - Duration::from_nanos(1 << 63));
    }

    #[test]
    fn a_trash_that_is_a_symlink_or_a_file_is_neither_written_through_nor_purged() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(root.join(".tandem")).unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"not ours").unwrap();
        fs::write(root.join("sub/gone.txt"), b"kept").unwrap();
        std::os::unix::fs::symlink(&outside, root.join(".tandem/trash")).unwrap();
        let fs = FolderFs::new(root.clone());
        let rel = RelPath::new("sub/gone.txt").unwrap();
        let err = fs.move_to_trash(&rel).unwrap_err();
        assert!(err.to_string().contains("parent .tandem/trash is not a real directory"), "{err}");
        assert_eq!(fs.purge_trash(0), 0);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "written or purged through it");
        fs::remove_file(root.join(".tandem/trash")).unwrap();
        fs::write(root.join(".tandem/trash"), b"a file in the way").unwrap();
        assert!(matches!(fs.move_to_trash(&rel), Err(ApplyError::UnsafeParent { .. })));
        assert_eq!(fs::read(root.join("sub/gone.txt")).unwrap(), b"kept");
        fs::remove_file(root.join(".tandem/trash")).unwrap();
        let kept = fs.move_to_trash(&rel).unwrap();
        assert!(kept.starts_with(root.join(".tandem/trash/sub")), "{}", kept.display());
    }
}

//! Applying changes to a folder on disk, confined to its root.
//!
//! Every write goes to a temp file beside its target (`.tandem-tmp-<name>-<hash prefix>`,
//! ignored by the scanner, the same name after a restart so a partial download resumes),
//! is made durable (data and inode; files finished together share one flush, see
//! `sync::durable`), and is renamed over the target only after the target was checked to be
//! exactly what the index says (a local change not yet scanned is never overwritten); the
//! caller fsyncs the touched directories before it commits the index. Before touching a
//! path, every parent is checked to be a real directory, never a symlink, so a peer's names
//! cannot lead outside the root. Small files whose content is in memory are installed many
//! at a time (`install_many`): there each directory is opened once with `openat2`
//! (beneath the root, no symlinks: the check and the open are one step) and its files are
//! written, checked and renamed relative to it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

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

/// A small file whose whole content is in memory, for [`FolderFs::install_many`].
pub struct NewFile {
    /// The version to write.
    pub record: FileRecord,
    /// What the index says is at the target now.
    pub indexed: Option<LocalRecord>,
    /// The content, verified against the record by the caller.
    pub data: Vec<u8>,
}

/// The kernel has no `openat2` (before Linux 5.6): directories are checked, then opened.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A filesystem refused `renameat2(RENAME_NOREPLACE)`: the target is checked, then replaced.
static NO_RENAME_NOREPLACE: AtomicBool = AtomicBool::new(false);

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
        check_as_indexed(rel, meta.as_ref().map(StatKey::from_metadata), indexed)?;
        Ok(meta)
    }

    /// The temp file for downloading `record`: beside the target, stable across restarts
    /// for the same content so a partial transfer resumes.
    pub fn temp_path(&self, record: &FileRecord) -> PathBuf {
        let file = temp_name(record);
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

    /// Writes and installs small files whose content is in memory, each as [`Self::install`]
    /// does one (temp file beside the target with its mode and mtime, durable before a last
    /// check of the target and the rename), in three passes: every temp file written, one
    /// shared flush for all of them (`durable::sync_small_files`), every target checked and
    /// renamed. Returns, per file in order, the stat of the installed file.
    ///
    /// Why: one blocking step, one flush and one directory lookup per directory for many
    /// files, instead of a thread hop, a flush wait and full path walks per file (for 50,000
    /// files of a few KiB, the receiver's time went to exactly those).
    ///
    /// Each directory is opened once per pass, beneath the root and through no symlink
    /// (`open_dir`); its files are created, checked and renamed relative to that
    /// handle, so a parent swapped for a symlink after the check cannot redirect them.
    pub fn install_many(&self, files: &[NewFile]) -> Vec<Result<StatKey, ApplyError>> {
        let mut done: Vec<Option<Result<StatKey, ApplyError>>> =
            files.iter().map(|_| None).collect();
        let mut by_dir: BTreeMap<Option<RelPath>, Vec<usize>> = BTreeMap::new();
        for (i, new) in files.iter().enumerate() {
            by_dir.entry(new.record.path.parent()).or_default().push(i);
        }
        let mut temps: Vec<Option<File>> = files.iter().map(|_| None).collect();
        for members in by_dir.values() {
            match self.open_dir(&files[members[0]].record.path) {
                Ok(dir) => {
                    for &i in members {
                        match write_temp(&dir, &files[i]) {
                            Ok(file) => temps[i] = Some(file),
                            Err(e) => done[i] = Some(Err(e)),
                        }
                    }
                }
                Err(errno) => {
                    for &i in members {
                        done[i] = Some(Err(self.refused(&files[i].record.path, errno)));
                    }
                }
            }
        }
        let written: Vec<(usize, &File)> =
            temps.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|f| (i, f))).collect();
        let handles: Vec<&File> = written.iter().map(|(_, f)| *f).collect();
        let synced = crate::sync::durable::sync_small_files(&handles);
        for ((i, _), result) in written.iter().zip(synced) {
            if let Err(e) = result {
                done[*i] = Some(Err(io_at(&files[*i].record.path)(e)));
            }
        }
        for members in by_dir.values() {
            let ready: Vec<usize> =
                members.iter().copied().filter(|&i| done[i].is_none()).collect();
            let Some(&first) = ready.first() else { continue };
            // opened again: the parents are checked right before the renames, as for one file
            let dir = self.open_dir(&files[first].record.path);
            for i in ready {
                let new = &files[i];
                done[i] = Some(match (&dir, &temps[i]) {
                    (Ok(dir), Some(temp)) => self.rename_in(dir, new, temp),
                    (Err(errno), _) => Err(self.refused(&new.record.path, *errno)),
                    (_, None) => Err(ApplyError::Store("internal: no temp file".to_string())),
                });
            }
        }
        let missing = || Err(ApplyError::Store("internal: a file was not installed".to_string()));
        done.into_iter().map(|d| d.unwrap_or_else(missing)).collect()
    }

    /// The last step of [`Self::install_many`] for one file: the target checked as indexed
    /// (a replaced file is kept in the trash first), the temp file renamed over it.
    fn rename_in(&self, dir: &OwnedFd, new: &NewFile, temp: &File) -> Result<StatKey, ApplyError> {
        let rel = &new.record.path;
        let errno = |e: rustix::io::Errno| ApplyError::Io { path: rel.clone(), source: e.into() };
        let name = rel.file_name();
        let expected_absent = new.indexed.as_ref().is_none_or(|l| l.record.deleted);
        if expected_absent && !NO_RENAME_NOREPLACE.load(Ordering::Relaxed) {
            // nothing should be there: the kernel checks that and renames in one step
            let flags = rustix::fs::RenameFlags::NOREPLACE;
            match rustix::fs::renameat_with(dir, temp_name(&new.record), dir, name, flags) {
                Ok(()) => {
                    return temp.metadata().map(|m| StatKey::from_metadata(&m)).map_err(io_at(rel));
                }
                Err(rustix::io::Errno::EXIST) => {} // something is there: say what, below
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    NO_RENAME_NOREPLACE.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(errno(e)),
            }
        }
        let current = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(stat_key(&stat)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(errno(e)),
        };
        check_as_indexed(rel, current, new.indexed.as_ref())?;
        match current.map(|now| now.mode & S_IFMT) {
            Some(S_IFDIR) => return Err(ApplyError::LocalChange(rel.clone())),
            Some(S_IFREG) => {
                // the version being replaced is kept: a hard link in the trash, then an
                // atomic rename over the name (the name never stops existing)
                let kept = self.trash_path(rel)?;
                rustix::fs::linkat(dir, name, rustix::fs::CWD, &kept, AtFlags::empty())
                    .map_err(errno)?;
                tracing::info!("{rel}: previous version kept in {}", kept.display());
            }
            _ => {}
        }
        rustix::fs::renameat(dir, temp_name(&new.record), dir, name).map_err(errno)?;
        temp.metadata().map(|m| StatKey::from_metadata(&m)).map_err(io_at(rel))
    }

    /// The directory holding `rel`, opened (as a handle for `*at` calls) without following
    /// any symlink below the root and without leaving it.
    fn open_dir(&self, rel: &RelPath) -> Result<OwnedFd, rustix::io::Errno> {
        self.open_beneath(rel.parent().as_ref(), OFlags::PATH | OFlags::DIRECTORY, rel)
    }

    /// Opens the file `rel` for reading, through no symlink (neither a parent nor `rel`
    /// itself) and never outside the root.
    pub fn open_file(&self, rel: &RelPath) -> io::Result<File> {
        let fd = self.open_beneath(Some(rel), OFlags::RDONLY, rel)?;
        Ok(File::from(fd))
    }

    /// Opens `path` below the root (`None`: the root itself) with `flags`, following no
    /// symlink below the root (the root itself may be one) and never leaving it: where the
    /// kernel has `openat2`, the check of [`Self::check_parents`] and the open are one step
    /// (one path walk instead of one per parent, and no window between them); elsewhere
    /// `checked`'s parents are checked, then `path` is opened with `O_NOFOLLOW`.
    fn open_beneath(
        &self,
        path: Option<&RelPath>,
        flags: OFlags,
        checked: &RelPath,
    ) -> Result<OwnedFd, rustix::io::Errno> {
        let root_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(&self.root, root_flags, Mode::empty())?;
        let Some(path) = path else { return Ok(root) };
        let flags = flags | OFlags::CLOEXEC;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
            let mut result = Err(rustix::io::Errno::AGAIN);
            // EAGAIN: a rename elsewhere raced the lookup; the kernel asks for a retry
            for _ in 0..8 {
                result = rustix::fs::openat2(&root, path.as_str(), flags, Mode::empty(), resolve);
                if !matches!(result, Err(rustix::io::Errno::AGAIN)) {
                    break;
                }
            }
            match result {
                Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other,
            }
        }
        self.check_parents(checked).map_err(|_| rustix::io::Errno::NOTDIR)?;
        rustix::fs::open(self.abs(path), flags | OFlags::NOFOLLOW, Mode::empty())
    }

    /// Why `rel`'s directory could not be opened: the parent that is not a real directory
    /// when one is found, else the error itself.
    fn refused(&self, rel: &RelPath, errno: rustix::io::Errno) -> ApplyError {
        match self.check_parents(rel) {
            Err(e) => e,
            Ok(()) => ApplyError::Io { path: rel.clone(), source: errno.into() },
        }
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

/// Creates (or truncates) the temp file of `new` in `dir` and writes its content, mode and
/// mtime, as [`FolderFs::create_temp`] and [`FolderFs::install`] do.
fn write_temp(dir: &OwnedFd, new: &NewFile) -> Result<File, ApplyError> {
    let (record, at) = (&new.record, io_at(&new.record.path));
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, temp_name(record), flags, Mode::from_raw_mode(0o600))
        .map_err(|e| at(e.into()))?;
    let file = File::from(fd);
    let at = || io_at(&record.path);
    file.write_all_at(&new.data, 0).map_err(at())?;
    let mode = record.mode & crate::store::SYNCED_MODE_BITS;
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(at())?;
    file.set_modified(system_time(record.mtime_ns)).map_err(at())?;
    Ok(file)
}

/// The [`StatKey`] of a `stat` result, as [`StatKey::from_metadata`] makes it.
fn stat_key(stat: &rustix::fs::Stat) -> StatKey {
    let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
    StatKey {
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mtime_ns: ns(stat.st_mtime, i64::try_from(stat.st_mtime_nsec).unwrap_or(0)),
        ctime_ns: ns(stat.st_ctime, i64::try_from(stat.st_ctime_nsec).unwrap_or(0)),
        ino: stat.st_ino,
        mode: stat.st_mode,
        racy: false,
    }
}

/// The name of the temp file for `record` in its directory:
/// `.tandem-tmp-<name>-<hash prefix>`, cut to fit 255 bytes on a character boundary.
fn temp_name(record: &FileRecord) -> String {
    let name = record.path.file_name();
    let suffix = format!("-{}", &record.hash.to_hex()[..16]);
    let budget = 255 - TEMP_PREFIX.len() - suffix.len();
    let mut cut = name.len().min(budget);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{TEMP_PREFIX}{}{suffix}", &name[..cut])
}

/// Fails with [`ApplyError::LocalChange`] unless `current` (the `lstat` of `rel`, `None` if
/// nothing is there) is what the index says: absent for no record or a tombstone, a
/// directory for a directory, else the same inode, size, mtime and mode.
fn check_as_indexed(
    rel: &RelPath,
    current: Option<StatKey>,
    indexed: Option<&LocalRecord>,
) -> Result<(), ApplyError> {
    if let Some(kind) = current.as_ref().and_then(|now| unsyncable_kind(now.mode)) {
        // the scanner skips it, so "rescan and decide again" would loop forever
        return Err(ApplyError::InTheWay { path: rel.clone(), kind });
    }
    let expected = indexed.filter(|l| !l.record.deleted);
    let same = match (current, expected) {
        (None, None) => true,
        (Some(now), Some(local)) if local.record.kind == EntryKind::Dir => {
            now.mode & S_IFMT == S_IFDIR
        }
        (Some(now), Some(local)) => {
            now.ino == local.stat.ino
                && now.size == local.stat.size
                && now.mtime_ns == local.stat.mtime_ns
                && now.mode == local.stat.mode
        }
        _ => false,
    };
    if same { Ok(()) } else { Err(ApplyError::LocalChange(rel.clone())) }
}

/// The file-type bits of `st_mode`, and the types tandem syncs.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What an entry (by its `st_mode`) is when it is none of the kinds tandem syncs.
fn unsyncable_kind(mode: u32) -> Option<&'static str> {
    match mode & S_IFMT {
        S_IFREG | S_IFDIR | S_IFLNK => None,
        0o010000 => Some("fifo"),
        0o140000 => Some("socket"),
        0o020000 => Some("character device"),
        0o060000 => Some("block device"),
        _ => Some("special file"),
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
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tandem_proto::model::{ChunkRef, ShortId, VersionVector};

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

    // ---- install_many

    fn new_file(path: &str, data: &[u8], indexed: Option<LocalRecord>) -> NewFile {
        let hash = Hash::of(data);
        let chunks = if data.is_empty() {
            Vec::new()
        } else {
            vec![ChunkRef { offset: 0, len: data.len() as u32, hash }]
        };
        let record = FileRecord {
            path: RelPath::new(path.to_string()).unwrap(),
            kind: EntryKind::File,
            size: data.len() as u64,
            mtime_ns: 1_600_000_000_123_456_789,
            mode: 0o640,
            symlink_target: None,
            hash,
            chunks,
            version: VersionVector::default(),
            sequence: 0,
            deleted: false,
            modified_by: ShortId::new(1),
        };
        NewFile { record, indexed, data: data.to_vec() }
    }

    /// What the index would hold for the file now at `path`.
    fn indexed(fs: &FolderFs, path: &str, data: &[u8]) -> LocalRecord {
        let record = new_file(path, data, None).record;
        let stat = fs.stat_key(&record.path).unwrap();
        LocalRecord { record, stat }
    }

    fn folder() -> (tempfile::TempDir, FolderFs) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        (dir, FolderFs::new(root))
    }

    fn temps_left(dir: &Path) -> Vec<String> {
        let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name());
        names.map(|n| n.to_string_lossy().into_owned()).filter(|n| is_own_temp(n)).collect()
    }

    #[test]
    fn many_files_in_several_directories_arrive_with_their_metadata_and_true_stats() {
        let (_dir, fs) = folder();
        let files = vec![
            new_file("top.txt", b"top", None),
            new_file("a/one", b"one", None),
            new_file("a/b/two", b"two two", None),
            new_file("a/b/empty", b"", None),
        ];
        let results = fs.install_many(&files);
        for (new, result) in files.iter().zip(results) {
            let stat = result.unwrap();
            let abs = fs.abs(&new.record.path);
            assert_eq!(fs::read(&abs).unwrap(), new.data);
            let meta = fs::symlink_metadata(&abs).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o640);
            assert_eq!(meta.mtime_nsec(), 123_456_789);
            assert_eq!(stat, StatKey::from_metadata(&meta), "the stat is the installed file's");
        }
        assert!(temps_left(fs.root()).is_empty() && temps_left(&fs.root().join("a/b")).is_empty());
    }

    #[test]
    fn a_target_changed_since_the_index_is_never_overwritten_and_the_others_still_install() {
        let (_dir, fs) = folder();
        fs::write(fs.root().join("a/kept"), b"indexed version").unwrap();
        let old = indexed(&fs, "a/kept", b"indexed version");
        // the user rewrites it after the scan, and creates a file where none was indexed
        fs::write(fs.root().join("a/kept"), b"edited by the user, longer").unwrap();
        fs::write(fs.root().join("a/new"), b"made by the user").unwrap();
        let files = vec![
            new_file("a/kept", b"incoming", Some(old)),
            new_file("a/new", b"incoming too", None),
            new_file("a/fine", b"fine", None),
        ];
        let results = fs.install_many(&files);
        assert!(matches!(results[0], Err(ApplyError::LocalChange(_))), "{:?}", results[0]);
        assert!(matches!(results[1], Err(ApplyError::LocalChange(_))), "{:?}", results[1]);
        assert!(results[2].is_ok());
        assert_eq!(fs::read(fs.root().join("a/kept")).unwrap(), b"edited by the user, longer");
        assert_eq!(fs::read(fs.root().join("a/new")).unwrap(), b"made by the user");
        assert_eq!(fs::read(fs.root().join("a/fine")).unwrap(), b"fine");
    }

    #[test]
    fn a_replaced_file_is_kept_in_the_trash() {
        let (_dir, fs) = folder();
        fs::write(fs.root().join("a/doc"), b"version one").unwrap();
        let old = indexed(&fs, "a/doc", b"version one");
        let results = fs.install_many(&[new_file("a/doc", b"version two", Some(old))]);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert_eq!(fs::read(fs.root().join("a/doc")).unwrap(), b"version two");
        let trash = fs.trash_dir().join("a");
        let kept: Vec<_> = fs::read_dir(&trash).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(fs::read(&kept[0]).unwrap(), b"version one");
    }

    #[test]
    fn a_parent_that_is_a_symlink_is_never_written_through() {
        let (dir, fs) = folder();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink_dir(&outside, &fs.root().join("link"));
        symlink_dir(&outside, &fs.root().join("a/b/deeper"));
        let files = vec![
            new_file("link/x", b"x", None),
            new_file("a/b/deeper/y", b"y", None),
            new_file("a/b/z", b"z", None),
        ];
        let results = fs.install_many(&files);
        for result in &results[..2] {
            let err = result.as_ref().unwrap_err();
            assert!(matches!(err, ApplyError::UnsafeParent { .. }), "{err}");
        }
        assert!(results[2].is_ok());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "written through a symlink");
    }

    #[test]
    fn a_missing_parent_and_a_fifo_in_the_way_are_refused_clearly() {
        let (_dir, fs) = folder();
        let fifo = fs.root().join("a/pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let files = vec![new_file("gone/x", b"x", None), new_file("a/pipe", b"data", None)];
        let results = fs.install_many(&files);
        assert!(matches!(results[0], Err(ApplyError::UnsafeParent { .. })), "{:?}", results[0]);
        assert!(matches!(results[1], Err(ApplyError::InTheWay { .. })), "{:?}", results[1]);
        assert!(!fs.root().join("gone").exists());
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn without_openat2_parents_are_checked_and_never_written_through() {
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let (dir, fs) = folder();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink_dir(&outside, &fs.root().join("a/b/link"));
        let files = vec![new_file("a/b/link/x", b"x", None), new_file("a/b/y", b"y", None)];
        let results = fs.install_many(&files);
        NO_OPENAT2.store(false, Ordering::Relaxed);
        assert!(matches!(results[0], Err(ApplyError::UnsafeParent { .. })), "{:?}", results[0]);
        assert!(results[1].is_ok(), "{:?}", results[1]);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "written through a symlink");
    }

    #[test]
    fn files_are_read_through_no_symlink_with_or_without_openat2() {
        let (dir, fs) = folder();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"not shared").unwrap();
        fs::write(fs.root().join("a/b/plain"), b"shared").unwrap();
        symlink_dir(&outside, &fs.root().join("a/link"));
        symlink_dir(&outside.join("secret"), &fs.root().join("a/b/alias"));
        for without_openat2 in [false, true] {
            NO_OPENAT2.store(without_openat2, Ordering::Relaxed);
            let read = |p: &str| fs.open_file(&RelPath::new(p.to_string()).unwrap());
            let mut plain = String::new();
            io::Read::read_to_string(&mut read("a/b/plain").unwrap(), &mut plain).unwrap();
            assert_eq!(plain, "shared");
            assert!(read("a/link/secret").is_err(), "read through a symlinked parent");
            assert!(read("a/b/alias").is_err(), "read through a symlink");
            assert!(read("a/b/missing").is_err());
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    fn symlink_dir(target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
    }
}

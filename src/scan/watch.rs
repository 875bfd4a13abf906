//! Filesystem watching: inotify (through notify) on each folder root, recursive. Events
//! are hints, never facts: they name the paths the folder's runner rescans (the scanner
//! decides what changed, by the stat fast path). Events for tandem's own temp files and
//! state are dropped, so a transfer does not keep triggering rescans. A queue overflow asks
//! for a full rescan; a failed watch (inotify's watch limit) is reported and leaves the
//! periodic full rescan in charge.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use crate::scan::walk::{STATE_DIR, TEMP_PREFIX};

/// A live watch; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Why a folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source} (changes are still found by the periodic rescan)")]
pub struct WatchError {
    /// The root.
    pub path: String,
    /// The cause (often the inotify watch limit: fs.inotify.max_user_watches).
    pub source: notify::Error,
}

/// What a watch reports.
#[derive(Debug)]
pub enum Change {
    /// These absolute paths may have changed.
    Paths(Vec<PathBuf>),
    /// Events were lost: only a full rescan can tell what changed.
    Lost,
}

/// Watches `root` recursively and calls `on_change` for every event that may matter.
///
/// `test_limit` (a test fault, see `sync::Faults`) makes a tree of more directories than
/// that fail the way an exhausted inotify watch limit does.
pub fn watch(
    root: &Path,
    on_change: impl Fn(Change) + Send + 'static,
    test_limit: Option<usize>,
) -> Result<FolderWatcher, WatchError> {
    if let Some(limit) = test_limit {
        let dirs = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir())
            .count();
        if dirs > limit {
            return Err(WatchError {
                path: root.display().to_string(),
                source: notify::Error::new(notify::ErrorKind::MaxFilesWatch),
            });
        }
    }
    let handler = move |event: notify::Result<Event>| match event {
        Ok(event) if event.need_rescan() || event.paths.is_empty() => on_change(Change::Lost),
        Ok(event) if is_read_only(&event.kind) => {}
        Ok(event) if event.paths.iter().all(|p| is_own(p)) => {}
        Ok(event) => on_change(Change::Paths(event.paths)),
        Err(_) => on_change(Change::Lost),
    };
    let err = |source| WatchError { path: root.display().to_string(), source };
    let mut watcher = notify::recommended_watcher(handler).map_err(err)?;
    watcher.watch(root, RecursiveMode::Recursive).map_err(err)?;
    Ok(FolderWatcher { _watcher: watcher })
}

/// Opening or reading changes nothing (and our own scans do a lot of it); a close after
/// writing is kept as a hint.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// True for tandem's own temp files and state directory.
fn is_own(path: &Path) -> bool {
    path.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.starts_with(TEMP_PREFIX) || name == STATE_DIR
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_for(count: &AtomicUsize, at_least: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if count.load(Ordering::SeqCst) >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_write_in_a_subdirectory_wakes_the_watcher_but_temp_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let named = paths.clone();
        let _watch = watch(
            dir.path(),
            move |change| {
                if let Change::Paths(p) = change {
                    named.lock().unwrap().extend(p);
                }
                seen.fetch_add(1, Ordering::SeqCst);
            },
            None,
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}x-1234")), b"partial").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.load(Ordering::SeqCst), 0, "tandem's temp files are not changes");
        std::fs::write(dir.path().join("sub/file.txt"), b"hello").unwrap();
        assert!(wait_for(&count, 1), "no event for a user write");
        let named = paths.lock().unwrap().clone();
        assert!(named.contains(&dir.path().join("sub/file.txt")), "{named:?}");
    }
}

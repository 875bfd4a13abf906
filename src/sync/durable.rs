//! Group commit for file durability: files finished at about the same time share one flush.
//!
//! Why: a synced file must be on disk before the rename that makes it visible, or a crash
//! could leave a name pointing at bytes that were never written. One `fsync` per file costs
//! a synchronous data write, inode write and cache flush each; for many small files that was
//! a third of the receiver's time. On Linux `syncfs(2)` writes everything dirty on the
//! filesystem in one pass and one cache flush, so the files that finish while one flush runs
//! wait for the next one and share it — the group commit of databases. A flush covers a file
//! only if the flush *started* after the file was written; the generation counters below
//! track exactly that, so the guarantee per file is the same as its own `fsync`. A caller
//! that finished many files itself (`sync_small_files`, for a group of pulled files) waits
//! for one such flush for all of them.
//!
//! `syncfs` also writes other programs' dirty data on the same filesystem. So only small
//! files share flushes (a large file's own data dominates its flush anyway), and when a
//! shared flush takes long (someone else is writing a lot), files fall back to their own
//! `fsync` for a while, which waits only for their own bytes. Other systems always use
//! `fsync`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A shared flush slower than this means foreign dirty data: use per-file fsync instead…
const SLOW_FLUSH: Duration = Duration::from_secs(1);
/// …for this long.
const SLOW_BACKOFF: Duration = Duration::from_secs(30);

/// Files larger than this flush themselves: their own data dominates a flush, so sharing
/// gains little, and a shared flush would also wait for every other program's dirty data on
/// the filesystem (a big file is often written while other big writes are under way).
const SHARED_MAX: u64 = 1 << 20;

/// Makes everything written to `file` (`len` bytes) durable (data and metadata), like
/// `file.sync_all()`; a small file shares the flush with other small files of the same
/// filesystem finished at the same time.
pub fn sync_file(file: &File, len: u64) -> io::Result<()> {
    if !cfg!(target_os = "linux") || len > SHARED_MAX {
        return file.sync_all();
    }
    let results = group_of(file)?.sync(&[file]);
    results.into_iter().next().unwrap_or(Ok(()))
}

/// Makes everything written to each of `files` durable, like `sync_all()` on each; the
/// caller wrote them all before this call and none is larger than 1 MiB. Files on one
/// filesystem share a single flush (their own `fsync`s while shared flushes are slow).
/// Returns one result per file, in order.
pub fn sync_small_files(files: &[&File]) -> Vec<io::Result<()>> {
    if !cfg!(target_os = "linux") {
        return files.iter().map(|f| f.sync_all()).collect();
    }
    let mut results: Vec<Option<io::Result<()>>> = files.iter().map(|_| None).collect();
    let mut by_dev: Vec<(u64, Vec<usize>)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        match file.metadata() {
            Ok(meta) => match by_dev.iter_mut().find(|(dev, _)| *dev == meta.dev()) {
                Some((_, members)) => members.push(i),
                None => by_dev.push((meta.dev(), vec![i])),
            },
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    for (dev, members) in by_dev {
        let group: Vec<&File> = members.iter().map(|&i| files[i]).collect();
        let synced = group_for(dev).sync(&group);
        for (i, result) in members.into_iter().zip(synced) {
            results[i] = Some(result);
        }
    }
    results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
}

fn group_of(file: &File) -> io::Result<Arc<Group>> {
    Ok(group_for(file.metadata()?.dev()))
}

fn group_for(dev: u64) -> Arc<Group> {
    let mut groups = GROUPS.lock().unwrap_or_else(PoisonError::into_inner);
    groups.entry(dev).or_default().clone()
}

/// One group per filesystem (device id).
static GROUPS: LazyLock<Mutex<HashMap<u64, Arc<Group>>>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Group {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Flushes started so far (the running one included).
    started: u64,
    /// The last flush that finished successfully: every file registered before it started
    /// is durable.
    finished: u64,
    /// A flush is running.
    running: bool,
    /// Until then, files fsync themselves (a shared flush was slow).
    solo_until: Option<Instant>,
}

impl Group {
    /// Makes `files` (all on this group's filesystem, all written before the call) durable:
    /// one flush started after this call covers them all. One result per file.
    fn sync(&self, files: &[&File]) -> Vec<io::Result<()>> {
        let Some(first) = files.first() else { return Vec::new() };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.solo_until.is_some_and(|until| Instant::now() < until) {
            drop(state);
            return files.iter().map(|f| f.sync_all()).collect();
        }
        // the first flush to start from now on covers these files' writes
        let needed = state.started + 1;
        loop {
            if state.finished >= needed {
                return files.iter().map(|_| Ok(())).collect();
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.running = true;
            state.started += 1;
            let generation = state.started;
            drop(state);
            let began = Instant::now();
            let flushed = flush(first);
            let took = began.elapsed();
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.running = false;
            if flushed.is_ok() {
                state.finished = generation;
            }
            if took > SLOW_FLUSH {
                tracing::debug!("shared flush took {took:?}: per-file fsync for a while");
                state.solo_until = Some(Instant::now() + SLOW_BACKOFF);
            }
            self.done.notify_all();
            // a failed flush fails its leader's files; the waiters start another one, which
            // reports to each of them whether their own bytes are on disk
            if let Err(e) = flushed {
                return files
                    .iter()
                    .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                    .collect();
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn flush(file: &File) -> io::Result<()> {
    rustix::fs::syncfs(file).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn flush(file: &File) -> io::Result<()> {
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn concurrent_files_are_synced_and_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(Group::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                let group = group.clone();
                std::thread::spawn(move || {
                    for round in 0..20 {
                        let mut file = File::create(&path).unwrap();
                        file.write_all(format!("{i} {round}").as_bytes()).unwrap();
                        group.sync(&[&file]).into_iter().for_each(|r| r.unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = group.state.lock().unwrap();
        assert!(!state.running);
        assert_eq!(state.finished, state.started, "every flush finished");
        if state.solo_until.is_none() {
            // 320 files, and 16 threads finishing files while a flush runs share the next
            assert!(state.started < 320, "{} flushes for 320 files", state.started);
        }
    }

    #[test]
    fn a_batch_of_files_is_synced_by_one_flush() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<File> = (0..8)
            .map(|i| {
                let mut file = File::create(dir.path().join(format!("f{i}"))).unwrap();
                file.write_all(b"data").unwrap();
                file
            })
            .collect();
        let handles: Vec<&File> = files.iter().collect();
        let group = Group::default();
        let results = group.sync(&handles);
        assert_eq!(results.len(), 8);
        assert!(results.iter().all(Result::is_ok));
        let state = group.state.lock().unwrap();
        if state.solo_until.is_none() {
            assert_eq!(state.started, 1, "one flush for the whole batch");
        }
        drop(state);
        // through the per-filesystem groups: one result per file
        assert!(sync_small_files(&handles).iter().all(Result::is_ok));
        assert!(sync_small_files(&[]).is_empty());
    }

    #[test]
    fn files_on_the_same_filesystem_share_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("a")).unwrap();
        sync_file(&file, 0).unwrap();
        let dev = file.metadata().unwrap().dev();
        let group = GROUPS.lock().unwrap().get(&dev).cloned().unwrap();
        let state = group.state.lock().unwrap();
        assert!(state.started >= 1 || state.solo_until.is_some());
    }
}

//! A hostile filesystem under real daemons: disks that fill up or turn read-only, files and
//! directories that change type, vanish or become symlinks while tandem reads or writes
//! them, names and file kinds tandem cannot sync, odd timestamps, and tampered tandem state.
//!
//! Each case asserts the safe outcome: a clear error in the daemon's log (and in
//! `status --json` where the daemon reports it), no byte lost, nothing written outside the
//! folder root, and recovery once the cause is gone. Cases that need privileges (mounts,
//! device nodes) run as root, as CI does; permission cases then run the daemon as `nobody`,
//! since root ignores permission bits. Waits poll observable state, never sleep blindly.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{Daemon, Device, b3sum, is_root, random_bytes, wait_until};

/// `status --json` lists per-file errors (`folders[].errors` entries with a path) once the
/// daemon reports them; until then only whole-folder errors (path "") are there, and the
/// per-file status assertions below are skipped. Flip to re-enable them.
const PER_FILE_STATUS_ERRORS: bool = true;

/// How long to wait for anything (CI is loaded and runs tests in parallel).
const WAIT: u64 = 60;

/// Serving chunks this slowly leaves time to change the receiver's disk mid-pull.
const SLOW: &[(&str, &str)] = &[("TANDEM_TEST_RESPONSE_DELAY_MS", "3000")];

fn pair() -> (Device, Device) {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    (a, b)
}

/// Waits for one line of the daemon's log that contains every needle.
fn logged(daemon: &Daemon, needles: &[&str]) -> bool {
    wait_until(WAIT, || daemon.log_text().lines().any(|l| needles.iter().all(|n| l.contains(n))))
}

fn status(d: &Device) -> Value {
    serde_json::from_str(&d.ok(&["status", "--json"])).unwrap()
}

fn folder_errors(d: &Device) -> Vec<(String, String)> {
    let status = status(d);
    let Some(errors) = status["folders"][0]["errors"].as_array() else { return Vec::new() };
    errors
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (text(&e["path"]), text(&e["error"]))
        })
        .collect()
}

/// Waits for `status --json` to list an error for `path` ("" for the whole folder) that
/// mentions `needle`. Per-file entries are checked only with [`PER_FILE_STATUS_ERRORS`].
fn expect_status_error(d: &Device, path: &str, needle: &str) {
    if !PER_FILE_STATUS_ERRORS && !path.is_empty() {
        return;
    }
    let listed =
        wait_until(WAIT, || folder_errors(d).iter().any(|(p, e)| p == path && e.contains(needle)));
    assert!(listed, "status lists no error for {path:?} with {needle:?}: {:?}", folder_errors(d));
}

/// Waits for `status --json` to list no error for `path` any more.
fn expect_status_clear(d: &Device, path: &str) {
    if !PER_FILE_STATUS_ERRORS && !path.is_empty() {
        return;
    }
    let cleared = wait_until(WAIT, || !folder_errors(d).iter().any(|(p, _)| p == path));
    assert!(cleared, "the error for {path:?} stays listed: {:?}", folder_errors(d));
}

/// Waits for an `error` event about `path` mentioning `needle` in `tandem log --json`.
fn error_event(d: &Device, path: &str, needle: &str) -> bool {
    wait_until(WAIT, || {
        let log: Value = serde_json::from_str(&d.ok(&["log", "--json"])).unwrap();
        log.as_array().unwrap().iter().any(|e| {
            e["kind"] == "error"
                && e["path"] == path
                && e["detail"].as_str().is_some_and(|d| d.contains(needle))
        })
    })
}

/// tandem's temp files anywhere under `root` (its state directory aside).
fn temps(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name == ".tandem" {
                continue;
            }
            if name.to_string_lossy().starts_with(".tandem-tmp-") {
                out.push(entry.path());
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// Waits until a transfer of `name` into `dir` has started (its temp file exists).
fn pull_started(dir: &Path, name: &str) -> bool {
    let prefix = format!(".tandem-tmp-{name}-");
    wait_until(WAIT, || {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// True when some file in the folder has exactly `data` (under any name).
fn holds(d: &Device, data: &[u8]) -> bool {
    let hash = blake3::hash(data).to_hex().to_string();
    d.tree().values().any(|v| v.starts_with("file ") && v.ends_with(&hash))
}

/// Names of the entries of a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A mount made for one test, lazily unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// `mount <args> <at>`, or `None` (the case is skipped, loudly) when not root.
    fn new(args: &[&str], at: &Path) -> Option<Self> {
        if !is_root() {
            eprintln!("not root: cannot mount {args:?}; this case is skipped");
            return None;
        }
        let out = Command::new("mount").args(args).arg(at).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && (err.contains("ermission denied") || err.contains("permitted"))
        {
            eprintln!("mounting is not permitted here ({err}); this case is skipped");
            return None;
        }
        assert!(out.status.success(), "mount {args:?} {}: {err}", at.display());
        Some(Self(at.to_path_buf()))
    }

    /// A tmpfs of `size` (e.g. `4m`) over `at`.
    fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        Self::new(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], at)
    }

    fn remount(&self, options: &str) {
        run("mount", &["-o", &format!("remount,{options}"), path_str(&self.0)]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `setpriv` to `nobody`: root reads and writes anything, so permission cases drop it.
const NOBODY: &[&str] = &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// Hands the device's whole tree (home and folder) to `nobody`.
fn give_to_nobody(d: &Device) {
    if is_root() {
        run("chown", &["-R", "65534:65534", path_str(d.dir.path())]);
    }
}

/// `serve` as a user whom permission bits bind: `nobody` when the tests run as root.
fn serve_unprivileged(d: &Device) -> Daemon {
    if !is_root() {
        return d.serve();
    }
    give_to_nobody(d);
    d.serve_as(NOBODY, &[])
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Disks that fill up or refuse writes

#[test]
fn disk_full_during_a_pull_fails_cleanly_and_completes_once_space_is_freed() {
    let (a, b) = pair();
    let Some(disk) = Mount::tmpfs(&b.folder(), "4m") else { return };
    a.write("keep.txt", b"synced before the disk filled");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("keep.txt").exists()), "{}", serve_b.log_text());
    let big = random_bytes(21, 6 << 20);
    // written beside the folder and moved in, so a's watcher cannot index a partly written
    // file (a 3 MiB first version would fit the disk and legitimately appear on b)
    let staged = a.dir.path().join("big.bin.staged");
    fs::write(&staged, &big).unwrap();
    fs::rename(&staged, a.path("big.bin")).unwrap();
    assert!(logged(&serve_b, &["big.bin", "No space left on device"]), "{}", serve_b.log_text());
    assert!(error_event(&b, "big.bin", "No space left on device"));
    expect_status_error(&b, "big.bin", "No space left on device");
    assert!(!b.path("big.bin").exists(), "a partial file is visible under its real name");
    assert_eq!(fs::read(b.path("keep.txt")).unwrap(), b"synced before the disk filled");
    disk.remount("size=16m");
    let arrived = wait_until(WAIT, || fs::read(b.path("big.bin")).is_ok_and(|d| d == big));
    assert!(arrived, "no recovery once space was freed: {}", serve_b.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    assert_eq!(temps(&b.folder()), Vec::<PathBuf>::new(), "the finished temp file stayed");
    expect_status_clear(&b, "big.bin");
}

#[test]
fn a_read_only_filesystem_refuses_writes_clearly_and_recovers_once_writable() {
    let (a, b) = pair();
    b.write("mine.txt", b"b's own file");
    b.ok(&["scan", "docs"]); // leaves the folder marker while the disk is writable
    let Some(disk) = Mount::new(&["--bind", path_str(&b.folder())], &b.folder()) else { return };
    disk.remount("bind,ro");
    a.write("incoming.txt", b"for b");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(logged(&serve_b, &["incoming.txt", "Read-only file system"]), "{}", serve_b.log_text());
    expect_status_error(&b, "incoming.txt", "Read-only file system");
    assert!(!b.path("incoming.txt").exists());
    // the read-only side still scans and serves what it has
    assert!(wait_until(WAIT, || a.path("mine.txt").exists()), "b stopped serving");
    disk.remount("bind,rw");
    assert!(wait_until(WAIT, || fs::read(b.path("incoming.txt")).is_ok_and(|d| d == b"for b")));
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    expect_status_clear(&b, "incoming.txt");
}

/// Fills the filesystem holding `dir` with a file there; returns the file.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let block = vec![0x5au8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    filler
}

#[test]
fn a_full_disk_under_the_index_is_reported_and_sync_resumes_once_space_is_freed() {
    let (a, b) = pair();
    // b's home (config, keys, index) moves onto a small disk of its own
    let saved = b.dir.path().join("home.saved");
    fs::rename(b.home(), &saved).unwrap();
    fs::create_dir(b.home()).unwrap();
    let Some(_disk) = Mount::tmpfs(&b.home(), "16m") else { return };
    run("cp", &["-a", &format!("{}/.", saved.display()), path_str(&b.home())]);
    a.write("first.txt", b"while there was space");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("first.txt").exists()), "{}", serve_b.log_text());
    let filler = fill_disk(&b.home());
    for i in 0..50 {
        a.write(&format!("more/{i}.txt"), format!("file {i}").as_bytes());
    }
    assert!(logged(&serve_b, &["No space left on device"]), "{}", serve_b.log_text());
    fs::remove_file(&filler).unwrap();
    let recovered = wait_until(2 * WAIT, || {
        a.tree() == b.tree()
            && b.live_paths().iter().filter(|p| p.starts_with("more/")).count() == 50
    });
    assert!(recovered, "no recovery once space was freed: {}", serve_b.log_text());
    // and the index tells the truth about the disk: a restart finds nothing to change
    drop(serve_b);
    let (out, _) = b.scan();
    assert!(out.contains("0 new, 0 changed, 0 deleted"), "{out}");
}

// ---------------------------------------------------------------------------------------
// Permissions (the daemon runs as `nobody`)

#[test]
fn a_read_only_target_directory_is_reported_and_filled_once_writable() {
    let (a, b) = pair();
    a.write("ro/first.txt", b"1");
    let _serve_a = a.serve();
    let serve_b = serve_unprivileged(&b);
    assert!(wait_until(WAIT, || b.path("ro/first.txt").exists()), "{}", serve_b.log_text());
    set_mode(&b.path("ro"), 0o555);
    a.write("ro/second.txt", b"2");
    a.write("top.txt", b"elsewhere");
    assert!(logged(&serve_b, &["ro/second.txt", "Permission denied"]), "{}", serve_b.log_text());
    expect_status_error(&b, "ro/second.txt", "Permission denied");
    assert!(wait_until(WAIT, || b.path("top.txt").exists()), "one refusal blocked the rest");
    assert_eq!(names(&b.path("ro")), ["first.txt"], "nothing was written into ro/");
    set_mode(&b.path("ro"), 0o755);
    assert!(wait_until(WAIT, || b.path("ro/second.txt").exists()), "{}", serve_b.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    expect_status_clear(&b, "ro/second.txt");
}

#[test]
fn an_unreadable_file_is_reported_and_its_synced_copy_is_kept_on_peers() {
    let (a, b) = pair();
    a.write("secret.txt", b"version one");
    a.write("open.txt", b"readable");
    let serve_a = serve_unprivileged(&a);
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("secret.txt").exists()), "{}", serve_a.log_text());
    set_mode(&a.path("secret.txt"), 0o000);
    a.write("new-secret.txt", b"never readable yet");
    set_mode(&a.path("new-secret.txt"), 0o000);
    a.write("after.txt", b"written after both became unreadable");
    assert!(logged(&serve_a, &["secret.txt", "Permission denied"]), "{}", serve_a.log_text());
    assert!(logged(&serve_a, &["new-secret.txt", "Permission denied"]));
    expect_status_error(&a, "new-secret.txt", "Permission denied");
    assert!(wait_until(WAIT, || b.path("after.txt").exists()), "{}", serve_a.log_text());
    assert_eq!(a.entry("secret.txt").unwrap()["deleted"], false, "unreadable is not deleted");
    assert_eq!(fs::read(b.path("secret.txt")).unwrap(), b"version one");
    assert!(!b.path("new-secret.txt").exists());
    set_mode(&a.path("secret.txt"), 0o644);
    set_mode(&a.path("new-secret.txt"), 0o644);
    assert!(wait_until(WAIT, || b.path("new-secret.txt").exists()), "{}", serve_a.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    expect_status_clear(&a, "new-secret.txt");
}

#[test]
fn an_unreadable_directory_is_reported_and_nothing_in_it_is_deleted_on_peers() {
    let (a, b) = pair();
    a.write("private/a.txt", b"a");
    a.write("private/sub/b.txt", b"b");
    let serve_a = serve_unprivileged(&a);
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("private/sub/b.txt").exists()), "{}", serve_a.log_text());
    set_mode(&a.path("private"), 0o000);
    a.write("after.txt", b"scanned after private/ became unreadable");
    assert!(logged(&serve_a, &["private", "Permission denied"]), "{}", serve_a.log_text());
    expect_status_error(&a, "private", "Permission denied");
    assert!(wait_until(WAIT, || b.path("after.txt").exists()), "{}", serve_a.log_text());
    for path in ["private/a.txt", "private/sub/b.txt"] {
        assert_eq!(a.entry(path).unwrap()["deleted"], false, "{path} became a tombstone");
        assert!(b.path(path).exists(), "{path} was deleted on the peer");
    }
    set_mode(&a.path("private"), 0o755);
    a.write("private/new.txt", b"readable again");
    assert!(wait_until(WAIT, || b.path("private/new.txt").exists()), "{}", serve_a.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    expect_status_clear(&a, "private");
}

// ---------------------------------------------------------------------------------------
// The receiver's disk changes under a pull

#[test]
fn a_file_replaced_by_a_directory_between_scan_and_pull_loses_neither() {
    let (a, b) = pair();
    a.write("x.bin", b"first version");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("x.bin").is_file()), "{}", serve_b.log_text());
    let second = random_bytes(5, 3 << 20);
    a.write("x.bin", &second);
    assert!(pull_started(&b.folder(), "x.bin"), "{}", serve_b.log_text());
    fs::remove_file(b.path("x.bin")).unwrap();
    b.write("x.bin/inner.txt", b"made on b while the pull ran");
    let converged = wait_until(2 * WAIT, || {
        a.tree() == b.tree() && holds(&a, &second) && holds(&a, b"made on b while the pull ran")
    });
    assert!(converged, "a: {:#?}\nb: {:#?}\n{}", a.tree(), b.tree(), serve_b.log_text());
    assert!(!serve_b.log_text().contains("panicked"));
}

#[test]
fn a_directory_replaced_by_a_file_between_scan_and_pull_loses_neither() {
    let (a, b) = pair();
    a.write("d/old.txt", b"old");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("d/old.txt").exists()), "{}", serve_b.log_text());
    let big = random_bytes(6, 3 << 20);
    a.write("d/big.bin", &big);
    assert!(pull_started(&b.path("d"), "big.bin"), "{}", serve_b.log_text());
    fs::remove_dir_all(b.path("d")).unwrap();
    b.write("d", b"a file made on b where d/ was");
    assert!(logged(&serve_b, &["d/big.bin", "not a real directory"]), "{}", serve_b.log_text());
    let converged = wait_until(2 * WAIT, || {
        a.tree() == b.tree() && holds(&a, &big) && holds(&a, b"a file made on b where d/ was")
    });
    assert!(converged, "a: {:#?}\nb: {:#?}\n{}", a.tree(), b.tree(), serve_b.log_text());
}

#[test]
fn a_parent_swapped_for_a_symlink_during_a_pull_is_never_written_through() {
    let (a, b) = pair();
    let outside = b.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    a.write("sub/small.txt", b"small");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("sub/small.txt").exists()), "{}", serve_b.log_text());
    let big = random_bytes(7, 3 << 20);
    a.write("sub/big.bin", &big);
    assert!(pull_started(&b.path("sub"), "big.bin"), "{}", serve_b.log_text());
    fs::rename(b.path("sub"), b.path("sub.away")).unwrap();
    symlink(&outside, b.path("sub")).unwrap();
    assert!(logged(&serve_b, &["sub/big.bin", "not a real directory"]), "{}", serve_b.log_text());
    assert_eq!(names(&outside), Vec::<String>::new(), "written through the symlink");
    // the user puts the directory back
    fs::remove_file(b.path("sub")).unwrap();
    fs::rename(b.path("sub.away"), b.path("sub")).unwrap();
    let converged =
        wait_until(2 * WAIT, || a.tree() == b.tree() && holds(&b, &big) && holds(&b, b"small"));
    assert!(converged, "a: {:#?}\nb: {:#?}\n{}", a.tree(), b.tree(), serve_b.log_text());
    assert_eq!(names(&outside), Vec::<String>::new(), "written through the symlink");
}

#[test]
fn a_file_replaced_by_a_symlink_to_outside_is_never_written_through() {
    let (a, b) = pair();
    let victim = b.dir.path().join("victim.txt");
    fs::write(&victim, b"outside the root").unwrap();
    a.write("target.txt", b"version one");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("target.txt").exists()), "{}", serve_b.log_text());
    let second = random_bytes(8, 2 << 20);
    a.write("target.txt", &second);
    assert!(pull_started(&b.folder(), "target.txt"), "{}", serve_b.log_text());
    fs::remove_file(b.path("target.txt")).unwrap();
    symlink(&victim, b.path("target.txt")).unwrap();
    let converged = wait_until(2 * WAIT, || a.tree() == b.tree() && holds(&b, &second));
    assert!(converged, "a: {:#?}\nb: {:#?}\n{}", a.tree(), b.tree(), serve_b.log_text());
    assert_eq!(fs::read(&victim).unwrap(), b"outside the root", "written through the symlink");
}

#[test]
fn a_fifo_in_the_way_of_an_incoming_file_is_kept_and_reported() {
    let (a, b) = pair();
    run("mkfifo", &[path_str(&b.path("incoming"))]);
    a.write("incoming", b"a regular file on a");
    a.write("other.txt", b"unrelated");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("other.txt").exists()), "{}", serve_b.log_text());
    assert!(logged(&serve_b, &["incoming: a fifo is in the way"]), "{}", serve_b.log_text());
    assert!(error_event(&b, "incoming", "a fifo is in the way"));
    expect_status_error(&b, "incoming", "in the way");
    assert!(!serve_b.log_text().contains("changed locally"), "a rescan loop, not an error");
    assert!(fs::symlink_metadata(b.path("incoming")).unwrap().file_type().is_fifo());
    // the user removes the fifo: the file arrives
    fs::remove_file(b.path("incoming")).unwrap();
    let arrived = wait_until(WAIT, || {
        fs::read(b.path("incoming")).is_ok_and(|d| d == b"a regular file on a")
    });
    assert!(arrived, "{}", serve_b.log_text());
    expect_status_clear(&b, "incoming");
}

// ---------------------------------------------------------------------------------------
// The sender's disk changes under a scan or a transfer

#[test]
fn a_file_deleted_while_being_sent_never_appears_half_written() {
    let (a, b) = pair();
    a.write("warmup.txt", b"connected");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("warmup.txt").exists()), "{}", serve_b.log_text());
    a.write("doomed.bin", &random_bytes(9, 3 << 20));
    assert!(pull_started(&b.folder(), "doomed.bin"), "{}", serve_b.log_text());
    fs::remove_file(a.path("doomed.bin")).unwrap();
    let failed = wait_until(WAIT, || {
        assert!(!b.path("doomed.bin").exists(), "a file deleted mid-send appeared");
        serve_b.log_text().contains("doomed.bin: no connected peer has this version")
    });
    assert!(failed, "{}", serve_b.log_text());
    assert!(wait_until(WAIT, || a.entry("doomed.bin").is_some_and(|e| e["deleted"] == true)));
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    assert!(!b.path("doomed.bin").exists());
}

#[test]
fn a_file_rewritten_while_being_sent_arrives_as_its_final_version_only() {
    let (a, b) = pair();
    a.write("warmup.txt", b"connected");
    let _serve_a = a.serve_with(SLOW);
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("warmup.txt").exists()), "{}", serve_b.log_text());
    let first = random_bytes(10, 3 << 20);
    let second = random_bytes(11, 3 << 20);
    a.write("moving.bin", &first);
    assert!(pull_started(&b.folder(), "moving.bin"), "{}", serve_b.log_text());
    a.write("moving.bin", &second);
    let arrived = wait_until(2 * WAIT, || match fs::read(b.path("moving.bin")) {
        Ok(data) => {
            assert!(data == first || data == second, "a mix of two versions became visible");
            data == second
        }
        Err(_) => false,
    });
    assert!(arrived, "{}", serve_b.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
}

#[test]
fn a_file_rewritten_while_it_is_hashed_never_reaches_the_peer_torn() {
    let (a, b) = pair();
    const SIZE: usize = 8 << 20;
    a.write("busy.bin", &vec![0u8; SIZE]);
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("busy.bin").exists()), "{}", serve_b.log_text());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), a.path("busy.bin"));
        std::thread::spawn(move || {
            let mut round = 1u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // every version is one byte value repeated; the size alternates
                let size = if round.is_multiple_of(2) { SIZE } else { SIZE + 4096 };
                fs::write(&path, vec![round; size]).unwrap();
                round = round.wrapping_add(1).max(1);
            }
        })
    };
    // an empty file is a whole version too: `fs::write` truncates before it writes
    let whole = |data: &[u8]| data.iter().all(|&x| x == data[0]);
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        if let Ok(data) = fs::read(b.path("busy.bin")) {
            assert!(whole(&data), "a torn version reached the peer");
            seen.insert(data.first().copied());
        }
        std::thread::sleep(Duration::from_millis(20)); // pacing the observer, not a wait
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let final_version = fs::read(a.path("busy.bin")).unwrap();
    let settled =
        wait_until(WAIT, || fs::read(b.path("busy.bin")).is_ok_and(|d| d == final_version));
    assert!(settled, "{}", serve_b.log_text());
    eprintln!("versions seen on the peer while writing: {}", seen.len());
}

#[test]
fn a_file_appended_continuously_under_a_lock_syncs_only_whole_prefixes_and_converges() {
    let (a, b) = pair();
    let _serve_a = a.serve();
    let serve_b = b.serve();
    let line = |i: usize| format!("line {i:06}\n");
    let expected: String = (0..100_000).map(line).collect();
    let mut log = fs::File::create(a.path("app.log")).unwrap();
    log.lock().unwrap(); // an exclusive lock, as a logging daemon holds
    let started = std::time::Instant::now();
    let mut written = 0;
    let mut seen_on_b = 0;
    while started.elapsed() < Duration::from_secs(4) {
        use std::io::Write;
        for _ in 0..50 {
            log.write_all(line(written).as_bytes()).unwrap();
            written += 1;
        }
        log.flush().unwrap();
        if let Ok(data) = fs::read_to_string(b.path("app.log")) {
            assert!(expected.starts_with(&data), "the peer got something not a prefix");
            seen_on_b = seen_on_b.max(data.len());
        }
        std::thread::sleep(Duration::from_millis(5)); // pacing the appender, not a wait
    }
    let final_len = line(0).len() * written;
    let converged = wait_until(WAIT, || {
        fs::read_to_string(b.path("app.log")).is_ok_and(|d| d == expected[..final_len])
    });
    assert!(converged, "{}", serve_b.log_text());
    log.unlock().unwrap();
    eprintln!("peer saw up to {seen_on_b} of {final_len} bytes while appending");
}

// ---------------------------------------------------------------------------------------
// Entries tandem does not sync

#[test]
fn fifos_sockets_and_device_nodes_are_skipped_and_reported() {
    let (a, b) = pair();
    run("mkfifo", &[path_str(&a.path("pipe"))]);
    let _socket = std::os::unix::net::UnixListener::bind(a.path("sock")).unwrap();
    let mut special = vec!["pipe", "sock"];
    if is_root() {
        run("mknod", &[path_str(&a.path("chardev")), "c", "1", "3"]);
        run("mknod", &[path_str(&a.path("blockdev")), "b", "7", "250"]);
        special.extend(["chardev", "blockdev"]);
    }
    a.write("regular.txt", b"synced");
    let serve_a = a.serve();
    b.sync_ok();
    for name in &special {
        let line = format!("{name}: not a regular file, directory or symlink: skipped");
        assert!(logged(&serve_a, &[&line]), "{}", serve_a.log_text());
        expect_status_error(&a, name, "skipped");
        assert!(fs::symlink_metadata(a.path(name)).is_ok(), "{name} was removed");
    }
    assert_eq!(names(&b.folder()), [".tandem", "regular.txt"]);
}

#[test]
fn names_that_are_not_utf8_are_reported_and_left_alone_on_both_sides() {
    let (a, b) = pair();
    let bad = |d: &Device, name: &[u8]| d.folder().join(std::ffi::OsStr::from_bytes(name));
    fs::write(bad(&a, b"bad\xff.txt"), b"not synced").unwrap();
    fs::create_dir(bad(&a, b"dir\xfe")).unwrap();
    fs::write(bad(&a, b"dir\xfe/inner.txt"), b"inside").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"target\xff"), a.path("link")).unwrap();
    fs::write(bad(&b, b"mine\xff"), b"b's own").unwrap();
    a.write("good.txt", b"synced");
    let serve_a = a.serve();
    b.sync_ok();
    assert!(logged(&serve_a, &["bad\u{fffd}.txt", "not valid UTF-8"]), "{}", serve_a.log_text());
    assert!(logged(&serve_a, &["link", "symlink target is not valid UTF-8"]));
    expect_status_error(&a, "bad\u{fffd}.txt", "not valid UTF-8");
    expect_status_error(&a, "link", "not valid UTF-8");
    assert_eq!(fs::read(b.path("good.txt")).unwrap(), b"synced");
    assert!(!b.path("link").exists() && fs::symlink_metadata(b.path("link")).is_err());
    assert_eq!(fs::read(bad(&b, b"mine\xff")).unwrap(), b"b's own", "b's own file changed");
    assert_eq!(fs::read(bad(&a, b"bad\xff.txt")).unwrap(), b"not synced");
    assert_eq!(fs::read(bad(&a, b"dir\xfe/inner.txt")).unwrap(), b"inside");
    let on_b = names(&b.folder());
    assert_eq!(on_b, [".tandem", "good.txt", "mine\u{fffd}"], "{on_b:?}");
}

#[test]
fn names_with_control_characters_or_backslashes_are_reported_and_odd_printable_names_sync() {
    let (a, b) = pair();
    let synced = [
        "colon:name.txt",
        "star*?<>|\".txt",
        "-leading-dash",
        " leading space",
        "trailing space ",
        "trailing.dot.",
        "semi;colon&amp",
        "#hash~tilde'quote",
        "CON",
        "nul.txt",
    ];
    let refused = ["new\nline.txt", "back\\slash.txt", "tab\tname", "esc\x1bname", "del\x7fname"];
    for name in synced.iter().chain(&refused) {
        a.write(name, name.as_bytes());
    }
    let serve_a = a.serve();
    b.sync_ok();
    for name in refused {
        // control characters are shown escaped: a name cannot split or forge a log line
        let shown: String = name
            .chars()
            .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
            .collect();
        let line = format!("{shown}: unsupported name");
        assert!(logged(&serve_a, &[&line]), "{name:?} not reported: {}", serve_a.log_text());
        expect_status_error(&a, &shown, "unsupported name");
        assert!(a.path(name).exists());
    }
    let mut expected: Vec<String> = synced.iter().map(|s| s.to_string()).collect();
    expected.push(".tandem".into());
    expected.sort();
    assert_eq!(names(&b.folder()), expected);
    for name in synced {
        assert_eq!(fs::read(b.path(name)).unwrap(), name.as_bytes());
    }
}

#[test]
fn names_of_255_bytes_sync_and_256_bytes_cannot_exist_or_be_sent() {
    let (a, b) = pair();
    let long = "x".repeat(255);
    let wide = "日".repeat(85); // 255 bytes in 85 characters: temp names must cut on a boundary
    a.write(&long, b"255 ascii bytes");
    a.write(&wide, b"255 bytes of kanji");
    a.write(&format!("{}/{wide}", "z".repeat(255)), b"both, nested");
    let too_long = fs::write(a.path(&"y".repeat(256)), b"x").unwrap_err();
    assert_eq!(too_long.raw_os_error(), Some(36), "ENAMETOOLONG: {too_long}");
    let mallory = Device::peer();
    a.trust(&mallory);
    let serve_a = a.serve();
    b.sync_ok();
    assert_eq!(a.tree(), b.tree());
    assert_eq!(fs::read(b.path(&format!("{}/{wide}", "z".repeat(255)))).unwrap(), b"both, nested");
    // a peer announcing a 256-byte name is refused
    let placeholder = format!("{}/{}", "p".repeat(127), "p".repeat(128));
    let frame = crate::hostile::index_frame_patched(&placeholder, &"q".repeat(256));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (conn, mut send, _recv) = crate::hostile::open_raw_session(&mallory, &a).await;
        let _ = send.write_all(&frame).await;
        let _ = send.finish();
        let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed()).await;
        assert!(closed.is_ok(), "the connection stayed open");
    });
    assert!(logged(&serve_a, &["longer than 255 bytes"]), "{}", serve_a.log_text());
    assert!(!a.path(&"q".repeat(128)).exists());
    assert_eq!(a.tree(), b.tree());
}

#[test]
fn a_tree_130_levels_deep_syncs() {
    let (a, b) = pair();
    let levels: Vec<String> = (0..130).map(|i| format!("l{i}")).collect();
    let deep = levels.join("/");
    a.write(&format!("{deep}/bottom.txt"), b"at the bottom");
    a.write(&format!("{}/middle.txt", levels[..64].join("/")), b"half way");
    let _serve_a = a.serve();
    b.sync_ok();
    assert_eq!(fs::read(b.path(&format!("{deep}/bottom.txt"))).unwrap(), b"at the bottom");
    assert_eq!(a.tree(), b.tree());
}

#[test]
fn a_path_longer_than_4096_bytes_is_reported_and_the_rest_syncs() {
    let (a, b) = pair();
    let name = "n".repeat(250);
    // 8 levels inside the folder, 10 more staged outside and moved in: every syscall path
    // stays under PATH_MAX, the result does not
    let top: PathBuf = (0..8).fold(a.folder(), |p, _| p.join(&name));
    fs::create_dir_all(&top).unwrap();
    let stage = a.dir.path().join("stage");
    let staged: PathBuf = (0..9).fold(stage.clone(), |p, _| p.join(&name));
    fs::create_dir_all(&staged).unwrap();
    fs::write(staged.join("deep.txt"), b"too deep to sync").unwrap();
    fs::rename(stage.join(&name), top.join(&name)).unwrap();
    a.write("shallow.txt", b"synced");
    let serve_a = a.serve();
    b.sync_ok();
    assert!(logged(&serve_a, &["File name too long"]), "{}", serve_a.log_text());
    assert_eq!(fs::read(b.path("shallow.txt")).unwrap(), b"synced");
    assert!(!b.tree().keys().any(|p| p.ends_with("deep.txt")));
    // a's copy is intact (read relative to a directory, under PATH_MAX)
    let mid = top.join(&name).join(&name).join(&name);
    let rest = (0..6).map(|_| name.as_str()).collect::<Vec<_>>().join("/") + "/deep.txt";
    let out = Command::new("cat").arg(&rest).current_dir(&mid).output().unwrap();
    assert_eq!(out.stdout, b"too deep to sync");
}

// ---------------------------------------------------------------------------------------
// Links, holes and sizes

#[test]
fn hard_links_sync_as_files_and_an_edit_through_one_name_reaches_every_name() {
    let (a, b) = pair();
    a.write("one.txt", b"shared inode");
    fs::create_dir(a.path("sub")).unwrap();
    fs::hard_link(a.path("one.txt"), a.path("two.txt")).unwrap();
    fs::hard_link(a.path("one.txt"), a.path("sub/three.txt")).unwrap();
    let _serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || a.tree() == b.tree() && b.path("sub/three.txt").exists()));
    // an in-place write through one name changes all three
    fs::write(a.path("one.txt"), b"edited through one name").unwrap();
    let all = wait_until(WAIT, || {
        ["one.txt", "two.txt", "sub/three.txt"]
            .iter()
            .all(|p| fs::read(b.path(p)).is_ok_and(|d| d == b"edited through one name"))
    });
    assert!(all, "b: {:#?}", b.tree());
}

#[test]
fn a_receiver_file_hard_linked_outside_the_root_is_replaced_not_written_through() {
    let (a, b) = pair();
    a.write("shared.txt", b"version one");
    let _serve_a = a.serve();
    b.sync_ok();
    let outside = b.dir.path().join("outside.txt");
    fs::write(&outside, b"version one").unwrap();
    // the same content and mtime under a new inode: no local change, just a link
    let mtime = fs::metadata(b.path("shared.txt")).unwrap().modified().unwrap();
    fs::File::options().write(true).open(&outside).unwrap().set_modified(mtime).unwrap();
    fs::remove_file(b.path("shared.txt")).unwrap();
    fs::hard_link(&outside, b.path("shared.txt")).unwrap();
    a.write("shared.txt", b"version two, longer");
    let expected = b3sum(&a.path("shared.txt"));
    assert!(wait_until(WAIT, || a.entry("shared.txt").unwrap()["hash"] == expected.as_str()));
    b.sync_ok();
    assert_eq!(fs::read(b.path("shared.txt")).unwrap(), b"version two, longer");
    assert_eq!(fs::read(&outside).unwrap(), b"version one", "written through the hard link");
}

/// Allocated bytes of a file (st_blocks is in 512-byte units).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sparse_files_sync_exactly() {
    let (a, b) = pair();
    let file = fs::File::create(a.path("holes.img")).unwrap();
    file.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&random_bytes(12, 100_000), 0).unwrap();
    file.write_all_at(&random_bytes(13, 100_000), 30 << 20).unwrap();
    file.write_all_at(b"the end", (64 << 20) - 7).unwrap();
    drop(file);
    assert!(allocated(&a.path("holes.img")) < 8 << 20, "the source is not sparse");
    let _serve_a = a.serve();
    b.sync_ok();
    assert_eq!(b3sum(&b.path("holes.img")), b3sum(&a.path("holes.img")));
    let on_b = allocated(&b.path("holes.img"));
    assert!(on_b < 8 << 20, "the holes were written out: {on_b} bytes allocated");
}

#[test]
fn a_sparse_file_larger_than_4_gib_syncs_exactly() {
    let (a, b) = pair();
    let file = fs::File::create(a.path("huge.img")).unwrap();
    let size = (4u64 << 30) + (3 << 20);
    file.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&random_bytes(14, 1 << 20), (4u64 << 30) + 12_345).unwrap();
    drop(file);
    let _serve_a = a.serve();
    let (ok, stderr) = b.sync(300);
    assert!(ok, "{stderr}");
    assert_eq!(fs::metadata(b.path("huge.img")).unwrap().len(), size);
    assert_eq!(a.entry("huge.img").unwrap()["hash"], b3sum(&b.path("huge.img")).as_str());
    let on_b = allocated(&b.path("huge.img"));
    assert!(on_b < 64 << 20, "4 GiB of holes were written out: {on_b} bytes allocated");
    let summary = crate::support::SyncSummary::parse(&stderr);
    assert!(summary.network < 64 << 20, "the holes crossed the network: {summary:?}");
}

#[test]
fn zero_byte_files_sync_and_a_truncation_to_zero_is_not_a_delete() {
    let (a, b) = pair();
    a.write("empty.txt", b"");
    a.write("empty-exec", b"");
    set_mode(&a.path("empty-exec"), 0o755);
    fs::create_dir(a.path("empty-dir")).unwrap();
    a.write("data.txt", b"content before truncation");
    let _serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || a.tree() == b.tree() && b.path("data.txt").exists()));
    fs::File::options().write(true).open(a.path("data.txt")).unwrap().set_len(0).unwrap();
    let truncated =
        wait_until(WAIT, || fs::metadata(b.path("data.txt")).is_ok_and(|m| m.len() == 0));
    assert!(truncated);
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    assert_eq!(fs::metadata(b.path("empty-exec")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(b.entry("data.txt").unwrap()["deleted"], false);
}

// ---------------------------------------------------------------------------------------
// Names that differ only by case, and timestamps

#[test]
fn case_only_renames_propagate_and_case_twins_coexist() {
    let (a, b) = pair();
    a.write("Readme.md", b"read me");
    a.write("Photos/img.jpg", b"jpeg");
    a.write("a.txt", b"lower");
    a.write("A.txt", b"upper");
    let _serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || a.tree() == b.tree() && b.path("Photos/img.jpg").exists()));
    fs::rename(a.path("Readme.md"), a.path("README.md")).unwrap();
    fs::rename(a.path("Photos"), a.path("photos")).unwrap();
    let converged = wait_until(WAIT, || a.tree() == b.tree() && b.path("photos").exists());
    assert!(converged, "a: {:#?}\nb: {:#?}", a.tree(), b.tree());
    assert_eq!(names(&b.folder()), [".tandem", "A.txt", "README.md", "a.txt", "photos"]);
    assert_eq!(fs::read(b.path("A.txt")).unwrap(), b"upper");
}

fn touch(path: &Path, date: &str) {
    run("touch", &["-h", "-m", "-d", date, path_str(path)]);
}

fn mtime_ns(path: &Path) -> i128 {
    let meta = fs::symlink_metadata(path).unwrap();
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

#[test]
fn future_and_ancient_mtimes_sync_exactly_and_a_later_edit_still_wins() {
    let (a, b) = pair();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let dates = [
        ("tomorrow.txt", format!("@{}", now + 86_400)),
        ("year-2200.txt", "2200-01-01 00:00:00".to_string()),
        ("year-1975.txt", "1975-06-01 12:00:00".to_string()),
        ("year-1960.txt", "1960-01-01 00:00:00".to_string()),
    ];
    for (name, date) in &dates {
        a.write(name, name.as_bytes());
        touch(&a.path(name), date);
    }
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || a.tree() == b.tree() && b.path("year-1960.txt").exists()));
    for (name, _) in &dates {
        assert_eq!(mtime_ns(&b.path(name)), mtime_ns(&a.path(name)), "{name}");
    }
    // b edits the file a dated tomorrow: b's mtime is older, but b's edit came later
    b.write("tomorrow.txt", b"edited on b today");
    let arrived = wait_until(WAIT, || {
        fs::read(a.path("tomorrow.txt")).is_ok_and(|d| d == b"edited on b today")
    });
    assert!(arrived, "{}", serve_b.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
    assert!(!a.tree().keys().any(|p| p.contains(".sync-conflict-")), "{:#?}", a.tree());
}

#[test]
fn a_future_dated_file_is_not_read_again_on_every_scan() {
    let d = Device::with_folder();
    let path = d.path("tomorrow.bin");
    d.write("tomorrow.bin", &random_bytes(15, 1 << 20));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    run("touch", &["-a", "-d", "2000-01-01", path_str(&path)]);
    touch(&path, &format!("@{}", now + 86_400));
    // every read moves the atime (with relatime, while atime is older than mtime, which a
    // file dated tomorrow always has); touching it would move ctime, so it is only watched
    let atime = || {
        let meta = fs::metadata(&path).unwrap();
        (meta.atime(), meta.atime_nsec())
    };
    d.scan();
    if atime().0 == 946_684_800 {
        eprintln!("atime does not move on this mount (noatime): this case is skipped");
        return;
    }
    let settles = wait_until(WAIT, || {
        let before = atime();
        d.scan();
        atime() == before
    });
    assert!(settles, "every scan reads the future-dated file again");
    assert_eq!(d.entry("tomorrow.bin").unwrap()["hash"], b3sum(&path).as_str());
}

#[test]
fn a_same_size_rewrite_in_the_same_second_on_a_coarse_clock_filesystem_is_seen() {
    // ext4 with 128-byte inodes keeps whole seconds (FAT keeps 2 s, some NFS servers 1 s):
    // a same-size rewrite within the second of the last scan leaves size, mtime, ctime and
    // inode as they were, and only the racy-entry rule makes the next scan read it
    let d = Device::with_folder();
    if !is_root() {
        eprintln!("not root: cannot mount a loop image; this case is skipped");
        return;
    }
    let image = d.dir.path().join("coarse.img");
    fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", "-I", "128", path_str(&image)]);
    let Some(_disk) = Mount::new(&["-o", "loop", path_str(&image)], &d.folder()) else { return };
    let _ = fs::remove_dir(d.path("lost+found"));
    let path = d.path("same-size.txt");
    let second = |p: &Path| fs::metadata(p).unwrap().mtime();
    let raced = (0..20).any(|round| {
        d.write("same-size.txt", format!("{round:04} before").as_bytes());
        let written = second(&path);
        d.scan();
        d.write("same-size.txt", format!("{round:04} after!").as_bytes());
        second(&path) == written && fs::metadata(&path).unwrap().ctime() == written
    });
    assert!(raced, "never rewrote within the same second");
    let seen = wait_until(WAIT, || {
        d.scan();
        d.entry("same-size.txt").unwrap()["hash"] == b3sum(&path).as_str()
    });
    assert!(seen, "the rewrite is never scanned: {:?}", d.entry("same-size.txt"));
}

// ---------------------------------------------------------------------------------------
// Symlinks that loop or lead out

#[test]
fn symlink_loops_are_synced_as_links_and_never_followed() {
    let (a, b) = pair();
    symlink("loop2", a.path("loop1")).unwrap();
    symlink("loop1", a.path("loop2")).unwrap();
    symlink("self", a.path("self")).unwrap();
    symlink(".", a.path("dot")).unwrap();
    symlink("..", a.path("up")).unwrap();
    symlink("dot/dot/dot/up/docs", a.path("chain")).unwrap();
    fs::create_dir(a.path("sub")).unwrap();
    symlink("../sub", a.path("sub/back")).unwrap();
    let _serve_a = a.serve();
    b.sync_ok();
    assert_eq!(a.tree(), b.tree());
    assert_eq!(b.tree()["sub/back"], "link ../sub");
    assert_eq!(b.live_paths().len(), 8, "{:?}", b.live_paths());
}

#[test]
fn a_symlink_to_outside_the_root_syncs_as_a_link_and_nothing_behind_it() {
    let (a, b) = pair();
    let outside = a.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret.txt"), b"outside the root").unwrap();
    symlink(&outside, a.path("escape")).unwrap();
    symlink("../outside/secret.txt", a.path("relative-escape")).unwrap();
    let _serve_a = a.serve();
    b.sync_ok();
    assert_eq!(b.tree()["escape"], format!("link {}", outside.display()));
    assert_eq!(b.tree()["relative-escape"], "link ../outside/secret.txt");
    assert!(!holds(&b, b"outside the root"), "content behind a link was synced");
    assert_eq!(names(&outside), ["secret.txt"]);
    assert!(!b.dir.path().join("outside").exists());
}

// ---------------------------------------------------------------------------------------
// The folder root and tandem's own state

#[test]
fn a_folder_root_that_vanishes_pauses_the_folder_and_recovers_when_it_returns() {
    let (a, b) = pair();
    a.write("a.txt", b"before");
    let serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("a.txt").exists()));
    let away = a.dir.path().join("away");
    fs::rename(a.folder(), &away).unwrap();
    assert!(logged(&serve_a, &["missing or not a directory"]), "{}", serve_a.log_text());
    expect_status_error(&a, "", "missing");
    assert_eq!(status(&a)["folders"][0]["state"], "error");
    assert!(!a.folder().exists(), "the root was re-created");
    assert_eq!(a.entry("a.txt").unwrap()["deleted"], false);
    assert!(b.path("a.txt").exists());
    fs::rename(&away, a.folder()).unwrap();
    a.write("after.txt", b"after");
    assert!(wait_until(WAIT, || b.path("after.txt").exists()), "{}", serve_a.log_text());
    assert!(b.path("a.txt").exists());
    assert!(wait_until(WAIT, || status(&a)["folders"][0]["state"] != "error"));
    expect_status_clear(&a, "");
}

#[test]
fn a_root_replaced_by_an_empty_directory_pauses_instead_of_deleting_everywhere() {
    let (a, b) = pair();
    a.write("a.txt", b"a");
    a.write("dir/b.txt", b"b");
    let serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("dir/b.txt").exists()));
    let real = a.dir.path().join("real-disk");
    fs::rename(a.folder(), &real).unwrap();
    fs::create_dir(a.folder()).unwrap(); // the disk is unmounted: an empty mount point
    assert!(logged(&serve_a, &["marker", "unmounted"]), "{}", serve_a.log_text());
    expect_status_error(&a, "", "marker");
    assert_eq!(a.live_paths(), ["a.txt", "dir", "dir/b.txt"], "tombstones were made");
    assert!(b.path("a.txt").exists() && b.path("dir/b.txt").exists());
    assert_eq!(names(&a.folder()), Vec::<String>::new(), "the mount point was written to");
    fs::remove_dir(a.folder()).unwrap();
    fs::rename(&real, a.folder()).unwrap();
    a.write("after.txt", b"after");
    assert!(wait_until(WAIT, || b.path("after.txt").exists()), "{}", serve_a.log_text());
    assert!(wait_until(WAIT, || a.tree() == b.tree()));
}

#[test]
fn a_deleted_state_directory_pauses_the_folder_until_the_marker_is_restored() {
    let (a, b) = pair();
    a.write("a.txt", b"a");
    let serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("a.txt").exists()));
    fs::remove_dir_all(a.path(".tandem")).unwrap();
    a.write("a.txt", b"edited while paused");
    assert!(logged(&serve_a, &["touch", ".tandem/folder"]), "{}", serve_a.log_text());
    expect_status_error(&a, "", "marker");
    assert_eq!(fs::read(b.path("a.txt")).unwrap(), b"a", "a paused folder sent a change");
    // the fix the message gives
    fs::create_dir_all(a.path(".tandem")).unwrap();
    fs::write(a.path(".tandem/folder"), b"").unwrap();
    let arrived =
        wait_until(WAIT, || fs::read(b.path("a.txt")).is_ok_and(|d| d == b"edited while paused"));
    assert!(arrived, "{}", serve_a.log_text());
}

#[test]
fn a_trash_directory_deleted_by_the_user_is_made_again() {
    let (a, b) = pair();
    a.write("one.txt", b"one");
    a.write("sub/two.txt", b"two");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("sub/two.txt").exists()));
    fs::remove_file(a.path("one.txt")).unwrap();
    assert!(wait_until(WAIT, || crate::support::trash_contents(&b).contains(&b"one".to_vec())));
    fs::remove_dir_all(b.path(".tandem/trash")).unwrap();
    fs::remove_file(a.path("sub/two.txt")).unwrap();
    let trashed =
        wait_until(WAIT, || crate::support::trash_contents(&b).contains(&b"two".to_vec()));
    assert!(trashed, "{}", serve_b.log_text());
    assert!(!b.path("sub/two.txt").exists());
}

#[test]
fn a_trash_path_blocked_by_a_file_fails_deletes_clearly_and_keeps_the_file() {
    let (a, b) = pair();
    a.write("gone.txt", b"delete me");
    let _serve_a = a.serve();
    let serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("gone.txt").exists()));
    fs::create_dir_all(b.path(".tandem")).unwrap();
    let _ = fs::remove_dir_all(b.path(".tandem/trash"));
    fs::write(b.path(".tandem/trash"), b"the user's file, not a directory").unwrap();
    fs::remove_file(a.path("gone.txt")).unwrap();
    let refused = "gone.txt: parent .tandem/trash is not a real directory";
    assert!(logged(&serve_b, &[refused]), "{}", serve_b.log_text());
    expect_status_error(&b, "gone.txt", "not a real directory");
    assert_eq!(fs::read(b.path("gone.txt")).unwrap(), b"delete me", "deleted without a trash");
    assert_eq!(fs::read(b.path(".tandem/trash")).unwrap(), b"the user's file, not a directory");
    fs::remove_file(b.path(".tandem/trash")).unwrap();
    assert!(wait_until(WAIT, || !b.path("gone.txt").exists()), "{}", serve_b.log_text());
    assert!(crate::support::trash_contents(&b).contains(&b"delete me".to_vec()));
    expect_status_clear(&b, "gone.txt");
}

#[test]
fn a_trash_symlinked_outside_the_root_is_never_written_through() {
    let (a, b) = pair();
    let outside = b.dir.path().join("elsewhere");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious.txt"), b"a user's file outside the root").unwrap();
    a.write("gone.txt", b"delete me");
    {
        let _serve_a = a.serve();
        b.sync_ok();
    }
    fs::create_dir_all(b.path(".tandem")).unwrap();
    let _ = fs::remove_dir_all(b.path(".tandem/trash"));
    symlink(&outside, b.path(".tandem/trash")).unwrap();
    fs::remove_file(a.path("gone.txt")).unwrap();
    let _serve_a = a.serve();
    let serve_b = b.serve();
    let refused = "gone.txt: parent .tandem/trash is not a real directory";
    assert!(logged(&serve_b, &[refused]), "{}", serve_b.log_text());
    expect_status_error(&b, "gone.txt", "not a real directory");
    assert_eq!(names(&outside), ["precious.txt"], "the trash symlink was written through");
    assert_eq!(fs::read(b.path("gone.txt")).unwrap(), b"delete me");
    fs::remove_file(b.path(".tandem/trash")).unwrap();
    assert!(wait_until(WAIT, || !b.path("gone.txt").exists()), "{}", serve_b.log_text());
    assert!(crate::support::trash_contents(&b).contains(&b"delete me".to_vec()));
    assert_eq!(names(&outside), ["precious.txt"]);
}

#[test]
fn user_files_named_like_temp_files_are_neither_synced_nor_deleted() {
    let (a, b) = pair();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for name in [".tandem-tmp-notes.txt", "sub/.tandem-tmp-plan", ".tandem-tmp-x-nothex"] {
        a.write(name, b"the user's own file");
        let file = fs::File::options().write(true).open(a.path(name)).unwrap();
        file.set_modified(two_days_ago).unwrap();
    }
    a.write("normal.txt", b"synced");
    let serve_a = a.serve(); // removes stale temp files at start
    b.sync_ok();
    for name in [".tandem-tmp-notes.txt", "sub/.tandem-tmp-plan", ".tandem-tmp-x-nothex"] {
        let line = format!("{name}: names starting with .tandem-tmp- are reserved");
        assert!(logged(&serve_a, &[&line]), "{}", serve_a.log_text());
        expect_status_error(&a, name, "reserved");
        assert_eq!(fs::read(a.path(name)).unwrap(), b"the user's own file", "{name} removed");
    }
    assert_eq!(names(&b.folder()), [".tandem", "normal.txt", "sub"]);
    assert_eq!(names(&b.path("sub")), Vec::<String>::new());
}

#[test]
fn a_broken_ignore_file_pauses_the_folder_with_a_clear_error_until_fixed() {
    let (a, b) = pair();
    a.write("keep.txt", b"synced");
    let serve_a = a.serve();
    let _serve_b = b.serve();
    assert!(wait_until(WAIT, || b.path("keep.txt").exists()));
    a.write(".tandemignore", b"*.log\nbad[z-a]\n");
    a.write("keep.txt", b"edited while the ignore file is broken");
    assert!(logged(&serve_a, &[".tandemignore"]), "{}", serve_a.log_text());
    expect_status_error(&a, "", ".tandemignore");
    assert_eq!(fs::read(b.path("keep.txt")).unwrap(), b"synced");
    a.write(".tandemignore", b"*.log\n");
    let arrived = wait_until(WAIT, || {
        fs::read(b.path("keep.txt")).is_ok_and(|d| d == b"edited while the ignore file is broken")
    });
    assert!(arrived, "{}", serve_a.log_text());
    assert!(wait_until(WAIT, || b.path(".tandemignore").exists()));
}

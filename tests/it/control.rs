//! The control socket: a running daemon applies configuration changes without a restart,
//! scans on demand, runs `override`/`revert` on its own index, reports per-file problems and
//! watcher failures in `status` until their cause is gone, and `status --check --max-lag`
//! forgives lag only within the given time.

use std::fs;
use std::os::unix::ffi::OsStrExt;

use serde_json::Value;

use crate::support::{Daemon, Device, wait_until};

fn status(d: &Device) -> Value {
    serde_json::from_str(&d.ok(&["status", "--json"])).expect("status --json is JSON")
}

fn folder<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["folders"].as_array()?.iter().find(|f| f["id"] == id)
}

/// Two devices that trust each other, both serving; `a` holds `x.txt`.
fn serving_pair() -> (Device, Device, Daemon, Daemon) {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("x.txt", b"x");
    let (serve_a, serve_b) = (a.serve(), b.serve());
    (a, b, serve_a, serve_b)
}

/// `tandem status --check ARGS` fails on `d` and prints `needle`.
fn check_fails_with(d: &Device, args: &[&str], needle: &str) -> bool {
    let out = d.run(&[&["status", "--check"], args].concat());
    !out.status.success() && String::from_utf8_lossy(&out.stdout).contains(needle)
}

/// Runs a command and returns (success, stdout, stderr).
fn run(d: &Device, args: &[&str]) -> (bool, String, String) {
    let out = d.run(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_running_daemon_applies_config_changes_without_a_restart() {
    let (a, b) = (Device::peer(), Device::peer());
    b.trust(&a);
    b.write("hello.txt", b"from b");
    let serve = a.serve();
    let (synced, _) = b.sync(12);
    assert!(!synced, "b synced with a daemon that does not trust it");

    // trust and share while a runs: the daemon says so and b gets through
    let (ok, _, err) = run(&a, &["peer", "add", &b.id(), "--addr", &b.listen()]);
    assert!(ok && err.contains("daemon: peer") && err.contains("trusted"), "{err}");
    let (ok, _, err) = run(&a, &["folder", "share", "docs", &b.id()]);
    assert!(ok && err.contains("daemon: folder docs shared with"), "{err}");
    b.sync_ok();
    let arrived = || fs::read(a.path("hello.txt")).ok().as_deref() == Some(&b"from b"[..]);
    assert!(wait_until(30, arrived), "a running daemon did not apply the new peer");

    // a second folder, added while a runs
    let (photos_a, photos_b) = (a.dir.path().join("photos"), b.dir.path().join("photos"));
    fs::create_dir(&photos_a).unwrap();
    fs::create_dir(&photos_b).unwrap();
    fs::write(photos_b.join("p.jpg"), b"jpeg bytes").unwrap();
    let (ok, _, err) =
        run(&a, &["folder", "add", "photos", photos_a.to_str().unwrap(), "--share", &b.id()]);
    assert!(ok && err.contains("daemon: folder photos added"), "{err}");
    b.ok(&["folder", "add", "photos", photos_b.to_str().unwrap(), "--share", &a.id()]);
    b.sync_ok();
    let photo = || fs::read(photos_a.join("p.jpg")).ok().as_deref() == Some(&b"jpeg bytes"[..]);
    assert!(wait_until(30, photo), "the folder added to a running daemon did not sync");

    // receive-only while running: a local addition is held back, not sent
    let (ok, _, err) = run(&a, &["folder", "set-mode", "docs", "receive-only"]);
    assert!(ok && err.contains("daemon: folder docs is now receive-only"), "{err}");
    a.write("local.txt", b"made on a");
    let held = || {
        folder(&status(&a), "docs").unwrap()["local_changes"] == serde_json::json!(["local.txt"])
    };
    assert!(wait_until(30, held), "{:#}", status(&a));
    b.sync_ok();
    assert!(!b.path("local.txt").exists(), "a receive-only change was announced");

    // removing the folder and the peer while running
    let (ok, _, err) = run(&a, &["folder", "remove", "photos"]);
    assert!(ok && err.contains("daemon: folder photos removed"), "{err}");
    assert!(folder(&status(&a), "photos").is_none());
    assert!(photos_a.join("p.jpg").exists(), "removing a folder touched its files");
    let (ok, _, err) = run(&a, &["peer", "remove", &b.id()]);
    assert!(ok && err.contains("disconnected"), "{err}");
    let (synced, _) = b.sync(12);
    assert!(!synced, "a removed peer could still sync");
    let log = serve.log_text();
    assert!(log.contains("config: peer") && log.contains("removed"), "{log}");
}

#[test]
fn per_file_problems_and_a_failed_watch_show_in_status_until_the_cause_is_gone() {
    let a = Device::with_folder();
    for i in 0..4 {
        fs::create_dir(a.path(&format!("d{i}"))).unwrap();
    }
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.txt");
    fs::write(a.folder().join(bad), b"unsyncable name").unwrap();
    // a fault hook makes watching fail the way an exhausted inotify watch limit does
    let _serve = a.serve_with(&[("TANDEM_TEST_WATCH_LIMIT", "3")]);
    let docs = || folder(&status(&a), "docs").cloned().unwrap();
    let shows = || {
        let f = docs();
        let errors = f["errors"].as_array().cloned().unwrap_or_default();
        let named = errors.iter().any(|e| {
            e["path"].as_str().unwrap_or("").starts_with("bad-")
                && e["error"].as_str().unwrap_or("").contains("UTF-8")
        });
        let warned = f["warnings"].to_string().contains("watch limit");
        named && warned
    };
    assert!(wait_until(30, shows), "{:#}", docs());
    let check = a.run(&["status", "--check"]);
    assert!(!check.status.success(), "a per-file error passed --check");
    assert!(String::from_utf8_lossy(&check.stdout).contains("bad-"));

    // the user fixes both causes; a scan through the daemon finds it at once
    fs::rename(a.folder().join(bad), a.path("good.txt")).unwrap();
    for i in 0..4 {
        fs::remove_dir(a.path(&format!("d{i}"))).unwrap();
    }
    let out = a.ok(&["scan", "docs"]);
    assert!(out.starts_with("docs: ") && out.contains("new"), "{out}");
    let out = a.ok(&["scan", "docs"]); // the round after the watch came back
    assert!(out.contains("(idle)"), "{out}");
    let f = docs();
    assert_eq!(f["errors"], serde_json::json!([]), "{f:#}");
    assert_eq!(f["warnings"], serde_json::json!([]), "{f:#}");
    assert!(a.live_paths().contains(&"good.txt".to_string()));
}

#[test]
fn check_forgives_lag_within_max_lag_and_not_beyond() {
    let (a, _b, _serve_a, mut serve_b) = serving_pair();
    let in_sync = || a.run(&["status", "--check"]).status.success();
    assert!(wait_until(30, in_sync), "{:#}", status(&a));
    let at = folder(&status(&a), "docs").unwrap()["synced_at"].clone();
    assert!(at.is_string(), "a folder in sync has no synced_at: {at}");

    serve_b.stop();
    let lagging = || check_fails_with(&a, &[], "not connected");
    assert!(wait_until(30, lagging), "a vanished peer was not a problem");
    a.ok(&["status", "--check", "--max-lag", "3600"]);
    let too_old = || check_fails_with(&a, &["--max-lag", "1"], "last in sync");
    assert!(wait_until(30, too_old), "lag beyond --max-lag passed");
}

#[test]
fn a_peer_that_reconnects_with_nothing_new_is_confirmed_in_sync() {
    let (a, b, _serve_a, mut serve_b) = serving_pair();
    let both = || {
        a.run(&["status", "--check"]).status.success()
            && b.run(&["status", "--check"]).status.success()
    };
    assert!(wait_until(30, both), "{:#}", status(&a));
    serve_b.stop();
    let gone = || check_fails_with(&a, &[], "not connected");
    assert!(wait_until(30, gone), "a did not notice b leave");
    // b comes back with nothing new to send, and ends its initial exchange late (after a's
    // round for b's index page has finished): a's daemon must still learn it is in sync
    // (while in sync, its synced_at is "now" and moves; frozen, it is the time b left)
    let _serve_b = b.serve_with(&[("TANDEM_TEST_FIRST_PING_DELAY_MS", "1500")]);
    assert!(wait_until(30, both), "{:#}", status(&a));
    let synced = |d: &Device| folder(&status(d), "docs").unwrap()["synced_at"].clone();
    let moving = || {
        let before = synced(&a);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        before.is_string() && synced(&a).as_str() > before.as_str()
    };
    assert!(
        wait_until(15, moving),
        "a's daemon never confirmed it is in sync again: {:#}",
        status(&a)
    );
}

#[test]
fn revert_runs_inside_a_running_daemon() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("doc.txt", b"from a");
    let _serve_a = a.serve();
    let _serve_b = b.serve();
    let got = |d: &Device, want: &[u8]| fs::read(d.path("doc.txt")).ok().as_deref() == Some(want);
    assert!(wait_until(30, || got(&b, b"from a")));
    b.ok(&["folder", "set-mode", "docs", "receive-only"]);
    b.write("doc.txt", b"edited on b");
    let held =
        || folder(&status(&b), "docs").unwrap()["local_changes"] == serde_json::json!(["doc.txt"]);
    assert!(wait_until(30, held), "{:#}", status(&b));
    let out = b.ok(&["revert", "docs"]);
    assert!(out.contains("1 local changes"), "{out}");
    assert!(wait_until(30, || got(&b, b"from a")), "the daemon did not restore the global version");
    assert!(got(&a, b"from a"), "a receive-only edit reached the peer");
}

/// True when `d`'s daemon answers and says it is still scanning `docs` at start-up (false,
/// not a panic, while `status` cannot tell yet: the daemon may be creating the index).
fn answers_while_starting(d: &Device) -> bool {
    let out = d.run(&["status", "--json"]);
    let Ok(s) = serde_json::from_slice::<Value>(&out.stdout) else { return false };
    out.status.success()
        && s["daemon"] == true
        && s["starting"] == true
        && folder(&s, "docs").unwrap()["state"] == "scanning"
        && folder(&s, "docs").unwrap()["first_scan"] == true
}

#[test]
fn check_fails_while_the_daemon_scans_at_start_up_and_passes_once_in_sync() {
    let (a, b, _serve_a, mut serve_b) = serving_pair();
    let in_sync = |d: &Device| d.run(&["status", "--check"]).status.success();
    assert!(wait_until(30, || in_sync(&a) && in_sync(&b)), "{:#}", status(&b));
    serve_b.stop();
    // a file made while b's daemon was away: b's index (as of the last run) says in sync
    b.write("new.txt", b"made while b was stopped");
    // b's start-up scan is held back 10 s (a fault hook), as a big folder's would take
    let serve_b = b.spawn_serve(&[("TANDEM_TEST_FIRST_SCAN_DELAY_MS", "10000")]);
    let starting = || answers_while_starting(&b);
    assert!(wait_until(8, starting), "{:#}\n{}", status(&b), serve_b.log_text());
    assert!(
        check_fails_with(&b, &[], "folder docs: the daemon is still scanning it at start-up"),
        "{:?}",
        b.run(&["status", "--check"])
    );
    // --max-lag forgives lag, not a folder whose state nobody knows yet
    assert!(check_fails_with(&b, &["--max-lag", "3600"], "still scanning it at start-up"));
    let human = b.ok(&["status"]);
    assert!(
        human.contains("daemon starting") && human.contains("first scan not finished"),
        "{human}"
    );
    assert!(answers_while_starting(&b), "the checks above ran after the start-up: too slow");

    // once started, the daemon finds the new file, a takes it and both confirm in sync
    assert!(wait_until(60, || in_sync(&b) && in_sync(&a)), "{:#}", status(&b));
    assert!(a.path("new.txt").exists(), "in sync, yet a lacks the file b found at start-up");
    let s = status(&b);
    assert_eq!(s["starting"], false, "{s:#}");
    assert_eq!(folder(&s, "docs").unwrap()["first_scan"], false, "{s:#}");
}

#[test]
fn requests_during_start_up_wait_for_it_or_are_applied_after_it() {
    let a = Device::with_folder();
    a.write("x.txt", b"x");
    let photos = a.dir.path().join("photos");
    fs::create_dir(&photos).unwrap();
    fs::write(photos.join("p.jpg"), b"jpeg bytes").unwrap();
    let serve = a.spawn_serve(&[("TANDEM_TEST_FIRST_SCAN_DELAY_MS", "8000")]);
    assert!(wait_until(6, || answers_while_starting(&a)), "{}", serve.log_text());

    // a config change is saved and deferred: the daemon says so and applies it afterwards
    let (ok, _, err) = run(&a, &["folder", "add", "photos", photos.to_str().unwrap()]);
    assert!(
        ok && err.contains("daemon: the daemon is still scanning folder docs at start-up"),
        "{err}"
    );
    assert!(err.contains("applied when its start-up is done"), "{err}");
    // a scan waits for the start-up, then for a round of its own
    let out = a.ok(&["scan", "docs"]);
    assert!(out.starts_with("docs: "), "{out}");
    assert_eq!(status(&a)["starting"], false, "the scan answered before the start-up ended");
    assert!(a.live_paths().contains(&"x.txt".to_string()));
    let added = || {
        let s = status(&a);
        folder(&s, "photos").is_some_and(|f| f["state"] != "starting" && f["local"]["files"] == 1)
    };
    assert!(wait_until(30, added), "{:#}\n{}", status(&a), serve.log_text());
    assert!(serve.log_text().contains("config: folder photos added"), "{}", serve.log_text());
}

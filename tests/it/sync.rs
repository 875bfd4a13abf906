//! Replicas syncing for real: `tandem serve` and `tandem sync` processes talking QUIC over
//! 127.0.0.1, each with its own home and folder.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{Device, random_bytes, wait_until};

fn generated_tree(d: &Device, seed: u64) {
    for i in 0..120u64 {
        let dir = format!("d{}/e{}", i % 7, i % 3);
        let len = (i * 997 % 40_000) as usize;
        d.write(&format!("{dir}/f{seed}-{i}.bin"), &random_bytes(seed * 1000 + i, len));
    }
    d.write("empty.txt", b"");
    d.write("big.bin", &random_bytes(seed, 3 << 20));
    fs::create_dir_all(d.path("empty-dir")).unwrap();
    std::os::unix::fs::symlink("big.bin", d.path("link-to-big")).unwrap();
}

fn pair() -> (Device, Device) {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    (a, b)
}

#[test]
fn initial_sync_of_a_generated_tree_between_two_replicas() {
    let (a, b) = pair();
    generated_tree(&a, 1);
    b.write("from-b/note.txt", b"written on b");
    let _serve = a.serve();
    let summary = b.sync_ok();
    assert!(summary.network > 3 << 20, "{summary:?}");
    assert!(wait_until(20, || a.tree() == b.tree()), "trees differ");
    assert!(a.tree().contains_key("from-b/note.txt"));
    assert_eq!(b.tree()["link-to-big"], "link big.bin");
    assert_eq!(b.tree()["empty.txt"], a.tree()["empty.txt"]);
}

#[test]
fn three_replicas_converge() {
    let (a, b, c) = (Device::peer(), Device::peer(), Device::peer());
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        x.trust(y);
    }
    generated_tree(&a, 2);
    b.write("b.txt", b"from b");
    c.write("c/c.txt", b"from c");
    let _daemons = [a.serve(), b.serve(), c.serve()];
    let converged = wait_until(60, || {
        let t = a.tree();
        t.contains_key("b.txt") && t.contains_key("c/c.txt") && t == b.tree() && t == c.tree()
    });
    assert!(converged, "a={:?}\nc={:?}", a.tree().len(), c.tree().len());
}

#[test]
fn edits_deletes_renames_dirs_symlinks_and_modes_propagate() {
    let (a, b) = pair();
    a.write("keep.txt", b"one");
    a.write("gone.txt", b"bye");
    a.write("old-name.txt", b"rename me");
    a.write("dir/inner.txt", b"inner");
    let _daemons = [a.serve(), b.serve()];
    assert!(wait_until(30, || a.tree() == b.tree() && b.tree().contains_key("dir/inner.txt")));
    a.write("keep.txt", b"two, and longer");
    fs::remove_file(a.path("gone.txt")).unwrap();
    fs::rename(a.path("old-name.txt"), a.path("new-name.txt")).unwrap();
    fs::rename(a.path("dir"), a.path("moved-dir")).unwrap();
    fs::create_dir_all(a.path("fresh/deeper")).unwrap();
    a.write("fresh/deeper/empty", b"");
    std::os::unix::fs::symlink("../keep.txt", a.path("fresh/link")).unwrap();
    fs::set_permissions(a.path("new-name.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let converged = wait_until(30, || a.tree() == b.tree() && b.tree().contains_key("fresh/link"));
    assert!(converged, "a: {:#?}\nb: {:#?}", a.tree(), b.tree());
    assert!(!b.path("gone.txt").exists());
    assert!(!b.path("dir").exists());
    assert_eq!(fs::read(b.path("keep.txt")).unwrap(), b"two, and longer");
    let mode = fs::metadata(b.path("new-name.txt")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_concurrent_edit_made_while_disconnected_ends_with_one_identical_conflict_copy() {
    let (a, b) = pair();
    a.write("report.txt", b"base version");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    a.write("report.txt", b"edited on a, offline");
    std::thread::sleep(std::time::Duration::from_millis(50));
    b.write("report.txt", b"edited on b, offline, longer");
    let _serve = a.serve();
    b.sync_ok();
    assert!(wait_until(30, || a.tree() == b.tree()), "a: {:#?}\nb: {:#?}", a.tree(), b.tree());
    let tree = b.tree();
    let copies: Vec<&String> = tree.keys().filter(|p| p.contains(".sync-conflict-")).collect();
    assert_eq!(copies.len(), 1, "{tree:#?}");
    assert!(
        copies[0].starts_with("report.sync-conflict-") && copies[0].ends_with(".txt"),
        "{copies:?}"
    );
    let contents = [fs::read(b.path("report.txt")).unwrap(), fs::read(b.path(copies[0])).unwrap()];
    assert!(contents.contains(&b"edited on a, offline".to_vec()));
    assert!(contents.contains(&b"edited on b, offline, longer".to_vec()));
    let listed = |d: &Device| {
        let rows: serde_json::Value =
            serde_json::from_str(&d.ok(&["conflicts", "--json"])).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["path"].clone(), r["original"].clone(), r["device"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&a), listed(&b), "conflicts are listed identically on every replica");
    assert_eq!(listed(&a).len(), 1);
    let why: serde_json::Value =
        serde_json::from_str(&b.ok(&["explain", "docs", "report.txt", "--json"])).unwrap();
    assert_eq!(why["records"].as_array().unwrap().len(), 2, "b's record and a's: {why:#}");
    assert_eq!(why["need"], "in-sync", "{why:#}");
}

#[test]
fn an_untrusted_device_cannot_connect_or_read_anything() {
    let (a, b) = pair();
    a.write("secret.txt", b"for b only");
    let stranger = Device::peer();
    stranger.trust(&a); // the stranger trusts a, but a does not trust the stranger
    let serve = a.serve();
    let (ok, stderr) = stranger.sync(5);
    assert!(!ok, "an untrusted device synced:\n{stderr}");
    assert!(stranger.tree().is_empty(), "{:?}", stranger.tree());
    let log = serve.log_text();
    assert!(log.contains(&format!("untrusted device {}", stranger.id())), "{log}");
    drop(b);
}

#[test]
fn a_peer_that_sends_chunks_with_a_wrong_hash_is_not_believed() {
    let (a, b) = pair();
    let data = random_bytes(7, 1 << 20);
    a.write("data.bin", &data);
    {
        let _bad = a.serve_with(&[("TANDEM_TEST_CORRUPT_RESPONSES", "1")]);
        let (ok, stderr) = b.sync(8);
        assert!(!ok, "sync claimed success with corrupt chunks:\n{stderr}");
        assert!(stderr.contains("failed verification"), "{stderr}");
        assert!(!b.path("data.bin").exists(), "corrupt data became visible");
    }
    let _good = a.serve();
    b.sync_ok();
    assert_eq!(fs::read(b.path("data.bin")).unwrap(), data);
}

#[test]
fn a_transfer_killed_half_way_resumes_without_resending_what_arrived() {
    let (a, b) = pair();
    let data = random_bytes(11, 48 << 20);
    a.write("large.bin", &data);
    {
        let _slow = a.serve_with(&[("TANDEM_TEST_RESPONSE_DELAY_MS", "150")]);
        let mut receiver = b.serve();
        let started = wait_until(30, || {
            fs::read_dir(b.folder())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tandem-tmp-"))
        });
        assert!(started, "no transfer started: {}", receiver.log_text());
        std::thread::sleep(std::time::Duration::from_millis(1200));
        receiver.kill();
        assert!(!b.path("large.bin").exists(), "a partial file is visible under its real name");
    }
    let _fast = a.serve();
    let summary = b.sync_ok();
    assert_eq!(fs::read(b.path("large.bin")).unwrap(), data);
    assert!(summary.resumed > 0, "nothing resumed: {summary:?}");
    assert!(summary.network < data.len() as u64, "everything was sent again: {summary:?}");
    assert_eq!(
        summary.network + summary.resumed + summary.reused,
        data.len() as u64,
        "{summary:?}"
    );
}

#[test]
fn a_64_byte_edit_in_a_small_file_and_a_small_file_growing_past_64_kib_send_only_the_change() {
    let (a, b) = pair();
    let mut notes = random_bytes(13, 40 << 10);
    let mut log = random_bytes(14, 60 << 10);
    a.write("notes.bin", &notes);
    a.write("log.bin", &log);
    let mut serve = a.serve();
    let initial = b.sync_ok();
    assert_eq!(initial.network, (100 << 10) as u64, "{initial:?}");
    // 64 bytes overwritten in the middle of the 40 KiB file (its size unchanged)
    serve.stop();
    notes[(20 << 10) - 32..(20 << 10) + 32].copy_from_slice(&random_bytes(15, 64));
    a.write("notes.bin", &notes);
    let mut serve = a.serve();
    let edited = b.sync_ok();
    assert_eq!(fs::read(b.path("notes.bin")).unwrap(), notes);
    assert!(edited.network <= 8 << 10, "more than a few KiB crossed: {edited:?}");
    assert_eq!(edited.network + edited.reused, notes.len() as u64, "{edited:?}");
    // 30 KiB appended to the 60 KiB file: past the small-file size, it keeps its chunk
    // sizes, so only the growth (and the old last chunk) crosses
    serve.stop();
    log.extend_from_slice(&random_bytes(16, 30 << 10));
    a.write("log.bin", &log);
    let _serve = a.serve();
    let grown = b.sync_ok();
    assert_eq!(fs::read(b.path("log.bin")).unwrap(), log);
    assert!(grown.network <= (30 + 8) << 10, "the old part was sent again: {grown:?}");
}

#[test]
fn a_transfer_goes_on_when_its_connection_is_replaced_by_a_duplicate() {
    // Two devices that dial each other at once hold two connections; PROTOCOL §9.8 keeps
    // the one dialed by the smaller id and closes the other, even mid-transfer. The puller
    // must carry on over the kept connection, not fail the file and resume it later.
    let (x, y) = pair();
    // the keeper is the dialer with the bytewise smaller device id (not the smaller text)
    let id = |d: &Device| d.id().parse::<tandem_proto::model::DeviceId>().expect("device id");
    let (server, client) = if id(&x) < id(&y) { (x, y) } else { (y, x) };
    let data = random_bytes(12, 32 << 20);
    server.write("large.bin", &data);
    // the server redials every second: its new connection replaces the one the client
    // dialed, while the slowed transfer (about 3 s) is under way
    let serve = server
        .serve_with(&[("TANDEM_TEST_RESPONSE_DELAY_MS", "400"), ("TANDEM_TEST_REDIAL_SECS", "1")]);
    let out = client.run(&["sync", "--timeout", "120", "--log-level", "debug"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sync failed:\n{stderr}");
    let sessions = stderr.matches(" connected to ").count();
    assert!(
        sessions >= 2 && stderr.contains(" disconnected"),
        "no connection was replaced, so this test proved nothing:\n{stderr}\n{}",
        serve.log_text()
    );
    let summary = crate::support::SyncSummary::parse(&stderr);
    assert_eq!(fs::read(client.path("large.bin")).unwrap(), data);
    assert!(!stderr.contains("no connected peer has this version"), "{stderr}");
    assert_eq!(summary.resumed, 0, "the transfer failed and was resumed: {summary:?}");
    assert_eq!(summary.network, data.len() as u64, "{summary:?}");
}

#[test]
fn a_renamed_directory_of_1000_files_and_a_renamed_1_gib_file_cross_no_chunk() {
    let (a, b) = pair();
    let big = random_bytes(3, 1 << 30);
    for d in [&a, &b] {
        d.write("big.iso", &big);
        for i in 0..1000u64 {
            d.write(&format!("photos/img{i:04}.jpg"), &random_bytes(100 + i, 2000));
        }
    }
    drop(big);
    let serve = a.serve();
    let adopted = b.sync_ok();
    assert_eq!(adopted.network, 0, "identical pre-filled replicas must be adopted: {adopted:?}");
    fs::rename(a.path("photos"), a.path("album")).unwrap();
    fs::rename(a.path("big.iso"), a.path("archive.iso")).unwrap();
    let noticed = wait_until(120, || {
        let live = a.live_paths();
        live.iter().any(|p| p == "archive.iso")
            && live.iter().any(|p| p == "album/img0999.jpg")
            && !live.iter().any(|p| p.starts_with("photos"))
    });
    assert!(noticed, "a did not rescan the renames: {}", serve.log_text());
    let moved = b.sync_ok();
    assert_eq!(moved.network, 0, "renames must not download: {moved:?}");
    let converged = wait_until(30, || a.tree() == b.tree());
    let (ta, tb) = (a.tree(), b.tree());
    let only_a: Vec<_> = ta.iter().filter(|(k, v)| tb.get(*k) != Some(v)).take(5).collect();
    let only_b: Vec<_> = tb.iter().filter(|(k, v)| ta.get(*k) != Some(v)).take(5).collect();
    assert!(converged, "differ: a {only_a:?}\nb {only_b:?}");
    assert!(b.path("album/img0999.jpg").exists() && !b.path("photos").exists());
    assert!(b.path("archive.iso").exists() && !b.path("big.iso").exists());
}

#[test]
fn serve_shuts_down_cleanly_on_sigterm() {
    let (a, _b) = pair();
    let mut daemon = a.serve();
    assert!(wait_until(10, || daemon.log_text().contains("listening on")), "{}", daemon.log_text());
    let status = daemon.stop();
    assert!(status.success(), "{status:?}: {}", daemon.log_text());
    assert!(daemon.log_text().contains("shutting down"));
}

#[test]
fn a_saved_file_reaches_the_peer_through_the_watcher_not_the_rescan_timer() {
    let (a, b) = pair();
    a.set_rescan_secs(3600);
    b.set_rescan_secs(3600);
    a.write("start.txt", b"so both have indexed once");
    let mut daemons = [a.serve(), b.serve()];
    assert!(wait_until(30, || b.path("start.txt").exists()), "initial exchange failed");
    let mut latencies = Vec::new();
    for round in 0..5u8 {
        // an editor's save: write a temp file beside the target, then rename over it
        let content = format!("draft {round}").into_bytes();
        let started = std::time::Instant::now();
        fs::write(a.path(".notes.txt.swp"), &content).unwrap();
        fs::rename(a.path(".notes.txt.swp"), a.path("notes.txt")).unwrap();
        let arrived = wait_until(20, || fs::read(b.path("notes.txt")).is_ok_and(|c| c == content));
        assert!(arrived, "round {round}: the save did not propagate");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "propagation latency (debug build): median {:?}, max {:?}",
        latencies[2], latencies[4]
    );
    assert!(!b.path(".notes.txt.swp").exists());
    for daemon in &mut daemons {
        assert!(daemon.stop().success());
    }
    let (on_a, on_b) = (a.entry("notes.txt").unwrap(), b.entry("notes.txt").unwrap());
    assert_eq!(on_a["version"], on_b["version"], "b stored a's version, not one of its own");
    let devices: Vec<_> =
        on_a["version"].as_array().unwrap().iter().map(|c| c["device"].clone()).collect();
    assert_eq!(devices.len(), 1, "only a ever changed notes.txt: {devices:?}");
}

#[test]
fn files_deleted_or_replaced_by_sync_are_kept_in_the_trash() {
    let (a, b) = pair();
    a.write("gone.txt", b"delete me");
    a.write("sub/edit.txt", b"version one");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    fs::remove_file(a.path("gone.txt")).unwrap();
    a.write("sub/edit.txt", b"version two, longer");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    assert!(!b.path("gone.txt").exists());
    assert_eq!(fs::read(b.path("sub/edit.txt")).unwrap(), b"version two, longer");
    let kept = crate::support::trash_contents(&b);
    assert!(kept.contains(&b"delete me".to_vec()), "deleted file not in the trash");
    assert!(kept.contains(&b"version one".to_vec()), "replaced version not in the trash");
    assert!(!b.tree().keys().any(|k| k.contains("trash")), "the trash is not synced");
    let log: serde_json::Value = serde_json::from_str(&b.ok(&["log", "--json"])).unwrap();
    let events = log.as_array().unwrap();
    let a_short = &a.id()[..7];
    let deleted = events.iter().find(|e| e["path"] == "gone.txt" && e["kind"] == "deleted");
    let deleted = deleted.unwrap_or_else(|| panic!("no delete event: {log:#}"));
    assert!(deleted["detail"].as_str().unwrap().contains(".tandem/trash/"), "{deleted}");
    assert_eq!(deleted["device"], a_short);
    let replaced = events
        .iter()
        .rev()
        .find(|e| e["path"] == "sub/edit.txt" && e["kind"] == "updated")
        .unwrap();
    assert!(
        replaced["detail"].as_str().unwrap().contains("previous version is in .tandem/trash/"),
        "{replaced}"
    );
}

#[test]
fn a_file_renamed_over_another_replaces_it_on_the_peer_and_the_old_version_goes_to_the_trash() {
    let (a, b) = pair();
    a.write("target.txt", b"old target");
    a.write("source.txt", b"moved over the target");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    // `mv source.txt target.txt`: the peer plans a rename onto a live file
    fs::rename(a.path("source.txt"), a.path("target.txt")).unwrap();
    let _serve = a.serve();
    b.sync_ok();
    assert_eq!(fs::read(b.path("target.txt")).unwrap(), b"moved over the target");
    assert!(!b.path("source.txt").exists());
    assert!(
        crate::support::trash_contents(&b).contains(&b"old target".to_vec()),
        "replaced version not kept"
    );
}

#[test]
fn receive_only_holds_local_changes_back_until_the_folder_switches_to_send_receive() {
    let (a, b) = pair();
    a.write("doc.txt", b"from a");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    b.ok(&["folder", "set-mode", "docs", "receive-only"]);
    b.write("doc.txt", b"edited on b");
    b.write("b-only.txt", b"new on b");
    a.write("from-a.txt", b"still flows to b");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    assert_eq!(fs::read(a.path("doc.txt")).unwrap(), b"from a", "a receive-only edit leaked");
    assert!(!a.path("b-only.txt").exists(), "a receive-only new file leaked");
    assert!(b.path("from-a.txt").exists(), "receive-only still receives");
    let status: serde_json::Value = serde_json::from_str(&b.ok(&["status", "--json"])).unwrap();
    let changes = status["folders"][0]["local_changes"].as_array().unwrap().clone();
    assert!(
        changes.contains(&"doc.txt".into()) && changes.contains(&"b-only.txt".into()),
        "{changes:?}"
    );
    b.ok(&["folder", "set-mode", "docs", "send-receive"]);
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    assert!(
        wait_until(20, || fs::read(a.path("doc.txt")).unwrap() == b"edited on b"),
        "held-back edit not sent"
    );
    assert!(wait_until(20, || a.path("b-only.txt").exists()));
    assert!(wait_until(20, || a.tree() == b.tree()));
}

#[test]
fn stale_temp_files_are_removed_at_start_and_recent_ones_kept_for_resuming() {
    let (a, _b) = pair();
    let old = ".tandem-tmp-old.bin-0123456789abcdef";
    let recent = "sub/.tandem-tmp-new.bin-0123456789abcdef";
    a.write(old, b"abandoned two days ago");
    a.write(recent, b"interrupted a minute ago");
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    fs::File::options().write(true).open(a.path(old)).unwrap().set_modified(two_days_ago).unwrap();
    let _serve = a.serve();
    assert!(wait_until(20, || !a.path(old).exists()), "stale temp file kept");
    assert!(a.path(recent).exists(), "a resumable temp file was removed");
}

#[test]
fn revert_throws_receive_only_changes_away_and_restores_the_global_state() {
    let (a, b) = pair();
    a.write("doc.txt", b"from a");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    b.ok(&["folder", "set-mode", "docs", "receive-only"]);
    b.write("doc.txt", b"edited on b");
    b.write("b-only.txt", b"new on b");
    b.ok(&["scan", "docs"]);
    let out = b.ok(&["revert", "docs"]);
    assert!(out.contains("1 local changes") && out.contains("1 local additions"), "{out}");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    assert_eq!(fs::read(b.path("doc.txt")).unwrap(), b"from a");
    assert!(!b.path("b-only.txt").exists());
    let kept = crate::support::trash_contents(&b);
    assert!(
        kept.contains(&b"edited on b".to_vec()) && kept.contains(&b"new on b".to_vec()),
        "reverted edits are kept in the trash"
    );
    let status: serde_json::Value = serde_json::from_str(&b.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["folders"][0]["local_changes"], serde_json::json!([]));
    let err = a.fails(&["revert", "docs"], 1);
    assert!(err.contains("receive-only"), "{err}");
}

#[test]
fn override_makes_a_send_only_device_s_state_global() {
    let (a, b) = pair();
    a.write("doc.txt", b"the source of truth");
    a.write("kept.txt", b"kept");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    a.ok(&["folder", "set-mode", "docs", "send-only"]);
    b.write("doc.txt", b"b changed it");
    b.write("extra.txt", b"b added it");
    {
        let _serve = b.serve();
        a.sync(15); // a receives b's index but, send-only, applies nothing
    }
    assert_eq!(fs::read(a.path("doc.txt")).unwrap(), b"the source of truth");
    assert!(!a.path("extra.txt").exists());
    let status: serde_json::Value = serde_json::from_str(&a.ok(&["status", "--json"])).unwrap();
    assert!(status["folders"][0]["need"]["files"].as_u64().unwrap() >= 2, "{status:#}");
    let out = a.ok(&["override", "docs"]);
    assert!(out.contains("2 paths"), "{out}");
    let _serve = a.serve();
    b.sync_ok();
    assert_eq!(fs::read(b.path("doc.txt")).unwrap(), b"the source of truth");
    assert!(!b.path("extra.txt").exists(), "b's addition is undone");
    assert!(wait_until(20, || a.tree() == b.tree()));
}

#[test]
fn migration_send_only_to_receive_only_then_both_send_receive_without_retransfer_or_conflicts() {
    let (old, new) = pair();
    old.ok(&["folder", "set-mode", "docs", "send-only"]);
    new.ok(&["folder", "set-mode", "docs", "receive-only"]);
    generated_tree(&old, 5);
    {
        let _serve = old.serve();
        let load = new.sync_ok();
        assert!(load.network > 3 << 20, "{load:?}");
    }
    assert_eq!(old.tree(), new.tree(), "initial load");
    old.ok(&["folder", "set-mode", "docs", "send-receive"]);
    new.ok(&["folder", "set-mode", "docs", "send-receive"]);
    {
        let _serve = old.serve();
        let switched = new.sync_ok();
        assert_eq!(switched.network, 0, "no re-transfer after the switch: {switched:?}");
    }
    assert_eq!(old.tree(), new.tree());
    assert!(!new.tree().keys().any(|p| p.contains(".sync-conflict-")), "no spurious conflicts");
    // and now it is ordinary two-way sync
    new.write("written-on-new.txt", b"after the cut-over");
    let _serve = old.serve();
    new.sync_ok();
    assert!(old.path("written-on-new.txt").exists());
}

#[test]
fn ten_thousand_files_created_in_a_burst_are_all_picked_up() {
    let (a, b) = pair();
    let _daemons = [a.serve(), b.serve()];
    for i in 0..10_000u32 {
        a.write(&format!("burst/d{:02}/f{i:05}.txt", i % 50), format!("file {i}").as_bytes());
    }
    let arrived = wait_until(180, || {
        (0..50)
            .map(|d| fs::read_dir(b.path(&format!("burst/d{d:02}"))).map_or(0, |r| r.count()))
            .sum::<usize>()
            == 10_000
    });
    assert!(arrived, "not every file arrived");
    assert!(wait_until(60, || a.tree() == b.tree()));
}

#[test]
fn a_git_checkout_of_another_branch_converges() {
    let (a, b) = pair();
    let git = |args: &[&str]| {
        let out =
            std::process::Command::new("git").args(args).current_dir(a.folder()).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "t@example.invalid"]);
    git(&["config", "user.name", "t"]);
    for i in 0..200 {
        a.write(&format!("src/m{i}.rs"), format!("// main {i}\n").as_bytes());
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "main"]);
    git(&["checkout", "-q", "-b", "feature"]);
    for i in 0..100 {
        a.write(&format!("src/m{i}.rs"), format!("// feature {i}\n").as_bytes());
        fs::remove_file(a.path(&format!("src/m{}.rs", 100 + i))).unwrap();
        a.write(&format!("feature/f{i}.rs"), b"// new\n");
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "feature"]);
    let _daemons = [a.serve(), b.serve()];
    assert!(wait_until(60, || a.tree() == b.tree()), "feature branch did not converge");
    git(&["checkout", "-q", "main"]);
    let converged = wait_until(60, || a.tree() == b.tree() && !b.path("feature").exists());
    assert!(converged, "checkout of main did not converge");
    assert_eq!(fs::read(b.path("src/m0.rs")).unwrap(), b"// main 0\n");
}

#[test]
fn sync_with_no_reachable_peer_fails_with_a_clear_error() {
    let (a, b) = pair();
    drop(a); // its home and port are gone: nothing answers
    let started = std::time::Instant::now();
    let (ok, stderr) = b.sync(60);
    assert!(!ok);
    assert!(stderr.contains("no configured peer is reachable"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(40),
        "gave up after {:?}",
        started.elapsed()
    );
}

#[test]
fn sync_completes_over_a_connection_the_peer_dialed() {
    // b cannot reach a (wrong address), but a reaches b: the session a opens is enough
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.ok(&[
        "peer",
        "add",
        &a.id(),
        "--addr",
        &format!("127.0.0.1:{}", crate::support::free_port()),
    ]);
    b.ok(&["folder", "share", "docs", &a.id()]);
    a.write("from-a.txt", b"dialed in");
    let _serve = a.serve();
    b.sync_ok();
    assert_eq!(fs::read(b.path("from-a.txt")).unwrap(), b"dialed in");
}

#[test]
fn setuid_setgid_and_sticky_bits_are_never_synced() {
    let (a, b) = pair();
    a.write("tool", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(a.path("tool"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::create_dir(a.path("shared")).unwrap();
    fs::set_permissions(a.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    let mode = |p: &str| fs::metadata(b.path(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("tool"), 0o755, "a peer planted special mode bits");
    assert_eq!(mode("shared"), 0o777);
    assert_eq!(b.entry("tool").unwrap()["mode"], "0755");
}

#[test]
fn a_peer_whose_clock_runs_a_day_ahead_neither_wins_nor_loses_unfairly() {
    let (a, b) = pair();
    let skew = [("TANDEM_TEST_CLOCK_SKEW_SECS", "86400")];
    let has = |d: &Device, want: &[u8]| fs::read(d.path("f.txt")).ok().as_deref() == Some(want);
    let copies = |d: &Device| -> Vec<String> {
        let listed: serde_json::Value =
            serde_json::from_str(&d.ok(&["conflicts", "--json"])).unwrap();
        listed.as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap().to_string()).collect()
    };
    a.write("f.txt", b"from a");
    {
        let _daemons = [a.serve_with(&skew), b.serve()];
        assert!(wait_until(30, || has(&b, b"from a")));
        // later edits on either side win, whatever the clocks say: no conflict
        b.write("f.txt", b"edited on b, whose clock is right");
        assert!(wait_until(30, || has(&a, b"edited on b, whose clock is right")));
        a.write("f.txt", b"edited on a, a day ahead");
        assert!(wait_until(30, || has(&b, b"edited on a, a day ahead")));
        assert!(copies(&a).is_empty() && copies(&b).is_empty(), "a sequential edit conflicted");
    }
    // concurrent edits while apart: one conflict copy, the same on both sides
    a.write("f.txt", b"concurrent on a");
    b.write("f.txt", b"concurrent on b");
    let _daemons = [a.serve_with(&skew), b.serve()];
    assert!(wait_until(60, || a.tree() == b.tree() && copies(&a).len() == 1));
    assert_eq!(copies(&a), copies(&b));
}

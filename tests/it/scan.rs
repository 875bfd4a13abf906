//! The scanner and index, through `tandem scan` and `tandem ls` on real folders.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::{Device, b3sum, is_root, version_of};

fn summary_counts(stdout: &str) -> (u64, u64, u64) {
    let num = |label: &str| -> u64 {
        let before = stdout.split(label).next().expect("label present");
        before.split_whitespace().last().expect("number").parse().expect("number")
    };
    (num(" new"), num(" changed"), num(" deleted"))
}

#[test]
fn new_files_dirs_and_empty_files_are_recorded_with_b3sum_hashes() {
    let d = Device::with_folder();
    d.write("a.txt", b"hello");
    d.write("sub/deeper/b.bin", &vec![7u8; 300_000]);
    d.write("empty", b"");
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (5, 0, 0), "{out}");
    assert_eq!(d.live_paths(), ["a.txt", "empty", "sub", "sub/deeper", "sub/deeper/b.bin"]);
    for rel in ["a.txt", "sub/deeper/b.bin", "empty"] {
        let entry = d.entry(rel).unwrap();
        assert_eq!(entry["type"], "file");
        assert_eq!(entry["hash"], b3sum(&d.path(rel)).as_str(), "{rel}");
        assert_eq!(entry["size"], fs::metadata(d.path(rel)).unwrap().len());
    }
    assert_eq!(d.entry("empty").unwrap()["chunks"], 0);
    assert_eq!(d.entry("sub").unwrap()["type"], "dir");
}

#[test]
fn a_rescan_without_changes_changes_nothing() {
    let d = Device::with_folder();
    d.write("a.txt", b"hello");
    d.scan();
    let before = d.ls();
    std::thread::sleep(Duration::from_millis(2100)); // past the racy window
    d.scan();
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (0, 0, 0), "{out}");
    assert_eq!(d.ls(), before);
}

#[test]
fn modifications_bump_the_version_and_sequence() {
    let d = Device::with_folder();
    d.write("a.txt", b"one");
    d.scan();
    let first = d.entry("a.txt").unwrap();
    d.write("a.txt", b"two, longer");
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (0, 1, 0), "{out}");
    let second = d.entry("a.txt").unwrap();
    assert_eq!(second["hash"], b3sum(&d.path("a.txt")).as_str());
    assert!(version_of(&second)[0].1 > version_of(&first)[0].1);
    assert!(second["sequence"].as_u64() > first["sequence"].as_u64());
}

#[test]
fn a_same_size_rewrite_with_restored_mtime_is_caught_by_ctime() {
    let d = Device::with_folder();
    d.write("a.txt", b"aaaa");
    let mtime = fs::metadata(d.path("a.txt")).unwrap().modified().unwrap();
    d.scan();
    std::thread::sleep(Duration::from_millis(2100));
    d.scan(); // settles the racy window
    d.write("a.txt", b"bbbb");
    fs::File::options().write(true).open(d.path("a.txt")).unwrap().set_modified(mtime).unwrap();
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (0, 1, 0), "{out}");
    assert_eq!(d.entry("a.txt").unwrap()["hash"], b3sum(&d.path("a.txt")).as_str());
}

#[test]
fn deletions_become_tombstones_and_renames_are_delete_plus_new() {
    let d = Device::with_folder();
    d.write("a.txt", b"content");
    d.write("dir/x", b"x");
    d.scan();
    let hash = d.entry("a.txt").unwrap()["hash"].clone();
    fs::rename(d.path("a.txt"), d.path("b.txt")).unwrap();
    fs::rename(d.path("dir"), d.path("moved")).unwrap();
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (3, 0, 3), "{out}");
    assert_eq!(d.live_paths(), ["b.txt", "moved", "moved/x"]);
    assert_eq!(d.entry("b.txt").unwrap()["hash"], hash);
    let tomb = d.entry("a.txt").unwrap();
    assert_eq!(tomb["deleted"], true);
    fs::remove_file(d.path("b.txt")).unwrap();
    d.scan();
    assert_eq!(d.entry("b.txt").unwrap()["deleted"], true);
    d.write("a.txt", b"back again");
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (1, 0, 0), "a re-created path counts as new: {out}");
    let back = d.entry("a.txt").unwrap();
    assert!(
        version_of(&back)[0].1 > version_of(&tomb)[0].1,
        "re-creation supersedes the tombstone"
    );
}

#[test]
fn symlinks_are_recorded_not_followed_even_when_they_point_outside() {
    let d = Device::with_folder();
    let outside = d.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, d.path("escape")).unwrap();
    std::os::unix::fs::symlink("a.txt", d.path("rel")).unwrap();
    d.scan();
    let entry = d.entry("escape").unwrap();
    assert_eq!(entry["type"], "symlink");
    assert_eq!(entry["symlink_target"], outside.to_str().unwrap());
    assert_eq!(d.entry("rel").unwrap()["symlink_target"], "a.txt");
    assert_eq!(d.live_paths(), ["escape", "rel"], "nothing behind the link is recorded");
}

#[test]
fn a_permission_only_change_is_a_new_version() {
    let d = Device::with_folder();
    d.write("run.sh", b"#!/bin/sh\n");
    fs::set_permissions(d.path("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    d.scan();
    let before = d.entry("run.sh").unwrap();
    fs::set_permissions(d.path("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (0, 1, 0), "{out}");
    let after = d.entry("run.sh").unwrap();
    assert_eq!((before["mode"].as_str(), after["mode"].as_str()), (Some("0644"), Some("0755")));
    assert_eq!(before["hash"], after["hash"]);
    assert_ne!(version_of(&before), version_of(&after));
}

#[test]
fn ignored_paths_temp_files_and_an_inner_home_are_not_recorded() {
    let d = Device::new();
    let folder = d.folder();
    fs::create_dir(&folder).unwrap();
    d.ok(&["folder", "add", "docs", folder.to_str().unwrap()]);
    d.write(".tandemignore", b"*.log\nbuild/\n!keep.log\n");
    d.write("a.log", b"x");
    d.write("keep.log", b"x");
    d.write("build/out.o", b"x");
    d.write("src/main.c", b"x");
    d.write(".tandem-tmp-a.txt-1234", b"partial");
    d.write(".tandem/trash/old", b"x");
    // a second device whose home lies inside the folder
    let inner_home = folder.join("home");
    let inner = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--home", inner_home.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(inner.status.success());
    d.command()
        .env("TANDEM_HOME", &inner_home)
        .args(["folder", "add", "docs", folder.to_str().unwrap()])
        .output()
        .unwrap();
    let out = d.command().env("TANDEM_HOME", &inner_home).args(["scan"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = d
        .command()
        .env("TANDEM_HOME", &inner_home)
        .args(["ls", "docs", "--json"])
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let mut paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, [".tandemignore", "keep.log", "src", "src/main.c"]);
}

#[test]
fn newly_ignored_paths_are_not_deleted_on_peers() {
    let d = Device::with_folder();
    d.write("a.log", b"x");
    d.scan();
    d.write(".tandemignore", b"*.log\n");
    let (out, _) = d.scan();
    assert_eq!(summary_counts(&out), (1, 0, 0), "{out}");
    assert_eq!(d.entry("a.log").unwrap()["deleted"], false);
}

#[test]
fn unicode_names_are_recorded_exactly() {
    let d = Device::with_folder();
    for name in ["日本語.txt", "caf\u{e9}", "cafe\u{301}", "emoji 🎉", "Ünïcödé/ß"] {
        d.write(name, name.as_bytes());
    }
    d.scan();
    let paths = d.live_paths();
    for name in ["日本語.txt", "caf\u{e9}", "cafe\u{301}", "emoji 🎉", "Ünïcödé/ß"] {
        assert!(paths.iter().any(|p| p == name), "{name} missing from {paths:?}");
    }
}

#[test]
fn a_name_that_is_not_utf8_is_reported_and_the_scan_goes_on() {
    let d = Device::with_folder();
    d.write("good.txt", b"x");
    let bad = d.folder().join(std::ffi::OsStr::from_bytes(b"bad\xff.txt"));
    fs::write(&bad, b"x").unwrap();
    let (out, err) = d.scan();
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(out.contains("1 not synced"), "{out}");
    assert_eq!(d.live_paths(), ["good.txt"]);
}

#[test]
fn an_unreadable_file_is_reported_and_the_rest_is_scanned() {
    let d = Device::with_folder();
    d.write("ok.txt", b"fine");
    d.write("secret.txt", b"hidden");
    fs::set_permissions(d.path("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = if is_root() {
        // root reads anything: run the scan as `nobody`, owning everything but the secret
        chown_tree_to_nobody(&d);
        let status = std::process::Command::new("chown")
            .args(["root:root"])
            .arg(d.path("secret.txt"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_tandem"),
            "scan",
            "docs",
        ]);
        cmd.env("TANDEM_HOME", d.home()).output().unwrap()
    } else {
        d.run(&["scan", "docs"])
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("secret.txt") && stderr.contains("ermission denied"), "{stderr}");
    assert_eq!(d.live_paths(), ["ok.txt"]);
}

fn chown_tree_to_nobody(d: &Device) {
    for path in [d.dir.path().to_path_buf(), d.home(), d.folder()] {
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn a_sparse_file_larger_than_4_gib_is_hashed_correctly() {
    let d = Device::with_folder();
    let file = fs::File::create(d.path("sparse.img")).unwrap();
    file.set_len(5 << 30).unwrap();
    drop(file);
    d.scan();
    let entry = d.entry("sparse.img").unwrap();
    assert_eq!(entry["size"], 5u64 << 30);
    let expected = {
        let mut hasher = blake3::Hasher::new();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(5 << 10) {
            hasher.update(&zeros);
        }
        hasher.finalize().to_hex().to_string()
    };
    assert_eq!(entry["hash"], expected.as_str());
    let chunks = entry["chunks"].as_u64().unwrap();
    assert!(chunks > 1 && chunks <= 20_000, "{chunks} chunks");
}

#[test]
fn a_file_rewritten_during_the_scan_is_never_recorded_half_read() {
    let d = Device::with_folder();
    const SIZE: usize = 24 << 20;
    let path = d.path("busy.bin");
    fs::write(&path, vec![0u8; SIZE]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut round = 1u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // each version is one byte value repeated, and the size alternates
                let size = if round.is_multiple_of(2) { SIZE } else { SIZE + 4096 };
                fs::write(&path, vec![round; size]).unwrap();
                round = round.wrapping_add(1).max(1);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        d.scan();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    if let Some(entry) = d.entry("busy.bin") {
        let size = entry["size"].as_u64().unwrap() as usize;
        let whole_versions: Vec<String> =
            (0..=255u8).map(|b| blake3::hash(&vec![b; size]).to_hex().to_string()).collect();
        assert!(
            whole_versions.iter().any(|h| entry["hash"] == h.as_str()),
            "a torn read was recorded"
        );
    }
    d.scan();
    assert_eq!(d.entry("busy.bin").unwrap()["hash"], b3sum(&path).as_str(), "settles once quiet");
}

#[test]
fn a_missing_root_is_an_error_not_a_mass_delete() {
    let d = Device::with_folder();
    d.write("a.txt", b"x");
    d.scan();
    fs::rename(d.folder(), d.dir.path().join("unmounted")).unwrap();
    let err = d.fails(&["scan", "docs"], 1);
    assert!(err.contains("missing"), "{err}");
    fs::rename(d.dir.path().join("unmounted"), d.folder()).unwrap();
    assert_eq!(d.entry("a.txt").unwrap()["deleted"], false);
}

#[test]
fn fifos_are_skipped_and_reported() {
    let d = Device::with_folder();
    let status = std::process::Command::new("mkfifo").arg(d.path("pipe")).status().unwrap();
    assert!(status.success());
    d.write("a.txt", b"x");
    let (out, err) = d.scan();
    assert!(err.contains("pipe") && err.contains("skipped"), "{err}");
    assert!(out.contains("1 not synced"), "{out}");
    assert_eq!(d.live_paths(), ["a.txt"]);
}

#[test]
fn an_emptied_mount_point_is_refused_not_read_as_a_mass_delete() {
    let d = Device::with_folder();
    d.write("a.txt", b"x");
    d.write("dir/b.txt", b"y");
    d.scan();
    assert!(d.path(".tandem/folder").is_file(), "the first scan leaves a marker");
    // the disk is unmounted: the mount point is an empty directory
    fs::remove_dir_all(d.folder()).unwrap();
    fs::create_dir(d.folder()).unwrap();
    let err = d.fails(&["scan", "docs"], 1);
    assert!(err.contains("marker") && err.contains("unmounted"), "{err}");
    assert_eq!(d.live_paths(), ["a.txt", "dir", "dir/b.txt"], "nothing became a tombstone");
}

#[test]
fn local_changes_are_logged_with_what_happened() {
    let d = Device::with_folder();
    d.write("a.txt", b"one");
    d.scan();
    d.write("a.txt", b"two!");
    fs::remove_file(d.path("a.txt")).unwrap();
    d.write("b.txt", b"new");
    d.scan();
    let log: serde_json::Value = serde_json::from_str(&d.ok(&["log", "--json"])).unwrap();
    let seen: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["path"].as_str().unwrap().to_string(), e["detail"].as_str().unwrap().to_string())
        })
        .collect();
    for expected in [("a.txt", "new"), ("a.txt", "deleted"), ("b.txt", "new")] {
        assert!(
            seen.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing from {seen:?}"
        );
    }
    assert!(log.as_array().unwrap().iter().all(|e| e["kind"] == "local-change"));
    let human = d.ok(&["log"]);
    assert!(human.contains("local-change") && human.contains("b.txt"), "{human}");
}

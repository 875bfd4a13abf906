//! `tandem conflicts` and `tandem demo`, as a user runs them.

use serde_json::Value;

use crate::support::Device;

#[test]
fn conflicts_json_lists_each_copy_with_its_original_and_device() {
    let d = Device::with_folder();
    d.write("a/report.txt", b"kept");
    d.write("a/report.sync-conflict-20261127-101500-ABCD234.txt", b"the other version");
    d.write(".bashrc.sync-conflict-20261127-101500-WXYZ234", b"dotfile copy");
    d.write("plain.txt", b"no conflict");
    let rows: Value = serde_json::from_str(&d.ok(&["conflicts", "--json"])).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let report = rows.iter().find(|r| r["original"] == "a/report.txt").expect("report copy listed");
    assert_eq!(report["folder"], "docs");
    assert_eq!(report["path"], "a/report.sync-conflict-20261127-101500-ABCD234.txt");
    assert_eq!(report["device"], "ABCD234");
    assert_eq!(report["size"], 17);
    assert!(report["modified"].as_str().unwrap().ends_with('Z'));
    assert!(rows.iter().any(|r| r["original"] == ".bashrc" && r["device"] == "WXYZ234"));
    let human = d.ok(&["conflicts"]);
    assert!(human.contains("conflict copy of a/report.txt"), "{human}");
}

#[test]
fn no_conflicts_is_an_empty_list() {
    let d = Device::with_folder();
    d.write("a.txt", b"x");
    assert_eq!(d.ok(&["conflicts", "--json"]).trim(), "[]");
    assert!(d.ok(&["conflicts"]).contains("no conflicts"));
}

#[test]
fn the_demo_syncs_two_replicas_and_shows_the_conflict_copy_on_both() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem")).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let root = stdout.lines().next().and_then(|l| l.split(" in ").nth(1)).unwrap().to_string();
    let beta_listing = stdout.lines().find(|l| l.contains("beta now has:")).unwrap();
    assert!(
        beta_listing.contains("photos/cat.jpg")
            && beta_listing.contains("latest.jpg -> photos/cat.jpg")
    );
    assert_eq!(
        stdout.matches(".sync-conflict-").count(),
        2,
        "one copy listed on each device:\n{stdout}"
    );
    for device in ["alpha", "beta"] {
        let dir = std::path::Path::new(&root).join(device).join("demo");
        let copies: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref().unwrap().file_name().to_string_lossy().contains(".sync-conflict-")
            })
            .collect();
        assert_eq!(copies.len(), 1, "{device}");
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"shopping: milk, bread, tea\n");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

fn conflicted(d: &Device, original: &str, copy: &str) {
    d.write(original, b"original content");
    std::thread::sleep(std::time::Duration::from_millis(20));
    d.write(copy, b"copy content");
}

#[test]
fn resolve_keep_copy_moves_the_copy_over_the_original_and_trashes_the_original() {
    let d = Device::with_folder();
    conflicted(&d, "a/report.txt", "a/report.sync-conflict-20261127-101500-ABCD234.txt");
    d.ok(&["resolve", "docs", "a/report.txt", "--keep", "copy"]);
    assert_eq!(std::fs::read(d.path("a/report.txt")).unwrap(), b"copy content");
    assert!(!d.path("a/report.sync-conflict-20261127-101500-ABCD234.txt").exists());
    let trashed =
        std::fs::read_dir(d.path(".tandem/trash/a")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read(trashed).unwrap(), b"original content");
    assert_eq!(d.ok(&["conflicts", "--json"]).trim(), "[]");
}

#[test]
fn resolve_keep_original_newest_and_both_in_bulk_by_glob() {
    let d = Device::with_folder();
    conflicted(&d, "one.txt", "one.sync-conflict-20261127-101500-ABCD234.txt");
    conflicted(&d, "two.txt", "two.sync-conflict-20261127-101500-ABCD234.txt");
    conflicted(&d, "keep/three.md", "keep/three.sync-conflict-20261127-101500-ABCD234.md");
    conflicted(&d, "newer.txt", "newer.sync-conflict-20261127-101500-ABCD234.txt");
    d.ok(&["resolve", "docs", "keep/*", "--keep", "both"]);
    assert_eq!(std::fs::read(d.path("keep/three (from ABCD234).md")).unwrap(), b"copy content");
    assert_eq!(std::fs::read(d.path("keep/three.md")).unwrap(), b"original content");
    d.ok(&["resolve", "docs", "newer.txt", "--keep", "newest"]);
    assert_eq!(
        std::fs::read(d.path("newer.txt")).unwrap(),
        b"copy content",
        "the copy was written last"
    );
    d.ok(&["resolve", "docs", "*.txt", "--keep", "original"]);
    assert_eq!(std::fs::read(d.path("one.txt")).unwrap(), b"original content");
    assert_eq!(std::fs::read(d.path("two.txt")).unwrap(), b"original content");
    assert_eq!(d.ok(&["conflicts", "--json"]).trim(), "[]");
    let err = d.fails(&["resolve", "docs", "nothing.txt", "--keep", "copy"], 1);
    assert!(err.contains("no conflict copy"), "{err}");
}

#[test]
fn explain_shows_the_record_the_rule_and_the_need() {
    let d = Device::with_folder();
    d.write("a.txt", b"hello");
    d.scan();
    let report: Value =
        serde_json::from_str(&d.ok(&["explain", "docs", "a.txt", "--json"])).unwrap();
    assert_eq!(report["need"], "in-sync");
    assert_eq!(report["rule"], "dominates");
    assert_eq!(report["records"].as_array().unwrap().len(), 1);
    assert_eq!(report["records"][0]["replica"], "this device");
    assert_eq!(report["global"]["hash"], report["records"][0]["hash"]);
    let human = d.ok(&["explain", "docs", "a.txt"]);
    assert!(human.contains("this device has the global version"), "{human}");
}

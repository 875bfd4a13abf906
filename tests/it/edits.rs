//! Chunk-list edits (protocol v2): a change to a big file sends the changed part of its
//! chunk list, not the whole list, and a record whose edit base changed meanwhile is asked
//! for again in full and still converges.

use std::fs;

use crate::support::{Device, b3sum, random_bytes, wait_until};

fn pair() -> (Device, Device) {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    (a, b)
}

/// Puts `data` at `rel` in one rename, so a watching daemon never indexes half of it.
fn replace(d: &Device, rel: &str, data: &[u8]) {
    let staged = d.home().join("staged.tmp");
    fs::write(&staged, data).unwrap();
    fs::rename(&staged, d.path(rel)).unwrap();
}

/// True once `d`'s index holds the content now on disk at `rel`.
fn indexed(d: &Device, rel: &str) -> bool {
    let on_disk = b3sum(&d.path(rel));
    d.entry(rel).is_some_and(|e| e["hash"] == on_disk.as_str())
}

fn inserted(data: &[u8], at: usize, seed: u64, len: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    out.splice(at..at, random_bytes(seed, len));
    out
}

#[test]
fn an_insertion_into_a_big_file_sends_only_the_changed_part_of_its_chunk_list() {
    let (a, b) = pair();
    let data = random_bytes(11, 48 << 20);
    a.write("big.bin", &data);
    let serve = a.serve();
    let first = b.sync_ok();
    assert_eq!(fs::read(b.path("big.bin")).unwrap(), data);

    let changed = inserted(&data, 24 << 20, 12, 100 << 10);
    replace(&a, "big.bin", &changed);
    assert!(wait_until(60, || indexed(&a, "big.bin")), "a did not index the edit");
    let second = b.sync_ok();
    assert_eq!(fs::read(b.path("big.bin")).unwrap(), changed);
    eprintln!("first sync {first:?}, after the insertion {second:?}");

    // the first sync carried the whole chunk list (hundreds of chunks), the second only the
    // few chunks around the insertion, as an edit of b's own record
    assert!(first.index > 20_000, "the full list is tens of kB: {first:?}");
    assert!(
        second.index * 8 < first.index,
        "the edit's record cost about as much as the full list: {first:?} then {second:?}"
    );
    // and of the chunks around the insertion, only what is new (the pieces the insertion cut,
    // protocol v2 deltas): whole chunks at its two edges were 187,774 bytes here
    assert!(second.network >= 100 << 10, "{second:?}");
    assert!(second.network < (100 << 10) + (48 << 10), "edge chunks came whole: {second:?}");
    // and a took b's record of the new version (sent back as an edit of a's own record)
    // before b's one-shot sync exited: a one-shot flushes its updates and closes in order
    let status: serde_json::Value = serde_json::from_str(&a.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["folders"][0]["peers"][0]["completion"],
        100.0,
        "{status}\n{}",
        serve.log_text()
    );
    assert!(!serve.log_text().contains("protocol violation"), "{}", serve.log_text());
}

#[test]
fn an_edit_whose_base_changed_meanwhile_is_asked_for_again_and_the_conflict_converges() {
    let (a, b) = pair();
    let data = random_bytes(21, 24 << 20);
    a.write("big.bin", &data);
    {
        let _serve = a.serve();
        b.sync_ok();
        // a holds b's record of big.bin: the base a's next edit will name
        assert!(wait_until(30, || b.entry("big.bin").is_some()));
    }
    // both change the file while apart, at different places
    let on_a = inserted(&data, 4 << 20, 22, 50_000);
    let on_b = inserted(&data, 16 << 20, 23, 50_000);
    replace(&a, "big.bin", &on_a);
    replace(&b, "big.bin", &on_b);
    a.scan();
    b.scan();

    let serve = a.serve();
    let (ok, stderr) = b.sync(120);
    assert!(ok, "sync failed:\n{stderr}\n{}", serve.log_text());
    // each side's edit named the other's old record, which had changed: both asked again
    assert!(stderr.contains("asking for them in full"), "b rebuilt a stale edit?\n{stderr}");
    let converged = wait_until(60, || a.tree() == b.tree());
    assert!(converged, "a {:?}\nb {:?}\n{}", a.tree(), b.tree(), serve.log_text());
    assert!(
        wait_until(30, || serve.log_text().contains("asking for them in full")),
        "a rebuilt a stale edit? {}",
        serve.log_text()
    );
    // exactly one conflict copy, and the two versions are both kept
    let copies: Vec<_> = fs::read_dir(b.folder())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sync-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let kept = [fs::read(b.path("big.bin")).unwrap(), fs::read(b.path(&copies[0])).unwrap()];
    assert!(kept.contains(&on_a) && kept.contains(&on_b), "a version was lost");
}

#[test]
fn a_one_shot_sync_sends_its_last_index_updates_before_it_exits() {
    let (a, b) = pair();
    a.write("f.bin", &random_bytes(31, 100_000));
    let serve = a.serve();
    // b's updates after a change wait 30 s (a busy sender): only the goodbye flushes them
    let out = b
        .command()
        .args(["sync", "--timeout", "60", "--log-level", "info"])
        .env("TANDEM_TEST_UPDATE_DELAY_MS", "30000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sync failed:\n{stderr}");
    assert!(b.path("f.bin").exists());
    // the moment b is gone, a already holds b's record of f.bin: it sees b complete
    let status: serde_json::Value = serde_json::from_str(&a.ok(&["status", "--json"])).unwrap();
    let b_on_a = &status["folders"][0]["peers"][0];
    assert_eq!(b_on_a["completion"], 100.0, "{status}\n{stderr}\n{}", serve.log_text());
}

//! `tandem status`: totals, need, completion and `--check`, with and without a daemon.

use serde_json::Value;

use crate::support::{Device, wait_until};

fn status(d: &Device) -> Value {
    serde_json::from_str(&d.ok(&["status", "--json"])).unwrap()
}

#[test]
fn after_a_sync_both_sides_need_nothing_and_peers_are_complete() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("one.txt", b"1");
    a.write("dir/two.bin", &vec![2u8; 5000]);
    let serve = a.serve();
    b.sync_ok();
    let on_b = status(&b);
    assert_eq!(on_b["daemon"], false);
    let folder = &on_b["folders"][0];
    assert_eq!(folder["id"], "docs");
    assert_eq!(folder["need"]["files"], 0, "{folder:#}");
    assert_eq!(folder["local"]["files"], 2);
    assert_eq!(folder["local"]["dirs"], 1);
    assert_eq!(folder["local"]["bytes"], 5001);
    assert_eq!(folder["global"], folder["local"]);
    assert_eq!(folder["peers"][0]["completion"], 100.0);
    assert_eq!(folder["peers"][0]["device_id"], a.id().as_str());
    assert!(b.ok(&["status", "--check"]).contains("in sync"));
    // a, with its daemon running, sees b connected at first, then complete
    assert!(wait_until(10, || status(&a)["daemon"] == true));
    assert!(wait_until(20, || status(&a)["folders"][0]["peers"][0]["completion"] == 100.0));
    drop(serve);
}

#[test]
fn check_fails_with_one_line_per_problem_when_a_peer_lags() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("one.txt", b"1");
    {
        let _serve = a.serve();
        b.sync_ok();
    }
    a.write("new.txt", b"b has not seen this");
    a.ok(&["scan", "docs"]);
    let out = a.run(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("peer {} is at", b.id())), "{stdout}");
    let folder = &status(&a)["folders"][0];
    assert!(folder["peers"][0]["completion"].as_f64().unwrap() < 100.0);
    assert_eq!(folder["need"]["files"], 0, "a itself needs nothing");
}

#[test]
fn read_commands_work_next_to_a_running_daemon() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    a.write("x.txt", b"x");
    let _serve = a.serve();
    let out = a.ok(&["scan", "docs"]);
    assert!(
        out.starts_with("docs: ") && out.contains("(idle)"),
        "a scan through the daemon: {out}"
    );
    assert!(a.live_paths().contains(&"x.txt".to_string()), "ls reads the index while serve runs");
    assert!(wait_until(10, || status(&a)["daemon"] == true));
    a.ok(&["log", "--json"]);
    a.ok(&["explain", "docs", "x.txt"]);
    a.ok(&["conflicts"]);
}

#[test]
fn read_commands_say_when_no_daemon_runs_and_not_when_one_does() {
    let a = Device::with_folder();
    a.write("x.txt", b"x");
    a.ok(&["scan", "docs"]);
    for args in [&["ls", "docs"][..], &["log"][..], &["explain", "docs", "x.txt"][..]] {
        let out = a.run(args);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon running"), "{args:?}");
    }
    let _serve = a.serve();
    let out = a.run(&["ls", "docs"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("no daemon running"));
}

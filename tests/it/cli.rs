//! Identity and configuration commands, as a user runs them: init, id, peer, folder.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::support::Device;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

#[test]
fn init_prints_the_device_id_that_id_repeats() {
    let device = Device::bare();
    let printed = device.ok(&["init", "--name", "laptop"]);
    let id = device.ok(&["id"]);
    assert_eq!(printed, id);
    let groups: Vec<&str> = id.trim().split('-').collect();
    assert_eq!(groups.len(), 8, "{id}");
    let key_mode = std::fs::metadata(device.home().join("key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600, "private key must be private");
}

#[test]
fn init_refuses_to_overwrite_an_identity() {
    let device = Device::new();
    let id = device.ok(&["id"]);
    let err = device.fails(&["init"], 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(device.ok(&["id"]), id);
}

#[test]
fn commands_before_init_say_what_to_do() {
    let device = Device::bare();
    let err = device.fails(&["id"], 1);
    assert!(err.contains("tandem init"), "{err}");
    let err = device.fails(&["folder", "list"], 1);
    assert!(err.contains("tandem init"), "{err}");
}

#[test]
fn peers_are_added_listed_and_removed() {
    let (me, other) = (Device::new(), Device::new());
    let other_id = other.ok(&["id"]).trim().to_string();
    // ids are accepted in lower case and without dashes
    let sloppy = other_id.to_lowercase().replace('-', "");
    me.ok(&["peer", "add", &sloppy, "--addr", "127.0.0.1:22001", "--name", "desk"]);
    let peers = json(&me.ok(&["peer", "list", "--json"]));
    assert_eq!(peers[0]["device_id"], other_id.as_str());
    assert_eq!(peers[0]["addr"], "127.0.0.1:22001");
    assert_eq!(peers[0]["name"], "desk");
    me.ok(&["peer", "remove", &other_id]);
    assert_eq!(json(&me.ok(&["peer", "list", "--json"])), Value::Array(vec![]));
}

#[test]
fn a_mistyped_device_id_is_a_clear_error() {
    let (me, other) = (Device::new(), Device::new());
    let mut id: Vec<char> = other.ok(&["id"]).trim().chars().collect();
    id[3] = if id[3] == 'A' { 'B' } else { 'A' };
    let typo: String = id.into_iter().collect();
    let err = me.fails(&["peer", "add", &typo, "--addr", "127.0.0.1:1"], 1);
    assert!(err.contains("checksum"), "{err}");
    let err = me.fails(&["peer", "add", "ABC-DEF", "--addr", "127.0.0.1:1"], 1);
    assert!(err.contains("expected 56"), "{err}");
    let err = me.fails(&["peer", "add", other.ok(&["id"]).trim(), "--addr", "nowhere"], 1);
    assert!(err.contains("HOST:PORT"), "{err}");
    assert_eq!(json(&me.ok(&["peer", "list", "--json"])), Value::Array(vec![]));
}

#[test]
fn folders_are_added_shared_moded_listed_and_removed() {
    let (me, other) = (Device::new(), Device::new());
    let other_id = other.ok(&["id"]).trim().to_string();
    me.ok(&["peer", "add", &other_id, "--addr", "127.0.0.1:22001"]);
    let path = me.dir.path().join("photos");
    std::fs::create_dir(&path).unwrap();
    me.ok(&[
        "folder",
        "add",
        "photos",
        path.to_str().unwrap(),
        "--mode",
        "send-only",
        "--share",
        &other_id,
    ]);
    let folders = json(&me.ok(&["folder", "list", "--json"]));
    assert_eq!(folders[0]["id"], "photos");
    assert_eq!(folders[0]["mode"], "send-only");
    assert_eq!(folders[0]["path"], path.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(folders[0]["share"][0], other_id.as_str());
    me.ok(&["folder", "set-mode", "photos", "receive-only"]);
    assert_eq!(json(&me.ok(&["folder", "list", "--json"]))[0]["mode"], "receive-only");
    me.ok(&["folder", "remove", "photos"]);
    assert_eq!(json(&me.ok(&["folder", "list", "--json"])), Value::Array(vec![]));
    assert!(path.is_dir(), "removing a folder leaves its files alone");
}

#[test]
fn bad_folders_are_refused_with_exit_code_1() {
    let me = Device::new();
    let root = me.dir.path().join("root");
    std::fs::create_dir_all(root.join("inner")).unwrap();
    std::fs::write(me.dir.path().join("file"), b"x").unwrap();
    let root_s = root.to_str().unwrap();
    me.ok(&["folder", "add", "root", root_s]);
    let cases = [
        (vec!["folder", "add", "other", "/definitely/not/here"], "does not exist"),
        (
            vec![
                "folder",
                "add",
                "file",
                me.dir.path().join("file").to_str().unwrap().to_owned().leak(),
            ],
            "not a directory",
        ),
        (vec!["folder", "add", "root", me.dir.path().to_str().unwrap()], "already exists"),
        (
            vec!["folder", "add", "inner", root.join("inner").to_str().unwrap().to_owned().leak()],
            "nest",
        ),
        (vec!["folder", "add", "outer", me.dir.path().to_str().unwrap()], "nest"),
        (vec!["folder", "add", "bad/id", root_s], "invalid folder id"),
        (vec!["folder", "share", "root", "ABC"], "bad device id"),
        (vec!["folder", "set-mode", "nope", "send-only"], "no folder"),
    ];
    for (args, expected) in cases {
        let err = me.fails(&args, 1);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    assert_eq!(json(&me.ok(&["folder", "list", "--json"])).as_array().unwrap().len(), 1);
}

#[test]
fn usage_errors_exit_with_2() {
    let me = Device::new();
    me.fails(&["frobnicate"], 2);
    me.fails(&["folder", "add", "x", "/tmp", "--mode", "sideways"], 2);
}

#[test]
fn a_folder_that_is_the_home_or_inside_it_is_refused() {
    let d = Device::new();
    let home = d.home();
    let err = d.fails(&["folder", "add", "h", home.to_str().unwrap()], 1);
    assert!(err.contains("private key"), "{err}");
    std::fs::create_dir(home.join("inner")).unwrap();
    let err = d.fails(&["folder", "add", "i", home.join("inner").to_str().unwrap()], 1);
    assert!(err.contains("inside"), "{err}");
    assert!(!d.ok(&["folder", "list"]).contains(" h "), "the refused folder was saved");
}

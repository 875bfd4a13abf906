//! Tidy checks, run by plain `cargo test`: conventions enforced by a test instead of memory.
//! Every Rust file says why it exists, every module is on the ARCHITECTURE.md codemap, and
//! no shell module imports a layer above it.

use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files_under(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    rust_files(&repo().join(rel), &mut out);
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for dir in ["src", "proto/src", "tests", "benches", "fuzz/fuzz_targets"] {
        for path in files_under(dir) {
            if !fs::read_to_string(&path).unwrap().starts_with("//!") {
                missing.push(rel(&path));
            }
        }
    }
    assert!(missing.is_empty(), "files without a leading //! doc: {missing:?}");
}

#[test]
fn every_module_is_on_the_codemap() {
    let codemap = fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for dir in ["src", "proto/src"] {
        for path in files_under(dir) {
            let name = rel(&path);
            let in_tests_dir =
                name.starts_with("proto/src/tests/") && codemap.contains("proto/src/tests/");
            if !in_tests_dir && !codemap.contains(&format!("`{name}`")) {
                missing.push(name);
            }
        }
    }
    assert!(missing.is_empty(), "modules missing from ARCHITECTURE.md: {missing:?}");
}

/// Which top-level shell modules each module may import (`crate::<name>`).
const LAYERS: &[(&str, &[&str])] = &[
    ("home", &[]),
    ("config", &["home"]),
    ("identity", &["home"]),
    ("store", &[]),
    ("scan", &["store"]),
    ("net", &[]),
    ("sync", &["home", "config", "store", "scan", "net"]),
    ("daemon", &["home", "config", "identity", "store", "net", "sync"]),
    ("cli", &["home", "config", "identity", "store", "scan", "sync", "daemon"]),
];

#[test]
fn no_shell_module_imports_a_layer_above_it() {
    let mut violations = Vec::new();
    for (module, allowed) in LAYERS {
        let mut files = Vec::new();
        let dir = repo().join("src").join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(repo().join("src").join(format!("{module}.rs")));
        }
        for path in files {
            let text = fs::read_to_string(&path).unwrap();
            for (other, _) in LAYERS {
                let uses = text.contains(&format!("crate::{other}::"))
                    || text.contains(&format!("crate::{other};"));
                if other != module && uses && !allowed.contains(other) {
                    violations.push(format!("{} uses crate::{other}", rel(&path)));
                }
            }
        }
    }
    assert!(violations.is_empty(), "layering violations: {violations:?}");
}

#[test]
fn only_the_store_imports_redb_and_proto_stays_pure() {
    for path in files_under("src") {
        let name = rel(&path);
        if !name.starts_with("src/store/") {
            assert!(!fs::read_to_string(&path).unwrap().contains("redb::"), "{name} imports redb");
        }
    }
    let manifest = fs::read_to_string(repo().join("proto/Cargo.toml")).unwrap();
    for banned in ["tokio", "quinn", "redb", "walkdir", "notify", "rand"] {
        assert!(!manifest.contains(&format!("\n{banned} ")), "proto depends on {banned}");
    }
}

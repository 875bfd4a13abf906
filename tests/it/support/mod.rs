//! Test support: a device with its own home, running the real `tandem` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

/// One device: a temp dir holding its home and (usually) a folder.
pub(crate) struct Device {
    pub(crate) dir: TempDir,
}

impl Device {
    /// A device with no identity yet.
    pub(crate) fn bare() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// A device after `tandem init`.
    pub(crate) fn new() -> Self {
        let device = Self::bare();
        device.ok(&["init", "--name", "test"]);
        device
    }

    /// A device with a folder `docs` at `<dir>/docs`, already added.
    pub(crate) fn with_folder() -> Self {
        let device = Self::new();
        std::fs::create_dir(device.folder()).expect("mkdir docs");
        device.ok(&["folder", "add", "docs", device.folder().to_str().expect("utf-8")]);
        device
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub(crate) fn folder(&self) -> PathBuf {
        self.dir.path().join("docs")
    }

    /// A path inside the folder.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.folder().join(rel)
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.env("TANDEM_HOME", self.home()).env_remove("RUST_LOG");
        cmd
    }

    /// Runs tandem with `args`.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run tandem")
    }

    /// Runs tandem, asserts success, returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs tandem, asserts it failed with `code`, returns stderr.
    pub(crate) fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tandem {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// `tandem scan docs`: returns (stdout, stderr).
    pub(crate) fn scan(&self) -> (String, String) {
        let out = self.run(&["scan", "docs"]);
        assert!(out.status.success(), "scan failed: {}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `tandem ls docs --json`, as a list of entries.
    pub(crate) fn ls(&self) -> Vec<Value> {
        let text = self.ok(&["ls", "docs", "--json"]);
        match serde_json::from_str(&text).expect("ls --json is JSON") {
            Value::Array(entries) => entries,
            other => panic!("ls --json is not an array: {other}"),
        }
    }

    /// The `ls` entry for `path`, if any.
    pub(crate) fn entry(&self, path: &str) -> Option<Value> {
        self.ls().into_iter().find(|e| e["path"] == path)
    }

    /// The live (not deleted) paths in the index, sorted.
    pub(crate) fn live_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .ls()
            .iter()
            .filter(|e| e["deleted"] == false)
            .map(|e| e["path"].as_str().expect("path").to_string())
            .collect();
        paths.sort();
        paths
    }

    /// Writes a file, creating parent directories.
    pub(crate) fn write(&self, rel: &str, data: &[u8]) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir -p");
        }
        std::fs::write(path, data).expect("write");
    }
}

/// BLAKE3 of a file as hex, as `b3sum` prints it.
pub(crate) fn b3sum(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path).expect("open")).expect("read");
    hasher.finalize().to_hex().to_string()
}

/// The counter sum of an entry's version vector, to see that it moved.
pub(crate) fn version_of(entry: &Value) -> Vec<(String, u64)> {
    entry["version"]
        .as_array()
        .expect("version array")
        .iter()
        .map(|c| {
            (
                c["device"].as_str().expect("device").to_string(),
                c["counter"].as_u64().expect("counter"),
            )
        })
        .collect()
}

/// True when running as root (permission tests then drop privileges with setpriv).
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

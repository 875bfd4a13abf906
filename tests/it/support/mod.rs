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

/// A free UDP port on 127.0.0.1 (bound and released; good enough for tests).
pub(crate) fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// A running `tandem serve`, killed when dropped.
pub(crate) struct Daemon {
    child: std::process::Child,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Kills the daemon at once (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait().expect("wait")
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True once the daemon has scanned and accepts connections: it logs "listening on" at
    /// the end of its start-up (its control socket answers earlier, saying it is starting).
    pub(crate) fn is_listening(&self) -> bool {
        self.log_text().contains("listening on")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Device {
    /// A device listening on a free loopback port, rescanning every second, with a folder
    /// `docs` (not yet shared).
    pub(crate) fn peer() -> Self {
        let device = Self::bare();
        let listen = format!("127.0.0.1:{}", free_port());
        device.ok(&["init", "--name", "test", "--listen", &listen]);
        let config = device.home().join("config.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        std::fs::write(&config, text.replace("rescan_secs = 3600", "rescan_secs = 1"))
            .expect("config");
        std::fs::create_dir(device.folder()).expect("mkdir docs");
        device.ok(&["folder", "add", "docs", device.folder().to_str().expect("utf-8")]);
        device
    }

    /// Sets the periodic rescan interval of `serve`.
    pub(crate) fn set_rescan_secs(&self, secs: u64) {
        let config = self.home().join("config.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        let line =
            text.lines().find(|l| l.starts_with("rescan_secs")).expect("rescan line").to_string();
        std::fs::write(&config, text.replace(&line, &format!("rescan_secs = {secs}")))
            .expect("config");
    }

    pub(crate) fn id(&self) -> String {
        self.ok(&["id"]).trim().to_string()
    }

    pub(crate) fn listen(&self) -> String {
        let text = std::fs::read_to_string(self.home().join("config.toml")).expect("config");
        let line = text.lines().find(|l| l.starts_with("listen")).expect("listen line");
        line.split('"').nth(1).expect("quoted").to_string()
    }

    /// Trusts `other` and shares `docs` with it.
    pub(crate) fn trust(&self, other: &Self) {
        let id = other.id();
        self.ok(&["peer", "add", &id, "--addr", &other.listen()]);
        self.ok(&["folder", "share", "docs", &id]);
    }

    /// Starts `tandem serve` with extra environment variables, without waiting for it.
    pub(crate) fn spawn_serve(&self, env: &[(&str, &str)]) -> Daemon {
        self.spawn_serve_as(&[], env)
    }

    /// Starts `tandem serve` through `wrapper`, a command prefix such as
    /// `setpriv --reuid=65534 …` (empty: run it directly), without waiting for it.
    pub(crate) fn spawn_serve_as(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = self.dir.path().join(format!("serve-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper {
            [] => self.command(),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(env!("CARGO_BIN_EXE_tandem"));
                cmd.env("TANDEM_HOME", self.home()).env_remove("RUST_LOG");
                cmd
            }
        };
        cmd.args(["serve", "--log-level", "info"]).stdout(std::process::Stdio::null()).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon { child: cmd.spawn().expect("spawn serve"), log }
    }

    /// Starts `tandem serve` with extra environment variables; returns once it listens.
    pub(crate) fn serve_with(&self, env: &[(&str, &str)]) -> Daemon {
        self.serve_as(&[], env)
    }

    /// Starts `tandem serve` through `wrapper` (see [`Self::spawn_serve_as`]); returns once
    /// it listens.
    pub(crate) fn serve_as(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn_serve_as(wrapper, env);
        // ready once it has scanned and accepts connections
        let ready = wait_until(60, || daemon.is_listening());
        assert!(ready, "serve did not start: {}", daemon.log_text());
        daemon
    }

    pub(crate) fn serve(&self) -> Daemon {
        self.serve_with(&[])
    }

    /// `tandem sync`: (success, stderr).
    pub(crate) fn sync(&self, timeout_secs: u64) -> (bool, String) {
        let out =
            self.run(&["sync", "--timeout", &timeout_secs.to_string(), "--log-level", "info"]);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `tandem sync`, asserting success; returns the numbers of its summary line.
    pub(crate) fn sync_ok(&self) -> SyncSummary {
        let (ok, stderr) = self.sync(60);
        assert!(ok, "sync failed:\n{stderr}");
        SyncSummary::parse(&stderr)
    }

    /// The folder's content: path → kind and content (hash, or symlink target).
    pub(crate) fn tree(&self) -> std::collections::BTreeMap<String, String> {
        tree(&self.folder())
    }
}

/// The contents of every file in a device's folder trash (`.tandem/trash/`, recursively).
pub(crate) fn trash_contents(d: &Device) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![d.folder().join(".tandem/trash")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().expect("file type").is_dir() {
                stack.push(entry.path());
            } else {
                out.push(std::fs::read(entry.path()).expect("read trash file"));
            }
        }
    }
    out
}

/// The numbers `tandem sync` prints when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncSummary {
    pub(crate) network: u64,
    pub(crate) reused: u64,
    pub(crate) resumed: u64,
    pub(crate) rejected: u64,
    /// Bytes of the peers' records received (index exchange and updates).
    pub(crate) index: u64,
}

impl SyncSummary {
    pub(crate) fn parse(stderr: &str) -> Self {
        let line = stderr.lines().find(|l| l.starts_with("in sync:")).expect("summary line");
        let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        Self {
            network: nums[0],
            reused: nums[1],
            resumed: nums[2],
            rejected: nums[3],
            index: nums[4],
        }
    }
}

/// What a user would compare between replicas: every entry (tandem's own files aside),
/// with its kind, content hash or link target, and permission bits.
pub(crate) fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    // Daemons may be changing the tree while it is read: whatever vanishes meanwhile is
    // left out (callers poll until two replicas agree).
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if rel.starts_with(".tandem")
                || entry.file_name().to_string_lossy().starts_with(".tandem-tmp-")
            {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let value = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                format!("link {}", target.display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.permissions().mode() & 0o7777)
            } else {
                let Ok(data) = std::fs::read(&path) else { continue };
                format!(
                    "file {:o} {}",
                    meta.permissions().mode() & 0o7777,
                    blake3::hash(&data).to_hex()
                )
            };
            out.insert(rel, value);
        }
    }
    out
}

/// Polls `check` until it is true or `secs` pass; returns whether it became true.
pub(crate) fn wait_until(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check()
}

/// `len` pseudo-random bytes from a seed (BLAKE3 in XOF mode: fast and reproducible).
pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A small seeded PRNG (xorshift64*): reproducible test randomness without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub(crate) fn new(seed: u64) -> Self {
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed from the environment variable `var` if set, else from the clock; printed so
    /// a failing run can be replayed.
    pub(crate) fn seed_from_env(var: &str) -> u64 {
        let seed = std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        eprintln!("{var}={seed} (set it to replay this run)");
        seed
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, …).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).expect("field");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("KiB value")
}

//! Crash loop: two `tandem serve` daemons sync a tree that a writer thread keeps changing,
//! and one of them (alternating sides) is killed with SIGKILL at random moments — during
//! its start-up scan, mid-transfer, mid-commit — and restarted. After every restart the
//! replicas must hold only complete versions, each index must agree with its disk, and the
//! writer's side must hold exactly what the writer wrote (no lost write); once the writer
//! stops, both sides converge.
//!
//! The default run kills 10 times; `TANDEM_CRASH_KILLS=100` runs the long variant, and
//! `TANDEM_CRASH_SEED=<n>` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Daemon, Device, Rng, random_bytes, tree, wait_until};

/// Top-level directories the writer uses (some exist only after a rename or a write).
const DIRS: [&str; 5] = ["d0", "d1", "d2", "d3", "d4"];

/// What the writer has put on side A: path → BLAKE3 hex of its content.
#[derive(Default)]
struct Model {
    files: BTreeMap<String, String>,
    /// Every content the writer ever wrote (a replica may show any of them, none other).
    ever: BTreeSet<String>,
    ops: u64,
    bytes: u64,
}

/// A thread that edits, creates, deletes and renames files under `root`. Every write lands
/// whole (written beside the folder, then renamed in), so any content seen on either side
/// must be one the writer recorded. The disk and the model change under the model's lock,
/// so a checker holding it sees them agree.
struct Writer {
    root: PathBuf,
    staging: PathBuf,
    rng: Rng,
    model: Arc<Mutex<Model>>,
}

impl Writer {
    fn random_path(&mut self) -> String {
        let dir = DIRS[self.rng.below(DIRS.len() as u64) as usize];
        match self.rng.below(4) {
            0 => format!("t{}.txt", self.rng.below(4)),
            _ => format!("{dir}/f{}.bin", self.rng.below(8)),
        }
    }

    fn write(&mut self, model: &mut Model, path: &str, len: usize) {
        let data = random_bytes(self.rng.next_u64(), len);
        let hash = blake3::hash(&data).to_hex().to_string();
        model.ever.insert(hash.clone());
        let target = self.root.join(path);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(&self.staging, &data).unwrap();
        fs::rename(&self.staging, &target).unwrap();
        model.files.insert(path.to_string(), hash);
        model.bytes += len as u64;
    }

    /// One random operation.
    fn step(&mut self) {
        let model = self.model.clone();
        let mut model = model.lock().unwrap();
        model.ops += 1;
        let existing: Vec<String> = model.files.keys().cloned().collect();
        let pick = |rng: &mut Rng| existing[rng.below(existing.len() as u64) as usize].clone();
        match self.rng.below(100) {
            _ if existing.len() < 6 => {
                let path = self.random_path();
                let len = self.rng.below(64 << 10) as usize;
                self.write(&mut model, &path, len);
            }
            0..45 => {
                let path = self.random_path();
                let len = self.rng.below(64 << 10) as usize;
                self.write(&mut model, &path, len);
            }
            45..50 => {
                // large enough that its transfer is in flight for a while
                let path = self.random_path();
                let len = (1 << 20) + self.rng.below(7 << 20) as usize;
                self.write(&mut model, &path, len);
            }
            50..53 => {
                let path = pick(&mut self.rng);
                self.write(&mut model, &path, 0);
            }
            53..70 => {
                let path = pick(&mut self.rng);
                fs::remove_file(self.root.join(&path)).unwrap();
                model.files.remove(&path);
            }
            70..95 => {
                let from = pick(&mut self.rng);
                let to = self.random_path();
                if model.files.contains_key(&to) || self.root.join(&to).is_dir() {
                    return;
                }
                fs::create_dir_all(self.root.join(&to).parent().unwrap()).unwrap();
                fs::rename(self.root.join(&from), self.root.join(&to)).unwrap();
                let hash = model.files.remove(&from).unwrap();
                model.files.insert(to, hash);
            }
            _ => {
                // a whole directory moves
                let from = DIRS[self.rng.below(DIRS.len() as u64) as usize];
                let to = DIRS[self.rng.below(DIRS.len() as u64) as usize];
                if !self.root.join(from).is_dir() || self.root.join(to).exists() {
                    return;
                }
                fs::rename(self.root.join(from), self.root.join(to)).unwrap();
                let moved: Vec<String> = model
                    .files
                    .keys()
                    .filter(|p| p.starts_with(&format!("{from}/")))
                    .cloned()
                    .collect();
                for path in moved {
                    let hash = model.files.remove(&path).unwrap();
                    model.files.insert(format!("{to}{}", &path[from.len()..]), hash);
                }
            }
        }
    }
}

/// The regular files of a folder (tandem's own entries aside): path → content hash.
fn files(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .filter_map(|(path, value)| {
            let hash = value.strip_prefix("file ")?.split(' ').nth(1)?.to_string();
            Some((path, hash))
        })
        .collect()
}

/// Size and mtime (ns) of a regular file, `None` if it is not one.
fn stat(path: &Path) -> Option<(u64, i64)> {
    let meta = fs::symlink_metadata(path).ok().filter(|m| m.is_file())?;
    Some((meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec()))
}

/// Index against disk for one side: every live file record whose (size, mtime) is what
/// the disk shows, before and after reading it, must carry the disk's hash; and no record
/// may name content the writer never wrote. Returns how many records were compared.
fn check_index_against_disk(side: &str, device: &Device, ever: &BTreeSet<String>) -> usize {
    let mut compared = 0;
    for entry in device.ls() {
        if entry["deleted"] == true || entry["type"] != "file" {
            continue;
        }
        let path = entry["path"].as_str().unwrap();
        let hash = entry["hash"].as_str().unwrap();
        assert!(ever.contains(hash), "{side}: the index records {path} with content never written");
        let indexed = (entry["size"].as_u64().unwrap(), entry["mtime_ns"].as_i64().unwrap());
        let abs = device.path(path);
        if stat(&abs) != Some(indexed) {
            continue; // changed since, or not yet applied: the next scan or commit decides
        }
        let Ok(data) = fs::read(&abs) else { continue };
        if stat(&abs) != Some(indexed) {
            continue;
        }
        let on_disk = blake3::hash(&data).to_hex().to_string();
        assert_eq!(on_disk, hash, "{side}: {path} on disk is not what the index says");
        compared += 1;
    }
    compared
}

/// Temp files of interrupted transfers in a folder.
fn temp_files(root: &Path) -> usize {
    walk(root)
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tandem-tmp-"))
        .count()
}

fn walk(root: &Path) -> impl Iterator<Item = PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    let mut out = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == ".tandem" {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.into_iter()
}

/// What each side knows about the paths where `found` and `wanted` differ, and what the
/// daemons logged about them.
fn explain_difference(
    found: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
    devices: &[&Device],
    daemons: &[Daemon],
) -> String {
    let mut out = String::new();
    let paths: BTreeSet<&String> = found.keys().chain(wanted.keys()).collect();
    for path in paths.into_iter().filter(|p| found.get(*p) != wanted.get(*p)) {
        out += &format!("{path}: on disk {:?}, wanted {:?}\n", found.get(path), wanted.get(path));
        for (device, daemon) in devices.iter().zip(daemons) {
            let why = device.run(&["explain", "docs", path, "--json"]);
            out += &format!("  explain: {}\n", String::from_utf8_lossy(&why.stdout));
            for line in daemon.log_text().lines().filter(|l| l.contains(path.as_str())) {
                out += &format!("  log: {line}\n");
            }
        }
    }
    out
}

/// Where a kill landed, judged from outside.
#[derive(Debug, Default)]
struct Landed {
    starting: u32,
    transferring: u32,
    other: u32,
}

#[test]
fn daemons_killed_at_random_moments_recover_and_converge() {
    let kills: u32 =
        std::env::var("TANDEM_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed = Rng::seed_from_env("TANDEM_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    // slow answers keep transfers in flight long enough for kills to land inside them
    let env_a = [("TANDEM_TEST_RESPONSE_DELAY_MS", "20")];
    let model = Arc::new(Mutex::new(Model::default()));
    let mut writer = Writer {
        root: a.folder(),
        staging: a.dir.path().join("staging.tmp"),
        rng: Rng::new(seed ^ 0xA5A5),
        model: model.clone(),
    };
    for _ in 0..20 {
        writer.step();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                writer.step();
                let pause = 20 + writer.rng.below(100);
                std::thread::sleep(Duration::from_millis(pause));
            }
        })
    };
    let mut daemons: [Daemon; 2] = [a.serve_with(&env_a), b.serve()];
    let sides = [("A", &a), ("B", &b)];
    let mut landed = Landed::default();
    let (mut compared, mut killed, mut round) = (0usize, 0u32, 0usize);
    while killed < kills {
        let side = round % 2;
        round += 1;
        let (name, device) = sides[side];
        let env: &[(&str, &str)] = if side == 0 { &env_a } else { &[] };
        let delay = rng.below(1500);
        std::thread::sleep(Duration::from_millis(delay));
        // now and then a second kill right after the restart, during its start-up scan
        let early = rng.chance(0.3);
        let mut restarts = if early { 2 } else { 1 };
        while restarts > 0 {
            if !daemons[side].is_listening() {
                landed.starting += 1;
            } else if temp_files(&device.folder()) > 0 {
                landed.transferring += 1;
            } else {
                landed.other += 1;
            }
            daemons[side].kill();
            killed += 1;
            eprintln!("kill {killed}: {name} after {delay} ms");
            daemons[side] = device.spawn_serve(env);
            restarts -= 1;
            if restarts > 0 {
                std::thread::sleep(Duration::from_millis(rng.below(60)));
            }
        }
        let up = wait_until(60, || daemons[side].is_listening());
        assert!(up, "{name} did not restart: {}", daemons[side].log_text());
        // the writer pauses while both sides are checked
        let model = model.lock().unwrap();
        let on_a = files(&a.folder());
        if on_a != model.files {
            panic!(
                "A's disk is not what the writer wrote (a write was lost, or a path came back)\n{}",
                explain_difference(&on_a, &model.files, &[&a, &b], &daemons)
            );
        }
        for (side_name, device) in sides {
            for (path, hash) in files(&device.folder()) {
                assert!(
                    model.ever.contains(&hash),
                    "{side_name}: {path} holds content that was never written (a partial file?)"
                );
            }
            compared += check_index_against_disk(side_name, device, &model.ever);
        }
        drop(model);
    }
    stop.store(true, Ordering::Relaxed);
    writer_thread.join().unwrap();
    let model = model.lock().unwrap();
    let writer_stopped = Instant::now();
    let converged = wait_until(120, || {
        let on_b = files(&b.folder());
        on_b == model.files && tree(&a.folder()) == tree(&b.folder())
    });
    assert!(
        converged,
        "no convergence after the writer stopped:\nwanted {:#?}\nB has {:#?}\nA log: {}\nB log: {}",
        model.files,
        files(&b.folder()),
        daemons[0].log_text(),
        daemons[1].log_text()
    );
    assert_eq!(files(&a.folder()), model.files, "a write was lost on A");
    let converged_after = writer_stopped.elapsed();
    // every live record matches the disk, and every file on disk is in the index
    for (name, device) in sides {
        let agree = wait_until(60, || {
            let indexed: BTreeMap<String, String> = device
                .ls()
                .into_iter()
                .filter(|e| e["deleted"] == false && e["type"] == "file")
                .map(|e| (e["path"].as_str().unwrap().into(), e["hash"].as_str().unwrap().into()))
                .collect();
            indexed == model.files
        });
        assert!(agree, "{name}: the index does not match the disk after quiescence");
    }
    eprintln!(
        "crash loop: seed {seed}, {killed} kills ({landed:?}), {} writer ops, {} MiB written, \
         {} files at the end, {compared} index records checked against disk, \
         {} abandoned temp files on B, converged {:.1} s after the writer stopped, {:.1} s in all",
        model.ops,
        model.bytes >> 20,
        model.files.len(),
        temp_files(&b.folder()),
        converged_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_peer_killed_and_restarted_is_synced_with_again_without_waiting_for_the_idle_timeout() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("first.txt", b"before any crash");
    let mut daemons = [a.serve(), b.serve()];
    assert!(wait_until(30, || b.path("first.txt").exists()), "no initial sync");
    // After a restart the restarted side has dialed the connection both keep. A duplicate
    // connection is settled for the one the smaller device id dialed, so killing the sides
    // in turn leaves, in round 2 or 3, a survivor whose dead connection (dialed by the
    // smaller id) competes with the restarted peer's new one until QUIC's 60 s idle
    // timeout notices it is dead.
    for (round, (killed, survivor)) in [(1, 0), (0, 1), (1, 0)].into_iter().enumerate() {
        let devices = [&a, &b];
        daemons[killed].kill();
        daemons[killed] = devices[killed].serve();
        let name = format!("after-crash-{round}.txt");
        devices[survivor].write(&name, b"written while the peer restarted");
        let synced = wait_until(30, || devices[killed].path(&name).exists());
        assert!(
            synced,
            "round {round}: the restarted peer was not synced with within 30 s\nsurvivor: {}\nrestarted: {}",
            daemons[survivor].log_text(),
            daemons[killed].log_text()
        );
    }
}

#[test]
fn a_pulled_file_whose_commit_a_crash_lost_is_not_resurrected_after_the_peer_deleted_it() {
    let (a, b) = (Device::peer(), Device::peer());
    a.trust(&b);
    b.trust(&a);
    a.write("small.txt", b"pulled, installed, never committed");
    a.write("big.bin", &random_bytes(21, 32 << 20));
    // slow answers keep the big pull, and with it the plan's commit, in flight for seconds
    let serve_a = a.serve_with(&[("TANDEM_TEST_RESPONSE_DELAY_MS", "200")]);
    let mut serve_b = b.serve();
    let installed = wait_until(60, || b.path("small.txt").exists());
    assert!(installed, "small.txt never arrived: {}", serve_b.log_text());
    // A deletes it; B stores A's tombstone while its plan is still running
    fs::remove_file(a.path("small.txt")).unwrap();
    let tombstone_seen = wait_until(30, || {
        let out = b.run(&["explain", "docs", "small.txt", "--json"]);
        let why: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        why["records"].as_array().is_some_and(|r| {
            r.iter().any(|r| r["replica"] != "this device" && r["deleted"] == true)
        })
    });
    assert!(tombstone_seen, "B never heard of the delete: {}", serve_b.log_text());
    let in_index = b.ls().iter().any(|e| e["path"] == "small.txt");
    assert!(!in_index && !b.path("big.bin").exists(), "the plan finished before the crash");
    serve_b.kill();
    let _serve_b = b.serve();
    // the file B installed is A's deleted version, not a new one of B's: it goes away
    let converged = wait_until(60, || {
        !a.path("small.txt").exists() && !b.path("small.txt").exists() && a.tree() == b.tree()
    });
    assert!(
        converged,
        "small.txt came back or the trees differ\nA: {:?}\nB: {:?}\nA log: {}",
        a.tree(),
        b.tree(),
        serve_a.log_text()
    );
}

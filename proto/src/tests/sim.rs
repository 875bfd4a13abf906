//! Deterministic multi-replica simulation of the rules: the proof that DESIGN.md's
//! invariants 1–3 hold under random edits, partial and reordered index exchanges, mode
//! changes and crashes.
//!
//! Each seed builds a cluster of 2–5 replicas and a random scenario of user operations and
//! network events, then heals the network (every replica back to send-receive, full
//! exchanges until nothing changes) and checks convergence, no lost write and no
//! resurrection. A failing seed is shrunk to a short trace and printed with the seed.
//! `TANDEM_SIM_SEEDS=N` runs N seeds (default 2,000), `TANDEM_SIM_SEED=S` only seed S.
//! Deliberately broken rules ([`Variant`]) prove the checks have teeth.

mod cluster;
mod oracle;

use std::fmt::Write as _;

use crate::model::{FolderMode, RelPath};
use crate::rules::parse_conflict_name;
use cluster::{Cluster, Node, Op, Variant};

/// Seeds run by default; `TANDEM_SIM_SEEDS` overrides.
const DEFAULT_SEEDS: u64 = 2_000;
/// Names the generator builds paths from: few, so paths collide and conflict often.
const NAMES: [&str; 4] = ["a", "b", "c.txt", ".d"];
/// Replays the shrinker may spend.
const SHRINK_BUDGET: usize = 4_000;

/// splitmix64: a tiny seeded generator, so a seed means the same scenario everywhere.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { items.get(self.below(items.len() as u64) as usize) }
    }

    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for idx in (1..items.len()).rev() {
            items.swap(idx, self.below(idx as u64 + 1) as usize);
        }
    }
}

/// A replayable scenario: the cluster size and the operations.
#[derive(Clone, Debug)]
struct Scenario {
    n_replicas: usize,
    ops: Vec<Op>,
}

impl Scenario {
    fn trace(&self) -> String {
        let mut out = format!("{} replicas\n", self.n_replicas);
        for (idx, op) in self.ops.iter().enumerate() {
            let _ = writeln!(out, "{idx:>3}: {op:?}");
        }
        out
    }
}

/// Chooses operations from the cluster's current state.
struct Generator {
    rng: Rng,
    next_content: u64,
    last_write: Option<(String, u64)>,
}

impl Generator {
    fn op(&mut self, cluster: &Cluster) -> Op {
        let n = cluster.replicas.len() as u64;
        let r = self.rng.below(n) as usize;
        match self.rng.below(100) {
            0..=21 => self.write(cluster, r),
            22..=24 => {
                self.next_content += 1;
                Op::Link { r, path: self.path(cluster, r), target: self.next_content }
            }
            25..=31 => Op::Mkdir { r, path: self.path(cluster, r) },
            32..=39 => Op::Remove { r, path: self.existing(cluster, r) },
            40..=47 => Op::Move { r, from: self.existing(cluster, r), to: self.path(cluster, r) },
            48..=51 => Op::Chmod { r, path: self.existing(cluster, r), mode: self.pick_mode() },
            52..=55 => Op::SetMode { r, mode: self.folder_mode() },
            56..=74 => Op::Send {
                from: r,
                to: self.rng.below(n) as usize,
                pick: self.rng.next_u64(),
                delay: self.rng.below(4),
            },
            75..=83 => Op::Deliver { pick: self.rng.next_u64() },
            84..=95 => {
                let crash = self.rng.chance(15).then(|| self.rng.below(4) as usize);
                Op::Sync { r, crash }
            }
            96..=97 => Op::Restart { r },
            _ => Op::Tick { secs: self.rng.below(5) },
        }
    }

    /// A new or modified file; sometimes the same content another replica just wrote.
    fn write(&mut self, cluster: &Cluster, r: usize) -> Op {
        let mtime_ns = (cluster.now as i64) * 1_000_000_000 + self.rng.below(3) as i64;
        if let Some((path, content)) = self.last_write.clone().filter(|_| self.rng.chance(15)) {
            return Op::Write { r, path, content, mtime_ns };
        }
        let files: Vec<&RelPath> = cluster.replicas[r]
            .tree
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(p, _)| p)
            .collect();
        let path = match self.rng.pick(&files).filter(|_| self.rng.chance(50)) {
            Some(path) => path.to_string(),
            None => self.path(cluster, r),
        };
        self.next_content += 1;
        self.last_write = Some((path.clone(), self.next_content));
        Op::Write { r, path, content: self.next_content, mtime_ns }
    }

    /// A path from the small name set, top-level or inside an existing directory.
    fn path(&mut self, cluster: &Cluster, r: usize) -> String {
        let dirs: Vec<&RelPath> = cluster.replicas[r]
            .tree
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { .. }))
            .map(|(p, _)| p)
            .collect();
        let name = NAMES[self.rng.below(NAMES.len() as u64) as usize];
        match self.rng.pick(&dirs).filter(|_| self.rng.chance(60)) {
            Some(dir) => format!("{dir}/{name}"),
            None => name.to_string(),
        }
    }

    fn existing(&mut self, cluster: &Cluster, r: usize) -> String {
        let paths: Vec<&RelPath> = cluster.replicas[r].tree.keys().collect();
        match self.rng.pick(&paths) {
            Some(path) => path.to_string(),
            None => self.path(cluster, r),
        }
    }

    fn pick_mode(&mut self) -> u32 {
        [0o644, 0o600, 0o755][self.rng.below(3) as usize]
    }

    fn folder_mode(&mut self) -> FolderMode {
        let modes = [
            FolderMode::SendReceive,
            FolderMode::SendReceive,
            FolderMode::SendOnly,
            FolderMode::ReceiveOnly,
        ];
        modes[self.rng.below(4) as usize]
    }
}

/// Generates and runs the scenario of one seed.
fn run_seed(seed: u64, variant: Variant) -> Result<(), (Scenario, String)> {
    let mut rng = Rng::new(seed);
    let n_replicas = 2 + rng.below(4) as usize;
    let n_ops = 10 + rng.below(50) as usize;
    let mut cluster = Cluster::new(n_replicas, variant);
    let mut generator = Generator { rng, next_content: 0, last_write: None };
    let mut scenario = Scenario { n_replicas, ops: Vec::with_capacity(n_ops) };
    for _ in 0..n_ops {
        let op = generator.op(&cluster);
        scenario.ops.push(op.clone());
        if let Err(error) = cluster.apply(&op) {
            return Err((scenario, error));
        }
    }
    match cluster.settle().and_then(|()| cluster.check()) {
        Ok(()) => Ok(()),
        Err(error) => Err((scenario, error)),
    }
}

fn replay(scenario: &Scenario, variant: Variant) -> Result<Cluster, String> {
    let mut cluster = Cluster::new(scenario.n_replicas, variant);
    for op in &scenario.ops {
        cluster.apply(op)?;
    }
    cluster.settle()?;
    cluster.check()?;
    Ok(cluster)
}

/// Removes operations (halves, quarters, … single ones) while the scenario still fails.
fn shrink(mut scenario: Scenario, variant: Variant) -> Scenario {
    let mut budget = SHRINK_BUDGET;
    let mut chunk = scenario.ops.len().div_ceil(2);
    while chunk > 0 && budget > 0 {
        let mut start = 0;
        while start < scenario.ops.len() && budget > 0 {
            budget -= 1;
            let mut candidate = scenario.clone();
            candidate.ops.drain(start..(start + chunk).min(scenario.ops.len()));
            if replay(&candidate, variant).is_err() {
                scenario = candidate;
            } else {
                start += chunk;
            }
        }
        chunk /= 2;
    }
    scenario
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// The seeds to run: `TANDEM_SIM_SEED` alone, or `0..TANDEM_SIM_SEEDS` (default 2,000).
fn seeds() -> std::ops::Range<u64> {
    match env_u64("TANDEM_SIM_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..env_u64("TANDEM_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS),
    }
}

/// The first failing seed in `seeds`, with its shrunk scenario and error.
fn first_failure(seeds: std::ops::Range<u64>, variant: Variant) -> Option<(u64, Scenario, String)> {
    let (seed, (scenario, error)) =
        seeds.into_iter().find_map(|s| run_seed(s, variant).err().map(|f| (s, f)))?;
    let small = shrink(scenario, variant);
    let error = replay(&small, variant).err().unwrap_or(error);
    Some((seed, small, error))
}

#[test]
fn replicas_converge_without_losing_or_resurrecting_writes() {
    if let Some((seed, scenario, error)) = first_failure(seeds(), Variant::Correct) {
        panic!(
            "simulation seed {seed} failed (rerun with TANDEM_SIM_SEED={seed}):\n{error}\n\
             shrunk trace:\n{}",
            scenario.trace()
        );
    }
}

#[test]
fn the_checker_catches_last_writer_wins_without_conflict_copies() {
    let found = first_failure(0..500, Variant::NoConflictCopy);
    let (seed, scenario, error) = found.expect("dropping conflict copies must break an invariant");
    eprintln!("caught at seed {seed}: {error}\n{}", scenario.trace());
    assert!(error.contains("lost write"), "unexpected failure: {error}");
}

#[test]
fn the_checker_catches_forgotten_tombstones() {
    let found = first_failure(0..500, Variant::ForgetTombstones);
    let (seed, scenario, error) = found.expect("forgetting tombstones must break an invariant");
    eprintln!("caught at seed {seed}: {error}\n{}", scenario.trace());
    assert!(
        error.contains("resurrection") || error.contains("differ"),
        "unexpected failure: {error}"
    );
}

fn conflict_copies(cluster: &Cluster) -> Vec<RelPath> {
    let tree = &cluster.replicas[0].tree;
    tree.keys().filter(|p| parse_conflict_name(p.file_name()).is_some()).cloned().collect()
}

fn scripted(n_replicas: usize, ops: Vec<Op>) -> Cluster {
    let scenario = Scenario { n_replicas, ops };
    replay(&scenario, Variant::Correct).unwrap_or_else(|e| panic!("{e}\n{}", scenario.trace()))
}

#[test]
fn two_prefilled_replicas_adopt_each_other_without_conflict_copies() {
    let mut ops = Vec::new();
    for r in 0..2 {
        ops.push(Op::Mkdir { r, path: "a".into() });
        for (idx, name) in ["a/x", "a/y.txt", "z"].into_iter().enumerate() {
            let mtime_ns = (r as i64 + 1) * 1_000 + idx as i64;
            ops.push(Op::Write { r, path: name.into(), content: 900 + idx as u64, mtime_ns });
        }
    }
    let cluster = scripted(2, ops);
    assert_eq!(conflict_copies(&cluster), Vec::<RelPath>::new());
    assert_eq!(cluster.replicas[0].tree.len(), 4);
}

#[test]
fn a_one_way_migration_switched_to_two_way_transfers_nothing_again() {
    let mut ops = vec![
        Op::SetMode { r: 0, mode: FolderMode::SendOnly },
        Op::SetMode { r: 1, mode: FolderMode::ReceiveOnly },
        Op::Mkdir { r: 0, path: "d".into() },
        Op::Write { r: 0, path: "d/f".into(), content: 801, mtime_ns: 5 },
        Op::Write { r: 0, path: "g".into(), content: 802, mtime_ns: 6 },
        Op::Send { from: 0, to: 1, pick: 0, delay: 0 },
        Op::Deliver { pick: 0 },
        Op::Sync { r: 1, crash: None },
    ];
    // Everything arrives eventually, whatever the partial sends picked.
    for pick in 1..20 {
        ops.extend([
            Op::Send { from: 0, to: 1, pick, delay: 0 },
            Op::Deliver { pick },
            Op::Sync { r: 1, crash: None },
        ]);
    }
    let cluster = scripted(2, ops);
    assert_eq!(cluster.replicas[1].tree, cluster.replicas[0].tree);
    assert_eq!(conflict_copies(&cluster), Vec::<RelPath>::new());
}

#[test]
fn concurrent_edits_leave_one_conflict_copy_on_every_replica() {
    let ops = vec![
        Op::Write { r: 0, path: "notes.txt".into(), content: 701, mtime_ns: 1 },
        Op::Write { r: 1, path: "notes.txt".into(), content: 702, mtime_ns: 2 },
        Op::Write { r: 2, path: "notes.txt".into(), content: 701, mtime_ns: 3 },
    ];
    let cluster = scripted(3, ops);
    let copies = conflict_copies(&cluster);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(
        copies[0].as_str().starts_with("notes.sync-conflict-")
            && copies[0].as_str().ends_with(".txt")
    );
}

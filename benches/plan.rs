//! Global state + plan over 1,000,000 paths: the target is under 2 s on one core.
//!
//! The folder has 1,000 directories of 1,000 files. The local index and one peer's
//! announcements each hold every path (2,000,000 records in all); the peer has modified 10%
//! of the files, added 1%, deleted 1%, and edited 0.1% concurrently with us, so the plan is a
//! realistic catch-up after a day offline: ~120,000 steps.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_proto::model::{
    ChunkRef, Counter, EntryKind, FileRecord, FolderMode, Hash, RelPath, ShortId, VersionVector,
};
use tandem_proto::rules::{GlobalState, PlanConfig, Records, plan};

const ME: ShortId = ShortId::new(0x1111_2222_3333_4444);
const PEER: ShortId = ShortId::new(0x5555_6666_7777_8888);
const N_DIRS: usize = 1_000;
const FILES_PER_DIR: usize = 1_000;

fn vv(pairs: &[(ShortId, u64)]) -> VersionVector {
    VersionVector::from_counters(pairs.iter().map(|&(id, value)| Counter { id, value }))
}

fn record(
    path: RelPath,
    kind: EntryKind,
    content: u64,
    by: ShortId,
    version: VersionVector,
) -> FileRecord {
    let hash = if kind == EntryKind::File { Hash::of(&content.to_le_bytes()) } else { Hash::ZERO };
    let chunks = if kind == EntryKind::File {
        vec![ChunkRef { offset: 0, len: 4096, hash }]
    } else {
        Vec::new()
    };
    FileRecord {
        path,
        kind,
        size: if kind == EntryKind::File { 4096 } else { 0 },
        mtime_ns: content as i64,
        mode: 0o644,
        symlink_target: None,
        hash,
        chunks,
        version,
        sequence: content,
        deleted: false,
        modified_by: by,
    }
}

/// The local index and the peer's records.
fn folder() -> (Records, Records) {
    let (mut local, mut peer) = (Records::new(), Records::new());
    let base = vv(&[(ME, 10)]);
    for d in 0..N_DIRS {
        let dir = RelPath::new(format!("dir{d:04}")).expect("valid name");
        let rec = record(dir.clone(), EntryKind::Dir, 0, ME, base.clone());
        local.insert(dir.clone(), rec.clone());
        peer.insert(dir.clone(), rec);
        for f in 0..FILES_PER_DIR {
            let n = (d * FILES_PER_DIR + f) as u64;
            let path = dir.join(&format!("file{f:04}.dat")).expect("valid name");
            add_file(&mut local, &mut peer, path, n, &base);
        }
    }
    (local, peer)
}

fn add_file(local: &mut Records, peer: &mut Records, path: RelPath, n: u64, base: &VersionVector) {
    let mine = record(path.clone(), EntryKind::File, n, ME, base.clone());
    let theirs = match n % 1000 {
        0..=99 => record(path.clone(), EntryKind::File, n + 1, PEER, base.bumped(PEER, 20)),
        100..=109 => FileRecord {
            deleted: true,
            chunks: Vec::new(),
            version: base.bumped(PEER, 20),
            ..mine.clone()
        },
        110 => record(path.clone(), EntryKind::File, n + 2, PEER, vv(&[(PEER, 20)])),
        111..=120 => {
            let new = path.with_file_name(&format!("new-{n}.dat")).expect("valid name");
            peer.insert(new.clone(), record(new, EntryKind::File, n + 3, PEER, vv(&[(PEER, 20)])));
            mine.clone()
        }
        _ => mine.clone(),
    };
    local.insert(path.clone(), mine);
    peer.insert(path, theirs);
}

fn global_and_plan(c: &mut Criterion) {
    let (local, peer) = folder();
    let config = PlanConfig {
        mode: FolderMode::SendReceive,
        local_id: ME,
        now_secs: 1_000,
        case_insensitive: false,
    };
    let n_steps = {
        let global = GlobalState::build(config.mode, &local, &[&peer]);
        plan(&local, &global, &config).steps.len()
    };
    eprintln!("{} local + {} peer records, {n_steps} steps", local.len(), peer.len());
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    group.bench_function("global_state_and_plan_1m_paths", |b| {
        b.iter(|| {
            let global = GlobalState::build(config.mode, black_box(&local), &[black_box(&peer)]);
            black_box(plan(&local, &global, &config).steps.len())
        });
    });
    group.finish();
}

criterion_group!(benches, global_and_plan);
criterion_main!(benches);

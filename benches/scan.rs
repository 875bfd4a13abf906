//! Scanner benchmarks on a generated tree: the first scan (walk + hash + index writes) and a
//! no-change rescan (walk + lstat + compare, nothing read). `TANDEM_BENCH_FILES` sets the
//! tree size (default 100,000 files of 1 KiB in 1,000 directories; target: rescan < 1 s).

use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tandem::scan::{ScanTarget, scan_folder};
use tandem::store::Index;
use tandem_proto::model::{FolderMode, ShortId};

fn build_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i % 1000));
        if i < 1000 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let body = format!("file {i} ").repeat(1024 / 8);
        std::fs::write(dir.join(format!("f{i:07}.txt")), body).expect("write");
    }
}

fn scans(c: &mut Criterion) {
    let files: usize =
        std::env::var("TANDEM_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).expect("mkdir");
    build_tree(&root, files);
    let target = ScanTarget {
        folder: "bench",
        root: &root,
        device: ShortId::new(1),
        skip_dir: None,
        mode: FolderMode::SendReceive,
        peers: Vec::new(),
        now_secs: 1_800_000_000,
    };
    let mut group = c.benchmark_group(format!("scan_{files}_files"));
    group.sample_size(10);
    group.bench_function("first_scan", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("first.redb");
                let _ = std::fs::remove_file(&path);
                Index::open(&path).expect("index")
            },
            |index| scan_folder(&index, &target).expect("scan"),
            BatchSize::PerIteration,
        )
    });
    let index = Index::open(&dir.path().join("rescan.redb")).expect("index");
    scan_folder(&index, &target).expect("scan");
    std::thread::sleep(std::time::Duration::from_secs(2)); // leave the racy window
    scan_folder(&index, &target).expect("scan");
    group.bench_function("no_change_rescan", |b| {
        b.iter(|| {
            let summary = scan_folder(&index, &target).expect("scan");
            assert_eq!(summary.hashed_files, 0, "a no-change rescan reads nothing");
        })
    });
    group.finish();
}

criterion_group!(benches, scans);
criterion_main!(benches);

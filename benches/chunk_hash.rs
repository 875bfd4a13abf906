//! Chunk+hash throughput: FastCDC v2020 + BLAKE3 per chunk + whole-file BLAKE3 over 256 MiB
//! of pseudo-random bytes in memory, through the scanner's `FileHasher` (one thread).
//! The ceiling on this machine is ~0.8 GB/s per thread (anchors/limits.md row 7).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem::scan::hasher::FileHasher;

const SIZE: usize = 256 << 20;

fn data() -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out
}

fn chunk_hash(c: &mut Criterion) {
    let data = data();
    let mut hasher = FileHasher::new(0);
    let mut group = c.benchmark_group("chunk_hash");
    group.sample_size(10).throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("256MiB_one_thread", |b| {
        b.iter(|| hasher.hash_reader(&mut data.as_slice(), SIZE as u64).expect("in-memory read"))
    });
    group.finish();
}

criterion_group!(benches, chunk_hash);
criterion_main!(benches);

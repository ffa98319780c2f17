//! DATA end-of-body scan with dot-unstuffing: octets per second over typical content.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringpost::smtp::data::DataScanner;
use std::hint::black_box;

/// A message of `size` octets in 76-column lines (base64-like), some dot-stuffed.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < size {
        if i % 50 == 0 {
            m.extend_from_slice(b"..stuffed line\r\n");
        }
        m.extend_from_slice(
            &b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0"[..],
        );
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_scan");
    for size in [1024usize, 10 * 1024, 100 * 1024, 1024 * 1024] {
        let wire = message(size);
        let mut out = Vec::with_capacity(wire.len());
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("{} KiB", size / 1024), |b| {
            b.iter(|| {
                out.clear();
                let mut s = DataScanner::new(u64::MAX);
                let (used, end) = s.feed(black_box(&wire), &mut out);
                assert!(end.is_some() && used == wire.len());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

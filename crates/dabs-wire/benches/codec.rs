//! Encode/decode micro-benchmarks. Criterion reports time per datagram (Throughput::Elements);
//! a counting allocator reports allocations per operation before the timed runs.
//!
//! Run: `cargo bench -p dabs-wire --bench codec`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dabs_wire::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn header(crc: bool) -> Header {
    Header {
        session: 4,
        transaction: 17,
        sent: SentTime::from_unix_millis(1_767_262_662_123),
        crc,
        dst: 2,
        src: 9,
        ..Header::new(Kind::Request, 300)
    }
}

fn encode_message(msg: &[u8], crc: bool) -> Vec<Vec<u8>> {
    let h = header(crc);
    Splitter::new(msg, crc, 0)
        .unwrap()
        .map(|(b, p)| {
            let mut out = [0u8; MAX_DATAGRAM];
            let n = encode(&h, b, p, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

fn allocations_per_op(iters: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..iters {
        f();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / iters as f64
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single");
    g.throughput(Throughput::Elements(1));
    for (size, crc) in [(64usize, false), (64, true), (499, true)] {
        let payload = vec![0xa5u8; size];
        let h = header(crc);
        let mut out = [0u8; MAX_DATAGRAM];
        let wire = encode_message(&payload, crc).remove(0);
        let label = format!("{size}B{}", if crc { "+crc" } else { "" });
        let enc = allocations_per_op(1000, || {
            black_box(encode(&h, None, black_box(&payload), &mut out).unwrap());
        });
        let dec = allocations_per_op(1000, || {
            black_box(decode(black_box(&wire)).unwrap());
        });
        println!("allocations per op: single/{label}: encode {enc}, decode {dec}");
        g.bench_function(BenchmarkId::new("encode", &label), |b| {
            b.iter(|| encode(&h, None, black_box(&payload), &mut out).unwrap())
        });
        g.bench_function(BenchmarkId::new("decode", &label), |b| {
            b.iter(|| decode(black_box(&wire)).unwrap().payload.len())
        });
    }
    g.finish();
}

fn multi(c: &mut Criterion) {
    let mut g = c.benchmark_group("multi");
    for size in [4096usize, 65536] {
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let h = header(true);
        let wire = encode_message(&msg, true);
        let n = wire.len() as u64;
        g.throughput(Throughput::Elements(n));
        let mut out = [0u8; MAX_DATAGRAM];
        let mut split_encode = || {
            for (b, p) in Splitter::new(&msg, true, 0).unwrap() {
                black_box(encode(&h, b, p, &mut out).unwrap());
            }
        };
        let reassemble = || {
            let first = decode(&wire[0]).unwrap();
            let mut r = Reassembly::new(&first, chunk_size(true, 0), 1 << 20).unwrap();
            for d in wire.iter().rev() {
                r.add(&decode(d).unwrap()).unwrap();
            }
            r.finish().unwrap()
        };
        let enc = allocations_per_op(100, &mut split_encode);
        let dec = allocations_per_op(100, || {
            black_box(reassemble());
        });
        println!(
            "allocations per message: multi/{size}B ({n} datagrams): encode {enc}, decode+reassemble {dec}"
        );
        g.bench_function(BenchmarkId::new("split+encode", size), |b| b.iter(&mut split_encode));
        g.bench_function(BenchmarkId::new("decode+reassemble", size), |b| b.iter(reassemble));
    }
    g.finish();
}

criterion_group!(benches, single, multi);
criterion_main!(benches);

//! Throughput of the ring against `crossbeam_queue::ArrayQueue` and
//! `std::sync::mpsc::sync_channel`, side by side in one run: 1 and 2 producer
//! threads, one consumer taking items one at a time ("pop") or in batches
//! ("batch"; for the other two a batch is a loop of pops). Every queue has 1024
//! slots; a full or empty queue is retried after the same short backoff.

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::{decode_message, FrameDecoder, LogFrame, Message, Tag};
use boundary_log_proxy::intake::QueuedFrame;
use boundary_log_proxy::ring::{ring, PushError};
use boundary_log_proxy::workload;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

/// What the server really pushes: a validated frame (a slice of the reader's
/// receive arena plus ranges and counts) and its connection id.
type BenchItem = QueuedFrame;

const CAPACITY: usize = 1024;
const ITEMS: u64 = 200_000;
const BATCH: usize = 256;

/// Validated 10-log frames cut from one shared buffer, as the intake makes them.
fn frames() -> Vec<LogFrame> {
    let mut wire = Vec::new();
    for i in 0..64 {
        let request = workload::request(
            "7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41",
            "claude-code",
            i * 10,
            10,
        );
        workload::append_frame(Tag::V2, &request, &mut wire).expect("frame fits");
    }
    let mut decoder = FrameDecoder::new();
    let mut input = wire.as_slice();
    let mut out = Vec::new();
    while let Some(raw) = decoder.decode(&mut input).expect("valid frames") {
        match decode_message(raw).expect("valid message") {
            Message::Logs(frame) => out.push(frame),
            Message::Status(_) => unreachable!("workload frames carry logs"),
        }
    }
    out
}

/// Makes producer `id`'s `n`th item: a refcounted clone of a real frame.
fn item(frames: &[LogFrame], id: u32, n: u64) -> BenchItem {
    QueuedFrame {
        frame: frames[(n % frames.len() as u64) as usize].clone(),
        conn: id,
        key_run: 0,
    }
}

/// The same wait for every queue when it is full or empty.
fn backoff(spins: &mut u32) {
    if *spins < 6 {
        for _ in 0..1 << *spins {
            std::hint::spin_loop();
        }
        *spins += 1;
    } else {
        thread::yield_now();
    }
}

/// One queue under test: how producers push and how the consumer takes a batch.
trait Queue: Send + Sync + 'static {
    type Tx: Clone + Send + 'static;
    type Rx: Send;
    fn make() -> (Self::Tx, Self::Rx);
    /// Pushes, retrying while full.
    fn push(tx: &Self::Tx, item: BenchItem);
    /// Appends up to `max` items to `out`; returns how many.
    fn take(rx: &mut Self::Rx, out: &mut Vec<BenchItem>, max: usize) -> usize;
}

struct Ring;
impl Queue for Ring {
    type Tx = boundary_log_proxy::ring::Producer<BenchItem>;
    type Rx = boundary_log_proxy::ring::Consumer<BenchItem>;
    fn make() -> (Self::Tx, Self::Rx) {
        ring(CAPACITY).unwrap()
    }
    fn push(tx: &Self::Tx, mut item: BenchItem) {
        let mut spins = 0;
        while let Err(PushError::Full(back)) = tx.push(item, 4) {
            item = back;
            backoff(&mut spins);
        }
    }
    fn take(rx: &mut Self::Rx, out: &mut Vec<BenchItem>, max: usize) -> usize {
        if max == 1 {
            rx.pop().map(|item| out.push(item)).is_some() as usize
        } else {
            rx.drain_into(out, max)
        }
    }
}

struct CrossbeamArrayQueue;
impl Queue for CrossbeamArrayQueue {
    type Tx = std::sync::Arc<ArrayQueue<BenchItem>>;
    type Rx = std::sync::Arc<ArrayQueue<BenchItem>>;
    fn make() -> (Self::Tx, Self::Rx) {
        let queue = std::sync::Arc::new(ArrayQueue::new(CAPACITY));
        (queue.clone(), queue)
    }
    fn push(tx: &Self::Tx, mut item: BenchItem) {
        let mut spins = 0;
        while let Err(back) = tx.push(item) {
            item = back;
            backoff(&mut spins);
        }
    }
    fn take(rx: &mut Self::Rx, out: &mut Vec<BenchItem>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            match rx.pop() {
                Some(item) => out.push(item),
                None => break,
            }
            taken += 1;
        }
        taken
    }
}

struct StdSyncChannel;
impl Queue for StdSyncChannel {
    type Tx = mpsc::SyncSender<BenchItem>;
    type Rx = mpsc::Receiver<BenchItem>;
    fn make() -> (Self::Tx, Self::Rx) {
        mpsc::sync_channel(CAPACITY)
    }
    fn push(tx: &Self::Tx, mut item: BenchItem) {
        let mut spins = 0;
        while let Err(mpsc::TrySendError::Full(back)) = tx.try_send(item) {
            item = back;
            backoff(&mut spins);
        }
    }
    fn take(rx: &mut Self::Rx, out: &mut Vec<BenchItem>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            match rx.try_recv() {
                Ok(item) => out.push(item),
                Err(_) => break,
            }
            taken += 1;
        }
        taken
    }
}

/// Moves ITEMS items from `producers` threads through a fresh queue; returns the time taken.
fn transfer<Q: Queue>(producers: u32, batch: usize) -> Duration {
    let buffer = frames();
    let (tx, mut rx) = Q::make();
    let per_producer = ITEMS / u64::from(producers);
    let started = Instant::now();
    let pushers: Vec<_> = (0..producers)
        .map(|id| {
            let tx = tx.clone();
            let buffer = buffer.clone();
            thread::spawn(move || {
                for n in 0..per_producer {
                    Q::push(&tx, item(&buffer, id, n));
                }
            })
        })
        .collect();
    let total = per_producer * u64::from(producers);
    let mut out = Vec::with_capacity(batch);
    let mut received = 0;
    let mut spins = 0;
    while received < total {
        let taken = Q::take(&mut rx, &mut out, batch);
        if taken == 0 {
            backoff(&mut spins);
            continue;
        }
        spins = 0;
        received += taken as u64;
        black_box(&out);
        // Dropping the items releases their buffer slices, as the forwarder would.
        out.clear();
    }
    let elapsed = started.elapsed();
    for pusher in pushers {
        pusher.join().unwrap();
    }
    elapsed
}

fn bench_queues(c: &mut Criterion) {
    let mut group = c.benchmark_group("mpsc");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    for producers in [1u32, 2] {
        for (mode, batch) in [("pop", 1usize), ("batch", BATCH)] {
            let case = format!("{producers}p-{mode}");
            group.bench_function(BenchmarkId::new("ring", &case), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| transfer::<Ring>(producers, batch)).sum())
            });
            group.bench_function(BenchmarkId::new("array_queue", &case), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| transfer::<CrossbeamArrayQueue>(producers, batch))
                        .sum()
                })
            });
            group.bench_function(BenchmarkId::new("sync_channel", &case), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| transfer::<StdSyncChannel>(producers, batch))
                        .sum()
                })
            });
        }
    }
    group.finish();
}

/// One thread pushes `BATCH` items then takes them all: the cost of the
/// operations themselves, without thread scheduling (the machine is shared).
fn bench_one_thread(c: &mut Criterion) {
    fn round<Q: Queue>(
        tx: &Q::Tx,
        rx: &mut Q::Rx,
        buffer: &[LogFrame],
        out: &mut Vec<BenchItem>,
        batch: usize,
    ) {
        for n in 0..BATCH as u64 {
            Q::push(tx, item(buffer, 0, n));
        }
        let mut taken = 0;
        while taken < BATCH {
            taken += Q::take(rx, out, batch);
        }
        black_box(&*out);
        out.clear();
    }
    fn bench<Q: Queue>(
        c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        mode: &str,
        batch: usize,
    ) {
        let buffer = frames();
        let (tx, mut rx) = Q::make();
        let mut out = Vec::with_capacity(BATCH);
        c.bench_function(BenchmarkId::new(name, mode), |b| {
            b.iter(|| round::<Q>(&tx, &mut rx, &buffer, &mut out, batch))
        });
    }
    let mut group = c.benchmark_group("one_thread");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (mode, batch) in [("pop", 1usize), ("batch", BATCH)] {
        bench::<Ring>(&mut group, "ring", mode, batch);
        bench::<CrossbeamArrayQueue>(&mut group, "array_queue", mode, batch);
        bench::<StdSyncChannel>(&mut group, "sync_channel", mode, batch);
    }
    group.finish();
}

criterion_group!(benches, bench_queues, bench_one_thread);
criterion_main!(benches);

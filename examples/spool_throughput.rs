//! Disk spool throughput, storage alone: appends records of realistic requests to a
//! spool (with `--fsync always` or `interval`, ticking as the forwarder does), then
//! reopens it (recovery scan) and replays every record (read, check, acknowledge).
//! Prints one CSV line per phase: phase,fsync,records,logs,bytes,seconds,MB_per_s,logs_per_s.
//!
//! `scripts/spool_perf.sh` runs it beside `dd` on the same directory.
//!
//! Usage: spool_throughput DIR [--fsync always|interval] [--records N] [--logs-per-record K]

use std::time::{Duration, Instant};

use boundary_log_proxy::spool::{Fsync, Spool, SpoolConfig};
use boundary_log_proxy::workload;
use prost::Message;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: spool_throughput DIR [...]"));
    let mut fsync = Fsync::Interval;
    let mut records = 2000usize;
    let mut logs_per_record = 1000usize;
    while let Some(flag) = args.next() {
        let value = args.next().expect("flag value");
        match flag.as_str() {
            "--fsync" => {
                fsync = match value.as_str() {
                    "always" => Fsync::Always,
                    "interval" => Fsync::Interval,
                    other => panic!("--fsync {other}"),
                }
            }
            "--records" => records = value.parse().expect("--records N"),
            "--logs-per-record" => logs_per_record = value.parse().expect("--logs-per-record K"),
            other => panic!("unknown flag {other}"),
        }
    }
    let fsync_name = if fsync == Fsync::Always {
        "always"
    } else {
        "interval"
    };
    let _ = std::fs::remove_dir_all(&dir);
    // Requests as the forwarder builds them: one session, consecutive logs.
    let payloads: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            workload::request(
                "perf-session",
                "claude-code",
                (i * logs_per_record) as i32,
                logs_per_record,
            )
            .encode_to_vec()
        })
        .collect();
    let config = SpoolConfig::new(&dir, u64::MAX / 2, fsync);
    let logs = (records * logs_per_record) as u64;
    let line = |phase: &str, bytes: u64, took: Duration| {
        let s = took.as_secs_f64();
        println!(
            "{phase},{fsync_name},{records},{logs},{bytes},{s:.3},{:.1},{:.0}",
            bytes as f64 / s / 1e6,
            logs as f64 / s
        );
    };

    let (mut spool, _) = Spool::open(config.clone()).expect("open");
    let started = Instant::now();
    for i in 0..records {
        spool
            .append(1, logs_per_record as u32, &payloads[i % payloads.len()])
            .expect("append");
        spool.tick(Instant::now()).expect("tick");
    }
    spool.flush().expect("flush");
    let bytes = spool.disk_bytes();
    line("write", bytes, started.elapsed());
    drop(spool);

    // Drop the page cache's copy where allowed, so the replay reads the disk.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let started = Instant::now();
    let (mut spool, recovery) = Spool::open(config).expect("reopen");
    assert_eq!(recovery.intact.logs, logs, "{recovery:?}");
    line("recover", bytes, started.elapsed());
    let started = Instant::now();
    let mut replayed = 0u64;
    while let Some(record) = spool.peek().expect("peek") {
        replayed += u64::from(record.logs);
        spool.ack(record.seq).expect("ack");
    }
    spool.flush().expect("flush");
    assert_eq!(replayed, logs);
    line("replay", bytes, started.elapsed());
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}

//! What one sleep-and-wake costs on this machine: two threads pass one byte back and forth
//! over a Unix socket pair, each blocking in `read` until the other writes. Prints the wall
//! time and the process's CPU time per round trip (two wake-ups, one on each side).
//!
//! Run by hand (PERF.md, section 0, "Results, sixth round"):
//!     rustc -O perf/wakeup_pingpong.rs -o /tmp/wakeup_pingpong
//!     /tmp/wakeup_pingpong                   # the two threads free to use both CPUs
//!     taskset -c 0 /tmp/wakeup_pingpong      # both on one CPU
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

const ROUND_TRIPS: u32 = 100_000;
/// `CLOCK_PROCESS_CPUTIME_ID` on Linux.
const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// The process's CPU time (all threads), in ns.
fn process_cpu_ns() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given, which lives across the call.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.sec as f64 * 1e9 + ts.nsec as f64
}

fn main() {
    let (mut ours, mut theirs) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..ROUND_TRIPS {
            theirs.read_exact(&mut byte).expect("read");
            theirs.write_all(&byte).expect("write");
        }
    });
    let (wall, cpu) = (std::time::Instant::now(), process_cpu_ns());
    let mut byte = [0u8; 1];
    for _ in 0..ROUND_TRIPS {
        ours.write_all(&byte).expect("write");
        ours.read_exact(&mut byte).expect("read");
    }
    echo.join().expect("echo thread");
    let n = f64::from(ROUND_TRIPS);
    println!(
        "per round trip: {:.1} us wall, {:.1} us of the process's CPU",
        wall.elapsed().as_nanos() as f64 / n / 1e3,
        (process_cpu_ns() - cpu) / n / 1e3
    );
}

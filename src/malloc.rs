//! The allocator's tuning for the proxy's buffers (glibc malloc).
//!
//! The forwarder builds each request in a fresh buffer (up to `--batch-max-bytes`,
//! typically 75-150 KB) that the reporter frees on another thread. With glibc's
//! defaults, buffers over the 128 KiB mmap threshold were mapped and unmapped each
//! time, and arenas gave their freed top back to the kernel (128 KiB trim
//! threshold) only to fault it in again for the next request: page faults,
//! zeroing and unmapping at every request. These settings keep request-sized
//! buffers in the arenas and let an arena keep a few requests' worth of free
//! memory at its top.

/// Buffers up to this size come from the arenas rather than their own mapping.
const MMAP_THRESHOLD: i32 = 4 << 20;
/// An arena keeps up to this much free memory at its top before trimming it.
const TRIM_THRESHOLD: i32 = 8 << 20;

/// Applies the settings; call once, early in `main`. No effect on other allocators.
///
/// # Safety
///
/// No other thread may exist yet: glibc's allocation parameters that `mallopt`
/// changes are read by every thread's `malloc` without a lock.
pub unsafe fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters, and the caller
    // promises no other thread exists to read them meanwhile.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

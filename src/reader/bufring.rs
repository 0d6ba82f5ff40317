//! The provided-buffer ring one io_uring shares among all its connections: the
//! kernel picks a free buffer for each receive completion, the reader hands the
//! bytes over and gives the buffer straight back.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// Anonymous private memory from mmap, unmapped on drop. Pages are committed
/// only when first touched.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: anonymous private mapping at a kernel-chosen address; no existing
        // memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let mapping = Mapping { ptr, len };
        // Not inherited by a forked child: the kernel keeps using the parent's pages.
        // SAFETY: advises on exactly the range just mapped.
        if unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `count` buffers of `buf_len` bytes and the ring of entries describing them.
///
/// Every buffer is, at any time, either in the ring (the kernel may fill it) or
/// handed out by one completion and not yet [`recycle`](BufRing::recycle)d (the
/// reader may read it). The local `tail` counts entries ever published.
pub(crate) struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    buf_len: u32,
    tail: u16,
    handed_out: Vec<bool>,
}

// SAFETY: the mappings are plain memory owned by this value; moving it to another
// thread moves that ownership with it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Maps `count` (a power of two, at most 32768) buffers of `buf_len` bytes and
    /// puts them all in the ring.
    pub(crate) fn new(count: u16, buf_len: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let page = page_size();
        let entries_len =
            (usize::from(count) * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let mut ring = BufRing {
            entries: Mapping::new(entries_len)?,
            buffers: Mapping::new(usize::from(count) * buf_len as usize)?,
            count,
            buf_len,
            tail: 0,
            handed_out: vec![false; usize::from(count)],
        };
        for bid in 0..count {
            ring.publish(bid);
        }
        Ok(ring)
    }

    /// Registers the ring as buffer group `bgid` of `submitter`'s io_uring.
    ///
    /// # Safety
    ///
    /// This `BufRing` must outlive the registration: the io_uring must be dropped
    /// (or the group unregistered) before it, and no operation able to select a
    /// buffer from the group may still be in flight when it is dropped.
    pub(crate) unsafe fn register(&self, submitter: &Submitter<'_>, bgid: u16) -> io::Result<()> {
        // SAFETY: the entries mapping is page-aligned and holds `count` entries;
        // the caller keeps it alive for as long as the registration lasts.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.ptr.as_ptr() as u64,
                self.count,
                bgid,
                0,
            )
        }
    }

    /// Takes buffer `bid` out of the ring and returns the `len` bytes the kernel
    /// wrote into it; give it back with [`recycle`](BufRing::recycle).
    ///
    /// # Safety
    ///
    /// `bid` and `len` must come from one completion that selected a buffer of this
    /// ring's group (its buffer id, and its result when positive, else 0): only
    /// then has the kernel finished with the buffer and left the ring without it.
    pub(crate) unsafe fn take(&mut self, bid: u16, len: usize) -> &[u8] {
        let index = usize::from(bid);
        assert!(index < self.handed_out.len() && len <= self.buf_len as usize);
        let was_out = std::mem::replace(&mut self.handed_out[index], true);
        assert!(!was_out, "buffer {bid} handed out twice");
        // SAFETY: in bounds of the buffers mapping (asserted above); the caller
        // guarantees the kernel handed this buffer out and no longer writes it.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers.ptr.as_ptr().add(index * self.buf_len as usize),
                len,
            )
        }
    }

    /// Gives buffer `bid`, taken by [`take`](BufRing::take), back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        let index = usize::from(bid);
        assert!(index < self.handed_out.len(), "buffer id out of range");
        // Publishing a buffer already in the ring would let two receives share it.
        let was_out = std::mem::replace(&mut self.handed_out[index], false);
        assert!(was_out, "buffer {bid} recycled while in the ring");
        self.publish(bid);
    }

    fn publish(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.buffers.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_len);
        let entry = self.entries.ptr.as_ptr().cast::<RawEntry>();
        // SAFETY: `slot < count`, inside the entries mapping, aligned (the mapping is
        // page-aligned, entries are 16 bytes). The kernel reads only entries between
        // its head and the published tail; this slot is past the tail, so the kernel
        // does not read these fields until the store below. Each field is written
        // through a raw pointer, never a reference to the whole entry: the first
        // entry's `resv` is the ring's tail, which the kernel may read at any time.
        unsafe {
            let entry = entry.add(slot);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(self.buf_len);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies inside the first entry of the mapping, which
        // is initialised (zeroed by mmap) and aligned for a u16; only this ring
        // writes it, the kernel only reads it.
        let tail = unsafe {
            AtomicU16::from_ptr(BufRingEntry::tail(self.entries.ptr.as_ptr().cast()).cast_mut())
        };
        // Release: the entry's fields are visible before the kernel sees the tail.
        tail.store(self.tail, Ordering::Release);
    }
}

/// One entry of the provided-buffer ring as the kernel lays it out (`struct
/// io_uring_buf` in `linux/io_uring.h`: addr, len, bid, resv; the first entry's `resv`
/// is the ring's tail). The same layout as `io_uring::types::BufRingEntry`, whose
/// setters take the whole entry by `&mut`.
#[repr(C)]
struct RawEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawEntry>() == std::mem::size_of::<BufRingEntry>());

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ring_publishes_every_buffer_once() {
        let ring = BufRing::new(8, 64).unwrap();
        assert_eq!(ring.tail, 8);
        assert!(ring.handed_out.iter().all(|h| !h));
        let entries = ring.entries.ptr.as_ptr().cast::<BufRingEntry>();
        let mut bids: Vec<u16> = (0..8)
            // SAFETY: 8 entries were written by `new`; nothing else touches them.
            .map(|i| unsafe { (*entries.add(i)).bid() })
            .collect();
        bids.sort();
        assert_eq!(bids, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn recycled_buffer_goes_to_the_next_slot_with_its_address() {
        let mut ring = BufRing::new(4, 128).unwrap();
        // SAFETY: test only: no kernel owns this ring, nothing writes the buffer.
        let bytes = unsafe { ring.take(2, 16) };
        assert_eq!(bytes.len(), 16);
        ring.recycle(2);
        assert_eq!(ring.tail, 5);
        let entries = ring.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: slot 0 (tail 4 & 3) was just written; nothing else touches it.
        let entry = unsafe { &*entries };
        assert_eq!(entry.bid(), 2);
        assert_eq!(entry.len(), 128);
        assert_eq!(entry.addr(), ring.buffers.ptr.as_ptr() as u64 + 2 * 128);
    }

    #[test]
    #[should_panic(expected = "recycled while in the ring")]
    fn recycling_a_buffer_still_in_the_ring_is_refused() {
        let mut ring = BufRing::new(4, 128).unwrap();
        ring.recycle(1);
    }

    #[test]
    fn count_must_be_a_power_of_two() {
        assert!(BufRing::new(3, 64).is_err());
    }
}

//! The provided-buffer ring one io_uring shares among all its connections: the
//! kernel picks a free buffer for each receive completion; the reader either hands
//! the bytes over and gives the buffer straight back, or keeps the whole buffer as
//! the storage of the frames cut from it and puts a fresh one in its place.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
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
/// Every buffer id is, at any time, either in the ring (the kernel may fill its
/// buffer) or handed out by one completion and not yet [`recycle`](BufRing::recycle)d
/// (the reader may read it). [`adopt`](BufRing::adopt) hands a filled buffer's memory
/// over for good and puts the id back in the ring with a new buffer. The local `tail`
/// counts entries ever published.
///
/// The entries live in their own mapping, which the kernel pins when the ring is
/// registered (hence `MADV_DONTFORK` there). The buffers are ordinary heap
/// allocations: the kernel only copies into them at a receive, through the address
/// published, so they need no pinning and can change hands.
pub(crate) struct BufRing {
    entries: Mapping,
    /// The buffer of each id: `buf_len` bytes of capacity, length 0 (the kernel writes
    /// into the spare capacity, through the address published).
    buffers: Vec<Vec<u8>>,
    count: u16,
    buf_len: u32,
    tail: u16,
    handed_out: Vec<bool>,
}

// SAFETY: the mapping and the buffers are plain memory owned by this value; moving
// it to another thread moves that ownership with it.
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
            buffers: (0..count)
                .map(|_| Vec::with_capacity(buf_len as usize))
                .collect(),
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
        // SAFETY: `len` is within the buffer's capacity (asserted above); the caller
        // guarantees the kernel handed this buffer out, wrote its first `len` bytes,
        // and no longer writes it.
        unsafe { std::slice::from_raw_parts(self.buffers[index].as_ptr(), len) }
    }

    /// Takes buffer `bid` out of the ring for good: its `len` bytes the kernel wrote
    /// become the returned `Bytes` (no copy; the allocation is freed when the last
    /// slice of it is dropped), and `bid` goes back into the ring with a fresh buffer.
    ///
    /// # Safety
    ///
    /// As for [`take`](BufRing::take): `bid` and `len` come from one completion that
    /// selected a buffer of this ring's group, and `bid` was not taken since.
    pub(crate) unsafe fn adopt(&mut self, bid: u16, len: usize) -> Bytes {
        let index = usize::from(bid);
        assert!(index < self.handed_out.len() && len <= self.buf_len as usize);
        assert!(
            !self.handed_out[index],
            "buffer {bid} adopted while handed out"
        );
        let fresh = Vec::with_capacity(self.buf_len as usize);
        let mut filled = std::mem::replace(&mut self.buffers[index], fresh);
        // SAFETY: the caller guarantees the kernel wrote the first `len` bytes of this
        // buffer (within its capacity, asserted above) and no longer writes it: the
        // completion took it out of the ring, and its id is published below only with
        // the fresh buffer's address.
        unsafe { filled.set_len(len) };
        self.publish(bid);
        Bytes::from(filled)
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
        let addr = self.buffers[usize::from(bid)].as_ptr() as u64;
        // SAFETY: `slot < count`, inside the entries mapping. The kernel reads only
        // entries between its head and the published tail; this slot is past the
        // tail, so the kernel does not read it until the store below.
        let entry = unsafe { &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buf_len);
        entry.set_bid(bid);
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
        assert_eq!(entry.addr(), ring.buffers[2].as_ptr() as u64);
    }

    #[test]
    fn an_adopted_buffer_leaves_with_its_bytes_and_its_id_returns_with_a_new_buffer() {
        let mut ring = BufRing::new(4, 128).unwrap();
        let old_addr = ring.buffers[1].as_ptr();
        // As the kernel does: write into the published buffer's spare capacity.
        // SAFETY: test only: no kernel owns this ring; 5 bytes fit the 128 of capacity.
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), old_addr.cast_mut(), 5) };
        // SAFETY: test only: the 5 bytes were just written, nothing else writes them.
        let bytes = unsafe { ring.adopt(1, 5) };
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(bytes.as_ptr(), old_addr, "handed over, not copied");
        assert_eq!(ring.tail, 5, "the id went back into the ring");
        assert!(!ring.handed_out[1]);
        let entries = ring.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: slot 0 (tail 4 & 3) was just written; nothing else touches it.
        let entry = unsafe { &*entries };
        assert_eq!(entry.bid(), 1);
        assert_eq!(entry.len(), 128);
        assert_ne!(entry.addr(), old_addr as u64, "with a fresh buffer");
        assert_eq!(entry.addr(), ring.buffers[1].as_ptr() as u64);
        assert_eq!(ring.buffers[1].capacity(), 128);
    }

    #[test]
    #[should_panic(expected = "adopted while handed out")]
    fn adopting_a_buffer_already_taken_is_refused() {
        let mut ring = BufRing::new(4, 128).unwrap();
        // SAFETY: test only: no kernel owns this ring.
        let _ = unsafe { ring.take(3, 0) };
        // SAFETY: as above.
        let _ = unsafe { ring.adopt(3, 0) };
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

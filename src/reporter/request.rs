//! A request's wire bytes as a list of byte pieces: the log records of each received
//! frame, held where the codec left them rather than copied, then the session id and
//! process name fields. Reporters copy them once, into their own wire format.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The encoded bytes of one `ReportBoundaryLogsRequest`: the concatenation of its
/// parts, in order. The forwarder builds it from the received frames' own buffers (see
/// `forwarder::batch`), so turning a drained batch into a request copies nothing; a
/// reporter writes the parts into its message with [`RequestBytes::reader`] or gets one
/// contiguous buffer with [`RequestBytes::to_bytes`].
///
/// Two values are equal when their bytes are, however they are cut into parts.
#[derive(Clone, Default)]
pub struct RequestBytes {
    /// Never holds an empty part.
    parts: Vec<Bytes>,
    len: usize,
}

impl RequestBytes {
    /// No bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `parts` parts without reallocating.
    pub fn with_capacity(parts: usize) -> Self {
        Self {
            parts: Vec::with_capacity(parts),
            len: 0,
        }
    }

    /// Appends `part` (an empty one is skipped).
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    /// Bytes in all parts together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts, in order, none empty.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes in one buffer: the single part itself when there is only one (no
    /// copy), else all parts copied into a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            _ => {
                let mut out = BytesMut::with_capacity(self.len);
                out.put(self.reader());
                out.freeze()
            }
        }
    }

    /// The bytes from offset `at` to the end, uncopied when they lie in the last part
    /// (as the session id and process name fields of a request the forwarder built
    /// do), else copied. Empty when `at` is at or past the end.
    pub fn tail(&self, at: usize) -> Bytes {
        let Some(last) = self.parts.last() else {
            return Bytes::new();
        };
        let last_start = self.len - last.len();
        if at >= last_start {
            return last.slice((at - last_start).min(last.len())..);
        }
        let mut reader = self.reader();
        reader.advance(at);
        reader.copy_to_bytes(reader.remaining())
    }

    /// A cursor over the bytes (`bytes::Buf`, one part a chunk), for copying them into
    /// a buffer with `BufMut::put` or decoding them in place.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            parts: &self.parts,
            offset: 0,
            remaining: self.len,
        }
    }
}

impl From<Bytes> for RequestBytes {
    fn from(bytes: Bytes) -> Self {
        let mut out = Self::with_capacity(1);
        out.push(bytes);
        out
    }
}

impl From<Vec<u8>> for RequestBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<&'static [u8]> for RequestBytes {
    fn from(bytes: &'static [u8]) -> Self {
        Bytes::from_static(bytes).into()
    }
}

impl PartialEq for RequestBytes {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        let (mut a, mut b) = (self.reader(), other.reader());
        while a.has_remaining() {
            let n = a.chunk().len().min(b.chunk().len());
            if a.chunk()[..n] != b.chunk()[..n] {
                return false;
            }
            a.advance(n);
            b.advance(n);
        }
        true
    }
}

impl Eq for RequestBytes {}

impl fmt::Debug for RequestBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBytes")
            .field("len", &self.len)
            .field("parts", &self.parts.len())
            .finish()
    }
}

/// A `bytes::Buf` over a [`RequestBytes`]'s parts.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// The parts not yet read; the first one read from `offset` on.
    parts: &'a [Bytes],
    offset: usize,
    remaining: usize,
}

impl Buf for Reader<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.first().map_or(&[], |part| &part[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of a request");
        self.remaining -= cnt;
        while cnt > 0 {
            let left = self.parts[0].len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                return;
            }
            cnt -= left;
            self.parts = &self.parts[1..];
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(parts: &[&'static [u8]]) -> RequestBytes {
        let mut out = RequestBytes::new();
        for part in parts {
            out.push(Bytes::from_static(part));
        }
        out
    }

    #[test]
    fn parts_read_back_as_their_concatenation_whatever_the_cut() {
        let one = RequestBytes::from(&b"abcdefgh"[..]);
        let three = cut(&[b"abc", b"", b"de", b"fgh"]);
        assert_eq!(three.parts().len(), 3, "the empty part is skipped");
        assert_eq!(three.len(), 8);
        assert_eq!(&three.to_bytes()[..], b"abcdefgh");
        assert_eq!(one, three);
        assert_ne!(one, cut(&[b"abc", b"defgx"]));
        assert_ne!(one, cut(&[b"abc"]));
        let mut copied = Vec::new();
        copied.put(three.reader());
        assert_eq!(copied, b"abcdefgh");
    }

    #[test]
    fn a_single_part_is_handed_out_without_a_copy() {
        let bytes = Bytes::from(vec![7u8; 100]);
        let request = RequestBytes::from(bytes.clone());
        assert_eq!(request.to_bytes().as_ptr(), bytes.as_ptr());
        assert_eq!(request.tail(90).as_ptr(), bytes[90..].as_ptr());
    }

    #[test]
    fn the_tail_is_uncopied_inside_the_last_part_and_copied_across_parts() {
        let request = cut(&[b"abc", b"de", b"fgh"]);
        let last = request.parts()[2].clone();
        assert_eq!(&request.tail(6)[..], b"gh");
        assert_eq!(request.tail(5).as_ptr(), last.as_ptr());
        assert_eq!(&request.tail(2)[..], b"cdefgh");
        assert_eq!(&request.tail(0)[..], b"abcdefgh");
        assert!(request.tail(8).is_empty());
        assert!(request.tail(100).is_empty());
        assert!(RequestBytes::new().tail(0).is_empty());
    }

    #[test]
    fn the_reader_steps_across_parts_and_stops_at_the_end() {
        let request = cut(&[b"abc", b"de", b"fgh"]);
        let mut reader = request.reader();
        reader.advance(2);
        assert_eq!(reader.chunk(), b"c");
        reader.advance(2);
        assert_eq!(reader.chunk(), b"e");
        assert_eq!(reader.remaining(), 4);
        reader.advance(4);
        assert_eq!(reader.remaining(), 0);
        assert_eq!(reader.chunk(), b"");
        let mut reader = request.reader();
        assert_eq!(reader.get_u8(), b'a');
        assert_eq!(&reader.copy_to_bytes(5)[..], b"bcdef");
    }

    #[test]
    #[should_panic(expected = "advanced past the end")]
    fn advancing_past_the_end_is_refused() {
        cut(&[b"ab"]).reader().advance(3);
    }
}

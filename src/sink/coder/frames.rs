//! Yamux frame boundaries in one direction of the session's byte stream, so the sink can
//! put its own keep-alive pings between the yamux crate's frames and take their answers
//! out before the crate sees them (it treats a pong it did not ask for as a protocol
//! error). The header (hashicorp's spec): version, type, flags (u16), stream id (u32),
//! length (u32), big-endian; only Data frames carry `length` bytes of body.

use bytes::BytesMut;

/// Bytes in a frame header.
pub(super) const HEADER_LEN: usize = 12;
/// Type of a Data frame, the only one with a body.
const TYPE_DATA: u8 = 0;
/// Type of a Ping frame.
const TYPE_PING: u8 = 2;
/// Flag of a ping that asks for an answer.
const FLAG_SYN: u16 = 1;
/// Flag of a ping's answer.
const FLAG_ACK: u16 = 2;
/// Set in the sink's ping values, never in the yamux crate's (it counts up from 0), so
/// answers to the sink's pings are told apart.
pub(super) const SINK_PING_BIT: u32 = 1 << 31;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub kind: u8,
    pub flags: u16,
    pub stream: u32,
    pub length: u32,
}

impl Header {
    fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Self {
            kind: bytes[1],
            flags: u16::from_be_bytes([bytes[2], bytes[3]]),
            stream: u32_at(4),
            length: u32_at(8),
        }
    }

    /// The value of the sink's ping this frame answers, if it is such an answer.
    pub(super) fn sink_pong(&self) -> Option<u32> {
        (self.kind == TYPE_PING
            && self.flags & FLAG_ACK != 0
            && self.stream == 0
            && self.length & SINK_PING_BIT != 0)
            .then_some(self.length & !SINK_PING_BIT)
    }
}

/// A session-level ping (stream 0, SYN) carrying `value` with [`SINK_PING_BIT`] set.
pub(super) fn sink_ping(value: u32) -> [u8; HEADER_LEN] {
    let mut frame = [0u8; HEADER_LEN];
    frame[1] = TYPE_PING;
    frame[2..4].copy_from_slice(&FLAG_SYN.to_be_bytes());
    frame[8..12].copy_from_slice(&(value | SINK_PING_BIT).to_be_bytes());
    frame
}

/// Where one direction of the stream is: inside a header, inside a body, or between frames.
/// How [`FrameTracker::pass`] moved a message on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Passed {
    /// The message's bytes go on unchanged.
    AsIs,
    /// The bytes to send are in `out`.
    Filtered,
}

#[derive(Debug, Default, Clone)]
pub(super) struct FrameTracker {
    header: [u8; HEADER_LEN],
    have: usize,
    body_left: u64,
}

impl FrameTracker {
    /// Whether the bytes seen so far end exactly at the end of a frame.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Follows `input` (bytes on their way, not changed).
    pub(super) fn track(&mut self, input: &[u8]) {
        self.walk(input, None, |_| false);
    }

    /// Moves one message on: as it is ([`Passed::AsIs`]) when it holds no frame `taken`
    /// picks and begins and ends between headers (so [`filter`](Self::filter) would write
    /// the same bytes, with nothing held back from before and nothing to hold back);
    /// else filtered into `out` ([`Passed::Filtered`]). `on_taken` sees each taken
    /// header once.
    pub(super) fn pass(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        taken: impl Fn(&Header) -> bool,
        mut on_taken: impl FnMut(&Header),
    ) -> Passed {
        let before = self.clone();
        let mut any = false;
        self.walk(input, None, |header| {
            let take = taken(header);
            if take {
                on_taken(header);
                any = true;
            }
            take
        });
        if !any && before.have == 0 && self.have == 0 {
            return Passed::AsIs;
        }
        *self = before;
        out.clear();
        self.filter(input, out, taken);
        Passed::Filtered
    }

    /// Copies `input` to `out` minus every body-less frame whose header `take` returns true
    /// for. A header is held back until it is complete, so `out` may lag by up to 11 bytes.
    pub(super) fn filter(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        take: impl FnMut(&Header) -> bool,
    ) {
        self.walk(input, Some(out), take);
    }

    fn walk(
        &mut self,
        mut input: &[u8],
        mut out: Option<&mut BytesMut>,
        mut take: impl FnMut(&Header) -> bool,
    ) {
        while !input.is_empty() {
            if self.body_left > 0 {
                let n = input
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&input[..n]);
                }
                self.body_left -= n as u64;
                input = &input[n..];
                continue;
            }
            let n = input.len().min(HEADER_LEN - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&input[..n]);
            self.have += n;
            input = &input[n..];
            if self.have < HEADER_LEN {
                continue;
            }
            self.have = 0;
            let header = Header::parse(&self.header);
            if header.kind == TYPE_DATA {
                self.body_left = u64::from(header.length);
            }
            let taken = header.kind != TYPE_DATA && take(&header);
            if let (false, Some(out)) = (taken, out.as_deref_mut()) {
                out.extend_from_slice(&self.header);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(stream: u32, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![0, TYPE_DATA, 0, 0];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    fn pong(value: u32) -> [u8; HEADER_LEN] {
        let mut frame = sink_ping(0);
        frame[2..4].copy_from_slice(&FLAG_ACK.to_be_bytes());
        frame[8..12].copy_from_slice(&value.to_be_bytes());
        frame
    }

    #[test]
    fn the_sinks_pongs_are_taken_out_and_everything_else_passes_byte_for_byte() {
        let mut stream = data(1, b"hello");
        stream.extend_from_slice(&pong(SINK_PING_BIT | 7));
        // A pong of the yamux crate's own ping (no sink bit) stays.
        stream.extend_from_slice(&pong(3));
        // A data frame whose body happens to look like a sink pong stays whole.
        stream.extend_from_slice(&data(3, &pong(SINK_PING_BIT | 9)));
        let mut want = data(1, b"hello");
        want.extend_from_slice(&pong(3));
        want.extend_from_slice(&data(3, &pong(SINK_PING_BIT | 9)));

        // Fed one byte at a time and all at once alike.
        for chunk in [1, stream.len()] {
            let mut tracker = FrameTracker::default();
            let (mut out, mut seen) = (BytesMut::new(), Vec::new());
            for piece in stream.chunks(chunk) {
                tracker.filter(piece, &mut out, |h| {
                    h.sink_pong().map(|v| seen.push(v)).is_some()
                });
            }
            assert_eq!(&out[..], &want[..], "chunks of {chunk}");
            assert_eq!(seen, [7]);
            assert!(tracker.at_boundary());
        }
    }

    #[test]
    fn passing_messages_on_writes_what_filtering_writes_however_headers_are_cut() {
        // Data, a sink pong, data, another client pong (kept), a pong inside a body.
        let mut stream = data(1, b"hello");
        stream.extend_from_slice(&pong(SINK_PING_BIT | 7));
        stream.extend_from_slice(&data(3, b"world"));
        stream.extend_from_slice(&pong(3));
        stream.extend_from_slice(&data(5, &pong(SINK_PING_BIT | 9)));
        let mut want = BytesMut::new();
        FrameTracker::default().filter(&stream, &mut want, |h| h.sink_pong().is_some());
        // Every cut into two or three messages, headers split included.
        for a in 0..=stream.len() {
            for b in (a..=stream.len()).step_by(3) {
                let mut tracker = FrameTracker::default();
                let (mut written, mut seen) = (Vec::new(), Vec::new());
                for message in [&stream[..a], &stream[a..b], &stream[b..]] {
                    let mut out = BytesMut::new();
                    let passed = tracker.pass(
                        message,
                        &mut out,
                        |h| h.sink_pong().is_some(),
                        |h| seen.extend(h.sink_pong()),
                    );
                    match passed {
                        Passed::AsIs => written.extend_from_slice(message),
                        Passed::Filtered => written.extend_from_slice(&out),
                    }
                }
                assert_eq!(written, &want[..], "cut at {a} and {b}");
                assert_eq!(seen, [7], "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn boundaries_are_known_inside_headers_and_bodies() {
        let frame = data(5, &[1, 2, 3]);
        let mut tracker = FrameTracker::default();
        assert!(tracker.at_boundary());
        tracker.track(&frame[..5]);
        assert!(!tracker.at_boundary());
        tracker.track(&frame[5..13]);
        assert!(!tracker.at_boundary());
        tracker.track(&frame[13..]);
        assert!(tracker.at_boundary());
        tracker.track(&sink_ping(1));
        assert!(tracker.at_boundary());
    }

    #[test]
    fn a_sink_ping_is_a_session_ping_with_syn() {
        let ping = Header::parse(&sink_ping(5));
        assert_eq!(
            ping,
            Header {
                kind: TYPE_PING,
                flags: FLAG_SYN,
                stream: 0,
                length: SINK_PING_BIT | 5
            }
        );
        assert_eq!(ping.sink_pong(), None, "a ping is not an answer");
    }
}

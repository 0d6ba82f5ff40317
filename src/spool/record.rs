//! The spool's record format: one header (magic, two CRC32Cs, the record's place in
//! the spool's numbering, its frame and log counts) and the request bytes it carries.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | magic | `BLPR` |
//! | 4 | 4 | header_crc | CRC32C (Castagnoli) of bytes 8..48 |
//! | 8 | 4 | payload_len | bytes of payload after the header |
//! | 12 | 4 | payload_crc | CRC32C of the payload |
//! | 16 | 8 | seq | record number, counted from the spool's creation |
//! | 24 | 8 | first_frame | frames written before this record, same origin |
//! | 32 | 8 | first_log | logs written before this record, same origin |
//! | 40 | 4 | frames | received frames merged into the payload |
//! | 44 | 4 | logs | logs in the payload |
//! | 48 | payload_len | payload | one encoded `ReportBoundaryLogsRequest` |
//!
//! Integers are little-endian. `first_frame` and `first_log` let recovery count
//! what a damaged stretch held: the next intact record says where numbering resumed.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 48;
/// Every record starts with these bytes.
pub const MAGIC: [u8; 4] = *b"BLPR";
/// Largest payload a header may announce (a request is at most 4 MiB on gRPC).
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;

/// Where a record sits in the spool's numbering: the record number and how many
/// frames and logs all records before it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: u64,
    pub frame: u64,
    pub log: u64,
}

impl Position {
    /// The position right after a record at `self` holding `frames` and `logs`.
    pub fn after(self, frames: u32, logs: u32) -> Position {
        Position {
            seq: self.seq + 1,
            frame: self.frame + u64::from(frames),
            log: self.log + u64::from(logs),
        }
    }
}

/// A decoded, CRC-checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub payload_len: u32,
    pub payload_crc: u32,
    pub at: Position,
    pub frames: u32,
    pub logs: u32,
}

impl Header {
    /// Header plus payload.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// The position of the record after this one.
    pub fn next(&self) -> Position {
        self.at.after(self.frames, self.logs)
    }

    /// True when `payload` is this record's payload, unchanged.
    pub fn payload_matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.payload_len as usize && crc32c::crc32c(payload) == self.payload_crc
    }
}

/// Appends one record (header and payload) to `out`.
pub fn encode(at: Position, frames: u32, logs: u32, payload: &[u8], out: &mut Vec<u8>) {
    let payload_len =
        u32::try_from(payload.len()).expect("payload checked against MAX_PAYLOAD_LEN");
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&at.seq.to_le_bytes());
    out.extend_from_slice(&at.frame.to_le_bytes());
    out.extend_from_slice(&at.log.to_le_bytes());
    out.extend_from_slice(&frames.to_le_bytes());
    out.extend_from_slice(&logs.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..start + HEADER_LEN]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the header at the start of `bytes`: `None` unless the magic and the
/// header CRC match and the announced length is within [`MAX_PAYLOAD_LEN`].
pub fn decode_header(bytes: &[u8]) -> Option<Header> {
    let bytes = bytes.get(..HEADER_LEN)?;
    if bytes[..4] != MAGIC || crc32c::crc32c(&bytes[8..]) != u32_at(bytes, 4) {
        return None;
    }
    let header = Header {
        payload_len: u32_at(bytes, 8),
        payload_crc: u32_at(bytes, 12),
        at: Position {
            seq: u64_at(bytes, 16),
            frame: u64_at(bytes, 24),
            log: u64_at(bytes, 32),
        },
        frames: u32_at(bytes, 40),
        logs: u32_at(bytes, 44),
    };
    (header.payload_len <= MAX_PAYLOAD_LEN).then_some(header)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// What [`scan`] found in one segment's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Intact records: byte offset and header.
    pub records: Vec<(usize, Header)>,
    /// Byte ranges that held no intact record.
    pub damaged: Vec<std::ops::Range<usize>>,
    /// Headers that checked but whose payload did not (or was cut off), in order.
    pub broken: Vec<Header>,
    /// End of the last intact record (where a torn tail starts).
    pub valid_end: usize,
}

/// Walks a segment's bytes record by record. Where a record does not check, it
/// looks for the next offset at which an intact record starts (magic, header CRC
/// and payload CRC all matching) and carries on from there.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0usize;
    let mut damage_from: Option<usize> = None;
    while pos < bytes.len() {
        if let Some(header) = intact_at(bytes, pos) {
            if let Some(from) = damage_from.take() {
                out.damaged.push(from..pos);
            }
            out.records.push((pos, header));
            pos += header.record_len();
            out.valid_end = pos;
            continue;
        }
        if damage_from.is_none() {
            damage_from = Some(pos);
        }
        if let Some(header) = decode_header(&bytes[pos..]) {
            out.broken.push(header);
        }
        pos = next_candidate(bytes, pos + 1);
    }
    if let Some(from) = damage_from {
        out.damaged.push(from..bytes.len());
    }
    out
}

/// The header at `pos` if the whole record there checks.
fn intact_at(bytes: &[u8], pos: usize) -> Option<Header> {
    let header = decode_header(&bytes[pos..])?;
    let payload = bytes.get(pos + HEADER_LEN..pos + header.record_len())?;
    header.payload_matches(payload).then_some(header)
}

/// The next offset at or after `from` where the magic appears (or the end).
fn next_candidate(bytes: &[u8], from: usize) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC))
        .map_or(bytes.len(), |i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = Position {
            seq,
            frame: seq * 2,
            log: seq * 10,
        };
        encode(at, 2, 10, payload, &mut out);
        out
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let bytes = record(7, b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        let header = decode_header(&bytes).unwrap();
        assert_eq!(header.at.seq, 7);
        assert_eq!((header.frames, header.logs, header.payload_len), (2, 10, 5));
        assert!(header.payload_matches(b"hello"));
        assert!(!header.payload_matches(b"hellp"));
        assert_eq!(
            header.next(),
            Position {
                seq: 8,
                frame: 16,
                log: 80
            }
        );
    }

    #[test]
    fn a_flipped_header_byte_fails_the_header_crc() {
        let bytes = record(1, b"x");
        for i in 0..HEADER_LEN {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert_eq!(decode_header(&damaged), None, "byte {i}");
        }
    }

    #[test]
    fn scan_skips_a_damaged_record_and_finds_the_next_intact_one() {
        let mut bytes = record(0, b"first");
        let second = bytes.len();
        bytes.extend(record(1, b"second"));
        let third = bytes.len();
        bytes.extend(record(2, b"third"));
        bytes[second + HEADER_LEN + 1] ^= 1; // payload of record 1
        let scan = scan(&bytes);
        let seqs: Vec<u64> = scan.records.iter().map(|(_, h)| h.at.seq).collect();
        assert_eq!(seqs, [0, 2]);
        assert_eq!(scan.damaged, [second..third]);
        assert_eq!(scan.broken.len(), 1, "its header still checks");
        assert_eq!(scan.valid_end, bytes.len());
    }

    #[test]
    fn scan_reports_a_torn_tail() {
        let mut bytes = record(0, b"first");
        let end = bytes.len();
        bytes.extend(&record(1, b"second")[..HEADER_LEN + 2]);
        let scan = scan(&bytes);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_end, end);
        assert_eq!(scan.damaged, [end..bytes.len()]);
        assert_eq!(scan.broken[0].at.seq, 1);
    }
}

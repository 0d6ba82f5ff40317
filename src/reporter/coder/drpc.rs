//! The DRPC wire codec (storj.io/drpc's `drpcwire`): packets, the frames they travel in, and
//! an incremental reader that reassembles frames into packets. Used by the coder client and
//! by the coder sink alike; the format is described in docs/coder-transport.md.
//!
//! A frame is a control byte (bit 7 control flag, bits 6..1 kind, bit 0 done), then three
//! unsigned LEB128 varints (stream id, message id, data length), then the data. A packet is
//! the data of one or more frames with the same id and kind, the last one carrying done.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Most data one frame carries when a packet is split (drpc's default, 64 KiB).
pub const MAX_FRAME_DATA: usize = 64 * 1024;

/// Largest packet the reader reassembles (drpc's and coderd's default, 4 MiB).
pub const MAX_PACKET_DATA: usize = 4 << 20;

/// Longest varint drpc accepts (ten bytes cover 64 bits).
const MAX_VARINT_LEN: usize = 10;

/// What a packet means. The wire value sits in bits 6..1 of the control byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Starts an rpc; data is the rpc's name, e.g. `/coder.agent.v2.Agent/ReportBoundaryLogs`.
    Invoke,
    /// One protobuf message.
    Message,
    /// The rpc failed; data is an 8-byte big-endian code, then UTF-8 text.
    Error,
    /// The sender soft-cancelled the rpc.
    Cancel,
    /// The rpc is over for the sender; no data.
    Close,
    /// The sender sends no more messages; no data.
    CloseSend,
    /// Metadata for the next Invoke.
    InvokeMetadata,
    /// Any other value (0 or 8..=63): a newer peer's packet.
    Unknown(u8),
}

impl Kind {
    /// The kind a wire value (0..=63) names.
    pub fn from_wire(value: u8) -> Self {
        match value {
            1 => Self::Invoke,
            2 => Self::Message,
            3 => Self::Error,
            4 => Self::Cancel,
            5 => Self::Close,
            6 => Self::CloseSend,
            7 => Self::InvokeMetadata,
            other => Self::Unknown(other),
        }
    }

    /// The wire value (only the low 6 bits are sent).
    pub fn wire(self) -> u8 {
        match self {
            Self::Invoke => 1,
            Self::Message => 2,
            Self::Error => 3,
            Self::Cancel => 4,
            Self::Close => 5,
            Self::CloseSend => 6,
            Self::InvokeMetadata => 7,
            Self::Unknown(other) => other & 0x3f,
        }
    }
}

/// A packet's identity: the DRPC stream and the message within it. Ids only grow on a
/// connection, stream first, then message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id {
    /// DRPC stream id (1 for the first rpc on a connection).
    pub stream: u64,
    /// Message id within the stream, counted from 1 by each sender.
    pub message: u64,
}

impl Id {
    /// Stream `stream`, message `message`.
    pub const fn new(stream: u64, message: u64) -> Self {
        Self { stream, message }
    }
}

/// One frame's header, as parsed off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Stream and message id.
    pub id: Id,
    /// The kind of the packet the frame belongs to.
    pub kind: Kind,
    /// Last frame of its packet.
    pub done: bool,
    /// The control flag (bit 7): a receiver ignores unknown packets that carry it.
    pub control: bool,
    /// Bytes of data following the header.
    pub len: u64,
}

/// A whole packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Stream and message id.
    pub id: Id,
    /// What it means.
    pub kind: Kind,
    /// Set when any of its frames carried the control flag.
    pub control: bool,
    /// Its data, all frames joined.
    pub data: Bytes,
}

/// Malformed DRPC input. Each ends the connection (drpc reports them as protocol errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint ran over ten bytes.
    #[error("drpc: varint too long")]
    VarintTooLong,
    /// A frame or a packet is larger than the reader accepts.
    #[error("drpc: data overflow ({len} bytes, at most {max})")]
    DataOverflow { len: u64, max: usize },
    /// A frame's id is lower than one already seen.
    #[error("drpc: id monotonicity violation (frame {frame:?}, expected at least {current:?})")]
    IdMonotonicity { frame: Id, current: Id },
    /// A frame continued a packet with another kind.
    #[error("drpc: packet kind change (frame {frame:?}, packet {packet:?})")]
    KindChange { frame: Kind, packet: Kind },
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint<B: BufMut>(buf: &mut B, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Reads a varint at the start of `buf`: `Ok(None)` when `buf` ends before it does,
/// otherwise the value and the bytes it took.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i as u32);
        if byte < 0x80 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(WireError::VarintTooLong);
    }
    Ok(None)
}

/// Parses the frame header at the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the header and its length in bytes (the data follows it).
pub fn parse_frame_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, WireError> {
    let Some(&control) = buf.first() else {
        return Ok(None);
    };
    let mut at = 1;
    let mut next = |buf: &[u8]| -> Result<Option<u64>, WireError> {
        Ok(read_varint(&buf[at..])?.map(|(value, used)| {
            at += used;
            value
        }))
    };
    let Some(stream) = next(buf)? else {
        return Ok(None);
    };
    let Some(message) = next(buf)? else {
        return Ok(None);
    };
    let Some(len) = next(buf)? else {
        return Ok(None);
    };
    let header = FrameHeader {
        id: Id::new(stream, message),
        kind: Kind::from_wire((control >> 1) & 0x3f),
        done: control & 0x01 != 0,
        control: control & 0x80 != 0,
        len,
    };
    Ok(Some((header, at)))
}

/// Appends one frame: header, then `data`.
pub fn put_frame<B: BufMut>(
    buf: &mut B,
    id: Id,
    kind: Kind,
    done: bool,
    control: bool,
    data: &[u8],
) {
    put_frame_header(buf, id, kind, done, control, data.len());
    buf.put_slice(data);
}

/// Appends the header of a frame whose `data_len` bytes of data the caller writes next
/// (to send data without copying it behind its header).
pub fn put_frame_header<B: BufMut>(
    buf: &mut B,
    id: Id,
    kind: Kind,
    done: bool,
    control: bool,
    data_len: usize,
) {
    let mut byte = kind.wire() << 1;
    if done {
        byte |= 0x01;
    }
    if control {
        byte |= 0x80;
    }
    buf.put_u8(byte);
    put_varint(buf, id.stream);
    put_varint(buf, id.message);
    put_varint(buf, data_len as u64);
}

/// A packet's data cut into frames as drpc cuts it: at most [`MAX_FRAME_DATA`] bytes each,
/// with whether it is the last (done) one; an empty packet is one empty frame.
pub fn packet_frames(data: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let count = data.len().div_ceil(MAX_FRAME_DATA).max(1);
    (0..count).map(move |i| {
        let start = i * MAX_FRAME_DATA;
        let end = (start + MAX_FRAME_DATA).min(data.len());
        (&data[start..end], i + 1 == count)
    })
}

/// Appends a packet as drpc writes it: its [`packet_frames`], done set on the last only.
pub fn put_packet<B: BufMut>(buf: &mut B, id: Id, kind: Kind, control: bool, data: &[u8]) {
    for (chunk, done) in packet_frames(data) {
        put_frame(buf, id, kind, done, control, chunk);
    }
}

/// Bytes a packet of `data_len` bytes takes on the wire, headers included (for sizing buffers).
pub fn packet_wire_len(id: Id, data_len: usize) -> usize {
    let frames = data_len.div_ceil(MAX_FRAME_DATA).max(1);
    let per_frame = 1 + varint_len(id.stream) + varint_len(id.message);
    let lens: usize = (0..frames)
        .map(|i| {
            varint_len(
                data_len
                    .saturating_sub(i * MAX_FRAME_DATA)
                    .min(MAX_FRAME_DATA) as u64,
            )
        })
        .sum();
    frames * per_frame + lens + data_len
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The data of an Error packet: the 8-byte big-endian code, then the text.
pub fn error_data(code: u64, text: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + text.len());
    data.put_u64(code);
    data.put_slice(text.as_bytes());
    data
}

/// Reads an Error packet's data back into its code and text (invalid UTF-8 replaced). Data
/// shorter than the code reads as code 0 with the bytes as text and a note, as drpc does.
pub fn parse_error(data: &[u8]) -> (u64, String) {
    if data.len() < 8 {
        let text = String::from_utf8_lossy(data);
        return (0, format!("{text} (drpcwire note: invalid error data)"));
    }
    let code = (&data[..8]).get_u64();
    (code, String::from_utf8_lossy(&data[8..]).into_owned())
}

/// Hands out the ids one sender uses on one DRPC stream: message ids count up from 1.
#[derive(Debug, Clone)]
pub struct PacketWriter {
    next: Id,
}

impl PacketWriter {
    /// A writer for DRPC stream `stream` whose first packet gets message id 1.
    pub fn new(stream: u64) -> Self {
        Self {
            next: Id::new(stream, 1),
        }
    }

    /// Takes the next packet's id, for a packet the caller frames itself.
    pub fn next_id(&mut self) -> Id {
        let id = self.next;
        self.next.message += 1;
        id
    }

    /// Appends the next packet (split into frames as needed) and returns its id.
    pub fn put<B: BufMut>(&mut self, buf: &mut B, kind: Kind, data: &[u8]) -> Id {
        let id = self.next_id();
        put_packet(buf, id, kind, false, data);
        id
    }
}

/// The packet being reassembled.
#[derive(Debug)]
struct Partial {
    id: Id,
    kind: Kind,
    control: bool,
    data: BytesMut,
}

/// Reassembles packets from bytes as they arrive, as drpc's `drpcwire.Reader` does: frame ids
/// never go down; a frame with a new id drops an unfinished packet; a packet grows to at most
/// the limit; a finished packet's id cannot be reused. Unknown packets with the control flag
/// are skipped.
#[derive(Debug)]
pub struct PacketReader {
    buf: BytesMut,
    current: Id,
    partial: Option<Partial>,
    max_packet: usize,
}

impl Default for PacketReader {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketReader {
    /// A reader accepting packets up to [`MAX_PACKET_DATA`].
    pub fn new() -> Self {
        Self::with_max_packet(MAX_PACKET_DATA)
    }

    /// A reader accepting packets up to `max_packet` bytes of data.
    pub fn with_max_packet(max_packet: usize) -> Self {
        Self::with(max_packet, 4096)
    }

    /// A reader accepting packets up to [`MAX_PACKET_DATA`] whose buffer starts with room
    /// for `capacity` bytes: a side that receives large messages (the sink) then does not
    /// grow it, copying what it holds, as a frame of up to 64 KiB arrives.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with(MAX_PACKET_DATA, capacity)
    }

    fn with(max_packet: usize, capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
            current: Id::new(1, 1),
            partial: None,
            max_packet,
        }
    }

    /// Adds bytes read off the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The unparsed bytes, for reading straight into (`AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet part of a returned packet (nonzero at the end of a stream
    /// means it ended inside a frame or a packet).
    pub fn pending(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// The next whole packet, `Ok(None)` until enough bytes have been pushed.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, WireError> {
        loop {
            let Some((header, header_len)) = parse_frame_header(&self.buf)? else {
                return Ok(None);
            };
            if header.len > self.max_packet as u64 {
                return Err(WireError::DataOverflow {
                    len: header.len,
                    max: self.max_packet,
                });
            }
            let len = header.len as usize;
            if self.buf.len() < header_len + len {
                self.buf.reserve(header_len + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header_len);
            let data = self.buf.split_to(len);
            if let Some(packet) = self.take_frame(header, data)? {
                return Ok(Some(packet));
            }
        }
    }

    /// Adds one frame's data; returns the packet it finishes, if any.
    fn take_frame(
        &mut self,
        header: FrameHeader,
        data: BytesMut,
    ) -> Result<Option<Packet>, WireError> {
        if header.id < self.current {
            return Err(WireError::IdMonotonicity {
                frame: header.id,
                current: self.current,
            });
        }
        let partial = match self.partial.take() {
            Some(mut p) if p.id == header.id => {
                if p.kind != header.kind {
                    return Err(WireError::KindChange {
                        frame: header.kind,
                        packet: p.kind,
                    });
                }
                p.control |= header.control;
                p.data.extend_from_slice(&data);
                p
            }
            // A first frame, or a newer id dropping what was unfinished.
            _ => Partial {
                id: header.id,
                kind: header.kind,
                control: header.control,
                data,
            },
        };
        self.current = header.id;
        if partial.data.len() > self.max_packet {
            return Err(WireError::DataOverflow {
                len: partial.data.len() as u64,
                max: self.max_packet,
            });
        }
        if !header.done {
            self.partial = Some(partial);
            return Ok(None);
        }
        self.current.message += 1;
        if partial.control && matches!(partial.kind, Kind::Unknown(_)) {
            return Ok(None);
        }
        Ok(Some(Packet {
            id: partial.id,
            kind: partial.kind,
            control: partial.control,
            data: partial.data.freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(id: Id, kind: Kind, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        put_packet(&mut buf, id, kind, false, data);
        buf
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Packet>, WireError> {
        let mut reader = PacketReader::new();
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(p) = reader.next_packet()? {
            out.push(p);
        }
        assert_eq!(reader.pending(), 0, "bytes left over");
        Ok(out)
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&buf).unwrap(), Some((value, buf.len())));
            assert_eq!(read_varint(&buf[..buf.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn a_varint_longer_than_ten_bytes_is_refused() {
        assert_eq!(read_varint(&[0x80u8; 10]), Err(WireError::VarintTooLong));
        assert_eq!(read_varint(&[0x80u8; 9]), Ok(None));
    }

    #[test]
    fn a_close_send_encodes_as_drpc_writes_it() {
        assert_eq!(
            encode(Id::new(1, 3), Kind::CloseSend, b""),
            [0x0d, 0x01, 0x03, 0x00]
        );
        let mut buf = Vec::new();
        put_frame(&mut buf, Id::new(1, 1), Kind::Cancel, true, true, b"");
        assert_eq!(buf, [0x89, 0x01, 0x01, 0x00]);
    }

    #[test]
    fn a_long_packet_is_split_into_64_kib_frames_done_on_the_last() {
        let data: Vec<u8> = (0..(2 * MAX_FRAME_DATA + 5)).map(|i| i as u8).collect();
        let id = Id::new(1, 2);
        let wire = encode(id, Kind::Message, &data);
        assert_eq!(wire.len(), packet_wire_len(id, data.len()));
        let (first, first_len) = parse_frame_header(&wire).unwrap().unwrap();
        assert_eq!(
            (first.len, first.done, first_len),
            (MAX_FRAME_DATA as u64, false, 6)
        );
        let packets = read_all(&wire).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].data, data);
        assert_eq!((packets[0].id, packets[0].kind), (id, Kind::Message));
    }

    #[test]
    fn packets_come_out_whole_however_the_bytes_are_cut() {
        let mut wire = Vec::new();
        let mut w = PacketWriter::new(1);
        w.put(&mut wire, Kind::Invoke, b"/svc/Method");
        w.put(&mut wire, Kind::Message, &vec![7u8; MAX_FRAME_DATA + 10]);
        w.put(&mut wire, Kind::CloseSend, b"");
        let expected = read_all(&wire).unwrap();
        assert_eq!(expected.len(), 3);
        for step in [1, 2, 3, 7, 4096] {
            let mut reader = PacketReader::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                reader.push(chunk);
                while let Some(p) = reader.next_packet().unwrap() {
                    got.push(p);
                }
            }
            assert_eq!(got, expected, "chunks of {step}");
        }
    }

    #[test]
    fn a_packet_over_the_limit_is_an_overflow_error() {
        let mut reader = PacketReader::with_max_packet(100);
        reader.push(&encode(Id::new(1, 1), Kind::Message, &[0; 101]));
        assert!(matches!(
            reader.next_packet(),
            Err(WireError::DataOverflow { .. })
        ));

        // Split into small frames, the sum is what counts.
        let mut wire = Vec::new();
        for i in 0..3 {
            put_frame(
                &mut wire,
                Id::new(1, 1),
                Kind::Message,
                i == 2,
                false,
                &[0; 40],
            );
        }
        let mut reader = PacketReader::with_max_packet(100);
        reader.push(&wire);
        assert!(matches!(
            reader.next_packet(),
            Err(WireError::DataOverflow { len: 120, .. })
        ));
    }

    #[test]
    fn a_frame_announcing_more_than_4_mib_is_refused_before_it_arrives() {
        let mut wire = vec![0x05];
        put_varint(&mut wire, 1);
        put_varint(&mut wire, 1);
        put_varint(&mut wire, MAX_PACKET_DATA as u64 + 1);
        let mut reader = PacketReader::new();
        reader.push(&wire);
        assert!(matches!(
            reader.next_packet(),
            Err(WireError::DataOverflow { .. })
        ));
    }

    #[test]
    fn a_reused_or_lower_id_is_a_monotonicity_error() {
        let mut wire = encode(Id::new(1, 1), Kind::Invoke, b"x");
        wire.extend(encode(Id::new(1, 1), Kind::Message, b"y"));
        let mut reader = PacketReader::new();
        reader.push(&wire);
        assert!(reader.next_packet().unwrap().is_some());
        assert!(matches!(
            reader.next_packet(),
            Err(WireError::IdMonotonicity { .. })
        ));
    }

    #[test]
    fn a_kind_change_inside_a_packet_is_an_error() {
        let mut wire = Vec::new();
        put_frame(&mut wire, Id::new(1, 1), Kind::Message, false, false, b"a");
        put_frame(&mut wire, Id::new(1, 1), Kind::Error, true, false, b"b");
        assert!(matches!(read_all(&wire), Err(WireError::KindChange { .. })));
    }

    #[test]
    fn a_newer_id_drops_an_unfinished_packet() {
        let mut wire = Vec::new();
        put_frame(
            &mut wire,
            Id::new(1, 1),
            Kind::Message,
            false,
            false,
            b"lost",
        );
        put_frame(
            &mut wire,
            Id::new(1, 2),
            Kind::Message,
            true,
            false,
            b"kept",
        );
        let packets = read_all(&wire).unwrap();
        assert_eq!(packets.len(), 1);
        assert_eq!(
            (packets[0].id, &packets[0].data[..]),
            (Id::new(1, 2), &b"kept"[..])
        );
    }

    #[test]
    fn unknown_control_packets_are_skipped_and_unknown_plain_ones_returned() {
        let mut wire = Vec::new();
        put_frame(
            &mut wire,
            Id::new(1, 1),
            Kind::Unknown(9),
            true,
            true,
            b"future",
        );
        put_frame(
            &mut wire,
            Id::new(1, 2),
            Kind::Unknown(9),
            true,
            false,
            b"?",
        );
        put_frame(&mut wire, Id::new(1, 3), Kind::Cancel, true, true, b"");
        let packets = read_all(&wire).unwrap();
        let kinds: Vec<_> = packets.iter().map(|p| (p.kind, p.control)).collect();
        assert_eq!(kinds, [(Kind::Unknown(9), false), (Kind::Cancel, true)]);
    }

    #[test]
    fn error_data_carries_a_big_endian_code_and_text() {
        let data = error_data(0x0102, "injected failure");
        assert_eq!(&data[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(parse_error(&data), (0x0102, "injected failure".to_string()));
        assert_eq!(
            parse_error(b"short"),
            (0, "short (drpcwire note: invalid error data)".to_string())
        );
    }

    #[test]
    fn kinds_round_trip_through_their_wire_values() {
        for value in 0..64u8 {
            assert_eq!(Kind::from_wire(value).wire(), value);
        }
    }
}

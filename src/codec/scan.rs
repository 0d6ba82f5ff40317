//! The validating walk over a `ReportBoundaryLogsRequest` (and the envelope's status):
//! checks every byte as prost would, counts logs, summarises sequence numbers, and
//! notes where the strings lie and whether the bytes are already in canonical layout.

use std::ops::Range;

use prost::encoding::WireType;

use super::wire::{
    is_ascii, is_utf8, read_body, read_key, read_message, read_scalar, read_string, skip_field,
    WireResult,
};
use super::SeqSummary;
use crate::proto::envelope::BoundaryStatus;

/// Key byte of a `logs` record (field 1, length-delimited).
const LOGS_KEY: u8 = 0x0A;

/// How far a request segment is in canonical layout (logs, session id, process name,
/// then nothing known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Only canonical `logs` records so far.
    Logs,
    /// Then one non-empty `session_id`.
    Session,
    /// Then one non-empty `confined_process_name`.
    Process,
    /// Then unknown fields only: the canonical bytes are the prefix before them.
    Trailing,
    /// Not canonical: the bytes must be rebuilt.
    Scattered,
}

/// What the walk learned about one request (one or more merged segments).
#[derive(Debug, Clone)]
pub(crate) struct RequestScan {
    pub log_count: u32,
    pub seq: SeqSummary,
    /// Last `session_id` occurrence, as a range of the payload (empty when absent).
    pub session: Range<usize>,
    /// Last `confined_process_name` occurrence, as a range of the payload.
    pub process: Range<usize>,
    layout: Layout,
    /// End of the `logs` records, relative to the first segment.
    pub logs_end: usize,
    /// End of the canonical prefix, relative to the first segment.
    pub canonical_end: usize,
    segments: u32,
}

impl Default for RequestScan {
    fn default() -> Self {
        Self {
            log_count: 0,
            seq: SeqSummary {
                first: 0,
                last: 0,
                contiguous: true,
            },
            session: 0..0,
            process: 0..0,
            layout: Layout::Logs,
            logs_end: 0,
            canonical_end: 0,
            segments: 0,
        }
    }
}

impl RequestScan {
    /// True when the first (and only) segment's prefix `..canonical_end` is the
    /// canonical request.
    pub fn is_canonical(&self) -> bool {
        self.segments <= 1 && self.layout != Layout::Scattered
    }

    /// Walks one request segment (`seg` starts at `base` in the payload), merging it
    /// into what earlier segments gave. `budget` is the recursion budget of its fields.
    pub fn walk(&mut self, seg: &[u8], base: usize, budget: u32) -> WireResult<()> {
        self.segments += 1;
        let mut buf = seg;
        if self.segments == 1 && self.layout == Layout::Logs && budget >= 1 {
            // The run of canonical `logs` records a request starts with, without
            // the general loop's bookkeeping per field; it stops at the first
            // record it does not take, which the loop below then judges.
            let inner = budget - 1;
            while let [LOGS_KEY, ref rest @ ..] = *buf {
                let mut after = rest;
                let Some(body) = minimal_body(&mut after) else {
                    break;
                };
                let seq = walk_log(body, inner)?;
                self.push_log(seq);
                buf = after;
            }
            let end = seg.len() - buf.len();
            if end > 0 {
                self.canonical_end = end;
                self.logs_end = end;
            }
        }
        while !buf.is_empty() {
            let field_start = seg.len() - buf.len();
            let (tag, wire) = read_key(&mut buf)?;
            let short_key = seg.len() - buf.len() - field_start == 1;
            match tag {
                1 => {
                    let (body, inner, minimal) = read_message(wire, &mut buf, budget)?;
                    let seq = walk_log(body, inner)?;
                    self.push_log(seq);
                    let end = seg.len() - buf.len();
                    self.advance_layout(Layout::Logs, short_key && minimal, end);
                }
                2 | 3 => {
                    let (body, minimal) = read_string(wire, &mut buf)?;
                    let end = seg.len() - buf.len();
                    let range = base + end - body.len()..base + end;
                    let next = if tag == 2 {
                        self.session = range;
                        Layout::Session
                    } else {
                        self.process = range;
                        Layout::Process
                    };
                    self.advance_layout(next, short_key && minimal && !body.is_empty(), end);
                }
                _ => {
                    skip_field(wire, tag, &mut buf, budget)?;
                    if self.layout != Layout::Scattered {
                        self.layout = Layout::Trailing;
                    }
                }
            }
        }
        Ok(())
    }

    fn push_log(&mut self, seq: i32) {
        if self.log_count == 0 {
            self.seq.first = seq;
        } else if self.seq.last.checked_add(1) != Some(seq) {
            self.seq.contiguous = false;
        }
        self.seq.last = seq;
        self.log_count += 1;
    }

    /// A known field in canonical encoding may only move the layout forward.
    fn advance_layout(&mut self, field: Layout, well_formed: bool, end: usize) {
        let in_order = match field {
            Layout::Logs => self.layout == Layout::Logs,
            Layout::Session => self.layout == Layout::Logs,
            Layout::Process => matches!(self.layout, Layout::Logs | Layout::Session),
            Layout::Trailing | Layout::Scattered => false,
        };
        if !(in_order && well_formed && self.segments == 1) {
            self.layout = Layout::Scattered;
            return;
        }
        self.layout = field;
        self.canonical_end = end;
        if field == Layout::Logs {
            self.logs_end = end;
        }
    }
}

/// Validates one `BoundaryLog` body and returns its sequence number.
#[inline(always)]
fn walk_log(buf: &[u8], budget: u32) -> WireResult<i32> {
    // The nested messages' own fields need a budget of at least one.
    if budget >= 1 {
        if let Some(seq) = canonical_log(buf) {
            return Ok(seq);
        }
    }
    walk_log_fields(buf, budget)
}

/// The fast path: a `BoundaryLog` exactly as prost (and Go's protobuf) writes one,
/// each field at most once, in field order, with one-byte keys and varints of at
/// most nine bytes: `allowed`, `time { seconds, nanos }`, `http_request { method,
/// url, matched_rule }`, `sequence_number`. Returns its sequence number, or `None`
/// for anything else, valid or not, which `walk_log_fields` then judges. Accepts
/// only what that walk accepts, with the same result.
#[inline(always)]
fn canonical_log(mut buf: &[u8]) -> Option<i32> {
    if let [0x08, ref rest @ ..] = *buf {
        buf = rest;
        short_varint(&mut buf)?;
    }
    if let [0x12, ref rest @ ..] = *buf {
        buf = rest;
        let mut time = short_body(&mut buf)?;
        if let [0x08, ref rest @ ..] = *time {
            time = rest;
            short_varint(&mut time)?;
        }
        if let [0x10, ref rest @ ..] = *time {
            time = rest;
            short_varint(&mut time)?;
        }
        if !time.is_empty() {
            return None;
        }
    }
    if let [0x1A, ref rest @ ..] = *buf {
        buf = rest;
        let request = short_body(&mut buf)?;
        canonical_http_request(request)?;
    }
    let mut seq = 0;
    if let [0x20, ref rest @ ..] = *buf {
        buf = rest;
        seq = short_varint(&mut buf)? as i32;
    }
    buf.is_empty().then_some(seq)
}

/// An `HttpRequest` of up to three strings in field order. When the whole body is
/// ASCII (keys, lengths under 128 and text), every string in it is valid UTF-8:
/// one check for the three.
#[inline(always)]
fn canonical_http_request(body: &[u8]) -> Option<()> {
    let ascii = is_ascii(body);
    let mut buf = body;
    for key in [0x0A, 0x12, 0x1A] {
        if let [k, ref rest @ ..] = *buf {
            if k == key {
                buf = rest;
                let text = short_body(&mut buf)?;
                if !ascii && !is_utf8(text) {
                    return None;
                }
            }
        }
    }
    buf.is_empty().then_some(())
}

/// A varint of at most nine bytes (never an overflow or an error in prost);
/// `None` for anything longer or cut short.
#[inline(always)]
fn short_varint(buf: &mut &[u8]) -> Option<u64> {
    let bytes = *buf;
    // Most varints here (lengths, booleans, small numbers) are one byte.
    if let [byte @ 0..=0x7F, ref rest @ ..] = *bytes {
        *buf = rest;
        return Some(u64::from(byte));
    }
    let mut value = 0;
    for (i, &byte) in bytes.iter().take(9).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            *buf = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// A length-delimited body within `buf` whose length is minimally encoded.
#[inline(always)]
fn minimal_body<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let before = buf.len();
    let len = short_varint(buf)?;
    if before - buf.len() != prost::encoding::encoded_len_varint(len) || len > buf.len() as u64 {
        return None;
    }
    let (body, rest) = buf.split_at(len as usize);
    *buf = rest;
    Some(body)
}

/// A length-delimited body within `buf`.
#[inline(always)]
fn short_body<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = short_varint(buf)?;
    if len > buf.len() as u64 {
        return None;
    }
    let (body, rest) = buf.split_at(len as usize);
    *buf = rest;
    Some(body)
}

/// Validates one `BoundaryLog` body field by field, as prost does, and returns its
/// sequence number (the last `sequence_number`, 0 when absent).
fn walk_log_fields(mut buf: &[u8], budget: u32) -> WireResult<i32> {
    let mut seq = 0;
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        match tag {
            1 => {
                read_scalar(wire, &mut buf)?;
            }
            2 => {
                let (body, inner, _) = read_message(wire, &mut buf, budget)?;
                walk_timestamp(body, inner)?;
            }
            3 => {
                let (body, inner, _) = read_message(wire, &mut buf, budget)?;
                walk_http_request(body, inner)?;
            }
            4 => seq = read_scalar(wire, &mut buf)? as i32,
            _ => skip_field(wire, tag, &mut buf, budget)?,
        }
    }
    Ok(seq)
}

/// Validates a `google.protobuf.Timestamp` body (`int64 seconds = 1; int32 nanos = 2`).
fn walk_timestamp(mut buf: &[u8], budget: u32) -> WireResult<()> {
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        match tag {
            1 | 2 => {
                read_scalar(wire, &mut buf)?;
            }
            _ => skip_field(wire, tag, &mut buf, budget)?,
        }
    }
    Ok(())
}

/// Validates an `HttpRequest` body (three strings).
fn walk_http_request(mut buf: &[u8], budget: u32) -> WireResult<()> {
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        match tag {
            1..=3 => {
                read_string(wire, &mut buf)?;
            }
            _ => skip_field(wire, tag, &mut buf, budget)?,
        }
    }
    Ok(())
}

/// Validates a `BoundaryStatus` body, merging it into `status`.
pub(crate) fn walk_status(
    mut buf: &[u8],
    status: &mut BoundaryStatus,
    budget: u32,
) -> WireResult<()> {
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        match tag {
            1 => status.dropped_channel_full = read_scalar(wire, &mut buf)? as i64,
            2 => status.dropped_batch_full = read_scalar(wire, &mut buf)? as i64,
            _ => skip_field(wire, tag, &mut buf, budget)?,
        }
    }
    Ok(())
}

/// The sequence number of an already validated `BoundaryLog` body (last
/// occurrence of field 4, 0 when absent).
pub(crate) fn log_sequence_number(mut buf: &[u8]) -> WireResult<i32> {
    let mut seq = 0;
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        if tag == 4 && wire == WireType::Varint {
            seq = read_scalar(wire, &mut buf)? as i32;
        } else {
            skip_field(wire, tag, &mut buf, u32::MAX)?;
        }
    }
    Ok(seq)
}

/// Splits already validated `logs` records: each item is one record's body.
pub(crate) fn next_record<'a>(buf: &mut &'a [u8]) -> WireResult<&'a [u8]> {
    read_key(buf)?;
    read_body(buf).map(|(body, _)| body)
}

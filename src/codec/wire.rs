//! Protobuf wire primitives for the validating walker: keys, varints, length-delimited
//! bodies, strings and unknown-field skipping, each accepting exactly what prost accepts.
//!
//! Bodies are read from a slice bounded by their enclosing message. prost reads nested
//! fields from the unbounded buffer and then rejects a message whose fields overran
//! its length ("delimited length exceeded"); either way such input is rejected.

use prost::encoding::{decode_key, decode_varint, WireType};

use super::CodecError;

/// Recursion budget of a top-level message's fields: prost's `RECURSION_LIMIT`.
/// Every nested message, and every group level of an unknown field, spends one.
pub(crate) const RECURSION_LIMIT: u32 = 100;

pub(crate) type WireResult<T> = Result<T, CodecError>;

pub(crate) fn malformed(what: &'static str) -> CodecError {
    CodecError::Decode(what.to_owned())
}

fn from_prost(err: prost::DecodeError) -> CodecError {
    CodecError::Decode(err.to_string())
}

/// Reads a field key: tag >= 1, known wire type, at most 32 bits.
#[inline(always)]
pub(crate) fn read_key(buf: &mut &[u8]) -> WireResult<(u32, WireType)> {
    // One-byte keys (tags 1..=15) are nearly all keys; prost handles the rest,
    // errors included.
    if let [byte, ref rest @ ..] = **buf {
        let wire = match byte & 0x07 {
            0 => Some(WireType::Varint),
            1 => Some(WireType::SixtyFourBit),
            2 => Some(WireType::LengthDelimited),
            3 => Some(WireType::StartGroup),
            4 => Some(WireType::EndGroup),
            5 => Some(WireType::ThirtyTwoBit),
            _ => None,
        };
        if let (true, Some(wire)) = (byte < 0x80 && byte >> 3 != 0, wire) {
            *buf = rest;
            return Ok((u32::from(byte >> 3), wire));
        }
    }
    decode_key(buf).map_err(from_prost)
}

/// Reads a varint (at most 10 bytes, no overflow of 64 bits).
#[inline(always)]
pub(crate) fn read_varint(buf: &mut &[u8]) -> WireResult<u64> {
    let bytes = *buf;
    if let [b0, ref rest @ ..] = *bytes {
        if b0 < 0x80 {
            *buf = rest;
            return Ok(u64::from(b0));
        }
    }
    // Up to nine bytes cannot overflow; prost handles the tenth byte and errors.
    let mut value = 0;
    for (i, &byte) in bytes.iter().take(9).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            *buf = &bytes[i + 1..];
            return Ok(value);
        }
    }
    decode_varint(buf).map_err(from_prost)
}

#[inline]
pub(crate) fn expect_wire(actual: WireType, expected: WireType) -> WireResult<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(malformed("unexpected wire type"))
    }
}

/// A length-delimited body and whether its length prefix was minimally encoded.
#[inline(always)]
pub(crate) fn read_body<'a>(buf: &mut &'a [u8]) -> WireResult<(&'a [u8], bool)> {
    let before = buf.len();
    let len = read_varint(buf)?;
    let minimal = before - buf.len() == prost::encoding::encoded_len_varint(len);
    if len > buf.len() as u64 {
        return Err(malformed("buffer underflow"));
    }
    let (body, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok((body, minimal))
}

/// A nested message field's body, and the recursion budget of its own fields.
#[inline(always)]
pub(crate) fn read_message<'a>(
    wire: WireType,
    buf: &mut &'a [u8],
    budget: u32,
) -> WireResult<(&'a [u8], u32, bool)> {
    expect_wire(wire, WireType::LengthDelimited)?;
    let inner = enter(budget)?;
    let (body, minimal) = read_body(buf)?;
    Ok((body, inner, minimal))
}

/// The budget of a nested message's fields, or the recursion-limit error.
#[inline]
pub(crate) fn enter(budget: u32) -> WireResult<u32> {
    budget
        .checked_sub(1)
        .ok_or_else(|| malformed("recursion limit reached"))
}

/// A proto3 `string` field: length-delimited, valid UTF-8.
#[inline(always)]
pub(crate) fn read_string<'a>(wire: WireType, buf: &mut &'a [u8]) -> WireResult<(&'a [u8], bool)> {
    expect_wire(wire, WireType::LengthDelimited)?;
    let (body, minimal) = read_body(buf)?;
    if !is_ascii(body) && !is_utf8(body) {
        return Err(malformed("invalid string value: data is not UTF-8 encoded"));
    }
    Ok((body, minimal))
}

/// Full UTF-8 validation, as `std::str::from_utf8` judges it.
#[inline]
pub(crate) fn is_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

/// ASCII check eight bytes at a time, the tail read as an overlapping last word
/// (the standard one goes byte by byte after its last 64-byte block; URLs are short).
#[inline(always)]
pub(crate) fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or([0x80; 8]));
    if bytes.len() < 8 {
        return bytes.iter().all(u8::is_ascii);
    }
    // Front to back, the tail last: the bytes are read in memory order, 32 at a time
    // (four independent words), then 8 at a time.
    let mut all = 0;
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        all |= word(&block[..8]) | word(&block[8..16]) | word(&block[16..24]) | word(&block[24..]);
    }
    let all = blocks
        .remainder()
        .chunks_exact(8)
        .fold(all, |acc, chunk| acc | word(chunk));
    (all | word(&bytes[bytes.len() - 8..])) & HIGH_BITS == 0
}

/// A scalar varint field (`bool`, `int32`, `int64`).
#[inline]
pub(crate) fn read_scalar(wire: WireType, buf: &mut &[u8]) -> WireResult<u64> {
    expect_wire(wire, WireType::Varint)?;
    read_varint(buf)
}

/// Skips an unknown field as prost's `skip_field` does, groups included.
pub(crate) fn skip_field(wire: WireType, tag: u32, buf: &mut &[u8], budget: u32) -> WireResult<()> {
    if budget == 0 {
        return Err(malformed("recursion limit reached"));
    }
    let len = match wire {
        WireType::Varint => read_varint(buf).map(|_| 0)?,
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => read_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire) = read_key(buf)?;
            if inner_wire == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(malformed("unexpected end group tag"));
                }
                break 0;
            }
            skip_field(inner_wire, inner_tag, buf, budget - 1)?;
        },
        WireType::EndGroup => return Err(malformed("unexpected end group tag")),
    };
    if len > buf.len() as u64 {
        return Err(malformed("buffer underflow"));
    }
    *buf = &buf[len as usize..];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_ascii;

    #[test]
    fn ascii_check_finds_a_high_byte_at_any_position() {
        for len in 0..100 {
            let mut bytes = vec![b'a'; len];
            assert!(is_ascii(&bytes), "len {len}");
            for at in 0..len {
                bytes[at] = 0xC3;
                assert!(!is_ascii(&bytes), "len {len}, high byte at {at}");
                bytes[at] = b'a';
            }
        }
    }
}

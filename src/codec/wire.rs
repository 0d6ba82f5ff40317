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
#[inline]
pub(crate) fn read_key(buf: &mut &[u8]) -> WireResult<(u32, WireType)> {
    decode_key(buf).map_err(from_prost)
}

/// Reads a varint (at most 10 bytes, no overflow of 64 bits).
#[inline]
pub(crate) fn read_varint(buf: &mut &[u8]) -> WireResult<u64> {
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
#[inline]
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
#[inline]
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
#[inline]
pub(crate) fn read_string<'a>(wire: WireType, buf: &mut &'a [u8]) -> WireResult<(&'a [u8], bool)> {
    expect_wire(wire, WireType::LengthDelimited)?;
    let (body, minimal) = read_body(buf)?;
    if std::str::from_utf8(body).is_err() {
        return Err(malformed("invalid string value: data is not UTF-8 encoded"));
    }
    Ok((body, minimal))
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

//! The codec's one error type, split into connection-fatal and frame-local errors.

/// Everything that can be wrong with bytes from boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Header tag is neither 1 (TagV1) nor 2 (TagV2). Fatal: the connection closes.
    #[error("unsupported frame tag {0}")]
    UnsupportedTag(u8),
    /// Header announces more than 32768 payload bytes. Fatal, before any payload is read.
    #[error("frame payload of {0} bytes exceeds the 32768-byte limit")]
    TooLarge(usize),
    /// The stream ended inside a frame. Fatal.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The payload is not a valid protobuf message of the expected type. Frame-local.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// A TagV2 envelope carries no known variant. Frame-local.
    #[error("envelope carries no known variant")]
    UnknownVariant,
}

impl CodecError {
    /// True when the connection must be closed (the stream can no longer be framed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedTag(_) | Self::TooLarge(_) | Self::Truncated { .. }
        )
    }

    /// The `reason` label of `frames_rejected_total` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnsupportedTag(_) => "unsupported_tag",
            Self::TooLarge(_) => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::Decode(_) => "decode_error",
            Self::UnknownVariant => "unknown_variant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CodecError;

    #[test]
    fn framing_errors_are_fatal_and_payload_errors_are_not() {
        assert!(CodecError::UnsupportedTag(0).is_fatal());
        assert!(CodecError::TooLarge(32769).is_fatal());
        assert!(CodecError::Truncated { buffered: 3 }.is_fatal());
        assert!(!CodecError::Decode("x".into()).is_fatal());
        assert!(!CodecError::UnknownVariant.is_fatal());
    }

    #[test]
    fn reasons_are_the_contract_metric_labels() {
        let labels = [
            (CodecError::UnsupportedTag(3), "unsupported_tag"),
            (CodecError::TooLarge(40000), "too_large"),
            (CodecError::Truncated { buffered: 1 }, "truncated"),
            (CodecError::Decode("bad".into()), "decode_error"),
            (CodecError::UnknownVariant, "unknown_variant"),
        ];
        for (err, label) in labels {
            assert_eq!(err.reason(), label, "{err:?}");
        }
    }
}

//! The closed sets of label values the proxy's metrics carry, one enum per label.

use crate::codec::CodecError;

macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in the order they are exported.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value as exported.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// `reason` of `batches_dropped_total` (a batch is one received frame).
    BatchDropReason {
        /// The ring was full when the frame arrived.
        BufferFull => "buffer_full",
        /// coderd refused it for good, or retries ran out.
        ForwardFailed => "forward_failed",
        /// Still unsent when the shutdown timeout ran out.
        Shutdown => "shutdown",
        /// Found damaged in the disk spool (exported only with `--spool-dir`).
        SpoolCorrupt => "spool_corrupt",
        /// The disk spool was at `--spool-max-bytes` (exported only with `--spool-dir`).
        SpoolFull => "spool_full",
    }
}

label_enum! {
    /// `reason` of `logs_dropped_total`.
    LogDropReason {
        /// The ring was full when the frame arrived.
        BufferFull => "buffer_full",
        /// coderd refused it for good, or retries ran out.
        ForwardFailed => "forward_failed",
        /// boundary reported dropping it: its channel was full.
        BoundaryChannelFull => "boundary_channel_full",
        /// boundary reported dropping it: its batch was full.
        BoundaryBatchFull => "boundary_batch_full",
        /// Still unsent when the shutdown timeout ran out.
        Shutdown => "shutdown",
        /// Found damaged in the disk spool (exported only with `--spool-dir`).
        SpoolCorrupt => "spool_corrupt",
        /// The disk spool was at `--spool-max-bytes` (exported only with `--spool-dir`).
        SpoolFull => "spool_full",
    }
}

impl BatchDropReason {
    /// The reasons only a spool can cause, exported once one is configured.
    pub const SPOOL: &'static [Self] = &[Self::SpoolCorrupt, Self::SpoolFull];
}

impl LogDropReason {
    /// The reasons only a spool can cause, exported once one is configured.
    pub const SPOOL: &'static [Self] = &[Self::SpoolCorrupt, Self::SpoolFull];
}

label_enum! {
    /// `reason` of `frames_rejected_total`.
    FrameRejectReason {
        /// Header tag other than 1 or 2.
        UnsupportedTag => "unsupported_tag",
        /// Header length over 32768.
        TooLarge => "too_large",
        /// Payload did not decode.
        DecodeError => "decode_error",
        /// TagV2 envelope without a known variant.
        UnknownVariant => "unknown_variant",
        /// Stream ended inside a frame.
        Truncated => "truncated",
        /// A request (TagV1, or TagV2 logs) with no logs: nothing to forward, no call made.
        Empty => "empty",
        /// A `BoundaryStatus` with a count that is negative or over 2^53.
        BadStatus => "bad_status",
        /// A TagV2 envelope that set a second variant after a first: the last is
        /// used, as protobuf decodes it; what the earlier carried is not.
        Superseded => "superseded",
    }
}

label_enum! {
    /// `result` of `forward_requests_total` (one per call).
    ForwardResult {
        /// The call succeeded.
        Ok => "ok",
        /// The call failed with an error worth retrying.
        RetryableError => "retryable_error",
        /// The call failed with an error that retrying cannot fix.
        PermanentError => "permanent_error",
    }
}

label_enum! {
    /// `reason` of `connections_rejected_total`.
    ConnectionRejectReason {
        /// `--max-connections` already open.
        Limit => "limit",
        /// Peer uid not in `--allow-uid`.
        PeerUid => "peer_uid",
    }
}

impl From<&CodecError> for FrameRejectReason {
    fn from(error: &CodecError) -> Self {
        match error {
            CodecError::UnsupportedTag(_) => Self::UnsupportedTag,
            CodecError::TooLarge(_) => Self::TooLarge,
            CodecError::Truncated { .. } => Self::Truncated,
            CodecError::Decode(_) => Self::DecodeError,
            CodecError::UnknownVariant => Self::UnknownVariant,
        }
    }
}

label_enum! {
    /// `result` of `coderd_connects_total`: how a connection attempt to coderd's Agent API
    /// (buildinfo, websocket upgrade, yamux) ended.
    CoderdConnectResult {
        /// Connected.
        Ok => "ok",
        /// coderd answered an HTTP error (a wrong token: 401).
        HttpError => "http_error",
        /// coderd is older than v2.31.0 and `--coder-allow-agent-role` is not set.
        RefusedVersion => "refused_version",
        /// TCP, TLS, a timeout, or a broken upgrade.
        NetworkError => "network_error",
    }
}

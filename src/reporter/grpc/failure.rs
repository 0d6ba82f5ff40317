//! Which failed calls are worth retrying: coderd's codes and transport errors, sorted
//! into retryable, permanent, and refused for their size (which a smaller request
//! may pass).

use std::error::Error as _;

use tonic::{Code, Status};

/// How the forwarder treats a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Transient (coderd unavailable, slow or overloaded, or the connection broke):
    /// the same request may succeed later.
    Retryable,
    /// coderd refused the request itself: retrying it will not help.
    Permanent,
    /// The destination refused the request for its size: the same logs may pass in
    /// smaller requests (the forwarder splits it).
    TooLarge(Oversize),
}

/// Which limit a too-large request went over, and the limit when the refusal stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Too many bytes (gRPC's message size limit, on either side).
    Bytes(Option<usize>),
    /// Too many logs (coderd's "batch size N exceeds maximum M").
    Logs(Option<usize>),
}

/// Classifies a call's status: a refusal for the request's size (see [`oversize`]) is
/// `TooLarge`; otherwise UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and any
/// status raised by the transport itself (a refused or broken connection, whatever
/// code tonic gave it) are retryable; every other code is permanent.
pub fn classify(status: &Status) -> Failure {
    if let Some(over) = oversize(status) {
        return Failure::TooLarge(over);
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => Failure::Retryable,
        _ if caused_by_transport(status) => Failure::Retryable,
        _ => Failure::Permanent,
    }
}

/// Whether `status` refuses a request for its size, and which size. Recognised:
/// - RESOURCE_EXHAUSTED or OUT_OF_RANGE whose text speaks of a message too large:
///   grpc-go's "grpc: received message larger than max (N vs. M)", tonic's
///   "Error, decoded message length too large: found N bytes, the limit is: M bytes"
///   (and "encoded ..." for its own send limit), and this reporter's own
///   "request of N bytes is over the M byte limit";
/// - any code whose text carries coderd's "batch size N exceeds maximum M" (its
///   Agent API's answer to a request of too many logs, which arrives over DRPC as an
///   error with no gRPC code).
///
/// A RESOURCE_EXHAUSTED about anything else (a rate limit, a full queue) is not a
/// size refusal: it stays retryable.
pub fn oversize(status: &Status) -> Option<Oversize> {
    let text = status.message();
    if let Some(rest) = after(text, "batch size ") {
        if let Some(max) = after(rest, " exceeds maximum") {
            return Some(Oversize::Logs(leading_number(max.trim_start())));
        }
    }
    if !matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange) {
        return None;
    }
    if let Some(rest) = after(text, "larger than max (") {
        // grpc-go: "(received vs. max)".
        return Some(Oversize::Bytes(
            after(rest, " vs. ").and_then(leading_number),
        ));
    }
    if after(text, "message length too large").is_some() {
        return Some(Oversize::Bytes(
            after(text, "the limit is: ").and_then(leading_number),
        ));
    }
    if let Some(rest) = after(text, " bytes is over the ") {
        return Some(Oversize::Bytes(leading_number(rest)));
    }
    None
}

/// The text after the first `needle` in `haystack`, ignoring ASCII case.
fn after<'a>(haystack: &'a str, needle: &str) -> Option<&'a str> {
    let lower = haystack.to_ascii_lowercase();
    lower.find(needle).map(|at| &haystack[at + needle.len()..])
}

/// The decimal number at the start of `text`, if any.
fn leading_number(text: &str) -> Option<usize> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// Whether the status was made on this side from a connection-level error, rather
/// than received from coderd (a received status carries no source).
pub(super) fn caused_by_transport(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<hyper::Error>()
            || err.is::<std::io::Error>()
            || err.is::<tonic::transport::Error>()
            || err.is::<tonic::ConnectError>()
            || err.is::<tonic::TimeoutExpired>()
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// A status tonic made because its own copy of the deadline (the `grpc-timeout` it
/// enforces locally) expired reads CANCELLED; it is the call's deadline.
pub(super) fn deadline_from_local_timeout(status: Status) -> Status {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return Status::deadline_exceeded(status.message().to_owned());
        }
        source = err.source();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_are_exactly_unavailable_deadline_and_exhausted() {
        let all = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in all {
            let expected = match code {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    Failure::Retryable
                }
                _ => Failure::Permanent,
            };
            assert_eq!(
                classify(&Status::new(code, "from coderd")),
                expected,
                "{code:?}"
            );
        }
    }

    #[test]
    fn grpc_go_message_size_refusal_is_too_large_with_its_limit() {
        let status =
            Status::resource_exhausted("grpc: received message larger than max (329872 vs. 65536)");
        assert_eq!(
            classify(&status),
            Failure::TooLarge(Oversize::Bytes(Some(65536)))
        );
    }

    #[test]
    fn tonic_message_size_refusals_are_too_large_with_their_limit() {
        let decoded = Status::out_of_range(
            "Error, decoded message length too large: found 329872 bytes, the limit is: 65536 bytes",
        );
        assert_eq!(
            classify(&decoded),
            Failure::TooLarge(Oversize::Bytes(Some(65536)))
        );
        let encoded = Status::out_of_range(
            "Error, encoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(
            classify(&encoded),
            Failure::TooLarge(Oversize::Bytes(Some(4_194_304)))
        );
    }

    #[test]
    fn this_reporters_own_size_check_is_too_large_with_its_limit() {
        let status =
            Status::out_of_range("request of 4200817 bytes is over the 4194304 byte limit");
        assert_eq!(
            classify(&status),
            Failure::TooLarge(Oversize::Bytes(Some(4_194_304)))
        );
    }

    #[test]
    fn coderds_batch_size_error_is_too_large_in_logs_whatever_its_code() {
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::ResourceExhausted,
        ] {
            let status = Status::new(code, "batch size 5000 exceeds maximum 1000");
            assert_eq!(
                classify(&status),
                Failure::TooLarge(Oversize::Logs(Some(1000))),
                "{code:?}"
            );
        }
        let unstated = Status::unknown("Batch size 5000 exceeds maximum allowed");
        assert_eq!(classify(&unstated), Failure::TooLarge(Oversize::Logs(None)));
    }

    #[test]
    fn resource_exhausted_about_anything_but_size_stays_retryable() {
        for text in ["rate limit exceeded", "queue full", "too many requests"] {
            assert_eq!(
                classify(&Status::resource_exhausted(text)),
                Failure::Retryable,
                "{text}"
            );
        }
        // A size-like text under another code is what it says it is.
        assert_eq!(
            classify(&Status::internal("message length too large")),
            Failure::Permanent
        );
    }

    #[test]
    fn unknown_status_caused_by_an_io_error_is_retryable() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = Status::from_error(Box::new(reset));
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(classify(&status), Failure::Retryable);
    }

    #[test]
    fn refused_connection_maps_to_unavailable() {
        let refused = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let status = Status::from_error(Box::new(refused));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(classify(&status), Failure::Retryable);
    }

    #[test]
    fn local_timeout_reads_as_deadline_exceeded() {
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        let fixed = deadline_from_local_timeout(status);
        assert_eq!(fixed.code(), Code::DeadlineExceeded);
        assert_eq!(classify(&fixed), Failure::Retryable);
    }

    #[test]
    fn received_cancelled_stays_cancelled_and_permanent() {
        let status = deadline_from_local_timeout(Status::cancelled("coderd gave up"));
        assert_eq!(status.code(), Code::Cancelled);
        assert_eq!(classify(&status), Failure::Permanent);
    }
}

//! Which failed calls are worth retrying: coderd's codes and transport errors, sorted
//! into retryable and permanent.

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
}

/// Classifies a call's status: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and
/// any status raised by the transport itself (a refused or broken connection, whatever
/// code tonic gave it) are retryable; every other code is permanent.
pub fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => Failure::Retryable,
        _ if caused_by_transport(status) => Failure::Retryable,
        _ => Failure::Permanent,
    }
}

/// Whether the status was made on this side from a connection-level error, rather
/// than received from coderd (a received status carries no source).
fn caused_by_transport(status: &Status) -> bool {
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

//! Domain errors shared by the services, and the one place they become gRPC status codes.

/// An error a Troupe service returns to a caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field and what was expected.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the system is not in a state to serve it yet.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (Redis, the model thread) is unreachable; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A wait ran past its deadline (a replay table's rate limiter held the call back).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::DeadlineExceeded(m) => tonic::Status::deadline_exceeded(m),
            Error::Internal(m) => tonic::Status::internal(m),
        }
    }
}

impl From<proto::TensorError> for Error {
    fn from(e: proto::TensorError) -> Error {
        Error::InvalidArgument(e.to_string())
    }
}

//! Troupe's wire protocol: the generated `troupe.v1` messages and services, plus conversions
//! between [`v1::Tensor`] and plain vectors.
//!
//! Tensors travel as raw little-endian bytes with a dtype and a shape. [`TensorView`] checks a
//! received tensor (dtype, shape, byte length) and names the field when it is wrong.

pub mod v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("troupe.v1");
}

mod tensor;

/// The full name of every method in the protocol (`troupe.v1.Coordinator/Heartbeat`, ...).
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));
}

pub use tensor::{dtype_size, ElementType, TensorError, TensorView};

/// Largest gRPC message either side will decode or encode (16 MiB). Policies and rollouts larger
/// than this are chunked or split by the sender.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Size of one chunk of a policy blob on the wire.
pub const POLICY_CHUNK_BYTES: usize = 1024 * 1024;

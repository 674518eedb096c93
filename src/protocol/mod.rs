//! Wire formats: Open Inference Protocol v2 JSON ↔ tensors, and client-facing error bodies.

pub mod binary;
pub mod check;
pub mod cloudevents;
pub mod error;
pub mod feedback;
pub mod grpc;
pub mod oip;
pub mod request_id;
pub mod secret;
pub mod tensor;

pub use error::ApiError;
pub use tensor::{DataType, Signature, Tensor, TensorData, TensorSpec};

#[cfg(test)]
mod tests;

//! The gRPC transport: `coderclaw.v1.Runtime`
//! (`transport/proto/coderclaw/v1/runtime.proto`) served by tonic on
//! `coderclaw serve --grpc-listen ADDR`, beside the standard health
//! (`grpc.health.v1.Health`) and reflection services so grpcurl-style tools
//! work; and [`GrpcTransport`], the [`crate::Transport`] over it.
//!
//! Failures are gRPC status codes mapped from [`ErrorCode`]s (see
//! [`status_of`]), with the code's wire name in the `coderclaw-code`
//! metadata so a client gets back exactly the error REST would give.

mod client;
mod connection;
mod convert;
pub mod server;

pub use client::GrpcTransport;

use coderclaw_tasks::{ErrorCode, RuntimeError};

/// The messages and the service, generated from the proto at build time.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("coderclaw.v1");
}

/// The encoded descriptors of `coderclaw.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coderclaw_v1_descriptor");

/// The metadata key carrying the REST error code of a failed call.
pub const CODE_METADATA: &str = "coderclaw-code";

/// The gRPC status for `code`.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::Forbidden => tonic::Code::PermissionDenied,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::InvalidRequest => tonic::Code::InvalidArgument,
        ErrorCode::Conflict => tonic::Code::FailedPrecondition,
        ErrorCode::PayloadTooLarge | ErrorCode::RateLimited | ErrorCode::QuotaExceeded => {
            tonic::Code::ResourceExhausted
        }
        ErrorCode::Internal => tonic::Code::Internal,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
    }
}

/// The gRPC status of a runtime error, carrying its code and retry hint.
pub fn status_of(e: RuntimeError) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(e.code), e.message);
    let metadata = status.metadata_mut();
    metadata.insert(CODE_METADATA, tonic::metadata::MetadataValue::from_static(e.code.as_str()));
    if let Some(secs) = e.retry_after_secs {
        metadata.insert("retry-after", secs.into());
    }
    status
}

/// The runtime error a status stands for: exact when the server named its
/// code, else the nearest (tonic's own refusals, a proxy's).
pub fn error_of(status: &tonic::Status) -> RuntimeError {
    let named = status
        .metadata()
        .get(CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|name| serde_json::from_value::<ErrorCode>(serde_json::Value::String(name.to_owned())).ok());
    let code = named.unwrap_or(match status.code() {
        tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
        tonic::Code::PermissionDenied => ErrorCode::Forbidden,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::InvalidArgument => ErrorCode::InvalidRequest,
        tonic::Code::FailedPrecondition => ErrorCode::Conflict,
        // tonic refuses a message over the decoding limit with OUT_OF_RANGE
        // or RESOURCE_EXHAUSTED: the body limit, as REST's 413.
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => ErrorCode::PayloadTooLarge,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    });
    let mut e = RuntimeError::new(code, status.message());
    e.retry_after_secs =
        status.metadata().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_survives_a_status_round_trip() {
        for code in [
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::InvalidRequest,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
            ErrorCode::RateLimited,
            ErrorCode::QuotaExceeded,
        ] {
            let mut e = RuntimeError::new(code, "why");
            e.retry_after_secs = Some(7);
            assert_eq!(error_of(&status_of(e.clone())), e, "{code}");
        }
        let bare = tonic::Status::new(tonic::Code::OutOfRange, "decoded message length too large");
        assert_eq!(error_of(&bare).code, ErrorCode::PayloadTooLarge);
    }
}

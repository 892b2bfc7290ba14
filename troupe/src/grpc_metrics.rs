//! Per-method gRPC server metrics, as a tower layer every Troupe server puts in front of its
//! services: calls started and handled (by status code), and bytes received and sent.
//!
//! The status of a call is read where gRPC puts it: the `grpc-status` trailer at the end of the
//! response body, or the response headers for a trailers-only answer (an error before any
//! message). A call whose response body is dropped before its status (the peer went away) counts
//! as `CANCELLED`. Method labels come from a fixed list (the protocol's methods and the health
//! service); any other path counts as `other`, so a client cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use metrics::Counter;
use tonic::body::Body;

use crate::telemetry::names;

/// The gRPC health service's methods (tonic-health), served by every process.
pub const HEALTH_METHODS: &[&str] = &["grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"];

/// Counts every call through the wrapped server. `methods` lists the full method names
/// (`package.Service/Method`) kept as labels.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    methods: &'static [&'static [&'static str]],
}

impl GrpcMetricsLayer {
    pub fn new(methods: &'static [&'static [&'static str]]) -> Self {
        Self { methods }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            methods: self.methods,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    methods: &'static [&'static [&'static str]],
}

impl<S> GrpcMetrics<S> {
    fn method_label(&self, path: &str) -> &'static str {
        let path = path.strip_prefix('/').unwrap_or(path);
        self.methods
            .iter()
            .flat_map(|m| m.iter())
            .find(|m| **m == path)
            .copied()
            .unwrap_or("other")
    }
}

impl<S> tower::Service<http::Request<Body>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = self.method_label(request.uri().path());
        metrics::counter!(names::GRPC_SERVER_STARTED, "method" => method).increment(1);
        let received = metrics::counter!(names::GRPC_SERVER_RECEIVED_BYTES, "method" => method);
        let request = request.map(|b| {
            Body::new(Counted {
                inner: b,
                bytes: received,
                method: None,
            })
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let sent = metrics::counter!(names::GRPC_SERVER_SENT_BYTES, "method" => method);
            // A trailers-only answer carries its status in the headers and has no body to wait on.
            let pending = match response.headers().get("grpc-status") {
                Some(code) => {
                    handled(method, code_name(code.as_bytes()));
                    None
                }
                None => Some(method),
            };
            Ok(response.map(|b| {
                Body::new(Counted {
                    inner: b,
                    bytes: sent,
                    method: pending,
                })
            }))
        })
    }
}

fn handled(method: &'static str, code: &'static str) {
    metrics::counter!(names::GRPC_SERVER_HANDLED, "method" => method, "code" => code).increment(1);
}

/// A body that counts its data bytes and, for a response, records the call's status when the
/// trailers arrive (or `CANCELLED` if it is dropped first).
struct Counted {
    inner: Body,
    bytes: Counter,
    /// The method of a response whose status is not recorded yet.
    method: Option<&'static str>,
}

impl Counted {
    fn finish(&mut self, code: &'static str) {
        if let Some(method) = self.method.take() {
            handled(method, code);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.increment(data.len() as u64);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map(|c| code_name(c.as_bytes()))
                        .unwrap_or("UNKNOWN");
                    this.finish(code);
                }
            }
            Some(Err(status)) => this.finish(code_label(status.code() as i32)),
            // The body ended without a status: gRPC calls this an error of the transport.
            None => this.finish("UNKNOWN"),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// The canonical name of the gRPC status code in a `grpc-status` value (its number).
pub fn code_name(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or("UNKNOWN", code_label)
}

/// The canonical name of gRPC status code `code`.
pub fn code_label(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_map_to_their_canonical_names() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"4"), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(b"14"), "UNAVAILABLE");
        assert_eq!(code_name(b"16"), "UNAUTHENTICATED");
        assert_eq!(code_name(b"17"), "UNKNOWN");
        assert_eq!(code_name(b"x"), "UNKNOWN");
        assert_eq!(code_label(-1), "UNKNOWN");
        for code in [tonic::Code::Ok, tonic::Code::Unavailable, tonic::Code::Internal] {
            let name = code_label(code as i32);
            assert_eq!(name.replace('_', "").to_lowercase(), format!("{code:?}").to_lowercase());
        }
    }

    #[test]
    fn unknown_paths_share_one_label() {
        let m = GrpcMetrics {
            inner: (),
            methods: &[HEALTH_METHODS],
        };
        assert_eq!(
            m.method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(m.method_label("/grpc.health.v1.Health/Nope"), "other");
        assert_eq!(m.method_label("/anything"), "other");
    }
}

//! Process lifecycle helpers every binary uses: signals, the ready file tests and scripts wait
//! on, gRPC client endpoints, and retry backoff.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad config or bad flags (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits at once.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining (send again to exit now)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal, exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Writes `value` as JSON to `path` atomically (write then rename), so a reader never sees half.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, path)
}

/// A client channel: a tonic `Channel` that adds this process's bearer token to every call.
pub type GrpcChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::security::AuthToken>;

/// Why a gRPC client endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}: {1}")]
    Address(String, tonic::transport::Error),
    #[error("{address}: TLS is on, expected an https:// address")]
    PlainWithTls { address: String },
    #[error("{address}: an https:// address needs TLS settings (--tls-ca)")]
    TlsWithoutSettings { address: String },
}

/// A lazily connecting gRPC channel with connect/keepalive deadlines, so a dead peer is noticed
/// and the channel reconnects on the next call; TLS and the bearer token from `security`.
pub fn grpc_channel(address: &str, security: &crate::security::Security) -> Result<GrpcChannel, ChannelError> {
    let bad = |e| ChannelError::Address(address.to_string(), e);
    let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true);
    match (security.client_tls(), address.starts_with("https://")) {
        (Some(tls), true) => endpoint = endpoint.tls_config(tls).map_err(bad)?,
        (Some(_), false) => {
            return Err(ChannelError::PlainWithTls {
                address: address.to_string(),
            })
        }
        (None, true) => {
            return Err(ChannelError::TlsWithoutSettings {
                address: address.to_string(),
            })
        }
        (None, false) => {}
    }
    Ok(GrpcChannel::new(endpoint.connect_lazy(), security.token()))
}

/// Concurrent HTTP/2 streams one connection may open on a Troupe server (an actor uses a few).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// A tonic server builder with the settings every server uses: TLS from `security`, adaptive
/// HTTP/2 windows, keepalive pings (a dead peer's streams end instead of hanging), a cap on
/// streams per connection and on reset floods.
pub fn grpc_server(
    security: &crate::security::Security,
) -> Result<tonic::transport::Server, crate::security::SecurityError> {
    let server = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(true))
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_pending_accept_reset_streams(Some(32));
    match security.server_tls()? {
        Some(tls) => server
            .tls_config(tls)
            .map_err(|e| crate::security::SecurityError::new("--tls-cert/--tls-key", "", e.to_string())),
        None => Ok(server),
    }
}

/// A server with what every Troupe service server puts in front of its services: [`grpc_server`]'s
/// settings, per-method metrics (the protocol's methods and health), and the token check with
/// `roles` as its access rule.
pub type ServiceServer = tonic::transport::Server<
    tower_layer::Stack<
        crate::security::AuthLayer,
        tower_layer::Stack<crate::grpc_metrics::GrpcMetricsLayer, tower_layer::Identity>,
    >,
>;

pub fn service_server(
    security: &crate::security::Security,
    roles: crate::security::MethodPolicy,
) -> Result<ServiceServer, crate::security::SecurityError> {
    Ok(grpc_server(security)?
        .layer(crate::grpc_metrics::GrpcMetricsLayer::new(&[
            proto::methods::GRPC_METHODS,
            crate::grpc_metrics::HEALTH_METHODS,
        ]))
        .layer(crate::security::AuthLayer::new(security.tokens(), roles)))
}

/// Accepted connections for a tonic server on a pre-bound listener, with TCP_NODELAY: without
/// it the small acks and chunks a server writes wait on the peer's delayed ACK (40 ms on Linux),
/// which capped a rollout stream at ~30 round trips a second.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Exponential backoff with full jitter, for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, current: min }
    }

    /// The next delay: uniform in [min, current], then current doubles up to max.
    pub fn next_delay(&mut self) -> Duration {
        let hi = self.current.max(self.min);
        let d = rand::rng().random_range(self.min..=hi);
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// Sleeps for the next delay; returns false if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let mut max_seen = Duration::ZERO;
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(80),
                "{d:?}"
            );
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_millis(40),
            "jitter reaches near the cap: {max_seen:?}"
        );
        b.reset();
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(10));
    }

    #[test]
    fn ready_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ready.json");
        write_ready_file(&p, &serde_json::json!({"grpc": "127.0.0.1:1"})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["grpc"], "127.0.0.1:1");
        assert!(!p.with_extension("tmp").exists());
    }
}

//! The standard gRPC health service (`grpc.health.v1`, from tonic-health) that every Troupe
//! process serves, for Kubernetes' gRPC probes and `troupe-health`.
//!
//! Service `""` answers SERVING while the process runs (liveness). Each process also names its
//! role (`troupe.v1.Coordinator`, `troupe.v1.Learner`, `troupe.v1.Actor`): NOT_SERVING until it
//! is ready for work, and again once it cannot do its work (readiness).

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
pub use tonic_health::ServingStatus;

use crate::grpc_metrics::{GrpcMetricsLayer, HEALTH_METHODS};

pub const COORDINATOR: &str = "troupe.v1.Coordinator";
pub const LEARNER: &str = "troupe.v1.Learner";
pub const ACTOR: &str = "troupe.v1.Actor";
pub const REPLAY: &str = "troupe.v1.Replay";

/// The health service to add to a server, and the handle that sets `role`'s status (starting
/// NOT_SERVING).
pub async fn health_service(
    role: &'static str,
) -> (
    Health,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(role, ServingStatus::NotServing).await;
    (
        Health {
            reporters: vec![reporter],
            role,
        },
        service,
    )
}

/// Sets the status of a process's role, on every server that serves its health.
#[derive(Clone)]
pub struct Health {
    reporters: Vec<HealthReporter>,
    role: &'static str,
}

impl Health {
    /// Sets the role's status everywhere it is served.
    pub async fn set(&self, status: ServingStatus) {
        for r in &self.reporters {
            r.set_service_status(self.role, status).await;
        }
    }

    /// Sets status through `other`'s servers as well (one role served from several places).
    pub fn join(&mut self, other: Health) {
        self.reporters.extend(other.reporters);
    }

    /// Also serves this role's health in plain text on `addr` (its own port, never TLS and never
    /// a token, for Kubernetes' gRPC probes); returns the bound address. Status set before the
    /// call is not copied: call it before the first [`Health::set`].
    pub async fn serve_plain(&mut self, addr: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status(self.role, ServingStatus::NotServing).await;
        self.reporters.push(reporter);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            let served = crate::process::grpc_server(&crate::security::Security::insecure())
                .expect("a plain server needs no TLS files")
                .layer(GrpcMetricsLayer::new(&[HEALTH_METHODS]))
                .add_service(service)
                .serve_with_incoming_shutdown(crate::process::incoming(listener), shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "health server failed");
            }
        });
        Ok(bound)
    }
}

/// Serves only the health service on `addr`, in plain text, until `shutdown` (the actor, which
/// has no other gRPC server); returns the bound address.
pub async fn serve_health_only(
    addr: SocketAddr,
    role: &'static str,
    shutdown: CancellationToken,
) -> anyhow::Result<(Health, SocketAddr)> {
    let mut health = Health {
        reporters: Vec::new(),
        role,
    };
    let bound = health.serve_plain(addr, shutdown).await?;
    Ok((health, bound))
}

/// Asks the health service at `address` (`host:port` or a URL) for `service`'s status.
pub async fn check(address: &str, service: &str, timeout: std::time::Duration) -> anyhow::Result<ServingStatus> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    Ok(match answer.status() {
        tonic_health::pb::health_check_response::ServingStatus::Serving => ServingStatus::Serving,
        tonic_health::pb::health_check_response::ServingStatus::NotServing => ServingStatus::NotServing,
        _ => ServingStatus::Unknown,
    })
}

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
    (Health { reporter, role }, service)
}

/// Sets the status of a process's role.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    role: &'static str,
}

impl Health {
    pub async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status(self.role, status).await;
    }
}

/// Serves only the health service on `addr` until `shutdown` (the actor, which has no other gRPC
/// server); returns the bound address.
pub async fn serve_health_only(
    addr: SocketAddr,
    role: &'static str,
    shutdown: CancellationToken,
) -> anyhow::Result<(Health, SocketAddr)> {
    let (health, service) = health_service(role).await;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = crate::process::grpc_server()
            .layer(GrpcMetricsLayer::new(&[HEALTH_METHODS]))
            .add_service(service)
            .serve_with_incoming_shutdown(crate::process::incoming(listener), shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health server failed");
        }
    });
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

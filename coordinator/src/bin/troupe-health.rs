//! `troupe-health`: asks a Troupe process's gRPC health service (grpc.health.v1) for a
//! service's status; exits 0 when it is SERVING, 1 otherwise. For container HEALTHCHECKs, where
//! there is no other gRPC client.
//!
//!     troupe-health --address 127.0.0.1:50051 [--service troupe.v1.Coordinator] [--timeout-s 3]

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "troupe-health", about = "Check a Troupe process's gRPC health service")]
struct Args {
    /// host:port (or http://host:port) of the process's gRPC port.
    #[arg(long, env = "TROUPE_HEALTH_ADDRESS", default_value = "127.0.0.1:50051")]
    address: String,
    /// Service to check: "" is the process itself; troupe.v1.Coordinator, troupe.v1.Learner or
    /// troupe.v1.Actor is its readiness.
    #[arg(long, env = "TROUPE_HEALTH_SERVICE", default_value = "")]
    service: String,
    #[arg(long, default_value_t = 3.0)]
    timeout_s: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let timeout = Duration::from_secs_f64(args.timeout_s);
    match troupe::health::check(&args.address, &args.service, timeout).await {
        Ok(troupe::health::ServingStatus::Serving) => println!("SERVING"),
        Ok(other) => {
            println!("{other:?}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("troupe-health: {}: {e:#}", args.address);
            std::process::exit(1);
        }
    }
}

//! Code the Troupe binaries share: the run config, environments, the policy network, telemetry,
//! errors and process lifecycle helpers.

pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod grpc_metrics;
pub mod health;
#[cfg(feature = "torch")]
pub mod model;
pub mod policy_file;
pub mod policy_map;
pub mod process;
pub mod replay;
pub mod security;
pub mod spaces;
pub mod telemetry;

pub use config::RunConfig;
pub use error::Error;

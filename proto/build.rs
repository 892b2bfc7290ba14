//! Generates the troupe.v1 code with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let file = root.join("troupe/v1/troupe.proto");
    // tonic-prost-build's own rerun-if-changed does nothing when given a descriptor set.
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [root])?;
    tonic_prost_build::configure().bytes(".troupe.v1").compile_fds(fds)?;
    Ok(())
}

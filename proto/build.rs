//! Generates the troupe.v1 code with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let file = root.join("troupe/v1/troupe.proto");
    // tonic-prost-build's own rerun-if-changed does nothing when given a descriptor set.
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [root])?;
    // Every method's full name (`troupe.v1.Service/Method`), for metric labels.
    let mut methods = Vec::new();
    for f in &fds.file {
        for s in &f.service {
            for m in &s.method {
                methods.push(format!("{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("methods.rs");
    std::fs::write(&out, format!("pub const GRPC_METHODS: &[&str] = &{methods:?};\n"))?;
    tonic_prost_build::configure().bytes(".troupe.v1").compile_fds(fds)?;
    Ok(())
}

//! Adds an rpath to libtorch's directory (reported by torch-sys), so the binary runs without
//! LD_LIBRARY_PATH on the machine that built it. Elsewhere, point LD_LIBRARY_PATH at torch/lib.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

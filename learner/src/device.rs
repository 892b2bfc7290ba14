//! Picks the device the learner trains on.
//!
//! The linker drops `libtorch_cuda.so` (nothing references it directly), so CUDA looks absent
//! until that library is loaded. `--device auto` and `--device cuda` load it at start-up.

use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when a GPU is usable, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Loads libtorch's CUDA backend so tch can see GPUs. Returns why not, when it cannot.
#[allow(unsafe_code)]
fn load_torch_cuda() -> Result<(), String> {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the process's
    // lifetime on purpose (the library registers the CUDA backend when loaded).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null pointer from dlerror is a valid C string.
            unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(msg);
    }
    Ok(())
}

pub fn select(choice: DeviceChoice) -> anyhow::Result<Device> {
    if choice == DeviceChoice::Cpu {
        return Ok(Device::Cpu);
    }
    let loaded = load_torch_cuda();
    let available = tch::Cuda::is_available();
    match (choice, available) {
        (_, true) => Ok(Device::Cuda(0)),
        (DeviceChoice::Cuda, false) => {
            anyhow::bail!(
                "--device cuda: no usable GPU (libtorch_cuda: {})",
                loaded.err().unwrap_or_else(|| "loaded, but no CUDA device".into())
            )
        }
        _ => {
            if let Err(e) = loaded {
                tracing::debug!(error = %e, "libtorch_cuda not loaded");
            }
            Ok(Device::Cpu)
        }
    }
}

pub fn name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

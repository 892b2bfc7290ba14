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

/// Memory in use and in total on CUDA device `index`, in bytes, from the CUDA runtime's
/// `cudaMemGetInfo` (device-wide, as nvidia-smi shows it). `None` when the runtime or the call
/// fails. libtorch links `libcudart`, so the symbol is already in the process.
#[allow(unsafe_code)]
pub fn gpu_memory(index: usize) -> Option<(u64, u64)> {
    type SetDevice = unsafe extern "C" fn(device: libc::c_int) -> libc::c_int;
    type MemGetInfo = unsafe extern "C" fn(free: *mut libc::size_t, total: *mut libc::size_t) -> libc::c_int;
    // SAFETY: dlsym with RTLD_DEFAULT and valid NUL-terminated names; the results are checked
    // for null before use.
    let (set_device, mem_get_info) = unsafe {
        let set = libc::dlsym(libc::RTLD_DEFAULT, c"cudaSetDevice".as_ptr());
        let info = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if set.is_null() || info.is_null() {
            return None;
        }
        (
            std::mem::transmute::<*mut libc::c_void, SetDevice>(set),
            std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info),
        )
    };
    let (mut free, mut total): (libc::size_t, libc::size_t) = (0, 0);
    // SAFETY: the CUDA runtime's documented signatures; the out-pointers are valid locals.
    // cudaSetDevice only selects this thread's device (libtorch created its context already).
    let ok = unsafe { set_device(index as libc::c_int) == 0 && mem_get_info(&mut free, &mut total) == 0 };
    (ok && total > 0).then(|| ((total - free.min(total)) as u64, total as u64))
}

/// Samples the GPU's memory into `troupe_learner_gpu_memory_{used,total}_bytes` every 5 s,
/// on a thread of its own, while the learner runs on CUDA.
pub fn watch_gpu_memory(device: Device, shutdown: tokio_util::sync::CancellationToken) {
    let Device::Cuda(index) = device else { return };
    let spawned = std::thread::Builder::new().name("gpu-memory".into()).spawn(move || {
        while !shutdown.is_cancelled() {
            match gpu_memory(index) {
                Some((used, total)) => {
                    metrics::gauge!(troupe::telemetry::names::LEARNER_GPU_MEMORY_USED).set(used as f64);
                    metrics::gauge!(troupe::telemetry::names::LEARNER_GPU_MEMORY_TOTAL).set(total as f64);
                }
                None => {
                    tracing::warn!("cudaMemGetInfo failed; GPU memory is not reported");
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the GPU memory sampler");
    }
}

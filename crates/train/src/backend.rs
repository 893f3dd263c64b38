//! Backend (device) selection.
//!
//! `cpu` is burn's pure-Rust `flex` backend (always compiled). `wgpu` / `cuda` exist only when
//! this crate is built with the matching cargo feature; asking for one that is not compiled in
//! is an error naming the feature, never a silent fallback. `auto` falls back silently, in the
//! order cuda (if compiled in and a device answers) → wgpu (if compiled in) → cpu.

use burn::tensor::Device;

use crate::config::BackendKind;
use crate::error::{Result, TrainError};

/// The device for `kind`, without autodiff.
pub fn device_for(kind: BackendKind) -> Result<Device> {
    match kind {
        BackendKind::Cpu => Ok(Device::flex()),
        BackendKind::Wgpu => wgpu_device(),
        BackendKind::Cuda => cuda_device(),
        BackendKind::Auto => {
            if cfg!(feature = "cuda")
                && let Ok(d) = cuda_device()
            {
                return Ok(d);
            }
            if cfg!(feature = "wgpu")
                && let Ok(d) = wgpu_device()
            {
                return Ok(d);
            }
            Ok(Device::flex())
        }
    }
}

/// Human-readable name of the backend `kind` resolves to.
pub fn resolved_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Cpu => "cpu(flex)",
        BackendKind::Wgpu => "wgpu",
        BackendKind::Cuda => "cuda",
        BackendKind::Auto => {
            if cfg!(feature = "cuda") && cuda_device().is_ok() {
                "cuda"
            } else if cfg!(feature = "wgpu") {
                "wgpu"
            } else {
                "cpu(flex)"
            }
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device> {
    Err(TrainError::Backend("wgpu requested but aidos-train was built without the `wgpu` feature".into()))
}

/// cubecl panics when no CUDA device/driver is present; probe once with a tiny tensor and turn
/// the panic into an error.
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<bool> = OnceLock::new();
    let ok = *PROBE.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let d = Device::cuda(0);
            let _ = burn::tensor::Tensor::<1>::zeros([1], &d).into_data();
        })
        .is_ok()
    });
    if ok {
        Ok(Device::cuda(0))
    } else {
        Err(TrainError::Backend("cuda requested but no CUDA device/driver is usable".into()))
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(TrainError::Backend("cuda requested but aidos-train was built without the `cuda` feature".into()))
}

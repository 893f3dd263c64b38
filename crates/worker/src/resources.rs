//! What this machine offers: CPU, memory and GPUs.
//!
//! Invariant: detection never panics and never fails. A machine without the CUDA driver (or with a
//! broken one) reports 0 GPUs. cudarc's dynamic loading panics when `libcuda` cannot be found, so the
//! driver library is probed with `libloading` first and every cudarc call runs under `catch_unwind`.

use aidos_api::Resources;

/// Detected (or overridden) capacity of this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// One name per detected GPU (may be shorter than `gpus` when the count is overridden upwards).
    pub gpu_names: Vec<String>,
}

impl Capacity {
    pub fn resources(&self) -> Resources {
        Resources { cpu_millis: self.cpu_millis, memory_bytes: self.memory_bytes, gpus: self.gpus }
    }
}

/// Detects the machine's capacity, then applies the overrides (an override always wins).
pub fn detect(cpu_millis: Option<u64>, memory_bytes: Option<u64>, gpus: Option<u32>) -> Capacity {
    let mut gpu_names = detect_gpus();
    let gpu_count = match gpus {
        Some(n) => {
            gpu_names.truncate(n as usize);
            n
        }
        None => gpu_names.len() as u32,
    };
    Capacity {
        cpu_millis: cpu_millis.unwrap_or_else(detect_cpu_millis),
        memory_bytes: memory_bytes.unwrap_or_else(detect_memory_bytes),
        gpus: gpu_count,
        gpu_names,
    }
}

/// Logical cores available to this process, in millicores (at least 1000).
pub fn detect_cpu_millis() -> u64 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    cores.max(1) as u64 * 1000
}

/// Total memory from `/proc/meminfo` (`MemTotal`), or 0 if it cannot be read.
pub fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| parse_meminfo_total(&s)).unwrap_or(0)
}

/// Parses the `MemTotal:  16318444 kB` line of `/proc/meminfo` into bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some("kB") | Some("KB") | Some("kb") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some("gB") | Some("GB") => 1024 * 1024 * 1024,
        None | Some("B") => 1,
        Some(_) => 1024,
    };
    Some(value * mult)
}

/// Whether a CUDA driver library can be loaded at all. Checked before any cudarc call.
pub fn cuda_driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading libcuda runs its initializers, which is what cudarc would do anyway; the
        // handle is dropped right away.
        unsafe { libloading::Library::new(name).is_ok() }
    })
}

/// Names of the CUDA devices of this machine; empty without a usable driver. Never panics.
pub fn detect_gpus() -> Vec<String> {
    if !cuda_driver_present() {
        return Vec::new();
    }
    let probe = std::panic::catch_unwind(|| -> Vec<String> {
        use cudarc::driver::result;
        // cudarc may find a different file name than our probe did: ask it too, it does not panic.
        // SAFETY: only tries to dlopen candidate names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Vec::new();
        }
        if let Err(e) = result::init() {
            tracing::info!("CUDA driver present but cuInit failed ({e:?}): no GPUs offered");
            return Vec::new();
        }
        let count = match result::device::get_count() {
            Ok(n) => n.max(0),
            Err(e) => {
                tracing::warn!("cannot count CUDA devices ({e:?}): no GPUs offered");
                return Vec::new();
            }
        };
        (0..count)
            .map(|i| result::device::get(i).and_then(result::device::get_name).unwrap_or_else(|_| format!("cuda:{i}")))
            .collect()
    });
    match probe {
        Ok(names) => names,
        Err(_) => {
            tracing::warn!("GPU detection panicked: no GPUs offered");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_without_panicking() {
        let cap = detect(None, None, None);
        assert!(cap.cpu_millis >= 1000);
        assert!(cap.memory_bytes > 0);
        assert_eq!(cap.gpus as usize, cap.gpu_names.len());
    }

    #[test]
    fn overrides_win() {
        let cap = detect(Some(2500), Some(1 << 30), Some(0));
        assert_eq!(cap.cpu_millis, 2500);
        assert_eq!(cap.memory_bytes, 1 << 30);
        assert_eq!(cap.gpus, 0);
        assert!(cap.gpu_names.is_empty());
        let cap = detect(None, None, Some(3));
        assert_eq!(cap.gpus, 3);
    }

    #[test]
    fn meminfo_parsing() {
        let s = "MemTotal:       16318444 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo_total(s), Some(16318444 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB"), None);
    }
}

//! NCCL as the [`Collective`] of a gang whose every rank holds a CUDA device (cargo feature `nccl`): cudarc with
//! dynamic loading, so nothing is linked at build time and a machine without `libcuda` / `libnccl` refuses
//! cleanly at run time instead of failing to start.
//!
//! The NCCL communicator is bootstrapped over the TCP ring the rendezvous already formed: rank 0 creates the NCCL
//! unique id and broadcasts its 128 bytes on the ring. The TCP ring stays for [`Collective::broadcast`] (bytes);
//! [`Collective::all_reduce_sum`] runs on the device: host values are copied in, summed by `ncclAllReduce`, copied
//! back. (aidos' trainer runs on the CPU backend today, so gradients are host buffers; a device-resident trainer
//! would hand device buffers instead.)
//!
//! Invariants: cudarc panics when a library it needs is missing, so [`probe`] loads both libraries with
//! `libloading` first and every cudarc call that could panic runs after a successful probe, under
//! `catch_unwind`. The decision "NCCL or TCP" is taken by all ranks together ([`choose`]): NCCL only when every
//! rank's probe succeeded, so ranks never disagree on the transport.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::collective::{Collective, CollectiveError, TcpRing, Transport};

/// Why this process cannot use NCCL on device `ordinal`, or Ok when it can.
pub fn probe(ordinal: usize) -> Result<(), String> {
    // SAFETY: loading the libraries runs their initializers, which cudarc would do anyway.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err("no NCCL library (libnccl.so.2) on this machine".into());
    }
    let count = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().map_err(|e| e.to_string())?;
        cudarc::driver::result::device::get_count().map_err(|e| e.to_string())
    })
    .map_err(|_| "the CUDA driver library could not be used".to_string())??;
    if (count as usize) <= ordinal {
        return Err(format!("no CUDA device {ordinal} ({count} visible)"));
    }
    Ok(())
}

/// Agrees with every rank on the transport: each rank's probe is summed over the TCP ring.
pub fn choose(ring: &mut TcpRing, want: Transport, ordinal: usize) -> Result<bool, CollectiveError> {
    if want == Transport::Tcp {
        return Ok(false);
    }
    let mine = probe(ordinal);
    let mut ok = vec![0f32; ring.world_size()];
    ok[ring.rank()] = mine.is_ok() as u8 as f32;
    ring.all_reduce_sum(&mut ok)?;
    let without: Vec<String> = ok.iter().enumerate().filter(|(_, v)| **v < 0.5).map(|(r, _)| r.to_string()).collect();
    match (want, without.is_empty()) {
        (_, true) => Ok(true),
        (Transport::Nccl, false) => Err(CollectiveError::Connect(format!(
            "NCCL was asked for but ranks {} cannot use it{}",
            without.join(", "),
            mine.err().map(|e| format!(" (this rank: {e})")).unwrap_or_default()
        ))),
        _ => Ok(false),
    }
}

/// The communicator may be used from any thread as long as calls do not overlap; [`NcclRing`] owns it and takes
/// `&mut self` for every call.
struct OwnedComm(Comm);
// SAFETY: see above; the communicator is only used by its owner, one call at a time.
unsafe impl Send for OwnedComm {}

/// NCCL all-reduce, bootstrapped and complemented by the TCP ring.
pub struct NcclRing {
    ring: TcpRing,
    comm: OwnedComm,
    stream: Arc<CudaStream>,
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Connect(format!("NCCL: {what}: {e:?}"))
}

impl NcclRing {
    /// Forms the NCCL communicator of `ring`'s gang on CUDA device `ordinal`. Every rank must have chosen NCCL
    /// ([`choose`]).
    pub fn new(mut ring: TcpRing, ordinal: usize) -> Result<NcclRing, CollectiveError> {
        probe(ordinal).map_err(CollectiveError::Connect)?;
        let mut id_bytes = if ring.rank() == 0 {
            let id = Id::new().map_err(|e| cuda_err("creating the unique id", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        ring.broadcast(0, &mut id_bytes)?;
        let raw: [std::ffi::c_char; 128] = id_bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| CollectiveError::Mismatch(format!("NCCL id of {} bytes, expected 128", id_bytes.len())))?;
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("creating the CUDA context", e))?;
        let stream = ctx.default_stream();
        let comm = Comm::from_rank(stream.clone(), ring.rank(), ring.world_size(), Id::uninit(raw))
            .map_err(|e| cuda_err("initialising the communicator", e))?;
        Ok(NcclRing { ring, comm: OwnedComm(comm), stream })
    }
}

impl Collective for NcclRing {
    fn rank(&self) -> usize {
        self.ring.rank()
    }
    fn world_size(&self) -> usize {
        self.ring.world_size()
    }
    fn generation(&self) -> u64 {
        self.ring.generation()
    }
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(data).map_err(|e| cuda_err("copying to the device", e))?;
        self.comm.0.all_reduce_in_place(&mut dev, &ReduceOp::Sum).map_err(|e| cuda_err("all-reduce", e))?;
        self.stream.memcpy_dtoh(&dev, data).map_err(|e| cuda_err("copying from the device", e))?;
        self.stream.synchronize().map_err(|e| cuda_err("synchronising", e))
    }
    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CollectiveError> {
        self.ring.broadcast(root, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_nccl_says_why() {
        match probe(0) {
            Ok(()) => eprintln!("this machine can use NCCL"),
            Err(e) => assert!(e.contains("library") || e.contains("device"), "{e}"),
        }
    }
}

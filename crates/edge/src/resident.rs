//! Releasing start-up pages (Linux): after a model is loaded, the agent drops from its resident set the clean,
//! file-backed pages of its read-only mappings (code, read-only data) and frees the heap pages that loading left
//! unused, so that resident memory counts what serving uses rather than what start-up touched.
//!
//! Why it matters: a page fault on a file mapping maps up to 16 neighbouring pages ("fault-around", 64 KiB), and
//! start-up touches code all over the binaries (ONNX Runtime registers every kernel it has when it is loaded; the
//! model loader, the graph optimiser and the gRPC client run once). On the MNIST CNN that made 18.8 MB of
//! `libonnxruntime.so`'s 28 MB of code resident in the agent, and ~12 MB of the agent's own 14 MB on tract.
//!
//! What is done, per mapping:
//! - only private, file-backed, non-writable mappings with no anonymous (copy-on-write) pages in them are
//!   touched. Their pages are exact copies of the file, so `MADV_DONTNEED` only unmaps them: the kernel's page
//!   cache keeps them and the next use maps them back with a minor fault (no I/O unless memory pressure evicted
//!   them, as it could at any time anyway). Writable mappings and relocated (copy-on-write) read-only data are
//!   never touched: dropping them would lose their contents.
//! - `MADV_RANDOM` is set on them first, which turns fault-around off for them: from then on a fault maps the one
//!   page it needs.
//! - then, with glibc, `malloc_trim(0)` returns the heap's free pages to the kernel.
//!
//! Cost: one read of `/proc/self/smaps` (about a millisecond) and, on the next inferences, a few hundred minor
//! faults while the serving path maps its code back. Nothing changes for correctness. Elsewhere than on Linux
//! this does nothing.

/// What a trim released.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Mappings released.
    pub mappings: usize,
    /// Their resident bytes just before.
    pub bytes: u64,
}

/// Releases the start-up pages (see the module doc). Blocking (reads procfs): call it off the async threads.
pub fn trim() -> std::io::Result<Trimmed> {
    #[cfg(target_os = "linux")]
    {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut done = Trimmed::default();
        for m in releasable(&smaps) {
            // SAFETY: `m` is a whole mapping of this process, read-only, private and file-backed, holding no
            // anonymous pages (checked by `releasable`): MADV_RANDOM changes only read-ahead, and MADV_DONTNEED
            // on it unmaps pages that are refilled from the unchanged file on the next access. Nothing in this
            // process can make it writable or unmap it meanwhile (we do neither; the dynamic loader only maps
            // libraries on dlopen, and a newly mapped library is simply not in this list).
            unsafe {
                let addr = m.start as *mut std::ffi::c_void;
                if rustix::mm::madvise(addr, m.len, rustix::mm::Advice::Random).is_ok()
                    && rustix::mm::madvise(addr, m.len, rustix::mm::Advice::LinuxDontNeed).is_ok()
                {
                    done.mappings += 1;
                    done.bytes += m.rss;
                }
            }
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe (it takes each
        // arena's lock).
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(done)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(Trimmed::default())
}

/// One mapping that may be released.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    rss: u64,
}

/// The mappings of an smaps text that are private, file-backed, not writable and hold no anonymous pages.
fn releasable(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    // (mapping, still eligible) for the header being read; its fields follow it.
    let mut cur: Option<(Mapping, bool)> = None;
    let mut flush = |cur: &mut Option<(Mapping, bool)>| {
        if let Some((m, true)) = cur.take()
            && m.rss > 0
        {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            flush(&mut cur);
            // start-end perms offset dev inode [path]
            let perms = f.next().unwrap_or("");
            let inode = f.nth(2).unwrap_or("0");
            let path = f.next().unwrap_or("");
            let ok = perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && inode != "0"
                && path.starts_with('/');
            cur = Some((Mapping { start: a, len: b.saturating_sub(a), rss: 0 }, ok));
            continue;
        }
        let Some((m, ok)) = cur.as_mut() else { continue };
        let kb = || f.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Rss:" => m.rss = kb() * 1024,
            // Copy-on-write pages (relocations, breakpoints) are not in the file: never drop them.
            "Anonymous:" | "Private_Dirty:" | "Shared_Dirty:" if kb() != 0 => *ok = false,
            // Locked mappings are meant to stay resident.
            "VmFlags:" if f.any(|fl| fl == "lo") => *ok = false,
            _ => {}
        }
    }
    flush(&mut cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 08:01 1234 /usr/bin/aidos-edge
Rss:                 512 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
VmFlags: rd mr mw me
55d0a0100000-55d0a0900000 r-xp 00100000 08:01 1234 /usr/bin/aidos-edge
Rss:                6144 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0a0900000-55d0a0a00000 r--p 00900000 08:01 1234 /usr/bin/aidos-edge
Rss:                1024 kB
Anonymous:           900 kB
VmFlags: rd mr mw me ac
55d0a0a00000-55d0a0a10000 rw-p 00a00000 08:01 1234 /usr/bin/aidos-edge
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd wr mr mw me ac
55d0a1000000-55d0a2000000 rw-p 00000000 00:00 0 [heap]
Rss:                7000 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 99 /opt/locked.so
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo
7f0000200000-7f0000300000 r-xp 00000000 08:01 98 /opt/cold.so
Rss:                   0 kB
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let got = releasable(SMAPS);
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x55d0a0000000, len: 0x100000, rss: 512 << 10 },
                Mapping { start: 0x55d0a0100000, len: 0x800000, rss: 6144 << 10 },
            ],
            "relocated read-only data, writable data, the heap, a locked mapping, an empty one and the vdso stay"
        );
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        let data = std::hint::black_box(vec![7u8; 1 << 20]);
        let first = trim().unwrap();
        assert!(first.mappings > 0 && first.bytes > 0, "{first:?}");
        // The code dropped comes back as it runs; the heap is untouched.
        let sum: u64 = data.iter().map(|&b| b as u64).sum();
        assert_eq!(sum, 7 << 20);
        assert_eq!(format!("{:?}", releasable(SMAPS).len()), "2");
        // Only what ran since is resident again, with fault-around off.
        let second = trim().unwrap();
        assert!(second.bytes < first.bytes, "{first:?} then {second:?}");
    }
}

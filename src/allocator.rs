//! The process allocator's own accounting (jemalloc's `stats.*`), for `/metrics` and the
//! benchmark: how much of resident memory is live data, and how much is the allocator's.

/// jemalloc's counters, in bytes. `allocated` is what the program holds; `active` the pages its
/// allocations sit on (the gap is fragmentation inside those pages); `resident` what jemalloc has
/// in memory, metadata and freed-but-not-yet-returned pages included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    pub allocated: u64,
    pub active: u64,
    pub resident: u64,
    pub metadata: u64,
}

impl AllocatorStats {
    /// `(label, bytes)` for each counter, in a fixed order.
    pub fn labelled(&self) -> [(&'static str, u64); 4] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("resident", self.resident),
            ("metadata", self.metadata),
        ]
    }
}

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod imp {
    use super::AllocatorStats;
    use std::ffi::{CStr, c_void};

    fn read_usize(name: &CStr) -> Option<u64> {
        let mut value: usize = 0;
        let mut len = std::mem::size_of::<usize>();
        // SAFETY: `name` is NUL-terminated; `value`/`len` describe a `size_t` out-parameter,
        // which is what every `stats.*` counter read here is.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&mut value as *mut usize).cast::<c_void>(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0).then_some(value as u64)
    }

    pub fn stats() -> Option<AllocatorStats> {
        // The counters are a snapshot taken when the epoch advances.
        let mut epoch: u64 = 1;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: "epoch" reads and writes a `uint64_t`; both pointers describe one.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"epoch".as_ptr(),
                (&mut epoch as *mut u64).cast::<c_void>(),
                &mut len,
                (&mut epoch as *mut u64).cast::<c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc != 0 {
            return None;
        }
        Some(AllocatorStats {
            allocated: read_usize(c"stats.allocated")?,
            active: read_usize(c"stats.active")?,
            resident: read_usize(c"stats.resident")?,
            metadata: read_usize(c"stats.metadata")?,
        })
    }

    pub fn purge() {
        // 4096 = MALLCTL_ARENAS_ALL. Returns freed pages of every arena to the OS now.
        // SAFETY: "arena.<i>.purge" takes and returns nothing.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}

#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
mod imp {
    pub fn stats() -> Option<super::AllocatorStats> {
        None
    }

    pub fn purge() {}
}

/// The allocator's counters now; `None` where jemalloc is not the allocator.
pub fn stats() -> Option<AllocatorStats> {
    imp::stats()
}

/// Returns the allocator's freed pages to the OS now (a benchmark does this before it reads
/// resident memory, so the figure is live data, not what an earlier phase freed).
pub fn purge() {
    imp::purge()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_see_a_live_allocation() {
        // jemalloc is linked with unprefixed `malloc`, so it serves even a test binary that keeps
        // the system allocator; elsewhere there is nothing to read.
        let Some(before) = super::stats() else {
            return;
        };
        let block = vec![1u8; 64 << 20];
        let during = super::stats().expect("read once already");
        assert!(
            during.allocated >= before.allocated + (32 << 20),
            "{before:?} -> {during:?}"
        );
        assert!(during.active >= during.allocated && during.resident >= during.metadata);
        drop(std::hint::black_box(block));
        super::purge();
    }
}

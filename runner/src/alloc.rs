//! Allocator tuning for training. Each training step allocates and frees a few dozen buffers
//! of up to a few hundred kB. With glibc's allocator (and with dfdx's own tensor cache, which
//! never reuses our host-built buffers and so only grows) the time went to page faults; mimalloc
//! reuses freed memory, but by default returns idle pages to the OS after a delay and then
//! faults them in again (zeroing 2 MB huge pages). Turning purging off keeps the working set
//! resident: measured here, 97k → 140k training samples/s on the quickstart model.

/// mimalloc's global allocator; the `qat` binary, benchmarks and examples install it.
pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` enum (mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed pages to the OS during the process (bounded by the peak working set).
pub fn keep_freed_pages() {
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any value is valid
    // for this option (-1 = never purge), and it is safe to call at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

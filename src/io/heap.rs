//! How the process's heap hands memory back.
//!
//! glibc's malloc serves a large allocation with its own mmap and, when it
//! is freed, raises the size from which it does so to that allocation's
//! (its "dynamic mmap threshold", up to 32 MiB). From then on buffers of
//! that size come from the threads' heaps and stay in them when freed.
//! liblzma's threaded decoder allocates a block's 24 MiB and frees it when
//! done, so after an xz image's expansion its buffers were kept while the
//! block encoders allocated their own: a 96 MiB raw ext4 in xz peaked at
//! 110 MiB where a 48 MiB one peaked at 99 MiB; with the threshold fixed,
//! 82 and 79 MiB (`codecs::xz_memory_does_not_grow_with_the_image`).
//!
//! Fixed at 16 MiB, not lower: buffers below it (zstd's jobs, bzip2's
//! 8 MiB tables, xz's dictionaries) stay in the heap and are reused as
//! before. At 1 MiB every one of them was mapped anew: 3.5 times the page
//! faults of a cold `.tbz2`, and zstd's peak then moved with timing (30
//! to 38 MiB at one size) where it sat at 38 MiB.

/// Allocations of this size and more (liblzma's block buffers) are mapped
/// on their own and returned when freed. Fixing the threshold also stops
/// glibc from raising it.
const MMAP_THRESHOLD: i32 = 16 << 20;

/// Fixes glibc's mmap threshold; called once at the command's start,
/// before any thread. A no-op elsewhere (musl maps large allocations on
/// their own and returns them).
pub(crate) fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it takes
    // no pointer and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

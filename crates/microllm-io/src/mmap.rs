//! Keeping memory-mapped checkpoints from filling the resident set.
//!
//! Readers map whole files and copy one tensor out at a time. Pages a pass has read stay
//! resident (and are counted in the process's RSS) until the kernel needs the memory, so a
//! streamed pass over a large model would look, and on a tight machine act, as if the whole
//! file were loaded. After each tensor is copied out its pages are released.

use memmap2::Mmap;

/// Tells the kernel that `map[start..end]` is not needed any more. The pages are clean and
/// file-backed, so dropping them loses nothing: touching them again re-reads the file.
pub(crate) fn release(map: &Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the mapping is read-only and never written through, so MADV_DONTNEED only
        // discards clean page-cache views of the file; later reads fault them back in with
        // the same contents. Failure is harmless (the pages simply stay resident).
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

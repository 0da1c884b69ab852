//! Storage backends: null, RAM, regular files (memmap2), block devices (libc, O_DIRECT).

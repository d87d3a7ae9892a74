//! macOS only: uncached reads with `F_NOCACHE` (no alignment rule, unlike `O_DIRECT`).
use std::fs::File;
use std::path::Path;

pub fn open_direct(path: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).ok()?;
    // SAFETY: fcntl on a descriptor `file` keeps open for the whole call; F_NOCACHE sets a flag
    // on it and touches no memory of ours.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
    (rc != -1).then_some(file)
}

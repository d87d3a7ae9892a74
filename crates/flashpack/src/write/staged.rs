//! The file a pack writes before it replaces the destination.
//!
//! On Linux it is an unnamed `O_TMPFILE` in the destination's directory: it gets a name only
//! once it is complete and synced (linked as `.packtmp_*`, then renamed over the destination),
//! so a process killed mid-pack leaves nothing behind. Where the filesystem (or `/proc`) does
//! not allow that, it is a named `.packtmp_*` temporary file, removed on any error.
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub(crate) enum Staged {
    #[cfg(target_os = "linux")]
    Unnamed {
        file: File,
        dir: PathBuf,
        label: PathBuf,
    },
    Named(tempfile::NamedTempFile),
}

impl Staged {
    /// A new empty file in `dir` (mode 0644 before the umask).
    pub fn create(dir: &Path) -> Result<Staged> {
        #[cfg(target_os = "linux")]
        if let Some(file) = unnamed_in(dir) {
            return Ok(Staged::Unnamed {
                file,
                dir: dir.to_path_buf(),
                label: dir.join(".packtmp_(unnamed)"),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(".packtmp_")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map(Staged::Named)
            .map_err(|e| Error::io(dir, "create temporary file", e))
    }

    pub fn file(&self) -> &File {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed { file, .. } => file,
            Staged::Named(t) => t.as_file(),
        }
    }

    /// The path errors name while the file is being written.
    pub fn path(&self) -> &Path {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed { label, .. } => label,
            Staged::Named(t) => t.path(),
        }
    }

    /// Puts the (complete, synced) file at `dest`, atomically replacing what was there.
    pub fn commit(self, dest: &Path) -> Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed { file, dir, .. } => {
                let name = link_unnamed(&file, &dir)?;
                std::fs::rename(&name, dest).map_err(|e| {
                    let _ = std::fs::remove_file(&name);
                    Error::io(dest, "rename into place", e)
                })
            }
            Staged::Named(t) => t
                .persist(dest)
                .map(drop)
                .map_err(|e| Error::io(dest, "rename into place", e.error)),
        }
    }
}

/// An `O_TMPFILE` in `dir`, when the filesystem supports it and `/proc/self/fd` can link it.
#[cfg(target_os = "linux")]
fn unnamed_in(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)
        .ok()
}

/// Gives an `O_TMPFILE` a fresh `.packtmp_*` name in `dir` (via its `/proc/self/fd` link).
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, dir: &Path) -> Result<PathBuf> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let src = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = dir.join(format!(
            ".packtmp_{}_{nanos:08x}_{attempt}",
            std::process::id()
        ));
        let dst = CString::new(name.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: path contains a NUL byte", name.display())))?;
        // SAFETY: two valid NUL-terminated paths; linkat reads them and touches no other memory.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(name);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(Error::io(dir, "link the finished file", err));
        }
    }
    Err(Error::Invalid(format!(
        "{}: no free temporary name to link the finished file",
        dir.display()
    )))
}

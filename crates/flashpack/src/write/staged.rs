//! The file a pack writes before it replaces the destination, and the checks on that destination.
//!
//! On Linux it is an unnamed `O_TMPFILE` in the destination's directory: it gets a name only
//! once it is complete and synced (linked as `.packtmp_*`, then renamed over the destination),
//! so a process killed mid-pack leaves nothing behind. Where the filesystem (or `/proc`) does
//! not allow that, it is a named `.packtmp_*` temporary file, removed on any error. Errors name
//! the destination, never the temporary file.
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Checks that a finished file could be put at `dest`, before anything is written, and returns
/// the folder it goes in (created if missing, as the original package does): `dest` must not be
/// a directory, and the OS must accept its name (not too long, every parent a searchable folder).
pub fn prepare_destination(dest: &Path) -> Result<PathBuf> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(dest, format!("create its folder {}", dir.display()), e))?;
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(Error::io(
            dest,
            "check the destination",
            std::io::Error::from_raw_os_error(libc::EISDIR),
        )),
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir),
        Err(e) => Err(Error::io(dest, "check the destination", e)),
    }
}

pub(crate) enum Staged {
    #[cfg(target_os = "linux")]
    Unnamed {
        file: File,
        dir: PathBuf,
    },
    Named(tempfile::NamedTempFile),
}

impl Staged {
    /// A new empty file in `dir` (mode 0644 before the umask), to become `dest` (named in errors).
    pub fn create(dir: &Path, dest: &Path) -> Result<Staged> {
        #[cfg(target_os = "linux")]
        if let Some(file) = unnamed_in(dir) {
            return Ok(Staged::Unnamed {
                file,
                dir: dir.to_path_buf(),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(".packtmp_")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map(Staged::Named)
            .map_err(|e| Error::io(dest, "create a temporary file beside it", e))
    }

    pub fn file(&self) -> &File {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed { file, .. } => file,
            Staged::Named(t) => t.as_file(),
        }
    }

    /// Puts the (complete, synced) file at `dest`, atomically replacing what was there, and
    /// syncs the folder where the filesystem allows (best effort: makes the rename durable).
    pub fn commit(self, dest: &Path) -> Result<()> {
        let dir = match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed { file, dir } => {
                let name = link_unnamed(&file, &dir, dest)?;
                std::fs::rename(&name, dest).map_err(|e| {
                    let _ = std::fs::remove_file(&name);
                    Error::io(dest, "rename into place", e)
                })?;
                dir
            }
            Staged::Named(t) => {
                let dir = t.path().parent().map(Path::to_path_buf);
                t.persist(dest)
                    .map_err(|e| Error::io(dest, "rename into place", e.error))?;
                dir.unwrap_or_else(|| PathBuf::from("."))
            }
        };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
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
fn link_unnamed(file: &File, dir: &Path, dest: &Path) -> Result<PathBuf> {
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
            return Err(Error::io(dest, "link the finished file", err));
        }
    }
    Err(Error::Invalid(format!(
        "{}: no free temporary name in {} to link the finished file",
        dest.display(),
        dir.display()
    )))
}

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
            crate::os::is_a_directory(),
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
        if let Some(file) = crate::os::unnamed_tmpfile(dir) {
            return Ok(Staged::Unnamed {
                file,
                dir: dir.to_path_buf(),
            });
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix(".packtmp_");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        builder
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
                let name = crate::os::link_tmpfile(&file, &dir)
                    .map_err(|e| Error::io(dest, "link the finished file", e))?;
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
        crate::os::sync_dir(&dir);
        Ok(())
    }
}

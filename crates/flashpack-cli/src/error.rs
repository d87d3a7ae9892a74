//! The command's error type: every failure is one line that names the file and what was wrong.
//!
//! ```text
//! $ flashpack verify broken.flashpack
//! flashpack: error: broken.flashpack: checksum mismatch in payload bytes 4194304..8388608, which hold tensor 'w': the file is corrupt
//! ```
use std::path::{Path, PathBuf};

/// Result alias for the command.
pub type Result<T> = std::result::Result<T, CliError>;

/// Any failure of a subcommand (usage errors are clap's).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The engine failed; its text already names the file and, where there is one, the tensor.
    #[error(transparent)]
    Engine(#[from] flashpack::Error),
    /// An operating-system call on `path` failed outside the engine.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The `safetensors` crate refused a file (bench peer).
    #[error("{}: safetensors: {source}", path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// candle refused a file (bench peer).
    #[cfg(feature = "candle")]
    #[error("{}: candle: {source}", path.display())]
    Candle {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// candle handed back a tensor whose storage the bench cannot sum (bench peer).
    #[cfg(feature = "candle")]
    #[error("{}: candle tensor '{tensor}': {problem}", path.display())]
    CandleTensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    /// Options that apply to other sources than `path`: `options` (as typed) `why`.
    #[error("{}: {options} {why}", path.display())]
    OptionsDoNotApply {
        path: PathBuf,
        options: &'static str,
        why: &'static str,
    },
    /// A source that is neither a regular file nor a folder (and that the engine did not refuse).
    #[error("{}: not a regular file or a folder", path.display())]
    NotAFileOrFolder { path: PathBuf },
    /// A command that reads FlashPack files only was given another file; `hint` says which
    /// command reads it.
    #[error("{}: not a FlashPack file ({hint})", path.display())]
    NotAFlashPack { path: PathBuf, hint: &'static str },
    /// `revert` to a destination that is no safetensors file, torch file or folder of shards.
    #[error(
        "{}: write .safetensors or a torch file (.pt, .bin, .pth, .ckpt), or a folder of shards \
         with --sharded or --max-shard-size",
        path.display()
    )]
    RevertDestination { path: PathBuf },
    /// A checkpoint without a weight file.
    #[error("{}: no weight file", path.display())]
    NoWeightFile { path: PathBuf },
    /// JSON about `path` could not be read or written: `what` says which.
    #[error("{}: {what}: {source}", path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The parsed command line could not be encoded for the Python command.
    #[error("cannot pass these arguments to Python (a path that is not UTF-8?): {source}")]
    ArgumentsToPython {
        #[source]
        source: serde_json::Error,
    },
}

impl CliError {
    pub fn io(path: impl AsRef<Path>, op: &'static str, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.as_ref().to_path_buf(),
            op,
            source,
        }
    }

    /// The message as a single line (nested errors may carry newlines, e.g. backtraces).
    pub fn one_line(&self) -> String {
        let text = self.to_string();
        let parts: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        parts.join("; ")
    }
}

/// Prints `text` and a newline on stdout. A closed pipe (`flashpack inspect -i m.flashpack | head`)
/// ends the output quietly instead of failing.
pub fn print_line(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io("<stdout>", "write", e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_file() {
        let e = CliError::io(
            "a/b.flashpack",
            "open",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone\nreally"),
        );
        assert_eq!(e.one_line(), "a/b.flashpack: open failed: gone; really");
        let e = CliError::from(flashpack::Error::format(
            "m.flashpack",
            flashpack::FormatError::BadMagic,
        ));
        assert!(e.one_line().starts_with("m.flashpack: bad magic"));
    }
}

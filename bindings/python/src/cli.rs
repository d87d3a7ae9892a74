//! `flashpack._core.cli(argv)`: the `flashpack` command (crates/flashpack-cli) for the Python
//! package's console script. The parser and every engine-side subcommand are the Rust binary's;
//! what needs Python comes back as a request for `flashpack.cli` to carry out.
//!
//! ```python
//! from flashpack import _core
//! _core.cli(["convert", "model.safetensors"])
//! # {"kind": "done", "stdout": "model.safetensors (safetensors) -> ./model.flashpack ...", "written": "./model.flashpack"}
//! _core.cli(["convert", "org/repo", "out"])
//! # {"kind": "python", "request": "{\"quiet\":false,...,\"command\":{\"command\":\"convert\",...}}", "reason": "..."}
//! _core.cli(["--version"])
//! # {"kind": "exit", "code": 0, "stdout": "flashpack 0.1.0\n", "stderr": ""}
//! ```
use std::ffi::OsString;

use flashpack::cancel::Cancel;
use flashpack_cli::args::{parse, Parsed};
use flashpack_cli::error::CliError;
use flashpack_cli::run::{run, Outcome};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::IntoPyErr;

impl crate::IntoPyErr for CliError {
    fn into_py_err(self) -> PyErr {
        match self {
            CliError::Engine(e) => crate::to_py(e),
            CliError::Io { .. } => PyOSError::new_err(self.one_line()),
            other => PyValueError::new_err(other.one_line()),
        }
    }
}

/// Parses `argv` (without the program name) as the `flashpack` command and runs it, the GIL
/// released. Returns a dict: `kind` "exit" (help, version, usage error: `code`, `stdout`,
/// `stderr`), "done" (`stdout`, `written`: the file written or None) or "python" (`request`:
/// the parsed command line as JSON, `reason`). Failures raise OSError / ValueError with the
/// one-line message the Rust binary prints.
#[pyfunction]
pub fn cli<'py>(py: Python<'py>, argv: Vec<OsString>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let cli = match parse(argv) {
        Parsed::Run(cli) => cli,
        Parsed::Exit {
            code,
            text,
            to_stderr,
        } => {
            d.set_item("kind", "exit")?;
            d.set_item("code", code)?;
            d.set_item("stdout", if to_stderr { "" } else { text.as_str() })?;
            d.set_item("stderr", if to_stderr { text.as_str() } else { "" })?;
            return Ok(d);
        }
    };
    // Ctrl-C stops a conversion or verification between chunks, destination as it was.
    let cancel = Cancel::new();
    match crate::interruptible(py, &cancel, || run(&cli, &cancel))? {
        Outcome::Done { stdout, written } => {
            d.set_item("kind", "done")?;
            d.set_item("stdout", stdout)?;
            d.set_item("written", written)?;
        }
        Outcome::NeedsPython { reason } => {
            d.set_item("kind", "python")?;
            d.set_item("request", cli.to_json().map_err(IntoPyErr::into_py_err)?)?;
            d.set_item("reason", reason)?;
        }
    }
    Ok(d)
}

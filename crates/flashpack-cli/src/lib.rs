//! The `flashpack` command as a library: one parser ([`args::Cli`]) and one implementation per
//! subcommand ([`run::run`]), behind both the Rust binary (`src/main.rs`) and the Python
//! package's `flashpack` console script (through `flashpack._core`, which hands Python only
//! what needs Python: [`run::Outcome::NeedsPython`]).
//!
//! ```no_run
//! use clap::Parser;
//! use flashpack_cli::{args::Cli, run::{run, Outcome}};
//!
//! let cli = Cli::parse_from(["flashpack", "convert", "model.safetensors", "model.flashpack"]);
//! let cancel = flashpack::cancel::Cancel::new(); // stops a conversion between chunks
//! match run(&cli, &cancel)? {
//!     Outcome::Done { stdout, .. } => println!("{stdout}"),
//!     Outcome::NeedsPython { reason } => eprintln!("{reason}"),
//! }
//! # Ok::<(), flashpack_cli::error::CliError>(())
//! ```
pub mod args;
pub mod bench;
pub mod convert;
pub mod error;
pub mod format;
pub mod inspect;
pub mod interrupt;
pub mod location;
pub mod metadata;
pub mod run;
pub mod touch;
pub mod verify;

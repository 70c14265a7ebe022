//! `kiln build`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Build a guest crate, or a TypeScript project (a directory with a
/// package.json), into a component bundle; prints the bundle's path as the
/// last line.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The crate's directory or Cargo.toml, or the TypeScript project's
    /// directory.
    #[arg(default_value = ".")]
    path: PathBuf,
}

/// Builds the bundle.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = kiln_bundle::build(&args.path, &kiln_bundle::BuildOptions::default())?;
    let size = std::fs::metadata(&bundle).map(|m| m.len()).unwrap_or(0);
    eprintln!("Built a bundle of {} KiB", size / 1024);
    println!("{}", bundle.display());
    Ok(ExitCode::SUCCESS)
}

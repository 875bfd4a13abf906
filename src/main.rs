//! The `tandem` binary: parse the command line, set up logging, run, and map the outcome to
//! the exit codes in CLI.md — 0 success, 1 runtime error (one line on stderr), 2 usage error.

use std::process::ExitCode;

use clap::Parser;
use tandem::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with status 2 on a usage error
    init_logging(cli.log_level.as_deref());
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tandem: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

//! The `switchyard` binary: parses the command line and runs the verb.

#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use switchyard::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: allocation and free were the largest items of the
/// request path's CPU profile (loadtests/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let otel = match &cli.command {
        Command::Serve(args) => Some(args.otel()),
        _ => None,
    };
    let exporter = match switchyard::telemetry::init_logging(cli.log_format, otel.as_ref()) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Validate { dir } => switchyard::run::validate(&dir),
        Command::Serve(args) => switchyard::run::serve(args),
        Command::Emulate(args) => switchyard::run::emulate(args),
        Command::Route(args) => switchyard::run::route(args),
        Command::EvalRouting(args) => switchyard::run::eval_routing(args, false),
        Command::Calibrate(args) => switchyard::run::eval_routing(args, true),
    };
    // After the server stopped: what is still queued is exported before exit.
    if let Some(e) = exporter {
        e.shutdown();
    }
    code
}

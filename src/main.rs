#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match tessera::cli::run(std::env::args_os(), &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

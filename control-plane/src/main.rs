//! `trellisd`: the control plane. The command line lives in the library
//! (`trellis_control_plane::cli`), so that `trellis demo` runs the same code from its own
//! executable.

use std::process::ExitCode;

fn main() -> ExitCode {
    trellis_control_plane::cli::run(std::env::args_os())
}

//! `trellis-proxy-init`: the pod's traffic redirect. The command line lives in the library
//! (`trellis_proxy_init::cli`), so that `trellis demo` runs the same code from its own
//! executable.

use std::process::ExitCode;

fn main() -> ExitCode {
    trellis_proxy_init::cli::run(std::env::args_os())
}

//! `trellis-proxy`: the sidecar. The command line lives in the library (`trellis_proxy::cli`),
//! so that `trellis demo` runs the same code from its own executable.

use std::process::ExitCode;

// The system allocator, by measurement (bench/proxy.sh, bench/RESULTS.md): mimalloc served
// fewer requests per second on one core and doubled the idle footprint.

fn main() -> ExitCode {
    trellis_proxy::cli::run(std::env::args_os())
}

//! `trellis-proxy`: the sidecar. The command line lives in the library (`trellis_proxy::cli`),
//! so that `trellis demo` runs the same code from its own executable.

use std::process::ExitCode;

// mimalloc (v2, transparent huge pages off), by measurement (bench/RESULTS.md, "Proxy, sixth
// day"): hyper takes a fresh 8 KiB read buffer for most requests, which glibc serves from its
// slow bins and gives back to the kernel in bursts (brk, page faults). mimalloc: 3% fewer
// instructions and 4% fewer data cache lines per request, for 0.4 MiB more RSS. Its v3, and
// v2 with huge pages allowed, cost 3-6 MiB more RSS per proxy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    trellis_proxy::cli::run(std::env::args_os())
}

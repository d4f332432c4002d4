//! `trellisd`: the control plane. The command line lives in the library
//! (`trellis_control_plane::cli`), so that `trellis demo` runs the same code from its own
//! executable.

use std::process::ExitCode;

// mimalloc, as the proxy and the injector: a connected proxy's state is many small long-lived
// allocations made between the short-lived ones of TLS handshakes, CSRs and pushes, and glibc's
// heaps kept the gaps resident (bench/ca-memory.sh: 57-59 KiB per certified proxy with glibc,
// its mmap threshold lowered and malloc_trim after every burst; 51 with mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    trellis_control_plane::cli::run(std::env::args_os())
}

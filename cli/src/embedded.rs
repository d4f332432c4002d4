//! The other Trellis programs, run from this executable: `trellis proxy ARGS` is
//! `trellis-proxy ARGS`, and so on. `trellis demo` starts its sidecars, control plane and
//! redirect this way, so that building `trellis` alone is enough to run it. Hidden from help:
//! the real binaries are what a cluster runs.

use std::ffi::OsString;

#[derive(clap::Args)]
pub struct Args {
    /// Everything after the subcommand, passed through untouched (flags included).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

impl Args {
    /// The command line the program would have seen, under its own name.
    pub fn with_program(self, program: &str) -> Vec<OsString> {
        std::iter::once(OsString::from(program)).chain(self.args).collect()
    }
}

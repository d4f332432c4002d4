//! Link the sidecar with packed relative relocations (DT_RELR): a position-independent binary
//! otherwise carries a 24-byte relocation record per pointer in its read-only data (over 400 KiB
//! here), which the loader reads at start and which then stays resident in every pod.
//! Needs GNU ld 2.38+ and glibc 2.36+ (Debian 12 and later).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

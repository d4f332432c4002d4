//! Compiles Istio's certificate service with protox (no system `protoc`): prost messages and
//! the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/istio/v1/auth/ca.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds_with_config(descriptors, prost_build::Config::new())?;
    Ok(())
}

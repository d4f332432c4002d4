//! Compiles the `.proto` files with protox (no system `protoc`), then generates prost types, the
//! tonic services for the discovery envelope, external authorization, the rate-limit service
//! and OTLP trace export, and the proto3 JSON (serde) impls of Trellis's own messages with pbjson.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/trellis/config/v1/config.proto",
        "proto/envoy/service/discovery/v3/ads.proto",
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/envoy/config/core/v3/base.proto",
        "proto/envoy/config/core/v3/address.proto",
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/envoy/service/auth/v3/attribute_context.proto",
        "proto/envoy/type/v3/http_status.proto",
        "proto/envoy/service/ratelimit/v3/rls.proto",
        "proto/envoy/extensions/common/ratelimit/v3/ratelimit.proto",
        "proto/google/rpc/status.proto",
        // OTLP trace export (vendored from opentelemetry-proto): the proxy's span exporter.
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/trace/v1/trace.proto",
        "proto/opentelemetry/proto/resource/v1/resource.proto",
        "proto/opentelemetry/proto/common/v1/common.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("descriptors.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;

    let mut config = prost_build::Config::new();
    config.btree_map([".trellis"]);
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .codec_path("crate::codec::XdsCodec")
        .compile_fds_with_config(descriptors, config)?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .btree_map([".trellis"])
        .build(&[".trellis"])?;
    Ok(())
}

//! Generates the gRPC messages, server and client from
//! `proto/coderclaw/v1/runtime.proto`, with the `protoc` that
//! protoc-bin-vendored ships (no system protoc, no network), and the
//! encoded descriptor set that gRPC server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/coderclaw/v1/runtime.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Upload chunks are handed on without a copy.
    config.bytes([".coderclaw.v1.UploadChunk.data"]);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("coderclaw_v1_descriptor.bin"))
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}

//! Compiles the Open Inference Protocol's gRPC service (proto/kserve). protoc comes from protoc-bin-vendored.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("kserve/grpc_predict_v2.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    // Byte fields (raw tensor contents) as `bytes::Bytes`: decoded without a copy, and cloned for a retry by the
    // gateway without copying the tensor.
    // The descriptors too: server reflection serves them (grpcurl, Postman and the like need no .proto file).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("inference_descriptors.bin");
    tonic_prost_build::configure().bytes(".").file_descriptor_set_path(descriptors).compile_protos(&[file], &[root])?;
    Ok(())
}

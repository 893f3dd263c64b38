//! Compiles proto/ once for every crate. protoc comes from protoc-bin-vendored: a build needs only cargo.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = ["common", "job", "worker", "cluster", "ml", "serve", "edge", "raft", "blob", "sweep", "auth"]
        .iter()
        .map(|f| root.join(format!("aidos/v1/{f}.proto")))
        .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // The descriptors too: the auth layer's tests enumerate every RPC of every service from them.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("aidos_descriptors.bin");
    // Blob bytes as `Bytes`: a download message is a slice of what the store read, and an upload's chunks reach the
    // store as they were decoded (no copy per message either way).
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".aidos.v1.BlobUploadChunk.data")
        .bytes(".aidos.v1.BlobData.data")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&files, &[root])?;
    // serde for every message in the protobuf JSON mapping (camelCase names, enums by name, 64-bit integers as
    // strings): the scheduler's JSON API answers with the same messages as its gRPC API. Every field is written,
    // defaults included, so a reader never has to know proto3's defaults.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .btree_map(["."])
        .emit_fields()
        .build(&[".aidos"])?;
    Ok(())
}

//! Compiles the .proto files in pure Rust (protox), so building needs no
//! system protoc, and keeps the descriptor set for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/hodei/hwp/v1/types.proto",
        "proto/hodei/hwp/v1/worker.proto",
        "proto/hodei/hwp/v1/job.proto",
        "proto/hodei/hwp/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hodei_hwp_descriptor.bin"), fds.encode_to_vec())?;
    // No generated `connect` constructor: it would collide with the
    // WorkerService.Connect RPC. Clients are built from a Channel.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}

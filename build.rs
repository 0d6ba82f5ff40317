//! Compiles `proto/` with protox (pure Rust, no `protoc`) and generates the
//! prost messages plus the tonic client and server for the Agent service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/coder/agent/v2/agent.proto",
        "proto/coder/boundarylogproxy/codec/v1/codec.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

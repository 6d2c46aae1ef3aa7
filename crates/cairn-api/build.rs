//! Compiles Cairn's `.proto` files with protox (pure Rust) and
//! tonic-prost-build: no `protoc` binary is needed to build Cairn.
//! Services get default stubs, so every RPC a server has not implemented
//! answers gRPC `Unimplemented` rather than anything that looks like success.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/rpc.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
        "proto/peer.proto",
        "proto/cairn.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The descriptors themselves, for the JSON gateway's proto <-> JSON
    // mapping at run time.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles the test gRPC application's .proto (`proto/echo.proto`) with protox, so a build
//! needs no system `protoc`, as core/build.rs does for Istio's certificate service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/echo.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles the berth protobuf files with a vendored protoc, so that no
//! system protoc is needed on a fresh machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/records.proto",
        "proto/cluster.proto",
        "proto/agent.proto",
        "proto/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        // A log line's bytes are a slice of the message they came in: the
        // server passes a line on to the client without copying it.
        .bytes([".berth.agent.LogLine.line", ".berth.cluster.LogEntry.line"])
        .compile_protos(&files, &["proto"])?;
    Ok(())
}

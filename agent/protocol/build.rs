//! Compiles proto/agent.proto into Rust (messages and the ttrpc service) with the pure
//! Rust ttrpc-codegen: no protoc needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()?;
    // The generated files start with inner attributes and docs (#![...], //!), which
    // include!() does not accept: drop them (the including module sets its allows).
    for f in ["agent.rs", "agent_ttrpc.rs"] {
        let p = out.join(f);
        let text = std::fs::read_to_string(&p)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&p, kept.join("\n"))?;
    }
    Ok(())
}
